"""Measure the worker's deadline heap after a history (reported, never asserted).

    .venv/bin/tagstream generate --members 20000 --days 9 --seed 1 > history.jsonl
    .venv/bin/python -m tests.support.deadline_heap history.jsonl

Feeds the history through `MemberProcessor` on the event clock (no Kafka: the harness of
tests/worker/test_member_processor.py with a sender that discards), then prints how many
deadlines were pushed (each was a heap entry before the heap was bounded), how many entries
the heap holds, and how many members have a deadline.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import orjson

from schemas.events import TOPIC_BY_EVENT_TYPE
from streams.platform.partitioning import partition_for
from streams.worker import deadlines
from tests.worker.test_member_processor import PARTITIONS, Harness, Message, _delivered


class _Discard:
    async def enqueue(self, records: object) -> object:
        return _delivered()


async def measure(path: Path) -> dict[str, int]:
    pushes = 0
    push = deadlines.DeadlineIndex.push

    def counting(index: deadlines.DeadlineIndex, partition: int, deadline: int | None,
                 member_id: str) -> None:
        nonlocal pushes
        pushes += deadline is not None
        push(index, partition, deadline, member_id)

    deadlines.DeadlineIndex.push = counting  # type: ignore[method-assign]
    try:
        h = Harness("event")
        h.processor.sender = _Discard()
        offsets: dict[tuple[str, int], int] = {}
        events = 0

        async def ack() -> None:
            return None

        for events, line in enumerate(path.read_bytes().splitlines(), start=1):
            body = orjson.loads(line)
            member_id = body["member_id"]
            topic = h.names.actual(TOPIC_BY_EVENT_TYPE[body["event_type"]])
            partition = partition_for(member_id, PARTITIONS)
            offset = offsets.get((topic, partition), 0)
            offsets[(topic, partition)] = offset + 1
            h.processor.handle(Message(topic, partition, offset, member_id.encode(), line, []),
                               ack)
            if events % 20 == 0:
                await h.processor.flush()
        await h.processor.flush()
        index = h.processor.deadlines
        return {"events": events, "deadline_pushes": pushes,
                "heap_entries": index.heap_entries(), "members_with_a_deadline": len(index)}
    finally:
        deadlines.DeadlineIndex.push = push  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path, help="JSON lines, as `tagstream generate` writes")
    print(orjson.dumps(asyncio.run(measure(parser.parse_args().history))).decode())


if __name__ == "__main__":
    main()
