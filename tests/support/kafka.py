"""Test helpers around a real broker: topics, a worker process, reading topics back."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import struct
import time
from collections import Counter
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, NamedTuple

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import CoordinatorLoadInProgressError, GroupCoordinatorNotAvailableError

from schemas.changes import encode_change
from streams.platform.admin import ensure_tagstream_topics
from streams.platform.kafka_clients import kafka_admin, partitions_of
from streams.platform.settings import Settings
from streams.platform.topics import members_changelog
from streams.serving.profiles import ProfileRenderer
from streams.tools.processes import ChildProcess, tagstream_command
from taggers.rules import RulePack


# The head of a record batch in a log segment (Kafka's message format 2): base offset,
# batch length (of what follows the length), leader epoch, magic, CRC, attributes (whose
# low three bits name the compression codec).
BATCH_HEAD = struct.Struct(">qiibIh")
CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def stored_codecs(log_dir: Path, topic: str) -> Counter[str]:
    """How many of `topic`'s record batches, on every partition this node holds, the broker
    stored with each compression codec: read from its segment files, since a client's fetch
    decompresses without saying."""
    codecs: Counter[str] = Counter()
    partition_dir = re.compile(re.escape(topic) + r"-\d+")
    for directory in log_dir.iterdir():
        if not partition_dir.fullmatch(directory.name):
            continue
        for segment in sorted(directory.glob("*.log")):
            data = segment.read_bytes()
            position = 0
            while position + BATCH_HEAD.size <= len(data):
                _, length, _, magic, _, attributes = BATCH_HEAD.unpack_from(data, position)
                if length <= 0:
                    break  # the preallocated end of an active segment
                assert magic == 2, f"{segment} at {position}: message format {magic}"
                codecs[CODECS[attributes & 0x07]] += 1
                position += 12 + length
    return codecs


async def create_topics(settings: Settings) -> None:
    """Every tagstream topic of the settings' topic namespace."""
    await ensure_tagstream_topics(settings)


class WorkerProcess:
    """A `tagstream <command>` child process (a worker by default) with its own log file."""

    def __init__(self, settings: Settings, log_path: Path,
                 command: tuple[str, ...] = ("worker",)) -> None:
        self.settings = settings
        self.log_path = log_path
        self.command = command
        self.child: ChildProcess | None = None

    def start(self) -> "WorkerProcess":
        argv, env = tagstream_command(self.settings, *self.command)
        self.child = ChildProcess(" ".join(self.command), argv, env, self.log_path)
        return self

    @property
    def pid(self) -> int | None:
        return None if self.child is None else self.child.pid

    @property
    def returncode(self) -> int | None:
        return None if self.child is None else self.child.returncode

    def alive(self) -> bool:
        return self.child is not None and self.child.alive()

    def log_tail(self, lines: int = 40) -> str:
        return "(not started)" if self.child is None else self.child.log_tail(lines)

    def stop(self, timeout: float = 20) -> None:
        if self.child is not None:
            self.child.stop(timeout)

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (a crash)."""
        if self.child is not None:
            self.child.kill()

    async def ready(self, timeout: float = 180) -> None:
        """Until Faust logs the worker ready (its first assignment recovered), so that a
        replay started next meets a working consumer group, not one still joining."""
        deadline = time.monotonic() + timeout
        while not any("Worker ready" in line for line in self.child.log_lines()):
            assert self.alive(), f"the worker stopped before it was ready:\n{self.log_tail()}"
            assert time.monotonic() < deadline, (
                f"the worker was not ready within {timeout} s:\n{self.log_tail()}")
            await asyncio.sleep(0.2)


@contextmanager
def running_worker(settings: Settings, tmp_path: Path, name: str = "worker",
                   command: tuple[str, ...] = ("worker",),
                   **overrides: Any) -> Iterator[WorkerProcess]:
    settings = dataclasses.replace(settings, **overrides)
    worker = WorkerProcess(settings, tmp_path / f"{name}.log", command).start()
    try:
        yield worker
    finally:
        worker.stop()


async def read_topic(bootstrap: str, topic: str, *, until: Callable[[list[Any]], bool],
                     timeout: float, worker: WorkerProcess | None = None,
                     idle_s: float | None = None) -> list[Any]:
    """Every record of `topic` from the start, read until `until(new_records)` says enough
    (it sees each batch once, so it keeps its own tally: see the helpers below), timeout, or
    `idle_s` without a new record (so a stream that has stopped short fails in minutes, not
    at the full timeout). Records are aiokafka ConsumerRecords. Fails early if the worker
    died."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        assigned = await partitions_of(consumer, [topic])
        consumer.assign(assigned)
        await consumer.seek_to_beginning(*assigned)
        deadline = time.monotonic() + timeout
        last_new = time.monotonic()
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=300, max_records=5000)
            new = [message for messages in batch.values() for message in messages]
            records.extend(new)
            if until(new):
                return records
            if new:
                last_new = time.monotonic()
            elif idle_s is not None and time.monotonic() - last_new > idle_s:
                return records
            if worker is not None and not worker.alive():
                raise AssertionError(f"worker died:\n{worker.log_tail()}")
        return records
    finally:
        await consumer.stop()


class ProfileRecord(NamedTuple):
    key: bytes
    value: bytes | None  # the profile JSON; None for a tombstone (an erasure)


async def read_profiles(settings: Settings, pack: RulePack, *,
                        until: Callable[[list[Any]], bool], timeout: float,
                        worker: WorkerProcess | None = None,
                        idle_s: float | None = None) -> list[ProfileRecord]:
    """read_topic over the member table's changelog, each state rendered as the Redis sink
    renders it (streams/serving/profiles.py): the profiles the stream serves, in changelog
    order. `until` sees ProfileRecords, as it would see a topic's records."""
    renderer = ProfileRenderer(pack)
    rendered: list[ProfileRecord] = []

    def until_rendered(new: list[Any]) -> bool:
        profiles = [ProfileRecord(r.key, None if r.value is None else renderer.served(r.value).json)
                    for r in new]
        rendered.extend(profiles)
        return until(profiles)

    await read_topic(settings.broker_bootstrap, members_changelog(settings), until=until_rendered,
                     timeout=timeout, worker=worker, idle_s=idle_s)
    return rendered


@asynccontextmanager
async def admin_client(bootstrap: str, **options: Any) -> AsyncIterator[AIOKafkaAdminClient]:
    """A started admin client (`options` as aiokafka takes them: security, ...), closed on
    the way out."""
    admin = kafka_admin(bootstrap, **options)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


async def committed_to_the_end(bootstrap: str, group: str, topics: Iterable[str], *,
                               timeout: float, worker: Any = None) -> None:
    """Wait until `group` has committed every partition of `topics` to its end offset. The
    worker commits an event only after everything it caused (changes, dead letters) is
    delivered, so after this the outputs of every event written so far are in Kafka."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        ends = await consumer.end_offsets(await partitions_of(consumer, topics))
    finally:
        await consumer.stop()
    deadline = time.monotonic() + timeout
    async with admin_client(bootstrap) as admin:
        while True:
            try:
                committed = await admin.list_consumer_group_offsets(group)
            except (GroupCoordinatorNotAvailableError, CoordinatorLoadInProgressError):
                committed = {}  # the offsets topic is still being created or loaded
            behind = {tp: (committed[tp].offset if tp in committed else None, end)
                      for tp, end in ends.items()
                      if end and (tp not in committed or committed[tp].offset < end)}
            if not behind:
                return
            if worker is not None and not worker.alive():
                raise AssertionError(f"worker died:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"group {group} not committed to the end: {behind}")
            await asyncio.sleep(0.5)


def values(records: list[Any]) -> list[dict[str, Any]]:
    return [orjson.loads(record.value) for record in records]


# --- stopping conditions for read_topic: each keeps its own tally ---------------------------


def at_least(count: int) -> Callable[[list[Any]], bool]:
    seen = 0

    def enough(new: list[Any]) -> bool:
        nonlocal seen
        seen += len(new)
        return seen >= count

    return enough


def never() -> Callable[[list[Any]], bool]:
    """Read for the whole timeout (to be sure nothing more arrives)."""
    return lambda new: False


def values_cover(field: str, expected: Any) -> Callable[[list[Any]], bool]:
    """read_topic until: records whose JSON `field` takes every value of `expected` have
    arrived."""
    missing = set(expected)

    def enough(new: list[Any]) -> bool:
        for record in new:
            missing.discard(orjson.loads(record.value)[field])
        return not missing

    return enough


def change_ids_cover(expected: set[str]) -> Callable[[list[Any]], bool]:
    return values_cover("change_id", expected)


def latest_by_key_equals(expected: dict[str, Any]) -> Callable[[list[Any]], bool]:
    """The newest value per key (JSON) equals `expected` (a compacted topic's view)."""
    latest: dict[str, Any] = {}

    def enough(new: list[Any]) -> bool:
        for record in new:
            latest[record.key.decode()] = orjson.loads(record.value)
        return bool(new) and latest == expected

    return enough


def task_statuses_equal(expected: dict[str, str]) -> Callable[[list[Any]], bool]:
    """read_topic until: each task's newest record (highest version) on tasks.changes has the
    expected status (`enough.latest` is task_id -> status so far). Tombstones (an erased
    member's) carry no task and are skipped."""
    newest: dict[str, tuple[int, str]] = {}

    def enough(new: list[Any]) -> bool:
        for record in new:
            if record.value is None:
                continue
            task = orjson.loads(record.value)
            if task["version"] > newest.get(task["task_id"], (0, ""))[0]:
                newest[task["task_id"]] = (task["version"], task["status"])
        enough.latest = {task_id: status for task_id, (_, status) in newest.items()}  # type: ignore[attr-defined]
        return enough.latest == expected  # type: ignore[attr-defined]

    enough.latest = {}  # type: ignore[attr-defined]
    return enough


def assert_no_task_twice(records: list[Any]) -> None:
    """A redelivery may send a task's record again, but never a different record under the
    same task id and version (a task opened twice, or a status decided twice)."""
    seen: dict[tuple[str, int], bytes] = {}
    for record in records:
        if record.value is None:
            continue
        task = orjson.loads(record.value)
        key = (task["task_id"], task["version"])
        assert seen.setdefault(key, record.value) == record.value, (
            f"task {key[0]} version {key[1]} was published with two different contents")


def assert_same_ids(found: Iterable[str], expected: set[str], what: str = "change ids") -> None:
    """Set equality with a message a CI log can hold: counts and a few examples, not every id
    (pytest under CI=true prints whole sets: 150,000 ids filled the log and hid the cause)."""
    found_set = set(found)
    if found_set == expected:
        return
    missing, unexpected = sorted(expected - found_set), sorted(found_set - expected)
    raise AssertionError(
        f"{what}: {len(expected)} expected, {len(found_set)} found; {len(missing)} missing "
        f"(e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. {unexpected[:5]})")


def describe_member_differences(found: Iterable[dict[str, Any]], expected: Iterable[Any],
                                limit: int = 5) -> str:
    """For the first members whose changes differ: what the dry run made and what the stream
    made, one line per change, oldest first (what a takeover bug needs to be understood)."""
    def line(change: dict[str, Any]) -> str:
        return (f"  {change['at']} {change.get('op', change.get('type'))} "
                f"{change.get('tag', change.get('subject', ''))} {change['cause']} "
                f"{change['change_id'][:8]}")

    by_member: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for change in expected:
        record = orjson.loads(encode_change(change))
        by_member.setdefault(record["member_id"], ([], []))[0].append(record)
    for record in found:
        by_member.setdefault(record["member_id"], ([], []))[1].append(record)
    differing = [member for member, (want, got) in sorted(by_member.items())
                 if {c["change_id"] for c in want} != {c["change_id"] for c in got}]
    report = [f"{len(differing)} members differ: {differing[:20]}"]
    for member in differing[:limit]:
        want, got = by_member[member]
        got = list({c["change_id"]: c for c in got}.values())
        report.append(f"{member}: dry run made {len(want)}, the stream {len(got)}")
        report += [" dry run:", *map(line, sorted(want, key=lambda c: c["at"])),
                   " stream:", *map(line, sorted(got, key=lambda c: c["at"]))]
    return "\n".join(report)


def assert_same_profiles(found: dict[str, Any], expected: dict[str, Any]) -> None:
    """Profile maps equal; otherwise how many members differ and the first one in full."""
    if found == expected:
        return
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    differing = sorted(m for m in found.keys() & expected.keys() if found[m] != expected[m])
    first = (f"; first: {differing[0]} found {found[differing[0]]} expected "
             f"{expected[differing[0]]}" if differing else "")
    raise AssertionError(
        f"profiles: {len(expected)} expected, {len(found)} found; {len(missing)} missing "
        f"(e.g. {missing[:5]}), {len(unexpected)} unexpected (e.g. {unexpected[:5]}), "
        f"{len(differing)} differ (e.g. {differing[:5]}){first}")


# --- several workers, broker nodes -------------------------------------------------------------


class AllWorkers:
    """Several workers seen as one by `read_topic(worker=...)`: alive only while every one
    is, and the log tail of those that died (or of all, if none has)."""

    def __init__(self, *workers: WorkerProcess) -> None:
        self.workers = workers

    def alive(self) -> bool:
        return all(worker.alive() for worker in self.workers)

    async def ready(self, timeout: float = 180) -> None:
        await asyncio.gather(*(worker.ready(timeout) for worker in self.workers))

    def log_tail(self, lines: int = 40) -> str:
        dead = [w for w in self.workers if not w.alive()] or list(self.workers)
        return "\n".join(f"--- {w.log_path.name} (exit code "
                         f"{w.returncode}):\n{w.log_tail(lines)}"
                         for w in dead)


async def partition_leader(bootstrap: str, topic: str, partition: int = 0) -> int:
    """The node id that leads `topic`'s `partition`, from fresh cluster metadata."""
    from aiokafka import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=bootstrap)
    await client.bootstrap()
    try:
        metadata = await client.fetch_all_metadata()
        leader = metadata.leader_for_partition(TopicPartition(topic, partition))
        if leader is None or leader < 0:
            raise AssertionError(f"{topic}[{partition}] has no leader now")
        return leader
    finally:
        await client.close()


def signal_node(record: Any, sig: int, wait_s: float = 60) -> float:
    """Send `sig` to the recorded process (a Kafka node) through a pidfd, after checking the pid
    still runs the recorded argv, and wait up to `wait_s` for it to exit (reaped if it is our
    child); returns the seconds it took to exit. Raises if it is not running or outlives
    `wait_s`."""
    import select
    import signal as signals

    from streams.tools.processes import is_running

    pidfd = os.pidfd_open(record.pid)
    try:
        if not is_running(record):
            raise AssertionError(f"pid {record.pid} no longer runs {record.argv[:1]}")
        started = time.monotonic()
        signals.pidfd_send_signal(pidfd, sig)
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        if not poller.poll(int(wait_s * 1000)):
            raise AssertionError(f"pid {record.pid} still runs {wait_s:g} s after signal {sig}")
        return time.monotonic() - started
    finally:
        os.close(pidfd)
        try:
            os.waitpid(record.pid, os.WNOHANG)
        except ChildProcessError:
            pass
