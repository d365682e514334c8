"""The member agent without Kafka: the replay's messages handed straight to MemberProcessor.

Issue 14 splits the pipeline's cost per event into Faust's per-message path (the Faust floor),
the engine (the dry run), and the rest: decoding, routing, the event-time hold, loading and
storing states, and the records of each batch. This measures the agent's share of
that rest on its own. The messages are those `tagstream replay` writes for the file (events
partitioned as it partitions them, and its watermark markers), handled in file order by a
MemberProcessor over an in-memory table; its batches are sealed every `batch_events`
events and go to a sender that keeps only counts. No Faust, aiokafka or RocksDB takes part,
so the pipeline's cost per event less this one is what they and the event loop cost.
"""

from __future__ import annotations

import asyncio
import gc
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from schemas.control import encode_watermark
from streams.ops.replay import WatermarkCadence, message_target
from streams.platform.settings import Settings
from streams.platform.topics import TopicNames
from streams.worker.clock import PartitionClocks
from streams.worker.members import MemberProcessor
from streams.worker.outbox import DeliveredOffsets, Record
from streams.worker.pauses import PauseMonitor
from taggers.engine import Engine

CHANGELOG_TOPIC = "agent-alone-members-changelog"
BATCH_EVENTS = 200  # about what a pipeline batch holds at the bench's rate


@dataclass(slots=True)
class InMemoryMessage:
    """What the processor reads of a Faust message."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] = field(default_factory=list)


class InMemoryTable(dict):
    """What the processor uses of a Faust table: key lookups, and itself as its store."""

    @property
    def data(self) -> "InMemoryTable":
        return self


class CountingSender:
    """Takes every record at once and keeps only how many went to each topic."""

    def __init__(self) -> None:
        self.records: dict[str, int] = {}

    async def enqueue(self, records: Sequence[Record]) -> asyncio.Future[DeliveredOffsets]:
        for record in records:
            self.records[record.topic] = self.records.get(record.topic, 0) + 1
        delivered: asyncio.Future[DeliveredOffsets] = asyncio.get_running_loop().create_future()
        delivered.set_result({})
        return delivered


def replayed_messages(lines: Iterable[bytes], names: TopicNames,
                      partitions: int) -> list[InMemoryMessage]:
    """The messages `tagstream replay` would write for `lines`, in the order it writes them,
    with the offsets they would get: a watermark on every event partition when the replay's
    cadence (WatermarkCadence) writes one, and one after the last event."""
    messages: list[InMemoryMessage] = []
    next_offset: dict[tuple[str, int], int] = {}

    def append(topic: str, partition: int, key: bytes | None, value: bytes,
               headers: list[tuple[str, bytes]]) -> None:
        offset = next_offset.get((topic, partition), 0)
        next_offset[(topic, partition)] = offset + 1
        messages.append(InMemoryMessage(topic, partition, offset, key, value, headers))

    def watermarks(at: Any) -> None:
        value, headers = encode_watermark(at)
        for topic in names.events:
            for partition in range(partitions):
                append(topic, partition, None, value, list(headers))

    cadence = WatermarkCadence()
    for raw in lines:
        line = raw.rstrip(b"\r\n")
        target = message_target(line, names, partitions, None)
        if isinstance(target, str):
            continue  # not an event: the replay skips it too
        topic, key, partition, at = target
        if at is not None and (mark := cadence.before(at)) is not None:
            watermarks(mark)
        append(topic, partition, key, line, [])
    if cadence.last is not None:
        watermarks(cadence.last)
    return messages


@dataclass
class AgentRun:
    events: int  # messages that were events (markers excluded)
    seconds: float
    records: dict[str, int]  # topic -> records the batches held
    tag_changes: int
    dead_lettered: int
    processor: MemberProcessor  # as the run left it (its deadlines, counters)
    frozen_objects: int  # held out of the collector's reach while it ran (the messages...)
    gc_thresholds: tuple[int, int, int]  # the collector's while it ran

    @property
    def us_per_event(self) -> float:
        return self.seconds / self.events * 1e6 if self.events else 0.0


def build_processor(engine: Engine, settings: Settings, names: TopicNames,
                    partitions: int) -> tuple[MemberProcessor, CountingSender]:
    """A processor as streams/worker/main.py builds it, over memory instead of Kafka."""
    sender = CountingSender()
    processor = MemberProcessor(
        engine, sender, InMemoryTable(), CHANGELOG_TOPIC,
        PartitionClocks("event", names.events, reorder_window_s=settings.reorder_window_s),
        partitions, names)
    return processor, sender


async def run_agent(engine: Engine, messages: Sequence[InMemoryMessage], settings: Settings,
                    names: TopicNames, partitions: int,
                    batch_events: int = BATCH_EVENTS) -> AgentRun:
    """Every message through the processor, a batch sealed and shipped every
    `batch_events` messages and at the end.

    Everything alive when it starts (the messages above all) is frozen for the run, and the
    collector runs as seldom, as in a started worker (streams/worker/pauses.py): otherwise
    each collection of the oldest generation walks the harness's own million messages, which
    a worker never holds, and counts that as the agent's time. Nothing stays frozen
    afterwards, and the thresholds are put back."""
    processor, sender = build_processor(engine, settings, names, partitions)
    events = sum(1 for message in messages if not message.headers)

    async def ack() -> None:
        return None

    thresholds = gc.get_threshold()
    frozen = PauseMonitor().freeze_survivors()
    PauseMonitor.collect_less_often()
    running_thresholds = gc.get_threshold()
    try:
        started = time.perf_counter()
        for handled, message in enumerate(messages, 1):
            processor.handle(message, ack)
            if handled % batch_events == 0:
                await processor.flush()
        # what is still due fires as the worker's tick fires it, a step at a time
        while processor.tick(range(partitions)):
            await processor.flush()
        await processor.flush()
        seconds = time.perf_counter() - started
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
    return AgentRun(events=events, seconds=seconds, records=dict(sender.records),
                    tag_changes=sender.records.get(names.tag_changes, 0),
                    dead_lettered=sender.records.get(names.deadletter, 0), processor=processor,
                    frozen_objects=frozen, gc_thresholds=running_thresholds)
