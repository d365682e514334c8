"""Acknowledgements to Faust, released in offset order per topic-partition.

The member agent finishes messages out of order: an event held for the event-time clock is
done long after later messages of its partition. Faust commits the first run of consecutive
acknowledged offsets, and when it has committed nothing yet for a partition (or the held
message is the one right at the committed offset) it takes that run even if it starts after
an unacknowledged message (faust-streaming 0.15 `Consumer._new_offset`). The commit then
passes the held event, and a rebalance or restart resumes after it: the event was neither
applied nor dead-lettered. So a message is acknowledged only once every message delivered
before it on its topic-partition is done too; Faust then only ever sees a prefix.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Awaitable, Callable, Iterable

Ack = Callable[[], Awaitable[Any]]


class AckSlot:
    __slots__ = ("key", "ack", "done")

    def __init__(self, key: tuple[str, int], ack: Ack) -> None:
        self.key = key
        self.ack = ack
        self.done = False


class OrderedAcks:
    def __init__(self) -> None:
        self._queues: dict[tuple[str, int], deque[AckSlot]] = {}

    def register(self, topic: str, partition: int, ack: Ack) -> AckSlot:
        """A message was delivered (call in delivery order); its slot is acknowledged later."""
        key = (topic, partition)
        slot = AckSlot(key, ack)
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = deque()
        queue.append(slot)
        return slot

    async def done(self, slot: AckSlot) -> None:
        """The slot's message is fully handled: acknowledge it and every done one after it,
        as far as the first one still pending."""
        slot.done = True
        queue = self._queues.get(slot.key)
        while queue and queue[0].done:
            await queue.popleft().ack()

    def pending(self) -> int:
        return sum(len(queue) for queue in self._queues.values())

    def drop(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: their messages not yet acknowledged never will be here (the
        next owner gets them again from the committed offset)."""
        revoked = set(partitions)
        for key in [key for key in self._queues if key[1] in revoked]:
            del self._queues[key]
