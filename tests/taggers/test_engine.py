"""The pure engine with the default pack: the issue-2 tags, redelivery, lateness, timers."""

from __future__ import annotations

from datetime import datetime

import pytest

from schemas.changes import change_id_for
from schemas.errors import EventRejected
from streams.platform.settings import DEFAULT_RULES
from taggers.clock import to_epoch
from taggers.engine import Engine
from taggers.rules import load_rules
from taggers.state import SEEN_CAPACITY, decode_state, encode_state
from tests.factories import event, joined, paid


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_rules(DEFAULT_RULES), allowed_lateness_s=7 * 86400)


def run(engine: Engine, events, state=None):
    changes = []
    for ev in events:
        outcome = engine.apply(state, ev)
        state = outcome.state
        changes.extend(outcome.changes)
    return state, changes


def ops(changes):
    return [(c.tag, c.op) for c in changes]


def epoch(text: str) -> int:
    return to_epoch(datetime.fromisoformat(text))


# (case id, events, tags held at the end)
CASES = [
    ("joined is member", [joined("2024-01-01T10:00:00+08:00")], {"member"}),
    ("no join, no member tag", [event("interaction.sign_in", "2024-01-01T10:00:00+08:00")], set()),
    ("one order is first purchase", [paid("2024-01-02T10:00:00+08:00", 100)], {"first_purchase"}),
    ("second order ends first purchase", [paid("2024-01-02T10:00:00+08:00", 100),
                                           paid("2024-01-03T10:00:00+08:00", 100)],
     {"repeat_buyer"}),
    ("refund does not undo an order's count", [paid("2024-01-02T10:00:00+08:00", 100),
                                               event("order.refunded", "2024-01-03T10:00:00+08:00",
                                                     amount_fen=100)], {"first_purchase"}),
    ("two orders 365 days apart at the boundary are not repeat",
     # 2024 is a leap year: day 2024-01-02 leaves the 365-day window on 2025-01-01
     [paid("2024-01-02T10:00:00+08:00", 100), paid("2025-01-01T00:00:00+08:00", 100)], set()),
    ("two orders 364 days apart are repeat",
     [paid("2024-01-02T10:00:00+08:00", 100), paid("2024-12-31T23:59:59+08:00", 100)],
     {"repeat_buyer"}),
    ("exactly 5000 yuan net is high value", [paid("2024-01-02T10:00:00+08:00", 500_000)],
     {"first_purchase", "high_value"}),
    ("one fen short is not high value", [paid("2024-01-02T10:00:00+08:00", 499_999)],
     {"first_purchase"}),
    ("a refund below the line removes high value",
     [paid("2024-01-02T10:00:00+08:00", 500_000),
      event("order.refunded", "2024-01-05T10:00:00+08:00", amount_fen=1)], {"first_purchase"}),
]


SPINE_TAGS = {"member", "first_purchase", "repeat_buyer", "high_value"}


@pytest.mark.parametrize("events,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_spine_tags(engine: Engine, events, expected) -> None:
    state, _ = run(engine, events)
    assert set(state.tags) & SPINE_TAGS == expected


def test_redelivered_event_changes_nothing(engine: Engine) -> None:
    order = paid("2024-01-02T10:00:00+08:00", 600_000, event_id="dup-1")
    state, first = run(engine, [joined("2024-01-01T10:00:00+08:00"), order])
    before = encode_state(state)
    outcome = engine.apply(state, order)
    assert outcome.duplicate and outcome.changes == []
    assert encode_state(outcome.state) == before
    assert [op for op in ops(first) if op[0] in SPINE_TAGS] == [
        ("member", "added"), ("first_purchase", "added"), ("high_value", "added")]


def test_change_ids_are_deterministic_and_distinct(engine: Engine) -> None:
    events = [joined("2024-01-01T10:00:00+08:00", event_id="j"),
              paid("2024-01-02T10:00:00+08:00", 600_000, event_id="o")]
    _, a = run(engine, events)
    _, b = run(engine, events)
    assert [c.change_id for c in a] == [c.change_id for c in b]
    assert len({c.change_id for c in a}) == len(a)
    assert a[0].change_id == change_id_for("M1", "member", "added", {"event_id": "j"})


def test_window_expiry_removes_tags_by_deadline_with_timer_cause(engine: Engine) -> None:
    state, _ = run(engine, [paid("2024-01-02T10:00:00+08:00", 300_000),
                            paid("2024-03-02T10:00:00+08:00", 300_000)])
    assert {"repeat_buyer", "high_value"} <= set(state.tags)
    # one second before the deadline they are held; at the deadline both go
    early = engine.advance(state, epoch("2024-12-31T23:59:59+08:00"))
    assert not [c for c in early.changes if c.tag in SPINE_TAGS]
    assert state.next_deadline == epoch("2025-01-01T00:00:00+08:00")
    outcome = engine.advance(state, epoch("2025-01-01T00:00:00+08:00"))
    spine = [c for c in outcome.changes if c.tag in SPINE_TAGS]
    assert sorted(ops(spine)) == [("high_value", "removed"), ("repeat_buyer", "removed")]
    assert {c.cause["timer"] for c in spine} == {
        "high_value@2025-01-01T00:00:00+08:00", "repeat_buyer@2025-01-01T00:00:00+08:00"}
    assert outcome.changes[0].evidence  # a guide can see why


def test_due_deadlines_fire_before_the_event_that_passes_them(engine: Engine) -> None:
    state, _ = run(engine, [paid("2024-01-02T10:00:00+08:00", 300_000),
                            paid("2024-03-02T10:00:00+08:00", 300_000)])
    outcome = engine.apply(state, paid("2025-02-01T10:00:00+08:00", 100))
    timer_changes = [c for c in outcome.changes if "timer" in c.cause]
    event_changes = [c for c in outcome.changes if "event_id" in c.cause]
    assert ("repeat_buyer", "removed") in ops(timer_changes)
    assert ("repeat_buyer", "added") in ops(event_changes)  # 03-02 and 02-01 within 365 d
    assert outcome.changes.index(timer_changes[0]) < outcome.changes.index(event_changes[0])


def test_evidence_names_the_values_behind_the_condition(engine: Engine) -> None:
    _, changes = run(engine, [paid("2024-01-02T10:00:00+08:00", 612_000)])
    high = next(c for c in changes if c.tag == "high_value")
    assert high.evidence == {"spend_fen[365d]": 612_000, "refund_fen[365d]": 0}
    assert "net_spend_365d_fen" not in high.evidence  # a definition shows what it is made of
    assert high.name_zh == "高价值" and high.rules_version == "2024-03-01.1"


def test_late_event_beyond_allowed_lateness_is_rejected(engine: Engine) -> None:
    state, _ = run(engine, [paid("2024-03-01T10:00:00+08:00", 100)])
    with pytest.raises(EventRejected, match="late event"):
        engine.apply(state, paid("2024-02-01T10:00:00+08:00", 100))
    # within the allowed lateness it is applied
    outcome = engine.apply(state, paid("2024-02-25T10:00:00+08:00", 100))
    assert outcome.state.orders.count == 2


def test_event_older_than_remembered_ids_is_rejected_not_double_applied(engine: Engine) -> None:
    first = event("interaction.sign_in", "2024-01-01T00:00:00+08:00", event_id="old")
    events = [first] + [event("interaction.sign_in", f"2024-01-01T01:{i // 60:02d}:{i % 60:02d}+08:00")
                        for i in range(SEEN_CAPACITY)]
    state, _ = run(engine, events)
    with pytest.raises(EventRejected, match="redelivery cannot be ruled out"):
        engine.apply(state, first)


def test_state_round_trips_and_stays_bounded(engine: Engine) -> None:
    state = None
    for day in range(1, 800):
        when = datetime.fromtimestamp(epoch("2024-01-01T12:00:00+08:00") + day * 86400)
        at = when.astimezone().isoformat()
        state = engine.apply(state, paid(at, 1_000)).state
    raw = encode_state(state)
    assert decode_state(raw) == state
    # 799 daily orders, but only the last 365 days of buckets are kept
    assert len(state.counters["paid_orders"]) == 2 * 365
    assert len(state.seen) == 2 * SEEN_CAPACITY
