"""Which members have a deadline due, per partition, without scanning the state table.

A min-heap of (deadline, member_id) per partition, and each member's current deadline.
Entries are never updated in place: a member whose deadline moves gets a new entry, and the
old one is dropped when it surfaces, because it is no longer the member's current deadline.
A member whose deadline did not move adds nothing, and when stale entries outnumber the
members the heap is rebuilt from the current deadlines, so the heap stays within twice the
members with a deadline (plus a little) instead of growing by one entry per event. A tick
costs one heap pop per due or stale entry, never a pass over all members.
"""

from __future__ import annotations

import heapq
from typing import Iterable

# Stale entries tolerated beyond one per member before the heap is rebuilt: a small heap is
# never rebuilt, a large one at most once per as many pushes as it has members.
COMPACT_SLACK = 1024


class DeadlineIndex:
    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str]]] = {}
        self._current: dict[int, dict[str, int]] = {}  # partition -> member -> deadline

    def is_loaded(self, partition: int) -> bool:
        return partition in self._heaps

    def open_partition(self, partition: int) -> None:
        """The partition's heap, empty and loaded from now on; `add_stored` fills it from the
        stored states, `push` with every state stored since."""
        self._current[partition] = {}
        self._heaps[partition] = []

    def add_stored(self, partition: int, entries: Iterable[tuple[int | None, str]]) -> None:
        """Deadlines read from stored states while the partition's heap is rebuilt. A member
        pushed since has a newer state, and keeps its own deadline."""
        current = self._current.setdefault(partition, {})
        heap = self._heaps.setdefault(partition, [])
        for deadline, member_id in entries:
            if deadline is not None and member_id not in current:
                current[member_id] = deadline
                heapq.heappush(heap, (deadline, member_id))

    def push(self, partition: int, deadline: int | None, member_id: str) -> None:
        """The member's deadline is now `deadline` (None: it has none)."""
        if deadline is None:
            current = self._current.get(partition)
            if current:
                current.pop(member_id, None)  # its entries in the heap are stale now
            return
        current = self._current.setdefault(partition, {})
        if current.get(member_id) == deadline:
            return
        current[member_id] = deadline
        heap = self._heaps.setdefault(partition, [])
        heapq.heappush(heap, (deadline, member_id))
        if len(heap) > 2 * len(current) + COMPACT_SLACK:
            self._heaps[partition] = _heap_of(current)

    def pop_due(self, partition: int, now: int, limit: int | None = None) -> list[str]:
        """The members whose current deadline is at or before `now`, each once, in deadline
        order, at most `limit` of them (the earliest); they have no deadline here until
        pushed again. Those beyond `limit` stay due."""
        heap = self._heaps.get(partition)
        due: list[str] = []
        if not heap or heap[0][0] > now:
            return due  # the usual case: it runs after every event on the wall clock
        current = self._current[partition]  # a partition with a heap has its current deadlines
        wanted = len(heap) if limit is None else limit
        while heap and heap[0][0] <= now and len(due) < wanted:
            deadline, member_id = heapq.heappop(heap)
            if current.get(member_id) == deadline:
                del current[member_id]
                due.append(member_id)
        return due

    def any_due(self, partition: int, now: int) -> bool:
        """Something may be due at `now` (the earliest entry, perhaps a stale one)."""
        heap = self._heaps.get(partition)
        return bool(heap) and heap[0][0] <= now

    def drop(self, partition: int) -> None:
        self._heaps.pop(partition, None)
        self._current.pop(partition, None)

    def __len__(self) -> int:
        """Members with a deadline."""
        return sum(len(current) for current in self._current.values())

    def heap_entries(self) -> int:
        """Entries in the heaps, stale ones included."""
        return sum(len(heap) for heap in self._heaps.values())


def _heap_of(current: dict[str, int]) -> list[tuple[int, str]]:
    heap = [(deadline, member_id) for member_id, deadline in current.items()]
    heapq.heapify(heap)
    return heap
