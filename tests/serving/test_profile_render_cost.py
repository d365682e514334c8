"""Micro-benchmark of what the Redis sink spends on one profile before Redis (pytest-benchmark):
a changelog record's state decoded, rendered with the pack, encoded as JSON, and its index
entries taken (streams/serving/profiles.py). It reports µs a profile; it asserts only that
the profiles are the engine's own rendering, never a time."""

from __future__ import annotations

import os

import msgspec
import orjson
import pytest

from streams.platform.settings import DEFAULT_RULES
from streams.serving.profiles import ProfileRenderer
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import load_rules
from taggers.state import encode_state

pytestmark = [pytest.mark.benchmark(group="sink", min_rounds=1, warmup=False)]
ROUNDS = int(os.environ.get("TAGSTREAM_BENCH_ROUNDS", "1"))
MEMBERS = int(os.environ.get("TAGSTREAM_RENDER_MEMBERS", "2000"))


def test_sink_cost_per_profile_rendered(benchmark) -> None:
    pack = load_rules(DEFAULT_RULES)
    lines = [orjson.dumps(e) for e in generate_events(members=MEMBERS, days=66, seed=1)]
    states = dry_run(Engine(pack), lines).states
    records = [encode_state(state) for state in states.values()]
    renderer = ProfileRenderer(pack)

    served = benchmark.pedantic(lambda: [renderer.served(raw) for raw in records],
                                rounds=ROUNDS, iterations=1)
    assert [orjson.loads(profile.json) for profile in served] == [
        msgspec.to_builtins(render_profile(state, pack)) for state in states.values()]
    per_profile_us = benchmark.stats.stats.median / len(records) * 1e6
    benchmark.extra_info.update({"profiles": len(records),
                                 "us_per_profile_median": round(per_profile_us, 1)})
    print(f"\nthe sink renders a profile in {per_profile_us:.1f} us (median of {ROUNDS} rounds "
          f"over {len(records)} states of 66 days)")
