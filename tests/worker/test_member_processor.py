"""The member agent's adapter logic with in-memory topics and table (no broker):
routing, dead letters, the event-time reorder buffer, deadlines and acknowledgements."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
import msgspec
import pytest

from schemas.control import BACKFILL, encode_watermark
from schemas.decode import decode_event
from streams.worker.members import (
    FLUSH_LINGER_S,
    MAX_BATCHES_IN_FLIGHT,
    ORIGIN_HEADER,
    BatchShipper,
    MemberProcessor,
)
from streams.platform import metrics
from streams.platform.partitioning import partition_for
from streams.platform.settings import DEFAULT_RULES
from streams.platform.topics import TopicNames, Topics
from streams.tools.bench.agent_alone import InMemoryTable
from streams.worker.acks import OrderedAcks
from streams.worker.clock import PartitionClocks
from streams.worker.outbox import Record
from taggers.clock import to_epoch
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import compile_rules, load_rules
from taggers.state import decode_state
from tests.factories import members_of_partition, raw_event

PARTITIONS = 4
# Tests sharing one broker each get a namespace like this (TAGSTREAM_TOPIC_NAMESPACE).
NAMESPACE = "t-7f3a."
NAMESPACES = pytest.mark.parametrize("namespace", ["", NAMESPACE])


@dataclass
class Message:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: list = field(default_factory=list)


CHANGELOG_TOPIC = "tagstream-members-changelog"


class FakeTopic:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sent: list[dict[str, Any]] = []


class FakeSender:
    """Delivers each record to the FakeTopic of its topic name, in order."""

    def __init__(self, topics: dict[str, FakeTopic]) -> None:
        self.topics = topics
        self.calls: list[list[Record]] = []  # what each enqueue was given

    @property
    def shipments(self) -> int:
        """Batches shipped: the enqueues of outputs, none at times (each batch's changelog
        follows apart, never empty)."""
        return sum(1 for call in self.calls
                   if not call or any(r.topic != CHANGELOG_TOPIC for r in call))

    async def enqueue(self, records: list[Record]) -> Any:
        self.calls.append(list(records))
        for record in records:
            self.topics[record.topic].sent.append(
                {"key": record.key, "value": record.value, "partition": record.partition,
                 "headers": record.headers})
        return _delivered()


def _delivered() -> asyncio.Future[None]:
    done = asyncio.get_running_loop().create_future()
    done.set_result(None)
    return done


class Harness:
    def __init__(self, clock: str, wall: float = 0.0, namespace: str = "",
                 engine: Engine | None = None, timer: Any = None) -> None:
        self.names = names = TopicNames.for_namespace(namespace)
        self.topics = Topics(inbound=None, reroute=FakeTopic(names.reroute),
                             deadletter=FakeTopic(names.deadletter),
                             tag_changes=FakeTopic(names.tag_changes),
                             tier_changes=FakeTopic(names.tier_changes))
        self.changelog = FakeTopic(CHANGELOG_TOPIC)
        self.wecom_marks = FakeTopic(names.wecom_marks)
        self.erasures = FakeTopic(names.erasures)
        self.task_changes = FakeTopic(names.task_changes)
        self.sender = FakeSender({t.name: t for t in (
            self.topics.reroute, self.topics.deadletter, self.topics.tag_changes,
            self.topics.tier_changes, self.changelog, self.wecom_marks,
            self.erasures, self.task_changes)})
        self.table = InMemoryTable()
        self.wall = wall
        self.monotonic = 0.0
        self.processor = MemberProcessor(
            engine or Engine(load_rules(DEFAULT_RULES)), self.sender, self.table,
            CHANGELOG_TOPIC,
            PartitionClocks(clock, names.events, wall=lambda: self.wall), PARTITIONS, names,
            clock=lambda: self.monotonic, **({"timer": timer} if timer else {}))
        self.acked: list[int] = []
        # Each topic-partition's offsets run on from its own base, so that an offset names
        # one message of the harness.
        self._next_offsets: dict[tuple[str, int], int] = {}

    async def send(self, topic: str, value: bytes, partition: int, headers=None,
                   seconds_later: float = 0.01, flush: bool = True,
                   offset: int | None = None) -> Message:
        """Deliver one message `seconds_later` (monotonic) than the previous one, then (by
        default) ship the open batch as the worker does once it is due."""
        self.monotonic += seconds_later
        key = (topic, partition)
        if offset is None:
            offset = self._next_offsets.get(key, len(self._next_offsets) * 1_000_000)
        self._next_offsets[key] = offset + 1
        message = Message(topic, partition, offset, None, value, headers or [])

        async def ack(offset: int = offset) -> None:
            self.acked.append(offset)

        self.processor.handle(message, ack)
        if flush:
            await self.processor.flush()
        return message

    async def event(self, topic: str, body: dict) -> Message:
        partition = partition_for(body["member_id"], PARTITIONS)
        return await self.send(topic, orjson.dumps(body), partition)

    async def markers(self, at: str, partition: int) -> None:
        value, headers = encode_watermark(datetime.fromisoformat(at))
        for topic in self.names.events:
            await self.send(topic, value, partition, headers)

    def changes(self, tags=("member", "first_purchase", "repeat_buyer")) -> list[tuple[str, str]]:
        records = [orjson.loads(s["value"]) for s in self.topics.tag_changes.sent]
        return [(r["tag"], r["op"]) for r in records if r["tag"] in tags]


@NAMESPACES
async def test_invalid_event_is_dead_lettered_with_coordinates_and_acked(namespace: str) -> None:
    h = Harness("wall", wall=2e9, namespace=namespace)
    message = await h.send(h.names.orders, b'{"event_type": "order.paid", "amount_fen": 1.5}', 2)
    [letter] = h.topics.deadletter.sent
    record = orjson.loads(letter["value"])
    assert record["topic"] == h.names.orders and record["partition"] == 2
    assert record["offset"] == message.offset and "amount_fen" in record["error"]
    assert record["raw"] == '{"event_type": "order.paid", "amount_fen": 1.5}'
    assert h.acked == [message.offset]


@NAMESPACES
async def test_event_on_wrong_partition_is_rerouted_with_its_origin(namespace: str) -> None:
    h = Harness("wall", wall=2e9, namespace=namespace)
    body = raw_event("interaction.member_joined", "2033-05-18T11:33:20+08:00", member="M42")
    home = partition_for("M42", PARTITIONS)
    wrong = (home + 1) % PARTITIONS
    message = await h.send(h.names.interactions, orjson.dumps(body), wrong)
    [forwarded] = h.topics.reroute.sent
    assert forwarded["partition"] == home and forwarded["key"] == b"M42"
    assert h.table == {} and h.acked == [message.offset]
    # the re-routed copy is processed on the home partition, and a later dead letter would
    # name the original coordinates
    await h.send(h.names.reroute, forwarded["value"], home, forwarded["headers"])
    assert h.changes() == [("member", "added")]
    assert dict(forwarded["headers"])[ORIGIN_HEADER] == \
        f"{h.names.interactions}:{wrong}:{message.offset}".encode()


@NAMESPACES
async def test_event_clock_holds_events_until_every_topic_has_passed_them(namespace: str) -> None:
    h = Harness("event", namespace=namespace)
    member = "M7"
    p = partition_for(member, PARTITIONS)
    # the order (10:05) is fetched before the join (10:00) from another topic
    order = await h.event(h.names.orders, raw_event("order.paid", "2024-01-01T10:05:00+08:00",
                                                     member=member, amount_fen=100))
    assert h.changes() == [] and h.acked == []  # held, and not acknowledged yet
    join = await h.event(h.names.interactions,
                         raw_event("interaction.member_joined", "2024-01-01T10:00:00+08:00",
                                   member=member))
    assert h.changes() == []  # scans topic has not said where it is
    await h.markers("2024-01-01T10:05:00+08:00", p)
    # applied in event-time order: joined first, then the order
    assert h.changes() == [("member", "added"), ("first_purchase", "added")]
    assert join.offset in h.acked and order.offset in h.acked


async def repeat_buyers(members: list[str]) -> Harness:
    """Each member holds repeat_buyer until 2025-01-01 (wall clock just after the second order)."""
    h = Harness("wall", wall=datetime.fromisoformat("2024-03-02T10:00:01+08:00").timestamp())
    for member in members:
        for at in ("2024-01-02T10:00:00+08:00", "2024-03-02T10:00:00+08:00"):
            await h.event(h.names.orders, raw_event("order.paid", at, member=member,
                                                    amount_fen=300_000))
    return h


async def test_deadline_fires_on_tick_with_no_event_in_wall_mode() -> None:
    h = await repeat_buyers(["M1"])
    assert ("repeat_buyer", "added") in h.changes()
    h.wall = datetime.fromisoformat("2025-01-01T00:00:00+08:00").timestamp()
    h.processor.tick([partition_for("M1", PARTITIONS)])
    await h.processor.flush()
    assert ("repeat_buyer", "removed") in h.changes()
    removal = next(orjson.loads(s["value"]) for s in h.topics.tag_changes.sent
                   if b'"repeat_buyer"' in s["value"] and b'"removed"' in s["value"])
    assert removal["cause"]["timer"] == "repeat_buyer@2025-01-01T00:00:00+08:00"
    state = decode_state(h.table[b"M1"])
    assert state.next_deadline is not None and state.next_deadline > h.wall


async def test_a_deadline_fired_by_a_tick_is_shipped_after_the_linger_not_the_next_tick():
    """Regression: the tick shipped only a batch already due, so a deadline's changes waited
    for the following tick (the live deadline -> tags.changes delay went to ~0.5 s)."""
    h = await repeat_buyers(["M1"])
    shipped = h.sender.shipments
    shipper = BatchShipper(h.processor, on_failure=pytest.fail, linger_s=0.005)
    h.wall = datetime.fromisoformat("2025-01-01T00:00:00+08:00").timestamp()
    h.processor.tick([partition_for("M1", PARTITIONS)])  # fires: repeat_buyer is removed
    await shipper.ship_when_due()  # just opened: not due yet, so the linger timer is armed
    assert h.sender.shipments == shipped
    h.monotonic += 1.0  # the linger time has passed (the processor's clock)
    await asyncio.sleep(0.05)  # the shipper's timer runs on the loop
    await shipper.drain()
    assert h.sender.shipments == shipped + 1 and ("repeat_buyer", "removed") in h.changes()


async def test_a_cluster_of_deadlines_fires_a_step_at_a_time_and_all_of_it() -> None:
    """Regression: every deadline due at one instant fired in one call, which stopped the
    worker's loop for 3-8 s at 1,000,000 members and made one batch of them all."""
    members = members_of_partition(7, PARTITIONS)
    stepped, at_once = await repeat_buyers(members), await repeat_buyers(members)
    stepped.processor.tick_step = 3
    # (the two harnesses' orders had event ids of their own: only what follows is compared)
    before_tick = {h: len(h.topics.tag_changes.sent) for h in (stepped, at_once)}
    new_year = datetime.fromisoformat("2025-01-01T00:00:00+08:00").timestamp()
    stepped.wall = at_once.wall = new_year
    fired, more = [], True
    while more:
        before = stepped.processor.counters.timers_fired
        more = stepped.processor.tick([0])
        fired.append(stepped.processor.counters.timers_fired - before)
    assert fired == [3, 3, 1]
    assert at_once.processor.tick([0]) is False and at_once.processor.counters.timers_fired == 7
    for h in (stepped, at_once):
        await h.processor.flush()
    fired_changes = [h.topics.tag_changes.sent[before_tick[h]:] for h in (stepped, at_once)]
    assert fired_changes[0] == fired_changes[1]
    made = [orjson.loads(sent["value"]) for sent in fired_changes[0]]
    assert sum(1 for c in made if (c["tag"], c["op"]) == ("repeat_buyer", "removed")) == 7


async def test_the_cluster_measure_fires_every_member_in_the_steps_it_is_given() -> None:
    from tests.support.deadline_cluster import fire_cluster

    assert len(await fire_cluster(30, step=7)) == 5  # 7, 7, 7, 7, 2
    assert len(await fire_cluster(30, step=30)) == 1  # all at once (it checks all fired)


async def test_an_event_of_a_member_still_due_fires_its_deadline_first() -> None:
    """A deadline a step left due is not lost or reordered: the member's next event fires it
    before it is applied, stamped as if the tick had fired it."""
    members = members_of_partition(3, PARTITIONS)
    stepped, at_once = await repeat_buyers(members), await repeat_buyers(members)
    stepped.processor.tick_step = stepped.processor.message_step = 1
    before_tick = {h: len(h.topics.tag_changes.sent) for h in (stepped, at_once)}
    new_year = datetime.fromisoformat("2025-01-01T00:00:00+08:00").timestamp()
    stepped.wall = at_once.wall = new_year + 1
    assert stepped.processor.tick([0]) is True  # one fired, two still due
    at_once.processor.tick([0])
    order = raw_event("order.paid", "2025-01-01T00:00:01+08:00", member=members[2],
                      amount_fen=300_000)
    for h in (stepped, at_once):
        await h.event(h.names.orders, order)
    while stepped.processor.tick([0]):
        pass
    await stepped.processor.flush()

    def ids(h: Harness) -> list[str]:
        return sorted(orjson.loads(sent["value"])["change_id"]
                      for sent in h.topics.tag_changes.sent[before_tick[h]:])

    assert ids(stepped) == ids(at_once) and len(ids(stepped)) >= 3
    # the order's message fired one more (a message's step), its member's own fired in it
    assert stepped.processor.counters.timers_fired == 2


def fresh_worker_on(table: InMemoryTable, wall: float) -> Harness:
    """A worker that has just recovered `table` (its deadline heaps are not built yet)."""
    fresh = Harness("wall", wall=wall)
    fresh.table.update(table)
    return fresh


async def test_a_fresh_worker_rebuilds_its_deadline_heap_a_step_at_a_time() -> None:
    """Regression: the first tick read every stored state at once, so a fresh worker's first
    orders waited behind it (1.2 s at 100,000 members, 8 s at 1,000,000)."""
    members = members_of_partition(5, PARTITIONS)
    after = datetime.fromisoformat("2025-01-02T00:00:00+08:00").timestamp()
    fresh = fresh_worker_on((await repeat_buyers(members)).table, after)
    fresh.processor.tick([0])  # starts the rebuild; nothing read yet, nothing fires
    assert fresh.changes(("repeat_buyer",)) == []
    steps = 1
    while fresh.processor.load_deadlines(budget=2):
        steps += 1
    assert steps == 3  # 5 stored states, 2 per step
    fresh.processor.tick([0])
    await fresh.processor.flush()
    assert fresh.changes(("repeat_buyer",)) == [("repeat_buyer", "removed")] * 5


async def test_a_member_changed_during_the_rebuild_keeps_its_new_deadline() -> None:
    first, second = members_of_partition(2, PARTITIONS)
    h = await repeat_buyers([first, second])
    fresh = fresh_worker_on(h.table, h.wall)
    fresh.processor.tick([0])
    # a third order in December moves `first`'s removal from 2025-01-01 to 2025-12-01
    await fresh.event(fresh.names.orders, raw_event("order.paid", "2024-12-01T10:00:00+08:00",
                                                    member=first, amount_fen=300_000))
    while fresh.processor.load_deadlines(budget=1):
        pass
    fresh.wall = datetime.fromisoformat("2025-01-02T00:00:00+08:00").timestamp()
    fresh.processor.tick([0])
    await fresh.processor.flush()
    removed = [orjson.loads(s["value"])["member_id"] for s in fresh.topics.tag_changes.sent
               if b'"repeat_buyer"' in s["value"] and b'"removed"' in s["value"]]
    assert removed == [second]


async def test_a_revoked_partition_stops_its_rebuild() -> None:
    fresh = fresh_worker_on((await repeat_buyers(members_of_partition(3, PARTITIONS))).table, 2e9)
    fresh.processor.tick([0])
    fresh.processor.forget({0})
    assert not fresh.processor.load_deadlines() and not fresh.processor.deadlines.is_loaded(0)


async def test_on_the_event_clock_the_heap_is_rebuilt_at_once() -> None:
    """What fires, and in which order, must not depend on how far a rebuild got."""
    h = await repeat_buyers(members_of_partition(3, PARTITIONS))
    fresh = Harness("event")
    fresh.table.update(h.table)
    fresh.processor.tick([0])
    assert len(fresh.processor.deadlines) == 3 and not fresh.processor.load_deadlines()


async def test_nothing_open_arms_no_timer() -> None:
    h = Harness("wall", wall=2e9)
    shipper = BatchShipper(h.processor, on_failure=pytest.fail, linger_s=0.001)
    await shipper.ship_when_due()
    assert shipper._timer is None  # noqa: SLF001 - a tick with nothing to ship costs nothing


async def test_redelivered_event_is_acked_and_changes_nothing() -> None:
    h = Harness("wall", wall=2e9)
    body = raw_event("order.paid", "2024-01-01T10:00:00+08:00", amount_fen=100, event_id="same")
    await h.event(h.names.orders, body)
    before = dict(h.table)
    again = await h.event(h.names.orders, body)
    assert h.changes() == [("first_purchase", "added")]
    assert h.table == before and again.offset in h.acked
    assert h.processor.counters.duplicates == 1


async def test_changes_state_and_acks_wait_for_the_batch_and_go_together() -> None:
    h = Harness("wall", wall=2e9)
    home = partition_for("M1", PARTITIONS)
    first = await h.event(h.names.orders, raw_event("order.paid", "2033-05-18T10:00:00+08:00",
                                                     amount_fen=100))
    assert first.offset in h.acked and b"M1" in h.table
    # while the batch is open: nothing is sent, the table is unchanged, nothing acknowledged
    body = raw_event("order.paid", "2033-05-18T10:05:00+08:00", amount_fen=100)
    second = await h.send(h.names.orders, orjson.dumps(body), home, flush=False)
    assert ("repeat_buyer", "added") not in h.changes()
    assert second.offset not in h.acked and not h.processor.batch_due()
    assert decode_state(h.table[b"M1"]).orders.count == 1
    shipments_before = h.sender.shipments
    # after the linger time the batch is due; shipped: change, changelog, table, then the ack
    h.monotonic += FLUSH_LINGER_S
    assert h.processor.batch_due()
    await h.processor.flush()
    assert h.sender.shipments == shipments_before + 1  # one shipment for all of it
    # its changelog record goes out alone, after the outputs it holds are delivered
    assert [{r.topic for r in call} for call in h.sender.calls[-2:]] == [
        {h.names.tag_changes}, {CHANGELOG_TOPIC}]
    assert ("repeat_buyer", "added") in h.changes() and second.offset in h.acked
    assert decode_state(h.table[b"M1"]).orders.count == 2
    # one changelog record per shipment of the member, on the member's partition
    assert [(r["partition"], r["key"]) for r in h.changelog.sent] == [(home, b"M1"), (home, b"M1")]
    assert decode_state(h.changelog.sent[-1]["value"]).orders.count == 2


async def test_a_member_changed_twice_in_one_batch_ships_its_newest_state_once():
    """The open batch keeps each changed member encoded: the second event reads the first
    one's state back, and the batch ships one changelog record, of the state after the
    second event (the Redis sink renders the profile from it)."""
    h = Harness("wall", wall=2e9)
    home = partition_for("M1", PARTITIONS)
    for minute, amount in ((0, 100), (5, 250)):
        body = raw_event("order.paid", f"2033-05-18T10:0{minute}:00+08:00", amount_fen=amount)
        await h.send(h.names.orders, orjson.dumps(body), home, flush=False)
    h.monotonic += FLUSH_LINGER_S
    await h.processor.flush()
    assert ("first_purchase", "added") in h.changes() and ("repeat_buyer", "added") in h.changes()
    [changelog] = h.changelog.sent
    state = decode_state(changelog["value"])
    assert state.orders.count == 2 and state.orders.spend_fen == 350
    assert h.table[b"M1"] == changelog["value"]


async def test_a_batch_that_cannot_be_delivered_stops_the_worker_with_its_events_unacked():
    h = Harness("wall", wall=2e9)
    failures: list[BaseException] = []

    async def undeliverable() -> None:
        raise ConnectionError("broker gone")

    async def enqueue(records: list[Record]) -> Any:
        return undeliverable()

    async def stop_worker(exc: BaseException) -> None:
        failures.append(exc)

    h.sender.enqueue = enqueue  # type: ignore[method-assign]
    shipper = BatchShipper(h.processor, on_failure=stop_worker)
    message = await h.send(h.names.orders, orjson.dumps(raw_event(
        "order.paid", "2033-05-18T10:00:00+08:00", amount_fen=100)), 1, flush=False)
    await shipper.drain()
    assert [str(exc) for exc in failures] == ["broker gone"]
    assert message.offset not in h.acked


def _gate_outputs(h: Harness) -> list[asyncio.Future[None]]:
    """Each batch's outputs are delivered once the test sets its gate (in shipping order);
    changelogs go through at once."""
    gates: list[asyncio.Future[None]] = []
    delivered = h.sender.enqueue

    async def gated_enqueue(records: list[Record]) -> Any:
        await delivered(records)
        if all(r.topic == CHANGELOG_TOPIC for r in records):
            return _delivered()
        gate = asyncio.get_running_loop().create_future()
        gates.append(gate)
        return gate

    h.sender.enqueue = gated_enqueue  # type: ignore[method-assign]
    return gates


async def test_batches_in_flight_are_bounded_and_each_acks_its_own_events() -> None:
    h = Harness("wall", wall=2e9)
    gates = _gate_outputs(h)
    shipper = BatchShipper(h.processor, on_failure=pytest.fail)
    offsets = []
    for n in range(MAX_BATCHES_IN_FLIGHT + 1):
        message = await h.send(h.names.orders, orjson.dumps(raw_event(
            "order.paid", f"2033-05-18T10:0{n}:00+08:00", member=f"MF{n}", amount_fen=100)),
            partition_for(f"MF{n}", PARTITIONS), flush=False)
        offsets.append(message.offset)
        if n < MAX_BATCHES_IN_FLIGHT:
            await shipper.ship_open_batch()
            await asyncio.sleep(0)
    assert len(gates) == MAX_BATCHES_IN_FLIGHT and h.acked == []
    waiting = asyncio.ensure_future(shipper.ship_open_batch())  # one too many: waits
    await asyncio.sleep(0.01)
    assert not waiting.done()
    # the second batch's outputs are delivered first; its changelog (and so its ack) waits
    # for the first batch's, since changelogs go out in sealing order
    gates[1].set_result(None)
    await asyncio.sleep(0.01)
    assert h.acked == [] and not waiting.done()
    gates[0].set_result(None)
    await asyncio.sleep(0.01)
    assert waiting.done() and sorted(h.acked) == sorted(offsets[:2])
    for gate in gates[2:]:
        gate.set_result(None)
    await shipper.drain()
    assert sorted(h.acked) == sorted(offsets)


async def test_a_due_batch_with_every_slot_taken_grows_and_ships_when_one_frees() -> None:
    """Regression: with every slot taken, the agent waited for the oldest delivery holding a
    batch of one linger's events, so at 100,000 members the pipeline ran at the pace of the
    delivery round trips (627 events/s, the worker 22% idle). Now the agent keeps handling
    events into the open batch and it ships, whole, as soon as a slot frees."""
    h = Harness("wall", wall=2e9)
    gates = _gate_outputs(h)
    shipper = BatchShipper(h.processor, on_failure=pytest.fail)

    async def order(n: int) -> int:
        message = await h.send(h.names.orders, orjson.dumps(raw_event(
            "order.paid", "2033-05-18T10:00:00+08:00", member=f"MG{n}", amount_fen=100)),
            partition_for(f"MG{n}", PARTITIONS), flush=False)
        h.monotonic += 2 * h.processor.linger_s  # the batch it opened or joined is due
        # must not wait for a delivery (only the test opens the gates): a guard, not a timing
        await asyncio.wait_for(shipper.ship_when_due(), timeout=10)
        return message.offset

    offsets = [await order(n) for n in range(MAX_BATCHES_IN_FLIGHT)]
    await asyncio.sleep(0.01)
    assert len(gates) == MAX_BATCHES_IN_FLIGHT
    waiting = [await order(n) for n in range(MAX_BATCHES_IN_FLIGHT, MAX_BATCHES_IN_FLIGHT + 5)]
    await asyncio.sleep(0.01)
    assert len(gates) == MAX_BATCHES_IN_FLIGHT  # the five wait together in the open batch
    gates[0].set_result(None)
    await asyncio.sleep(0.01)
    assert len(gates) == MAX_BATCHES_IN_FLIGHT + 1  # one batch of five, shipped at once
    assert len({r["key"] for r in h.topics.tag_changes.sent}) == MAX_BATCHES_IN_FLIGHT + 5
    for gate in gates[1:]:
        gate.set_result(None)
    await shipper.drain()
    assert sorted(h.acked) == sorted(offsets + waiting)


@pytest.mark.parametrize("value", [b"", b"\x00\xff", b"[]", b"{}", b'{"event_type": 1}'])
async def test_garbage_never_raises(value: bytes) -> None:
    h = Harness("event")
    message = await h.send(h.names.scans, value, 0)
    assert len(h.topics.deadletter.sent) == 1 and h.acked == [message.offset]


async def test_event_clock_reorders_within_the_window_and_dead_letters_later_ones() -> None:
    h = Harness("event")
    h.processor.clocks.reorder_window_s = 3600
    member = "M9"
    p = partition_for(member, PARTITIONS)

    def order(at: str) -> dict:
        return raw_event("order.paid", at, member=member, amount_fen=100)

    await h.event(h.names.orders, order("2024-01-01T10:30:00+08:00"))
    await h.event(h.names.orders, order("2024-01-01T10:00:00+08:00"))  # 30 min out of order
    await h.markers("2024-01-01T10:30:00+08:00", p)
    state = decode_state(h.table[member.encode()])
    assert state.orders.count == 2 and h.topics.deadletter.sent == []
    changes = [orjson.loads(s["value"]) for s in h.topics.tag_changes.sent]
    first = next(c for c in changes if c["tag"] == "first_purchase" and c["op"] == "added")
    assert first["at"] == "2024-01-01T10:00:00+08:00"  # applied in time order, not arrival
    # an event the clock has already passed is dead-lettered, not applied out of order
    await h.event(h.names.orders, order("2024-01-01T09:00:00+08:00"))
    [letter] = [orjson.loads(s["value"]) for s in h.topics.deadletter.sent]
    assert "late event" in letter["error"] and "TAGSTREAM_REORDER_WINDOW_S=3600" in letter["error"]
    assert decode_state(h.table[member.encode()]).orders.count == 2


async def test_a_late_event_is_dead_lettered_even_while_another_topic_keeps_the_clock_unset():
    """Regression (issue 7, out-of-order e2e): with no scan on the partition yet its clock was
    unknown, so a copy of an old order, days behind the orders already seen, was held and
    applied in the past instead of being dead-lettered as late."""
    h = Harness("event")
    h.processor.clocks.reorder_window_s = 3600
    member = "M9"
    for at in ("2024-01-01T10:00:00+08:00", "2024-01-04T10:00:00+08:00"):
        await h.event(h.names.orders, raw_event("order.paid", at, member=member, amount_fen=100))
    assert h.processor.clocks.now(partition_for(member, PARTITIONS)) is None
    await h.event(h.names.orders, raw_event("order.paid", "2024-01-02T10:00:00+08:00",
                                             member=member, amount_fen=100, event_id="late"))
    [letter] = [orjson.loads(s["value"]) for s in h.topics.deadletter.sent]
    assert "late event" in letter["error"] and orjson.loads(letter["raw"])["event_id"] == "late"
    # within the window it is still accepted
    await h.event(h.names.orders, raw_event("order.paid", "2024-01-04T09:30:00+08:00",
                                             member=member, amount_fen=100))
    assert len(h.topics.deadletter.sent) == 1 and h.processor.pending.held() == 3


async def test_a_message_is_acknowledged_only_after_every_earlier_one_of_its_partition():
    """Regression (lost events): Faust commits the first run of consecutive acked offsets,
    even one that starts after a held message; a rebalance then resumed past the held event,
    which was never applied nor dead-lettered. Acks now go to Faust in offset order."""
    h = Harness("event")
    member = "M7"
    p = partition_for(member, PARTITIONS)
    held = await h.event(h.names.orders, raw_event("order.paid", "2024-01-01T10:05:00+08:00",
                                                    member=member, amount_fen=100))
    garbage = await h.send(h.names.orders, b"not json", p)  # dead-lettered and shipped
    assert len(h.topics.deadletter.sent) == 1 and h.acked == []  # waits for the held one
    await h.markers("2024-01-01T10:05:00+08:00", p)
    assert h.acked.index(held.offset) < h.acked.index(garbage.offset)


async def test_ordered_acks_release_a_prefix_and_forget_revoked_partitions() -> None:
    acked: list[int] = []

    def ack_of(n: int):
        async def ack() -> None:
            acked.append(n)
        return ack

    acks = OrderedAcks()
    slots = [acks.register("events.orders", 0, ack_of(n)) for n in range(4)]
    other = acks.register("events.scans", 0, ack_of(9))
    await acks.done(slots[2])
    await acks.done(slots[1])
    assert acked == []
    await acks.done(slots[0])
    assert acked == [0, 1, 2]
    await acks.done(other)
    assert acked == [0, 1, 2, 9] and acks.pending() == 1
    acks.drop([0])
    await acks.done(slots[3])  # revoked meanwhile: left for the next owner
    assert acked == [0, 1, 2, 9] and acks.pending() == 0


@NAMESPACES
async def test_a_revoked_partition_leaves_nothing_of_its_own_in_the_open_batch(
        namespace: str) -> None:
    h = Harness("wall", wall=2e9, namespace=namespace)
    mine = "MK1"
    theirs = next(f"MK{n}" for n in range(2, 99)
                  if partition_for(f"MK{n}", PARTITIONS) != partition_for(mine, PARTITIONS))
    sent = []
    for member in (mine, theirs):
        sent.append(await h.send(h.names.orders, orjson.dumps(raw_event(
            "order.paid", "2033-05-18T10:00:00+08:00", member=member, amount_fen=100)),
            partition_for(member, PARTITIONS), flush=False))
    h.processor.forget({partition_for(theirs, PARTITIONS)})
    await h.processor.flush()
    assert {orjson.loads(s["value"])["member_id"] for s in h.topics.tag_changes.sent} == {mine}
    assert [r["key"] for r in h.changelog.sent] == [mine.encode()] and theirs.encode() not in h.table
    assert h.acked == [sent[0].offset]  # the other comes again to its next owner


async def test_the_quiet_stream_timer_waits_while_the_table_is_recovered() -> None:
    h = Harness("wall", wall=2e9)
    recovering = [True]
    shipper = BatchShipper(h.processor, on_failure=pytest.fail, paused=lambda: recovering[0],
                           linger_s=0.001)
    await h.send(h.names.orders, orjson.dumps(raw_event(
        "order.paid", "2033-05-18T10:00:00+08:00", amount_fen=100)), 1, flush=False)
    await shipper.ship_when_due()
    await asyncio.sleep(0.02)
    assert h.sender.shipments == 0
    recovering[0] = False
    await asyncio.sleep(0.02)
    await shipper.drain()
    assert h.sender.shipments == 1 and h.acked


class YieldingSender(FakeSender):
    """Like Kafka, a send gives other coroutines (the timer) a chance to run."""

    async def enqueue(self, records: list[Record]) -> Any:
        for record in records:
            await super().enqueue([record])
            await asyncio.sleep(0)
        return _delivered()


async def test_tick_cannot_fire_a_deadline_while_an_earlier_event_waits_to_be_applied() -> None:
    """Regression: while one released event was being applied (its sends yield), the timer
    fired another member's deadline that lay after that member's own released, not yet
    applied event; the stream then disagreed with the dry run."""
    h = Harness("event")
    h.processor.sender = YieldingSender(h.sender.topics)
    p = partition_for("MY", PARTITIONS)
    other = next(f"MX{n}" for n in range(100) if partition_for(f"MX{n}", PARTITIONS) == p)
    first = [raw_event("order.paid", "2024-01-02T10:00:00+08:00", member="MY", amount_fen=300_000),
             raw_event("order.paid", "2024-03-02T10:00:00+08:00", member="MY", amount_fen=300_000)]
    later = [raw_event("order.paid", "2024-06-01T10:00:00+08:00", member=other, amount_fen=100),
             raw_event("order.paid", "2024-07-01T10:00:00+08:00", member="MY", amount_fen=100)]
    for body in first:
        await h.event(h.names.orders, body)
    await h.markers("2024-03-02T10:00:00+08:00", p)  # MY now has a deadline on 2025-01-01
    for body in later:
        await h.event(h.names.orders, body)  # held: the clock is still at 2024-03-02
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
        processor.tick([partition])
        await processor.flush()
        await asyncio.sleep(0)


async def test_backfill_reevaluates_every_member_of_the_partition_with_new_rules() -> None:
    h = Harness("wall", wall=datetime.fromisoformat("2024-01-03T00:00:00+08:00").timestamp())
    members = [f"MB{n}" for n in range(40)]
    p = partition_for(members[0], PARTITIONS)
    mine = [m for m in members if partition_for(m, PARTITIONS) == p]
    for member in members:
        await h.event(h.names.orders, raw_event("order.paid", "2024-01-02T10:00:00+08:00",
                                                 member=member, amount_fen=20_000))
    # a new rules version with a new tag; nobody has had an event since
    stricter = DEFAULT_RULES.read_text().replace('version: "2024-03-01.1"',
                                                 'version: "2024-03-02.1"')
    stricter = stricter.replace("tags:\n", "tags:\n  - {id: any_buyer, name_zh: 购买过, "
                                "family: transaction, when: 'orders.count >= 1'}\n", 1)
    h.processor.use_rules(Engine(compile_rules(stricter, "new.yaml")))
    assert not [s for s in h.topics.tag_changes.sent if b'"any_buyer"' in s["value"]]
    from schemas.control import CONTROL_HEADER

    await h.send(h.names.reroute, b"", p, [(CONTROL_HEADER, BACKFILL)])
    added = {orjson.loads(s["value"])["member_id"] for s in h.topics.tag_changes.sent
             if b'"any_buyer"' in s["value"]}
    assert added == set(mine)  # every member of this partition, and only those
    assert all(decode_state(h.table[m.encode()]).rules_version == "2024-03-02.1" for m in mine)


# --- topic namespace ---------------------------------------------------------------------------


async def test_with_a_namespace_an_event_is_decoded_and_its_changes_go_to_the_namespaced_topics():
    h = Harness("wall", wall=2e9, namespace=NAMESPACE)
    body = raw_event("order.paid", "2033-05-18T10:00:00+08:00", member="M42", amount_fen=100)
    message = await h.send(NAMESPACE + "events.orders", orjson.dumps(body),
                           partition_for("M42", PARTITIONS))
    assert h.topics.deadletter.sent == [] and h.acked == [message.offset]
    assert h.topics.tag_changes.name == NAMESPACE + "tags.changes"
    [change] = [orjson.loads(s["value"]) for s in h.topics.tag_changes.sent
                if b'"first_purchase"' in s["value"]]
    assert change["member_id"] == "M42" and change["cause"]["event_id"] == body["event_id"]
    assert [r["key"] for r in h.changelog.sent] == [b"M42"]
    # the sender delivers by topic name: a record for any other topic would fail the send
    assert all(topic.startswith(NAMESPACE) for topic in h.sender.topics
               if topic != CHANGELOG_TOPIC)


async def test_with_a_namespace_an_order_on_the_scans_topic_is_dead_lettered_under_it():
    h = Harness("wall", wall=2e9, namespace=NAMESPACE)
    body = raw_event("order.paid", "2033-05-18T10:00:00+08:00", member="M42", amount_fen=100)
    message = await h.send(NAMESPACE + "events.scans", orjson.dumps(body), 1)
    assert h.topics.deadletter.name == NAMESPACE + "events.deadletter"
    [letter] = [orjson.loads(s["value"]) for s in h.topics.deadletter.sent]
    assert (letter["topic"], letter["partition"], letter["offset"]) == (
        NAMESPACE + "events.scans", 1, message.offset)
    assert letter["error"] == (f"event_type 'order.paid' belongs on topic "
                               f"'{NAMESPACE}events.orders', not '{NAMESPACE}events.scans'")
    assert h.topics.tag_changes.sent == [] and h.table == {} and h.acked == [message.offset]


async def test_with_a_namespace_equal_times_are_applied_in_canonical_topic_rank():
    """Interactions before orders at the same instant: the rank is the canonical topic's."""
    h = Harness("event", namespace=NAMESPACE)
    at = "2024-01-01T10:00:00+08:00"
    await h.event(h.names.orders, raw_event("order.paid", at, member="M7", amount_fen=100))
    await h.event(h.names.interactions, raw_event("interaction.member_joined", at, member="M7"))
    await h.markers(at, partition_for("M7", PARTITIONS))
    assert h.changes() == [("member", "added"), ("first_purchase", "added")]


async def test_events_of_another_namespace_are_not_taken_as_event_topics():
    """A topic outside the namespace is no event topic: it decodes as any family (like the
    re-route topic with no origin) and does not move the event clock."""
    h = Harness("event", namespace=NAMESPACE)
    p = partition_for("M7", PARTITIONS)
    value, headers = encode_watermark(datetime.fromisoformat("2024-01-01T10:00:00+08:00"))
    for topic in ("events.orders", "events.interactions", "events.scans"):
        await h.send(topic, value, p, headers)
    assert h.processor.clocks.now(p) is None


async def test_a_copy_of_an_applied_event_behind_the_clock_is_a_duplicate_not_a_dead_letter():
    """Regression (3-node leader-kill e2e): the replay's producer retried a batch whose
    acknowledgement died with its partition leader, so 15 events were in the log twice, and
    the copies, behind their topic's clock, were dead-lettered as late."""
    h = Harness("event")
    member = "M9"
    p = partition_for(member, PARTITIONS)
    paid = raw_event("order.paid", "2024-01-01T10:00:00+08:00", member=member,
                     amount_fen=100, event_id="paid-once")
    await h.event(h.names.orders, paid)
    await h.event(h.names.orders, raw_event("order.paid", "2024-01-03T10:00:00+08:00",
                                             member=member, amount_fen=100))
    await h.markers("2024-01-03T10:00:00+08:00", p)
    applied = decode_state(h.table[member.encode()]).orders.count
    await h.event(h.names.orders, paid)  # the retried copy
    assert h.topics.deadletter.sent == []
    assert decode_state(h.table[member.encode()]).orders.count == applied == 2
    assert h.processor.counters.duplicates == 1


class DyingSender(FakeSender):
    """A worker's producer when the worker is SIGKILLed: of what it was asked to send, the
    first `survives` records reach Kafka (in the given order, or each call's records in
    reverse, as separate produce requests may land in either order), then nothing does."""

    def __init__(self, topics: dict[str, FakeTopic], survives: int, reverse: bool) -> None:
        super().__init__(topics)
        self.left = survives
        self.reverse = reverse

    async def enqueue(self, records: list[Record]) -> Any:
        for record in reversed(records) if self.reverse else records:
            if self.left == 0:
                raise ConnectionError("killed")
            self.left -= 1
            await super().enqueue([record])
        return _delivered()


def _mid_shipment_history() -> list[bytes]:
    members = [f"MK{n}" for n in range(6)]
    days = ("2033-05-01", "2033-05-09", "2033-05-17")
    return [orjson.dumps(raw_event("order.paid", f"{day}T10:00:00+08:00", member=member,
                                   amount_fen=90_000))
            for day in days for member in members]


@pytest.mark.parametrize("reverse", [False, True])
async def test_a_worker_killed_mid_shipment_loses_no_output_whatever_part_arrived(reverse):
    """Regression: a batch's changelog records were sent with its outputs. Killed with the
    changelog delivered but a profile not, the next owner recovered the state, took the
    redelivered events for duplicates, and the member's last profile never came (CI: the
    kill test's change ids all matched, its profiles did not)."""
    history = _mid_shipment_history()
    at = datetime.fromisoformat("2033-06-01T00:00:00+08:00").timestamp()
    pack = load_rules(DEFAULT_RULES)
    engine = Engine(pack)
    dry = dry_run(engine, history)
    expected_ids = {c.change_id for c in dry.changes}
    expected_profiles = {m: msgspec.to_builtins(render_profile(state, pack))
                         for m, state in dry.states.items()}
    survives = -1
    while True:  # every kill point, up to one past the victim's last record
        survives += 1
        victim = Harness("wall", wall=at, engine=engine)
        victim.processor.sender = DyingSender(victim.sender.topics, survives, reverse)
        delivered: list[Message] = []
        try:
            for line in history:
                partition = partition_for(orjson.loads(line)["member_id"], PARTITIONS)
                delivered.append(await victim.send(victim.names.orders, line, partition))
        except ConnectionError:
            pass
        # the next owner: the table from the delivered changelog, the unacknowledged events
        heir = Harness("wall", wall=at, engine=engine)
        heir.sender.topics = victim.sender.topics
        heir.topics, heir.changelog = victim.topics, victim.changelog
        for record in victim.changelog.sent:
            heir.table[record["key"]] = record["value"]
        for line in history[len(victim.acked):]:
            partition = partition_for(orjson.loads(line)["member_id"], PARTITIONS)
            await heir.send(heir.names.orders, line, partition)
        found_ids = {orjson.loads(s["value"])["change_id"] for s in heir.topics.tag_changes.sent}
        latest = {s["key"].decode(): msgspec.to_builtins(render_profile(
            decode_state(s["value"]), pack)) for s in heir.changelog.sent}
        assert found_ids == expected_ids, f"killed after {survives} records"
        assert latest == expected_profiles, f"killed after {survives} records"
        if len(victim.acked) == len(history):
            break


async def test_after_a_failed_batch_no_later_changelog_is_sent() -> None:
    """A later batch's states contain the failed batch's events, whose outputs never went:
    its changelog would make the next owner skip those events as duplicates."""
    h = Harness("wall", wall=2e9)
    delivered = h.sender.enqueue
    calls = 0

    async def first_outputs_fail(records: list[Record]) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("broker gone")
        return await delivered(records)

    h.sender.enqueue = first_outputs_fail  # type: ignore[method-assign]
    failures: list[BaseException] = []

    async def stop_worker(exc: BaseException) -> None:
        failures.append(exc)

    shipper = BatchShipper(h.processor, on_failure=stop_worker)
    for day in ("2033-05-18", "2033-05-19"):
        await h.send(h.names.orders, orjson.dumps(raw_event(
            "order.paid", f"{day}T10:00:00+08:00", amount_fen=100)),
            partition_for("M1", PARTITIONS), flush=False)
        await shipper.ship_open_batch()
    await shipper.drain()
    assert [type(exc).__name__ for exc in failures] == ["ConnectionError", "BatchAbandoned"]
    assert h.changelog.sent == [] and h.acked == [] and b"M1" not in h.table
    assert ("repeat_buyer", "added") in h.changes()  # the second batch's outputs did go


async def test_a_message_faust_never_handed_over_is_fetched_again_not_skipped() -> None:
    """Regression: Faust committed past an order it never handed to the agent (its fetch
    loop counts a jump in offsets as done); the member's profile lacked it for good."""
    h = Harness("wall", wall=2e9)
    rewinds: list[tuple[str, int, int]] = []
    h.processor.sequence.rewind = lambda *where: rewinds.append(where)
    p = partition_for("M1", PARTITIONS)
    orders = [orjson.dumps(raw_event("order.paid", f"2033-05-{day}T10:00:00+08:00",
                                     amount_fen=100)) for day in (11, 12, 13, 14)]
    for offset in (0, 1, 3):  # offset 2 never arrives
        await h.send(h.names.orders, orders[offset], p, offset=offset)
    assert rewinds == [(h.names.orders, p, 2)] and h.acked == [0, 1]
    await h.send(h.names.orders, orders[3], p, offset=4)  # fetched before the rewind
    for offset in (2, 3):  # after it
        await h.send(h.names.orders, orders[offset], p, offset=offset)
    assert h.acked == [0, 1, 2, 3] and len(rewinds) == 1
    assert decode_state(h.table[b"M1"]).orders.count == 4
    # a seek back over handled messages delivers them again: they are not applied twice
    await h.send(h.names.orders, orders[1], p, offset=1)
    assert h.acked == [0, 1, 2, 3] and h.processor.counters.duplicates == 0


async def test_offsets_with_no_records_are_passed_once_the_rewind_confirms_them() -> None:
    """A transactional producer's markers take offsets that no record fills."""
    h = Harness("wall", wall=2e9)
    rewinds: list[tuple[str, int, int]] = []
    h.processor.sequence.rewind = lambda *where: rewinds.append(where)
    p = partition_for("M1", PARTITIONS)
    first, second = (orjson.dumps(raw_event("order.paid", f"2033-05-{day}T10:00:00+08:00",
                                            amount_fen=100)) for day in (11, 12))
    await h.send(h.names.orders, first, p, offset=0)
    await h.send(h.names.orders, second, p, offset=2)
    assert rewinds == [(h.names.orders, p, 1)] and h.acked == [0]
    await h.send(h.names.orders, second, p, offset=2)  # first again after the rewind
    assert h.acked == [0, 2] and decode_state(h.table[b"M1"]).orders.count == 2


async def test_after_a_revocation_a_partition_starts_wherever_it_is_sought_to() -> None:
    h = Harness("wall", wall=2e9)
    h.processor.sequence.rewind = lambda *where: pytest.fail(f"rewound {where}")
    p = partition_for("M1", PARTITIONS)
    first, second = (orjson.dumps(raw_event("order.paid", f"2033-05-{day}T10:00:00+08:00",
                                            amount_fen=100)) for day in (11, 12))
    await h.send(h.names.orders, first, p, offset=0)
    h.processor.forget({p})
    await h.send(h.names.orders, second, p, offset=40)
    assert h.acked == [0, 40]


async def test_an_erased_member_leaves_tombstones_and_a_later_event_starts_a_new_member() -> None:
    h = Harness("wall", wall=2e9)
    member = "M31"
    key = member.encode()
    await h.event(h.names.interactions, raw_event(
        "interaction.member_joined", "2033-05-18T11:33:20+08:00", member=member))
    await h.event(h.names.interactions, raw_event(
        "interaction.wecom_friend_added", "2033-05-18T11:34:20+08:00", member=member,
        guide_id="zhang", external_userid="wm31", channel="wecom"))
    assert key in h.table and len(h.wecom_marks.sent) == 1  # the new pair got 会员
    await h.event(h.names.interactions, raw_event(
        "interaction.erasure_requested", "2033-05-18T11:35:20+08:00", member=member,
        channel="ops"))
    assert key not in h.table  # deleted from the store once delivered
    assert h.changelog.sent[-1]["key"] == key and h.changelog.sent[-1]["value"] is None
    removal = orjson.loads(h.wecom_marks.sent[-1]["value"])
    assert removal["reasons"] == ["erasure"] and removal["marks"][0]["remove"]
    [record] = [orjson.loads(r["value"]) for r in h.erasures.sent]
    assert record["state_found"] and member.encode() not in h.erasures.sent[0]["value"]
    assert h.erasures.sent[0]["key"] == record["member_hash"].encode()  # not the member id
    # the same id again is a new member: joined only now, none of the old history
    await h.event(h.names.orders, raw_event("order.paid", "2033-05-18T11:40:00+08:00",
                                            member=member, amount_fen=500))
    state = decode_state(h.table[key])
    assert state.joined_at is None and state.orders.count == 1 and state.guides == []


def _opened_invites() -> float:
    return metrics.REGISTRY.get_sample_value(
        "tagstream_task_changes_total", {"kind": "invite_first_order", "status": "open"}) or 0


async def test_tasks_go_to_tasks_changes_and_an_erasure_ends_them_with_a_tombstone() -> None:
    opened_before = _opened_invites()
    h = Harness("wall", wall=datetime.fromisoformat("2024-01-01T10:02:00+08:00").timestamp())
    for body in (raw_event("interaction.member_joined", "2024-01-01T10:00:00+08:00"),
                 raw_event("interaction.wecom_friend_added", "2024-01-01T10:01:00+08:00",
                           guide_id="zhang", external_userid="wm1", channel="wecom")):
        await h.event(h.names.interactions, body)
    assert h.task_changes.sent == []
    h.wall = datetime.fromisoformat("2024-02-02T10:00:00+08:00").timestamp()
    h.processor.tick([partition_for("M1", PARTITIONS)])  # day 31 without an order
    await h.processor.flush()
    [opened] = [orjson.loads(s["value"]) for s in h.task_changes.sent]
    assert (opened["kind"], opened["guide"], opened["status"]) == (
        "invite_first_order", "zhang", "open")
    assert h.task_changes.sent[0]["key"] == b"M1"
    assert _opened_invites() == opened_before + 1

    await h.event(h.names.interactions, raw_event(
        "interaction.erasure_requested", "2024-02-02T11:00:00+08:00", channel="ops"))
    cancelled, tombstone = h.task_changes.sent[1:]
    assert orjson.loads(cancelled["value"])["status"] == "cancelled"
    assert (tombstone["key"], tombstone["value"]) == (b"M1", None)


async def test_a_redelivered_event_the_seen_ring_forgot_is_a_duplicate_not_a_dead_letter():
    """Regression (kill-a-worker e2e on Kafka): the survivor re-read a partition from an old
    commit, and an event applied long before, no longer among the member's 64 remembered
    ids and over 7 days behind the member's newest state, was dead-lettered as late. The
    offset it was consumed at shows it was handled: a duplicate. The same event written
    again at a new offset (a producer's late copy) is still refused, as before."""
    start = datetime.fromisoformat("2024-01-01T10:00:00+08:00")
    h = Harness("wall", wall=start.timestamp())  # the wall clock follows the events
    member = "M-forgot"
    p = partition_for(member, PARTITIONS)
    first = raw_event("interaction.sign_in", start.isoformat(), member=member,
                      event_id="first-sign-in")
    sent = await h.event(h.names.interactions, first)
    for day in range(1, 71):  # more events than the ring remembers, over 10 weeks
        at = start + timedelta(days=day)
        h.wall = at.timestamp()
        await h.event(h.names.interactions,
                      raw_event("interaction.sign_in", at.isoformat(), member=member))
    state = decode_state(h.table[member.encode()])
    assert h.topics.deadletter.sent == []
    assert not h.processor.engine.has_applied(state, decode_event(orjson.dumps(first)))
    # the next owner: the member's state from the changelog, the partition re-read from an
    # old commit
    survivor = Harness("wall", wall=h.wall)
    survivor.table.update(h.table)
    await survivor.send(h.names.interactions, orjson.dumps(first), p, offset=sent.offset)
    assert survivor.topics.deadletter.sent == []
    assert survivor.processor.counters.duplicates == 1
    # a producer's late copy, written after everything applied: refused, as before
    later = Harness("wall", wall=h.wall)
    later.table.update(h.table)
    await later.send(h.names.interactions, orjson.dumps(first), p, offset=sent.offset + 71)
    [letter] = [orjson.loads(d["value"]) for d in later.topics.deadletter.sent]
    assert "late event" in letter["error"]


def _agent_seconds(part: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "tagstream_worker_agent_seconds_total", {"part": part}) or 0.0


async def test_the_agents_own_time_is_counted_per_part_and_reaches_the_metric_a_batch_later():
    readings = itertools.count(0, 0.25)  # each reading of the timer 0.25 s after the previous
    h = Harness("wall", wall=datetime.fromisoformat("2024-01-01T10:05:00+08:00").timestamp(),
                timer=lambda: next(readings))
    handled, sealed = _agent_seconds("handle"), _agent_seconds("seal")
    for minute in range(3):  # each sent message is handled, then its batch sealed and shipped
        await h.event(h.names.interactions, raw_event(
            "interaction.browse", f"2024-01-01T10:0{minute}:00+08:00"))
    assert h.topics.tag_changes.sent  # the events were applied
    await h.processor.flush()  # nothing open: only the tally of the third seal is flushed
    assert _agent_seconds("handle") - handled == pytest.approx(3 * 0.25)
    assert _agent_seconds("seal") - sealed == pytest.approx(3 * 0.25)
