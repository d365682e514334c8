"""`tagstream backfill`: ask every partition's owner to re-evaluate all its members now.

A control message on each partition of the internal topic reaches whichever worker owns
that partition, inside its stream (so state writes go to the right changelog partition).
"""

from __future__ import annotations

from typing import Any, Mapping

from aiokafka import AIOKafkaProducer

from schemas.control import CONTROL_HEADER
from streams.agents.members import BACKFILL
from streams.topics import TopicNames


async def request_backfill(bootstrap: str, partitions: int, *, names: TopicNames,
                           security: Mapping[str, Any] | None = None) -> int:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **(security or {}))
    await producer.start()
    try:
        for partition in range(partitions):
            await producer.send_and_wait(names.reroute, b"", partition=partition,
                                         headers=[(CONTROL_HEADER, BACKFILL)])
    finally:
        await producer.stop()
    return partitions
