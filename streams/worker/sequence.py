"""Every offset of an owned partition reaches the member agent, once and in order.

Faust may fail to hand the agent a fetched message and still count it as done: its fetch
loop records any jump in offsets as a "gap" that counts as acknowledged, and its commit takes
an unacknowledged message right at the committed offset as already done (faust-streaming
0.15 `Consumer._drain_messages`, `Consumer._new_offset`). A kill-a-worker run lost one
order that way in steady state: its offset was committed, it was never applied, and nothing
was dead-lettered. The agent therefore checks the offsets it is handed per topic-partition:

- the next offset: handled;
- an offset already handled (Faust sought back over messages it had delivered): ignored,
  since the first delivery is being handled;
- a jump ahead: the messages in between were never handed over. The message is not handled
  and the partition is rewound to the first missing offset; what was fetched before the
  rewind is ignored until the missing offset arrives. If the message at the jump comes first
  again after the rewind, nothing lies between (a transactional producer's markers take
  offsets too) and it is handled.

Positions start afresh with each assignment (`forget` at revocation), at the offset the
consumer was sought to (`start_at`: the partition's commit, or its beginning): a first message
past it is a jump like any other. Faust drops a message it fetched while its flow was
suspended and still records it as read, so the partition's first message after an assignment
can be the second one: a two-worker run lost a member's first order that way (its second was
applied as the first), when the first message after an assignment was taken as it came. A
partition with no known start still takes its first message as it comes.
"""

from __future__ import annotations

import enum
import logging
from typing import Callable, Iterable, Mapping

log = logging.getLogger(__name__)

# (topic, partition, offset): seek the partition so that `offset` is fetched next
Rewind = Callable[[str, int, int], None]


class Admission(enum.Enum):
    HANDLE = "handle"
    ALREADY_HANDLED = "already handled"
    WAIT_FOR_REWIND = "wait for rewind"


class DeliverySequence:
    def __init__(self, rewind: Rewind) -> None:
        self.rewind = rewind
        self.next_offsets: dict[tuple[str, int], int] = {}
        self._jumped_to: dict[tuple[str, int], int] = {}  # the offset that showed a jump
        self.rewinds = 0

    def admit(self, topic: str, partition: int, offset: int) -> Admission:
        key = (topic, partition)
        expected = self.next_offsets.get(key)
        if expected is None or offset == expected:
            return self._handle(key, offset)
        if offset < expected:
            return Admission.ALREADY_HANDLED
        jumped_to = self._jumped_to.get(key)
        if jumped_to is None:
            log.warning("%s partition %s: offset %s arrived before %s..%s; rewinding to %s",
                        topic, partition, offset, expected, offset - 1, expected)
            self._jumped_to[key] = offset
            self.rewinds += 1
            self.rewind(topic, partition, expected)
            return Admission.WAIT_FOR_REWIND
        if offset == jumped_to:
            log.info("%s partition %s: no records at offsets %s..%s", topic, partition,
                     expected, offset - 1)
            return self._handle(key, offset)
        return Admission.WAIT_FOR_REWIND

    def _handle(self, key: tuple[str, int], offset: int) -> Admission:
        self.next_offsets[key] = offset + 1
        jumped_to = self._jumped_to.get(key)
        if jumped_to is not None and offset >= jumped_to:
            del self._jumped_to[key]
        return Admission.HANDLE

    def start_at(self, starts: Mapping[tuple[str, int], int]) -> None:
        """(topic, partition) -> the offset the consumer was sought to after an assignment. A
        partition that has handled a message since keeps its own position."""
        for key, offset in starts.items():
            self.next_offsets.setdefault(key, offset)
        log.info("the assigned partitions were sought to %s",
                 ", ".join(f"{topic}[{partition}]@{offset}"
                           for (topic, partition), offset in sorted(starts.items())))

    def forget(self, partitions: Iterable[int]) -> None:
        """Revoked partitions: the next owner (maybe this worker) starts where Faust seeks."""
        revoked = set(partitions)
        for positions in (self.next_offsets, self._jumped_to):
            for key in [key for key in positions if key[1] in revoked]:
                del positions[key]
