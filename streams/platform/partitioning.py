"""Which partition holds a member: the one rule every producer and worker must agree on.

Kafka's Java client, aiokafka and Faust place a keyed record at
`murmur2(key) & 0x7fffffff % partitions`; librdkafka (confluent-kafka, kcat) defaults to a
CRC32-based partitioner and puts the same key elsewhere. A member's state lives on exactly
one partition, so the worker re-routes any event that arrives on a different partition (or
with no key) to `partition_for(member_id)` before touching state.
"""

from __future__ import annotations

from functools import lru_cache

from aiokafka.partitioner import murmur2


@lru_cache(maxsize=1 << 16)
def partition_for(member_id: str, partitions: int) -> int:
    return (murmur2(member_id.encode("utf-8")) & 0x7FFFFFFF) % partitions
