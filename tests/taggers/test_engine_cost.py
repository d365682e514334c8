"""Micro-benchmarks of the pure engine (pytest-benchmark): cost per event of the full default
pack (tags, lifecycle, RFM, tiers and points) and state bytes per member. They measure and
report; they assert only correctness, never a time (a shared 2-core machine is too noisy)."""

from __future__ import annotations

import os
import statistics

import orjson
import pytest

from streams.platform.settings import DEFAULT_RULES
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
from taggers.state import encode_state

pytestmark = [pytest.mark.benchmark(group="engine", min_rounds=1, warmup=False),
              pytest.mark.slow]
# One round in the suite (it only has to run); TAGSTREAM_BENCH_ROUNDS=3 for the README figure.
ROUNDS = int(os.environ.get("TAGSTREAM_BENCH_ROUNDS", "1"))


@pytest.fixture(scope="module")
def history() -> list[bytes]:
    return [orjson.dumps(event) for event in generate_events(members=1000, days=400, seed=7)]


def test_default_pack_cost_per_event(benchmark, history) -> None:
    pack = load_rules(DEFAULT_RULES)
    result = benchmark.pedantic(lambda: dry_run(Engine(pack), history), rounds=ROUNDS,
                                iterations=1)
    assert not result.rejected and result.changes
    per_event_us = benchmark.stats.stats.median / len(history) * 1e6
    benchmark.extra_info["events"] = len(history)
    benchmark.extra_info["us_per_event_median"] = round(per_event_us, 1)
    print(f"\ndefault pack: {per_event_us:.1f} us per event (median of {ROUNDS} runs over "
          f"{len(history)} events, timers included)")


def test_state_bytes_per_member(benchmark, history) -> None:
    result = dry_run(Engine(load_rules(DEFAULT_RULES)), history)
    sizes = sorted(benchmark(lambda: [len(encode_state(s)) for s in result.states.values()]))
    report = {"members": len(sizes), "mean": round(statistics.fmean(sizes)),
              "p50": sizes[len(sizes) // 2], "p99": sizes[int(len(sizes) * 0.99)],
              "max": sizes[-1]}
    benchmark.extra_info.update(report)
    print(f"\nstate bytes per member: {report}")
    assert report["members"] == 1000
