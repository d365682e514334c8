"""Nothing lost (issue 7): a killed worker, a second replay, out-of-order input, a paused
broker and a restarted Redis. Each compares the stream with `taggers.dryrun` on the same
events: the final profile of every member, and every expected change id on `tags.changes`
(a change may appear twice after a crash, always with the same change id)."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from pathlib import Path

import orjson
import pytest

from streams.generate import generate_events
from streams.replay import replay
from streams.sinks.redis_store import RedisProfileStore
from streams.stack import EmbeddedStack
from streams.topics import topic_names
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import load_rules
from tests.support import free_port
from tests.support.kafka import (
    assert_same_ids,
    assert_same_profiles,
    at_least,
    change_ids_cover,
    create_topics,
    describe_member_differences,
    latest_by_key_equals,
    never,
    read_topic,
    running_worker,
    values,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1500)]


def history(path: Path, members: int, days: int, seed: int, limit: int | None = None) -> list[bytes]:
    lines = [orjson.dumps(e) for e in generate_events(members=members, days=days, seed=seed)]
    lines = lines[:limit] if limit else lines
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


def describe_dead_letters(letters: list[dict]) -> str:
    """What a takeover dead-lettered (the test expects none): counts by reason and origin."""
    reasons: dict[str, int] = {}
    for letter in letters:
        key = f"{letter['topic']}:{letter['partition']} {letter['error'][:70]}"
        reasons[key] = reasons.get(key, 0) + 1
    offsets = sorted((d["topic"], d["partition"], d["offset"]) for d in letters)
    return (f"{len(letters)} dead letters: {reasons}; first {offsets[:3]}, last {offsets[-3:]}"
            if letters else "no dead letters")


def dry_run_of(settings, lines: list[bytes]):
    pack = load_rules(settings.rules_path)
    result = dry_run(Engine(pack, settings.allowed_lateness_s), lines)
    assert not result.rejected
    return result, pack


def expected_of(result, pack):
    """The change ids and final profiles the stream must produce."""
    profiles = {m: render_profile(s, pack) for m, s in result.states.items()}
    return {c.change_id for c in result.changes}, profiles


async def test_killed_worker_is_taken_over_and_nothing_is_lost(stack, tmp_path):
    """Regression: before the timer waited for recovery, 164 of 76,794 changes were lost."""
    path = tmp_path / "history.jsonl"
    lines = history(path, members=2600, days=731, seed=77, limit=200_000)
    assert len(lines) == 200_000
    dry, pack = dry_run_of(stack, lines)
    expected_ids, expected_profiles = expected_of(dry, pack)
    names = topic_names(stack)
    await create_topics(stack)
    with running_worker(stack, tmp_path, name="survivor", clock="event",
                        web_port=free_port()) as survivor, \
            running_worker(stack, tmp_path, name="victim", clock="event",
                           web_port=free_port()) as victim:
        replaying = asyncio.create_task(replay(stack.broker_bootstrap, path, names=names,
                                               partitions=stack.partitions, progress=False))
        # kill the victim once it has clearly been working: a fifth of the changes are out
        await read_topic(stack.broker_bootstrap, names.tag_changes, worker=survivor,
                         until=at_least(len(expected_ids) // 5), timeout=600)
        victim.kill()
        await replaying
        changes = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=survivor,
                                   until=change_ids_cover(expected_ids), timeout=900,
                                   idle_s=180)
        profiles = await read_topic(stack.broker_bootstrap, names.profiles, worker=survivor,
                                    until=latest_by_key_equals(expected_profiles), timeout=300,
                                    idle_s=60)
        assert survivor.alive()
        letters = await read_topic(stack.broker_bootstrap, names.deadletter, until=never(),
                                   timeout=5)
    found = [c["change_id"] for c in values(changes)]
    print(f"\n200,000 events, 1 of 2 workers killed: {len(expected_ids)} changes expected, "
          f"{len(set(found))} distinct found ({len(found) - len(set(found))} duplicates, "
          f"same ids), {len(expected_profiles)} profiles compared, {len(letters)} dead letters")
    if set(found) != expected_ids:
        report = describe_member_differences(values(changes), dry.changes)
        report = f"{describe_dead_letters(values(letters))}\n{report}"
        (tmp_path / "differences.txt").write_text(report)
        print(report[:20_000])
    # the history is valid and in order: a dead letter here is an event the takeover lost
    assert not letters, describe_dead_letters(values(letters))
    assert_same_ids(found, expected_ids)
    latest = {r.key.decode(): orjson.loads(r.value) for r in profiles}
    assert_same_profiles(latest, expected_profiles)


async def test_replaying_the_same_file_twice_changes_nothing(stack, tmp_path):
    path = tmp_path / "history.jsonl"
    lines = history(path, members=300, days=400, seed=5)
    expected_ids, expected_profiles = expected_of(*dry_run_of(stack, lines))
    names = topic_names(stack)
    await create_topics(stack)
    with running_worker(stack, tmp_path, clock="event") as worker:
        await replay(stack.broker_bootstrap, path, names=names, partitions=stack.partitions,
                     progress=False)
        first = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                                 until=change_ids_cover(expected_ids), timeout=300)
        await read_topic(stack.broker_bootstrap, names.profiles, worker=worker,
                         until=latest_by_key_equals(expected_profiles), timeout=120)
        await replay(stack.broker_bootstrap, path, names=names, partitions=stack.partitions,
                     progress=False)
        # every line of the second replay is dead-lettered as late/already applied or is a
        # remembered duplicate; wait until the dead letters stop growing
        letters = await read_topic(stack.broker_bootstrap, names.deadletter, worker=worker,
                                   until=never(), timeout=30)
        after = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                                 until=never(), timeout=5)
        profiles = await read_topic(stack.broker_bootstrap, names.profiles, worker=worker,
                                    until=never(), timeout=5)
    assert_same_ids((c["change_id"] for c in values(after)), {c["change_id"] for c in values(first)})
    assert len(after) == len(first)  # not one new change record
    latest = {r.key.decode(): orjson.loads(r.value) for r in profiles}
    assert_same_profiles(latest, expected_profiles)
    assert all("late event" in d["error"] for d in values(letters))
    print(f"\nsecond replay of {len(lines)} events: 0 new changes, {len(letters)} dead-lettered "
          f"as late, the rest recognised as duplicates")


async def test_out_of_order_within_the_window_equals_in_order_and_later_is_dead_lettered(
        stack, tmp_path):
    lines = history(tmp_path / "ordered.jsonl", members=300, days=200, seed=9)
    expected_ids, expected_profiles = expected_of(*dry_run_of(stack, lines))
    window_s = 6 * 3600
    rng = random.Random(3)
    # shuffle: every event moves by up to 6 hours (sorted by a jittered time), then a few
    # copies of old events arrive three days late
    jittered = sorted(lines, key=lambda line: _epoch(line) + rng.uniform(0, window_s))
    late = [orjson.dumps({**orjson.loads(lines[i]), "event_id": f"late-{i}"})
            for i in range(0, 2000, 400)]
    shuffled = list(jittered)
    for n, line in enumerate(late):
        shuffled.insert(len(shuffled) // 2 + 500 * n, line)
    path = tmp_path / "shuffled.jsonl"
    path.write_bytes(b"\n".join(shuffled) + b"\n")
    names = topic_names(stack)
    await create_topics(stack)
    with running_worker(stack, tmp_path, clock="event", reorder_window_s=window_s) as worker:
        await replay(stack.broker_bootstrap, path, names=names, partitions=stack.partitions,
                     progress=False)
        changes = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                                   until=change_ids_cover(expected_ids), timeout=300)
        profiles = await read_topic(stack.broker_bootstrap, names.profiles, worker=worker,
                                    until=latest_by_key_equals(expected_profiles), timeout=120)
        letters = await read_topic(stack.broker_bootstrap, names.deadletter, worker=worker,
                                   until=at_least(len(late)), timeout=60)
    assert_same_ids((c["change_id"] for c in values(changes)), expected_ids)
    assert_same_profiles({r.key.decode(): orjson.loads(r.value) for r in profiles}, expected_profiles)
    assert sorted(orjson.loads(d["raw"])["event_id"] for d in values(letters)) == \
        sorted(orjson.loads(line)["event_id"] for line in late)
    assert all("TAGSTREAM_REORDER_WINDOW_S" in d["error"] for d in values(letters))


async def test_paused_broker_and_restarted_redis_lose_nothing(stack, tmp_path):
    path = tmp_path / "history.jsonl"
    lines = history(path, members=800, days=400, seed=13)
    expected_ids, expected_profiles = expected_of(*dry_run_of(stack, lines))
    broker_pid = EmbeddedStack(stack).status()["broker"]["pid"]
    names = topic_names(stack)
    await create_topics(stack)
    with running_worker(stack, tmp_path, clock="event") as worker, \
            running_worker(stack, tmp_path, name="redis-sink", command=("redis-sink",)) as sink:
        replaying = asyncio.create_task(replay(stack.broker_bootstrap, path, names=names,
                                               partitions=stack.partitions, progress=False))
        await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                         until=at_least(len(expected_ids) // 4), timeout=300)
        os.kill(broker_pid, signal.SIGSTOP)  # the broker freezes: no answer, no error
        try:
            await asyncio.sleep(30)
        finally:
            os.kill(broker_pid, signal.SIGCONT)
        # Redis goes away and comes back empty while the replay goes on
        embedded = EmbeddedStack(stack)
        _stop_redis(embedded)
        await asyncio.sleep(5)
        embedded.up()
        await replaying
        changes = await read_topic(stack.broker_bootstrap, names.tag_changes, worker=worker,
                                   until=change_ids_cover(expected_ids), timeout=600)
        assert worker.alive() and sink.alive()
        async with RedisProfileStore(stack.redis_url) as store:
            for _ in range(120):
                found = await store.get_profiles(list(expected_profiles))
                stored = dict(zip(expected_profiles, found))
                if stored == expected_profiles:
                    break
                await asyncio.sleep(1)
    assert_same_ids((c["change_id"] for c in values(changes)), expected_ids)
    assert_same_profiles(stored, expected_profiles)


def _stop_redis(embedded: EmbeddedStack) -> None:
    from streams.stack import read_record, stop_process

    record = read_record(embedded._record_path("redis"))  # noqa: SLF001 - test reaches in
    assert record is not None and stop_process(record)


def _epoch(line: bytes) -> float:
    from datetime import datetime

    return datetime.fromisoformat(orjson.loads(line)["occurred_at"]).timestamp()
