"""`tagstream demo`: the whole flow on the local stack (Kafka and Redis), start to finish."""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import orjson

from streams.ops.tail import format_record
from streams.platform.admin import ensure_tagstream_topics
from streams.platform.kafka_clients import kafka_consumer
from streams.platform.redaction import redact_url
from streams.platform.security import kafka_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import topic_names
from streams.tools.processes import ChildProcess, tagstream_command
from streams.tools.stack import LocalStack


def run_demo(settings: Settings, *, members: int, days: int, seed: int,
             keep_stack: bool = False) -> None:
    # A generated history lies in the past: the event-time clock lets its absence rules fire
    # at their historical deadlines, as they would have live.
    settings = replace(settings, clock="event")
    stack = LocalStack(settings)
    status = stack.status()
    was_running = (bool(status["brokers"]) and status["redis"]["answering"]
                   and all(broker["answering"] for broker in status["brokers"]))
    say(f"1/5 starting Apache Kafka {status['kafka_version']} ({status['bootstrap']}) and "
        f"Redis ({redact_url(settings.redis_url)}); the first start formats Kafka's storage")
    stack.up()
    settings = stack.client_settings()
    worker: ChildProcess | None = None
    sink: ChildProcess | None = None
    try:
        asyncio.run(ensure_tagstream_topics(settings))
        workdir = settings.data_dir / "demo"
        workdir.mkdir(parents=True, exist_ok=True)
        events_path = workdir / "events.jsonl"
        say(f"2/5 generating {members} members over {days} days -> {events_path}")
        from streams.tools.generate import generate_events, write_jsonl

        with events_path.open("wb") as out:
            write_jsonl(generate_events(members=members, days=days, seed=seed), out)
        worker_log = workdir / "worker.log"
        say(f"3/5 starting the worker and the Redis sink (logs: {workdir})")
        worker = start_worker(settings, worker_log)
        sink = start_worker(settings, workdir / "redis-sink.log", command="redis-sink")
        say("4/5 replaying the history; tag changes as they arrive:")
        asyncio.run(_replay_and_follow(settings, events_path, worker))
        asyncio.run(_show_served_profile(settings))
    finally:
        for process in (worker, sink):
            if process is not None:
                process.stop(20)
        if not keep_stack and not was_running:
            say("5/5 stopping the broker and Redis we started")
            stack.down()


def start_worker(settings: Settings, log_path: Path, command: str = "worker") -> ChildProcess:
    argv, env = tagstream_command(settings, command)
    return ChildProcess(command, argv, env, log_path)


async def _show_served_profile(settings: Settings) -> None:
    """What a guide's screen would show: the richest member's profile, as Redis serves it."""
    from streams.serving.redis_store import RedisProfileStore

    async with RedisProfileStore(settings.redis_url) as store:
        for _ in range(40):
            page = await store.members_for(None, "high_value", None, 50)
            if page.member_ids:
                break
            await asyncio.sleep(0.5)
        else:
            say("no high_value member in Redis yet")
            return
        profile = await store.get_profile(page.member_ids[0])
    say(f"served from Redis, member {profile['member_id']}: lifecycle {profile['lifecycle']}, "
        f"tier {profile.get('tier')}, points {profile.get('points')}, RFM "
        f"{(profile.get('rfm') or {}).get('segment')}")
    for tag in profile["tags"]:
        evidence = ", ".join(f"{k}={v}" for k, v in tag["evidence"].items())
        say(f"  {tag['name_zh']} ({tag['id']}) since {tag['since']}: {evidence}")


async def _replay_and_follow(settings: Settings, events_path: Path,
                             worker: ChildProcess) -> None:
    from aiokafka import TopicPartition

    from streams.ops.replay import replay

    consumer = kafka_consumer(settings.broker_bootstrap,
                              enable_auto_commit=False, **kafka_client_kwargs(settings))
    await consumer.start()
    counts: Counter[str] = Counter()
    names = topic_names(settings)
    try:
        partitions = [TopicPartition(names.tag_changes, p) for p in range(settings.partitions)]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        replaying = asyncio.create_task(replay(settings.broker_bootstrap, events_path,
                                               names=names, partitions=settings.partitions,
                                               progress=False,
                                               security=kafka_client_kwargs(settings)))
        loop = asyncio.get_running_loop()
        started = last = loop.time()
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=1000)
            for messages in batch.values():
                for message in messages:
                    record = orjson.loads(message.value)
                    counts[f"{record['op']} {record['tag']}"] += 1
                    if sum(counts.values()) <= 200 or sum(counts.values()) % 500 == 0:
                        print(format_record(message.value), flush=True)
                    last = loop.time()
            if not worker.alive():
                raise RuntimeError(f"the worker exited with code {worker.returncode}")
            quiet_for = loop.time() - last
            if replaying.done() and quiet_for > 10 and (counts or loop.time() - started > 120):
                break
        result = replaying.result()
        say(f"replayed: {result.summary()}")
        say(f"{sum(counts.values())} tag changes:")
        for key, count in sorted(counts.items()):
            say(f"  {count:7d}  {key}")
    finally:
        await consumer.stop()


def say(text: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
