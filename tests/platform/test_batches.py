"""The record-batch builder shared by the worker's outbox and the replay tool."""

from __future__ import annotations

from aiokafka import AIOKafkaProducer
from aiokafka.record.default_records import DefaultRecordBatch

from streams.platform.batches import PartitionBatches


def records_of(batch) -> list[bytes]:
    builder = batch.builder
    raw = builder._builder.build() if hasattr(builder, "_builder") else builder.build()  # noqa: SLF001
    return [record.value for record in DefaultRecordBatch(bytes(raw))]


async def test_a_full_builder_is_handed_back_and_order_is_kept_per_partition():
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", max_batch_size=1024)
    try:
        batches = PartitionBatches(producer)
        ready = []
        for i in range(60):
            full = batches.append("t", i % 2, None, f"{i:03d}".encode() * 20)
            if full is not None:
                ready.append(full)
        assert ready, "60 records of 60 bytes must overflow 1 KiB builders"
        ready += batches.drain()
        assert batches.drain() == []
        for partition in (0, 1):
            values = [v for b in ready if b.partition == partition for v in records_of(b)]
            assert values == [f"{i:03d}".encode() * 20 for i in range(partition, 60, 2)]
        assert {b.topic for b in ready} == {"t"}
    finally:
        await producer.stop()


async def test_a_record_larger_than_a_builder_still_goes_out_alone():
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:9", max_batch_size=256)
    try:
        batches = PartitionBatches(producer)
        assert batches.append("t", 0, b"k", b"small") is None
        full = batches.append("t", 0, b"k", b"x" * 5000)
        assert full is not None and records_of(full) == [b"small"]
        [big] = batches.drain()
        assert records_of(big) == [b"x" * 5000]
    finally:
        await producer.stop()
