"""`tagstream bench`: what the pipeline costs next to plain Kafka, measured in one run.

One run on Apache Kafka (a private stack of `--brokers` KRaft nodes and a Redis on free loopback
ports under the bench's directory, or with `--use-stack` the cluster and Redis the settings
point at) measures, in this order:

1. a generated history of N members (streams/generate.py, `days` chosen so that N members make
   about the requested number of events, ending now) is pre-produced by the replay tool;
2. raw passthrough: a plain aiokafka consumer (assigned partitions, no group) reads the three
   event topics, decodes each value with orjson and produces it to `bench.passthrough`, as
   fast as it can: first record consumed -> last record acknowledged; then the Faust floor:
   a Faust worker whose agent only acknowledges reads the same messages (first -> last), the
   ceiling on what any Faust agent can do here (`ratio_ceiling`);
3. the pure engine's dry run over the same file gives the exact set of tag changes the stream
   must publish, and each member's state size;
4. the pipeline: W worker processes on the event-time clock (so the result is deterministic)
   and the Redis sink, started once the events are on the topics: the first worker's
   "Worker ready" (group joined, partitions assigned, changelog recovered; excluded) -> the
   Kafka timestamp of the last expected tag change on `tags.changes`;
5. restart recovery, twice, process start -> "Worker ready": (a) the pipeline workers, stopped
   cleanly, are started again (wall clock) on their own data dirs, so each opens its RocksDB
   store and reads only the changelog after the offset the store persisted; those are stopped,
   and (b) new workers with empty data dirs rebuild every member's state from the changelog.
   The offset ranges each recovery read come from Faust's own log (its highwater and
   start-offset tables); the records in them, and the changelog's size before (b), are counted
   by reading the changelog, whose offsets have gaps once Kafka has compacted a closed segment
   (exact for one worker: with several, a rebalance may cut a round short or make a partition
   be read twice);
6. latency: on the workers of (b), a first order of a new member (one tag change each, at least)
   produced at half the measured pipeline rate for a while: produce -> the change read back
   from `tags.changes` on this host, p50 and p99.

Speeds are reported, never asserted. Every process the bench starts is stopped by its pid,
also on failure and Ctrl-C. The workers, the sink, the Kafka node(s) and Redis share the
machine's cores with the bench itself, as they would on a single host.
"""

from __future__ import annotations

import asyncio
import bisect
import ctypes
import dataclasses
import gc
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from schemas.errors import TagstreamError
from streams.admin import ensure_tagstream_topics, ensure_topics
from streams.generate import CST, generate_events, write_jsonl
from streams.kafka_server import kafka_version
from streams.partitioning import partition_for
from streams.security import kafka_client_kwargs
from streams.settings import Settings
from streams.stack import LocalStack, free_ports, stop_child
from streams.topics import TopicNames, topic_names

PASSTHROUGH_TOPIC = "bench.passthrough"  # canonical: the topic namespace goes before it
PROFILERS = ("py-spy", "pyinstrument")
LIVE_MEMBER_PREFIX = "LIVE-"  # members the latency phase creates; none exist in the history
READY_TIMEOUT_S = 180.0  # a fresh worker's start -> "Worker ready" (group join, empty changelog)
# A worker on an empty disk reads every member's state back first, which takes minutes at a
# million events; that figure is what the bench is for, so it waits long for it.
RECOVERY_TIMEOUT_S = 1800.0
LATENCY_GRACE_S = 15.0
FLOOR_RATE = 20.0  # live orders per second for the latency floor (no queueing at this rate)
FLOOR_SECONDS = 5.0  # after the last live event, how long its tag change may still take
SAMPLE_MEMBERS = 1000  # members generated to find the days that give the requested events
PY_SPY_RATE = 100  # samples per second

# Faust's log lines: "[2026-11-22 12:18:15,018] [1415] [INFO] [^---Recovery]: Worker ready"
_LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
WORKER_READY = "]: Worker ready"
ASSIGNED = "Setting newly assigned partitions"
RECOVERY_COMPLETE = "]: Recovery complete"
# Faust's recovery logs a table of each active changelog partition's highwater (its last
# offset), then one of the offset reading starts after (the store's persisted offset, or the
# partition's start - 1); rows are "| topic | partition | offset |", a repeated topic as "〃".
HIGHWATER_TABLE = "highwater for active changelog partitions"
START_TABLE = "active offsets at start of reading"
_TABLE_ROW = re.compile(r"^\|\s*(\S+)\s*\|\s*(\d+)\s*\|\s*(-?\d+)\s*\|\s*$")


class BenchError(TagstreamError):
    """The bench cannot run or a phase failed; the message says which and where the logs are."""


@dataclass(frozen=True)
class BenchOptions:
    members: int = 10_000
    events: int = 100_000
    partitions: int = 4
    workers: int = 1
    brokers: int = 1  # Kafka nodes of the private stack
    use_stack: bool = False  # the running broker and Redis of the settings, not private ones
    keep_stack: bool = False  # leave the private broker and Redis running afterwards
    profile: str | None = None  # "py-spy" or "pyinstrument": the pipeline workers run under it
    latency_s: float = 25.0
    seed: int = 1
    history_end: datetime | None = None  # default: now (see _generate)
    # No new tag change for this long: the pipeline is done (or stuck); missing changes are
    # then reported as a mismatch with the dry run.
    stall_s: float = 30.0
    workdir: Path | None = None
    command: str = ""


Say = Callable[[str], None]


# --- child processes: started with their own log, stopped by their pid ---------------------------


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench dies without stopping it (kill -9)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """One process the bench started: its log file, its peak memory, stopping it by pid."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path,
                 registry: list["Child"], web_port: int | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.web_port = web_port  # a worker's: its data dir is <data dir>/worker-<web port>
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.offset = log.tell()
            self.started = time.time()
            # Own session: a Ctrl-C at the terminal reaches only the bench, which then stops
            # its children in order.
            self.process = subprocess.Popen(
                argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        registry.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the most resident memory the process has had, while it still runs."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None

    def log_lines(self) -> list[str]:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return _ANSI.sub("", text).splitlines()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines()[-lines:]) or "(log is empty)"

    def first_line_time(self, marker: str) -> float | None:
        """The time Faust logged the first line containing `marker` (epoch seconds)."""
        for line in self.log_lines():
            if marker in line:
                return _log_time(line)
        return None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.process.send_signal(sig)  # Popen keeps its child unreaped: the pid is ours

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` for the process to exit by itself."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; waits for the exit."""
        stop_child(self.process, timeout)


def _log_time(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if match is None:
        return None
    # Faust logs local time with milliseconds; the bench runs in the same time zone.
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def wait_for_log(child: Child, marker: str, timeout: float) -> float:
    """When `child` logged `marker` (waiting for it); fails if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        at = child.first_line_time(marker)
        if at is not None:
            return at
        if not child.alive():
            raise BenchError(f"{child.name} exited with code {child.process.returncode} before "
                             f"logging {marker.strip(' ]:')!r}; its log ({child.log_path}):\n"
                             f"{child.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not log {marker.strip(' ]:')!r} within "
                             f"{timeout:.0f} s; its log ({child.log_path}):\n{child.log_tail()}")
        await asyncio.sleep(0.05)


# --- the run --------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the phases share: settings, where files go, what was started, what was measured."""

    settings: Settings
    options: BenchOptions
    workdir: Path
    say: Say
    stack: LocalStack | None = None  # the private stack, if the bench started one
    children: list[Child] = field(default_factory=list)
    result: dict[str, Any] = field(default_factory=dict)
    messages: int = 0  # records on the event topics after the replay: events and markers
    worker_ports: list[int] = field(default_factory=list)  # the pipeline workers' web ports

    @property
    def bootstrap(self) -> str:
        return self.settings.broker_bootstrap

    @property
    def security(self) -> dict[str, Any]:
        return kafka_client_kwargs(self.settings)

    @property
    def names(self) -> TopicNames:
        return topic_names(self.settings)

    def env(self, **overrides: Any) -> dict[str, str]:
        settings = dataclasses.replace(self.settings, **overrides)
        return {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}


def run_bench(settings: Settings, options: BenchOptions, say: Say) -> dict[str, Any]:
    """Run every phase; returns the result (with "error" set if a phase failed)."""
    if options.profile is not None and options.profile not in PROFILERS:
        raise BenchError(f"--profile must be one of {', '.join(PROFILERS)}")
    if options.profile is not None:
        _require_profiler(options.profile)
    if options.brokers < 1:
        raise BenchError(f"--brokers must be at least 1, not {options.brokers}")
    if options.use_stack and options.brokers != 1:
        raise BenchError("--brokers is for the private stack; with --use-stack the bench "
                         "measures the running cluster (and reports its node count)")
    workdir = (options.workdir or settings.data_dir / "bench"
               / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if options.use_stack:
        # A fresh app id: its own consumer group and an empty changelog on a shared broker.
        settings = dataclasses.replace(settings, app_id=f"{settings.app_id}-bench-{int(time.time())}")
    else:
        *broker_ports, redis_port = free_ports(options.brokers + 1)
        settings = dataclasses.replace(
            settings, broker=",".join(f"kafka://127.0.0.1:{port}" for port in broker_ports),
            redis_url=f"redis://127.0.0.1:{redis_port}/0", stack_dir=workdir / "stack")
    settings = dataclasses.replace(settings, partitions=options.partitions,
                                   data_dir=workdir / "data", log_level="info")
    stack = None if options.use_stack else LocalStack(settings)
    run = _Run(settings, options, workdir, say, stack)
    run.result.update(_header(options, workdir))
    started = time.perf_counter()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if stack is not None:
            say(f"starting a private Kafka {kafka_version()} ({options.brokers} node(s), "
                f"{settings.broker}) and Redis ({settings.redis_url})")
            stack.up(options.brokers, fresh=True)
            run.settings = stack.client_settings()
        asyncio.run(_interruptible(_phases(run)))
    except (TagstreamError, KeyboardInterrupt, asyncio.CancelledError,
            Exception) as exc:  # noqa: BLE001 - reported in the result
        run.result["error"] = ("interrupted"
                               if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))
                               else f"{type(exc).__name__}: {exc}")
    finally:
        for child in reversed(run.children):
            child.stop()
        if stack is not None:
            if options.keep_stack and "error" not in run.result:
                say(f"Kafka ({settings.broker}) and Redis ({settings.redis_url}) keep "
                    f"running; stop them with: TAGSTREAM_STACK_DIR={settings.stack_dir} "
                    "tagstream stack down")
            else:
                stack.down()
                # The private cluster's log dirs: hundreds of MB at 100,000 members, and of
                # no use once it is down (the run's logs stay beside them).
                shutil.rmtree(stack.kafka_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_sigterm)
        run.result["elapsed_s"] = round(time.perf_counter() - started, 1)
        run.result["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        events_file = workdir / "events.jsonl"
        if events_file.exists():
            events_file.unlink()  # large, and the seed and days regenerate it exactly
    return run.result


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


async def _interruptible(phases: Any) -> None:
    """SIGTERM as asyncio.run treats Ctrl-C: the first cancels the phases (so each closes its
    clients on the way out), a second one interrupts at once."""
    task = asyncio.ensure_future(phases)
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: Any) -> None:
        if task.done() or task.cancelling():
            raise KeyboardInterrupt
        task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the loop if it waits in select()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        await task
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _phases(run: _Run) -> None:
    options = run.options
    nodes = await _cluster_nodes(run)
    # The pinned version: the private stack runs it, and docker-compose.yml runs the same.
    run.result["broker"] = broker_name(kafka_version(), nodes)
    # The topics as a worker creates them (members.profiles compacted), before any worker.
    replication = await ensure_tagstream_topics(run.settings)
    # Resolved once, so the replay, the workers and Faust's changelog all use the same factor.
    run.settings = dataclasses.replace(run.settings, replication=replication)
    await ensure_topics(run.bootstrap, {run.names.actual(PASSTHROUGH_TOPIC): options.partitions},
                        replication, security=run.security)
    run.result["details"]["broker"] = {"bootstrap": run.bootstrap, "nodes": nodes,
                                       "replication": replication,
                                       "private": not options.use_stack}
    if options.use_stack:
        await _require_empty_event_topics(run)
    path = run.workdir / "events.jsonl"
    # Generation and the dry run block the loop on purpose: nothing else runs meanwhile, and
    # a Ctrl-C then stops them at once (a worker thread would be waited for on the way out).
    _generate(run, path)
    await _preproduce(run, path)
    run.messages = await _event_messages(run)
    replayed = run.result["events"] + run.result["details"]["replay"]["watermark_markers"]
    if run.messages != replayed:
        _warn(run, f"the event topics hold {run.messages:,} records after the replay, which "
                   f"sent {replayed:,} (events and watermark markers)")
    run.result["raw_passthrough_eps"] = await raw_passthrough(run)
    await faust_floor(run)
    expected = _dry_run(run, path)
    await _pipeline(run, expected)
    await _restart_and_latency(run)


def broker_name(version: str, nodes: int) -> str:
    return f"Apache Kafka {version}, {nodes} node{'' if nodes == 1 else 's'}"


async def _cluster_nodes(run: _Run) -> int:
    """How many brokers the cluster's metadata lists."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=run.bootstrap, **run.security)
    try:
        await client.bootstrap()
        return len(client.cluster.brokers())
    finally:
        await client.close()


def _warn(run: _Run, text: str) -> None:
    run.result.setdefault("warnings", []).append(text)
    run.say(f"WARNING: {text}")


# --- 1. history ------------------------------------------------------------------------------------


def days_for(members: int, events: int, seed: int) -> int:
    """The number of days over which `members` generated members make about `events` events."""
    sample = min(members, SAMPLE_MEMBERS)
    target = events / members

    def per_member(days: int) -> float:
        return sum(1 for _ in generate_events(sample, days, seed)) / sample

    low, high = 1, 3650
    if per_member(low) >= target:
        return low
    if per_member(high) <= target:
        return high
    while high - low > 1:  # events per member grow with the days: bisect
        middle = (low + high) // 2
        if per_member(middle) < target:
            low = middle
        else:
            high = middle
    return low if target - per_member(low) < per_member(high) - target else high


def _generate(run: _Run, path: Path) -> None:
    options = run.options
    started = time.perf_counter()
    days = days_for(options.members, options.events, options.seed)
    # The history ends now, so on the wall clock (the latency phase) its deadlines lie ahead,
    # as live ones would, instead of all firing at once as long overdue.
    end = options.history_end or datetime.now(CST).replace(microsecond=0)
    start = end - timedelta(days=days)
    run.say(f"generating {options.members:,} members over {days} days (seed {options.seed})")
    with path.open("wb") as out:
        count = write_jsonl(generate_events(options.members, days, options.seed, start), out)
    run.result.update(days=days, history_start=start.isoformat(), generated_events=count)
    run.result["details"]["generate_s"] = round(time.perf_counter() - started, 1)


async def _preproduce(run: _Run, path: Path) -> None:
    from streams.replay import replay

    run.say(f"producing {run.result['generated_events']:,} events to the event topics (replay)")
    replayed = await replay(run.bootstrap, path, names=run.names,
                            partitions=run.options.partitions,
                            progress=False, replication=run.settings.replication,
                            security=run.security)
    if replayed.skipped:
        raise BenchError(f"replay skipped {len(replayed.skipped)} generated lines, e.g. "
                         f"{replayed.skipped[0]}")
    run.result["events"] = replayed.events
    run.result["details"]["replay"] = {
        "events_per_s": round(replayed.events_per_s), "seconds": round(replayed.elapsed_s, 2),
        "watermark_markers": replayed.watermarks,
        "per_topic": dict(sorted(replayed.produced.items()))}


async def _offset_ranges(run: _Run, tps: list[TopicPartition]
                         ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(start offsets, end offsets) of `tps` now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, **run.security)
    await consumer.start()
    try:
        return await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


def _event_partitions(run: _Run) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in run.names.events for p in range(run.options.partitions)]


async def _event_messages(run: _Run) -> int:
    """The records on the event topics (end minus start offsets): what each reader must see."""
    begins, ends = await _offset_ranges(run, _event_partitions(run))
    return sum(ends[tp] - begins[tp] for tp in ends)


async def _require_empty_event_topics(run: _Run) -> None:
    _, ends = await _offset_ranges(run, _event_partitions(run))
    held = sum(ends.values())
    if held:
        raise BenchError(f"the event topics on {run.settings.broker} already hold {held} "
                         "records; the bench needs them empty (its workers would process them "
                         "too): run it without --use-stack (a private broker), or on a fresh one")


# --- 2. raw passthrough ----------------------------------------------------------------------------


async def raw_passthrough(run: _Run) -> float:
    """Plain aiokafka: consume the event topics, orjson-decode, produce to another topic."""
    run.say("raw passthrough: aiokafka consume -> orjson -> produce")
    consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False,
                                **run.security)
    producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, acks="all", linger_ms=5,
                                max_batch_size=256 * 1024, **run.security)
    await consumer.start()
    await producer.start()
    passthrough = run.names.actual(PASSTHROUGH_TOPIC)
    try:
        tps = _event_partitions(run)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total = run.messages
        loop = asyncio.get_running_loop()
        all_acked = loop.create_future()
        state = {"in_flight": 0, "errors": 0, "reading": True, "last_ack": 0.0}

        def acked(future: asyncio.Future) -> None:
            state["in_flight"] -= 1
            if future.cancelled() or future.exception() is not None:
                state["errors"] += 1
            if not state["reading"] and state["in_flight"] == 0 and not all_acked.done():
                state["last_ack"] = time.perf_counter()
                all_acked.set_result(None)

        consumed = undecodable = 0
        first: float | None = None
        loads = orjson.loads
        while consumed < total:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, messages in batch.items():
                if first is None and messages:
                    first = time.perf_counter()
                for message in messages:
                    try:
                        loads(message.value)
                    except orjson.JSONDecodeError:
                        undecodable += 1
                    future = await producer.send(passthrough, message.value,
                                                 key=message.key, partition=tp.partition)
                    state["in_flight"] += 1
                    future.add_done_callback(acked)
                consumed += len(messages)
        state["reading"] = False
        if state["in_flight"] == 0:
            state["last_ack"] = time.perf_counter()
        else:
            await all_acked
        if state["errors"]:
            raise BenchError(f"raw passthrough: {state['errors']} sends failed")
    finally:
        await producer.stop()
        await consumer.stop()
    seconds = state["last_ack"] - (first or state["last_ack"])
    eps = consumed / seconds if seconds > 0 else 0.0
    run.result["details"]["raw_passthrough"] = {
        "messages": consumed, "seconds": round(seconds, 3), "not_json": undecodable}
    run.say(f"raw passthrough: {consumed:,} messages in {seconds:.2f} s = {eps:,.0f}/s")
    return round(eps)


# --- 2b. the Faust floor --------------------------------------------------------------------------


async def faust_floor(run: _Run) -> None:
    """A Faust agent that only acknowledges (streams/bench_floor.py) over the same messages:
    the most any Faust agent does here, so `ratio_ceiling` bounds `ratio`."""
    total = run.messages
    report = run.workdir / "faust-floor.json"
    report.unlink(missing_ok=True)
    run.say(f"faust floor: a Faust agent that only acknowledges, over the same {total:,} messages")
    [port] = free_ports(1)
    child = Child("faust floor", [sys.executable, "-m", "streams.bench_floor", str(total),
                                  str(report)],
                  run.env(app_id=f"{run.settings.app_id}-floor", web_port=port),
                  run.workdir / "faust-floor.log", run.children)
    deadline = time.monotonic() + READY_TIMEOUT_S + total / 1000  # >= 1,000 messages/s
    while not report.exists():
        if not child.alive():
            raise BenchError(f"the Faust floor worker exited; its log ({child.log_path}):\n"
                             f"{child.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"the Faust floor worker did not see {total:,} messages in time; "
                             f"its log ({child.log_path}):\n{child.log_tail()}")
        await asyncio.sleep(0.2)
    child.stop()
    floor = orjson.loads(report.read_bytes())
    eps = floor["messages"] / floor["seconds"] if floor["seconds"] > 0 else 0.0
    raw = run.result["raw_passthrough_eps"]
    run.result["faust_floor_eps"] = round(eps)
    run.result["ratio_ceiling"] = round(eps / raw, 3) if raw else None
    run.result["details"]["faust_floor"] = {"messages": floor["messages"],
                                            "seconds": round(floor["seconds"], 3)}
    run.say(f"faust floor: {floor['messages']:,} messages in {floor['seconds']:.2f} s = "
            f"{eps:,.0f}/s (ratio ceiling {run.result['ratio_ceiling']})")


# --- 3. the expected result: the dry run -----------------------------------------------------------


@dataclass(frozen=True)
class Expected:
    change_ids: frozenset[str]
    tier_changes: int
    described: Mapping[str, str]  # change_id -> "member tag op cause", to name what is missing


def _dry_run(run: _Run, path: Path) -> Expected:
    from taggers.dryrun import dry_run
    from taggers.engine import Engine
    from taggers.rules import load_rules
    from taggers.state import encode_state

    run.say("dry run of the same file with the default pack (the expected tag changes)")
    started = time.perf_counter()
    engine = Engine(load_rules(run.settings.rules_path), run.settings.allowed_lateness_s)
    with path.open("rb") as lines:
        result = dry_run(engine, lines)
    if result.rejected:
        raise BenchError(f"the dry run rejected {len(result.rejected)} generated events, e.g. "
                         f"line {result.rejected[0][0]}: {result.rejected[0][1]}")
    sizes = sorted(len(encode_state(state)) for state in result.states.values())
    expected = Expected(frozenset(c.change_id for c in result.changes), len(result.tier_changes),
                        {c.change_id: f"{c.member_id} {c.op} {c.tag} at {c.at} ({c.cause})"
                         for c in result.changes})
    run.result["state_bytes_per_member"] = round(statistics.fmean(sizes)) if sizes else 0
    run.result["details"]["state_bytes"] = {
        "members": len(sizes), "p50": _quantile(sizes, 0.5), "p99": _quantile(sizes, 0.99),
        "max": sizes[-1] if sizes else 0}
    run.result["details"]["dry_run"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "events_per_s": round(run.result["events"] / (time.perf_counter() - started)),
        "tag_changes": len(expected.change_ids), "tier_changes": expected.tier_changes}
    if len(expected.change_ids) != len(result.changes):
        raise BenchError("the dry run produced two tag changes with one change_id")
    del result
    gc.collect()
    return expected


# --- 4. the pipeline -------------------------------------------------------------------------------


def _worker_argv(run: _Run, web_port: int, report: Path | None) -> list[str]:
    worker = ["-m", "streams.cli", "worker", "--web-port", str(web_port)]
    if report is not None and run.options.profile == "pyinstrument":
        # The whole worker's life in the main thread (Faust's consumer has a thread of its own,
        # which py-spy sees and pyinstrument does not).
        return [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(report),
                *worker]
    return [sys.executable, *worker]


def _start_workers(run: _Run, phase: str, clock: str, profile: bool,
                   ports: list[int]) -> list[Child]:
    """A worker per web port; each keeps its RocksDB store in <data dir>/worker-<port>."""
    workers = []
    for index, port in enumerate(ports, start=1):
        report = None
        if profile and run.options.profile == "pyinstrument":
            report = run.workdir / f"profile-{phase}-worker{index}.pyisession"
        workers.append(Child(f"{phase} worker {index}", _worker_argv(run, port, report),
                             run.env(clock=clock, web_port=port),
                             run.workdir / f"{phase}-worker{index}.log",
                             run.children, web_port=port))
    return workers


def _start_sink(run: _Run) -> Child:
    return Child("redis sink", [sys.executable, "-m", "streams.cli", "redis-sink"], run.env(),
                 run.workdir / "redis-sink.log", run.children)


async def _pipeline(run: _Run, expected: Expected) -> None:
    options = run.options
    tags = [TopicPartition(run.names.tag_changes, p) for p in range(options.partitions)]
    reader = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False,
                              **run.security)
    await reader.start()
    try:
        baseline = await reader.end_offsets(tags)
        tier_baseline = await _positions(run, run.names.tier_changes)
        dead_baseline = await _positions(run, run.names.deadletter)
        sink = _start_sink(run)
        run.say(f"pipeline: {options.workers} worker(s), event clock, default pack, "
                f"Redis sink on; {len(expected.change_ids):,} tag changes expected")
        run.worker_ports = free_ports(options.workers)
        workers = _start_workers(run, "pipeline", "event", profile=options.profile is not None,
                                 ports=run.worker_ports)
        ready = [await wait_for_log(w, WORKER_READY, READY_TIMEOUT_S) for w in workers]
        # Attached once the interpreter is up (py-spy cannot attach to one still starting).
        spies = _start_py_spy(run, workers, "pipeline") if options.profile == "py-spy" else []
        started = min(ready)
        cpu_pids = {**{w.name: w.pid for w in workers}, sink.name: sink.pid, **_stack_pids(run)}
        cpu_before = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
        cpu_from = time.time()
        run.say(f"pipeline: worker(s) ready after {started - workers[0].started:.1f} s; "
                "measuring from here")
        finished, seen = await _wait_for_changes(run, reader, tags, baseline, expected,
                                                 workers + [sink])
        cpu_window = time.time() - cpu_from
        cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in cpu_pids.items()}
        seconds = finished - started
        eps = run.result["events"] / seconds if seconds > 0 else 0.0
        run.result["pipeline_eps"] = round(eps)
        raw = run.result["raw_passthrough_eps"]
        run.result["ratio"] = round(eps / raw, 3) if raw else None
        tiers = await _read_all(run, run.names.tier_changes, tier_baseline)
        dead = await _read_all(run, run.names.deadletter, dead_baseline)
        peaks = [w.peak_rss_mb() for w in workers]
        run.result["rss_mb"] = max((p for p in peaks if p is not None), default=None)
        run.result["matches_dry_run"] = not seen.missing and not seen.unexpected
        run.result["details"]["pipeline"] = {
            "seconds": round(seconds, 3), "tag_changes": seen.total,
            "duplicate_tag_changes": seen.duplicates, "unexpected_tag_changes": seen.unexpected,
            "tier_changes": len(tiers),  # as far as written when the last tag change was
            "tier_changes_expected": expected.tier_changes,
            "matches_dry_run": run.result["matches_dry_run"],
            "dead_lettered": len(dead),
            "dead_letter_examples": [_dead_letter_text(value) for value in dead[:5]],
            "missing_tag_changes": len(seen.missing),
            "missing_examples": seen.missing[:10],
            "unexpected_examples": seen.unexpected_examples,
            "first_change_after_ready_s": round(seen.first - started, 3) if seen.first else None,
            "workers_ready_spread_s": round(max(ready) - min(ready), 3),
            "rss_mb_per_worker": peaks, "redis_sink_rss_mb": sink.peak_rss_mb(),
            # CPU time each process used from "Worker ready" until the bench saw the last
            # change, as % of one core: ~100 for a worker means it is CPU-bound.
            "cpu_pct_of_one_core": {name: round(100 * used / cpu_window, 1)
                                    for name, used in cpu_used.items()}}
        if seen.missing or seen.unexpected:
            _warn(run, f"the stream's tag changes differ from the dry run's: "
                       f"{len(seen.missing)} missing, {seen.unexpected} unexpected "
                       "(see details.pipeline)")
        run.say(f"pipeline: {run.result['events']:,} events in {seconds:.2f} s = {eps:,.0f}/s "
                f"(ratio {run.result['ratio']}); worker peak RSS {run.result['rss_mb']} MB")
        if spies:
            run.result["profile"] = await _stop_py_spy(
                spies, "pipeline phase (event clock), all threads, CPU only (idle excluded)")
        run.say("stopping the pipeline worker(s) cleanly (SIGTERM) for the restart")
        stop_started = time.perf_counter()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
        run.result["details"]["pipeline"]["worker_stop_s"] = round(
            time.perf_counter() - stop_started, 2)
        if options.profile == "pyinstrument":
            run.result["profile"] = _pyinstrument_reports(run, workers)
    finally:
        await reader.stop()


async def _positions(run: _Run, topic: str) -> dict[int, int]:
    """Where each partition of `topic` ends now (its records from here on are this run's)."""
    _, ends = await _offset_ranges(
        run, [TopicPartition(topic, p) for p in range(run.options.partitions)])
    return {tp.partition: end for tp, end in ends.items()}


async def _read_all(run: _Run, topic: str, start: dict[int, int]) -> list[bytes]:
    """The values of `topic` from `start` to its end offsets now."""
    consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False,
                                **run.security)
    await consumer.start()
    values: list[bytes] = []
    try:
        tps = [TopicPartition(topic, p) for p in start]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        pending = [tp for tp in tps if start[tp.partition] < ends[tp]]
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
            for tp, messages in batch.items():
                values.extend(m.value for m in messages if m.offset < ends[tp])
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return values
    finally:
        await consumer.stop()


def _dead_letter_text(value: bytes) -> str:
    try:
        record = orjson.loads(value)
        return f"{record.get('topic')}:{record.get('partition')}@{record.get('offset')}: " \
               f"{record.get('error')}"
    except orjson.JSONDecodeError:
        return repr(value[:200])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (0 if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stack_pids(run: _Run) -> dict[str, int]:
    """The private stack's Kafka nodes and Redis, from the records `LocalStack.up` wrote."""
    pids = {}
    if run.stack is not None:
        layout = run.stack.layout()
        nodes = layout.nodes if layout is not None else ()
        for name in [f"broker-{node.node_id}" for node in nodes] + ["redis"]:
            record = run.stack.record(name)
            if record is not None:
                pids[name] = record.pid
    return pids


@dataclass
class _Seen:
    total: int = 0
    duplicates: int = 0
    unexpected: int = 0
    first: float | None = None  # Kafka timestamps (epoch s) of the first and last expected
    last: float | None = None
    last_unexpected: float | None = None
    missing: list[str] = field(default_factory=list)  # expected changes never published
    unexpected_examples: list[str] = field(default_factory=list)


async def _wait_for_changes(run: _Run, reader: AIOKafkaConsumer, tps: list[TopicPartition],
                            baseline: dict[TopicPartition, int], expected: Expected,
                            watched: list[Child]) -> tuple[float, _Seen]:
    """Wait until every expected change is on tags.changes; when the last one was written.

    While the workers run, only the end offsets are polled (cheap), so the bench takes no CPU
    from them; the records are read once there are at least as many as expected (again as
    more come, should some be unexpected), or once nothing has come for `stall_s`. The end
    time comes from the records' own timestamps, not from when they were read."""
    missing = set(expected.change_ids)
    seen = _Seen()
    positions = dict(baseline)
    reader.assign(tps)
    for tp in tps:
        reader.seek(tp, baseline[tp])
    last_total, last_progress, read_at = -1, time.monotonic(), -1
    while True:
        for child in watched:
            if not child.alive():
                raise BenchError(f"{child.name} exited with code {child.process.returncode}; "
                                 f"its log ({child.log_path}):\n{child.log_tail()}")
        ends = await reader.end_offsets(tps)
        total = sum(ends[tp] - baseline[tp] for tp in tps)
        if total != last_total:
            last_total, last_progress = total, time.monotonic()
        if total >= len(expected.change_ids) and total != read_at:
            read_at = total
            await _read_changes(reader, ends, positions, missing, expected, seen)
            if not missing:
                assert seen.last is not None or not expected.change_ids
                return (seen.last if seen.last is not None else time.time()), seen
        if time.monotonic() - last_progress > run.options.stall_s:
            await _read_changes(reader, ends, positions, missing, expected, seen)
            if not missing:
                continue
            seen.missing = [expected.described[c] for c in sorted(missing)]
            if seen.last is None:
                raise BenchError(f"pipeline stalled: no tag change in {run.options.stall_s:.0f} s;"
                                 f" worker log: {watched[0].log_path}")
            # The stream finished with other changes than the dry run: the speed is still
            # measured (to its last change); the mismatch is reported, not hidden.
            return max(seen.last, seen.last_unexpected or 0.0), seen
        await asyncio.sleep(0.2)


async def _read_changes(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int],
                        positions: dict[TopicPartition, int], missing: set[str],
                        expected: Expected, seen: _Seen) -> None:
    """Read on from `positions` to `ends` at least (and whatever else a fetch brings)."""
    while True:
        batch = await reader.getmany(timeout_ms=300, max_records=20_000)
        if not batch and all(positions[tp] >= ends[tp] for tp in ends):
            return
        for tp, messages in batch.items():
            for message in messages:
                positions[tp] = message.offset + 1
                seen.total += 1
                change_id = orjson.loads(message.value)["change_id"]
                if change_id in missing:
                    missing.discard(change_id)
                    at = message.timestamp / 1000
                    seen.first = at if seen.first is None else min(seen.first, at)
                    seen.last = at if seen.last is None else max(seen.last, at)
                elif change_id in expected.change_ids:
                    seen.duplicates += 1
                else:
                    seen.unexpected += 1
                    seen.last_unexpected = message.timestamp / 1000
                    if len(seen.unexpected_examples) < 10:
                        change = orjson.loads(message.value)
                        seen.unexpected_examples.append(
                            f"{change['member_id']} {change['op']} {change['tag']} at "
                            f"{change['at']} ({change['cause']})")
        if not missing:
            return


# --- 5 and 6. restart recovery, then latency on the wall clock ------------------------------------


async def _restart_and_latency(run: _Run) -> None:
    options = run.options
    restart = run.result["restart"]
    details: dict[str, Any] = {}
    run.result["details"]["restart"] = details
    changelog = f"{run.settings.app_id}-members-changelog"

    run.say(f"restart with the store: the {options.workers} pipeline worker(s) again, on their "
            "own data dirs, wall clock")
    with_store = _start_workers(run, "restart", "wall", profile=False, ports=run.worker_ports)
    details["with_store"], with_store_rounds = await _recovery(run, with_store)
    restart["with_store_s"] = details["with_store"]["ready_s"]
    run.say(f"restart with the store: ready after {restart['with_store_s']} s")
    stop_started = time.perf_counter()
    await asyncio.gather(*(asyncio.to_thread(w.stop) for w in with_store))
    details["with_store"]["stop_s"] = round(time.perf_counter() - stop_started, 2)

    # Kafka compacts only closed segments, so the changelog holds between one and every state
    # each member had: its records are counted, not taken from its offsets (compaction leaves
    # gaps). Read now, with no worker running, so the counting disturbs no figure.
    present = await _record_offsets(run, changelog)
    restart["changelog_records"] = sum(len(offsets) for offsets in present.values())
    details["changelog_offset_span"] = await _topic_records(run, changelog)  # end - start
    _count_reads(details["with_store"], with_store_rounds, present)
    restart["with_store_records"] = details["with_store"]["changelog_records_read"]
    run.say(f"restart with the store: {_count(restart['with_store_records'])} changelog "
            f"records read; the changelog holds {restart['changelog_records']:,} records "
            f"(offsets span {details['changelog_offset_span']:,})")
    run.say(f"restart on an empty disk: {options.workers} new worker(s), wall clock")
    workers = _start_workers(run, "fresh-disk", "wall", profile=False,
                             ports=_unused_ports(run, options.workers))
    details["fresh_disk"], fresh_rounds = await _recovery(run, workers)
    _count_reads(details["fresh_disk"], fresh_rounds, present)
    restart["fresh_disk_s"] = details["fresh_disk"]["ready_s"]
    restart["fresh_disk_records"] = details["fresh_disk"]["changelog_records_read"]
    run.say(f"restart on an empty disk: ready after {restart['fresh_disk_s']} s, "
            f"{_count(restart['fresh_disk_records'])} changelog records read")

    # Latency on the workers that rebuilt from the changelog: first a trickle, for the floor
    # with no queueing; then half the measured maximum rate.
    floor = await measure_latency(run, FLOOR_RATE, min(FLOOR_SECONDS, options.latency_s),
                                  workers, first=0)
    rate = max(1.0, run.result["pipeline_eps"] * 0.5)
    spies = _start_py_spy(run, workers, "latency") if options.profile == "py-spy" else []
    cpu_pids = {**{w.name: w.pid for w in workers}, **_stack_pids(run),
                "redis sink": next(c.pid for c in run.children if c.name == "redis sink"),
                "bench (producer and reader)": os.getpid()}
    cpu_before = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
    cpu_from = time.time()
    run.result["latency_ms"] = await measure_latency(run, rate, options.latency_s, workers,
                                                     first=floor["sent"])
    cpu_window = time.time() - cpu_from
    run.result["details"]["latency_cpu_pct_of_one_core"] = {
        name: round(100 * (cpu_seconds(pid) - cpu_before[name]) / cpu_window, 1)
        for name, pid in cpu_pids.items()}
    if spies:
        run.result["profile"]["latency_phase"] = await _stop_py_spy(
            spies, "latency phase at half the pipeline rate (wall clock), all threads, CPU only")
    run.result["latency_ms"]["floor"] = {k: floor[k] for k in ("p50", "p99", "rate_eps", "sent")}
    details["fresh_disk"]["rss_mb_after_latency"] = [w.peak_rss_mb() for w in workers]


# One recovery round: (changelog topic, partition) -> (offset reading starts after, highwater)
RecoveryRound = dict[tuple[str, int], tuple[int, int]]


async def _recovery(run: _Run, workers: list[Child]
                    ) -> tuple[dict[str, Any], list[list[RecoveryRound]]]:
    """Wait for every worker's "Worker ready"; how long it took, and per worker the changelog
    ranges its recovery rounds read (up to then)."""
    ready = [await wait_for_log(w, WORKER_READY, RECOVERY_TIMEOUT_S) for w in workers]
    assigned = [w.first_line_time(ASSIGNED) for w in workers]
    recovered = [w.first_line_time(RECOVERY_COMPLETE) for w in workers]
    rounds = [recovery_rounds(w.log_lines()) for w in workers]
    result: dict[str, Any] = {
        # process start -> "Worker ready", the slowest worker
        "ready_s": _slowest(r - w.started for r, w in zip(ready, workers)),
        # start -> partitions assigned (group join) and assigned -> changelog read, slowest
        "join_s": None, "changelog_s": None,
        "web_ports": [w.web_port for w in workers],
        "rss_mb_per_worker": [w.peak_rss_mb() for w in workers]}
    if None not in assigned and None not in recovered:
        result["join_s"] = _slowest(a - w.started for a, w in zip(assigned, workers))
        result["changelog_s"] = _slowest(r - a for r, a in zip(recovered, assigned))
    return result, rounds


def _count_reads(result: dict[str, Any], rounds: list[list[RecoveryRound]],
                 present: Mapping[tuple[str, int], list[int]]) -> None:
    """The records in the ranges each worker's rounds read, of those the changelog holds.
    With several workers a rebalance can cut a round short (it counts in full) and move a
    partition to a worker that reads it again: the figure is exact for one worker."""
    per_round = [[records_in(round_, present) for round_ in worker] for worker in rounds]
    logged = [sum(worker) for worker in per_round if worker]
    result["changelog_records_read"] = sum(logged) if logged else None
    result["changelog_records_read_per_round"] = per_round  # per worker, by recovery round


def records_in(round_: RecoveryRound, present: Mapping[tuple[str, int], list[int]]) -> int:
    """How many of the records at `present` offsets lie after each partition's start offset
    and up to its highwater."""
    return sum(bisect.bisect_right(present.get(tp, []), highwater)
               - bisect.bisect_right(present.get(tp, []), start)
               for tp, (start, highwater) in round_.items())


async def _record_offsets(run: _Run, topic: str) -> dict[tuple[str, int], list[int]]:
    """The offset of every record `topic` holds now, per partition, ascending."""
    consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=4 * 1024 * 1024, **run.security)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(run.options.partitions)]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        offsets: dict[tuple[str, int], list[int]] = {(topic, tp.partition): [] for tp in tps}
        pending = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)
            for tp, messages in batch.items():
                offsets[(topic, tp.partition)].extend(m.offset for m in messages
                                                      if m.offset < ends[tp])
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return offsets
    finally:
        await consumer.stop()


def recovery_rounds(lines: Iterable[str]) -> list[RecoveryRound]:
    """Each of a worker's recovery rounds, from Faust's log: for every active changelog
    partition, the offset reading started after and the highwater (its last offset) it read
    to; [] if the log has no such tables."""
    tables: list[tuple[str, dict[tuple[str, int], int]]] = []
    rows: dict[tuple[str, int], int] | None = None
    topic = ""
    for line in lines:
        if line.startswith("["):  # a new log record; a table continues on the lines below
            lowered = line.lower()
            rows = None
            for kind in (HIGHWATER_TABLE, START_TABLE):
                if kind in lowered:
                    rows = {}
                    tables.append((kind, rows))
            continue
        match = _TABLE_ROW.match(line.strip()) if rows is not None else None
        if match is None:
            continue
        topic = topic if match.group(1) == "〃" else match.group(1)
        rows[(topic, int(match.group(2)))] = int(match.group(3))
    rounds: list[RecoveryRound] = []
    highwaters: dict[tuple[str, int], int] = {}
    for kind, table in tables:
        if kind == HIGHWATER_TABLE:
            highwaters = table
            continue
        rounds.append({tp: (start, max(start, highwaters.get(tp, start)))
                       for tp, start in table.items()})
    return rounds


def _unused_ports(run: _Run, count: int) -> list[int]:
    """Free web ports whose worker data dirs do not exist: workers with an empty disk."""
    while True:
        ports = free_ports(count)
        if not set(ports) & set(run.worker_ports) and not any(
                dataclasses.replace(run.settings, web_port=port).worker_data_dir.exists()
                for port in ports):
            return ports


def _count(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _slowest(spans: Iterable[float]) -> float:
    return round(max(spans), 2)


async def _topic_records(run: _Run, topic: str) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, **run.security)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()  # noqa: SLF001 - no public way
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return 0
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        return sum(ends[tp] - begins[tp] for tp in tps)
    finally:
        await consumer.stop()


def live_order(number: int) -> tuple[str, bytes]:
    """A first order of a new member: `first_purchase` (and more) is added at once."""
    member_id = f"{LIVE_MEMBER_PREFIX}{number:08d}"
    event = {"event_id": f"bench-live-{number:08d}", "event_type": "order.paid",
             "member_id": member_id,
             "occurred_at": datetime.now(CST).isoformat(timespec="milliseconds"),
             "channel": "miniprogram", "schema_version": 1, "order_id": f"bench-o-{number:08d}",
             "amount_fen": 5900,
             "items": [{"sku": "RICE-NE-5KG", "category": "rice", "unit_price_fen": 5900,
                        "quantity": 1, "spec": "regular"}]}
    return member_id, orjson.dumps(event)


async def measure_latency(run: _Run, rate: float, seconds: float, watched: list[Child], *,
                          first: int = 0) -> dict[str, Any]:
    """Paced live orders -> their first tag change read back; latencies in ms."""
    partitions = run.options.partitions
    run.say(f"latency: live first orders at {rate:,.0f}/s for {seconds:.0f} s")
    producer = AIOKafkaProducer(bootstrap_servers=run.bootstrap, acks="all", linger_ms=0,
                                **run.security)
    consumer = AIOKafkaConsumer(bootstrap_servers=run.bootstrap, enable_auto_commit=False,
                                fetch_max_wait_ms=10, **run.security)
    await producer.start()
    await consumer.start()
    sent_at: dict[bytes, float] = {}  # event_id -> perf_counter when sent
    latencies: list[float] = []
    done = asyncio.Event()
    sending = True
    try:
        tps = [TopicPartition(run.names.tag_changes, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # the seek is lazy: fix it before producing

        async def read() -> None:
            prefix = LIVE_MEMBER_PREFIX.encode()
            while not done.is_set():
                batch = await consumer.getmany(timeout_ms=50, max_records=5000)
                received = time.perf_counter()
                for messages in batch.values():
                    for message in messages:
                        if not (message.key or b"").startswith(prefix):
                            continue  # a history member's timer firing meanwhile
                        cause = orjson.loads(message.value).get("cause") or {}
                        event_id = str(cause.get("event_id", "")).encode()
                        sent = sent_at.pop(event_id, None)
                        if sent is not None:
                            latencies.append((received - sent) * 1000)
                if not sending and not sent_at:
                    done.set()

        reader = asyncio.create_task(read())
        deliveries: list[asyncio.Future] = []
        started = time.perf_counter()
        number = 0
        while (now := time.perf_counter()) - started < seconds:
            due = int((now - started) * rate)
            while number < due:
                member_id, value = live_order(first + number)
                sent_at[f"bench-live-{first + number:08d}".encode()] = time.perf_counter()
                deliveries.append(await producer.send(
                    run.names.orders, value, key=member_id.encode(),
                    partition=partition_for(member_id, partitions)))
                number += 1
            if reader.done():
                reader.result()  # raises what stopped it
            for child in watched:
                if not child.alive():
                    raise BenchError(f"{child.name} exited during the latency phase; its log "
                                     f"({child.log_path}):\n{child.log_tail()}")
            await asyncio.sleep(0.002)
        sent_seconds = time.perf_counter() - started
        sending = False
        await asyncio.gather(*deliveries)
        try:
            await asyncio.wait_for(done.wait(), LATENCY_GRACE_S)
        except asyncio.TimeoutError:
            pass
        done.set()
        await reader
    finally:
        await producer.stop()
        await consumer.stop()
    ordered = sorted(latencies)
    summary = {
        "p50": _round(_quantile(ordered, 0.5)), "p90": _round(_quantile(ordered, 0.9)),
        "p99": _round(_quantile(ordered, 0.99)), "max": _round(ordered[-1] if ordered else None),
        "rate_eps": round(number / sent_seconds, 1) if sent_seconds else 0.0,
        "target_rate_eps": round(rate, 1), "sent": number, "received": len(ordered),
        "missing": number - len(ordered), "seconds": round(sent_seconds, 1)}
    run.say(f"latency: p50 {summary['p50']} ms, p99 {summary['p99']} ms over "
            f"{len(ordered):,} of {number:,} live orders")
    return summary


# --- profiling -------------------------------------------------------------------------------------


def _require_profiler(name: str) -> None:
    if name == "py-spy" and _py_spy() is None:
        raise BenchError("py-spy is not installed: pip install -e '.[bench]'")
    if name == "pyinstrument":
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            raise BenchError("pyinstrument is not installed: pip install -e '.[bench]'") from None


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _start_py_spy(run: _Run, workers: list[Child], phase: str) -> list[tuple[Child, Path]]:
    """py-spy attached to each worker, recording collapsed stacks until it is interrupted."""
    spies = []
    for index, worker in enumerate(workers, start=1):
        report = run.workdir / f"profile-{phase}-worker{index}.py-spy.txt"
        spy = Child(f"py-spy of {phase} worker {index}",
                    [_py_spy() or "py-spy", "record", "--pid", str(worker.pid), "--rate",
                     str(PY_SPY_RATE), "--format", "raw", "--output", str(report)],
                    os.environ, run.workdir / f"py-spy-{phase}-worker{index}.log", run.children)
        spies.append((spy, report))
    return spies


async def _stop_py_spy(spies: list[tuple[Child, Path]], covers: str) -> dict[str, Any]:
    reports = []
    for spy, report in spies:
        spy.signal(signal.SIGINT)  # py-spy writes its report on Ctrl-C
        await asyncio.to_thread(spy.wait, 60.0)
        spy.stop()
        reports.append(report)
    profile: dict[str, Any] = {"tool": "py-spy", "reports": [str(r) for r in reports],
                               "covers": covers}
    if reports and reports[0].exists():
        stacks = parse_collapsed(reports[0].read_text(errors="replace").splitlines())
        profile.update(summarize_stacks(stacks))
        summary_path = reports[0].with_suffix(".top.txt")
        summary_path.write_text(format_top(profile))
        profile["summary"] = str(summary_path)
    else:
        profile["error"] = f"py-spy wrote no report; see {spies[0][0].log_path}"
    return profile


def _pyinstrument_reports(run: _Run, workers: list[Child]) -> dict[str, Any]:
    profile: dict[str, Any] = {"tool": "pyinstrument", "reports": [],
                               "covers": "the pipeline workers' whole life, wall time (waits "
                                         "included), main thread only (Faust's consumer thread "
                                         "is not sampled)"}
    for index in range(1, len(workers) + 1):
        session = run.workdir / f"profile-pipeline-worker{index}.pyisession"
        if not session.exists():
            profile["error"] = f"pyinstrument wrote no session; see {workers[index - 1].log_path}"
            continue
        html = session.with_suffix(".html")
        subprocess.run([sys.executable, "-m", "pyinstrument", "--load", str(session), "-r",
                        "html", "-o", str(html)], check=False, capture_output=True)
        profile["reports"].append(str(html))
        if index == 1:
            from pyinstrument.session import Session

            loaded = Session.load(str(session))
            stacks = Counter()
            for frames, seconds in loaded.frame_records:
                stacks[tuple(_pyinstrument_frame(f) for f in frames)] += seconds
            profile.update(summarize_stacks(stacks))
            summary_path = session.with_suffix(".top.txt")
            summary_path.write_text(format_top(profile))
            profile["summary"] = str(summary_path)
    return profile


def _pyinstrument_frame(identifier: str) -> str:
    """pyinstrument's "function\\x00file\\x00line" as py-spy's "function (file:line)"."""
    parts = identifier.split("\x01", 1)[0].split("\x00")  # attributes follow \x01
    if len(parts) >= 3:
        return f"{parts[0]} ({_short_path(parts[1])}:{parts[2]})"
    return parts[0]


def parse_collapsed(lines: Iterable[str]) -> Counter:
    """py-spy's raw format ("frame;frame;frame count", outermost first) -> {stack: samples}."""
    stacks: Counter = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(_shorten_frame(frame) for frame in stack.split(";"))
        stacks[frames] += int(count)
    return stacks


def _shorten_frame(frame: str) -> str:
    match = re.match(r"^(.*) \((.*):(\d+)\)$", frame)
    if match is None:
        return frame
    return f"{match.group(1)} ({_short_path(match.group(2))}:{match.group(3)})"


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarize_stacks(stacks: Mapping[tuple[str, ...], float], top: int = 15) -> dict[str, Any]:
    """The functions with the most samples on their own (self) and anywhere on the stack
    (total), as a share of all samples; lines are dropped so a function counts once."""
    total = sum(stacks.values())
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for frames, weight in stacks.items():
        if not frames:
            continue
        names = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        own[names[-1]] += weight
        for name in set(names):
            inclusive[name] += weight

    def share(counter: Counter) -> list[dict[str, Any]]:
        return [{"function": name, "pct": round(100 * weight / total, 1)}
                for name, weight in counter.most_common(top)] if total else []

    return {"samples": round(total, 3), "top_self": share(own), "top_total": share(inclusive)}


def format_top(profile: Mapping[str, Any]) -> str:
    lines = [f"{profile['tool']}: {profile.get('covers', '')}", "", "self %  function"]
    lines += [f"{row['pct']:6.1f}  {row['function']}" for row in profile.get("top_self", [])]
    lines += ["", "total %  function"]
    lines += [f"{row['pct']:7.1f}  {row['function']}" for row in profile.get("top_total", [])]
    return "\n".join(lines) + "\n"


# --- reporting -------------------------------------------------------------------------------------


def _header(options: BenchOptions, workdir: Path) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "events": None, "events_requested": options.events, "members": options.members,
        "partitions": options.partitions, "workers": options.workers,
        "raw_passthrough_eps": None, "faust_floor_eps": None, "ratio_ceiling": None,
        "pipeline_eps": None, "ratio": None, "matches_dry_run": None, "latency_ms": None,
        "rss_mb": None, "state_bytes_per_member": None,
        # seconds from process start to "Worker ready", and changelog records read
        "restart": {"with_store_s": None, "with_store_records": None, "fresh_disk_s": None,
                    "fresh_disk_records": None, "changelog_records": None},
        "clock": {"pipeline": "event", "restart": "wall", "latency": "wall"},
        "redis_sink": "on: tagstream redis-sink, its own process",
        "broker": None,  # "Apache Kafka <version>, N node(s)", once the cluster answered
        "profile": None, "seed": options.seed,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "cpu": _cpu_model(),
                    "mem_gib": _mem_gib(),
                    # Other work on the machine skews every figure: the load before and after.
                    "loadavg_1m_start": round(os.getloadavg()[0], 2)},
        "versions": {name: version(name) for name in ("faust-streaming", "aiokafka")},
        "command": options.command, "workdir": str(workdir), "details": {},
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def format_summary(result: Mapping[str, Any]) -> str:
    """The result for a person: the headline figures, then where the details are."""
    latency = result.get("latency_ms") or {}
    floor = latency.get("floor") or {}
    restart = result.get("restart") or {}
    restart_details = (result.get("details") or {}).get("restart") or {}
    with_store = restart_details.get("with_store") or {}
    fresh_disk = restart_details.get("fresh_disk") or {}
    machine = result.get("machine") or {}

    def number(value: Any, unit: str = "") -> str:
        if value is None:
            return "-"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}{unit}"
        return f"{value}{unit}"

    lines = [
        f"tagstream bench: {number(result.get('events'))} events, "
        f"{number(result.get('members'))} members, {result.get('partitions')} partitions, "
        f"{result.get('workers')} worker(s); {result.get('broker')}; "
        f"{machine.get('nproc')} cores, Python {machine.get('python')}",
        f"  raw passthrough      {number(result.get('raw_passthrough_eps'), ' events/s')}",
        f"  Faust, agent idle    {number(result.get('faust_floor_eps'), ' events/s')}"
        f"  (ratio ceiling {number(result.get('ratio_ceiling'))})",
        f"  pipeline             {number(result.get('pipeline_eps'), ' events/s')}"
        f"  (ratio {number(result.get('ratio'))}, matches the dry run: "
        f"{number(result.get('matches_dry_run'))})",
        f"  latency at {number(latency.get('rate_eps'), '/s')}  p50 {number(latency.get('p50'))} ms, "
        f"p99 {number(latency.get('p99'))} ms ({number(latency.get('received'))} of "
        f"{number(latency.get('sent'))} live orders)",
        f"  latency floor (20/s) p50 {number(floor.get('p50'))} ms, p99 {number(floor.get('p99'))} ms",
        f"  worker peak RSS      {number(result.get('rss_mb'), ' MB')}",
        f"  state per member     {number(result.get('state_bytes_per_member'), ' bytes')}",
        f"  restart, with store  {number(restart.get('with_store_s'), ' s')} (group join "
        f"{number(with_store.get('join_s'), ' s')}, changelog "
        f"{number(with_store.get('changelog_s'), ' s')} for "
        f"{number(restart.get('with_store_records'))} records)",
        f"  restart, empty disk  {number(restart.get('fresh_disk_s'), ' s')} (group join "
        f"{number(fresh_disk.get('join_s'), ' s')}, changelog "
        f"{number(fresh_disk.get('changelog_s'), ' s')} for "
        f"{number(restart.get('fresh_disk_records'))} of "
        f"{number(restart.get('changelog_records'))} records)",
    ]
    lines += [f"  WARNING: {warning}" for warning in result.get("warnings", [])]
    profile = result.get("profile")
    if profile:
        lines.append(f"  profile ({profile.get('tool')}): {', '.join(profile.get('reports', []))}")
        for row in profile.get("top_self", [])[:8]:
            lines.append(f"    {row['pct']:5.1f} %  {row['function']}")
    lines.append(f"  logs and reports in {result.get('workdir')}")
    if result.get("error"):
        lines.append(f"FAILED: {result['error']}")
    lines.append(f"  command: {result.get('command')}")
    return "\n".join(lines)


def _quantile(ordered: list[float] | list[int], q: float) -> Any:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
