"""Events waiting for the event-time clock (TAGSTREAM_CLOCK=event), per partition.

The three event topics are consumed concurrently, so a member's 10:05 order can be fetched
before their 10:00 sign-in. Held here until the partition's clock (streams.worker.clock) passes
them, they come out in (occurred_at, topic rank, arrival) order, the same order
`tagstream dryrun` uses, so the stream and the dry run agree exactly. Held events are not
acknowledged to Kafka until released, so a crash redelivers them instead of losing them.

It counts what it holds per source (the topic an event came from) and partition: a topic read
far ahead of the others in event time fills it, and the member agent pauses that topic's
partition until the clock catches up (MemberProcessor, TAGSTREAM_EVENT_HOLD_LIMIT).
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any


class ReorderBuffer:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, int, int, str, Any]]] = {}
        self._seq = itertools.count()
        self._held_from: dict[tuple[str, int], int] = {}  # (source, partition) -> held

    def push(self, partition: int, instant: int, rank: int, source: str, item: Any) -> int:
        """Hold `item` from `source`; returns how many from that source the partition holds."""
        heapq.heappush(self._heaps.setdefault(partition, []),
                       (instant, rank, next(self._seq), source, item))
        key = (source, partition)
        held = self._held_from[key] = self._held_from.get(key, 0) + 1
        return held

    def pop_ready(self, partition: int, now: int) -> list[Any]:
        heap = self._heaps.get(partition)
        ready = []
        held_from = self._held_from
        while heap and heap[0][0] <= now:
            _, _, _, source, item = heapq.heappop(heap)
            held_from[(source, partition)] -= 1
            ready.append(item)
        return ready

    def held_from(self, source: str, partition: int) -> int:
        return self._held_from.get((source, partition), 0)

    def drop(self, partition: int) -> int:
        """Forget a revoked partition's held events (unacked: the new owner gets them)."""
        for key in [key for key in self._held_from if key[1] == partition]:
            del self._held_from[key]
        return len(self._heaps.pop(partition, []))

    def held(self, partition: int | None = None) -> int:
        if partition is not None:
            return len(self._heaps.get(partition, []))
        return sum(len(heap) for heap in self._heaps.values())
