"""What a member's state records from events, and how conditions read it over time windows.

Three kinds, all bounded by time or count, never by the number of events:

- **daily counters** (`{on, sum?, where?}`): one bucket per local day that had activity, kept
  as long as the longest window that reads the counter. `name[30d]` sums the last 30 days.
- **distinct counters** (`{on, distinct: <key>, where?}`): the last day each key (a channel,
  a category…) was seen, at most `MAX_DISTINCT_KEYS` keys. `name[90d]` counts keys seen in
  the last 90 days.
- **trackers** (`{on, key, start_when, stop_when, keep?}`): keys started by one kind of event
  and stopped by another — "bought the trial size of X, not yet the regular size". At most
  `MAX_TRACKED_KEYS` keys, each forgotten `keep` after it started. `pending(name, 30d)` counts
  keys started at least 30 days ago and still not stopped.
"""

from __future__ import annotations

import hashlib
import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Callable

from schemas.errors import RuleDefinitionError
from schemas.events import TOPIC_BY_EVENT_TYPE
from taggers.clock import DAY
from taggers.context import UNSET, EvalContext, memo_slot
from taggers.expr import BOOL, NUM, STR, Compiled, ExprError, Field, Scope, compile_expression
from taggers.series import add_to_bucket, touch_key
from taggers.yamlsrc import check_keys, line, suggest

MAX_DISTINCT_KEYS = 32
MAX_TRACKED_KEYS = 16
NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_DURATION = re.compile(r"^(\d+)\s*(d|h|m|s)$")
_UNIT_SECONDS = {"d": DAY, "h": 3600, "m": 60, "s": 1}


def parse_duration(value: Any, what: str, source: str, at: int | None) -> int:
    """'30d', '12h', '15m', '90s' -> seconds."""
    match = _DURATION.match(str(value).strip()) if isinstance(value, (str, int)) else None
    if not match or int(match.group(1)) <= 0:
        raise RuleDefinitionError(f"{what} must be a duration like 30d, 12h, 15m or 90s, "
                                  f"not {value!r}", path=source, line=at)
    return int(match.group(1)) * _UNIT_SECONDS[match.group(2)]


# --- what counters may look at -----------------------------------------------------------------


class ItemContext:
    """What a counter's `where`/`key`/`sum` sees: the event, and one of its items if any."""

    __slots__ = ("event", "item")

    def __init__(self, event: Any, item: Any) -> None:
        self.event = event
        self.item = item


_ITEM_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "item.category": (STR, lambda item: item.category),
    "item.sku": (STR, lambda item: item.sku),
    "item.spec": (STR, lambda item: item.spec),
    "item.unit_price_fen": (NUM, lambda item: item.unit_price_fen),
    "item.quantity": (NUM, lambda item: item.quantity),
    "item.amount_fen": (NUM, lambda item: item.unit_price_fen * item.quantity),
}
_EVENT_FIELDS: dict[str, str] = {
    "event.type": STR, "event.channel": STR, "event.amount_fen": NUM, "event.category": STR,
    "event.sku": STR, "event.store_id": STR, "event.campaign_id": STR, "event.guide_id": STR,
    "event.province": STR, "event.city": STR, "event.batch": STR,
}


def _event_getter(path: str) -> Callable[[ItemContext], Any]:
    if path == "event.type":
        return lambda c: c.event.event_type
    attr = path.split(".", 1)[1]
    return lambda c: getattr(c.event, attr, None)


def _item_getter(get: Callable[[Any], Any]) -> Callable[[ItemContext], Any]:
    return lambda c: get(c.item) if c.item is not None else None


def filter_scope() -> Scope:
    fields = {path: Field(kind, _event_getter(path), nullable=path != "event.type")
              for path, kind in _EVENT_FIELDS.items()}
    for path, (kind, get) in _ITEM_FIELDS.items():
        fields[path] = Field(kind, _item_getter(get), nullable=True)
    return Scope(fields=fields)


def _compile_part(text: Any, what: str, kind: str | None, source: str,
                  at: int | None) -> Compiled:
    try:
        compiled = compile_expression(str(text), filter_scope())
    except ExprError as exc:
        raise RuleDefinitionError(f"{what}: {exc}", path=source, line=at, hint=exc.hint) from None
    if kind is not None and compiled.kind != kind:
        raise RuleDefinitionError(f"{what} must be a {kind} value, not a {compiled.kind}",
                                  path=source, line=at)
    return compiled


def event_types_of(spec: dict[str, Any], what: str, source: str) -> frozenset[str]:
    on = spec.get("on")
    types = [on] if isinstance(on, str) else on
    if not types or not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise RuleDefinitionError(f"{what} needs 'on': one or more event types", path=source,
                                  line=line(spec, "on") or line(spec))
    for event_type in types:
        if event_type not in TOPIC_BY_EVENT_TYPE:
            raise RuleDefinitionError(f"{what}: unknown event type {event_type!r}", path=source,
                                      line=line(spec, "on"),
                                      hint=suggest(event_type, tuple(TOPIC_BY_EVENT_TYPE)))
    return frozenset(types)


def _uses_items(*texts: Any) -> bool:
    return any(isinstance(text, str) and "item." in text for text in texts)


def _contexts(event: Any, per_item: bool) -> list[ItemContext]:
    if not per_item:
        return [ItemContext(event, None)]
    return [ItemContext(event, item) for item in (getattr(event, "items", None) or ())]


def key_hash(value: Any) -> int:
    """A stable 63-bit id for a distinct key (the key text itself is not stored)."""
    digest = hashlib.blake2b(str(value).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1


# --- definitions -------------------------------------------------------------------------------


class Recorder:
    """What one counter or tracker folds into a member's state from one event. Classes, not
    closures: the engine records on every event, and a compiled method call is direct where
    a closure goes through Python's calling convention (its arguments parsed and boxed)."""

    def __init__(self, name: str, by_instant: bool, per_item: bool) -> None:
        self.name = name
        self.by_instant = by_instant  # `when` is the event's instant, else its local day
        self.per_item = per_item  # reads each item of the event, else the event once

    def record(self, state: Any, event: Any, when: int) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class CounterDef:
    """A daily or distinct counter. `recorder` folds one event into the member's state."""

    name: str
    kind: str  # "daily" or "distinct"
    event_types: frozenset[str]
    recorder: Recorder  # records by local day
    retention_days: int


@dataclass(frozen=True)
class TrackerDef:
    name: str
    event_types: frozenset[str]
    recorder: Recorder  # records by instant
    keep_s: int


def counter_kind(spec: Any) -> str:
    return "distinct" if isinstance(spec, dict) and "distinct" in spec else "daily"


def compile_counter(name: str, spec: Any, source: str, retention_days: int) -> CounterDef:
    what = f"counter {name!r}"
    if not isinstance(spec, dict):
        raise RuleDefinitionError(f"{what} must be a mapping like {{on: order.paid}}",
                                  path=source)
    check_keys(spec, {"on", "sum", "where", "distinct", "description"}, what, source)
    if not NAME.match(name):
        raise RuleDefinitionError(f"counter name {name!r} must be lower_snake_case",
                                  path=source, line=line(spec))
    types = event_types_of(spec, what, source)
    where = None
    if spec.get("where") is not None:
        where = _compile_part(spec["where"], f"{what} 'where'", BOOL, source,
                              line(spec, "where")).eval
    if "distinct" in spec:
        if "sum" in spec:
            raise RuleDefinitionError(f"{what}: 'distinct' and 'sum' exclude each other",
                                      path=source, line=line(spec, "sum"))
        key = _compile_part(spec["distinct"], f"{what} 'distinct'", None, source,
                            line(spec, "distinct")).eval
        per_item = _uses_items(spec.get("distinct"), spec.get("where"))
        return CounterDef(name, "distinct", types,
                          DistinctRecorder(name, key, where, per_item), retention_days)
    total = spec.get("sum")
    measure = None
    if total is not None:
        measure = _compile_part(total, f"{what} 'sum'", NUM, source, line(spec, "sum")).eval
    per_item = _uses_items(total, spec.get("where"))
    return CounterDef(name, "daily", types, DailyRecorder(name, measure, where, per_item),
                      retention_days)


class DailyRecorder(Recorder):
    """Adds the event's amount (or 1 for counting) to the bucket of its local day."""

    def __init__(self, name: str, measure: Callable[[Any], Any] | None,
                 where: Callable[[Any], Any] | None, per_item: bool) -> None:
        super().__init__(name, False, per_item)
        self.measure = measure
        self.where = where

    def record(self, state: Any, event: Any, when: int) -> None:
        measure, where = self.measure, self.where
        amount = 0
        for ctx in _contexts(event, self.per_item):
            if where is not None and not where(ctx):
                continue
            if measure is None:
                amount = 1  # counting events: one per event, however many items match
                break
            value = measure(ctx)
            if value:
                amount += value
        if amount > 0:
            add_to_bucket(state.counters.setdefault(self.name, []), when, amount)


class DistinctRecorder(Recorder):
    """Notes the local day each key was last seen."""

    def __init__(self, name: str, key: Callable[[Any], Any],
                 where: Callable[[Any], Any] | None, per_item: bool) -> None:
        super().__init__(name, False, per_item)
        self.key = key
        self.where = where

    def record(self, state: Any, event: Any, when: int) -> None:
        key, where = self.key, self.where
        for ctx in _contexts(event, self.per_item):
            if where is not None and not where(ctx):
                continue
            value = key(ctx)
            if value is None:
                continue
            series = state.distinct.setdefault(self.name, [])
            touch_key(series, key_hash(value), when, MAX_DISTINCT_KEYS)


def compile_tracker(name: str, spec: Any, source: str) -> TrackerDef:
    what = f"tracker {name!r}"
    if not isinstance(spec, dict):
        raise RuleDefinitionError(f"{what} must be a mapping", path=source)
    check_keys(spec, {"on", "key", "start_when", "stop_when", "keep", "description"}, what,
               source)
    if not NAME.match(name):
        raise RuleDefinitionError(f"tracker name {name!r} must be lower_snake_case",
                                  path=source, line=line(spec))
    types = event_types_of(spec, what, source)
    for required in ("key", "start_when"):
        if spec.get(required) is None:
            raise RuleDefinitionError(f"{what} needs '{required}'", path=source,
                                      line=line(spec))
    key = _compile_part(spec["key"], f"{what} 'key'", None, source, line(spec, "key")).eval
    start = _compile_part(spec["start_when"], f"{what} 'start_when'", BOOL, source,
                          line(spec, "start_when")).eval
    stop = None
    if spec.get("stop_when") is not None:
        stop = _compile_part(spec["stop_when"], f"{what} 'stop_when'", BOOL, source,
                             line(spec, "stop_when")).eval
    keep_s = parse_duration(spec.get("keep", "365d"), f"{what} 'keep'", source,
                            line(spec, "keep"))
    per_item = _uses_items(spec["key"], spec["start_when"], spec.get("stop_when"))

    return TrackerDef(name, types, TrackerRecorder(name, key, start, stop, per_item), keep_s)


class TrackerRecorder(Recorder):
    """Starts the keys `start` holds for, at the event's instant, then stops those `stop`
    holds for."""

    def __init__(self, name: str, key: Callable[[Any], Any], start: Callable[[Any], Any],
                 stop: Callable[[Any], Any] | None, per_item: bool) -> None:
        super().__init__(name, True, per_item)
        self.key = key
        self.start = start
        self.stop = stop

    def record(self, state: Any, event: Any, when: int) -> None:
        key, start, stop, name = self.key, self.start, self.stop, self.name
        # Starts first, then stops: a trial and the regular size in one order is a conversion.
        contexts = [(str(value), ctx) for ctx in _contexts(event, self.per_item)
                    if (value := key(ctx)) is not None]
        keys = state.pending.setdefault(name, [])
        for value, ctx in contexts:
            if start(ctx) and value not in keys[0::2]:
                keys.extend((value, when))
                if len(keys) > 2 * MAX_TRACKED_KEYS:
                    oldest = min(range(0, len(keys), 2), key=lambda i: keys[i + 1])
                    del keys[oldest:oldest + 2]
        if stop is not None:
            for value, ctx in contexts:
                if stop(ctx):
                    _remove_key(keys, value)
        if not keys:
            del state.pending[name]


def _remove_key(keys: list[Any], value: str) -> None:
    for i in range(0, len(keys), 2):
        if keys[i] == value:
            del keys[i:i + 2]
            return


# --- reading them in conditions ----------------------------------------------------------------


def memoized(counter: str, days: int, compute: Callable[[Any], Any],
             is_value: bool) -> Callable[[Any], Any]:
    """`compute` once per evaluation (EvalContext.memo): a named definition's value or next
    change (`counter` ":name", days 0), however many rules read it. Windows have their own,
    MemoizedWindow, in the same slots' space."""
    slot = memo_slot((counter, days, is_value))

    def memoized(ctx: EvalContext) -> Any:
        memo = ctx.memo
        found = memo[slot]
        if found is not UNSET:
            return found
        result = memo[slot] = compute(ctx)
        return result

    return memoized


class Window:
    """A counter's window `counter[Nd]`: its value, and the next instant time alone changes
    it. Read through MemoizedWindow, once per evaluation however many rules read it."""

    def __init__(self, counter: str, days: int) -> None:
        self.counter = counter
        self.days = days

    def value(self, ctx: EvalContext) -> int:
        raise NotImplementedError

    def next_change(self, ctx: EvalContext) -> int | None:
        raise NotImplementedError


class MemoizedWindow:
    """`memoized` for a window, calling it as a compiled method (no closure in between)."""

    def __init__(self, window: Window, is_value: bool) -> None:
        self.window = window
        self.is_value = is_value
        self.slot = memo_slot((window.counter, window.days, is_value))

    def __call__(self, ctx: EvalContext) -> Any:
        memo = ctx.memo
        slot = self.slot
        found = memo[slot]
        if found is not UNSET:
            return found
        window = self.window
        result: Any = window.value(ctx) if self.is_value else window.next_change(ctx)
        memo[slot] = result
        return result


def _window_field(window: Window, inputs: frozenset[str]) -> Field:
    # Counters only add positive amounts, so with no new event a window only loses what it
    # holds: its value can only fall (monotone -1).
    return Field(NUM, MemoizedWindow(window, True),
                 next_change=MemoizedWindow(window, False), monotone=-1, inputs=inputs)


class DailyWindow(Window):
    """counter[Nd]: the sum of the daily buckets of the last N local days, today included.

    A long window of a daily-active member holds hundreds of buckets: the window's first
    bucket is found by bisection and the values summed by slicing, both in C."""

    def value(self, ctx: EvalContext) -> int:
        series = ctx.state.counters.get(self.counter)
        if not series:
            return 0
        first = bisect_left(series[0::2], ctx.today - self.days + 1)
        return sum(series[2 * first + 1::2])

    def next_change(self, ctx: EvalContext) -> int | None:
        series = ctx.state.counters.get(self.counter)
        if not series:
            return None
        days = self.days
        first = 2 * bisect_left(series[0::2], ctx.today - days + 1)
        if first < len(series):
            return ctx.calendar.day_start(series[first] + days)
        return None


class DistinctWindow(Window):
    """counter[Nd] of a distinct counter: keys last seen in the last N local days."""

    def value(self, ctx: EvalContext) -> int:
        series = ctx.state.distinct.get(self.counter)
        if not series:
            return 0
        low = ctx.today - self.days + 1
        return sum(1 for i in range(1, len(series), 2) if series[i] >= low)

    def next_change(self, ctx: EvalContext) -> int | None:
        series = ctx.state.distinct.get(self.counter)
        if not series:
            return None
        days = self.days
        low = ctx.today - days + 1
        seen = [series[i] for i in range(1, len(series), 2) if series[i] >= low]
        return ctx.calendar.day_start(min(seen) + days) if seen else None


def daily_window(counter: str, days: int, inputs: frozenset[str]) -> Field:
    return _window_field(DailyWindow(counter, days), inputs)


def distinct_window(counter: str, days: int, inputs: frozenset[str]) -> Field:
    return _window_field(DistinctWindow(counter, days), inputs)


def pending_field(tracker: str, age_s: int, keep_s: int) -> tuple[Field, Field]:
    """pending(tracker, Nd): keys started at least N days ago and not stopped since; and the
    list of those keys, for evidence."""

    def keys_due(ctx: EvalContext) -> list[str]:
        keys = ctx.state.pending.get(tracker) or ()
        return [keys[i] for i in range(0, len(keys), 2)
                if ctx.now - age_s >= keys[i + 1] > ctx.now - keep_s]

    def value(ctx: EvalContext) -> int:
        return len(keys_due(ctx))

    def next_change(ctx: EvalContext) -> int | None:
        keys = ctx.state.pending.get(tracker) or ()
        moments = []
        for i in range(1, len(keys), 2):
            started = keys[i]
            for moment in (started + age_s, started + keep_s):
                if moment > ctx.now:
                    moments.append(moment)
        return min(moments) if moments else None

    return (Field(NUM, value, next_change=next_change),
            Field(STR, lambda ctx: ", ".join(keys_due(ctx))))
