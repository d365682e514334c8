"""The Apache Kafka broker as jars from Maven Central, run on the JDK: fetch, configure, format.

tagstream's demo, tests and bench run the same Kafka version as docker-compose.yml, from the
jars `pom.xml` (beside this file) names. `fetch()` copies them once into a cache inside the
checkout (`<checkout>/.kafka/<version>/lib`); each node of a local KRaft cluster is then a
`java -cp 'lib/*' kafka.Kafka server.properties` process whose log dirs were formatted once by
Kafka's storage tool. Every node is a combined broker and controller (KRaft), so a cluster of
one or three needs nothing else.

`python -m streams.tools.kafka_server fetch` is what the README's commands run; it needs `mvn` and
`java` (Debian: `apt-get install -y openjdk-17-jre-headless maven`).
"""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

from schemas.errors import TagstreamError

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
LOG4J_CONFIG = HERE / "log4j2.properties"
CHECKOUT = HERE.parents[2]  # streams/tools/kafka_server -> the checkout
DEFAULT_CACHE = CHECKOUT / ".kafka"
INSTALL_JAVA = "install them as root with: apt-get install -y openjdk-17-jre-headless maven"
# A local node's heap: the tests run up to four nodes at once on a 24 GiB, 2-core machine.
HEAP = ("-Xms128m", "-Xmx768m")
# What the local broker's log cleaner may read and write a second, all its threads together.
CLEANER_IO_BYTES_PER_S = 40 * 1024 * 1024
# How a local node's JVM compiles Kafka's code (TAGSTREAM_STACK_BROKER_JIT).
# "full": the JVM's default, tiered up to C2, as docker-compose.yml's production brokers run.
# For a node that works for minutes on end (the bench, `tagstream stack up`): at 20,000
# members and 500 live orders/s the broker took 31-34% of a core instead of 41-43% with C1.
# "client": C1 only, for the tests' brokers, which live minutes and mostly idle beside the
# workers on a few cores, where C2's compiling costs more CPU than its faster code saves
# (the 3-node leader-kill test 161 s -> 134 s, the run's CPU 3:53 -> 2:59).
JIT_FLAGS: dict[str, tuple[str, ...]] = {"full": (), "client": ("-XX:TieredStopAtLevel=1",)}


class KafkaServerError(TagstreamError):
    """The broker's jars or the JDK are missing, or a node cannot be formatted."""


def kafka_version() -> str:
    """The pinned Kafka version, read from pom.xml (the one place it is written)."""
    found = re.search(r"<kafka\.version>([^<]+)</kafka\.version>", POM.read_text())
    if found is None:
        raise KafkaServerError(f"{POM} names no <kafka.version>")
    return found.group(1)


def lib_dir(cache: Path = DEFAULT_CACHE) -> Path:
    return cache / kafka_version() / "lib"


def fetched(cache: Path = DEFAULT_CACHE) -> bool:
    """True once `fetch` has completed for the pinned version (it writes the stamp last)."""
    return (lib_dir(cache).parent / "fetched").is_file()


def fetch(cache: Path = DEFAULT_CACHE) -> Path:
    """Copy the broker's jars into the cache (a no-op when they are there); returns the lib dir."""
    lib = lib_dir(cache)
    if fetched(cache):
        return lib
    mvn = shutil.which("mvn")
    if mvn is None:
        raise KafkaServerError(f"Maven (mvn) is not installed, and it fetches the Kafka broker; "
                               f"{INSTALL_JAVA}")
    java_binary()  # fail now, not at the first start
    staging = lib.parent / "lib.partial"
    shutil.rmtree(staging, ignore_errors=True)
    argv = [mvn, "-B", "-q", "-f", str(POM),
            "dependency:copy-dependencies", f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime"]
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-3000:]
        raise KafkaServerError(f"fetching Kafka {kafka_version()} with Maven failed "
                               f"(exit {result.returncode}): {' '.join(argv)}\n{output}")
    shutil.rmtree(lib, ignore_errors=True)
    staging.replace(lib)
    (lib.parent / "fetched").write_text(f"{kafka_version()}\n")
    return lib


def java_binary() -> str:
    java = shutil.which("java")
    if java is None:
        raise KafkaServerError(f"Java is not installed, and the Kafka broker runs on it; "
                               f"{INSTALL_JAVA}")
    return java


def require_fetched(cache: Path = DEFAULT_CACHE) -> Path:
    if not fetched(cache):
        raise KafkaServerError(
            f"the Kafka {kafka_version()} broker is not in {cache}; fetch it once with "
            f"`{Path(sys.executable).name} -m streams.tools.kafka_server fetch` (the README's "
            "commands do this)")
    return lib_dir(cache)


def new_cluster_id(random_bytes: Callable[[], bytes] = lambda: uuid.uuid4().bytes) -> str:
    """A KRaft cluster id: a random UUID in Kafka's URL-safe base64 form (22 characters).

    Never one that starts with "-": the storage tool would read it as an option and refuse
    to format (Kafka's own Uuid.randomUuid() draws again for the same reason)."""
    while True:
        cluster_id = base64.urlsafe_b64encode(random_bytes()).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            return cluster_id


@dataclass(frozen=True)
class NodeConfig:
    """One combined broker+controller node of a local KRaft cluster on loopback."""

    node_id: int
    port: int  # clients
    controller_port: int
    data_dir: Path

    @property
    def properties_path(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def gc_log_path(self) -> Path:
        """The JVM's log of its collections: each pause, stamped with the wall clock."""
        return self.data_dir / "gc.log"


def server_properties(node: NodeConfig, voters: list[NodeConfig],
                      extra: Mapping[str, object] | None = None) -> str:
    """The node's server.properties. Replication of internal topics follows the cluster size;
    tagstream's own topics get theirs from TAGSTREAM_REPLICATION at creation. `extra` adds or
    overrides settings (the security tests' SASL listener)."""
    size = len(voters)
    replication = min(3, size)
    settings = {
        "process.roles": "broker,controller",
        "node.id": node.node_id,
        "controller.quorum.voters": ",".join(
            f"{v.node_id}@127.0.0.1:{v.controller_port}" for v in voters),
        "listeners": f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{node.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": node.log_dir,
        "num.partitions": 1,
        "default.replication.factor": replication,
        "min.insync.replicas": min(2, size),
        "offsets.topic.replication.factor": replication,
        # 50 partitions by default: each new group coordinator load then costs a test seconds.
        "offsets.topic.num.partitions": 8,
        "transaction.state.log.replication.factor": replication,
        "transaction.state.log.min.isr": min(2, size),
        # A group's first join is not held back waiting for more members.
        "group.initial.rebalance.delay.ms": 0,
        # A killed node is fenced, and its partitions led elsewhere, within a few seconds.
        "broker.session.timeout.ms": 6000,
        "broker.heartbeat.interval.ms": 1000,
        "replica.lag.time.max.ms": 10000,
        # Compacted topics (the member changelog) are cleaned soon after a
        # segment rolls, so a restart reads about one record per member.
        "log.segment.bytes": 64 * 1024 * 1024,
        "log.cleaner.backoff.ms": 5000,
        "log.cleaner.min.cleanable.ratio": 0.2,
        "log.cleaner.dedupe.buffer.size": 32 * 1024 * 1024,
        # The local broker shares its cores with the workers: this bounds the cleaner's
        # sustained rate. It cannot bound a pass shorter than 300 ms: Kafka's throttler checks
        # the rate every 300 ms since its last check, and after an idle gap that first check
        # sees a low rate, so a 40-64 MB pass still runs at ~220 MB/s. The price: after a
        # burst of writes it lags further behind, so a worker on a fresh disk reads more of
        # the changelog (docs/performance-log.md has both measured).
        "log.cleaner.io.max.bytes.per.second": CLEANER_IO_BYTES_PER_S,
        "num.network.threads": 2,
        "num.io.threads": 4,
        "num.recovery.threads.per.data.dir": 2,
        **(extra or {}),
    }
    return "".join(f"{key}={value}\n" for key, value in settings.items())


def node_argv(node: NodeConfig, cache: Path = DEFAULT_CACHE,
              jit: str = "full") -> tuple[str, ...]:
    """The command that runs `node`; `jit` is a key of JIT_FLAGS."""
    lib = require_fetched(cache)
    if jit not in JIT_FLAGS:
        raise KafkaServerError(f"unknown broker JIT {jit!r}: one of {', '.join(JIT_FLAGS)}")
    return (java_binary(), *HEAP, *JIT_FLAGS[jit], "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
            # as Kafka's own start script does: a stall can be told from a collection
            f"-Xlog:gc:file={node.gc_log_path}:time,uptime:filecount=2,filesize=20m",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
            "-cp", f"{lib}/*", "kafka.Kafka", str(node.properties_path))


def format_nodes(nodes: list[NodeConfig], cluster_id: str, cache: Path = DEFAULT_CACHE, *,
                 extra: Mapping[str, object] | None = None,
                 format_args: Sequence[str] = ()) -> None:
    """Write each node's server.properties and format its log dirs (once, before its first
    start; a formatted dir is left as it is). The storage tools run side by side: each is a
    JVM start. `format_args` go to the storage tool (e.g. `--add-scram` users)."""
    lib = require_fetched(cache)
    runs = []
    for node in nodes:
        node.data_dir.mkdir(parents=True, exist_ok=True)
        node.properties_path.write_text(server_properties(node, nodes, extra))
        argv = [java_binary(), "-Xmx256m", f"-Dlog4j2.configurationFile={LOG4J_CONFIG}",
                "-cp", f"{lib}/*", "kafka.tools.StorageTool", "format", "--ignore-formatted",
                "-t", cluster_id, "-c", str(node.properties_path), *format_args]
        runs.append((node, argv, subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                                  stdout=subprocess.PIPE,
                                                  stderr=subprocess.STDOUT, text=True)))
    for node, argv, run in runs:
        output, _ = run.communicate()
        if run.returncode != 0:
            raise KafkaServerError(f"formatting Kafka node {node.node_id} in {node.log_dir} "
                                   f"failed (exit {run.returncode}): {' '.join(argv)}\n{output}")


def main(argv: list[str]) -> int:
    if argv[:1] == ["fetch"]:
        try:
            print(fetch())
        except KafkaServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if argv[:1] == ["version"]:
        print(kafka_version())
        return 0
    print("usage: python -m streams.tools.kafka_server fetch | version", file=sys.stderr)
    return 2
