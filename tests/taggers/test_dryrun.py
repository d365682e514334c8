"""The dry run pauses the cyclic collector, which is sound only while the engine makes no
reference cycles: a run must leave nothing that reference counting cannot free. And the rows
it applies come in time order, ties by topic rank, then by line."""

from __future__ import annotations

import gc

import orjson
import pytest

from streams.platform.settings import DEFAULT_RULES
from streams.tools.generate import generate_events
from taggers.dryrun import DryRunResult, decode_lines, dry_run
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


def test_rows_come_in_time_then_topic_rank_then_line_order() -> None:
    at, later = "2026-03-01T10:00:00+08:00", "2026-03-01T10:00:01+08:00"
    lines = [orjson.dumps(raw_event(event_type, when, event_id=event_id,
                                    **({"amount_fen": 100} if event_type == "order.paid" else {})))
             for event_id, event_type, when in [
                 ("scan", "scan.cap_opened", at),
                 ("order-late", "order.paid", later),
                 ("order-1", "order.paid", at),
                 ("order-2", "order.paid", at),  # same instant and topic: line order
                 ("joined", "interaction.member_joined", at)]]
    result = DryRunResult()
    rows = decode_lines(lines, result)
    assert result.rejected == []
    # interactions rank before orders before scans at one instant; rows equal in time and
    # rank differ by line, so sorting never compares two events (which cannot be ordered)
    assert [row[3].event_id for row in rows] == ["joined", "order-1", "order-2", "scan",
                                                 "order-late"]
    assert [row[2] for row in rows] == [5, 3, 4, 1, 2]
