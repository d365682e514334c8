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

from streams.platform.batches import PartitionBatches


class Record(NamedTuple):
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None  # None: a tombstone (an erased member's state and profile)
    headers: list[tuple[str, bytes]] | None = None


# (topic, partition) -> the offset of the last record of a shipment delivered there
DeliveredOffsets = dict[tuple[str, int], int]


class RecordSender(Protocol):
    async def enqueue(self, records: Sequence[Record]) -> Awaitable[DeliveredOffsets | None]:
        """Queue every record for delivery, in order within a partition, behind everything
        queued before; the returned awaitable completes once all of them are delivered, with
        the last offset written per topic-partition (None where the sender cannot tell)."""


class KafkaRecordSender:
    """Ships records with the aiokafka producer Faust already runs, as pre-built batches."""

    def __init__(self, producer: Callable[[], Any]) -> None:
        self._producer = producer  # called per shipment: Faust starts its producer late

    async def enqueue(self, records: Sequence[Record]) -> Awaitable[DeliveredOffsets]:
        producer = self._producer()
        batches = PartitionBatches(producer)
        ready = [full for record in records if (full := batches.append(*record)) is not None]
        deliveries = []
        for batch in [*ready, *batches.drain()]:
            count = batch.builder.record_count()
            deliveries.append(_last_offset(await batch.send(producer), count))
        return asyncio.ensure_future(_merged(deliveries))


async def _last_offset(delivery: Awaitable[Any], count: int) -> tuple[tuple[str, int], int]:
    """A delivered batch's metadata names its first offset; its records follow it."""
    metadata = await delivery
    return (metadata.topic, metadata.partition), metadata.offset + count - 1


async def _merged(deliveries: list[Awaitable[tuple[tuple[str, int], int]]]) -> DeliveredOffsets:
    offsets: DeliveredOffsets = {}
    for tp, last in await asyncio.gather(*deliveries):
        offsets[tp] = max(last, offsets.get(tp, -1))
    return offsets
