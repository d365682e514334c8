"""Options, errors, the run's shared state and small helpers of `tagstream bench`."""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

from aiokafka import TopicPartition

from schemas.errors import TagstreamError
from streams.platform.kafka_clients import UnknownTopics, kafka_consumer, partitions_of
from streams.platform.security import kafka_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import TopicNames, topic_names
from streams.tools.processes import free_ports
from streams.tools.stack import LocalStack
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # a run's children are started in bench.children, which imports this
    from streams.tools.bench.children import Child


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
    # After the other phases, the pipeline again with this many workers (streams/tools/bench/
    # scaling.py); None: not run.
    compare_workers: int | None = None
    use_stack: bool = False  # the running broker and Redis of the settings, not private ones
    keep_stack: bool = False  # leave the private broker and Redis running afterwards
    profile: str | None = None  # "py-spy" or "pyinstrument": the pipeline workers run under it
    latency_s: float = 25.0
    # Live orders at the measured rate before the measured window, reported on their own
    # (latency_ms.warm_up): the window then starts on a broker whose JIT has compiled the
    # paths of the phase's clients, as a broker in service has (streams/tools/bench/recovery.py).
    latency_warm_up_s: float = 10.0
    latency_rate: float | None = None  # live orders/s; None: half the measured pipeline rate
    seed: int = 1
    history_end: datetime | None = None  # default: now (see _generate)
    # No new tag change for this long: the pipeline is done (or stuck); missing changes are
    # then reported as a mismatch with the dry run.
    stall_s: float = 30.0
    workdir: Path | None = None
    command: str = ""


Say = Callable[[str], None]


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


async def _offset_ranges(run: _Run, tps: list[TopicPartition]
                         ) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """(start offsets, end offsets) of `tps` now."""
    consumer = kafka_consumer(run.bootstrap, **run.security)
    await consumer.start()
    try:
        return await consumer.beginning_offsets(tps), await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


def _event_partitions(run: _Run) -> list[TopicPartition]:
    return [TopicPartition(t, p) for t in run.names.events for p in range(run.options.partitions)]


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
    consumer = kafka_consumer(run.bootstrap, **run.security)
    await consumer.start()
    try:
        try:
            tps = await partitions_of(consumer, [topic])
        except UnknownTopics:
            return 0
        begins = await consumer.beginning_offsets(tps)
        ends = await consumer.end_offsets(tps)
        return sum(ends[tp] - begins[tp] for tp in tps)
    finally:
        await consumer.stop()


def _quantile(ordered: list[float] | list[int], q: float) -> Any:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
