"""Micro-benchmark of the member agent alone (pytest-benchmark): the replay's messages handed
straight to MemberProcessor, no Kafka (streams/tools/bench/agent_alone.py), next to the dry
run of the same events. It measures and reports the agent's cost per event beyond the
engine; it asserts only correctness (the same tag changes as the dry run), never a time."""

from __future__ import annotations

import asyncio
import os

import orjson
import pytest

from streams.platform.settings import DEFAULT_RULES, Settings
from streams.platform.topics import TopicNames
from streams.tools.bench.agent_alone import CHANGELOG_TOPIC, replayed_messages, run_agent
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules

pytestmark = [pytest.mark.benchmark(group="agent", min_rounds=1, warmup=False),
              pytest.mark.slow]
ROUNDS = int(os.environ.get("TAGSTREAM_BENCH_ROUNDS", "1"))
PARTITIONS = 4


@pytest.fixture(scope="module")
def history() -> list[bytes]:
    return [orjson.dumps(event) for event in generate_events(members=1000, days=60, seed=7)]


def test_the_replayed_messages_are_every_event_and_a_marker_per_partition_at_the_end(history):
    names = TopicNames.for_namespace("")
    messages = replayed_messages(history, names, PARTITIONS)
    markers = [m for m in messages if m.headers]
    assert len(messages) - len(markers) == len(history)
    # the last markers: one per partition of every event topic, after the last event
    assert all(m.headers for m in messages[-PARTITIONS * len(names.events):])
    # offsets run from 0 without gaps per topic-partition, as a fresh topic gives them
    seen: dict[tuple[str, int], list[int]] = {}
    for m in messages:
        seen.setdefault((m.topic, m.partition), []).append(m.offset)
    assert all(offsets == list(range(len(offsets))) for offsets in seen.values())


def test_agent_cost_per_event_beside_the_dry_run(benchmark, history) -> None:
    pack = load_rules(DEFAULT_RULES)
    settings, names = Settings(), TopicNames.for_namespace("")
    messages = replayed_messages(history, names, PARTITIONS)
    expected = dry_run(Engine(pack, settings.allowed_lateness_s), history)

    def agent():
        return asyncio.run(run_agent(Engine(pack, settings.allowed_lateness_s), messages,
                                     settings, names, PARTITIONS))

    run = benchmark.pedantic(agent, rounds=ROUNDS, iterations=1)
    assert run.dead_lettered == 0
    assert run.tag_changes == len(expected.changes) > 0
    assert run.records[names.tier_changes] == len(expected.tier_changes)
    assert run.records[CHANGELOG_TOPIC] > 0  # a record per changed member per batch
    per_event_us = benchmark.stats.stats.median / run.events * 1e6
    benchmark.extra_info.update({"events": run.events, "records": run.records,
                                 "us_per_event_median": round(per_event_us, 1)})
    print(f"\nthe member agent alone: {per_event_us:.1f} us per event (median of {ROUNDS} runs "
          f"over {run.events} events; {sum(run.records.values()) / run.events:.2f} records "
          f"per event)")
