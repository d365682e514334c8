"""The member agent: events of a member's partition in, state and tag changes out.

A thin adapter (STYLE.md rule 2): it decodes, routes, calls the pure engine, stores the new
state and sends the results. Every business decision lives in `taggers`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable

import faust

import orjson

from schemas.changes import encode_change
from schemas.control import WATERMARK, control_kind, decode_watermark
from schemas.decode import decode_event
from schemas.errors import EventRejected
from schemas.events import TIE_RANK_BY_TOPIC
from streams import metrics
from streams.clock import PartitionClocks
from streams.deadletter import dead_letter
from streams.deadlines import DeadlineIndex
from streams.partitioning import partition_for
from streams.reorder import ReorderBuffer
from streams.topics import EVENT_TOPICS, REROUTE_TOPIC, Topics
from taggers.clock import to_epoch
from taggers.engine import Engine, Outcome
from taggers.profile import render_profile
from taggers.state import MemberState, decode_state, encode_state

log = logging.getLogger(__name__)

BACKFILL = b"backfill"  # re-evaluate every member of the partition with the current rules
ORIGIN_HEADER = "tagstream-origin"  # "topic:partition:offset" of a re-routed event


@dataclass
class Counters:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    rerouted: int = 0
    tag_changes: int = 0
    timers_fired: int = 0


Ack = Callable[[], Awaitable[Any]]

# Write-back: a partition's changed member states go to the table (one changelog record per
# member, not per event) and to members.profiles at most this often, or sooner when this
# many members or events are waiting. Tag changes are sent at once; only state is batched.
FLUSH_INTERVAL_S = 0.2
FLUSH_MEMBERS = 2000
FLUSH_EVENTS = 5000


class _PartitionWrites:
    """What a partition owes the table and Kafka since its last flush."""

    __slots__ = ("dirty", "acks", "since")

    def __init__(self) -> None:
        self.dirty: dict[bytes, MemberState] = {}
        self.acks: list[Ack] = []
        self.since = 0.0


class MemberProcessor:
    """Handles one inbound message at a time for the partitions this worker owns.

    Crash safety: an event is acknowledged to Kafka (so its offset may be committed) only
    after the state it produced is in the table's changelog. A crash before that redelivers
    the event, which re-creates the same changes with the same change ids."""

    def __init__(self, engine: Engine, topics: Topics, table: Any, clocks: PartitionClocks,
                 partitions: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.engine = engine
        self.topics = topics
        self.table = table
        self.clocks = clocks
        self.partitions = partitions
        self.deadlines = DeadlineIndex()
        self.pending = ReorderBuffer()
        self.counters = Counters()
        self._monotonic = clock
        self._writes: dict[int, _PartitionWrites] = {}
        self.positions: dict[tuple[str, int], int] = {}  # next offset per topic-partition
        # One thing at a time: a message, a tick or a rebalance. Each awaits sends midway;
        # interleaved, a tick could fire a member's deadline while that member's earlier
        # event, already released by the clock, was still waiting to be applied.
        self._turn = asyncio.Lock()

    async def handle(self, message: Any, ack: Ack) -> None:
        """Process one message; `ack` is called once it is fully handled (maybe later)."""
        async with self._turn:
            await self._handle(message, ack)

    async def _handle(self, message: Any, ack: Ack) -> None:
        partition = message.partition
        self.positions[(message.topic, partition)] = message.offset + 1
        if not self.deadlines.is_loaded(partition):
            self._load_deadlines(partition)
        await self._route(message, ack)
        await self._maybe_flush(partition)

    async def _route(self, message: Any, ack: Ack) -> None:
        partition = message.partition
        kind = control_kind(message.headers)
        if kind is not None:
            await self._control(kind, message)
            self._owe(partition, ack)
            await self._release_and_fire(partition)
            return
        origin = _origin(message)
        try:
            event = decode_event(message.value, topic=origin[0])
        except EventRejected as rejected:
            await self.reject(rejected.reason, origin, message)
            self._owe(partition, ack)
            return

        home = partition_for(event.member_id, self.partitions)
        if home != partition:
            await self._reroute(message, event.member_id, home, origin)
            self._owe(partition, ack)
            return
        if self.clocks.mode == "wall":
            await self._apply(event, origin, message)
            self._owe(partition, ack)
            await self._fire_due(partition)
            return
        occurred = to_epoch(event.occurred_at)
        clock = self.clocks.now(partition)
        if clock is not None and occurred <= clock:
            await self.reject(
                f"late event: occurred_at {self.engine.calendar.render(occurred)} arrived after "
                f"the event-time clock of partition {partition} had passed it "
                f"({self.engine.calendar.render(clock)}); events may be out of order by at "
                f"most TAGSTREAM_REORDER_WINDOW_S={self.clocks.reorder_window_s} s",
                origin, message)
            self._owe(partition, ack)
            return
        if message.topic in EVENT_TOPICS:
            self.clocks.observe_event(message.topic, partition, occurred)
        self.pending.push(partition, occurred, TIE_RANK_BY_TOPIC.get(origin[0], 9),
                          (event, origin, message, ack))
        await self._release_and_fire(partition)

    async def _release_and_fire(self, partition: int) -> None:
        """Event clock: apply held events the clock has passed, in order, then due timers."""
        if self.clocks.mode == "event":
            now = self.clocks.now(partition)
            if now is None:
                return
            for event, origin, message, ack in self.pending.pop_ready(partition, now):
                await self._apply(event, origin, message)
                self._owe(partition, ack)
        await self._fire_due(partition)

    async def _apply(self, event: Any, origin: tuple[str, int, int], message: Any) -> None:
        key = event.member_id.encode()
        try:
            outcome = self.engine.apply(self._load(message.partition, key), event)
        except EventRejected as rejected:
            await self.reject(rejected.reason, origin, message)
            return
        except Exception as exc:  # noqa: BLE001 - an engine bug must not stop the partition
            log.exception("engine failed on %s:%s:%s", *origin)
            await self.reject(f"internal error: {type(exc).__name__}: {exc}", origin, message)
            return
        if outcome.duplicate:
            self.counters.duplicates += 1
            return
        self.counters.processed += 1
        metrics.EVENTS_PROCESSED.labels(origin[0]).inc()
        await self._store(message.partition, key, outcome)

    # --- control messages ---------------------------------------------------------------------

    async def _control(self, kind: bytes, message: Any) -> None:
        if kind == WATERMARK:
            try:
                instant = to_epoch(decode_watermark(message.value))
            except EventRejected as rejected:
                await self.reject(rejected.reason, _origin(message), message)
                return
            if message.topic in EVENT_TOPICS:
                self.clocks.observe_marker(message.topic, message.partition, instant)
        elif kind == BACKFILL:
            await self._reevaluate_partition(message.partition)
        else:
            await self.reject(f"unknown control message {kind!r}", _origin(message), message)

    async def _fire_due(self, partition: int) -> None:
        now = self.clocks.now(partition)
        if now is None:
            return
        for member_id in dict.fromkeys(self.deadlines.pop_due(partition, now)):
            key = member_id.encode()
            state = self._load(partition, key)
            if state is None:
                continue
            if state.next_deadline is None or state.next_deadline > now:
                continue  # a stale heap entry: the member's deadline moved
            outcome = self.engine.advance(state, now)
            self.counters.timers_fired += 1
            await self._store(partition, key, outcome)

    # --- outputs ------------------------------------------------------------------------------

    def _load(self, partition: int, key: bytes) -> MemberState | None:
        """The member's newest state: from the write-back cache, else the table."""
        writes = self._writes.get(partition)
        if writes is not None and key in writes.dirty:
            return writes.dirty[key]
        raw_state = self.table.get(key)
        return decode_state(raw_state) if raw_state else None

    def _owe(self, partition: int, ack: Ack) -> None:
        self._partition_writes(partition).acks.append(ack)

    def _partition_writes(self, partition: int) -> _PartitionWrites:
        writes = self._writes.get(partition)
        if writes is None:
            writes = self._writes[partition] = _PartitionWrites()
        if not writes.dirty and not writes.acks:
            writes.since = self._monotonic()
        return writes

    async def _maybe_flush(self, partition: int) -> None:
        writes = self._writes.get(partition)
        if writes is None or not (writes.dirty or writes.acks):
            return
        if (len(writes.dirty) >= FLUSH_MEMBERS or len(writes.acks) >= FLUSH_EVENTS
                or self._monotonic() - writes.since >= FLUSH_INTERVAL_S):
            await self.flush(partition)

    async def flush(self, partition: int) -> None:
        """Write the partition's changed states (table + changelog + profiles), then
        acknowledge the events behind them."""
        writes = self._writes.pop(partition, None)
        if writes is None:
            return
        pack = self.engine.pack
        for key, state in writes.dirty.items():
            raw = encode_state(state)
            # The store and its changelog partition are written explicitly (not
            # `table[key] = ...`, which takes the partition of the message being handled), so
            # a flush may run from a timer, a rebalance or shutdown. All of them before the
            # first await: nothing may read the table between the pop and the writes.
            self.table.data[key] = raw
            self.table.send_changelog(partition, key, raw)
        for key, state in writes.dirty.items():
            await self.topics.profiles.send(key=key, value=orjson.dumps(render_profile(state, pack)),
                                            partition=partition)
        for ack in writes.acks:
            await ack()

    async def flush_all(self) -> None:
        async with self._turn:
            for partition in list(self._writes):
                await self.flush(partition)

    async def tick(self, partitions: Iterable[int]) -> None:
        """Periodic, with no event: fire due deadlines (wall clock) and write batched state."""
        async with self._turn:
            for partition in partitions:
                if not self.deadlines.is_loaded(partition):
                    self._load_deadlines(partition)
                await self._fire_due(partition)
                await self._maybe_flush(partition)

    async def _store(self, partition: int, key: bytes, outcome: Outcome) -> None:
        state = outcome.state
        self._partition_writes(partition).dirty[key] = state
        for change in outcome.changes:
            await self.topics.tag_changes.send(key=key, value=encode_change(change),
                                               partition=partition)
            metrics.TAG_CHANGES.labels(change.tag, change.op).inc()
            metrics.RULE_FIRES.labels(change.tag).inc()
        for tier_change in outcome.tier_changes:
            await self.topics.tier_changes.send(key=key, value=encode_change(tier_change),
                                                partition=partition)
            metrics.TIER_CHANGES.labels(tier_change.type).inc()
        self.counters.tag_changes += len(outcome.changes)
        self.deadlines.push(partition, state.next_deadline, state.member_id)

    # --- rule versions ------------------------------------------------------------------------

    def use_rules(self, engine: Engine) -> None:
        """Switch to a newly loaded rule pack: each member is re-evaluated with it on their
        next event or deadline (or at once, for all, by `tagstream backfill`)."""
        self.engine = engine

    async def _reevaluate_partition(self, partition: int) -> None:
        now = self.clocks.now(partition)
        for key in list(self.table.keys()):
            member_id = key.decode() if isinstance(key, bytes) else str(key)
            if partition_for(member_id, self.partitions) != partition:
                continue
            state = self._load(partition, key)
            if state is None:
                continue
            at = now if now is not None else state.watermark
            if at is None:
                continue
            outcome = self.engine.reevaluate(state, at)
            await self._store(partition, key, outcome)

    async def _reroute(self, message: Any, member_id: str, home: int,
                       origin: tuple[str, int, int]) -> None:
        self.counters.rerouted += 1
        await self.topics.reroute.send(
            key=member_id.encode(), value=message.value, partition=home,
            headers=[(ORIGIN_HEADER, f"{origin[0]}:{origin[1]}:{origin[2]}".encode())])

    async def reject(self, reason: str, origin: tuple[str, int, int], message: Any) -> None:
        self.counters.dead_lettered += 1
        metrics.EVENTS_DEADLETTERED.labels(origin[0]).inc()
        log.warning("dead-lettered %s:%s:%s: %s", origin[0], origin[1], origin[2], reason)
        await self.topics.deadletter.send(
            key=message.key, value=dead_letter(reason, *origin, message.value),
            partition=message.partition)

    def _load_deadlines(self, partition: int) -> None:
        """Rebuild a partition's deadline heap from recovered state (once per assignment)."""
        entries = []
        for key, raw_state in self.table.items():
            member_id = key.decode() if isinstance(key, bytes) else str(key)
            if partition_for(member_id, self.partitions) != partition or not raw_state:
                continue
            deadline = decode_state(raw_state).next_deadline
            if deadline is not None:
                entries.append((deadline, member_id))
        self.deadlines.load(partition, entries)

    async def on_revoked(self, partitions: set[int]) -> None:
        async with self._turn:
            await self._forget(partitions)

    async def _forget(self, partitions: set[int]) -> None:
        for partition in partitions:
            await self.flush(partition)
            self.deadlines.drop(partition)
            self.clocks.forget(partition)
            self.pending.drop(partition)



def _origin(message: Any) -> tuple[str, int, int]:
    """Where an event first entered: its own coordinates, or those a re-route recorded."""
    if message.topic == REROUTE_TOPIC and message.headers:
        items = message.headers.items() if isinstance(message.headers, dict) else message.headers
        for name, value in items:
            if name == ORIGIN_HEADER:
                topic, partition, offset = bytes(value).decode().rsplit(":", 2)
                return topic, int(partition), int(offset)
    return message.topic, message.partition, message.offset


def _once(ack: Ack) -> Ack:
    """An ack that may be called again harmlessly (Faust counts acks per message)."""
    done = False

    async def once() -> None:
        nonlocal done
        if not done:
            done = True
            await ack()

    return once


def register_member_agent(app: faust.App, processor: MemberProcessor, topics: Topics,
                          timer_interval_s: float) -> None:
    @app.agent(topics.inbound, name="members")
    async def members(stream: Any) -> None:
        # Manual acks: an event held for the event-time clock is acknowledged (and so its
        # offset committed) only once applied; Faust commits up to the first unacked offset.
        manual = stream.noack()
        async for event in manual.events():
            ack = _once(functools.partial(manual.ack, event))
            try:
                await processor.handle(event.message, ack)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the partition
                log.exception("unexpected error handling %s:%s:%s", event.message.topic,
                              event.message.partition, event.message.offset)
                try:
                    await processor.reject(f"internal error: {type(exc).__name__}: {exc}",
                                           _origin(event.message), event.message)
                except Exception:  # noqa: BLE001 - e.g. the dead letter itself cannot be sent
                    # Not acknowledged: the event comes back after a restart rather than
                    # being lost; the agent itself keeps going.
                    log.exception("could not dead-letter %s:%s:%s", event.message.topic,
                                  event.message.partition, event.message.offset)
                    continue
                await ack()

    @app.timer(timer_interval_s)
    async def tick() -> None:
        """Deadlines fire and batched state is written with no event needed."""
        if app.rebalancing or app.in_recovery or not app.tables.recovery.completed.is_set():
            # Mid-rebalance the table is still being restored: a deadline heap built now
            # would miss the members not yet recovered, and their deadlines would never fire.
            return
        owned = {tp.partition for tp in app.assignor.assigned_actives() if tp.topic in EVENT_TOPICS}
        await processor.tick(sorted(owned))

    @app.timer(5.0)
    async def report_lag() -> None:
        for tp in app.assignor.assigned_actives():
            if tp.topic not in EVENT_TOPICS:
                continue
            highwater = app.consumer.highwater(tp)
            position = processor.positions.get((tp.topic, tp.partition))
            if highwater is not None and position is not None:
                metrics.CONSUMER_LAG.labels(app.conf.id, tp.topic, str(tp.partition)).set(
                    max(0, highwater - position))

    @app.page("/metrics")
    async def serve_metrics(web: Any, request: Any) -> Any:
        body, content_type = metrics.render_metrics()
        return web.bytes(body, content_type=content_type.split(";")[0])

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **_: Any) -> None:
        await processor.on_revoked({tp.partition for tp in revoked if tp.topic in EVENT_TOPICS})

    @app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **_: Any) -> None:
        await processor.flush_all()
