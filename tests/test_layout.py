"""The layout's two import rules (README "Layout"), read from the source as grep would."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import REPO_ROOT

STREAMS = REPO_ROOT / "streams"
IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.MULTILINE)
# bench's Faust floor (an agent that only acknowledges) is a measuring tool, not the worker
FAUST_ALLOWED_OUTSIDE_WORKER = {STREAMS / "tools" / "bench_floor.py"}


def imports_of(path: Path) -> set[str]:
    return set(IMPORT.findall(path.read_text("utf-8")))


def modules_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_only_the_worker_imports_faust() -> None:
    offenders = [str(path.relative_to(STREAMS)) for path in modules_under(STREAMS)
                 if STREAMS / "worker" not in path.parents
                 and path not in FAUST_ALLOWED_OUTSIDE_WORKER
                 and any(name == "faust" or name.startswith("faust.")
                         for name in imports_of(path))]
    assert offenders == []


def test_serving_never_imports_the_worker() -> None:
    offenders = [str(path.relative_to(STREAMS)) for path in modules_under(STREAMS / "serving")
                 if any(name.startswith("streams.worker") for name in imports_of(path))]
    assert offenders == []


def test_the_rules_would_catch_an_offender(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from __future__ import annotations\n\n    from faust.types import TP\n"
                      "import streams.worker.members\n")
    assert {"faust.types", "streams.worker.members"} <= imports_of(module)


def test_every_role_folder_is_a_package_and_nothing_is_left_at_the_top() -> None:
    roles = {"worker", "serving", "ops", "platform", "tools"}
    assert {p.name for p in STREAMS.iterdir() if p.is_dir() and p.name != "__pycache__"} == roles
    assert [p.name for p in STREAMS.glob("*.py")] == ["__init__.py"]
    assert all((STREAMS / role / "__init__.py").is_file() for role in roles)


KAFKA_CLIENT = re.compile(r"\bAIOKafka(?:Consumer|Producer|AdminClient)\(")


def test_kafka_clients_are_made_in_one_place() -> None:
    """Outside the worker (where Faust makes them), every Kafka client comes from
    streams/platform/kafka_clients.py."""
    factory = STREAMS / "platform" / "kafka_clients.py"
    offenders = [str(path.relative_to(STREAMS)) for path in modules_under(STREAMS)
                 if path != factory and KAFKA_CLIENT.search(path.read_text("utf-8"))]
    assert offenders == []
    assert KAFKA_CLIENT.search(factory.read_text("utf-8"))  # the pattern matches real code


async def test_the_factory_names_our_clients_and_waits_for_every_replica() -> None:
    from streams.platform.kafka_clients import kafka_consumer, kafka_producer

    producer = kafka_producer("127.0.0.1:9")
    consumer = kafka_consumer("127.0.0.1:9", "t", group_id="g")
    try:
        assert producer.client._client_id == "tagstream"  # noqa: SLF001
        assert producer._sender._acks == -1  # noqa: SLF001  ("all")
        assert consumer._client._client_id == "tagstream"  # noqa: SLF001
        assert kafka_producer("127.0.0.1:9", acks=1)._sender._acks == 1  # noqa: SLF001
    finally:
        await producer.stop()
        await consumer.stop()
