"""`tagstream backfill`: ask every partition's owner to re-evaluate all its members now.

A control message on each partition of the internal topic reaches whichever worker owns
that partition, inside its stream (so state writes go to the right changelog partition).
"""

from __future__ import annotations

from typing import Any, Mapping


from schemas.control import encode_backfill
from streams.platform.kafka_clients import kafka_producer
from streams.platform.topics import TopicNames


async def request_backfill(bootstrap: str, partitions: int, *, names: TopicNames,
                           security: Mapping[str, Any] | None = None) -> int:
    producer = kafka_producer(bootstrap, acks="all", **(security or {}))
    await producer.start()
    try:
        value, headers = encode_backfill()
        for partition in range(partitions):
            await producer.send_and_wait(names.reroute, value, partition=partition,
                                         headers=headers)
    finally:
        await producer.stop()
    return partitions
