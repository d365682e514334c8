"""Run the local stack on loopback, and stop exactly what it started.

The stack is Apache Kafka in KRaft mode (one combined broker+controller node, or three), from
the jars streams/tools/kafka_server fetches, and Debian's `redis-server` (DESIGN.md, "Embedded
default and real components"): the demo, development, the tests and the bench run on it; production
runs the same Kafka version from docker-compose.yml.

Each process started is recorded in `settings.stack_dir` and stopped by that record only
(streams/tools/processes.py), so a recycled pid is never signalled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Coroutine, Iterable, TypeVar
from urllib.parse import urlsplit

from schemas.errors import TagstreamError
from streams.tools.kafka_server import (DEFAULT_CACHE, NodeConfig, format_nodes, kafka_version,
                                  new_cluster_id, node_argv)
from streams.platform.settings import ENV_NAMES, Settings
from streams.tools.processes import (ProcessRecord, free_ports, is_running, log_tail, port_taken,
                                     read_record, reap, start_process, stop_process,
                                     write_record)

T = TypeVar("T")

INSTALL_REDIS = "install it as root with: apt-get install -y redis-server"
POLL_INTERVAL_S = 0.05


class StackError(TagstreamError):
    """The embedded stack cannot start, answer or stop; the message says what to do."""


# --- The stack ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Component:
    name: str  # "broker-<node id>" or "redis": also the stem of its record and log files
    host: str
    port: int
    setting: str  # the environment variable that moves it
    argv: tuple[str, ...]
    answers: Callable[[float], Awaitable[bool]]

    @property
    def address(self) -> str:
        return f"{_url_host(self.host)}:{self.port}"


@dataclass(frozen=True)
class ClusterLayout:
    """What a local Kafka cluster was formatted with; kept in `<stack dir>/kafka/cluster.json`
    so that its data is usable by the next `up` (the voters are written into the log dirs)."""

    cluster_id: str
    kafka_version: str
    nodes: tuple[NodeConfig, ...]

    def to_json(self) -> str:
        return json.dumps({"cluster_id": self.cluster_id, "kafka_version": self.kafka_version,
                           "nodes": [{"node_id": n.node_id, "port": n.port,
                                      "controller_port": n.controller_port}
                                     for n in self.nodes]}, indent=2)

    @classmethod
    def from_json(cls, text: str, kafka_dir: Path) -> "ClusterLayout":
        data = json.loads(text)
        return cls(data["cluster_id"], data["kafka_version"], tuple(
            NodeConfig(n["node_id"], n["port"], n["controller_port"],
                       kafka_dir / f"node-{n['node_id']}") for n in data["nodes"]))

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)


class LocalStack:
    """Apache Kafka (one KRaft node, or three) and Redis for `settings`, on loopback.

    `kafka`/`redis` choose the parts this instance manages: the tests share one Kafka per run
    and give each test a Redis of its own. Data of the Kafka nodes lives under
    `<stack dir>/kafka` and survives `down`/`up`; `up(fresh=True)` starts empty. Redis keeps
    nothing on disk (the Redis sink rebuilds it from the compacted member changelog)."""

    def __init__(self, settings: Settings, *, kafka: bool = True, redis: bool = True,
                 cache: Path = DEFAULT_CACHE) -> None:
        self.settings = settings
        self.stack_dir = Path(settings.stack_dir).resolve()
        self.kafka_dir = self.stack_dir / "kafka"
        self.with_kafka = kafka
        self.with_redis = redis
        self.cache = cache

    def __enter__(self) -> "LocalStack":
        self.up()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.down()

    # --- lifecycle ---

    def up(self, brokers: int | None = None, *, fresh: bool = False,
           timeout: float = 90) -> None:
        """Start whatever is not running yet and return once everything answers (a no-op if
        it does). `brokers`: 1 or 3 Kafka nodes; by default what the stack dir already holds,
        else 1. A partly running stack gets only its missing processes."""
        if brokers is not None and brokers < 1:
            raise StackError(f"--brokers must be at least 1, not {brokers}")
        if fresh:
            self.down()
            shutil.rmtree(self.kafka_dir, ignore_errors=True)
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        components = self._components(brokers)
        records: dict[str, ProcessRecord] = {}
        to_start: list[_Component] = []
        for component in components:
            record = read_record(self._record_path(component.name))
            if record is not None and is_running(record):
                if record.argv != component.argv:
                    raise StackError(
                        f"the {component.name} recorded in {self.stack_dir} (pid {record.pid}) "
                        f"runs with other settings: {' '.join(record.argv)}; run `tagstream stack "
                        "down` first, or use another TAGSTREAM_STACK_DIR")
                records[component.name] = record
            else:
                self._record_path(component.name).unlink(missing_ok=True)
                to_start.append(component)
        for component in to_start:
            if port_taken(component.host, component.port):
                raise _port_error(component)

        started: list[tuple[_Component, ProcessRecord]] = []
        try:
            for component in to_start:
                record = start_process(component.argv, self.log_path(component.name))
                write_record(self._record_path(component.name), record)
                records[component.name] = record
                started.append((component, record))
            deadline = time.monotonic() + timeout
            _run(_wait_all(_wait_answering(c, records[c.name], deadline, timeout)
                           for c in components))
        except BaseException:
            self._stop([(component.name, record) for component, record in started])
            raise

    def down(self, timeout: float = 15) -> list[str]:
        """Stop the processes this stack recorded, by pid; returns what was stopped."""
        names = [path.stem for path in sorted(self.stack_dir.glob("*.json"))
                 if self._manages(path.stem)] if self.stack_dir.is_dir() else []
        records = [(name, record) for name in names
                   if (record := read_record(self._record_path(name))) is not None]
        return self._stop(records, timeout)

    def status(self) -> dict[str, Any]:
        """`{"brokers": [{node_id, pid, port, alive, answering}], "redis": {pid, port, alive,
        answering}, "bootstrap": "kafka://..."}` (the shape of `stack status --json`)."""
        result: dict[str, Any] = {}
        if self.with_kafka:
            layout = self.layout()
            brokers = []
            for node in layout.nodes if layout else ():
                record = self.record(f"broker-{node.node_id}")
                alive = record is not None and is_running(record)
                brokers.append({
                    "node_id": node.node_id, "pid": record.pid if alive else None,
                    "port": node.port, "alive": alive,
                    "answering": alive and _run(_broker_answers(
                        f"127.0.0.1:{node.port}", 1)(2.0)),
                    "log": str(self.log_path(f"broker-{node.node_id}"))})
            result["brokers"] = brokers
            result["bootstrap"] = (f"kafka://{layout.bootstrap}" if layout
                                   else self.settings.broker)
            result["kafka_version"] = layout.kafka_version if layout else kafka_version()
        if self.with_redis:
            host, port, db = _redis_address(self.settings)
            record = self.record("redis")
            alive = record is not None and is_running(record)
            result["redis"] = {"pid": record.pid if alive else None, "port": port,
                               "alive": alive,
                               "answering": _run(_redis_answers(host, port, db)(2.0)),
                               "log": str(self.log_path("redis"))}
        return result

    def log_path(self, name: str) -> Path:
        """Where the process `name` ("broker-1", "redis") started by this stack writes its
        output."""
        return self.stack_dir / f"{name}.log"

    def layout(self) -> ClusterLayout | None:
        try:
            return ClusterLayout.from_json((self.kafka_dir / "cluster.json").read_text(),
                                           self.kafka_dir)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:
            raise StackError(f"{self.kafka_dir / 'cluster.json'} is unreadable ({exc}); "
                             "`tagstream stack up --fresh` starts a new cluster") from None

    def record(self, name: str) -> ProcessRecord | None:
        """The process record of `name` ("broker-1", "redis"), if this stack started it."""
        return read_record(self._record_path(name))

    def client_settings(self) -> Settings:
        """The settings with the broker set to every node of this stack's cluster."""
        layout = self.layout()
        if layout is None:
            return self.settings
        return dataclasses.replace(self.settings, broker=f"kafka://{layout.bootstrap}")

    # --- parts ---

    def _manages(self, name: str) -> bool:
        return ((self.with_kafka and name.startswith("broker-"))
                or (self.with_redis and name == "redis"))

    def _stop(self, records: list[tuple[str, ProcessRecord]], timeout: float = 15) -> list[str]:
        """SIGTERM every recorded process at once (a Kafka node's controlled shutdown waits
        for its peers, so one at a time would wait for peers already gone), then wait."""
        threads, stopped = [], []

        def stop(name: str, record: ProcessRecord) -> None:
            # A record whose pid no longer runs our argv is stale: drop it, signal nothing.
            if stop_process(record, timeout):
                stopped.append(f"{name} (pid {record.pid})")
            self._record_path(name).unlink(missing_ok=True)

        for name, record in records:
            thread = threading.Thread(target=stop, args=(name, record))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        return sorted(stopped)

    def _record_path(self, name: str) -> Path:
        return self.stack_dir / f"{name}.json"

    def _components(self, brokers: int | None) -> list[_Component]:
        components = []
        if self.with_kafka:
            layout = self._layout_for(brokers)
            expected = len(layout.nodes)
            for node in layout.nodes:
                components.append(_Component(
                    f"broker-{node.node_id}", "127.0.0.1", node.port, ENV_NAMES["broker"],
                    node_argv(node, self.cache, self.settings.stack_broker_jit),
                    _broker_answers(f"127.0.0.1:{node.port}", expected)))
        if self.with_redis:
            host, port, db = _redis_address(self.settings)
            _require_loopback(host, ENV_NAMES["redis_url"], self.settings.redis_url)
            components.append(_Component("redis", host, port, ENV_NAMES["redis_url"],
                                         self._redis_argv(host, port),
                                         _redis_answers(host, port, db)))
        return components

    def _layout_for(self, brokers: int | None) -> ClusterLayout:
        """The recorded cluster, or a new one formatted now for `brokers` nodes."""
        wanted_ports = _broker_ports(self.settings)
        layout = self.layout()
        if layout is not None:
            if brokers is not None and brokers != len(layout.nodes):
                raise StackError(
                    f"the stack in {self.stack_dir} holds a {len(layout.nodes)}-node Kafka "
                    f"cluster, not {brokers}; `tagstream stack up --fresh --brokers {brokers}` "
                    "starts a new one (and deletes its data)")
            ports = {node.port for node in layout.nodes}
            if not set(wanted_ports) & ports:
                raise StackError(
                    f"TAGSTREAM_BROKER={self.settings.broker!r} names none of the ports of the "
                    f"cluster in {self.stack_dir} ({layout.bootstrap}); use "
                    f"TAGSTREAM_BROKER=kafka://{layout.bootstrap}, or `tagstream stack up "
                    "--fresh` to start a new cluster on the configured port")
            if layout.kafka_version != kafka_version():
                raise StackError(
                    f"the cluster in {self.kafka_dir} was made by Kafka {layout.kafka_version}, "
                    f"this is {kafka_version()}; `tagstream stack up --fresh` starts a new one")
            return layout
        count = brokers or 1
        if len(wanted_ports) == 1:
            wanted_ports = [wanted_ports[0] + i for i in range(count)]
        if len(wanted_ports) != count:
            raise StackError(f"TAGSTREAM_BROKER={self.settings.broker!r} lists "
                             f"{len(wanted_ports)} addresses for {count} brokers; give one "
                             "(the others take the next ports) or one per broker")
        controller_ports = [p for p in free_ports(count + len(wanted_ports))
                            if p not in wanted_ports][:count]
        nodes = tuple(NodeConfig(i + 1, port, controller, self.kafka_dir / f"node-{i + 1}")
                      for i, (port, controller) in enumerate(zip(wanted_ports,
                                                                 controller_ports)))
        layout = ClusterLayout(new_cluster_id(), kafka_version(), nodes)
        node_argv(nodes[0], self.cache)  # the jars and java are there, before formatting
        format_nodes(list(nodes), layout.cluster_id, self.cache)
        (self.kafka_dir / "cluster.json").write_text(layout.to_json())
        return layout

    def _redis_argv(self, host: str, port: int) -> tuple[str, ...]:
        if urlsplit(self.settings.redis_url).password:
            raise StackError("the local Redis runs without a password: remove it from "
                             "TAGSTREAM_REDIS_URL, or point TAGSTREAM_REDIS_URL at your own Redis")
        binary = shutil.which("redis-server")
        if binary is None:
            raise StackError(f"redis-server is not installed (not found on PATH); {INSTALL_REDIS}")
        # --set-proc-title no: Redis would otherwise rewrite its argv, and the argv is how we
        # recognise it in /proc before signalling it.
        return (binary, "--port", str(port), "--bind", host, "--save", "",
                "--appendonly", "no", "--dir", str(self.stack_dir), "--set-proc-title", "no")


# --- Addresses and readiness probes -------------------------------------------------------------


def _broker_ports(settings: Settings) -> list[int]:
    """The ports of TAGSTREAM_BROKER's addresses, which must all be on loopback."""
    ports = []
    for server in (s for s in settings.broker_bootstrap.split(",") if s):
        parts = urlsplit(f"//{server}")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not parts.hostname or port is None:
            raise StackError(f"TAGSTREAM_BROKER={settings.broker!r} has no host:port, "
                             "e.g. kafka://127.0.0.1:9092")
        _require_loopback(parts.hostname, ENV_NAMES["broker"], settings.broker)
        ports.append(port)
    if not ports:
        raise StackError("TAGSTREAM_BROKER is empty; e.g. kafka://127.0.0.1:9092")
    return ports


def _redis_address(settings: Settings) -> tuple[str, int, int]:
    parts = urlsplit(settings.redis_url)
    if parts.scheme != "redis" or not parts.hostname:
        raise StackError(f"TAGSTREAM_REDIS_URL={settings.redis_url!r}: the local Redis takes "
                         "a redis://HOST:PORT/DB URL, e.g. redis://127.0.0.1:6379/0")
    try:
        port = parts.port or 6379
        db = int(parts.path.strip("/") or 0)
    except ValueError:
        raise StackError(f"TAGSTREAM_REDIS_URL={settings.redis_url!r} has a bad port or database "
                         "number, e.g. redis://127.0.0.1:6379/0") from None
    return parts.hostname, port, db


def _require_loopback(host: str, setting: str, value: str) -> None:
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise StackError(f"{setting}={value!r} is not a loopback address; the local "
                         "stack only runs on this machine (use 127.0.0.1), or run your own "
                         "servers instead (docker-compose.yml)")


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _broker_answers(bootstrap: str, brokers: int) -> Callable[[float], Awaitable[bool]]:
    """Answers once the node serves metadata that shows all `brokers` nodes registered."""
    async def answers(timeout: float) -> bool:
        from aiokafka import AIOKafkaClient

        host, _, port = bootstrap.rpartition(":")
        if not await _accepts_connections(host.strip("[]"), int(port), timeout):
            return False  # skips aiokafka's error log for a port nobody listens on yet
        client = AIOKafkaClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=max(100, int(timeout * 1000)))
        try:
            await asyncio.wait_for(client.bootstrap(), timeout)  # a Kafka metadata request
            return len(client.cluster.brokers()) >= brokers
        except Exception:
            return False
        finally:
            await client.close()

    return answers


def _redis_answers(host: str, port: int, db: int) -> Callable[[float], Awaitable[bool]]:
    async def answers(timeout: float) -> bool:
        import redis.asyncio
        import redis.exceptions
        from redis.asyncio.retry import Retry
        from redis.backoff import NoBackoff

        # One attempt: redis-py would otherwise retry a silent listener for many timeouts.
        client = redis.asyncio.Redis(host=host, port=port, db=db, socket_timeout=timeout,
                                     socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0))
        try:
            return bool(await asyncio.wait_for(client.ping(), timeout))
        except (redis.exceptions.RedisError, OSError, asyncio.TimeoutError):
            return False
        finally:
            await client.aclose()

    return answers


async def _accepts_connections(host: str, port: int, timeout: float) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def _wait_answering(component: _Component, record: ProcessRecord, deadline: float,
                          timeout: float) -> None:
    while True:
        probe = asyncio.ensure_future(
            component.answers(min(2.0, max(0.2, deadline - time.monotonic()))))
        try:
            while not probe.done():  # an exited process fails now, not when its probe times out
                if not is_running(record):
                    raise _exited_error(component, record)
                await asyncio.wait([probe], timeout=POLL_INTERVAL_S)
        finally:
            probe.cancel()
        if probe.result():
            return
        if time.monotonic() >= deadline:
            raise StackError(f"the {component.name} (pid {record.pid}) did not answer at "
                             f"{component.address} within {timeout:g} s; log {record.log}:\n"
                             f"{log_tail(record)}")
        await asyncio.sleep(POLL_INTERVAL_S * 4)


def _exited_error(component: _Component, record: ProcessRecord) -> StackError:
    reap(record.pid)
    if re.search(r"in use|BindException", log_tail(record, 200)):
        return _port_error(component)  # lost a race for the port after port_taken said free
    return StackError(f"the {component.name} (pid {record.pid}) exited before answering at "
                      f"{component.address}; log {record.log}:\n{log_tail(record)}")


def _port_error(component: _Component) -> StackError:
    return StackError(f"port {component.port} ({component.address}) is already in use by another "
                      f"process, so the local {component.name} cannot listen there; stop that "
                      f"process or choose a free port with {component.setting}")


async def _wait_all(waits: Iterable[Awaitable[None]]) -> None:
    await asyncio.gather(*waits)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` to completion from synchronous code, even if an event loop is running here."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = asyncio.run(coro)
        except BaseException as exc:  # handed back to the caller's thread below
            box["error"] = exc

    thread = threading.Thread(target=target, name="tagstream-stack-probe")
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["value"]
