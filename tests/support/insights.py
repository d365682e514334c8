"""Audience-count test helpers: a dry run's final states and profiles, what they count per tag,
and writing them to Redis the production way (states on the member changelog, rendered and
written by the real Redis sink)."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterable, Iterator

import msgspec
import orjson
from aiokafka import AIOKafkaProducer

from streams.platform.settings import DEFAULT_RULES, Settings
from streams.platform.topics import members_changelog, topic_names
from streams.serving.insight_counts import InsightCounts
from streams.serving.insight_snapshots import DailySnapshots
from streams.serving.redis_sink import run_redis_sink
from streams.serving.redis_store import RedisProfileStore
from streams.tools.generate import generate_events
from taggers.dryrun import DryRunResult, decode_lines, dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import load_rules
from taggers.state import MemberState, encode_state
from tests.support.task_done import with_tasks_done


def dry_run_states(members: int, days: int, seed: int) -> list[MemberState]:
    """The final states of a dry run of a generated history (default pack), by member id."""
    lines = [orjson.dumps(e) for e in generate_events(members=members, days=days, seed=seed)]
    result = dry_run(Engine(load_rules(DEFAULT_RULES)), lines)
    return [result.states[m] for m in sorted(result.states)]


def rendered(states: Iterable[MemberState]) -> list[dict[str, Any]]:
    """The profiles of `states` with the default pack, as the Redis sink renders them."""
    pack = load_rules(DEFAULT_RULES)
    return [msgspec.to_builtins(render_profile(state, pack)) for state in states]


def dry_run_profiles(members: int, days: int, seed: int) -> list[dict[str, Any]]:
    """The final profiles of a dry run of a generated history, as the sink serves them."""
    return rendered(dry_run_states(members, days, seed))


def held_counts(profiles: list[dict[str, Any]], guide: str | None = None) -> dict[str, int]:
    """Members per held tag, and ":members", over everyone or one guide's members: counted
    from the profiles themselves, independently of Redis."""
    counts: Counter[str] = Counter()
    for profile in profiles:
        if guide is not None and guide not in {g["userid"] for g in profile["guides"]}:
            continue
        counts[":members"] += 1
        counts.update({t["id"] for t in profile["tags"]})
    return dict(counts)


def served_counts(body: dict[str, Any]) -> dict[str, int]:
    """The same from a GET /insights/tags body (tags nobody holds left out)."""
    out = {t["id"]: t["members"] for t in body["tags"] if t["members"]}
    if body["members"]:
        out[":members"] = body["members"]
    return out


@asynccontextmanager
async def running_sink(settings: Settings) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(run_redis_sink(settings, stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def publish_states(settings: Settings,
                         records: list[MemberState | tuple[str, None]]) -> dict[int, int]:
    """States (or (member_id, None) tombstones) onto the member changelog, keyed by member as
    the worker writes them; returns the next offset per partition after them."""
    topic = members_changelog(settings)
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_bootstrap, acks="all",
                                linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        futures = []
        for record in records:
            member_id, value = ((record[0], None) if isinstance(record, tuple)
                                else (record.member_id, encode_state(record)))
            futures.append(await producer.send(topic, key=member_id.encode(), value=value))
        ends: dict[int, int] = {}
        for metadata in await asyncio.gather(*futures):
            ends[metadata.partition] = max(ends.get(metadata.partition, 0), metadata.offset + 1)
        return ends
    finally:
        await producer.stop()


async def wait_sink_reaches(settings: Settings, ends: dict[int, int], timeout: float = 90) -> None:
    """Until Redis records that the sink wrote every partition up to `ends`."""
    topic = members_changelog(settings)
    fields = {f"{topic}:{p}": end for p, end in ends.items()}
    deadline = time.monotonic() + timeout
    async with RedisProfileStore(settings.redis_url) as store:
        while True:
            stored = await store.read_offsets(list(fields))
            if all((stored[f] or 0) >= end for f, end in fields.items()):
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"the Redis sink did not reach {fields}: at {stored}")
            await asyncio.sleep(0.1)


@dataclass
class Day:
    """The members at the start of one local day of a generated history (`at`: 00:00 local)."""

    at: int
    changed: list[MemberState]  # members whose profile differs from the day before
    erased: list[str]
    tasks: list[dict[str, Any]]  # task records written since the day before
    profiles: list[dict[str, Any]]  # everyone's profile


def history_by_day(members: int, days: int, seed: int, last_days: int,
                   tasks_done_every: int | None = None) -> Iterator[Day]:
    """The production engine over a generated history, stopped at each of the last `last_days`
    local midnights with every deadline due by then fired: what the worker would have
    published by that midnight. Each day's profiles are exactly the final profiles of
    `taggers.dryrun.dry_run(..., as_of=that midnight)` over the events before it. With
    `tasks_done_every`, guides answer every so many tasks (tests/support/task_done.py)."""
    pack = load_rules(DEFAULT_RULES)
    engine = Engine(pack)
    lines = [orjson.dumps(e) for e in generate_events(members=members, days=days, seed=seed)]
    if tasks_done_every is not None:
        lines = with_tasks_done(Engine(pack), lines, tasks_done_every)
    rows = decode_lines(lines, DryRunResult())
    last = pack.calendar.day_of(rows[-1][0]) + 1
    states: dict[str, Any] = {}
    previous: dict[str, dict[str, Any]] = {}
    i = 0
    for day in range(last - last_days + 1, last + 1):
        at = pack.calendar.day_start(day)
        tasks = []
        while i < len(rows) and rows[i][0] < at:
            event = rows[i][3]
            i += 1
            outcome = engine.apply(states.get(event.member_id), event)
            if outcome.erasure is not None:
                states.pop(event.member_id, None)
            else:
                states[event.member_id] = outcome.state
            tasks += outcome.tasks
        for state in states.values():
            tasks += engine.advance(state, at).tasks
        now = {m: msgspec.to_builtins(render_profile(states[m], pack)) for m in sorted(states)}
        yield Day(at=at, changed=[states[m] for m, p in now.items() if previous.get(m) != p],
                  erased=[m for m in previous if m not in now],
                  tasks=[msgspec.to_builtins(t) for t in tasks], profiles=list(now.values()))
        previous = now


async def publish_tasks(settings: Settings, records: list[dict[str, Any]]) -> None:
    topic = topic_names(settings).task_changes
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_bootstrap, acks="all",
                                linger_ms=5, max_batch_size=1 << 20)
    await producer.start()
    try:
        for record in records:
            await producer.send(topic, key=record["member_id"].encode(), value=orjson.dumps(record))
        await producer.flush()
    finally:
        await producer.stop()


async def replay_days(settings: Settings, days: Iterable[Day]) -> Day:
    """Each day's changes through the member changelog and the real Redis sink, then that day's
    snapshot (taken as the sink takes it, with the clock at 00:01 of the day); returns the
    last day."""
    last = None
    async with RedisProfileStore(settings.redis_url) as store:
        counts = InsightCounts(store.redis, store.prefix)
        for day in days:
            if day.tasks:
                await publish_tasks(settings, day.tasks)
            ends = await publish_states(settings, [*day.changed, *((m, None) for m in day.erased)])
            await wait_sink_reaches(settings, ends)
            await DailySnapshots(counts, load_rules(DEFAULT_RULES).calendar,
                                 clock=lambda: day.at + 60).check()
            last = day
    assert last is not None
    return last
