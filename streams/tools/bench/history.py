"""Phase 1: the generated history, pre-produced to the event topics."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from pathlib import Path


from streams.tools.generate import CST, generate_events, write_jsonl
from streams.tools.bench.common import (
    BenchError, SAMPLE_MEMBERS, _Run, _event_partitions, _offset_ranges,
)


def days_for(members: int, events: int, seed: int) -> int:
    """The number of days over which `members` generated members make about `events` events."""
    sample = min(members, SAMPLE_MEMBERS)
    target = events / members

    def per_member(days: int) -> float:
        return sum(1 for _ in generate_events(sample, days, seed)) / sample

    low, high = 1, 3650
    if per_member(low) >= target:
        return low
    if per_member(high) <= target:
        return high
    while high - low > 1:  # events per member grow with the days: bisect
        middle = (low + high) // 2
        if per_member(middle) < target:
            low = middle
        else:
            high = middle
    return low if target - per_member(low) < per_member(high) - target else high


def _generate(run: _Run, path: Path) -> None:
    options = run.options
    started = time.perf_counter()
    days = days_for(options.members, options.events, options.seed)
    # The history ends now, so on the wall clock (the latency phase) its deadlines lie ahead,
    # as live ones would, instead of all firing at once as long overdue.
    end = options.history_end or datetime.now(CST).replace(microsecond=0)
    start = end - timedelta(days=days)
    run.say(f"generating {options.members:,} members over {days} days (seed {options.seed})")
    with path.open("wb") as out:
        count = write_jsonl(generate_events(options.members, days, options.seed, start), out)
    run.result.update(days=days, history_start=start.isoformat(), generated_events=count)
    run.result["details"]["generate_s"] = round(time.perf_counter() - started, 1)


async def _preproduce(run: _Run, path: Path) -> None:
    from streams.ops.replay import replay

    run.say(f"producing {run.result['generated_events']:,} events to the event topics (replay)")
    replayed = await replay(run.bootstrap, path, names=run.names,
                            partitions=run.options.partitions,
                            progress=False, replication=run.settings.replication,
                            security=run.security)
    if replayed.skipped:
        raise BenchError(f"replay skipped {len(replayed.skipped)} generated lines, e.g. "
                         f"{replayed.skipped[0]}")
    run.result["events"] = replayed.events
    run.result["details"]["replay"] = {
        "events_per_s": round(replayed.events_per_s), "seconds": round(replayed.elapsed_s, 2),
        "watermark_markers": replayed.watermarks,
        "per_topic": dict(sorted(replayed.produced.items()))}


async def _event_messages(run: _Run) -> int:
    """The records on the event topics (end minus start offsets): what each reader must see."""
    begins, ends = await _offset_ranges(run, _event_partitions(run))
    return sum(ends[tp] - begins[tp] for tp in ends)


async def _require_empty_event_topics(run: _Run) -> None:
    _, ends = await _offset_ranges(run, _event_partitions(run))
    held = sum(ends.values())
    if held:
        raise BenchError(f"the event topics on {run.settings.broker} already hold {held} "
                         "records; the bench needs them empty (its workers would process them "
                         "too): run it without --use-stack (a private broker), or on a fresh one")
