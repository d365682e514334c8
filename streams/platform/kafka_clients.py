"""The one place Kafka clients are made, for every process but the Faust worker (whose
clients Faust makes from the same settings: streams/worker/credentials.py).

Callers pass the bootstrap address and their security options
(`streams.platform.security.kafka_client_kwargs`) plus what their job needs; the defaults
that hold for all of tagstream live here.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

CLIENT_ID = "tagstream"  # how the broker's logs and quotas name our clients
# How long the producers that stand for upstream systems (replay, the bench's loads) let a
# batch collect: the Java client's default since Kafka 4.0 (KIP-1030). At 0 every record is
# its own produce request, which costs the broker and the sender more than the records do.
UPSTREAM_LINGER_MS = 5


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
