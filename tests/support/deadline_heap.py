"""Measure the worker's deadline heap after a history (reported, never asserted).

    .venv/bin/tagstream generate --members 20000 --days 9 --seed 1 > history.jsonl
    .venv/bin/python -m tests.support.deadline_heap history.jsonl

Feeds the history through `MemberProcessor` on the event clock with no Kafka (the replay's
messages, watermarks included, as streams/tools/bench/agent_alone.py hands them over, a batch
every 20 messages), then prints how many deadlines were pushed (each was a heap entry before
the heap was bounded), how many entries the heap holds, and how many members have a
deadline.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import orjson

from streams.platform.settings import DEFAULT_RULES, Settings
from streams.platform.topics import TopicNames
from streams.tools.bench.agent_alone import replayed_messages, run_agent
from streams.worker import deadlines
from taggers.engine import Engine
from taggers.rules import load_rules

PARTITIONS = 4


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
        settings, names = Settings(), TopicNames.for_namespace("")
        messages = replayed_messages(path.read_bytes().splitlines(), names, PARTITIONS)
        run = await run_agent(Engine(load_rules(DEFAULT_RULES), settings.allowed_lateness_s),
                              messages, settings, names, PARTITIONS, batch_events=20)
        index = run.processor.deadlines
        return {"events": run.events, "deadline_pushes": pushes,
                "heap_entries": index.heap_entries(), "members_with_a_deadline": len(index)}
    finally:
        deadlines.DeadlineIndex.push = push  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("history", type=Path, help="JSON lines, as `tagstream generate` writes")
    print(orjson.dumps(asyncio.run(measure(parser.parse_args().history))).decode())


if __name__ == "__main__":
    main()
