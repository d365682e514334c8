"""End to end on the real broker: events in, tag changes out, dead letters, idempotency.

Each test gets its own broker and Redis (the `stack` fixture) and a real `tagstream worker`
process. The oracle is the pure engine (`taggers.dryrun`): the stream must produce exactly
the change ids the dry run computes for the same events.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from confluent_kafka import Consumer, Producer, TopicPartition

from schemas.events import MAX_EVENT_BYTES, TOPIC_BY_EVENT_TYPE
from streams.ops.replay import write_watermarks
from streams.platform.partitioning import partition_for
from streams.platform.topics import TopicNames, members_changelog, topic_names
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import raw_event
from tests.support.kafka import (
    at_least,
    change_ids_cover,
    create_topics,
    never,
    read_topic,
    running_worker,
    stored_codecs,
    values,
)

pytestmark = pytest.mark.e2e
CST = timezone(timedelta(hours=8))
# The tags these tests reason about; the default pack holds more (lifecycle, RFM, tiers...).
SPINE_TAGS = {"member", "first_purchase", "repeat_buyer", "high_value"}


def spine(changes: list[dict]) -> list[dict]:
    return [change for change in changes if change["tag"] in SPINE_TAGS]


def expected_change_ids(settings, lines: list[bytes]) -> set[str]:
    engine = Engine(load_rules(settings.rules_path), settings.allowed_lateness_s)
    result = dry_run(engine, lines)
    assert not result.rejected
    return {change.change_id for change in result.changes}


def invalid_payloads(rng: random.Random, count: int) -> list[tuple[bytes, str]]:
    """`count` bad messages of many kinds, each with the word its dead-letter reason must hold.
    Order-shaped ones go to events.orders (elsewhere they would be rejected for the topic)."""
    good = raw_event("order.paid", "2024-01-02T10:00:00+08:00", member="MBAD", amount_fen=100)

    def variant(**changes) -> bytes:
        body = {**good, "event_id": f"bad-{rng.random()}", **changes}
        return orjson.dumps({k: v for k, v in body.items() if v is not ...})

    makers = [
        (lambda: b"this is not json", "JSON"),
        (lambda: b"", "empty"),
        (lambda: b"\xff\xfe\xfa" + bytes(rng.randrange(256) for _ in range(8)), "UTF-8"),
        (lambda: b"[1, 2, 3]", "object"),
        (lambda: variant(event_id=...), "event_id"),
        (lambda: variant(amount_fen=199.5), "amount_fen"),
        (lambda: variant(amount_fen=100.0), "amount_fen"),
        (lambda: variant(amount_fen=True), "amount_fen"),
        (lambda: variant(amount_fen=-5), "amount_fen"),
        (lambda: variant(occurred_at="2024-01-02T10:00:00"), "timezone"),
        (lambda: variant(occurred_at="yesterday"), "occurred_at"),
        (lambda: variant(event_type="order.shipped"), "unknown event_type"),
        (lambda: variant(event_type="scan.verified"), "belongs on topic"),
        (lambda: variant(event_id="x" * 200), "event_id"),
        (lambda: variant(member_id="M 1"), "member_id"),
        (lambda: variant(schema_version=2), "schema_version"),
        (lambda: variant(items=[{"sku": "s", "category": "baijiu", "unit_price_fen": 1,
                                 "quantity": 0}]), "quantity"),
        (lambda: b"{\"a\":" * 5000 + b"1" + b"}" * 5000, "nested too deeply"),
        (lambda: b'{"x": "' + b"a" * (MAX_EVENT_BYTES + 10) + b'"}', "limit"),
    ]
    chosen = [makers[i % len(makers)] for i in range(count)]
    return [(make(), expect) for make, expect in chosen]


async def produce_mixed(settings, valid: list[bytes], invalid: list[tuple[bytes, str]],
                        rng: random.Random) -> dict[tuple[str, int, int], str]:
    """Valid events keyed by member in file order, invalid ones interleaved on random topics
    and partitions; then watermark markers. Returns where each invalid message landed."""
    names = topic_names(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_bootstrap, acks="all",
                                linger_ms=5, max_request_size=4 * MAX_EVENT_BYTES)
    await producer.start()
    landed: dict[tuple[str, int, int], str] = {}
    try:
        stride = max(1, len(valid) // max(1, len(invalid)))
        pending_invalid = list(invalid)
        futures = []
        for i, line in enumerate(valid):
            body = orjson.loads(line)
            futures.append((None, await producer.send(
                names.actual(TOPIC_BY_EVENT_TYPE[body["event_type"]]), value=line,
                key=body["member_id"].encode(),
                partition=partition_for(body["member_id"], settings.partitions))))
            if i % stride == 0 and pending_invalid:
                payload, expect = pending_invalid.pop()
                topic = names.orders if payload.startswith(b"{") else rng.choice(names.events)
                futures.append((expect, await producer.send(
                    topic, value=payload, key=b"junk",
                    partition=rng.randrange(settings.partitions))))
        for payload, expect in pending_invalid:
            futures.append((expect, await producer.send(names.orders, value=payload)))
        last = max(datetime.fromisoformat(orjson.loads(line)["occurred_at"]) for line in valid)
        await write_watermarks(producer, names.events, last)
        for expect, future in futures:
            metadata = await future
            if expect is not None:
                landed[(metadata.topic, metadata.partition, metadata.offset)] = expect
    finally:
        await producer.stop()
    return landed


@pytest.mark.slow  # 10,000 valid events through a worker: ~27 s
async def test_bad_input_is_dead_lettered_and_every_valid_event_is_processed(
        stack, shared_kafka, tmp_path):
    """1,000 malformed or invalid events mixed into 10,000 valid ones."""
    rng = random.Random(11)
    valid = [orjson.dumps(ev) for ev in generate_events(members=400, days=400, seed=3)][:10_000]
    assert len(valid) == 10_000
    invalid = invalid_payloads(rng, 1_000)
    expected = expected_change_ids(stack, valid)
    await create_topics(stack)
    # compressing its output: the readers below decompress what it wrote
    with running_worker(stack, tmp_path, clock="event", producer_compression="lz4") as worker:
        landed = await produce_mixed(stack, valid, invalid, rng)
        letters = await read_topic(stack.broker_bootstrap, topic_names(stack).deadletter,
                                   worker=worker, until=at_least(len(landed)), timeout=240)
        changes = await read_topic(
            stack.broker_bootstrap, topic_names(stack).tag_changes, worker=worker, timeout=240,
            until=change_ids_cover(expected))
        assert worker.alive(), worker.log_tail()

    dead = {(d["topic"], d["partition"], d["offset"]): d for d in values(letters)}
    assert len(letters) == len(landed) == 1_000
    for coordinates, expect in landed.items():
        assert coordinates in dead, f"{coordinates} ({expect}) not dead-lettered"
        assert expect.lower() in dead[coordinates]["error"].lower(), dead[coordinates]["error"]
    found = {c["change_id"] for c in values(changes)}
    assert found == expected  # every valid event processed, nothing extra
    assert len(values(changes)) == len(found)  # and no change published twice
    # What the worker wrote is stored lz4-compressed (TAGSTREAM_PRODUCER_COMPRESSION), what
    # this test's own producer wrote is not: reading the segments tells them apart.
    log_dir = shared_kafka.layout().nodes[0].log_dir
    names = topic_names(stack)
    for topic in (names.tag_changes, members_changelog(stack), names.deadletter):
        assert set(stored_codecs(log_dir, topic)) == {"lz4"}, topic
    assert set(stored_codecs(log_dir, names.orders)) == {"none"}


@pytest.mark.slow  # a worker stopped and started again around a redelivery: ~27 s
async def test_redelivered_event_yields_one_tag_change(stack, tmp_path):
    now = datetime.now(CST).replace(microsecond=0)
    order = orjson.dumps(raw_event("order.paid", (now - timedelta(minutes=5)).isoformat(),
                                   member="M-dup", amount_fen=700_000, event_id="order-dup-1"))
    names = topic_names(stack)
    await create_topics(stack)
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker_bootstrap, acks="all")
    await producer.start()
    try:
        home = partition_for("M-dup", stack.partitions)
        await producer.send_and_wait(names.orders, order, key=b"M-dup", partition=home)
        # the same event again, as a producer retry would, and once more on another partition
        await producer.send_and_wait(names.orders, order, key=b"M-dup", partition=home)
        await producer.send_and_wait(names.orders, order, key=None,
                                     partition=(home + 1) % stack.partitions)
    finally:
        await producer.stop()
    with running_worker(stack, tmp_path) as worker:
        # 2 changes (first_purchase, high_value) are due; then read again a while for extras
        await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                         until=at_least(2), timeout=120)
        records = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                                   until=never(), timeout=6)
    assert len({c["change_id"] for c in values(records)}) == len(records)  # nothing twice
    changes = sorted((c["tag"], c["op"]) for c in spine(values(records)))
    assert changes == [("first_purchase", "added"), ("high_value", "added")]


def fold_tags(changes: list[dict]) -> dict[str, set[str]]:
    final: dict[str, set[str]] = {}
    for change in changes:
        tags = final.setdefault(change["member_id"], set())
        (tags.add if change["op"] == "added" else tags.discard)(change["tag"])
    return final


def final_tags_equal(expected: dict[str, set[str]]):
    seen: list[dict] = []

    def enough(new) -> bool:
        seen.extend(values(new))
        return fold_tags(seen) == expected

    return enough


def _confluent_produce(bootstrap: str, names: TopicNames, events: list[dict],
                       partitioner: str | None) -> None:
    config = {"bootstrap.servers": bootstrap, "acks": "all"}
    if partitioner:
        config["partitioner"] = partitioner
    producer = Producer(config)
    for body in events:
        producer.produce(names.actual(TOPIC_BY_EVENT_TYPE[body["event_type"]]),
                         key=body["member_id"],
                         value=orjson.dumps(body))
    assert producer.flush(30) == 0


def _confluent_read(bootstrap: str, topic: str, partitions: int, want: int,
                    timeout: float) -> list[dict]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "e2e-reader",
                         "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    found: list[dict] = []
    try:
        import time

        deadline = time.monotonic() + timeout
        while len(found) < want and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                found.append(orjson.loads(message.value()))
    finally:
        consumer.close()
    return found


@pytest.mark.parametrize("partitioner", [None, "murmur2_random"],
                         ids=["librdkafka-default-partitioner-rerouted", "murmur2-direct"])
async def test_independent_librdkafka_client_produces_and_reads(stack, tmp_path, partitioner):
    now = datetime.now(CST).replace(microsecond=0)
    events = []
    for n in range(20):
        member = f"MC{n:03d}"
        events.append(raw_event("interaction.member_joined",
                                (now - timedelta(hours=3)).isoformat(), member=member))
        events.append(raw_event("order.paid", (now - timedelta(hours=2)).isoformat(),
                                member=member, amount_fen=400_000))
        events.append(raw_event("order.paid", (now - timedelta(hours=1)).isoformat(),
                                member=member, amount_fen=200_000))
    names = topic_names(stack)
    await create_topics(stack)
    _confluent_produce(stack.broker_bootstrap, names, events, partitioner)
    # final tags per member: the spine's, plus the default pack's lifecycle, RFM and tier
    expected = {f"MC{n:03d}": {"member", "repeat_buyer", "high_value", "lc_active",
                               "rfm_important_develop", "tier_gold"} for n in range(20)}
    with running_worker(stack, tmp_path) as worker:
        seen = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                                until=final_tags_equal(expected), timeout=60)
        changes = _confluent_read(stack.broker_bootstrap, names.tag_changes, stack.partitions,
                                  want=len(seen), timeout=30)
    assert len(changes) == len(seen)
    assert fold_tags(changes) == expected
    spine_ops = sorted((c["member_id"], c["tag"], c["op"]) for c in spine(changes))
    assert spine_ops == sorted((f"MC{n:03d}", tag, op) for n in range(20) for tag, op in (
        ("member", "added"), ("first_purchase", "added"), ("first_purchase", "removed"),
        ("repeat_buyer", "added"), ("high_value", "added")))


async def test_restarted_worker_recovers_member_state_from_the_changelog(stack, tmp_path):
    now = datetime.now(CST).replace(microsecond=0)
    member = "M-restart"
    home = partition_for(member, stack.partitions)
    first = raw_event("order.paid", (now - timedelta(hours=2)).isoformat(), member=member,
                      amount_fen=100)
    second = raw_event("order.paid", (now - timedelta(hours=1)).isoformat(), member=member,
                       amount_fen=100)
    names = topic_names(stack)
    await create_topics(stack)
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker_bootstrap, acks="all")
    await producer.start()
    try:
        await producer.send_and_wait(names.orders, orjson.dumps(first), key=member.encode(),
                                     partition=home)
        with running_worker(stack, tmp_path, name="first-worker") as worker:
            # the event is done once the member's state is in the changelog
            await read_topic(stack.broker_bootstrap, members_changelog(stack), worker=worker,
                             until=at_least(1), timeout=60)
        await producer.send_and_wait(names.orders, orjson.dumps(second), key=member.encode(),
                                     partition=home)
    finally:
        await producer.stop()
    with running_worker(stack, tmp_path, name="second-worker") as worker:
        records = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                                   until=lambda new: any(b'"repeat_buyer"' in r.value
                                                         for r in new), timeout=60)
    # the second worker knew about the first order: first_purchase ends, repeat_buyer begins
    # (had it not recovered the state, it would have added first_purchase for the second order)
    assert [(c["tag"], c["op"], c["cause"]["event_id"])
            for c in dict((c["change_id"], c) for c in spine(values(records))).values()] == [
        ("first_purchase", "added", first["event_id"]),
        ("first_purchase", "removed", second["event_id"]),
        ("repeat_buyer", "added", second["event_id"]),
    ]
