"""Create the topics tagstream needs, with the partition counts it needs, before anything uses them.

Create topics before any producer or consumer touches them: a broker that auto-creates topics
(Kafka's default, `auto.create.topics.enable`) would otherwise create them with its own default
partition count, and the partition rule (streams/platform/partitioning.py) depends on the count.

Replication 0 (TAGSTREAM_REPLICATION's default) means "as many copies as the cluster can hold,
up to 3": 1 on a single broker, 3 on the three-node stack or a production cluster; topics then
get `min.insync.replicas` 2 where there are at least 3 copies, so an acknowledged write
survives the loss of any one broker.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Collection, Mapping

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code

from schemas.errors import TagstreamError
from streams.platform.kafka_clients import kafka_admin
from streams.platform.security import kafka_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import (MEMBERS_CHANGELOG_CONFIG, members_changelog, topic_names,
                                     topic_partitions)


MAX_REPLICATION = 3


class TopicError(TagstreamError):
    """A topic cannot be created, or exists with another partition count than required."""


async def ensure_tagstream_topics(settings: Settings) -> int:
    """Every topic of the settings' namespace, and the member table's changelog (compacted,
    as the worker's Faust table would create it: the Redis sink reads it, and may start
    first); returns the replication factor used. What each process calls before it touches
    a topic."""
    changelog = members_changelog(settings)
    return await ensure_topics(
        settings.broker_bootstrap,
        {**topic_partitions(settings.partitions, topic_names(settings)),
         changelog: settings.partitions},
        settings.replication, security=kafka_client_kwargs(settings),
        compacted=(changelog,), configs={changelog: MEMBERS_CHANGELOG_CONFIG})


async def ensure_topics(bootstrap: str, topics: dict[str, int], replication: int = 0, *,
                        timeout: float = 30.0, security: Mapping[str, Any] | None = None,
                        compacted: Collection[str] = (),
                        configs: Mapping[str, Mapping[str, str]] | None = None) -> int:
    """Create the missing `topics` ({name: partitions}); return once metadata shows them all,
    with the replication factor used (0 resolved as above).
    `security`: `streams.platform.security.kafka_client_kwargs(settings)` (TLS/SASL), if any.
    `compacted`: topics that keep the newest record per key (`cleanup.policy=compact`).
    `configs`: more topic configs, per topic.

    A topic that already exists with the requested partition count is fine; one with another
    count raises TopicError rather than being silently used with the wrong partitioning.
    """
    for name, partitions in topics.items():
        if partitions < 1:
            raise TopicError(f"topic {name!r}: partitions must be at least 1, not {partitions}")
    if replication < 0:
        raise TopicError(f"replication must be at least 1 (or 0: the cluster's), not {replication}")
    admin = kafka_admin(bootstrap,
                        request_timeout_ms=int(timeout * 1000), **(security or {}))
    try:
        await admin.start()
    except Exception as exc:  # noqa: BLE001 - aiokafka raises KeyError on a refused SCRAM login
        await admin.close()
        raise TopicError(f"cannot connect to the Kafka broker at {bootstrap}"
                         f"{_as_whom(security)}: {type(exc).__name__}: {exc}") from None
    try:
        if replication == 0:
            replication = min(MAX_REPLICATION, len(admin._client.cluster.brokers()))  # noqa: SLF001
        if not topics:
            return replication
        durable = {"min.insync.replicas": "2"} if replication >= 3 else {}
        response = await admin.create_topics(
            [NewTopic(name, partitions, replication, topic_configs={
                **durable, **({"cleanup.policy": "compact"} if name in compacted else {}),
                **(configs or {}).get(name, {})})
             for name, partitions in topics.items()])
        for result in response.to_object()["topic_errors"]:
            error = for_code(result["error_code"])
            if result["error_code"] != 0 and error is not TopicAlreadyExistsError:
                raise TopicError(f"cannot create topic {result['topic']!r} with "
                                 f"{topics[result['topic']]} partitions and replication "
                                 f"{replication}: {error.__name__}: {result['error_message']}")
        await _wait_for_partitions(admin, topics, time.monotonic() + timeout)
    finally:
        await admin.close()
    return replication


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
