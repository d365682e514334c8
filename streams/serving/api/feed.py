"""Live tag, tier and task changes for guides: one Kafka tail shared by every feed, with exact
resume.

One consumer per API process (no group: it reads every partition) tails `tags.changes`,
`tiers.changes` and `tasks.changes` and fans each change out to the open feeds whose guide it
names (operators get all). Tag and tier changes name their guides, a task its one guide, so no
lookup stands between a change and a feed.

Resume: an SSE event id is the feed's cursor, the next offset to read on every partition of the
three topics (`t0=812,t1=790,r0=33,r1=35,k0=4,k1=9`, `t` for tags.changes, `r` for
tiers.changes, `k` for tasks.changes, whatever the topic namespace: a cursor names topics by
their canonical names). A reconnect
with `Last-Event-ID` continues exactly after the last change delivered: nothing skipped, nothing
twice. The cursor also moves past other guides' changes (heartbeats carry it), so a resume does
not re-scan them. Recent changes are kept in memory per partition; a cursor older than that is
served by a short-lived consumer that reads Kafka from the cursor up to the buffer, then the
buffer, then live changes, with no gap between the three.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.platform.backoff import backoff_delay
from streams.platform.kafka_clients import UnknownTopics, kafka_consumer, partitions_of
from streams.platform.topics import (TAG_CHANGES_TOPIC, TASK_CHANGES_TOPIC, TIER_CHANGES_TOPIC,
                                     TopicNames)

log = logging.getLogger(__name__)

# By canonical name: a cursor means the same whatever the topic namespace.
TOPIC_CODES = {TAG_CHANGES_TOPIC: "t", TIER_CHANGES_TOPIC: "r", TASK_CHANGES_TOPIC: "k"}
CODE_TOPICS = {code: topic for topic, code in TOPIC_CODES.items()}
KINDS = {TAG_CHANGES_TOPIC: "tag", TIER_CHANGES_TOPIC: "tier", TASK_CHANGES_TOPIC: "task"}
_CURSOR_PART = re.compile(r"([trk])(\d{1,6})=(\d{1,19})")
MAX_CURSOR_LENGTH = 8192
BUFFER_PER_PARTITION = 5000
QUEUE_LIMIT = 10_000  # a feed this far behind is closed; its client resumes from its cursor

Cursor = dict[TopicPartition, int]


class CursorError(ValueError):
    """A Last-Event-ID that is not a cursor this API wrote."""


def encode_cursor(cursor: Cursor, names: TopicNames) -> str:
    codes = {names.actual(topic): code for topic, code in TOPIC_CODES.items()}
    return ",".join(f"{codes[tp.topic]}{tp.partition}={offset}"
                    for tp, offset in sorted(cursor.items()))


def decode_cursor(text: str, names: TopicNames) -> Cursor:
    if len(text) > MAX_CURSOR_LENGTH:
        raise CursorError("Last-Event-ID is too long")
    cursor: Cursor = {}
    for part in text.strip().split(","):
        match = _CURSOR_PART.fullmatch(part.strip())
        if not match:
            raise CursorError("Last-Event-ID is not a feed cursor")
        code, partition, offset = match.groups()
        cursor[TopicPartition(names.actual(CODE_TOPICS[code]), int(partition))] = int(offset)
    return cursor


@dataclass(frozen=True, slots=True)
class FeedEvent:
    tp: TopicPartition
    offset: int
    kind: str  # "tag", "tier" or "task"
    data: bytes  # the change as one line of JSON
    guides: frozenset[str]

    def visible_to(self, guide: str | None) -> bool:
        return guide is None or guide in self.guides


@dataclass(eq=False)
class Subscription:
    guide: str | None  # None: an operator's feed (every change)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: bool = False  # set when the hub stops or the feed fell too far behind

    def push(self, event: FeedEvent | None) -> None:
        if event is not None and self.queue.qsize() >= QUEUE_LIMIT:
            self.closed = True
            event = None
        self.queue.put_nowait(event)  # None wakes the reader to see `closed`


@dataclass
class FeedStart:
    """What a new feed gets: where it starts, what to read from Kafka, what the buffer had."""

    subscription: Subscription
    cursor: Cursor  # where the feed starts (clamped to what exists)
    catch_up: dict[TopicPartition, tuple[int, int]]  # [from, to) offsets to read from Kafka
    backlog: list[FeedEvent]  # buffered changes at or after the cursor, for this guide
    snapshot: Cursor  # the hub's position when the feed joined: catch-up + backlog reach it


def decode_records(records: list[Any], names: TopicNames) -> list[FeedEvent]:
    """FeedEvents for Kafka records of the feed topics (of `names`), in the given order;
    unreadable skipped. Every change names the guides it is for (`guides`; a task its `guide`);
    one that names none reaches operators only. A tombstone (an erased member's tasks) is no
    change to show."""
    kinds = {names.actual(topic): kind for topic, kind in KINDS.items()}
    events = []
    for record in records:
        if record.value is None:
            continue
        try:
            change = orjson.loads(record.value)
            if not isinstance(change, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
            log.error("feed skips unreadable record %s:%s@%s (%s)", record.topic,
                      record.partition, record.offset, exc)
            continue
        guides = frozenset(g["userid"] for g in change.get("guides") or ()
                           if isinstance(g, dict) and g.get("userid"))
        if isinstance(change.get("guide"), str):
            guides |= {change["guide"]}
        events.append(FeedEvent(TopicPartition(record.topic, record.partition), record.offset,
                                kinds[record.topic], orjson.dumps(change), guides))
    return events


class FeedHub:
    """The one tail of the change topics that every open feed of this process is served from."""

    def __init__(self, bootstrap: str, *,
                 names: TopicNames, buffer_per_partition: int = BUFFER_PER_PARTITION,
                 kafka_options: dict[str, Any] | None = None) -> None:
        """`names`: the topics to tail (streams.platform.topics.topic_names); `kafka_options`:
        TLS/SASL arguments for the consumers (streams.platform.security.kafka_client_kwargs)."""
        self.bootstrap = bootstrap
        self.names = names
        self.kafka_options = dict(kafka_options or {})
        self.buffer_per_partition = buffer_per_partition
        self.ready = asyncio.Event()
        self.positions: Cursor = {}
        self.floor: Cursor = {}  # every change at or after floor[tp] is in buffers[tp]
        self.buffers: dict[TopicPartition, deque[FeedEvent]] = {}
        self._by_guide: dict[str, set[Subscription]] = {}
        self._operators: set[Subscription] = set()
        self._task: asyncio.Task | None = None
        self._consumer: AIOKafkaConsumer | None = None

    @property
    def open_feeds(self) -> int:
        return len(self._operators) + sum(len(s) for s in self._by_guide.values())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="feed-hub")

    def close_feeds(self) -> None:
        """End every open feed (shutdown); clients reconnect elsewhere with their cursor."""
        for sub in list(self._operators) + [s for subs in self._by_guide.values() for s in subs]:
            sub.closed = True
            sub.push(None)

    async def stop(self) -> None:
        self.close_feeds()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # --- the tail -----------------------------------------------------------------------------

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._tail()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Feeds stay open; the cursor positions survive, so the tail resumes exactly.
                failures += 1
                delay = backoff_delay(failures, 0.2, 5.0)
                log.warning("feed tail failed (%s: %s); restarting in %.1f s",
                            type(exc).__name__, exc, delay)
                await asyncio.sleep(delay)

    async def _tail(self) -> None:
        # Kafka answers a fetch as soon as data arrives, so the wait only sets how often an
        # idle tail polls; aiokafka's 500 ms default keeps an idle API near zero CPU.
        consumer = kafka_consumer(self.bootstrap, enable_auto_commit=False,
                                  auto_offset_reset="earliest",
                                  **self.kafka_options)
        await consumer.start()
        self._consumer = consumer
        try:
            tps = await _feed_partitions(consumer, self.names)
            consumer.assign(tps)
            if not self.positions:
                await consumer.seek_to_end(*tps)
                for tp in tps:
                    self.positions[tp] = await consumer.position(tp)
                    self.floor[tp] = self.positions[tp]
                    self.buffers[tp] = deque()
            else:  # a restarted tail continues where the last one stopped
                for tp in tps:
                    if tp not in self.positions:
                        self.positions[tp] = self.floor[tp] = 0
                        self.buffers[tp] = deque()
                    consumer.seek(tp, self.positions[tp])
            self.ready.set()
            while True:
                batch = await consumer.getmany(timeout_ms=1000, max_records=2000)
                if not batch:
                    continue
                records = [r for tp in sorted(batch) for r in batch[tp]]
                events = decode_records(records, self.names)
                self._publish(events, {tp: msgs[-1].offset + 1 for tp, msgs in batch.items()})
        finally:
            self._consumer = None
            await consumer.stop()

    def _publish(self, events: list[FeedEvent], ends: Cursor) -> None:
        """Buffer and fan out; positions move last, in the same step (no await in between)."""
        for event in events:
            buffer = self.buffers[event.tp]
            buffer.append(event)
            if len(buffer) > self.buffer_per_partition:
                self.floor[event.tp] = buffer.popleft().offset + 1
            for sub in self._operators:
                sub.push(event)
            for guide in event.guides:
                for sub in self._by_guide.get(guide, ()):
                    sub.push(event)
        for tp, end in ends.items():
            self.positions[tp] = max(self.positions[tp], end)

    # --- feeds --------------------------------------------------------------------------------

    def subscribe(self, guide: str | None, resume: Cursor | None) -> FeedStart:
        """Join the live fan-out and say what comes before it. Synchronous on purpose: the
        snapshot of the buffer and the registration happen with no change in between."""
        sub = Subscription(guide)
        if resume is None:
            start = dict(self.positions)
        else:
            # A partition the cursor does not name (new since) starts at its beginning; a
            # cursor past the end (the topic was recreated) is clamped to the end.
            start = {tp: max(0, min(resume.get(tp, 0), end)) for tp, end in self.positions.items()}
        catch_up = {tp: (start[tp], self.floor[tp]) for tp in start if start[tp] < self.floor[tp]}
        backlog = [event for tp in sorted(start) for event in self.buffers[tp]
                   if event.offset >= start[tp] and event.visible_to(guide)]
        if guide is None:
            self._operators.add(sub)
        else:
            self._by_guide.setdefault(guide, set()).add(sub)
        return FeedStart(sub, start, catch_up, backlog, dict(self.positions))

    def unsubscribe(self, sub: Subscription) -> None:
        if sub.guide is None:
            self._operators.discard(sub)
        else:
            subs = self._by_guide.get(sub.guide)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._by_guide[sub.guide]

    async def read_range(self, guide: str | None,
                         ranges: dict[TopicPartition, tuple[int, int]]) -> AsyncIterator[
                             tuple[TopicPartition, int, FeedEvent | None]]:
        """Changes in [from, to) per partition straight from Kafka, for a feed resuming from
        before the buffer. Yields (partition, next offset, event or None if filtered out)."""
        consumer = kafka_consumer(self.bootstrap, enable_auto_commit=False,
                                  auto_offset_reset="earliest", **self.kafka_options)
        await consumer.start()
        try:
            consumer.assign(list(ranges))
            for tp, (begin, _) in ranges.items():
                consumer.seek(tp, begin)
            remaining = dict(ranges)
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=500, max_records=2000)
                records = [r for tp in sorted(batch) for r in batch[tp]
                           if tp in remaining and r.offset < remaining[tp][1]]
                by_offset = {(e.tp, e.offset): e
                             for e in decode_records(records, self.names)}
                for record in records:
                    tp = TopicPartition(record.topic, record.partition)
                    event = by_offset.get((tp, record.offset))
                    yield tp, record.offset + 1, (event if event and event.visible_to(guide)
                                                  else None)
                for tp in list(remaining):
                    if await consumer.position(tp) >= remaining[tp][1]:
                        del remaining[tp]
        finally:
            await consumer.stop()


async def _feed_partitions(consumer: AIOKafkaConsumer, names: TopicNames) -> list[TopicPartition]:
    try:
        return await partitions_of(
            consumer, (names.tag_changes, names.tier_changes, names.task_changes))
    except UnknownTopics as exc:
        raise RuntimeError(f"{exc} (tagstream stack up creates the change topics)") from None
