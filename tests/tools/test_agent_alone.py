"""The agent-alone harness measures the agent, not itself: what it holds is frozen while the
agent runs and the collector runs as seldom (as in a started worker), and nothing stays so
after."""

from __future__ import annotations

import asyncio
import gc

import orjson

from streams.platform.settings import DEFAULT_RULES, Settings
from streams.platform.topics import TopicNames
from streams.tools.bench.agent_alone import replayed_messages, run_agent
from streams.tools.generate import generate_events
from streams.worker.pauses import STARTED_WORKER_GC_THRESHOLDS
from taggers.engine import Engine
from taggers.rules import load_rules


def test_the_harness_freezes_its_messages_for_the_run_and_unfreezes_after():
    settings, names = Settings(), TopicNames.for_namespace("")
    history = [orjson.dumps(event) for event in generate_events(members=30, days=20, seed=5)]
    messages = replayed_messages(history, names, 4)
    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    run = asyncio.run(run_agent(Engine(load_rules(DEFAULT_RULES), settings.allowed_lateness_s),
                                messages, settings, names, 4, batch_events=50))
    # a regression: without the freeze each full collection walked every message again
    assert run.frozen_objects > len(messages)
    assert gc.get_freeze_count() == 0
    # and the collector ran as seldom as in a started worker, then as before
    assert run.gc_thresholds == STARTED_WORKER_GC_THRESHOLDS != thresholds
    assert gc.get_threshold() == thresholds
    assert run.events == len(history) and run.tag_changes > 0
