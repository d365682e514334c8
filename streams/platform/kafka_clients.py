"""The one place Kafka clients are made, for every process but the Faust worker (whose
clients Faust makes from the same settings: streams/worker/credentials.py).

Callers pass the bootstrap address and their security options
(`streams.platform.security.kafka_client_kwargs`) plus what their job needs; the defaults
that hold for all of tagstream live here.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterable

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from schemas.errors import TagstreamError

CLIENT_ID = "tagstream"  # how the broker's logs and quotas name our clients
# How long the producers that stand for upstream systems (replay, the bench's loads) let a
# batch collect: the Java client's default since Kafka 4.0 (KIP-1030). At 0 every record is
# its own produce request, which costs the broker and the sender more than the records do.
UPSTREAM_LINGER_MS = 5
# How long partitions_of waits for a topic just created to show in the metadata.
TOPIC_METADATA_WAIT_S = 10.0


def kafka_consumer(bootstrap: str, *topics: str, **options: Any) -> AIOKafkaConsumer:
    options.setdefault("client_id", CLIENT_ID)
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, **options)


def kafka_producer(bootstrap: str, **options: Any) -> AIOKafkaProducer:
    """acks=all unless told otherwise: a record counts as written once every in-sync replica
    has it, which is what the tag-change and replay guarantees rest on."""
    options.setdefault("client_id", CLIENT_ID)
    options.setdefault("acks", "all")
    return AIOKafkaProducer(bootstrap_servers=bootstrap, **options)


def kafka_admin(bootstrap: str, **options: Any) -> AIOKafkaAdminClient:
    options.setdefault("client_id", CLIENT_ID)
    return AIOKafkaAdminClient(bootstrap_servers=bootstrap, **options)


class UnknownTopics(TagstreamError):
    """Topics the broker's metadata does not hold (yet)."""


async def partitions_of(consumer: AIOKafkaConsumer, topics: Iterable[str], *,
                        wait_s: float = TOPIC_METADATA_WAIT_S) -> list[TopicPartition]:
    """Every partition of `topics`, sorted, for a started consumer that may be subscribed to
    nothing. Such a consumer bootstraps with the metadata of no topic at all, so
    `partitions_for_topic` alone says None, which a caller must never read as "no partitions".
    Raises UnknownTopics if a topic is still missing after `wait_s` (one just created takes a
    moment to reach every broker)."""
    wanted = sorted(set(topics))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while True:
        found = {topic: consumer.partitions_for_topic(topic) for topic in wanted}
        missing = [topic for topic, partitions in found.items() if not partitions]
        if not missing:
            return [TopicPartition(topic, p) for topic in wanted for p in sorted(found[topic])]
        if loop.time() >= deadline:
            raise UnknownTopics(f"topic{'s' if len(missing) > 1 else ''} "
                                f"{', '.join(map(repr, missing))} does not exist")
        await consumer._client.force_metadata_update()  # noqa: SLF001 - no public way
        await asyncio.sleep(0.1)
