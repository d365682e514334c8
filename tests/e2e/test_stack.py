"""The embedded stack starts a broker and Redis that answer, and stops only what it started."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
from pathlib import Path
from typing import Iterator

import pytest
import redis.asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.admin import TopicError, ensure_topics
from streams.settings import Settings
from streams.stack import (EmbeddedStack, ProcessRecord, StackError, is_running, read_record,
                           stop_process, write_record)

pytestmark = pytest.mark.e2e


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """An unrelated process of ours that no stack may touch."""
    process = subprocess.Popen(["sleep", "60"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


def records(stack: EmbeddedStack) -> dict[str, ProcessRecord]:
    found = {name: read_record(stack.stack_dir / f"{name}.json") for name in ("broker", "redis")}
    return {name: record for name, record in found.items() if record is not None}


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_broker_and_redis_answer(stack: Settings) -> None:
    await ensure_topics(stack.broker_bootstrap, {"smoke": 1})
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait("smoke", b"hello", key=b"M000001")
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.broker_bootstrap,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([TopicPartition("smoke", 0)])
        message = await consumer.getone()
    finally:
        await consumer.stop()
    assert (message.key, message.value) == (b"M000001", b"hello")

    client = redis.asyncio.Redis.from_url(stack.redis_url)
    try:
        await client.set("tagstream:smoke", "ok")
        assert await client.get("tagstream:smoke") == b"ok"
    finally:
        await client.aclose()


def test_status_reports_running_components(embedded_stack: EmbeddedStack) -> None:
    embedded_stack.up()
    status = embedded_stack.status()
    started = records(embedded_stack)
    for name in ("broker", "redis"):
        assert status[name]["pid"] == started[name].pid
        assert status[name]["alive"] and status[name]["answering"]
    assert status["broker"]["address"] == embedded_stack.settings.broker_bootstrap


def test_up_twice_is_a_no_op(embedded_stack: EmbeddedStack) -> None:
    embedded_stack.up()
    first = records(embedded_stack)
    embedded_stack.up()
    assert records(embedded_stack) == first


def test_up_restarts_only_a_component_that_died(embedded_stack: EmbeddedStack) -> None:
    embedded_stack.up()
    first = records(embedded_stack)
    assert stop_process(first["broker"])
    embedded_stack.up()
    second = records(embedded_stack)
    assert second["redis"] == first["redis"]
    assert second["broker"].pid != first["broker"].pid
    assert embedded_stack.status()["broker"]["answering"]


def test_a_component_that_does_not_answer_fails_up_with_its_log(
        embedded_stack: EmbeddedStack) -> None:
    embedded_stack.up()
    redis_pid = records(embedded_stack)["redis"].pid
    os.kill(redis_pid, signal.SIGSTOP)  # alive, recorded, but answering nothing
    try:
        with pytest.raises(StackError, match=r"(?s)redis .*did not answer.*within 1 s.*"
                                             r"Ready to accept connections"):
            embedded_stack.up(timeout=1)
    finally:
        os.kill(redis_pid, signal.SIGCONT)
    # This up did not start that Redis, so it leaves it running and recorded.
    assert records(embedded_stack)["redis"].pid == redis_pid


def test_down_stops_exactly_the_recorded_processes(
        embedded_stack: EmbeddedStack, bystander: subprocess.Popen[bytes]) -> None:
    embedded_stack.up()
    started = records(embedded_stack)

    stopped = embedded_stack.down()

    assert stopped == [f"broker (pid {started['broker'].pid})",
                       f"redis (pid {started['redis'].pid})"]
    assert all(gone(record.pid) for record in started.values())
    assert records(embedded_stack) == {}
    assert bystander.poll() is None
    assert embedded_stack.down() == []


def test_context_manager_stops_the_stack(stack_settings: Settings) -> None:
    with EmbeddedStack(stack_settings) as stack:
        started = records(stack)
        assert stack.status()["redis"]["answering"]
    assert all(gone(record.pid) for record in started.values())


def test_down_never_signals_a_pid_that_runs_something_else(
        embedded_stack: EmbeddedStack, bystander: subprocess.Popen[bytes]) -> None:
    embedded_stack.up()
    started = records(embedded_stack)
    record_path = embedded_stack.stack_dir / "broker.json"
    # The broker's pid, as if recycled: now it names the bystander, whose cmdline differs.
    write_record(record_path, dataclasses.replace(started["broker"], pid=bystander.pid))
    try:
        assert embedded_stack.down() == [f"redis (pid {started['redis'].pid})"]
        assert bystander.poll() is None
        assert not record_path.exists()
    finally:
        stop_process(started["broker"])


def test_a_same_command_with_another_start_time_is_not_ours(
        bystander: subprocess.Popen[bytes], tmp_path: Path) -> None:
    argv = tuple(Path(f"/proc/{bystander.pid}/cmdline").read_bytes().decode().split("\0")[:-1])
    ours = ProcessRecord(pid=bystander.pid, argv=argv, started_at="", proc_start=0,
                         log=str(tmp_path / "none.log"), log_offset=0)

    assert not is_running(ours)
    assert stop_process(ours) is False
    assert bystander.poll() is None


@pytest.mark.parametrize("component, setting", [("broker", "TAGSTREAM_BROKER"),
                                                ("redis", "TAGSTREAM_REDIS_URL")])
def test_a_taken_port_is_a_clear_error(stack_settings: Settings, component: str,
                                       setting: str) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        if component == "broker":
            settings = dataclasses.replace(stack_settings, broker=f"kafka://127.0.0.1:{port}")
        else:
            settings = dataclasses.replace(stack_settings, redis_url=f"redis://127.0.0.1:{port}/0")
        stack = EmbeddedStack(settings)
        try:
            with pytest.raises(StackError, match=rf"port {port}\b.*{setting}"):
                stack.up()
            assert records(stack) == {}
        finally:
            stack.down()


@pytest.mark.parametrize("component, setting", [("broker", "TAGSTREAM_BROKER"),
                                                ("redis", "TAGSTREAM_REDIS_URL")])
def test_a_port_taken_after_the_check_is_a_clear_error(
        stack_settings: Settings, monkeypatch: pytest.MonkeyPatch, component: str,
        setting: str) -> None:
    monkeypatch.setattr("streams.stack.port_taken", lambda host, port: False)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        if component == "broker":
            settings = dataclasses.replace(stack_settings, broker=f"kafka://127.0.0.1:{port}")
        else:
            settings = dataclasses.replace(stack_settings, redis_url=f"redis://127.0.0.1:{port}/0")
        stack = EmbeddedStack(settings)
        try:
            with pytest.raises(StackError, match=rf"port {port}\b.*{setting}"):
                stack.up()
            assert records(stack) == {}
        finally:
            stack.down()


def test_missing_redis_server_says_how_to_install_it(
        embedded_stack: EmbeddedStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(StackError, match=r"apt-get install -y redis-server"):
        embedded_stack.up()
    assert records(embedded_stack) == {}


def test_a_non_loopback_broker_is_refused(stack_settings: Settings) -> None:
    settings = dataclasses.replace(stack_settings, broker="kafka://kafka.example.com:9092")
    with pytest.raises(StackError, match="TAGSTREAM_BROKER.*loopback"):
        EmbeddedStack(settings).up()


async def test_ensure_topics_creates_the_requested_partitions(stack: Settings) -> None:
    wanted = {"events.orders": 4, "tags.changes": 1, "events.scans": 8}
    await ensure_topics(stack.broker_bootstrap, wanted)
    await ensure_topics(stack.broker_bootstrap, wanted)  # existing topics are fine

    admin = AIOKafkaAdminClient(bootstrap_servers=stack.broker_bootstrap)
    await admin.start()
    try:
        found = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics()}
    finally:
        await admin.close()
    assert found == wanted


async def test_ensure_topics_refuses_an_existing_topic_with_other_partitions(
        stack: Settings) -> None:
    await ensure_topics(stack.broker_bootstrap, {"events.orders": 4})
    with pytest.raises(TopicError, match="4 partitions, not the 2 required"):
        await ensure_topics(stack.broker_bootstrap, {"events.orders": 2})


async def test_end_offsets_count_every_record_of_the_last_batch(stack: Settings) -> None:
    """Regression: the embedded broker reports a partition's end as its last batch's first
    offset + 1, so Faust's table recovery stopped short of the last batch's other records
    (members went back to an older state after a rebalance). streams.compat corrects it."""
    import streams.compat  # noqa: F401 - the correction under test

    topic = "end-offsets-probe"
    await ensure_topics(stack.broker_bootstrap, {topic: 2}, 1)
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker_bootstrap)
    await producer.start()
    try:
        for records in (10, 5):  # two batches on partition 0; partition 1 stays empty
            batch = producer.create_batch()
            for n in range(records):
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
