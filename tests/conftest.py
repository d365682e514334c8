"""Fixtures for tests that need the real broker and Redis.

Apache Kafka is a JVM that takes seconds to start, so one single-node Kafka serves the whole run
(and one three-node cluster the tests that need it, started on first use). Tests stay apart by
name: each gets its own topic namespace and app id (so its own consumer groups and changelog),
and its own Redis (a Redis starts in milliseconds). Tests run one at a time, so a test that
pauses or restarts the shared broker disturbs no other. A missing JDK, Kafka jars or
redis-server is an error, never a skip: the error says how to install it.
"""

from __future__ import annotations

import dataclasses
import itertools
import signal
from pathlib import Path
from types import FrameType
from typing import Iterator

import pytest

from streams.platform.settings import Settings
from streams.tools.stack import LocalStack
from tests.support import private_stack_settings

_test_numbers = itertools.count(1)


def pytest_configure(config: pytest.Config) -> None:
    """A run ended by SIGTERM (a CI job's time limit, `timeout(1)`) still stops the Kafka
    nodes and Redis its fixtures started: SIGTERM becomes the KeyboardInterrupt on which
    pytest tears its fixtures down. By default SIGTERM ends the interpreter at once, and
    they outlived it, since they run in sessions of their own."""
    signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _shared_kafka(tmp_path_factory: pytest.TempPathFactory, brokers: int) -> Iterator[LocalStack]:
    stack_dir = tmp_path_factory.mktemp(f"kafka-{brokers}")
    settings = private_stack_settings(stack_dir, brokers=brokers)
    kafka = LocalStack(settings, redis=False)
    try:
        kafka.up(brokers)
        yield kafka
    finally:
        kafka.down()


@pytest.fixture(scope="session")
def shared_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The run's single-node Kafka (KRaft, combined broker and controller)."""
    yield from _shared_kafka(tmp_path_factory, 1)


_CLUSTERS: list[LocalStack] = []  # the three-node cluster, once started
_LAST_ON_THE_CLUSTER = pytest.StashKey[bool]()


@pytest.fixture(scope="session")
def shared_kafka_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The run's three-node Kafka cluster (replication 3, min.insync.replicas 2); stopped
    after the last test that uses it."""
    for cluster in _shared_kafka(tmp_path_factory, 3):
        _CLUSTERS.append(cluster)
        yield cluster


def _on_the_cluster(item: pytest.Item) -> bool:
    return "shared_kafka_cluster" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the three-node cluster run one after another, where the first of them
    was, so that the cluster stops after the last of them: idle, its three JVMs take a third
    of a core (6.7 CPU-seconds in 20 s, measured), which the rest of the run would lose."""
    on_cluster = [item for item in items if _on_the_cluster(item)]
    if not on_cluster:
        return
    first = items.index(on_cluster[0])
    others = [item for item in items if not _on_the_cluster(item)]
    items[:] = others[:first] + on_cluster + others[first:]
    on_cluster[-1].stash[_LAST_ON_THE_CLUSTER] = True


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    if item.stash.get(_LAST_ON_THE_CLUSTER, False):
        while _CLUSTERS:
            _CLUSTERS.pop().down()


def _test_settings(kafka: LocalStack, tmp_path: Path) -> Settings:
    number = next(_test_numbers)
    return dataclasses.replace(
        private_stack_settings(tmp_path), broker=kafka.client_settings().broker,
        topic_namespace=f"t{number}.", app_id=f"tagstream-t{number}")


@pytest.fixture
def stack_settings(shared_kafka: LocalStack, tmp_path: Path) -> Settings:
    """Settings for this test: the shared Kafka under a namespace of its own, and a Redis of
    its own on a fresh port (not started)."""
    return _test_settings(shared_kafka, tmp_path)


@pytest.fixture
def local_redis(stack_settings: Settings) -> Iterator[LocalStack]:
    """This test's Redis controller, not started; whatever it started is stopped afterwards."""
    controller = LocalStack(stack_settings, kafka=False)
    try:
        yield controller
    finally:
        controller.down()


@pytest.fixture
def stack(local_redis: LocalStack) -> Settings:
    """The shared Kafka and a running Redis of this test's own; the Settings that point at them."""
    local_redis.up()
    return local_redis.settings


@pytest.fixture
def cluster_stack(shared_kafka_cluster: LocalStack, tmp_path: Path) -> Iterator[Settings]:
    """Like `stack`, on the three-node cluster."""
    settings = _test_settings(shared_kafka_cluster, tmp_path)
    redis = LocalStack(settings, kafka=False)
    try:
        redis.up()
        yield settings
    finally:
        redis.down()
