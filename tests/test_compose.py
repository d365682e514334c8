"""docker-compose.yml agrees with the code: KRaft Kafka, every topic the code uses created with
the shared partition count, only real settings, health-gated start-up, a scalable worker.

There is no Docker engine here, so the file is checked, not run."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from streams.platform.settings import ENV_NAMES
from streams.platform.topics import ALL_TOPIC_NAMES

from tests.support import REPO_ROOT

ROOT = REPO_ROOT
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text("utf-8")
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, Any] = COMPOSE["services"]
PLANNED_SETTINGS: set[str] = set()
PARTITIONS_VAR = "${TAGSTREAM_PARTITIONS:-8}"


def env(service: str) -> dict[str, str]:
    """A service's environment as a dict, whichever form the file uses."""
    raw = SERVICES[service].get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def shell_script(service: str) -> str:
    parts = []
    for key in ("entrypoint", "command"):
        value = SERVICES[service].get(key, [])
        parts.extend([value] if isinstance(value, str) else value)
    return " ".join(parts)


def listeners(value: str) -> dict[str, str]:
    """`NAME://host:port,...` -> {NAME: "host:port"}."""
    return dict(item.split("://", 1) for item in value.split(","))


# --- the stack ------------------------------------------------------------------------------

def test_services_exist():
    assert {"kafka", "topics", "redis", "worker"} <= set(SERVICES)


def test_kafka_is_kraft_combined_broker_and_controller_without_zookeeper():
    kafka = env("kafka")

    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    for name, service in SERVICES.items():
        assert "zookeeper" not in name.lower() + str(service.get("image", "")).lower()
        assert not [key for key in env(name) if "ZOOKEEPER" in key]

    node_id = kafka["KAFKA_NODE_ID"]
    controller = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"]
    bound = listeners(kafka["KAFKA_LISTENERS"])
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
                     .split(","))
    controller_port = bound[controller].rsplit(":", 1)[1]
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node_id}@kafka:{controller_port}"
    assert set(bound) <= set(protocols)
    assert controller not in listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])


def test_kafka_single_node_settings_and_no_auto_created_topics():
    kafka = env("kafka")

    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert kafka["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"


@pytest.mark.parametrize("service", ["kafka", "redis"])
def test_stateful_services_have_a_healthcheck(service):
    check = SERVICES[service]["healthcheck"]
    assert check["test"] and check["test"][0] in ("CMD", "CMD-SHELL")


def test_redis_is_redis_7():
    assert re.fullmatch(r"redis:7([.-].*)?", SERVICES["redis"]["image"])


# --- topics --------------------------------------------------------------------------------

def test_topics_service_creates_every_topic_the_code_uses():
    from streams.platform.settings import Settings
    from streams.platform.topics import members_changelog

    created = env("topics")["TOPICS"].split()

    assert sorted(created) == sorted(ALL_TOPIC_NAMES + (members_changelog(Settings()),))
    assert len(created) == len(set(created))


def test_topics_share_the_partition_variable_and_set_replication():
    topics, script = env("topics"), shell_script("topics")

    assert "kafka-topics.sh" in script and "--create" in script
    assert '--partitions "$$PARTITIONS"' in script
    assert '--replication-factor "$$REPLICATION"' in script
    assert topics["PARTITIONS"] == PARTITIONS_VAR == env("worker")["TAGSTREAM_PARTITIONS"]
    assert re.fullmatch(r"\$\{TAGSTREAM_REPLICATION:-[1-9]\d*\}", topics["REPLICATION"])
    assert topics["REPLICATION"] == env("worker")["TAGSTREAM_REPLICATION"]


def test_topics_service_fails_on_an_existing_topic_with_another_partition_count():
    script = shell_script("topics")
    assert "--if-not-exists" in script and "--describe" in script and "exit 1" in script


def test_topics_service_is_one_shot():
    assert SERVICES["topics"].get("restart", "no") == "no"


# --- settings ------------------------------------------------------------------------------

def test_every_tagstream_variable_is_a_known_setting():
    used = set(re.findall(r"TAGSTREAM_[A-Z0-9_]+", COMPOSE_TEXT))
    used |= set(re.findall(r"TAGSTREAM_[A-Z0-9_]+", (ROOT / "Dockerfile").read_text("utf-8")))
    known = set(ENV_NAMES.values()) | PLANNED_SETTINGS

    assert used, "the compose file configures tagstream through TAGSTREAM_* variables"
    assert used <= known, f"unknown settings: {sorted(used - known)}"


def test_worker_points_at_the_compose_kafka_and_redis():
    worker = env("worker")
    advertised = listeners(env("kafka")["KAFKA_ADVERTISED_LISTENERS"]).values()

    broker = worker["TAGSTREAM_BROKER"]
    assert broker.startswith("kafka://")
    assert broker.removeprefix("kafka://") in advertised
    assert broker.removeprefix("kafka://").split(":")[0] in SERVICES
    assert worker["TAGSTREAM_REDIS_URL"] == "redis://redis:6379/0"
    assert worker["TAGSTREAM_CLOCK"] == "wall"


# --- start-up order and scaling ------------------------------------------------------------

def test_worker_waits_for_healthy_kafka_created_topics_and_healthy_redis():
    assert SERVICES["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "topics": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
    }


@pytest.mark.parametrize("service", ["topics", "worker"])
def test_every_dependency_is_health_or_completion_gated(service):
    depends_on = SERVICES[service]["depends_on"]

    assert isinstance(depends_on, dict), "long form, with a condition per dependency"
    for dependency, spec in depends_on.items():
        assert spec["condition"] in ("service_healthy", "service_completed_successfully")
        if spec["condition"] == "service_healthy":
            assert "healthcheck" in SERVICES[dependency], dependency
        else:
            assert SERVICES[dependency].get("restart", "no") == "no", dependency


def test_worker_is_scalable():
    worker = SERVICES["worker"]

    assert "container_name" not in worker
    assert "ports" not in worker
    assert "hostname" not in worker


def test_services_run_existing_commands_of_the_project_image():
    from streams.ops.cli import main

    for name, service in SERVICES.items():
        command = service.get("command") or []
        if command[:1] == ["tagstream"]:
            assert service["build"] == "."
            assert command[1] in main.commands, f"{name} runs unknown command {command}"


def test_dockerfile_installs_the_project_on_python_311_slim():
    dockerfile = (ROOT / "Dockerfile").read_text("utf-8")

    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.M)
    assert re.search(r"pip install (--no-deps )?\.", dockerfile)
    assert 'CMD ["tagstream", "worker"]' in dockerfile


def test_dockerignore_keeps_what_pip_install_needs():
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text("utf-8").splitlines()
               if line.strip() and not line.startswith("#")}

    assert {".git", "tests"} <= ignored
    assert not ignored & {"pyproject.toml", "README.md", "schemas", "taggers", "streams", "*"}


def test_file_header_says_it_is_checked_not_run():
    header = COMPOSE_TEXT.split("\n\n", 1)[0].lower()
    assert "checked, not run" in header and "no docker engine" in header


def test_member_changelog_is_created_compacted():
    from streams.platform.settings import Settings
    from streams.platform.topics import members_changelog

    topics = SERVICES["topics"]
    changelog = members_changelog(Settings())
    assert changelog in topics["environment"]["TOPICS"].split()
    assert changelog in topics["environment"]["COMPACTED"].split()
    assert "cleanup.policy=compact" in "\n".join(topics["command"])


def test_serving_services_run_beside_the_workers():
    assert SERVICES["redis-sink"]["command"] == ["tagstream", "redis-sink"]
    assert SERVICES["api"]["command"] == ["tagstream", "api"]
    assert "8080:8080" in [str(p) for p in SERVICES["api"]["ports"]]
    assert SERVICES["wecom-sync"]["command"] == ["tagstream", "wecom-sync"]
    for service in ("redis-sink", "api"):
        assert SERVICES[service]["environment"]["TAGSTREAM_REDIS_URL"] == \
            SERVICES["worker"]["environment"]["TAGSTREAM_REDIS_URL"]
