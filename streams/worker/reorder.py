"""Events waiting for the event-time clock (TAGSTREAM_CLOCK=event), per partition.

The three event topics are consumed concurrently, so a member's 10:05 order can be fetched
before their 10:00 sign-in. Held here until the partition's clock (streams.worker.clock) passes
them, they come out in (occurred_at, topic rank, arrival) order, the same order
`tagstream dryrun` uses, so the stream and the dry run agree exactly. Held events are not
acknowledged to Kafka until released, so a crash redelivers them instead of losing them.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any


class ReorderBuffer:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, int, int, Any]]] = {}
        self._seq = itertools.count()

    def push(self, partition: int, instant: int, rank: int, item: Any) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []),
                       (instant, rank, next(self._seq), item))

    def pop_ready(self, partition: int, now: int) -> list[Any]:
        heap = self._heaps.get(partition)
        ready = []
        while heap and heap[0][0] <= now:
            ready.append(heapq.heappop(heap)[3])
        return ready

    def drop(self, partition: int) -> int:
        """Forget a revoked partition's held events (unacked: the new owner gets them)."""
        return len(self._heaps.pop(partition, []))

    def held(self, partition: int | None = None) -> int:
        if partition is not None:
            return len(self._heaps.get(partition, []))
        return sum(len(heap) for heap in self._heaps.values())
