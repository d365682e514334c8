"""Which WeCom mark_tag calls the `wecom.marks` records need, and making them without losing one.

A record (schemas/wecom.py) names, per (guide userid, customer external_userid) pair, the tags
to add and to remove; each pair needs its own mark_tag call (DESIGN.md "WeCom facts"). The
rules this module keeps:

- **Mapping.** Tag `high_value` is the corp tag named by its `name_zh` (at most 30 characters)
  in the group "自动标签". Missing corp tags are created with add_corp_tag; ids are cached and
  re-read from get_corp_tag_list at start and whenever WeCom says a tag id is unknown (40068).
- **Coalescing, last-write-wins.** Changes for a pair that arrive within `coalesce_s` of the
  first one go out as one call. Within it, each tag keeps the op of the change that arrived
  last: changes of one member come in partition order, so arrival order is the order they
  happened in.
- **One call in flight per pair.** Changes that arrive while a pair's call is open wait for
  it and go out in the next call, so two calls for one pair never race and an older state can
  never land after a newer one.
- **Nothing is lost.** A change is done only when the calls of all its pairs succeeded
  (`on_done(ticket)` then fires once). A failed call puts its batch back *under* whatever
  arrived since (newer ops win) and is retried with backoff, for as long as it takes: a
  retry re-sends the desired final state, so sending it twice is harmless. The one exception
  is a pair WeCom says does not exist (84061 no such contact relation, 40096 bad external
  userid, 40003/60111 bad userid): no call can ever succeed for it, so its changes are
  counted as `unreachable`, logged and done.

The coalescing state, the offset bookkeeping and the tag-list parsing are pure and tested
without I/O; `TagMapper` and `WeComSync` take the API as an injected object.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Iterable, Mapping, NamedTuple, Protocol

from schemas.wecom import WecomMarks
from streams.platform.backoff import backoff_delay
from streams.serving.wecom.client import WeComError

log = logging.getLogger(__name__)

GROUP_NAME = "自动标签"
MAX_TAG_NAME = 30
UNKNOWN_TAG_ERRCODES = frozenset({40068})
TAG_EXISTS_ERRCODE = 40071
# mark_tag can never succeed for these pairs: the customer is not (or no longer) a contact of
# that guide, or one of the ids does not exist.
PAIR_GONE_ERRCODES = frozenset({84061, 40096, 40003, 60111})

Ticket = Hashable


class Pair(NamedTuple):
    userid: str
    external_userid: str


# --- pure parts --------------------------------------------------------------------------------


def corp_tag_name(tag: str, name_zh: str) -> str:
    """The WeCom corp tag name of `tag`: its display name (the tag id when it has none), cut to
    30 characters with a short hash of the tag id, so two long names stay distinct."""
    name = (name_zh or "").strip() or tag
    if len(name) <= MAX_TAG_NAME:
        return name
    digest = hashlib.blake2b(tag.encode("utf-8"), digest_size=3).hexdigest()
    return f"{name[:MAX_TAG_NAME - len(digest) - 1]}~{digest}"


def pair_edits(record: WecomMarks) -> dict[Pair, list[tuple[str, str]]]:
    """Per pair of the record, its (tag, op) edits in order: adds, then removes. Marks
    without an external_userid are skipped; a pair named twice keeps both, in order."""
    edits: dict[Pair, list[tuple[str, str]]] = {}
    for mark in record.marks:
        if mark.userid and mark.external_userid:
            ops = edits.setdefault(Pair(mark.userid, mark.external_userid), [])
            ops.extend((tag, "added") for tag in mark.add)
            ops.extend((tag, "removed") for tag in mark.remove)
    return edits


class PairPending:
    """The not-yet-sent desired state of one pair: tag -> op, last write wins."""

    __slots__ = ("ops", "names", "tickets", "since", "edits")

    def __init__(self, since: float) -> None:
        self.ops: dict[str, str] = {}
        self.names: dict[str, str] = {}
        self.tickets: list[Ticket] = []
        self.since = since  # when the oldest change in here arrived
        self.edits = 0  # (tag, op) edits applied, before last-write-wins folded them

    def apply(self, tag: str, op: str, name_zh: str) -> None:
        self.ops[tag] = op
        self.names[tag] = name_zh
        self.edits += 1

    def absorb_older(self, older: "PairPending") -> None:
        """Put back a batch that failed: its ops count only where nothing newer arrived."""
        for tag, op in older.ops.items():
            if tag not in self.ops:
                self.ops[tag] = op
                self.names[tag] = older.names[tag]
        self.tickets[:0] = older.tickets
        self.since = min(self.since, older.since)
        self.edits += older.edits

    def added(self) -> list[str]:
        return [tag for tag, op in self.ops.items() if op == "added"]

    def removed(self) -> list[str]:
        return [tag for tag, op in self.ops.items() if op == "removed"]


def coalesce(records: Iterable[WecomMarks]) -> dict[Pair, dict[str, str]]:
    """What one round of calls would send for `records` in arrival order: per pair, each
    tag's last op. The reference the sync's behaviour is tested against."""
    out: dict[Pair, dict[str, str]] = {}
    for record in records:
        for pair, ops in pair_edits(record).items():
            out.setdefault(pair, {}).update(ops)
    return out


class OffsetTracker:
    """Offsets of one partition in arrival order; the commit point is the first not done.

    Committing `commit_point()` means: every record before it is done, so a restart that
    resumes there loses nothing (and re-sends at most what was done after the first undone).
    """

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._done: dict[int, bool] = {}
        self._next: int | None = None

    def __len__(self) -> int:
        return len(self._order)

    def add(self, offset: int) -> None:
        self._order.append(offset)
        self._done[offset] = False
        self._next = offset + 1

    def done(self, offset: int) -> None:
        if offset in self._done:
            self._done[offset] = True

    def commit_point(self) -> int | None:
        """The offset to commit (first not done, or one past the last), None if none seen."""
        while self._order and self._done[self._order[0]]:
            del self._done[self._order.popleft()]
        if self._order:
            return self._order[0]
        return self._next


def group_tag_ids(groups: Iterable[Mapping[str, Any]], group_name: str
                  ) -> tuple[str | None, dict[str, str]]:
    """From a get_corp_tag_list answer: our group's id and its live tags by name."""
    group_id: str | None = None
    ids: dict[str, str] = {}
    for group in groups:
        if group.get("group_name") != group_name or group.get("deleted"):
            continue
        group_id = group_id or str(group.get("group_id"))
        for tag in group.get("tag") or []:
            if not tag.get("deleted") and tag.get("name") and tag.get("id"):
                ids.setdefault(str(tag["name"]), str(tag["id"]))
    return group_id, ids


# --- the parts that call WeCom -----------------------------------------------------------------


class TagApi(Protocol):
    async def get_corp_tag_list(self) -> list[dict[str, Any]]: ...

    async def add_corp_tag(self, *, names: Iterable[str], group_name: str,
                           group_id: str | None = None) -> dict[str, Any]: ...

    async def mark_tag(self, userid: str, external_userid: str, *, add: Iterable[str] = (),
                       remove: Iterable[str] = ()) -> None: ...


class TagMapper:
    """tag id -> WeCom corp tag id, creating missing corp tags in one add_corp_tag call."""

    def __init__(self, api: TagApi, group_name: str = GROUP_NAME) -> None:
        self.api = api
        self.group_name = group_name
        self.group_id: str | None = None
        self._ids: dict[str, str] = {}  # corp tag name -> corp tag id
        self._stale = True
        self._lock = asyncio.Lock()
        self.created = 0
        self.refreshes = 0

    def invalidate(self) -> None:
        """Re-read the tag list before the next lookup (a tag id was refused)."""
        self._stale = True

    async def refresh(self) -> None:
        groups = await self.api.get_corp_tag_list()
        self.group_id, self._ids = group_tag_ids(groups, self.group_name)
        self._stale = False
        self.refreshes += 1

    async def resolve(self, names: Mapping[str, str]) -> dict[str, str]:
        """{tag: name_zh} -> {tag: corp tag id}."""
        wanted = {tag: corp_tag_name(tag, name_zh) for tag, name_zh in names.items()}
        if self._stale or any(name not in self._ids for name in wanted.values()):
            async with self._lock:
                if self._stale:
                    await self.refresh()
                await self._ensure(set(wanted.values()))
        return {tag: self._ids[name] for tag, name in wanted.items()}

    async def _ensure(self, names: set[str]) -> None:
        missing = sorted(n for n in names if n not in self._ids)
        if not missing:
            return
        try:
            group = await self.api.add_corp_tag(names=missing, group_name=self.group_name,
                                                group_id=self.group_id)
        except WeComError as exc:
            if exc.errcode not in (TAG_EXISTS_ERRCODE, *UNKNOWN_TAG_ERRCODES):
                raise
            # Someone else created one of them, or our group was deleted: look again and
            # create what is still missing.
            await self.refresh()
            missing = sorted(n for n in names if n not in self._ids)
            if not missing:
                return
            group = await self.api.add_corp_tag(names=missing, group_name=self.group_name,
                                                group_id=self.group_id)
        self.group_id = str(group.get("group_id") or self.group_id or "") or None
        for tag in group.get("tag") or []:
            self._ids[str(tag["name"])] = str(tag["id"])
            self.created += 1
        still = [n for n in names if n not in self._ids]
        if still:
            raise WeComError("/cgi-bin/externalcontact/add_corp_tag", None,
                             f"created tags missing from the answer: {still}", retryable=True)


@dataclass
class SyncStats:
    changes: int = 0        # wecom.marks records submitted
    done: int = 0           # records whose pairs all succeeded (or were unreachable)
    without_pairs: int = 0  # records naming no pair with an external_userid
    marks: int = 0          # successful mark_tag calls
    failed_marks: int = 0   # mark_tag calls that failed after the client's retries; re-queued
    unreachable: int = 0    # pair-changes dropped because WeCom says the pair does not exist
    max_batch: int = 0      # most tags in one mark_tag call
    coalesced: int = 0      # tag edits folded into a later edit of the same tag and pair
    errors: dict[str, int] = field(default_factory=dict)


@dataclass
class _PairState:
    pending: PairPending | None = None
    in_flight: bool = False
    queued: bool = False
    timer: asyncio.TimerHandle | None = None
    failures: int = 0


class WeComSync:
    """Coalesces changes per pair and marks them through `api`, with `workers` calls open at
    most (the client caps concurrency again, over all APIs). `on_done(ticket)` fires once per
    submitted change, when it is applied."""

    def __init__(self, api: TagApi, mapper: TagMapper, *, on_done: Callable[[Ticket], None],
                 coalesce_s: float = 0.2, workers: int = 5, retry_base_s: float = 0.5,
                 retry_cap_s: float = 15.0, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api = api
        self.mapper = mapper
        self.coalesce_s = coalesce_s
        self.stats = SyncStats()
        self._on_done = on_done
        self._workers_n = workers
        self._retry_base, self._retry_cap = retry_base_s, retry_cap_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._pairs: dict[Pair, _PairState] = {}
        self._remaining: dict[Ticket, int] = {}
        self._backing_off: set[Pair] = set()
        self._ready: asyncio.Queue[Pair] = asyncio.Queue()
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing_since: float | None = None
        self._last_error = ""

    @property
    def pending(self) -> int:
        """Changes submitted and not done yet."""
        return len(self._remaining)

    def idle(self) -> bool:
        return not self._remaining and not self._pairs

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._workers:
            return
        self._loop = asyncio.get_running_loop()
        self._workers = [asyncio.create_task(self._work(), name=f"wecom-sync-{i}")
                         for i in range(self._workers_n)]

    async def stop(self) -> None:
        await self._drop_everything()

    async def reset(self) -> None:
        """Forget every pending change and cancel open calls (partitions were revoked: the
        changes not done will be consumed again from the committed offsets)."""
        running = bool(self._workers)
        await self._drop_everything()
        if running:
            await self.start()

    async def _drop_everything(self) -> None:
        workers, self._workers = self._workers, []
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        for state in self._pairs.values():
            if state.timer is not None:
                state.timer.cancel()
        self._pairs.clear()
        self._remaining.clear()
        self._backing_off.clear()
        self._ready = asyncio.Queue()

    # --- input ----------------------------------------------------------------------------------

    def submit(self, record: WecomMarks, ticket: Ticket) -> None:
        """Take a record (in arrival order); `on_done(ticket)` fires once it is applied."""
        self.stats.changes += 1
        edits = pair_edits(record)
        if not edits:
            self.stats.without_pairs += 1
            self._finish(ticket)
            return
        self._remaining[ticket] = self._remaining.get(ticket, 0) + len(edits)
        now = self._clock()
        for pair, ops in edits.items():
            state = self._pairs.get(pair)
            if state is None:
                state = self._pairs[pair] = _PairState()
            if state.pending is None:
                state.pending = PairPending(now)
            for tag, op in ops:
                state.pending.apply(tag, op, record.names.get(tag, ""))
            state.pending.tickets.append(ticket)
            if not state.in_flight and not state.queued and state.timer is None:
                self._schedule(pair, state, self.coalesce_s)

    # --- scheduling -----------------------------------------------------------------------------

    def _schedule(self, pair: Pair, state: _PairState, delay: float) -> None:
        assert self._loop is not None, "WeComSync.start() was not awaited"
        if state.timer is not None:
            state.timer.cancel()
        state.timer = self._loop.call_later(max(0.0, delay), self._make_ready, pair)

    def _make_ready(self, pair: Pair) -> None:
        state = self._pairs.get(pair)
        if state is None:
            return
        state.timer = None
        self._backing_off.discard(pair)
        if state.pending is not None and not state.in_flight and not state.queued:
            state.queued = True
            self._ready.put_nowait(pair)

    def _wake_backing_off(self) -> None:
        """A call just succeeded after failures elsewhere: WeCom is back, retry now rather
        than at each pair's backoff deadline."""
        for pair in list(self._backing_off):
            state = self._pairs.get(pair)
            if state is not None and state.timer is not None:
                state.timer.cancel()
                state.timer = None
            self._make_ready(pair)

    # --- calls ----------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            pair = await self._ready.get()
            state = self._pairs.get(pair)
            if state is None or state.pending is None:
                continue
            state.queued = False
            batch, state.pending = state.pending, None
            state.in_flight = True
            outcome = await self._mark(pair, batch)
            state.in_flight = False
            self._settle(pair, state, batch, outcome)

    async def _mark(self, pair: Pair, batch: PairPending) -> str:
        """"ok", "gone" (the pair cannot be marked, ever) or "retry"."""
        try:
            ids = await self.mapper.resolve(batch.names)
            add = sorted({ids[tag] for tag in batch.added()})
            remove = sorted({ids[tag] for tag in batch.removed()} - set(add))
            await self.api.mark_tag(pair.userid, pair.external_userid, add=add, remove=remove)
        except WeComError as exc:
            label = str(exc.errcode) if exc.errcode is not None else "unreachable"
            self._last_error = str(exc)
            self.stats.errors[label] = self.stats.errors.get(label, 0) + 1
            if exc.errcode in PAIR_GONE_ERRCODES:
                log.warning("WeCom pair %s/%s cannot be tagged (%s): %d change(s) dropped",
                            pair.userid, pair.external_userid, exc, len(batch.tickets))
                return "gone"
            if exc.errcode in UNKNOWN_TAG_ERRCODES:
                self.mapper.invalidate()
            return "retry"
        except Exception:  # noqa: BLE001 - a bug here must delay changes, never drop them
            log.exception("WeCom sync: unexpected error marking %s/%s", *pair)
            self._last_error = "internal error"
            self.stats.errors["internal"] = self.stats.errors.get("internal", 0) + 1
            return "retry"
        self.stats.max_batch = max(self.stats.max_batch, len(batch.ops))
        self.stats.coalesced += batch.edits - len(batch.ops)
        return "ok"

    def _settle(self, pair: Pair, state: _PairState, batch: PairPending, outcome: str) -> None:
        if outcome == "retry":
            self.stats.failed_marks += 1
            if state.pending is None:
                state.pending = batch
            else:
                state.pending.absorb_older(batch)
            state.failures += 1
            if self._failing_since is None:
                self._failing_since = self._clock()
                log.warning("WeCom sync: calls failing (%s); changes wait and are retried",
                            self._last_error)
            if state.failures % 20 == 0:
                log.warning("WeCom sync: %s/%s failed %d times (%s); %d change(s) waiting",
                            pair.userid, pair.external_userid, state.failures,
                            self._last_error, len(state.pending.tickets))
            self._backing_off.add(pair)
            self._schedule(pair, state, self._retry_delay(state.failures))
            return
        if outcome == "ok":
            self.stats.marks += 1
        else:
            self.stats.unreachable += len(batch.tickets)
        state.failures = 0
        for ticket in batch.tickets:
            self._resolve(ticket)
        if outcome == "ok" and self._failing_since is not None:
            log.warning("WeCom sync: calls succeed again after %.1f s; %d change(s) waiting",
                        self._clock() - self._failing_since, self.pending)
            self._failing_since = None
        if outcome == "ok" and self._backing_off:
            self._wake_backing_off()
        if state.pending is not None:
            wait = state.pending.since + self.coalesce_s - self._clock()
            self._schedule(pair, state, wait)
        elif state.timer is None and not state.queued:
            del self._pairs[pair]

    def _retry_delay(self, failures: int) -> float:
        return backoff_delay(failures, self._retry_base, self._retry_cap, self._rng)

    def _resolve(self, ticket: Ticket) -> None:
        left = self._remaining.get(ticket)
        if left is None:
            return
        if left > 1:
            self._remaining[ticket] = left - 1
            return
        del self._remaining[ticket]
        self._finish(ticket)

    def _finish(self, ticket: Ticket) -> None:
        self.stats.done += 1
        self._on_done(ticket)
