"""Secrets stay secret in running processes: worker and Redis sink logs, error messages and
every topic hold none of them; SASL and Redis passwords reach the servers from settings.

The SASL tests run a Kafka of their own (one JVM for the module) whose client listener requires
a SASL login, with PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 enabled and one user known to each
(tests/support/sasl_kafka.py). With the right password a worker logs in, creates its topics and
tags an event; with a wrong one it exits with an error that names the user and mechanism. Neither
ever prints the password.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

import orjson
import pytest
import redis.asyncio
import redis.exceptions
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.ops.replay import produce_raw
from streams.platform.kafka_clients import partitions_of
from streams.platform.security import kafka_client_kwargs, redis_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import topic_names
from streams.serving.redis_store import RedisProfileStore
from streams.tools.processes import ChildProcess
from tests.factories import raw_event
from tests.support import free_port
from tests.support.kafka import (WorkerProcess, admin_client, at_least, create_topics,
                                 read_topic, running_worker)
from tests.support.sasl_kafka import MECHANISMS, SaslKafka, sasl_kafka

pytestmark = pytest.mark.e2e
CST = timezone(timedelta(hours=8))

WECOM_SECRET = "WECOM-SECRET-e2e-4Hq7"
REDIS_PASSWORD = "REDIS-PASSWORD-e2e-8Jw2"
URL_PASSWORD = "URL-PASSWORD-e2e-1Xc5"
SASL_PASSWORD = "SASL-PASSWORD-e2e-6Fr3"
WRONG_SASL_PASSWORD = "WRONG-SASL-PASSWORD-e2e-2Kd9"
API_TOKEN = "API-TOKEN-e2e-0123456789abcdef"
SECRETS = (WECOM_SECRET, REDIS_PASSWORD, URL_PASSWORD, SASL_PASSWORD, API_TOKEN)
SASL_USER = "tagstream-worker"


def assert_no_secret(text: str, where: str) -> None:
    leaked = [secret for secret in SECRETS if secret in text]
    assert not leaked, f"{where} shows {leaked}"


async def all_records(bootstrap: str) -> list[bytes]:
    """Key and value of every record on every topic, up to the current end offsets."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    found: list[bytes] = []
    try:
        # All topics' metadata, fetched apart: a consumer subscribed to nothing knows none.
        cluster = await consumer._client.fetch_all_metadata()  # noqa: SLF001
        partitions = [TopicPartition(topic, p) for topic in cluster.topics()
                      for p in cluster.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        deadline = time.monotonic() + 60
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, "could not read every topic to its end"
            batch = await consumer.getmany(timeout_ms=500)
            found.extend((m.key or b"") + b" " + (m.value or b"")
                         for messages in batch.values() for m in messages)
    finally:
        await consumer.stop()
    return found


async def test_running_worker_shows_no_secret_in_logs_or_topics(stack, tmp_path):
    settings = dataclasses.replace(
        stack, wecom_corp_id="ww-corp", wecom_secret=WECOM_SECRET, redis_password=REDIS_PASSWORD,
        redis_url=stack.redis_url.replace("redis://", f"redis://tagstream:{URL_PASSWORD}@"),
        api_tokens=f"{API_TOKEN}=zhangsan", log_level="debug")
    now = datetime.now(CST).replace(microsecond=0)
    good = raw_event("order.paid", (now - timedelta(hours=1)).isoformat(), member="MS1",
                     amount_fen=700_000)
    bad = [b"not json", b"\xff\xfe", orjson.dumps({**good, "amount_fen": "lots"}),
           orjson.dumps({**good, "occurred_at": "0001-01-01T00:00:00+14:00"})]
    names = topic_names(settings)
    await create_topics(settings)
    with running_worker(settings, tmp_path, name="secret-worker") as worker:
        await produce_raw(settings.broker_bootstrap, names.orders,
                          [(b"MS1", orjson.dumps(good))] + [(b"MS1", value) for value in bad])
        await read_topic(settings.broker_bootstrap, names.tag_changes, worker=worker,
                         until=at_least(1), timeout=60)
        letters = await read_topic(settings.broker_bootstrap, names.deadletter, worker=worker,
                                   until=at_least(len(bad)), timeout=60)
        assert len(letters) == len(bad)
    log = worker.log_path.read_text(errors="replace")
    assert "dead-lettered" in log  # debug logging was on and the worker did its work
    assert_no_secret(log, "the worker log")
    for record in await all_records(settings.broker_bootstrap):
        assert_no_secret(record.decode("utf-8", "replace"), "a Kafka record")


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslKafka]:
    """The module's Kafka whose client listener requires SASL (PLAIN or SCRAM), user
    SASL_USER with SASL_PASSWORD."""
    with sasl_kafka(tmp_path_factory.mktemp("sasl-kafka"), SASL_USER, SASL_PASSWORD) as kafka:
        yield kafka


_sasl_numbers = itertools.count(1)


def sasl_settings(kafka: SaslKafka, tmp_path: Path, mechanism: str,
                  password: str = SASL_PASSWORD) -> Settings:
    """A worker's settings on the SASL broker, with a topic namespace and app id of its own."""
    number = next(_sasl_numbers)
    base = dataclasses.replace(
        Settings(), topic_namespace=f"sasl{number}.", app_id=f"tagstream-sasl{number}",
        wecom_corp_id="ww-corp", wecom_secret=WECOM_SECRET, log_level="debug",
        web_port=free_port(), data_dir=tmp_path / "data")
    return kafka.settings(base, mechanism, password)


async def first_record(settings: Settings, topic: str, worker: WorkerProcess) -> Any:
    """The first record of `topic`, read by a consumer that logs in like the worker; fails if
    the worker dies first, or nothing comes within two minutes."""
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.broker_bootstrap,
                                enable_auto_commit=False, **kafka_client_kwargs(settings))
    await consumer.start()
    try:
        partitions = await partitions_of(consumer, [topic])
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for messages in batch.values():
                if messages:
                    return messages[0]
            assert worker.alive(), f"worker died:\n{worker.log_tail()}"
        raise AssertionError(f"nothing on {topic}; the worker's log:\n{worker.log_tail()}")
    finally:
        await consumer.stop()


async def sasl_topics(settings: Settings) -> set[str]:
    """Every topic's name, listed by a client that logs in like the worker."""
    async with admin_client(settings.broker_bootstrap, **kafka_client_kwargs(settings)) as admin:
        return set(await admin.list_topics())


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_worker_logs_in_over_sasl_tags_an_event_and_never_prints_the_password(
        sasl_broker, tmp_path, mechanism):
    settings = sasl_settings(sasl_broker, tmp_path, mechanism)
    names = topic_names(settings)
    now = datetime.now(CST).replace(microsecond=0)
    event = raw_event("order.paid", (now - timedelta(hours=1)).isoformat(), member="MS1",
                      amount_fen=700_000)
    # No topics are created beforehand: the worker creates them, logged in as the user.
    with running_worker(settings, tmp_path, name=f"sasl-worker-{mechanism}") as worker:
        deadline = time.monotonic() + 120
        while not set(names.all) <= await sasl_topics(settings):
            assert worker.alive(), f"worker died:\n{worker.log_tail()}"
            assert time.monotonic() < deadline, f"no topics created:\n{worker.log_tail()}"
            await asyncio.sleep(0.5)
        await produce_raw(settings.broker_bootstrap, names.orders,
                          [(b"MS1", orjson.dumps(event))], security=kafka_client_kwargs(settings))
        change = await first_record(settings, names.tag_changes, worker)
    assert orjson.loads(change.value)["member_id"] == "MS1"
    log = worker.log_path.read_text(errors="replace")
    assert f"Authenticated as {SASL_USER} via {mechanism}" in log, log  # aiokafka's line
    assert "Traceback" not in log, log
    assert_no_secret(log, "the SASL worker's log")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_worker_with_a_wrong_sasl_password_fails_clearly_and_never_prints_it(
        sasl_broker, tmp_path, mechanism):
    settings = sasl_settings(sasl_broker, tmp_path, mechanism, password=WRONG_SASL_PASSWORD)
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    done = subprocess.run([sys.executable, "-m", "streams.ops.cli", "worker"], env=env,
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode != 0, output
    assert "cannot connect to the Kafka broker" in output, output
    assert f"over SASL_PLAINTEXT as '{SASL_USER}' ({mechanism}" in output, output
    assert "SaslAuthenticationFailed" in output, output  # the broker refused the login
    assert "Traceback" not in output, output
    assert_no_secret(output, "the failing worker's output")
    assert WRONG_SASL_PASSWORD not in output, output


@pytest.fixture
def password_redis(tmp_path):
    """A redis-server of this test's own that requires REDIS_PASSWORD."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is needed: apt-get install -y redis-server"
    port = free_port()
    process = ChildProcess("redis", [binary, "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no",
                                     "--requirepass", REDIS_PASSWORD],
                           os.environ, tmp_path / "redis.log")
    try:
        deadline = time.monotonic() + 10
        while subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"],
                             capture_output=True).returncode != 0:
            assert process.alive() and time.monotonic() < deadline, "redis did not start"
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.stop(10)


async def test_redis_password_comes_from_settings_or_the_url(stack, password_redis):
    from_setting = dataclasses.replace(stack, redis_url=password_redis,
                                       redis_password=REDIS_PASSWORD)
    from_url = dataclasses.replace(
        stack, redis_url=password_redis.replace("redis://", f"redis://:{REDIS_PASSWORD}@"))
    for settings in (from_setting, from_url):
        async with RedisProfileStore(settings.redis_url,
                                     connection=redis_client_kwargs(settings)) as store:
            assert await store.redis.ping()
    wrong = dataclasses.replace(stack, redis_url=password_redis, redis_password=URL_PASSWORD)
    async with RedisProfileStore(wrong.redis_url, connection=redis_client_kwargs(wrong)) as store:
        with pytest.raises(redis.exceptions.AuthenticationError) as caught:
            await store.redis.ping()
    assert_no_secret(str(caught.value), "the Redis error")


async def test_redis_sink_with_a_wrong_password_logs_a_redacted_error(stack, password_redis,
                                                                      tmp_path):
    settings = dataclasses.replace(
        stack, redis_url=password_redis.replace("redis://", f"redis://:{URL_PASSWORD}@"),
        wecom_secret=WECOM_SECRET, log_level="debug")
    await create_topics(settings)
    log_path = tmp_path / "redis-sink.log"
    sink = WorkerProcess(settings, log_path, ("redis-sink",)).start()
    try:
        deadline = time.monotonic() + 60
        while "Redis unavailable" not in log_path.read_text(errors="replace"):
            assert sink.alive(), log_path.read_text(errors="replace")
            assert time.monotonic() < deadline, log_path.read_text(errors="replace")
            await asyncio.sleep(0.2)
    finally:
        sink.stop(20)
    output = log_path.read_text(errors="replace")
    assert "AuthenticationError" in output or "WRONGPASS" in output, output
    assert_no_secret(output, "the Redis sink log")


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_the_benchs_librdkafka_reader_logs_in_with_the_same_settings(
        sasl_broker, tmp_path, mechanism):
    from streams.platform.admin import ensure_tagstream_topics
    from streams.platform.security import librdkafka_config
    from streams.tools.bench.librdkafka_reader import TopicReader

    settings = sasl_settings(sasl_broker, tmp_path, mechanism)
    await ensure_tagstream_topics(settings)
    topic = topic_names(settings).tag_changes
    read: list[bytes | None] = []
    reader = TopicReader(settings.broker_bootstrap, librdkafka_config(settings), topic,
                         settings.partitions,
                         lambda _at, _key, value, _partition: read.append(value))
    try:
        reader.start()
        await produce_raw(settings.broker_bootstrap, topic, [(b"MS1", b"a change")],
                          security=kafka_client_kwargs(settings))
        deadline = time.monotonic() + 60
        while not read and time.monotonic() < deadline and reader.error is None:
            await asyncio.sleep(0.05)
    finally:
        reader.stop()
    assert read == [b"a change"], reader.error
