"""Which members have a deadline due, per partition, without scanning the state table.

A min-heap of (deadline, member_id) per partition. Entries are never updated in place: a
member whose deadline moves gets a new entry and the old one is discarded when it surfaces
(the state's own `next_deadline` is the truth). A tick therefore costs one heap pop per due
or stale entry, never a pass over all members.
"""

from __future__ import annotations

import heapq
from typing import Iterable


class DeadlineIndex:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}

    def is_loaded(self, partition: int) -> bool:
        return partition in self._heaps

    def load(self, partition: int, entries: Iterable[tuple[int, str]]) -> None:
        heap = list(entries)
        heapq.heapify(heap)
        self._heaps[partition] = heap

    def push(self, partition: int, deadline: int | None, member_id: str) -> None:
        if deadline is not None:
            heapq.heappush(self._heaps.setdefault(partition, []), (deadline, member_id))

    def pop_due(self, partition: int, now: int) -> list[str]:
        heap = self._heaps.get(partition)
        due: list[str] = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap)[1])
        return due

    def drop(self, partition: int) -> None:
        self._heaps.pop(partition, None)

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())
