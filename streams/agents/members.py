"""The member agent: events of a member's partition in, state and tag changes out.

A thin adapter (STYLE.md rule 2): it decodes, routes, calls the pure engine, stores the new
state and sends the results. Every business decision lives in `taggers`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faust

from schemas.changes import encode_change
from schemas.control import CONTROL_HEADER, WATERMARK, control_kind, decode_watermark
from schemas.decode import decode_event
from schemas.errors import EventRejected
from streams.clock import PartitionClocks
from streams.deadletter import dead_letter
from streams.deadlines import DeadlineIndex
from streams.partitioning import partition_for
from streams.topics import EVENT_TOPICS, REROUTE_TOPIC, Topics
from taggers.clock import to_epoch
from taggers.engine import Engine, Outcome
from taggers.state import decode_state, encode_state

log = logging.getLogger(__name__)

TICK = b"tick"
ORIGIN_HEADER = "tagstream-origin"  # "topic:partition:offset" of a re-routed event


@dataclass
class Counters:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    rerouted: int = 0
    tag_changes: int = 0
    timers_fired: int = 0


class MemberProcessor:
    """Handles one inbound message at a time for the partitions this worker owns."""

    def __init__(self, engine: Engine, topics: Topics, table: Any, clocks: PartitionClocks,
                 partitions: int) -> None:
        self.engine = engine
        self.topics = topics
        self.table = table
        self.clocks = clocks
        self.partitions = partitions
        self.deadlines = DeadlineIndex()
        self.counters = Counters()

    async def handle(self, message: Any) -> None:
        partition = message.partition
        if not self.deadlines.is_loaded(partition):
            self._load_deadlines(partition)
        kind = control_kind(message.headers)
        if kind is not None:
            await self._control(kind, message)
            return
        origin = _origin(message)
        try:
            event = decode_event(message.value, topic=origin[0])
        except EventRejected as rejected:
            await self.reject(rejected.reason, origin, message)
            return

        home = partition_for(event.member_id, self.partitions)
        if home != partition:
            await self._reroute(message, event.member_id, home, origin)
            return
        if message.topic in EVENT_TOPICS and self.clocks.mode == "event":
            self.clocks.observe(message.topic, partition, to_epoch(event.occurred_at))

        key = event.member_id.encode()
        raw_state = self.table.get(key)
        try:
            outcome = self.engine.apply(decode_state(raw_state) if raw_state else None, event)
        except EventRejected as rejected:
            await self.reject(rejected.reason, origin, message)
            return
        if outcome.duplicate:
            self.counters.duplicates += 1
        else:
            self.counters.processed += 1
            await self._store(partition, key, outcome)
        await self._fire_due(partition)

    # --- control messages ---------------------------------------------------------------------

    async def _control(self, kind: bytes, message: Any) -> None:
        if kind == WATERMARK:
            try:
                instant = to_epoch(decode_watermark(message.value))
            except EventRejected as rejected:
                await self.reject(rejected.reason, _origin(message), message)
                return
            if self.clocks.mode == "event" and message.topic in EVENT_TOPICS:
                self.clocks.observe(message.topic, message.partition, instant)
        elif kind != TICK:
            await self.reject(f"unknown control message {kind!r}", _origin(message),
                                    message)
            return
        await self._fire_due(message.partition)

    async def _fire_due(self, partition: int) -> None:
        now = self.clocks.now(partition)
        if now is None:
            return
        for member_id in dict.fromkeys(self.deadlines.pop_due(partition, now)):
            key = member_id.encode()
            raw_state = self.table.get(key)
            if not raw_state:
                continue
            state = decode_state(raw_state)
            if state.next_deadline is None or state.next_deadline > now:
                continue  # a stale heap entry: the member's deadline moved
            outcome = self.engine.advance(state, now)
            self.counters.timers_fired += 1
            await self._store(partition, key, outcome)

    # --- outputs ------------------------------------------------------------------------------

    async def _store(self, partition: int, key: bytes, outcome: Outcome) -> None:
        state = outcome.state
        self.table[key] = encode_state(state)
        for change in outcome.changes:
            await self.topics.tag_changes.send(key=key, value=encode_change(change),
                                               partition=partition)
        self.counters.tag_changes += len(outcome.changes)
        self.deadlines.push(partition, state.next_deadline, state.member_id)

    async def _reroute(self, message: Any, member_id: str, home: int,
                       origin: tuple[str, int, int]) -> None:
        self.counters.rerouted += 1
        await self.topics.reroute.send(
            key=member_id.encode(), value=message.value, partition=home,
            headers=[(ORIGIN_HEADER, f"{origin[0]}:{origin[1]}:{origin[2]}".encode())])

    async def reject(self, reason: str, origin: tuple[str, int, int], message: Any) -> None:
        self.counters.dead_lettered += 1
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

    def on_revoked(self, partitions: set[int]) -> None:
        for partition in partitions:
            self.deadlines.drop(partition)
            self.clocks.forget(partition)


def _origin(message: Any) -> tuple[str, int, int]:
    """Where an event first entered: its own coordinates, or those a re-route recorded."""
    if message.topic == REROUTE_TOPIC and message.headers:
        items = message.headers.items() if isinstance(message.headers, dict) else message.headers
        for name, value in items:
            if name == ORIGIN_HEADER:
                topic, partition, offset = bytes(value).decode().rsplit(":", 2)
                return topic, int(partition), int(offset)
    return message.topic, message.partition, message.offset


def register_member_agent(app: faust.App, processor: MemberProcessor, topics: Topics,
                          timer_interval_s: float) -> None:
    @app.agent(topics.inbound, name="members")
    async def members(stream: Any) -> None:
        async for event in stream.events():
            try:
                await processor.handle(event.message)
            except Exception as exc:  # noqa: BLE001 - a bug must not stop the partition
                log.exception("unexpected error handling %s:%s:%s", event.message.topic,
                              event.message.partition, event.message.offset)
                await processor.reject(f"internal error: {type(exc).__name__}: {exc}",
                                             _origin(event.message), event.message)

    @app.timer(timer_interval_s)
    async def tick() -> None:
        """Wake every owned partition so deadlines fire with no event (wall clock)."""
        for tp in app.assignor.assigned_actives():
            if tp.topic == REROUTE_TOPIC:
                await topics.reroute.send(key=None, value=b"", partition=tp.partition,
                                          headers=[(CONTROL_HEADER, TICK)])

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **_: Any) -> None:
        processor.on_revoked({tp.partition for tp in revoked if tp.topic == REROUTE_TOPIC})
