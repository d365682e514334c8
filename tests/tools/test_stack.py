"""The local stack (Apache Kafka in KRaft mode from jars, and Redis) starts on loopback, answers,
restarts only what is missing, keeps Kafka's data across down/up, and stops only what it started.

Most tests use the run's shared Kafka (tests/conftest.py) and a Redis of their own. The few that
need a Kafka of their own start it on free loopback ports under tmp_path and are marked slow:
each JVM start costs seconds, so one test walks the whole `tagstream stack` life cycle."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import redis
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from schemas.errors import TagstreamError
from streams.platform.admin import TopicError, ensure_topics
from streams.platform.settings import Settings
from streams.tools.kafka_server import CLEANER_IO_BYTES_PER_S, kafka_version
from streams.tools.processes import ProcessRecord, is_running, stop_process, write_record
from streams.tools.stack import LocalStack, StackError
from tests.support import REPO_ROOT, free_port, private_stack_settings
from tests.support.kafka import admin_client

pytestmark = pytest.mark.e2e

ROOT = REPO_ROOT
# Generous bounds for a client waiting on a broker that is up: they end a hung test, they time
# nothing.
CLIENT_WAIT_S = 60


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of ours that no stack may touch."""
    process = subprocess.Popen(["sleep", "600"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def records(stack: LocalStack) -> dict[str, ProcessRecord]:
    """The process records in the stack dir, by name ("broker-1", "redis")."""
    if not stack.stack_dir.is_dir():
        return {}
    found = {path.stem: stack.record(path.stem) for path in stack.stack_dir.glob("*.json")}
    return {name: record for name, record in found.items() if record is not None}


def pids(stack: LocalStack) -> dict[str, int]:
    return {name: record.pid for name, record in records(stack).items()}


def gone(pid: int) -> bool:
    """The process has exited (it may wait, a zombie, for its parent to collect it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def cli(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """`tagstream <args>` in a child process configured by `settings`' environment."""
    result = subprocess.run([sys.executable, "-m", "streams.ops.cli", *args], cwd=ROOT,
                            env={**os.environ, **settings.to_env()}, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True)
    assert result.returncode == 0, f"tagstream {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


async def produce(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await producer.stop()


async def first_message(bootstrap: str, topic: str) -> tuple[bytes | None, bytes | None]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition(topic, 0)])
        message = await asyncio.wait_for(consumer.getone(), CLIENT_WAIT_S)
    finally:
        await consumer.stop()
    return message.key, message.value


async def topic_names(bootstrap: str) -> set[str]:
    async with admin_client(bootstrap) as admin:
        return {name for name in await admin.list_topics() if not name.startswith("__")}


def redis_set_get(settings: Settings, key: str, value: str) -> bytes | None:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        client.set(key, value)
        return client.get(key)
    finally:
        client.close()


# --- the whole life cycle, through the CLI, on a Kafka of its own --------------------------------


@pytest.mark.slow
def test_stack_up_status_partial_restart_down_up_and_fresh(
        tmp_path: Path, bystander: subprocess.Popen[bytes]) -> None:
    settings = private_stack_settings(tmp_path)
    local = LocalStack(settings)
    try:
        # `stack up`: one KRaft node and Redis, on loopback, both answering.
        cli(settings, "stack", "up")
        started = pids(local)
        assert set(started) == {"broker-1", "redis"}
        # the tests' settings ask for the client JIT (TAGSTREAM_STACK_BROKER_JIT)
        assert "-XX:TieredStopAtLevel=1" in records(local)["broker-1"].argv
        bootstrap = settings.broker_bootstrap
        asyncio.run(ensure_topics(bootstrap, {"smoke": 1}))
        asyncio.run(produce(bootstrap, "smoke", b"M000001", b"hello"))
        assert asyncio.run(first_message(bootstrap, "smoke")) == (b"M000001", b"hello")
        assert redis_set_get(settings, "tagstream:smoke", "ok") == b"ok"

        # `stack status --json`: exactly these keys, with the pids of live processes.
        status = json.loads(cli(settings, "stack", "status", "--json").stdout)
        assert set(status) == {"brokers", "redis", "bootstrap", "kafka_version"}
        [broker] = status["brokers"]
        assert set(broker) == {"node_id", "pid", "port", "alive", "answering", "log"}
        assert (broker["node_id"], broker["pid"], broker["port"]) == (
            1, started["broker-1"], int(bootstrap.rpartition(":")[2]))
        assert broker["alive"] and broker["answering"]
        assert set(status["redis"]) == {"pid", "port", "alive", "answering", "log"}
        assert status["redis"]["pid"] == started["redis"]
        assert status["redis"]["alive"] and status["redis"]["answering"]
        assert status["bootstrap"] == f"kafka://{bootstrap}" == settings.broker
        assert status["kafka_version"] == kafka_version()
        assert not any(gone(pid) for pid in started.values())

        # A second `up` with everything running changes nothing.
        cli(settings, "stack", "up")
        assert pids(local) == started

        # Redis stopped: `up` starts only Redis.
        assert stop_process(local.record("redis"))
        assert local.status()["redis"]["alive"] is False
        cli(settings, "stack", "up")
        restarted = pids(local)
        assert restarted["broker-1"] == started["broker-1"]
        assert restarted["redis"] != started["redis"] and not gone(restarted["redis"])

        # The Kafka node stopped: `up` starts only that node, with its data.
        assert stop_process(local.record("broker-1"))
        assert local.status()["brokers"][0]["alive"] is False
        cli(settings, "stack", "up")
        again = pids(local)
        assert again["redis"] == restarted["redis"]
        assert again["broker-1"] != restarted["broker-1"] and not gone(again["broker-1"])
        assert asyncio.run(first_message(bootstrap, "smoke")) == (b"M000001", b"hello")

        # The stack dir holds a one-node cluster: three nodes need a fresh start.
        with pytest.raises(StackError, match=r"--fresh --brokers 3"):
            local.up(3)
        assert pids(local) == again

        # `stack down` stops exactly what was started, and nothing else.
        stopped = cli(settings, "stack", "down").stdout
        assert stopped.strip() == (f"stopped: broker-1 (pid {again['broker-1']}), "
                                   f"redis (pid {again['redis']})")
        assert all(gone(pid) for pid in again.values())
        assert records(local) == {}
        assert bystander.poll() is None
        assert "nothing was running" in cli(settings, "stack", "down").stdout

        # Data survives down/up: the topic and its message are there.
        cli(settings, "stack", "up")
        assert asyncio.run(first_message(bootstrap, "smoke")) == (b"M000001", b"hello")

        # up(fresh=True) starts an empty cluster (and stops the running one first).
        before_fresh = pids(local)
        local.up(fresh=True)
        assert all(gone(pid) for pid in before_fresh.values())
        assert "smoke" not in asyncio.run(topic_names(bootstrap))
        assert set(pids(local)) == {"broker-1", "redis"}
    finally:
        local.down()
    assert bystander.poll() is None


@pytest.mark.slow
@pytest.mark.parametrize("checked_first", [True, False], ids=["taken", "taken-after-the-check"])
def test_a_taken_kafka_port_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             checked_first: bool) -> None:
    """Refused before starting, or (a port taken after the check) the node starts, cannot
    bind and exits: either way up names the setting and stops whatever it started."""
    if not checked_first:
        monkeypatch.setattr("streams.tools.stack.port_taken", lambda host, port: False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = dataclasses.replace(private_stack_settings(tmp_path),
                                       broker=f"kafka://127.0.0.1:{port}")
        stack = LocalStack(settings)
        try:
            with pytest.raises(StackError, match=rf"port {port}\b.*TAGSTREAM_BROKER"):
                stack.up()
            assert records(stack) == {}
        finally:
            stack.down()


def test_missing_kafka_jars_say_how_to_fetch_them(tmp_path: Path) -> None:
    settings = private_stack_settings(tmp_path)
    stack = LocalStack(settings, cache=tmp_path / "empty-cache")
    try:
        with pytest.raises(TagstreamError,
                           match=r"python3?(\.\d+)? -m streams\.tools\.kafka_server fetch"):
            stack.up()
        assert records(stack) == {}
        assert stack.layout() is None
    finally:
        stack.down()


def test_a_non_loopback_broker_is_refused(tmp_path: Path) -> None:
    settings = dataclasses.replace(private_stack_settings(tmp_path),
                                   broker="kafka://kafka.example.com:9092")
    with pytest.raises(StackError, match="TAGSTREAM_BROKER.*loopback"):
        LocalStack(settings).up()


# --- the shared Kafka, and a Redis of the test's own --------------------------------------------


async def test_broker_and_redis_answer(stack: Settings) -> None:
    topic = f"{stack.topic_namespace}smoke"
    await ensure_topics(stack.broker_bootstrap, {topic: 1})
    await produce(stack.broker_bootstrap, topic, b"M000001", b"hello")
    assert await first_message(stack.broker_bootstrap, topic) == (b"M000001", b"hello")

    client = redis.asyncio.Redis.from_url(stack.redis_url)
    try:
        await client.set("tagstream:smoke", "ok")
        assert await client.get("tagstream:smoke") == b"ok"
    finally:
        await client.aclose()


def test_status_reports_running_components(shared_kafka: LocalStack,
                                           local_redis: LocalStack) -> None:
    local_redis.up()
    kafka_status = shared_kafka.status()
    [broker] = kafka_status["brokers"]
    assert broker["pid"] == shared_kafka.record("broker-1").pid
    assert broker["alive"] and broker["answering"]
    assert kafka_status["bootstrap"] == shared_kafka.client_settings().broker
    assert "redis" not in kafka_status  # the shared Kafka's controller manages no Redis

    redis_status = local_redis.status()
    assert set(redis_status) == {"redis"}
    assert redis_status["redis"]["pid"] == local_redis.record("redis").pid
    assert redis_status["redis"]["alive"] and redis_status["redis"]["answering"]


def test_up_twice_is_a_no_op(local_redis: LocalStack) -> None:
    local_redis.up()
    first = records(local_redis)
    local_redis.up()
    assert records(local_redis) == first


def test_up_restarts_only_a_component_that_died(local_redis: LocalStack) -> None:
    local_redis.up()
    first = local_redis.record("redis")
    assert stop_process(first)
    local_redis.up()
    second = local_redis.record("redis")
    assert second.pid != first.pid
    assert local_redis.status()["redis"]["answering"]


def test_a_component_that_does_not_answer_fails_up_with_its_log(
        local_redis: LocalStack) -> None:
    local_redis.up()
    redis_pid = local_redis.record("redis").pid
    os.kill(redis_pid, signal.SIGSTOP)  # alive, recorded, but answering nothing
    try:
        with pytest.raises(StackError, match=r"(?s)redis .*did not answer.*within 1 s.*"
                                             r"Ready to accept connections"):
            local_redis.up(timeout=1)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    # This up did not start that Redis, so it leaves it running and recorded.
    assert local_redis.record("redis").pid == redis_pid


def test_a_running_component_with_other_settings_is_an_error(
        local_redis: LocalStack, stack_settings: Settings) -> None:
    local_redis.up()
    recorded = local_redis.record("redis")
    moved = dataclasses.replace(stack_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(StackError, match=rf"(?s)redis recorded in .*pid {recorded.pid}.*"
                                         r"other settings.*stack down"):
        LocalStack(moved, kafka=False).up()
    assert local_redis.record("redis") == recorded
    assert is_running(recorded)


def test_down_stops_exactly_the_recorded_processes(
        local_redis: LocalStack, bystander: subprocess.Popen[bytes]) -> None:
    local_redis.up()
    started = local_redis.record("redis")

    stopped = local_redis.down()

    assert stopped == [f"redis (pid {started.pid})"]
    assert gone(started.pid)
    assert records(local_redis) == {}
    assert bystander.poll() is None
    assert local_redis.down() == []


def test_a_redis_controller_leaves_the_kafka_records_alone(
        shared_kafka: LocalStack) -> None:
    """A Redis-only stack on the shared Kafka's stack dir stops no Kafka node."""
    broker = shared_kafka.record("broker-1")
    assert LocalStack(shared_kafka.settings, kafka=False).down() == []
    assert shared_kafka.record("broker-1") == broker and is_running(broker)


def test_context_manager_stops_the_stack(stack_settings: Settings) -> None:
    with LocalStack(stack_settings, kafka=False) as stack:
        started = records(stack)
        assert set(started) == {"redis"}
        assert stack.status()["redis"]["answering"]
    assert all(gone(record.pid) for record in started.values())


def test_down_never_signals_a_pid_that_runs_something_else(
        local_redis: LocalStack, bystander: subprocess.Popen[bytes]) -> None:
    local_redis.up()
    started = local_redis.record("redis")
    record_path = local_redis.stack_dir / "redis.json"
    # Redis's pid, as if recycled: now it names the bystander, whose cmdline differs.
    write_record(record_path, dataclasses.replace(started, pid=bystander.pid))
    try:
        assert local_redis.down() == []
        assert bystander.poll() is None
        assert not record_path.exists()
    finally:
        stop_process(started)


def test_a_same_command_with_another_start_time_is_not_ours(
        bystander: subprocess.Popen[bytes], tmp_path: Path) -> None:
    argv = tuple(Path(f"/proc/{bystander.pid}/cmdline").read_bytes().decode().split("\0")[:-1])
    ours = ProcessRecord(pid=bystander.pid, argv=argv, started_at="", proc_start=0,
                         log=str(tmp_path / "none.log"), log_offset=0)

    assert not is_running(ours)
    assert stop_process(ours) is False
    assert bystander.poll() is None


def test_a_taken_redis_port_is_a_clear_error(stack_settings: Settings) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = dataclasses.replace(stack_settings, redis_url=f"redis://127.0.0.1:{port}/0")
        stack = LocalStack(settings, kafka=False)
        try:
            with pytest.raises(StackError, match=rf"port {port}\b.*TAGSTREAM_REDIS_URL"):
                stack.up()
            assert records(stack) == {}
        finally:
            stack.down()


def test_a_redis_port_taken_after_the_check_is_a_clear_error(
        stack_settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("streams.tools.stack.port_taken", lambda host, port: False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        settings = dataclasses.replace(stack_settings, redis_url=f"redis://127.0.0.1:{port}/0")
        stack = LocalStack(settings, kafka=False)
        try:
            with pytest.raises(StackError, match=rf"port {port}\b.*TAGSTREAM_REDIS_URL"):
                stack.up()
            assert records(stack) == {}
        finally:
            stack.down()


def test_missing_redis_server_says_how_to_install_it(
        local_redis: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"apt-get install -y redis-server"):
        local_redis.up()
    assert records(local_redis) == {}


# --- topics on the shared Kafka ------------------------------------------------------------------


async def configs(admin: AIOKafkaAdminClient, resource: ConfigResource) -> dict[str, Any]:
    """The named configs of a topic or broker as the cluster reports them."""
    [response] = await admin.describe_configs([resource])
    found: dict[str, Any] = {}
    for described in response.to_object()["resources"]:
        assert described["error_code"] == 0, described
        found.update({entry["config_names"]: entry["config_value"]
                      for entry in described["config_entries"]})
    return found


async def describe(bootstrap: str, topic: str) -> tuple[list[int], str]:
    """(replication factor of each partition, the topic's min.insync.replicas)."""
    async with admin_client(bootstrap) as admin:
        [found] = await admin.describe_topics([topic])
        topic_configs = await configs(admin, ConfigResource(
            ConfigResourceType.TOPIC, topic, {"min.insync.replicas": None}))
    replicas = [len(p["replicas"]) for p in sorted(found["partitions"],
                                                   key=lambda p: p["partition"])]
    return replicas, topic_configs["min.insync.replicas"]


async def test_the_local_brokers_log_cleaner_is_throttled(stack_settings: Settings) -> None:
    """Asked of the running broker: a misspelt key is ignored with a warning, and the cleaner
    would again take a whole core in bursts beside the workers."""
    first_node = "1"  # a local stack numbers its nodes from 1
    async with admin_client(stack_settings.broker_bootstrap) as admin:
        found = await configs(admin, ConfigResource(
            ConfigResourceType.BROKER, first_node,
            {"log.cleaner.io.max.bytes.per.second": None}))
    assert float(found["log.cleaner.io.max.bytes.per.second"]) == CLEANER_IO_BYTES_PER_S


async def test_topics_on_three_nodes_are_replicated_three_times_with_min_isr_2(
        cluster_stack: Settings) -> None:
    topic = f"{cluster_stack.topic_namespace}replicated"
    assert len(cluster_stack.broker_bootstrap.split(",")) == 3

    assert await ensure_topics(cluster_stack.broker_bootstrap, {topic: 2}, 0) == 3

    assert await describe(cluster_stack.broker_bootstrap, topic) == ([3, 3], "2")


async def test_topics_on_a_single_node_are_not_replicated(stack: Settings) -> None:
    topic = f"{stack.topic_namespace}single"

    assert await ensure_topics(stack.broker_bootstrap, {topic: 2}, 0) == 1

    assert await describe(stack.broker_bootstrap, topic) == ([1, 1], "1")


async def test_ensure_topics_creates_the_requested_partitions(stack: Settings) -> None:
    ns = stack.topic_namespace
    wanted = {f"{ns}events.orders": 4, f"{ns}tags.changes": 1, f"{ns}events.scans": 8}
    await ensure_topics(stack.broker_bootstrap, wanted)
    await ensure_topics(stack.broker_bootstrap, wanted)  # existing topics are fine

    async with admin_client(stack.broker_bootstrap) as admin:
        found = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    assert {name: count for name, count in found.items() if name.startswith(ns)} == wanted


async def test_ensure_topics_refuses_an_existing_topic_with_other_partitions(
        stack: Settings) -> None:
    topic = f"{stack.topic_namespace}events.orders"
    await ensure_topics(stack.broker_bootstrap, {topic: 4})
    with pytest.raises(TopicError, match="4 partitions, not the 2 required"):
        await ensure_topics(stack.broker_bootstrap, {topic: 2})


async def test_end_offsets_count_every_record_of_the_last_batch(stack: Settings) -> None:
    """A partition's end is after the last record of its last batch (the embedded broker this
    stack replaced reported the last batch's first offset + 1, and Faust's table recovery
    stopped short); the workers' recovery relies on it."""
    topic = f"{stack.topic_namespace}end-offsets-probe"
    await ensure_topics(stack.broker_bootstrap, {topic: 2}, 1)
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker_bootstrap)
    await producer.start()
    try:
        for count in (10, 5):  # two batches on partition 0; partition 1 stays empty
            batch = producer.create_batch()
            for n in range(count):
                batch.append(key=b"k", value=b"%d" % n, timestamp=None)
            await (await producer.send_batch(batch, topic, partition=0))
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.broker_bootstrap)
    await consumer.start()
    try:
        ends = await consumer.end_offsets([TopicPartition(topic, 0), TopicPartition(topic, 1)])
    finally:
        await consumer.stop()
    assert ends == {TopicPartition(topic, 0): 15, TopicPartition(topic, 1): 0}


_HELD_TEST = textwrap.dedent("""
    import os
    import time
    from pathlib import Path

    import pytest

    from streams.tools.stack import LocalStack
    from tests.support import private_stack_settings


    @pytest.fixture
    def redis_stack(tmp_path):
        with LocalStack(private_stack_settings(tmp_path), kafka=False) as stack:
            yield stack


    def test_held(redis_stack):
        Path(os.environ["REDIS_PID_FILE"]).write_text(str(redis_stack.record("redis").pid))
        time.sleep(600)
""")


def test_a_test_run_ended_by_sigterm_stops_the_servers_its_fixtures_started(
        tmp_path: Path) -> None:
    """A run that `timeout` or a CI job's time limit ends with SIGTERM left its Kafka nodes
    and Redis running, in sessions of their own. The suite's conftest now turns SIGTERM into
    the interrupt on which pytest tears its fixtures down. Checked on a child run whose test
    holds a Redis from a fixture."""
    held = tmp_path / "test_held.py"
    held.write_text(_HELD_TEST)
    pid_file = tmp_path / "redis.pid"
    run = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q",
         str(held)], cwd=ROOT, env={**os.environ, "REDIS_PID_FILE": str(pid_file)},
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    redis_pid = None
    try:
        deadline = time.monotonic() + CLIENT_WAIT_S
        while not pid_file.exists() or not pid_file.read_text():
            assert run.poll() is None, run.communicate()[0].decode()[-3000:]
            assert time.monotonic() < deadline, "the child run never held its Redis"
            time.sleep(0.1)
        redis_pid = int(pid_file.read_text())
        assert not gone(redis_pid)
        run.send_signal(signal.SIGTERM)
        output = run.communicate(timeout=CLIENT_WAIT_S)[0].decode()
        assert gone(redis_pid), output[-3000:]
        assert run.returncode == pytest.ExitCode.INTERRUPTED, output[-3000:]
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if redis_pid is not None and not gone(redis_pid):
            os.kill(redis_pid, signal.SIGKILL)  # the Redis this test's child started
