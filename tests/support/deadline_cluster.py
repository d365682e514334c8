"""Measure how long a cluster of due deadlines holds the worker's loop (reported, never asserted).

    .venv/bin/python -m tests.support.deadline_cluster 20000

MEMBERS members of one partition each place two orders, so each holds `repeat_buyer` until
the same midnight; the wall clock then moves past it and the processor's tick fires them
all, once in one call (as before deadlines fired a step at a time) and once with each step
given. Prints, per step, the calls the ticks took: how many, their median and longest, and
the total. A call is as long as the loop is held; the worker yields between them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import itertools
import statistics
import time
from datetime import datetime

import orjson

from streams.platform.settings import DEFAULT_RULES
from streams.platform.topics import TopicNames
from streams.tools.bench.agent_alone import CountingSender, InMemoryMessage, InMemoryTable
from streams.worker.clock import PartitionClocks
from streams.worker.members import DEADLINE_TICK_STEP, MemberProcessor
from streams.worker.pauses import PauseMonitor
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import members_of_partition, raw_event

PARTITIONS = 4
ORDERS_AT = ("2024-01-02T10:00:00+08:00", "2024-03-02T10:00:00+08:00")
LAPSES_AT = "2025-01-01T00:00:00+08:00"  # repeat_buyer's window after the second order


async def fire_cluster(members: int, step: int) -> list[float]:
    """Seconds each tick call took to fire the cluster with steps of `step`."""
    names = TopicNames.for_namespace("")
    wall = [datetime.fromisoformat(ORDERS_AT[1]).timestamp() + 1]
    processor = MemberProcessor(
        Engine(load_rules(DEFAULT_RULES)), CountingSender(), InMemoryTable(),
        "deadline-cluster-changelog", PartitionClocks("wall", names.events, wall=lambda: wall[0]),
        PARTITIONS, names, tick_step=step)
    offset = itertools.count()

    async def ack() -> None:
        return None

    for member in members_of_partition(members, PARTITIONS):
        for at in ORDERS_AT:
            body = orjson.dumps(raw_event("order.paid", at, member=member, amount_fen=300_000))
            processor.handle(InMemoryMessage(names.orders, 0, next(offset), None, body), ack)
        await processor.flush()
    wall[0] = datetime.fromisoformat(LAPSES_AT).timestamp()
    PauseMonitor().freeze_survivors()  # as a started worker holds what it has
    try:
        calls, more = [], True
        while more:
            started = time.perf_counter()
            more = processor.tick([0])
            calls.append(time.perf_counter() - started)
            await processor.flush()
    finally:
        gc.unfreeze()
    if processor.counters.timers_fired != members:
        raise SystemExit(f"fired {processor.counters.timers_fired} of {members}")
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("members", type=int)
    parser.add_argument("--steps", type=int, nargs="*", default=[500, DEADLINE_TICK_STEP])
    args = parser.parse_args()
    for step in [args.members, *args.steps]:
        calls = asyncio.run(fire_cluster(args.members, step))
        print(f"{args.members} members, steps of {step}: {len(calls)} call(s), median "
              f"{statistics.median(calls) * 1000:.1f} ms, longest {max(calls) * 1000:.1f} ms, "
              f"{sum(calls):.2f} s in all")


if __name__ == "__main__":
    main()
