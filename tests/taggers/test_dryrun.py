"""The dry run pauses the cyclic collector, which is sound only while the engine makes no
reference cycles: a run must leave nothing that reference counting cannot free."""

from __future__ import annotations

import gc

import orjson
import pytest

from streams.platform.settings import DEFAULT_RULES
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import raw_event


@pytest.fixture
def lines() -> list[bytes]:
    history = [orjson.dumps(e) for e in generate_events(members=200, days=120, seed=7)]
    first = orjson.loads(history[0])
    # rejected lines too, by the decoder and by the engine: an exception and its traceback
    # are a classic source of cycles
    rule_tag = raw_event("interaction.tag_marked", first["occurred_at"],
                         member=first["member_id"], tag="wecom_friend", op="added",
                         source="import")
    return [*history, b"{not json", orjson.dumps(rule_tag)]


def test_a_dry_run_leaves_no_reference_cycles(lines: list[bytes]) -> None:
    engine = Engine(load_rules(DEFAULT_RULES))
    gc.collect()
    gc.disable()
    try:
        result = dry_run(engine, lines)
        assert len(result.changes) > 200 and len(result.rejected) == 2
        del result
        assert gc.collect() == 0  # nothing unreachable that only the collector could free
    finally:
        gc.enable()


@pytest.mark.parametrize("collecting", [True, False])
def test_a_dry_run_leaves_the_collector_as_it_found_it(lines: list[bytes],
                                                       collecting: bool) -> None:
    engine = Engine(load_rules(DEFAULT_RULES))
    (gc.enable if collecting else gc.disable)()
    try:
        dry_run(engine, lines[:50])
        assert gc.isenabled() == collecting
    finally:
        gc.enable()
