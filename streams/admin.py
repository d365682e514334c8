"""Create the topics tagstream needs, with the partition counts it needs, before anything uses them.

Create topics before any producer or consumer touches them: brokers that auto-create topics (Tansu
does, on a metadata request naming an unknown topic) would otherwise create them with their own
default partition count, and the partition rule (streams/partitioning.py) depends on the count.
Only create_topics and cluster metadata are used: aiokafka's `list_consumer_group_offsets`
breaks the connection on Tansu (DESIGN.md).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from schemas.errors import TagstreamError


class TopicError(TagstreamError):
    """A topic cannot be created, or exists with another partition count than required."""


async def ensure_topics(bootstrap: str, topics: dict[str, int], replication: int = 1, *,
                        timeout: float = 30.0, security: Mapping[str, Any] | None = None) -> None:
    """Create the missing `topics` ({name: partitions}); return once metadata shows them all.
    `security`: `streams.security.kafka_client_kwargs(settings)` (TLS/SASL), if any.

    A topic that already exists with the requested partition count is fine; one with another
    count raises TopicError rather than being silently used with the wrong partitioning.
    """
    if not topics:
        return
    # Checked here because Tansu accepts a topic with 0 partitions, which nothing can write to.
    for name, partitions in topics.items():
        if partitions < 1:
            raise TopicError(f"topic {name!r}: partitions must be at least 1, not {partitions}")
    if replication < 1:
        raise TopicError(f"replication must be at least 1, not {replication}")
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap,
                                request_timeout_ms=int(timeout * 1000), **(security or {}))
    try:
        await admin.start()
    except Exception as exc:  # noqa: BLE001 - aiokafka raises KeyError on a refused SCRAM login
        await admin.close()
        raise TopicError(f"cannot connect to the Kafka broker at {bootstrap}"
                         f"{_as_whom(security)}: {type(exc).__name__}: {exc}") from None
    try:
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication) for name, partitions in topics.items()])
        for result in response.to_object()["topic_errors"]:
            error = for_code(result["error_code"])
            if result["error_code"] != 0 and error is not TopicAlreadyExistsError:
                raise TopicError(f"cannot create topic {result['topic']!r} with "
                                 f"{topics[result['topic']]} partitions and replication "
                                 f"{replication}: {error.__name__}: {result['error_message']}")
        await _wait_for_partitions(admin, topics, time.monotonic() + timeout)
    finally:
        await admin.close()


def _as_whom(security: Mapping[str, Any] | None) -> str:
    """How we tried to connect, for the error message (never the password)."""
    protocol = (security or {}).get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return ""
    if not protocol.startswith("SASL_"):
        return f" over {protocol}"
    return (f" over {protocol} as {security['sasl_plain_username']!r} "  # type: ignore[index]
            f"({security['sasl_mechanism']}; check the user and TAGSTREAM_KAFKA_SASL_PASSWORD)")


async def _wait_for_partitions(admin: AIOKafkaAdminClient, topics: dict[str, int],
                               deadline: float) -> None:
    while True:
        # All-topics metadata: naming the topics would make an auto-creating broker create them.
        found = {t["topic"]: t for t in await admin.describe_topics()}
        waiting = []
        for name, partitions in topics.items():
            if name not in found or found[name]["error_code"] != 0:
                waiting.append(f"{name} (not in metadata yet)")
                continue
            have = found[name]["partitions"]
            if len(have) != partitions:
                raise TopicError(f"topic {name!r} exists with {len(have)} partitions, not the "
                                 f"{partitions} required; delete the topic, or configure "
                                 f"{len(have)} partitions (TAGSTREAM_PARTITIONS)")
            if any(p["error_code"] != 0 or p["leader"] < 0 for p in have):
                waiting.append(f"{name} (partitions without a leader)")
        if not waiting:
            return
        if time.monotonic() >= deadline:
            raise TopicError(f"topics not ready in time: {', '.join(waiting)}")
        await asyncio.sleep(0.05)
