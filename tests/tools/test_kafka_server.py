"""The local Kafka's configuration, pure: no JVM, no jars, no network."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest
import yaml

from streams.platform.settings import Settings, SettingsError
from streams.tools.kafka_server import (KafkaServerError, NodeConfig, kafka_version, lib_dir,
                                        new_cluster_id, node_argv, server_properties)

from tests.support import REPO_ROOT

ROOT = REPO_ROOT


def nodes(count: int, tmp_path: Path) -> list[NodeConfig]:
    return [NodeConfig(i, 19090 + i, 19190 + i, tmp_path / f"node-{i}")
            for i in range(1, count + 1)]


def parse(properties: str) -> dict[str, str]:
    """server.properties text -> {key: value}; a key written twice is a mistake."""
    lines = [line for line in properties.splitlines() if line and not line.startswith("#")]
    pairs = [line.split("=", 1) for line in lines]
    assert all(len(pair) == 2 for pair in pairs), properties
    keys = [key for key, _ in pairs]
    assert len(keys) == len(set(keys)), "a key is written twice"
    return dict(pairs)


def test_a_single_node_is_its_own_quorum_and_replicates_nothing(tmp_path: Path) -> None:
    [node] = nodes(1, tmp_path)
    props = parse(server_properties(node, [node]))

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19191"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19091,CONTROLLER://127.0.0.1:19191"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19091"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(node.log_dir)
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "min.insync.replicas",
                "transaction.state.log.min.isr"):
        assert props[key] == "1", key


def test_three_nodes_share_one_voter_list_and_replicate_three_times(tmp_path: Path) -> None:
    cluster = nodes(3, tmp_path)
    voters = "1@127.0.0.1:19191,2@127.0.0.1:19192,3@127.0.0.1:19193"

    for node in cluster:
        props = parse(server_properties(node, cluster))
        assert props["node.id"] == str(node.node_id)
        assert props["controller.quorum.voters"] == voters
        # Each node listens on its own ports only, all on loopback.
        assert props["listeners"] == (f"PLAINTEXT://127.0.0.1:{node.port},"
                                      f"CONTROLLER://127.0.0.1:{node.controller_port}")
        assert props["advertised.listeners"] == f"PLAINTEXT://127.0.0.1:{node.port}"
        assert props["log.dirs"] == str(tmp_path / f"node-{node.node_id}" / "logs")
        for key in ("default.replication.factor", "offsets.topic.replication.factor",
                    "transaction.state.log.replication.factor"):
            assert props[key] == "3", key
        assert props["min.insync.replicas"] == "2"
        assert props["transaction.state.log.min.isr"] == "2"


def test_the_version_is_the_one_docker_compose_runs() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text("utf-8"))
    images = {service["image"] for service in compose["services"].values()
              if str(service.get("image", "")).startswith("apache/kafka:")}

    assert images == {f"apache/kafka:{kafka_version()}"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", kafka_version())


def test_a_cluster_id_never_starts_with_a_dash() -> None:
    """Regression: one id in 64 did ("-UNwj-..."), and kafka-storage took it for an option:
    "argument --cluster-id/-t: expected one argument", so the test broker never started."""
    draws = iter([b"\xf8" + bytes(15), b"\xf8" + bytes(15), bytes(16)])
    assert new_cluster_id(lambda: next(draws)) == "A" * 22


def test_a_cluster_id_is_a_uuid_in_url_safe_base64() -> None:
    ids = {new_cluster_id() for _ in range(20)}

    assert len(ids) == 20  # random
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id), cluster_id
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def fetched_cache(tmp_path: Path) -> Path:
    """A jar cache that counts as fetched (node_argv only names its lib dir)."""
    cache = tmp_path / "cache"
    lib_dir(cache).mkdir(parents=True)
    (lib_dir(cache).parent / "fetched").write_text(kafka_version())
    return cache


def test_a_node_runs_the_jvms_full_jit_unless_the_client_one_is_asked_for(tmp_path: Path) -> None:
    node, cache = nodes(1, tmp_path)[0], fetched_cache(tmp_path)
    assert "-XX:TieredStopAtLevel=1" not in node_argv(node, cache)
    assert "-XX:TieredStopAtLevel=1" not in node_argv(node, cache, jit="full")
    client = node_argv(node, cache, jit="client")
    assert "-XX:TieredStopAtLevel=1" in client
    assert client.index("-XX:TieredStopAtLevel=1") < client.index("kafka.Kafka")
    with pytest.raises(KafkaServerError, match="unknown broker JIT 'c2'"):
        node_argv(node, cache, jit="c2")


def test_the_stack_broker_jit_setting_is_full_or_client() -> None:
    assert Settings().stack_broker_jit == "full"
    assert Settings.from_env({"TAGSTREAM_STACK_BROKER_JIT": "client"}).stack_broker_jit == "client"
    with pytest.raises(SettingsError, match="TAGSTREAM_STACK_BROKER_JIT must be 'full' or 'client'"):
        Settings.from_env({"TAGSTREAM_STACK_BROKER_JIT": "server"})


def test_a_node_logs_its_collections_to_its_own_data_dir(tmp_path: Path) -> None:
    node, cache = nodes(1, tmp_path)[0], fetched_cache(tmp_path)
    argv = node_argv(node, cache)
    [gc_log] = [arg for arg in argv if arg.startswith("-Xlog:gc")]
    assert f"file={node.data_dir / 'gc.log'}:" in gc_log
    assert gc_log.split(":")[3] == "time,uptime"  # the bench reads the wall-clock stamp
    assert argv.index(gc_log) < argv.index("kafka.Kafka")
