"""The event clock's hold stays bounded: a topic read far ahead of the others in event time
(a replay's orders fetched while its interactions are still being read) is paused once
TAGSTREAM_EVENT_HOLD_LIMIT of its events wait on a partition, and resumed as the clock drains
them, with exactly the dry run's changes. No broker: a fetcher that reads the topics greedily,
orders first, and honours the processor's pauses stands in for Faust's."""

from __future__ import annotations

from collections import deque

import orjson

from schemas.control import encode_watermark
from streams.platform.settings import DEFAULT_RULES, Settings
from streams.platform.topics import TopicNames
from streams.tools.bench.agent_alone import (
    CountingSender,
    InMemoryMessage,
    build_processor,
    replayed_messages,
)
from streams.worker.outbox import Record
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import raw_event

PARTITIONS = 2


class RecordingSender(CountingSender):
    """Keeps the records themselves too."""

    def __init__(self) -> None:
        super().__init__()
        self.kept: list[Record] = []

    async def enqueue(self, records):
        self.kept.extend(records)
        return await super().enqueue(records)


async def ack() -> None:
    return None


async def fetch_greedily(processor, messages: list[InMemoryMessage], topics: list[str]) -> int:
    """Every message, each topic-partition's in offset order, always from the first topic in
    `topics` with a message left and not paused; returns the most events held from one
    topic-partition at any time."""
    queues = {(m.topic, m.partition): deque() for m in messages}
    for message in messages:
        queues[(message.topic, message.partition)].append(message)
    paused: set[tuple[str, int]] = set()
    processor.pause_fetching = lambda topic, partition: paused.add((topic, partition))

    processor.resume_fetching = lambda topic, partition: paused.discard((topic, partition))
    most_held = handled = 0
    order = sorted(queues, key=lambda key: (topics.index(key[0]), key[1]))
    while True:
        ready = [key for key in order if queues[key] and key not in paused]
        if not ready:
            assert not any(queues.values()), f"stalled with {paused} paused"
            break
        processor.handle(queues[ready[0]].popleft(), ack)
        handled += 1
        if handled % 50 == 0:
            await processor.flush()
        most_held = max(most_held, *(processor.pending.held_from(*key) for key in queues))
    await processor.flush()
    return most_held


def change_ids(sender: RecordingSender, topic: str) -> set[str]:
    return {orjson.loads(r.value)["change_id"] for r in sender.kept if r.topic == topic}


async def test_a_topic_read_ahead_is_paused_at_the_limit_and_the_changes_are_the_dry_runs():
    settings, names = Settings(), TopicNames.for_namespace("")
    pack = load_rules(DEFAULT_RULES)
    history = [orjson.dumps(e) for e in generate_events(members=150, days=120, seed=9)]
    expected = dry_run(Engine(pack, settings.allowed_lateness_s), history)
    messages = replayed_messages(history, names, PARTITIONS)
    orders_per_partition = max(
        sum(1 for m in messages if m.topic == names.orders and m.partition == p and not m.headers)
        for p in range(PARTITIONS))

    async def run(hold_limit: int) -> tuple[int, RecordingSender, object]:
        processor, _ = build_processor(Engine(pack, settings.allowed_lateness_s), settings,
                                       names, PARTITIONS)
        processor.hold_limit = hold_limit
        processor.sender = sender = RecordingSender()
        most_held = await fetch_greedily(
            processor, messages, [names.orders, names.scans, names.interactions])
        return most_held, sender, processor

    most_held, sender, processor = await run(hold_limit=20)
    assert orders_per_partition > 100  # so an unbounded hold would be far over the limit
    assert most_held <= 20
    assert processor.counters.dead_lettered == 0 and not processor.paused
    assert processor.pending.held() == 0
    assert change_ids(sender, names.tag_changes) == {c.change_id for c in expected.changes}
    assert change_ids(sender, names.tier_changes) == {c.change_id for c in expected.tier_changes}

    # without pausing (a limit no topic reaches) the same fetcher holds whole topics
    unbounded, _, _ = await run(hold_limit=10**9)
    assert unbounded >= orders_per_partition - 1


async def test_the_topic_the_clock_waits_for_is_never_paused():
    """Its events wait within the reorder window for its own later events; pausing it would
    stop the clock for good."""
    settings, names = Settings(reorder_window_s=3600), TopicNames.for_namespace("")
    processor, _ = build_processor(Engine(load_rules(DEFAULT_RULES), settings.allowed_lateness_s),
                                   settings, names, 1)
    processor.hold_limit = 3
    pauses: list[tuple[str, int]] = []
    processor.pause_fetching = lambda topic, partition: pauses.append((topic, partition))
    # the other topics are complete far ahead; orders come within one window
    value, headers = encode_watermark("2024-06-30T00:00:00+08:00")
    for topic in (names.interactions, names.scans):
        processor.handle(InMemoryMessage(topic, 0, 0, None, value, list(headers)), ack)
    for n in range(8):
        event = raw_event("order.paid", f"2024-06-01T10:{n:02d}:00+08:00", member="M1",
                          amount_fen=100, event_id=f"o{n}")
        processor.handle(InMemoryMessage(names.orders, 0, n, b"M1", orjson.dumps(event)), ack)
    assert processor.pending.held_from(names.orders, 0) > 3
    assert pauses == [] and not processor.paused
