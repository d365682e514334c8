"""Which members have a deadline due, per partition, without scanning the state table.

A min-heap per partition of entries that each stand for (deadline, member), and each
member's current deadline. Entries are never updated in place: a member whose deadline moves
gets a new entry, and the old one is dropped when it surfaces, because it is no longer the
member's current deadline. A member whose deadline did not move adds nothing, and when stale
entries outnumber the members the heap is rebuilt from the current deadlines, so the heap
stays within twice the members with a deadline (plus a little) instead of growing by one
entry per event. A tick costs one heap pop per due or stale entry, never a pass over all
members.

An entry is one int, `deadline << ORDINAL_BITS | ordinal`, the ordinal standing for the
member in the partition's table of members, not a (deadline, member) tuple: an int is not an
object the garbage collector tracks. Every tuple pushed was, and the first young collection
after it walked it: at 1,000,000 members such collections found half a million heap entries
scattered over the worker's heap and took 0.3-0.4 s each, with nothing to free. Members due
at the same deadline come out in an order the partition's history fixes (when each was first
given an ordinal), not by member id; what fires is the same either way.
"""

from __future__ import annotations

import heapq
from typing import Iterable

# Stale entries tolerated beyond one per member before the heap is rebuilt: a small heap is
# never rebuilt, a large one at most once per as many pushes as it has members.
COMPACT_SLACK = 1024
# An entry's low bits: the member's ordinal in its partition (so up to 2**32 members a
# partition between two rebuilds); the high bits, the deadline in epoch seconds (ordered as
# the ints are, negative ones too).
ORDINAL_BITS = 32
ORDINAL_MASK = (1 << ORDINAL_BITS) - 1


def _first_entry_after(now: int) -> int:
    """Every entry of a deadline at or before `now` is below this; every later one is not."""
    return (now + 1) << ORDINAL_BITS


class _Partition:
    """One partition's heap, its members' current entries, and the table of members its
    entries name. Invariant: a member's current entry is in the heap; any other entry of it
    is stale (a deadline it no longer has, or an ordinal it was given before)."""

    __slots__ = ("heap", "current", "members")

    def __init__(self) -> None:
        self.heap: list[int] = []
        self.current: dict[str, int] = {}  # member -> its current entry
        self.members: list[str] = []  # ordinal -> member

    def set(self, member_id: str, deadline: int, previous: int | None) -> None:
        """Make `deadline` the member's current one (`previous`, its current entry, moves)."""
        if previous is None:
            ordinal = len(self.members)
            self.members.append(member_id)
        else:
            ordinal = previous & ORDINAL_MASK
        entry = self.current[member_id] = deadline << ORDINAL_BITS | ordinal
        heapq.heappush(self.heap, entry)

    def compact_if_stale(self) -> None:
        """Rebuild once stale entries, or ordinals no longer current (a member given one anew
        after it fired or lost its deadline), outnumber the members with a deadline: the heap
        and the table of members from the current deadlines alone. A member without a
        deadline (erased perhaps) leaves the table here."""
        bound = 2 * len(self.current) + COMPACT_SLACK
        if len(self.heap) <= bound and len(self.members) <= bound:
            return
        members: list[str] = []
        current: dict[str, int] = {}
        for member_id, entry in self.current.items():
            current[member_id] = entry >> ORDINAL_BITS << ORDINAL_BITS | len(members)
            members.append(member_id)
        heap = list(current.values())
        heapq.heapify(heap)
        self.heap, self.current, self.members = heap, current, members


class DeadlineIndex:
    def __init__(self) -> None:
        self._partitions: dict[int, _Partition] = {}

    def is_loaded(self, partition: int) -> bool:
        return partition in self._partitions

    def open_partition(self, partition: int) -> None:
        """The partition's heap, empty and loaded from now on; `add_stored` fills it from the
        stored states, `push` with every state stored since."""
        self._partitions[partition] = _Partition()

    def _partition(self, partition: int) -> _Partition:
        held = self._partitions.get(partition)
        if held is None:
            held = self._partitions[partition] = _Partition()
        return held

    def add_stored(self, partition: int, entries: Iterable[tuple[int | None, str]]) -> None:
        """Deadlines read from stored states while the partition's heap is rebuilt. A member
        pushed since has a newer state, and keeps its own deadline."""
        held = self._partition(partition)
        current = held.current
        for deadline, member_id in entries:
            if deadline is not None and member_id not in current:
                held.set(member_id, deadline, None)
        held.compact_if_stale()  # a member fired while its state was being read comes back

    def push(self, partition: int, deadline: int | None, member_id: str) -> None:
        """The member's deadline is now `deadline` (None: it has none)."""
        if deadline is None:
            held = self._partitions.get(partition)
            if held is not None:
                held.current.pop(member_id, None)  # its entries in the heap are stale now
            return
        held = self._partition(partition)
        previous = held.current.get(member_id)
        if previous is not None and previous >> ORDINAL_BITS == deadline:
            return
        held.set(member_id, deadline, previous)
        held.compact_if_stale()

    def pop_due(self, partition: int, now: int, limit: int | None = None) -> list[str]:
        """The members whose current deadline is at or before `now`, each once, in deadline
        order, at most `limit` of them (the earliest); they have no deadline here until
        pushed again. Those beyond `limit` stay due."""
        held = self._partitions.get(partition)
        due: list[str] = []
        bound = _first_entry_after(now)
        if held is None or not held.heap or held.heap[0] >= bound:
            return due  # the usual case: it runs after every event on the wall clock
        heap, current, members = held.heap, held.current, held.members
        wanted = len(heap) if limit is None else limit
        while heap and heap[0] < bound and len(due) < wanted:
            entry = heapq.heappop(heap)
            member_id = members[entry & ORDINAL_MASK]
            if current.get(member_id) == entry:
                del current[member_id]
                due.append(member_id)
        return due

    def any_due(self, partition: int, now: int) -> bool:
        """Something may be due at `now` (the earliest entry, perhaps a stale one)."""
        held = self._partitions.get(partition)
        return held is not None and bool(held.heap) and held.heap[0] < _first_entry_after(now)

    def drop(self, partition: int) -> None:
        self._partitions.pop(partition, None)

    def __len__(self) -> int:
        """Members with a deadline."""
        return sum(len(held.current) for held in self._partitions.values())

    def heap_entries(self) -> int:
        """Entries in the heaps, stale ones included."""
        return sum(len(held.heap) for held in self._partitions.values())

    def named_members(self) -> list[str]:
        """The members the heaps' entries may name, those with no deadline now included."""
        return [member for held in self._partitions.values() for member in held.members]
