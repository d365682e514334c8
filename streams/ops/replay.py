"""Replay a JSONL event file onto the event topics, in file order, then advance every clock.

`tagstream replay FILE [--speed X | --max]` is how a recorded or generated history
(streams/tools/generate.py) reaches the workers. Each line's bytes are sent unchanged (the worker
decodes and dead-letters; replay only routes), to the topic of its `event_type`, keyed by
`member_id`, on the member's partition (`partition_for`), so per-member order is file order.
Topics are named by the caller's `TopicNames` (the topic namespace before each event topic).
A line that cannot be routed is never dropped silently: it is reported in `ReplayResult.skipped`
with its line number and the reason (or, with `topic_override`, sent raw to that topic).
The replay ends with a watermark marker on every partition of every event topic, so each
partition's event-time clock reaches the last event's time (DESIGN.md "Time").

Records keep the broker's current time as their Kafka timestamp, not `occurred_at`: time-based
retention deletes by record timestamp, and a year-old history would be eligible at once.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Mapping

import msgspec
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from schemas.control import encode_watermark
from schemas.events import TOPIC_BY_EVENT_TYPE
from streams.platform.admin import ensure_topics
from streams.platform.batches import PartitionBatches, ReadyBatch
from streams.platform.kafka_clients import UPSTREAM_LINGER_MS, kafka_producer
from streams.platform.partitioning import partition_for
from streams.platform.topics import TopicNames

log = logging.getLogger(__name__)

# Records are appended to one open batch per partition (aiokafka BatchBuilder), so delivery
# is tracked per batch, not per record. Delivery futures are awaited a chunk at a time, one
# chunk behind the sends, so the producer always has a chunk in flight while the next is built.
BATCH_BYTES = 256 * 1024
CHUNK_BATCHES = 32
PROGRESS_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES = 1024 * 1024  # the producer's max_request_size: a larger line is skipped
REPORTED_SKIPS = 20  # skipped lines logged one by one; all are in the result
# In a time-ordered file, every this many events a watermark marker goes to every partition:
# under TAGSTREAM_CLOCK=event a partition's clock is the slowest of its three topics, and a
# topic with few events (scans) would otherwise hold the others' events until the end.
WATERMARK_EVERY = 2000


@dataclass(frozen=True, slots=True)
class SkippedLine:
    line: int  # 1-based line number in the file
    reason: str


@dataclass(frozen=True)
class ReplayResult:
    produced: dict[str, int]  # events (lines) produced, per topic (its name on the broker)
    skipped: tuple[SkippedLine, ...]
    last_event_time: datetime | None  # the newest occurred_at sent; the watermarks carry it
    elapsed_s: float
    watermarks: int = 0  # markers written (one per partition of each event topic)
    lines: int = field(default=0)

    @property
    def events(self) -> int:
        return sum(self.produced.values())

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        per_topic = ", ".join(f"{topic} {n}" for topic, n in sorted(self.produced.items()))
        text = (f"replayed {self.events} events in {self.elapsed_s:.1f} s "
                f"({self.events_per_s:,.0f}/s): {per_topic or 'none'}")
        if self.watermarks:
            text += f"; watermark {self.last_event_time.isoformat()} on {self.watermarks} partitions"  # type: ignore[union-attr]
        if self.skipped:
            text += f"; {len(self.skipped)} lines skipped"
        return text


class _Route(msgspec.Struct):
    """The only fields replay reads; the rest of the line is checked for JSON syntax only."""

    event_type: Any = None
    member_id: Any = None
    occurred_at: Any = None


_route_decoder = msgspec.json.Decoder(_Route)


def route(line: bytes) -> tuple[str, str, datetime | None] | str:
    """(canonical topic, member_id, occurred_at or None) for a line, or the reason it cannot
    be routed."""
    if not line.strip():
        return "empty line"
    try:
        fields = _route_decoder.decode(line)
    except msgspec.ValidationError:
        return "not a JSON object"
    except msgspec.DecodeError as exc:
        return f"not valid JSON: {exc}"
    except UnicodeDecodeError:
        return "not valid UTF-8"
    except RecursionError:
        return "JSON nested too deeply"
    event_type, member_id = fields.event_type, fields.member_id
    if event_type is None:
        return "no event_type"
    if not isinstance(event_type, str):
        return f"event_type is not a string: {event_type!r}"[:200]
    topic = TOPIC_BY_EVENT_TYPE.get(event_type)
    if topic is None:
        return f"unknown event_type {event_type!r}"[:200]
    if member_id is None:
        return "no member_id"
    if not isinstance(member_id, str) or not member_id:
        return f"member_id is not a non-empty string: {member_id!r}"[:200]
    return topic, member_id, _event_time(fields.occurred_at)


def _member_id(line: bytes) -> str | None:
    """The line's member_id, if it is a JSON object with a non-empty string one."""
    try:
        member_id = _route_decoder.decode(line).member_id
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return None
    return member_id if isinstance(member_id, str) and member_id else None


def _event_time(value: object) -> datetime | None:
    """occurred_at if it is a timezone-aware RFC 3339 time; else None (the worker rejects it)."""
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


async def replay(bootstrap: str, path: Path, *, names: TopicNames, speed: float | None = None,
                 partitions: int, progress: bool = True, topic_override: str | None = None,
                 replication: int = 0,
                 security: Mapping[str, Any] | None = None) -> ReplayResult:
    """Send every line of the JSONL file at `path` ("-" = stdin) to the event topics of
    `names`, and end with watermarks.

    `speed=None` sends as fast as the broker takes them; `speed=X` keeps X times the pace of
    the `occurred_at` gaps. Missing event topics are created with `partitions` partitions
    (and `replication`); an existing one with another partition count is an error, since the
    partition rule depends on the count. With `topic_override`, every line goes to that topic
    raw: keyed and partitioned by its member_id when it has one, else unkeyed on partition 0.
    """
    if partitions < 1:
        raise ValueError("partitions must be at least 1")
    if speed is not None and speed <= 0:
        raise ValueError("speed must be positive (or None for as fast as possible)")
    topics = {topic: partitions for topic in names.events}
    if topic_override is not None:
        topics[topic_override] = partitions
    await ensure_topics(bootstrap, topics, replication, security=security)

    started = time.perf_counter()
    produced: dict[str, int] = {}
    skipped: list[SkippedLine] = []
    line_no = 0
    # Idempotent: a batch retried after its acknowledgement was lost (its partition leader
    # killed mid-request) is otherwise written twice, and the copy is behind its topic's clock.
    producer = kafka_producer(bootstrap, acks="all", linger_ms=UPSTREAM_LINGER_MS,
                              enable_idempotence=True,
                              max_batch_size=BATCH_BYTES, max_request_size=MAX_MESSAGE_BYTES,
                              client_id="tagstream-replay", **(security or {}))
    await producer.start()
    try:
        with _open(path) as fp, _progress_bar(path, progress) as bar:
            batches = _Batches(producer)
            partitions_of = {topic: sorted(await producer.partitions_for(topic))
                             for topic in names.events}
            timeline = _Timeline(batches, speed, partitions_of)
            read = 0
            for raw in fp:
                line_no += 1
                read += len(raw)
                line = raw[:-1] if raw.endswith(b"\n") else raw
                if line.endswith(b"\r"):
                    line = line[:-1]
                target = message_target(line, names, partitions, topic_override)
                if isinstance(target, str):
                    _skip(skipped, line_no, target)
                    continue
                topic, key, partition, at = target
                if at is not None:
                    await timeline.before(at)
                await batches.append(topic, partition, key, line)
                produced[topic] = produced.get(topic, 0) + 1
                if read >= PROGRESS_BYTES:
                    bar.set_postfix_str(f"{sum(produced.values()):,} events", refresh=False)
                    bar.update(read)
                    read = 0
            await batches.send_open()
            await batches.delivered()
            bar.set_postfix_str(f"{sum(produced.values()):,} events", refresh=False)
            bar.update(read)

        last_event_time, watermarks = timeline.last, timeline.watermarks
        if last_event_time is not None:
            watermarks += await write_watermarks(producer, names.events, last_event_time)
        await producer.flush()
    finally:
        await producer.stop()

    if len(skipped) > REPORTED_SKIPS:
        log.warning("%s: %d lines skipped (the first %d are logged above)", path, len(skipped),
                    REPORTED_SKIPS)
    return ReplayResult(produced=produced, skipped=tuple(skipped),
                        last_event_time=last_event_time,
                        elapsed_s=time.perf_counter() - started, watermarks=watermarks,
                        lines=line_no)


def message_target(line: bytes, names: TopicNames, partitions: int,
                   topic_override: str | None
                   ) -> tuple[str, bytes | None, int, datetime | None] | str:
    """Where a line goes: (topic, key, partition, occurred_at if an event), or why it is
    skipped."""
    routed = route(line)
    at: datetime | None = None
    if isinstance(routed, str):
        if topic_override is None:
            return routed
        topic, key, partition = topic_override, None, 0
        member_id = _member_id(line)
        if member_id is not None:
            key, partition = member_id.encode("utf-8"), partition_for(member_id, partitions)
    else:
        canonical, member_id, at = routed
        topic = names.actual(canonical) if topic_override is None else topic_override
        key, partition = member_id.encode("utf-8"), partition_for(member_id, partitions)
    if len(line) + (len(key) if key else 0) > MAX_MESSAGE_BYTES - 512:
        return (f"line is {len(line)} bytes; a Kafka message here holds at most about "
                f"{MAX_MESSAGE_BYTES} bytes")
    return topic, key, partition, at


class WatermarkCadence:
    """When the replay writes a watermark: every WATERMARK_EVERY events while the file is in
    time order, for the newest time queued so far (the agent-alone harness follows it too)."""

    def __init__(self) -> None:
        self.last: datetime | None = None  # the newest event time queued
        self._in_time_order = True
        self._since_watermark = 0

    def before(self, at: datetime) -> datetime | None:
        """An event of time `at` is about to be queued: the instant to mark first, if any."""
        last = self.last
        due = None
        if last is not None and at < last:
            self._in_time_order = False  # markers could not be trusted from here on
        if (self._in_time_order and self._since_watermark >= WATERMARK_EVERY
                and last is not None and at > last):
            due = last  # every event at or before `last` is already queued ahead
            self._since_watermark = 0
        if last is None or at > last:
            self.last = at
        self._since_watermark += 1
        return due


class _Timeline:
    """The replay's event time: watermarks while the file is in time order, and the pace."""

    def __init__(self, batches: "_Batches", speed: float | None,
                 partitions_of: dict[str, list[int]]) -> None:
        self.batches = batches
        self.speed = speed
        self.partitions_of = partitions_of
        self.cadence = WatermarkCadence()
        self.watermarks = 0
        self._pace_from: tuple[float, float] | None = None  # (first event time, wall time then)

    @property
    def last(self) -> datetime | None:
        return self.cadence.last

    async def before(self, at: datetime) -> None:
        """An event of time `at` is about to be queued."""
        mark = self.cadence.before(at)
        if mark is not None:
            self.watermarks += await self.batches.watermark(self.partitions_of, mark)
        if self.speed is not None:
            loop = asyncio.get_running_loop()
            ts = at.timestamp()
            if self._pace_from is None:
                self._pace_from = (ts, loop.time())
            delay = self._pace_from[1] + (ts - self._pace_from[0]) / self.speed - loop.time()
            if delay > 0.001:
                await self.batches.send_open()  # what is due now must not wait for more
                await asyncio.sleep(delay)


class _Batches:
    """One open batch per (topic, partition), sent when full; per-partition order is send order.

    aiokafka queues at most one batch per partition behind the one in flight, and never has
    two requests in flight for a partition, so batches (and records) land in the order sent.
    """

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self.producer = producer
        self.batches = PartitionBatches(producer)
        self.in_flight: list[asyncio.Future] = []
        self.previous: list[asyncio.Future] = []

    async def append(self, topic: str, partition: int, key: bytes | None, value: bytes,
                     headers: list[tuple[str, bytes]] | None = None) -> None:
        full = self.batches.append(topic, partition, key, value, headers)
        if full is not None:
            await self._send(full)

    async def watermark(self, partitions_of: dict[str, list[int]], at: datetime) -> int:
        """A marker behind everything queued so far, on every partition of every event topic."""
        value, headers = encode_watermark(at)
        count = 0
        for topic, partitions in partitions_of.items():
            for partition in partitions:
                await self.append(topic, partition, None, value, headers)
                count += 1
        return count

    async def send_open(self) -> None:
        for batch in self.batches.drain():
            await self._send(batch)

    async def delivered(self) -> None:
        """Wait for every batch sent so far; raises the first delivery error."""
        await asyncio.gather(*self.previous, *self.in_flight)
        self.previous, self.in_flight = [], []

    async def _send(self, batch: ReadyBatch) -> None:
        self.in_flight.append(await batch.send(self.producer))
        if len(self.in_flight) >= CHUNK_BATCHES:
            await asyncio.gather(*self.previous)
            self.previous, self.in_flight = self.in_flight, []


async def write_watermarks(producer: AIOKafkaProducer, event_topics: tuple[str, ...],
                           at: datetime) -> int:
    """A watermark marker for `at` on every partition of every event topic."""
    value, headers = encode_watermark(at)
    futures = []
    for topic in event_topics:
        for partition in sorted(await producer.partitions_for(topic)):
            futures.append(await producer.send(topic, value, key=None, partition=partition,
                                               headers=headers))
    await asyncio.gather(*futures)
    return len(futures)


def _skip(skipped: list[SkippedLine], line_no: int, reason: str) -> None:
    skipped.append(SkippedLine(line_no, reason))
    if len(skipped) <= REPORTED_SKIPS:
        log.warning("line %d skipped: %s", line_no, reason)


def _open(path: Path) -> IO[bytes]:
    if str(path) == "-":
        return open(sys.stdin.buffer.fileno(), "rb", closefd=False)
    return open(path, "rb")


def _progress_bar(path: Path, enabled: bool) -> tqdm:
    total = None if str(path) == "-" else Path(path).stat().st_size
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                desc=f"replay {Path(path).name}", disable=not (enabled and sys.stderr.isatty()))


async def produce_raw(bootstrap: str, topic: str, items: Iterable[tuple[bytes | None, bytes]],
                      partition: int | None = None,
                      headers: list[tuple[str, bytes]] | None = None,
                      security: Mapping[str, Any] | None = None) -> list[tuple[int, int]]:
    """Send (key, value) pairs as they are, in order; returns each one's (partition, offset).

    For tests that need arbitrary bytes on a topic. With `partition=None` a keyed message goes
    where the Kafka default partitioner (murmur2, as `partition_for`) puts it.
    """
    producer = kafka_producer(bootstrap, acks="all", linger_ms=UPSTREAM_LINGER_MS,
                              enable_idempotence=True,
                              client_id="tagstream-produce-raw", **(security or {}))
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key, partition=partition,
                                       headers=headers)
                   for key, value in items]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return [(m.partition, m.offset) for m in metadata]
