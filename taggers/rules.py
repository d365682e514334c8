"""Rule files: parse YAML (keeping line numbers), validate, compile once into a `RulePack`.

Everything a rule may reference is declared here from the member state model, so a typo
stops the load with the file, the line and a "did you mean". A `RulePack` holds only
frozen data and closures; evaluating an event never parses or interprets rule text again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from schemas.errors import RuleDefinitionError
from schemas.events import TOPIC_BY_EVENT_TYPE
from taggers.clock import DAY, LocalCalendar
from taggers.yamlsrc import check_keys as _check_keys
from taggers.yamlsrc import line as _line
from taggers.yamlsrc import load_yaml
from taggers.yamlsrc import suggest as _suggest
from taggers.expr import (
    BOOL,
    NUM,
    STR,
    TIME,
    Compiled,
    ExprError,
    Field,
    Name,
    Scope,
    compile_expression,
)

TAG_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
FAMILIES = ("collected", "service", "transaction", "interaction", "scan", "operational",
            "model", "lifecycle", "rfm", "tier")
WECOM_TAG_NAME_LIMIT = 30  # WeCom rejects corp tag names longer than this


# --- compiled pack ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CounterDef:
    """A per-day counter over events: counts them, or sums a field, optionally filtered."""

    name: str
    event_types: frozenset[str]
    # event -> amount to add (0 means nothing to record)
    measure: Callable[[Any], int]
    retention_days: int


@dataclass(frozen=True)
class TagRule:
    id: str
    name_zh: str
    family: str
    condition: Compiled
    line: int | None
    depends_on: tuple[str, ...]


@dataclass(frozen=True)
class RulePack:
    version: str
    calendar: LocalCalendar
    counters: tuple[CounterDef, ...]
    tags: tuple[TagRule, ...]  # in evaluation order: a tag comes after the tags it reads
    source: str

    def counters_for(self, event_type: str) -> tuple[CounterDef, ...]:
        return self._by_type.get(event_type, ())

    def __post_init__(self) -> None:
        by_type: dict[str, list[CounterDef]] = {}
        for counter in self.counters:
            for event_type in counter.event_types:
                by_type.setdefault(event_type, []).append(counter)
        object.__setattr__(self, "_by_type", {k: tuple(v) for k, v in by_type.items()})

    def tag(self, tag_id: str) -> TagRule | None:
        return next((rule for rule in self.tags if rule.id == tag_id), None)


class EvalContext:
    """What a condition sees: the member's state, the current event (None on a timer), now."""

    __slots__ = ("state", "event", "now", "today", "calendar", "held")

    def __init__(self, state: Any, event: Any, now: int, calendar: LocalCalendar) -> None:
        self.state = state
        self.event = event
        self.now = now
        self.today = calendar.day_of(now)
        self.calendar = calendar
        self.held: dict[str, bool] = {}


# --- the names a condition may use -----------------------------------------------------------


def _state_fields() -> dict[str, Field]:
    def opt(path: str) -> Callable[[EvalContext], Any]:
        attr = path.split(".")[-1]
        return lambda ctx: getattr(ctx.event, attr, None) if ctx.event is not None else None

    return {
        "joined": Field(BOOL, lambda ctx: ctx.state.joined_at is not None),
        "joined_at": Field(TIME, lambda ctx: ctx.state.joined_at, nullable=True),
        "birthday": Field(STR, lambda ctx: ctx.state.birthday, nullable=True),
        "orders.count": Field(NUM, lambda ctx: ctx.state.orders.count),
        "orders.distinct_days": Field(NUM, lambda ctx: ctx.state.orders.distinct_days),
        "orders.spend_fen": Field(NUM, lambda ctx: ctx.state.orders.spend_fen),
        "orders.refund_fen": Field(NUM, lambda ctx: ctx.state.orders.refund_fen),
        "orders.net_spend_fen": Field(
            NUM, lambda ctx: ctx.state.orders.spend_fen - ctx.state.orders.refund_fen),
        "orders.first_at": Field(TIME, lambda ctx: ctx.state.orders.first_at, nullable=True),
        "orders.last_at": Field(TIME, lambda ctx: ctx.state.orders.last_at, nullable=True),
        "guides.count": Field(NUM, lambda ctx: len(ctx.state.guides)),
        "event.type": Field(
            STR, lambda ctx: ctx.event.event_type if ctx.event is not None else None,
            nullable=True),
        "event.channel": Field(STR, opt("event.channel"), nullable=True),
        "event.amount_fen": Field(NUM, opt("event.amount_fen"), nullable=True),
        "now": Field(TIME, lambda ctx: ctx.now),
    }


def _window_field(counter: str, days: int) -> Field:
    """counter[Nd]: the sum of the daily buckets of the last N local days, today included."""

    def value(ctx: EvalContext) -> int:
        series = ctx.state.counters.get(counter)
        if not series:
            return 0
        low = ctx.today - days + 1
        total = 0
        for i in range(len(series) - 2, -1, -2):
            if series[i] < low:
                break
            total += series[i + 1]
        return total

    def next_change(ctx: EvalContext) -> int | None:
        series = ctx.state.counters.get(counter)
        if not series:
            return None
        low = ctx.today - days + 1
        for i in range(0, len(series), 2):
            if series[i] >= low:
                return ctx.calendar.day_start(series[i] + days)
        return None

    # Counters only add non-negative amounts, so with no new event a window only loses buckets.
    return Field(NUM, value, next_change=next_change, monotone=-1)


def _days_since(compiler: Any, *args: Any) -> Compiled:
    if len(args) != 1:
        raise ExprError("days_since takes one time value, e.g. days_since(orders.last_at)")
    anchor = compiler.compile(args[0])
    if anchor.kind != TIME:
        raise ExprError(f"days_since needs a time value, got a {anchor.kind}")
    get = anchor.eval

    def value(ctx: EvalContext) -> int | None:
        at = get(ctx)
        return None if at is None else (ctx.now - at) // DAY

    def next_change(ctx: EvalContext) -> int | None:
        at = get(ctx)
        if at is None:
            return None
        return at + ((ctx.now - at) // DAY + 1) * DAY

    def reaches(ctx: EvalContext, days: int) -> int | None:
        at = get(ctx)
        return None if at is None else at + days * DAY

    label = f"days_since({args[0].path if isinstance(args[0], Name) else '…'})"
    return Compiled(NUM, value, True, next_change, +1, reaches,
                    leaves=((label, value, NUM),) + anchor.leaves)


def _has_tag_factory(tag_ids: list[str], dependencies: list[str]) -> Callable[..., Compiled]:
    def has_tag(compiler: Any, *args: Any) -> Compiled:
        if len(args) != 1 or not isinstance(args[0], Name):
            raise ExprError("has_tag takes one tag id, e.g. has_tag(high_value)")
        tag_id = args[0].path
        if tag_id not in tag_ids:
            raise ExprError(f"unknown tag {tag_id!r} in has_tag", hint=_suggest(tag_id, tag_ids))
        dependencies.append(tag_id)

        def held(ctx: EvalContext) -> bool:
            return ctx.held.get(tag_id, False)

        return Compiled(BOOL, held, leaves=((f"has_tag({tag_id})", held, BOOL),))

    return has_tag


# --- counters --------------------------------------------------------------------------------

_EVENT_MEASURES = ("amount_fen",)
_ITEM_FIELDS = {
    "item.category": (STR, lambda item: item.category),
    "item.sku": (STR, lambda item: item.sku),
    "item.spec": (STR, lambda item: item.spec),
    "item.unit_price_fen": (NUM, lambda item: item.unit_price_fen),
    "item.quantity": (NUM, lambda item: item.quantity),
    "item.amount_fen": (NUM, lambda item: item.unit_price_fen * item.quantity),
}


class _ItemContext:
    __slots__ = ("event", "item")

    def __init__(self, event: Any, item: Any) -> None:
        self.event = event
        self.item = item


def _filter_scope() -> Scope:
    fields = {
        "event.type": Field(STR, lambda c: c.event.event_type),
        "event.channel": Field(STR, lambda c: c.event.channel),
        "event.amount_fen": Field(NUM, lambda c: getattr(c.event, "amount_fen", None),
                                  nullable=True),
        "event.category": Field(STR, lambda c: getattr(c.event, "category", None),
                                nullable=True),
    }
    for name, (kind, get) in _ITEM_FIELDS.items():
        fields[name] = Field(kind, (lambda g: lambda c: g(c.item) if c.item else None)(get),
                             nullable=True)
    return Scope(fields=fields)


def _compile_counter(name: str, spec: dict[str, Any], path: str,
                     retention: dict[str, int]) -> CounterDef:
    _check_keys(spec, {"on", "sum", "where", "description"}, f"counter {name!r}", path)
    if not re.match(r"^[a-z][a-z0-9_]{0,39}$", name):
        raise RuleDefinitionError(f"counter name {name!r} must be lower_snake_case",
                                  path=path, line=_line(spec))
    on = spec.get("on")
    types = [on] if isinstance(on, str) else on
    if not types or not all(isinstance(t, str) for t in types):
        raise RuleDefinitionError(f"counter {name!r} needs 'on': one or more event types",
                                  path=path, line=_line(spec, "on"))
    for event_type in types:
        if event_type not in TOPIC_BY_EVENT_TYPE:
            raise RuleDefinitionError(f"counter {name!r}: unknown event type {event_type!r}",
                                      path=path, line=_line(spec, "on"),
                                      hint=_suggest(event_type, tuple(TOPIC_BY_EVENT_TYPE)))
    total = spec.get("sum")
    where_src = spec.get("where")
    per_item = (isinstance(total, str) and total.startswith("item.")) or (
        isinstance(where_src, str) and "item." in where_src)
    where = None
    if where_src is not None:
        try:
            where = compile_expression(str(where_src), _filter_scope())
        except ExprError as exc:
            raise RuleDefinitionError(f"counter {name!r}: {exc}", path=path,
                                      line=_line(spec, "where"), hint=exc.hint) from None
        if where.kind != BOOL:
            raise RuleDefinitionError(f"counter {name!r}: 'where' must be true/false",
                                      path=path, line=_line(spec, "where"))
    if total is not None and total not in _EVENT_MEASURES and total not in _ITEM_FIELDS:
        options = _EVENT_MEASURES + tuple(k for k, v in _ITEM_FIELDS.items() if v[0] == NUM)
        raise RuleDefinitionError(f"counter {name!r}: cannot sum {total!r}", path=path,
                                  line=_line(spec, "sum"), hint=_suggest(str(total), options))
    measure = _measure(total, where.eval if where else None, per_item)
    return CounterDef(name, frozenset(types), measure, retention.get(name, 0))


def _measure(total: str | None, where: Callable[[Any], Any] | None,
             per_item: bool) -> Callable[[Any], int]:
    if not per_item:
        def event_measure(event: Any) -> int:
            if where is not None and not where(_ItemContext(event, None)):
                return 0
            return 1 if total is None else (getattr(event, total, 0) or 0)

        return event_measure

    item_value = _ITEM_FIELDS[total][1] if total else None

    def item_measure(event: Any) -> int:
        items = getattr(event, "items", None) or ()
        matched = 0
        for item in items:
            if where is None or where(_ItemContext(event, item)):
                if item_value is None:
                    return 1  # counting events that have at least one matching item
                matched += item_value(item)
        return matched

    return item_measure


# --- loading ---------------------------------------------------------------------------------


def load_rules(path: str | Path) -> RulePack:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleDefinitionError(f"cannot read rule file: {exc}", path=str(path)) from None
    return compile_rules(text, source=str(path))


def compile_rules(text: str, source: str = "<rules>") -> RulePack:
    document = load_yaml(text, source)
    if not isinstance(document, dict):
        raise RuleDefinitionError("a rule file is a mapping with 'version', 'counters' and 'tags'",
                                  path=source, line=1)
    _check_keys(document, {"version", "timezone", "counters", "tags"}, "rule file", source)
    version = document.get("version")
    if not isinstance(version, str) or not version.strip():
        raise RuleDefinitionError("'version' must be a non-empty string, e.g. \"2024-03-01.1\"",
                                  path=source, line=_line(document, "version") or 1)
    try:
        calendar = LocalCalendar.parse(str(document.get("timezone", "+08:00")))
    except ValueError as exc:
        raise RuleDefinitionError(str(exc), path=source,
                                  line=_line(document, "timezone")) from None

    counter_specs = document.get("counters") or {}
    tag_specs = document.get("tags") or []
    if not isinstance(counter_specs, dict):
        raise RuleDefinitionError("'counters' must be a mapping of name to definition",
                                  path=source, line=_line(document, "counters"))
    if not isinstance(tag_specs, list):
        raise RuleDefinitionError("'tags' must be a list of tag rules", path=source,
                                  line=_line(document, "tags"))
    counter_names = [name for name in counter_specs if not str(name).startswith("__")]

    # Tags first: their windows decide how long each counter keeps its daily buckets.
    retention: dict[str, int] = {}
    tag_ids: list[str] = []
    for spec in tag_specs:
        if isinstance(spec, dict) and isinstance(spec.get("id"), str):
            if spec["id"] in tag_ids:
                raise RuleDefinitionError(f"duplicate tag id {spec['id']!r}", path=source,
                                          line=_line(spec, "id"))
            tag_ids.append(spec["id"])

    def windows(counter: str, days: int) -> Field:
        retention[counter] = max(retention.get(counter, 0), days)
        return _window_field(counter, days)

    tags: list[TagRule] = []
    for spec in tag_specs:
        tags.append(_compile_tag(spec, source, tag_ids, counter_names, windows))

    counters = tuple(
        _compile_counter(str(name), spec if isinstance(spec, dict) else {}, source, retention)
        for name, spec in counter_specs.items() if not str(name).startswith("__"))
    return RulePack(version.strip(), calendar, counters, _dependency_order(tags, source), source)


def _compile_tag(spec: Any, source: str, tag_ids: list[str], counter_names: list[str],
                 windows: Callable[[str, int], Field]) -> TagRule:
    if not isinstance(spec, dict):
        raise RuleDefinitionError("each tag rule is a mapping with id, name_zh, family, when",
                                  path=source)
    _check_keys(spec, {"id", "name_zh", "family", "when", "description"}, "tag rule", source)
    tag_id = spec.get("id")
    if not isinstance(tag_id, str) or not TAG_ID.match(tag_id):
        raise RuleDefinitionError(f"tag id {tag_id!r} must be lower_snake_case, ≤ 40 chars",
                                  path=source, line=_line(spec, "id"))
    name_zh = spec.get("name_zh")
    if not isinstance(name_zh, str) or not name_zh.strip():
        raise RuleDefinitionError(f"tag {tag_id!r} needs a display name 'name_zh'", path=source,
                                  line=_line(spec))
    if len(name_zh) > WECOM_TAG_NAME_LIMIT:
        raise RuleDefinitionError(
            f"tag {tag_id!r}: name_zh is {len(name_zh)} characters; WeCom allows "
            f"{WECOM_TAG_NAME_LIMIT}", path=source, line=_line(spec, "name_zh"))
    family = spec.get("family")
    if family not in FAMILIES:
        raise RuleDefinitionError(f"tag {tag_id!r}: unknown family {family!r}", path=source,
                                  line=_line(spec, "family"),
                                  hint=_suggest(str(family), FAMILIES) or
                                  f"one of {', '.join(FAMILIES)}")
    when = spec.get("when")
    if isinstance(when, bool):
        when = "true" if when else "false"
    if not isinstance(when, str) or not when.strip():
        raise RuleDefinitionError(f"tag {tag_id!r} needs a condition 'when'", path=source,
                                  line=_line(spec))
    dependencies: list[str] = []
    scope = Scope(fields=_state_fields(), windows=windows, window_names=counter_names,
                  functions={"days_since": _days_since,
                             "has_tag": _has_tag_factory(tag_ids, dependencies)})
    try:
        condition = compile_expression(when, scope)
    except ExprError as exc:
        raise RuleDefinitionError(f"tag {tag_id!r}: {exc}", path=source,
                                  line=_line(spec, "when"), hint=exc.hint) from None
    if condition.kind != BOOL:
        raise RuleDefinitionError(f"tag {tag_id!r}: 'when' must be true/false, "
                                  f"not a {condition.kind}", path=source,
                                  line=_line(spec, "when"))
    return TagRule(tag_id, name_zh.strip(), family, condition, _line(spec, "when"),
                   tuple(dependencies))


def _dependency_order(tags: list[TagRule], source: str) -> tuple[TagRule, ...]:
    by_id = {rule.id: rule for rule in tags}
    ordered: list[TagRule] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(rule: TagRule, trail: list[str]) -> None:
        if state.get(rule.id) == 2:
            return
        if state.get(rule.id) == 1:
            cycle = " -> ".join(trail[trail.index(rule.id):] + [rule.id])
            raise RuleDefinitionError(f"tag rules read each other in a cycle: {cycle}",
                                      path=source, line=rule.line,
                                      hint="a tag cannot depend on itself through has_tag")
        state[rule.id] = 1
        for dependency in rule.depends_on:
            visit(by_id[dependency], trail + [rule.id])
        state[rule.id] = 2
        ordered.append(rule)

    for rule in tags:
        visit(rule, [])
    return tuple(ordered)
