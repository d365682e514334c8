"""Records the member agent owes Kafka, shipped a batch at a time.

The agent works in batches: everything the events of one batch produce (tag and tier changes,
dead letters, re-routes, each changed member's state for the changelog and profile) is
collected as plain `Record` tuples with no await, then shipped in one go, and only when every
record of the batch is delivered are the batch's events acknowledged. One produce request per
partition per batch instead of one `send` per record is most of what makes the pipeline fast.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable, NamedTuple, Protocol, Sequence


class Record(NamedTuple):
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]] | None = None


class RecordSender(Protocol):
    async def enqueue(self, records: Sequence[Record]) -> Awaitable[Any]:
        """Queue every record for delivery, in order within a partition, behind everything
        queued before; the returned awaitable completes once all of them are delivered."""


class KafkaRecordSender:
    """Ships records with the aiokafka producer Faust already runs, as pre-built batches."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer  # called per shipment: Faust starts its producer late

    async def enqueue(self, records: Sequence[Record]) -> Awaitable[Any]:
        producer = self._producer()
        batches: dict[tuple[str, int], list[Any]] = {}
        for topic, partition, key, value, headers in records:
            builders = batches.get((topic, partition))
            if builders is None:
                builders = batches[(topic, partition)] = [producer.create_batch()]
            if builders[-1].append(timestamp=None, key=key, value=value,
                                   headers=headers or []) is None:
                builder = producer.create_batch()  # full: a new one (takes any first record)
                builders.append(builder)
                builder.append(timestamp=None, key=key, value=value, headers=headers or [])
        deliveries = []
        for (topic, partition), builders in batches.items():
            for builder in builders:
                deliveries.append(await producer.send_batch(builder, topic, partition=partition))
        return asyncio.gather(*deliveries)
