"""`tagstream demo`: the whole flow on the local stack (Kafka and Redis), start to finish.

It ends by serving the pages (unless `serve=False`): the worker goes live, the guide API
starts on loopback with two tokens made for this run (one guide's, one operator's), and
everything keeps running until SIGINT or SIGTERM, which stop what the demo started, by pid.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import orjson

from streams.ops.tail import format_record
from streams.platform.admin import ensure_tagstream_topics
from streams.platform.kafka_clients import kafka_consumer
from streams.platform.redaction import redact_url
from streams.platform.security import kafka_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import topic_names
from streams.tools.processes import (
    ChildProcess, free_ports, port_taken, tagstream_command, uninterrupted_stopping,
)
from streams.tools.stack import LocalStack

LOOPBACK = "127.0.0.1"


def run_demo(settings: Settings, *, members: int, days: int, seed: int,
             keep_stack: bool = False, serve: bool = True) -> None:
    # A generated history lies in the past: the event-time clock lets its absence rules fire
    # at their historical deadlines, as they would have live. It ends today, so the worker
    # can then go live (wall clock) with only a day's deadlines to catch up on.
    settings = replace(settings, clock="event")
    steps = 6 if serve else 5
    stack = LocalStack(settings)
    status = stack.status()
    was_running = (bool(status["brokers"]) and status["redis"]["answering"]
                   and all(broker["answering"] for broker in status["brokers"]))
    children: list[ChildProcess] = []
    restore_signals = _sigterm_interrupts()
    try:
        say(f"1/{steps} starting Apache Kafka {status['kafka_version']} ({status['bootstrap']}) "
            f"and Redis ({redact_url(settings.redis_url)}); the first start formats Kafka's "
            f"storage")
        stack.up()
        settings = stack.client_settings()
        asyncio.run(ensure_tagstream_topics(settings))
        workdir = settings.data_dir / "demo"
        workdir.mkdir(parents=True, exist_ok=True)
        events_path = workdir / "events.jsonl"
        say(f"2/{steps} generating {members} members over the {days} days up to today -> "
            f"{events_path}")
        from streams.tools.generate import CST, generate_events, write_jsonl

        today = datetime.now(CST).replace(hour=0, minute=0, second=0, microsecond=0)
        befriended: Counter[str] = Counter()
        with events_path.open("wb") as out:
            write_jsonl(_counting_guides(generate_events(
                members=members, days=days, seed=seed, start=today - timedelta(days=days)),
                befriended), out)
        say(f"3/{steps} starting the worker and the Redis sink (logs: {workdir})")
        worker = start_child(settings, workdir / "worker.log", children)
        start_child(settings, workdir / "redis-sink.log", children, command="redis-sink")
        say(f"4/{steps} replaying the history; tag changes as they arrive:")
        asyncio.run(_replay_and_follow(settings, events_path, worker))
        asyncio.run(_show_served_profile(settings))
        if serve:
            guide = befriended.most_common(1)[0][0] if befriended else "guide"
            _serve_pages(settings, workdir, children, worker, guide, steps)
    finally:
        with uninterrupted_stopping(say, "what the demo started"):
            for child in reversed(children):
                child.stop(20)
            if not keep_stack and not was_running:
                say(f"{steps}/{steps} stopping the broker and Redis we started")
                stack.down()
        restore_signals()


def start_child(settings: Settings, log_path: Path, children: list[ChildProcess],
                command: str = "worker") -> ChildProcess:
    """Start `tagstream <command>` in its own session (a Ctrl-C at the terminal reaches only
    the demo, which stops its children in order) and remember it in `children`."""
    argv, env = tagstream_command(settings, command)
    child = ChildProcess(command, argv, env, log_path, own_session=True)
    children.append(child)
    return child


def _counting_guides(events: Iterable[dict], befriended: Counter[str]) -> Iterator[dict]:
    """Pass the events on, counting each guide's WeCom friend-adds (the demo signs in as the
    guide with the most customers)."""
    for event in events:
        if event["event_type"] == "interaction.wecom_friend_added":
            befriended[event["guide_id"]] += 1
        yield event


def _sigterm_interrupts() -> Callable[[], None]:
    """Make SIGTERM stop the demo as Ctrl-C does (KeyboardInterrupt), so what it started is
    stopped on the way out; returns the undo (of this and of the serving handlers)."""
    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGTERM, interrupt)

    def undo() -> None:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return undo


@dataclass(frozen=True)
class PageAccess:
    base_url: str
    guide: str
    guide_token: str
    operator_token: str

    @property
    def api_tokens(self) -> str:
        """TAGSTREAM_API_TOKENS for the API (streams/serving/api/auth.py)."""
        return f"{self.guide_token}={self.guide},{self.operator_token}=*"


def page_access(port: int, guide: str) -> PageAccess:
    """Two tokens made for this run only: the page signs in with either."""
    return PageAccess(f"http://{LOOPBACK}:{port}", guide, secrets.token_urlsafe(24),
                      secrets.token_urlsafe(24))


def _serve_pages(settings: Settings, workdir: Path, children: list[ChildProcess],
                 worker: ChildProcess, guide: str, steps: int) -> None:
    say(f"5/{steps} serving the pages: the worker goes live (wall clock) and the API starts")
    # The event clock would hold a guide's live action (a tag marked, a task done) until
    # every event topic passed its time, which no more history will do: live, the wall
    # clock runs the worker. The same web port keeps its RocksDB store.
    worker.stop(20)
    children.remove(worker)
    live = replace(settings, clock="wall")
    worker = start_child(live, workdir / "worker-live.log", children)
    port = (settings.api_port if not port_taken(LOOPBACK, settings.api_port)
            else free_ports(1)[0])
    access = page_access(port, guide)
    api = start_child(replace(live, api_host=LOOPBACK, api_port=port,
                              api_tokens=access.api_tokens),
                      workdir / "api.log", children, command="api")
    _wait_until_answering(access, api)
    print(f"\nguide page     {access.base_url}/\n"
          f"               sign in as guide {access.guide} with the token "
          f"{access.guide_token}\n"
          f"operator page  {access.base_url}/operator\n"
          f"               sign in as operator with the token {access.operator_token}\n"
          f"(the tokens are this run's only; paste one into the page's sign-in box)\n",
          flush=True)
    say(f"serving (logs: {workdir}); Ctrl-C or SIGTERM stops everything the demo started")
    _wait_for_signal(children)


def _wait_until_answering(access: PageAccess, api: ChildProcess, timeout: float = 60) -> None:
    request = urllib.request.Request(f"{access.base_url}/me", headers={
        "Authorization": f"Bearer {access.guide_token}"})
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if not api.alive():
            raise RuntimeError(f"the API exited with code {api.returncode}:\n{api.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the API did not answer within {timeout:.0f} s:\n"
                               f"{api.log_tail()}")
        time.sleep(0.2)


def _wait_for_signal(children: list[ChildProcess]) -> None:
    """Block until SIGINT or SIGTERM; a child that dies meanwhile ends the demo with its log."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())
    while not stop.wait(1.0):
        for child in children:
            if not child.alive():
                raise RuntimeError(f"{child.name} exited with code {child.returncode}:\n"
                                   f"{child.log_tail()}")
    say("stopping what the demo started")


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
