"""The member agent's adapter logic with in-memory topics and table (no broker):
routing, dead letters, the event-time reorder buffer, deadlines and acknowledgements."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
import pytest

from schemas.control import encode_watermark
from streams.agents.members import BACKFILL, ORIGIN_HEADER, MemberProcessor
from streams.clock import PartitionClocks
from streams.partitioning import partition_for
from streams.settings import DEFAULT_RULES
from streams.topics import EVENT_TOPICS, REROUTE_TOPIC, Topics
from taggers.clock import to_epoch
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import compile_rules, load_rules
from taggers.state import decode_state
from tests.factories import raw_event

PARTITIONS = 4


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list = field(default_factory=list)


class FakeTable(dict):
    """The two things the processor uses of a Faust table besides reads: its store and its
    changelog (recorded with the partition, which must be the member's)."""

    def __init__(self) -> None:
        super().__init__()
        self.changelog: list[tuple[int, bytes]] = []

    @property
    def data(self) -> dict:
        return self

    def send_changelog(self, partition: int, key: bytes, value: bytes) -> None:
        self.changelog.append((partition, key))


class FakeTopic:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[dict[str, Any]] = []

    async def send(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)


class Harness:
    def __init__(self, clock: str, wall: float = 0.0) -> None:
        self.topics = Topics(inbound=None, reroute=FakeTopic(REROUTE_TOPIC),
                             deadletter=FakeTopic("events.deadletter"),
                             tag_changes=FakeTopic("tags.changes"),
                             tier_changes=FakeTopic("tiers.changes"),
                             profiles=FakeTopic("members.profiles"))
        self.table = FakeTable()
        self.wall = wall
        self.monotonic = 0.0
        self.processor = MemberProcessor(
            Engine(load_rules(DEFAULT_RULES)), self.topics, self.table,
            PartitionClocks(clock, EVENT_TOPICS, wall=lambda: self.wall), PARTITIONS,
            clock=lambda: self.monotonic)
        self.acked: list[int] = []
        self.offset = 0

    async def send(self, topic: str, value: bytes, partition: int, headers=None,
                   seconds_later: float = 0.01, flush: bool = True) -> Message:
        """Deliver one message `seconds_later` (monotonic) than the previous one, then (by
        default) flush the partition's write-back as the worker does periodically."""
        self.monotonic += seconds_later
        self.offset += 1
        message = Message(topic, partition, self.offset, None, value, headers or [])

        async def ack(offset: int = self.offset) -> None:
            self.acked.append(offset)

        await self.processor.handle(message, ack)
        if flush:
            await self.processor.flush(partition)
        return message

    async def event(self, topic: str, body: dict) -> Message:
        partition = partition_for(body["member_id"], PARTITIONS)
        return await self.send(topic, orjson.dumps(body), partition)

    async def markers(self, at: str, partition: int) -> None:
        value, headers = encode_watermark(datetime.fromisoformat(at))
        for topic in EVENT_TOPICS:
            await self.send(topic, value, partition, headers)

    def changes(self, tags=("member", "first_purchase", "repeat_buyer")) -> list[tuple[str, str]]:
        records = [orjson.loads(s["value"]) for s in self.topics.tag_changes.sent]
        return [(r["tag"], r["op"]) for r in records if r["tag"] in tags]


async def test_invalid_event_is_dead_lettered_with_coordinates_and_acked() -> None:
    h = Harness("wall", wall=2e9)
    message = await h.send("events.orders", b'{"event_type": "order.paid", "amount_fen": 1.5}', 2)
    [letter] = h.topics.deadletter.sent
    record = orjson.loads(letter["value"])
    assert record["topic"] == "events.orders" and record["partition"] == 2
    assert record["offset"] == message.offset and "amount_fen" in record["error"]
    assert record["raw"] == '{"event_type": "order.paid", "amount_fen": 1.5}'
    assert h.acked == [message.offset]


async def test_event_on_wrong_partition_is_rerouted_with_its_origin() -> None:
    h = Harness("wall", wall=2e9)
    body = raw_event("interaction.member_joined", "2033-05-18T11:33:20+08:00", member="M42")
    home = partition_for("M42", PARTITIONS)
    wrong = (home + 1) % PARTITIONS
    message = await h.send("events.interactions", orjson.dumps(body), wrong)
    [forwarded] = h.topics.reroute.sent
    assert forwarded["partition"] == home and forwarded["key"] == b"M42"
    assert h.table == {} and h.acked == [message.offset]
    # the re-routed copy is processed on the home partition, and a later dead letter would
    # name the original coordinates
    await h.send(REROUTE_TOPIC, forwarded["value"], home, forwarded["headers"])
    assert h.changes() == [("member", "added")]
    assert dict(forwarded["headers"])[ORIGIN_HEADER] == f"events.interactions:{wrong}:{message.offset}".encode()


async def test_event_clock_holds_events_until_every_topic_has_passed_them() -> None:
    h = Harness("event")
    member = "M7"
    p = partition_for(member, PARTITIONS)
    # the order (10:05) is fetched before the join (10:00) from another topic
    order = await h.event("events.orders", raw_event("order.paid", "2024-01-01T10:05:00+08:00",
                                                     member=member, amount_fen=100))
    assert h.changes() == [] and h.acked == []  # held, and not acknowledged yet
    join = await h.event("events.interactions",
                         raw_event("interaction.member_joined", "2024-01-01T10:00:00+08:00",
                                   member=member))
    assert h.changes() == []  # scans topic has not said where it is
    await h.markers("2024-01-01T10:05:00+08:00", p)
    # applied in event-time order: joined first, then the order
    assert h.changes() == [("member", "added"), ("first_purchase", "added")]
    assert join.offset in h.acked and order.offset in h.acked


async def test_deadline_fires_on_tick_with_no_event_in_wall_mode() -> None:
    h = Harness("wall", wall=datetime.fromisoformat("2024-03-02T10:00:01+08:00").timestamp())
    for at in ("2024-01-02T10:00:00+08:00", "2024-03-02T10:00:00+08:00"):
        await h.event("events.orders", raw_event("order.paid", at, amount_fen=300_000))
    assert ("repeat_buyer", "added") in h.changes()
    h.wall = datetime.fromisoformat("2025-01-01T00:00:00+08:00").timestamp()
    await h.processor.tick([partition_for("M1", PARTITIONS)])
    await h.processor.flush(partition_for("M1", PARTITIONS))
    assert ("repeat_buyer", "removed") in h.changes()
    removal = next(orjson.loads(s["value"]) for s in h.topics.tag_changes.sent
                   if b'"repeat_buyer"' in s["value"] and b'"removed"' in s["value"])
    assert removal["cause"]["timer"] == "repeat_buyer@2025-01-01T00:00:00+08:00"
    state = decode_state(h.table[b"M1"])
    assert state.next_deadline is not None and state.next_deadline > h.wall


async def test_redelivered_event_is_acked_and_changes_nothing() -> None:
    h = Harness("wall", wall=2e9)
    body = raw_event("order.paid", "2024-01-01T10:00:00+08:00", amount_fen=100, event_id="same")
    await h.event("events.orders", body)
    before = dict(h.table)
    again = await h.event("events.orders", body)
    assert h.changes() == [("first_purchase", "added")]
    assert h.table == before and again.offset in h.acked
    assert h.processor.counters.duplicates == 1


async def test_state_and_acks_wait_for_the_flush_and_go_together() -> None:
    h = Harness("wall", wall=2e9)
    home = partition_for("M1", PARTITIONS)
    first = await h.event("events.orders", raw_event("order.paid", "2033-05-18T10:00:00+08:00",
                                                     amount_fen=100))
    assert first.offset in h.acked and b"M1" in h.table
    # within the flush interval: the change is published at once, state and ack wait
    body = raw_event("order.paid", "2033-05-18T10:05:00+08:00", amount_fen=100)
    second = await h.send("events.orders", orjson.dumps(body), home, flush=False)
    assert ("repeat_buyer", "added") in h.changes()
    assert second.offset not in h.acked
    assert decode_state(h.table[b"M1"]).orders.count == 1
    profiles_before = len(h.topics.profiles.sent)
    # a tick after the interval flushes: table, profile, then the acks
    h.monotonic += 0.2
    await h.processor.tick([home])
    assert second.offset in h.acked
    assert decode_state(h.table[b"M1"]).orders.count == 2
    assert len(h.topics.profiles.sent) == profiles_before + 1
    # one changelog record per flush of the member, on the member's partition
    assert h.table.changelog == [(home, b"M1"), (home, b"M1")]
    assert orjson.loads(h.topics.profiles.sent[-1]["value"])["orders"]["count"] == 2


@pytest.mark.parametrize("value", [b"", b"\x00\xff", b"[]", b"{}", b'{"event_type": 1}'])
async def test_garbage_never_raises(value: bytes) -> None:
    h = Harness("event")
    await h.send("events.scans", value, 0)
    assert len(h.topics.deadletter.sent) == 1 and h.acked == [1]


async def test_event_clock_reorders_within_the_window_and_dead_letters_later_ones() -> None:
    h = Harness("event")
    h.processor.clocks.reorder_window_s = 3600
    member = "M9"
    p = partition_for(member, PARTITIONS)

    def order(at: str) -> dict:
        return raw_event("order.paid", at, member=member, amount_fen=100)

    await h.event("events.orders", order("2024-01-01T10:30:00+08:00"))
    await h.event("events.orders", order("2024-01-01T10:00:00+08:00"))  # 30 min out of order
    await h.markers("2024-01-01T10:30:00+08:00", p)
    state = decode_state(h.table[member.encode()])
    assert state.orders.count == 2 and h.topics.deadletter.sent == []
    changes = [orjson.loads(s["value"]) for s in h.topics.tag_changes.sent]
    first = next(c for c in changes if c["tag"] == "first_purchase" and c["op"] == "added")
    assert first["at"] == "2024-01-01T10:00:00+08:00"  # applied in time order, not arrival
    # an event the clock has already passed is dead-lettered, not applied out of order
    await h.event("events.orders", order("2024-01-01T09:00:00+08:00"))
    [letter] = [orjson.loads(s["value"]) for s in h.topics.deadletter.sent]
    assert "late event" in letter["error"] and "TAGSTREAM_REORDER_WINDOW_S=3600" in letter["error"]
    assert decode_state(h.table[member.encode()]).orders.count == 2


class YieldingTopic(FakeTopic):
    """Like Kafka, a send gives other coroutines (the timer) a chance to run."""

    async def send(self, **kwargs: Any) -> None:
        self.sent.append(kwargs)
        await asyncio.sleep(0)


async def test_tick_cannot_fire_a_deadline_while_an_earlier_event_waits_to_be_applied() -> None:
    """Regression: while one released event was being applied (its sends yield), the timer
    fired another member's deadline that lay after that member's own released, not yet
    applied event; the stream then disagreed with the dry run."""
    h = Harness("event")
    for name in ("tag_changes", "tier_changes", "profiles", "deadletter", "reroute"):
        object.__setattr__(h.topics, name, YieldingTopic(name))
    p = partition_for("MY", PARTITIONS)
    other = next(f"MX{n}" for n in range(100) if partition_for(f"MX{n}", PARTITIONS) == p)
    first = [raw_event("order.paid", "2024-01-02T10:00:00+08:00", member="MY", amount_fen=300_000),
             raw_event("order.paid", "2024-03-02T10:00:00+08:00", member="MY", amount_fen=300_000)]
    later = [raw_event("order.paid", "2024-06-01T10:00:00+08:00", member=other, amount_fen=100),
             raw_event("order.paid", "2024-07-01T10:00:00+08:00", member="MY", amount_fen=100)]
    for body in first:
        await h.event("events.orders", body)
    await h.markers("2024-03-02T10:00:00+08:00", p)  # MY now has a deadline on 2025-01-01
    for body in later:
        await h.event("events.orders", body)  # held: the clock is still at 2024-03-02
    ticking = asyncio.create_task(_tick_forever(h.processor, p))
    try:
        await h.markers("2025-02-01T10:00:00+08:00", p)  # both released, the deadline is due
    finally:
        ticking.cancel()
    dry = dry_run(Engine(load_rules(DEFAULT_RULES)), [orjson.dumps(b) for b in first + later],
                  as_of=to_epoch(datetime.fromisoformat("2025-02-01T10:00:00+08:00")))
    stream_ids = {orjson.loads(s["value"])["change_id"] for s in h.topics.tag_changes.sent}
    assert stream_ids == {c.change_id for c in dry.changes}


async def _tick_forever(processor: MemberProcessor, partition: int) -> None:
    while True:
        await processor.tick([partition])
        await asyncio.sleep(0)


async def test_backfill_reevaluates_every_member_of_the_partition_with_new_rules() -> None:
    h = Harness("wall", wall=datetime.fromisoformat("2024-01-03T00:00:00+08:00").timestamp())
    members = [f"MB{n}" for n in range(40)]
    p = partition_for(members[0], PARTITIONS)
    mine = [m for m in members if partition_for(m, PARTITIONS) == p]
    for member in members:
        await h.event("events.orders", raw_event("order.paid", "2024-01-02T10:00:00+08:00",
                                                 member=member, amount_fen=20_000))
    # a new rules version with a new tag; nobody has had an event since
    stricter = DEFAULT_RULES.read_text().replace('version: "2024-03-01.1"',
                                                 'version: "2024-03-02.1"')
    stricter = stricter.replace("tags:\n", "tags:\n  - {id: any_buyer, name_zh: 购买过, "
                                "family: transaction, when: 'orders.count >= 1'}\n", 1)
    h.processor.use_rules(Engine(compile_rules(stricter, "new.yaml")))
    assert not [s for s in h.topics.tag_changes.sent if b'"any_buyer"' in s["value"]]
    from schemas.control import CONTROL_HEADER

    await h.send(REROUTE_TOPIC, b"", p, [(CONTROL_HEADER, BACKFILL)])
    added = {orjson.loads(s["value"])["member_id"] for s in h.topics.tag_changes.sent
             if b'"any_buyer"' in s["value"]}
    assert added == set(mine)  # every member of this partition, and only those
    assert all(decode_state(h.table[m.encode()]).rules_version == "2024-03-02.1" for m in mine)
