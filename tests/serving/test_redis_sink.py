"""The Redis sink on the real broker and Redis: member states on the changelog rendered into
profiles, convergence, and catching up after Redis restarts."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec
import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from streams.platform.topics import members_changelog, topic_names
from streams.serving.profiles import ProfileRenderer
from streams.serving.redis_sink import RedisSink, group_id, run_redis_sink
from streams.serving.redis_store import RedisProfileStore
from streams.tools.processes import read_record, stop_process
from taggers.clock import to_epoch
from taggers.profile import render_profile
from taggers.rules import RulePack, load_rules
from taggers.state import GuideLink, HeldTag, MemberState, OrderStats, encode_state
from tests.support.kafka import admin_client, committed_to_the_end, create_topics
from tests.support.task_records import closed, make_task

pytestmark = pytest.mark.e2e

TAGS = ["member", "first_purchase", "repeat_buyer", "high_value"]
GUIDES = ["zhang", "li", "wang"]


NOON = to_epoch(datetime.fromisoformat("2024-03-01T12:00:00+08:00"))


def version(member: int, step: int) -> MemberState:
    """The member's state after `step` updates: tags and guides change, the watermark (the
    profile's as_of) repeats."""
    tags = [t for i, t in enumerate(TAGS) if (member + step) >> i & 1]
    guides = [GUIDES[(member + step) % 3]] + ([GUIDES[member % 3]] if step % 2 else [])
    # Two steps per second: equal as_of, told apart by the record offset.
    at = NOON + step // 2
    return MemberState(
        member_id=f"M{member:04d}", joined_at=NOON - 60 * 86_400,
        orders=OrderStats(count=1, distinct_days=1, spend_fen=member * 100 + step,
                          first_at=NOON - 86_400, last_at=at),
        tags={t: HeldTag(since=NOON - 86_400, rules_version="2024-03-01.1",
                         evidence={"value": 1}) for t in tags},
        guides=[GuideLink(g, f"wm{g}") for g in guides], watermark=at,
        rules_version="2024-03-01.1")


@dataclass
class StateProducer:
    producer: AIOKafkaProducer
    topic: str  # the member changelog of the test's app id
    pack: RulePack  # what the sink renders with (the stack's rule file)


async def produce(producer: StateProducer, states: list[MemberState | tuple[str, None]],
                  expected: dict[str, dict[str, Any] | None]) -> None:
    """Onto the changelog as the worker writes it; `expected` gets the profile the sink must
    serve for each (None: deleted)."""
    for item in states:
        if isinstance(item, tuple):
            member_id, value, profile = item[0], None, None
        else:
            member_id, value = item.member_id, encode_state(item)
            profile = msgspec.to_builtins(render_profile(item, producer.pack))
        await producer.producer.send(producer.topic, key=member_id.encode(), value=value)
        expected[member_id] = profile
    await producer.producer.flush()


async def redis_state(store: RedisProfileStore, member_ids: list[str]) -> dict[str, Any]:
    return dict(zip(member_ids, await store.get_profiles(member_ids)))


def expected_indexes(expected: dict[str, dict[str, Any] | None]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for member_id, profile in expected.items():
        if profile is None:
            continue
        tags = [t["id"] for t in profile["tags"]]
        guides = [g["userid"] for g in profile["guides"]]
        for t in tags:
            out.setdefault(f"ts:tag:{t}", set()).add(member_id)
            for g in guides:
                out.setdefault(f"ts:aud:{t}:{g}", set()).add(member_id)
        for g in guides:
            out.setdefault(f"ts:guide:{g}", set()).add(member_id)
    return out


async def redis_indexes(store: RedisProfileStore) -> dict[str, set[str]]:
    out = {}
    for prefix in ("ts:tag:*", "ts:guide:*", "ts:aud:*"):
        async for key in store.redis.scan_iter(match=prefix):
            out[key.decode()] = {m.decode() for m in await store.redis.zrange(key, 0, -1)}
    return out


async def wait_converged(store: RedisProfileStore, expected: dict[str, Any],
                         timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    ids = sorted(expected)
    while True:
        try:
            state = await redis_state(store, ids)
            if state == expected and await redis_indexes(store) == expected_indexes(expected):
                return
        except (OSError, ConnectionError, Exception) as exc:  # Redis may still be restarting
            state = {"error": repr(exc)}
        if time.monotonic() > deadline:
            wrong = [m for m in ids if state.get(m) != expected[m]]
            raise AssertionError(f"Redis did not converge: {len(wrong)} members differ, "
                                 f"e.g. {wrong[:5]}")
        await asyncio.sleep(0.2)


@pytest.fixture
async def producer(stack):
    await create_topics(stack)
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker_bootstrap, acks="all",
                                linger_ms=5)
    await producer.start()
    yield StateProducer(producer, members_changelog(stack), load_rules(stack.rules_path))
    await producer.stop()


@pytest.fixture
async def sink(stack):
    stop = asyncio.Event()
    task = asyncio.create_task(run_redis_sink(stack, stop))
    yield task
    stop.set()
    await asyncio.wait_for(task, 30)


@pytest.fixture
async def store(stack):
    async with RedisProfileStore(stack.redis_url, socket_timeout=2) as store:
        yield store


async def test_sink_keeps_the_newest_profile_of_every_member(stack, producer, sink, store):
    expected: dict[str, Any] = {}
    await produce(producer, [version(m, s) for s in range(4) for m in range(40)], expected)
    await produce(producer, [("M0007", None)], expected)  # a tombstone: the member is deleted
    await wait_converged(store, expected)
    assert await store.get_profile("M0007") is None
    assert sink.done() is False


async def test_an_unreadable_state_is_skipped_not_stalled_on(stack, producer, sink, store):
    """Only the worker writes the changelog, so a record that is not a member state is a bug
    to log; the members around it still converge."""
    expected: dict[str, Any] = {}
    await produce(producer, [version(m, 0) for m in range(5)], expected)
    for bad in (b"{not msgpack", msgspec.msgpack.encode({"member_id": "M0002"}),
                msgspec.msgpack.encode(["M0002", "not a time"])):
        await producer.producer.send(producer.topic, key=b"M0002", value=bad)
    await produce(producer, [version(m, 1) for m in range(5)], expected)
    await wait_converged(store, expected)
    assert sink.done() is False


async def test_sink_converges_after_redis_restarts_empty_mid_run(
        stack, local_redis, producer, sink, store):
    expected: dict[str, Any] = {}
    await produce(producer, [version(m, s) for s in range(3) for m in range(60)], expected)
    await wait_converged(store, expected)

    redis_record = read_record(local_redis.stack_dir / "redis.json")
    assert redis_record is not None and stop_process(redis_record)
    # While Redis is down: updates, new members and a deletion keep arriving on the topic.
    await produce(producer, [version(m, s) for s in range(3, 6) for m in range(0, 90, 2)],
                  expected)
    await produce(producer, [("M0011", None)], expected)
    await asyncio.sleep(2)  # the sink is retrying now; nothing is committed to Redis
    assert not sink.done()

    # Back on the same port with no data at all (the local Redis does not persist).
    await asyncio.to_thread(local_redis.up)
    await produce(producer, [version(m, 6) for m in range(0, 90, 5)], expected)
    await wait_converged(store, expected)
    assert await store.get_profile("M0011") is None
    assert not sink.done()


async def test_sink_rebuilds_when_redis_restarts_between_batches(
        stack, local_redis, producer, sink, store):
    """A restart with no write in flight still leaves Redis empty: the sink must notice."""
    expected: dict[str, Any] = {}
    await produce(producer, [version(m, 0) for m in range(30)], expected)
    await wait_converged(store, expected)
    redis_record = read_record(local_redis.stack_dir / "redis.json")
    assert redis_record is not None and stop_process(redis_record)
    await asyncio.to_thread(local_redis.up)
    await produce(producer, [version(3, 1)], expected)
    await wait_converged(store, expected)


async def test_sink_keeps_the_highest_version_of_every_task_and_erasure_deletes_them(
        stack, producer, sink, store):
    """tasks.changes next to the member states: redelivered and older records change nothing, a
    closed task leaves the open list, and a member's erasure (the tasks tombstone the worker
    writes after the member's task records) takes every task of theirs, while an unreadable record is skipped, not stalled on."""
    tasks_topic = topic_names(stack).task_changes
    opened = [make_task(f"M{m:04d}", GUIDES[m % 3], change_id=f"c{m}") for m in range(30)]
    later = [closed(t, "done" if i % 2 else "lapsed") for i, t in enumerate(opened[:10])]
    # Newest first, then the older records again (a redelivery): the newest must stay.
    for record in later + opened + later[:3]:
        await producer.producer.send(tasks_topic, key=record["member_id"].encode(),
                                     value=orjson.dumps(record))
    await producer.producer.send(tasks_topic, key=b"M0001", value=b"{not json")
    expected: dict[str, Any] = {}
    await produce(producer, [version(m, 0) for m in range(30)], expected)
    # M0012 is erased as the worker erases: a tasks tombstone behind the member's task records
    # on its tasks.changes partition, and the changelog tombstone. (Regression: the test once
    # relied on the changelog tombstone alone, whose order against the task records, on another
    # topic, no one promises; a sink that read the tombstone first never converged.)
    await producer.producer.send(tasks_topic, key=b"M0012", value=None)
    await produce(producer, [("M0012", None)], expected)

    newest = {t["task_id"]: t for t in opened} | {t["task_id"]: t for t in later}
    del newest[opened[12]["task_id"]]
    ids = sorted(t["task_id"] for t in opened)
    deadline = time.monotonic() + 60
    while True:
        held = dict(zip(ids, await store.tasks.get_many(ids)))
        if {k: v for k, v in held.items() if v is not None} == newest:
            break
        assert time.monotonic() < deadline, "tasks did not converge"
        await asyncio.sleep(0.2)
    await wait_converged(store, expected)
    open_of = {g: [t["task_id"] for t in (await store.tasks.page(g, "open", None, 100)).tasks]
               for g in GUIDES}
    assert open_of == {g: sorted((t["task_id"] for t in newest.values()
                                  if t["guide"] == g and t["status"] == "open"),
                                 key=lambda i: (newest[i]["due_at"], i)) for g in GUIDES}
    assert await store.tasks.member_task_ids("M0012") == set()
    assert not sink.done()


async def committed_and_ends(settings: Any) -> tuple[dict[int, int], dict[int, int]]:
    """The sink group's committed offsets and the end offsets of the member changelog, by
    partition (partitions with no record left out of both)."""
    topic = members_changelog(settings)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker_bootstrap)
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in range(settings.partitions)]
        ends = {tp.partition: end for tp, end in (await consumer.end_offsets(partitions)).items()
                if end}
    finally:
        await consumer.stop()
    async with admin_client(settings.broker_bootstrap) as admin:
        committed = {tp.partition: meta.offset for tp, meta in
                     (await admin.list_consumer_group_offsets(group_id(settings))).items()
                     if tp.topic == topic and tp.partition in ends}
    return committed, ends


async def test_the_kafka_commit_follows_redis_once_an_interval_and_at_stop(stack, producer, store):
    """Redis is the sink's own record; the group's Kafka commit (for lag monitoring) is made at
    most once per interval, on the sink's clock, and when the sink stops."""
    now = [0.0]
    sink = RedisSink(stack, store, ProfileRenderer(load_rules(stack.rules_path)),
                     commit_interval_s=10, clock=lambda: now[0])
    stop = asyncio.Event()
    task = asyncio.create_task(sink.run(stop))
    try:
        expected: dict[str, Any] = {}
        await produce(producer, [version(m, 0) for m in range(40)], expected)
        await wait_converged(store, expected)
        committed, ends = await committed_and_ends(stack)
        assert ends and committed == {}  # the clock has not moved: nothing committed yet

        now[0] = 10.0
        await committed_to_the_end(stack.broker_bootstrap, group_id(stack),
                                   [members_changelog(stack)], timeout=60)

        await produce(producer, [version(m, 1) for m in range(40)], expected)
        await wait_converged(store, expected)
        committed, newer_ends = await committed_and_ends(stack)
        assert committed == ends != newer_ends  # written to Redis, not yet committed
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)
    assert (await committed_and_ends(stack)) == (newer_ends, newer_ends)  # committed at stop
