"""Tiers and points (taggers/loyalty.py) with the default `loyalty:` section: tables of cases
at the boundaries RULES.md names, compile errors with file and line, and a size bound."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.changes import change_id_for, encode_change
from schemas.errors import EventRejected, RuleDefinitionError
from taggers.clock import LocalCalendar, to_epoch
from taggers.loyalty_compiler import compile_loyalty
from taggers.state import LoyaltyState
from taggers.yamlsrc import load_yaml
from tests.factories import event, paid
from tests.support import REPO_ROOT

_PACK = (REPO_ROOT / "taggers" / "rules" / "default.yaml").read_text("utf-8")
# The default pack's `loyalty:` section on its own, after three comment lines (the line
# numbers in BAD count from this text).
DEFAULT_YAML = "# loyalty section\n# of the\n# default pack\n" + _PACK[_PACK.index("\nloyalty:") + 1:]
CAL = LocalCalendar(8 * 3600)
M = "M1"


def program_from(text: str, source: str = "loyalty.yaml"):
    return compile_loyalty(load_yaml(text, source)["loyalty"], source, CAL)


PROGRAM = program_from(DEFAULT_YAML)
# the default plus a 双十一 triple-points period that also covers the member day 2024-11-08
FESTIVAL = program_from(DEFAULT_YAML.replace(
    "multiplier_periods: []",
    "multiplier_periods:\n"
    "      - {name: 双十一, start: 2024-11-01, end: \"2024-11-11\", multiplier: 3}"))


def epoch(text: str) -> int:
    return to_epoch(datetime.fromisoformat(text))


def run(events, until: str | None = None, program=PROGRAM, state=None, spend=()):
    """Apply events in order (spend: {index: points} redeemed after that event), then
    advance to `until`."""
    changes = []
    spend = dict(spend)
    for i, ev in enumerate(events):
        state, new = program.apply(state, ev, epoch(ev.occurred_at.isoformat()), M,
                                   {"event_id": ev.event_id})
        changes += new
        if i in spend:
            program.redeem(state, spend[i])
    if until is not None:
        changes += program.advance(state, epoch(until), M)
    return state, changes


def brief(changes, prefix: str = "tier."):
    return [(c.type, c.from_, c.to, c.at[:10]) for c in changes if c.type.startswith(prefix)]


def refund(at: str, amount_fen: int, order_id: str):
    return event("order.refunded", at, amount_fen=amount_fen, order_id=order_id)


def scans(day: str, n: int):
    return [event("scan.cap_opened", f"{day}T10:{i:02d}:00+08:00") for i in range(n)]


def sign_in(at: str):
    return event("interaction.sign_in", at)


# --- tiers -----------------------------------------------------------------------------------

# (id, events, advance to, level, growth at the end, changes as (type, from, to, local date))
TIER_CASES = [
    ("999 growth stays normal", [paid("2024-03-01T10:00:00+08:00", 99_999)], None,
     "normal", 999, []),
    ("1000 growth is silver", [paid("2024-03-01T10:00:00+08:00", 100_000)], None,
     "silver", 1000, [("tier.upgraded", "normal", "silver", "2024-03-01")]),
    ("999 then 1 more is silver at the crossing",
     [paid("2024-03-01T10:00:00+08:00", 99_900), sign_in("2024-03-02T10:00:00+08:00")], None,
     "silver", 1004, [("tier.upgraded", "normal", "silver", "2024-03-02")]),
    ("normal to gold in one order is one upgrade", [paid("2024-03-01T10:00:00+08:00", 500_000)],
     None, "gold", 5000, [("tier.upgraded", "normal", "gold", "2024-03-01")]),
    ("cap-open scans stop at 100 growth a day", scans("2024-03-01", 12), None, "normal", 100, []),
    ("the cap is per local day", scans("2024-03-01", 11) + scans("2024-03-02", 1), None,
     "normal", 110, []),
    ("sign-in twice in a day counts once",
     [sign_in("2024-03-01T09:00:00+08:00"), sign_in("2024-03-01T21:00:00+08:00")], None,
     "normal", 5, []),
    ("a late sign-in counts against its own day's cap",
     [sign_in("2024-03-02T09:00:00+08:00"), sign_in("2024-03-01T23:00:00+08:00"),
      sign_in("2024-03-01T23:30:00+08:00")], None, "normal", 10, []),
    ("sign-ins on two local days in one UTC day count twice",
     [sign_in("2024-03-07T23:30:00+08:00"), sign_in("2024-03-08T00:10:00+08:00")], None,
     "normal", 10, []),
    ("a refund takes growth back but does not downgrade at once",
     [paid("2024-03-01T10:00:00+08:00", 120_000, order_id="A"),
      refund("2024-03-05T10:00:00+08:00", 120_000, "A")], None,
     "silver", 0, [("tier.upgraded", "normal", "silver", "2024-03-01")]),
    ("a partial refund keeps the growth of the net full yuan",
     [paid("2024-03-01T10:00:00+08:00", 25_050, order_id="A"),
      refund("2024-03-05T10:00:00+08:00", 5_000, "A")], None, "normal", 200, []),
    ("refunding more than paid takes back only the order's growth",
     [sign_in("2024-03-01T09:00:00+08:00"), paid("2024-03-01T10:00:00+08:00", 30_000, order_id="A"),
      refund("2024-03-02T10:00:00+08:00", 90_000, "A")], None, "normal", 5, []),
    ("platinum with almost no growth drops one level, to gold",
     [paid("2023-04-01T10:00:00+08:00", 1_900_000), paid("2024-03-15T15:00:00+08:00", 100_000)],
     "2025-03-15T00:00:00+08:00", "gold", 1000,
     [("tier.upgraded", "normal", "gold", "2023-04-01"),
      ("tier.upgraded", "gold", "platinum", "2024-03-15"),
      ("tier.downgrade_warning", "platinum", "gold", "2025-02-13"),
      ("tier.downgraded", "platinum", "gold", "2025-03-15")]),
    ("the day before the review nothing has dropped yet",
     [paid("2023-04-01T10:00:00+08:00", 1_900_000), paid("2024-03-15T15:00:00+08:00", 100_000)],
     "2025-03-14T23:59:59+08:00", "platinum", 1000,
     [("tier.upgraded", "normal", "gold", "2023-04-01"),
      ("tier.upgraded", "gold", "platinum", "2024-03-15"),
      ("tier.downgrade_warning", "platinum", "gold", "2025-02-13")]),
    ("a year later it drops one more level",
     [paid("2023-04-01T10:00:00+08:00", 1_900_000), paid("2024-03-15T15:00:00+08:00", 100_000)],
     "2026-03-15T00:00:00+08:00", "silver", 0,
     [("tier.upgraded", "normal", "gold", "2023-04-01"),
      ("tier.upgraded", "gold", "platinum", "2024-03-15"),
      ("tier.downgrade_warning", "platinum", "gold", "2025-02-13"),
      ("tier.downgraded", "platinum", "gold", "2025-03-15"),
      ("tier.downgrade_warning", "gold", "silver", "2026-02-13"),
      ("tier.downgraded", "gold", "silver", "2026-03-15")]),
    ("the upgrade order's growth keeps the tier at the first review",
     [paid("2024-03-15T15:00:00+08:00", 500_000)], "2025-03-15T00:00:00+08:00", "gold", 5000,
     [("tier.upgraded", "normal", "gold", "2024-03-15")]),
    ("kept at the first review, dropped at the second",
     [paid("2024-03-15T15:00:00+08:00", 500_000)], "2026-03-15T00:00:00+08:00", "silver", 0,
     [("tier.upgraded", "normal", "gold", "2024-03-15"),
      ("tier.downgrade_warning", "gold", "silver", "2026-02-13"),
      ("tier.downgraded", "gold", "silver", "2026-03-15")]),
    ("growth after the warning saves the tier",
     [paid("2024-03-15T15:00:00+08:00", 500_000, order_id="A"),
      refund("2024-03-16T10:00:00+08:00", 100_000, "A"),
      paid("2025-03-01T10:00:00+08:00", 100_000)], "2025-03-15T00:00:00+08:00", "gold", 5000,
     [("tier.upgraded", "normal", "gold", "2024-03-15"),
      ("tier.downgrade_warning", "gold", "silver", "2025-02-13")]),
    ("an upgrade on 29 February is reviewed on 28 February",
     [paid("2024-02-29T12:00:00+08:00", 100_000, order_id="A"),
      refund("2024-03-01T12:00:00+08:00", 100_000, "A")], "2025-02-28T00:00:00+08:00",
     "normal", 0,
     [("tier.upgraded", "normal", "silver", "2024-02-29"),
      ("tier.downgrade_warning", "silver", "normal", "2025-01-29"),
      ("tier.downgraded", "silver", "normal", "2025-02-28")]),
]


@pytest.mark.parametrize("events,until,level,growth,expected", [c[1:] for c in TIER_CASES],
                         ids=[c[0] for c in TIER_CASES])
def test_tiers(events, until, level, growth, expected) -> None:
    state, changes = run(events, until)
    assert brief(changes) == expected
    assert state.level == level
    end = epoch(until) if until else epoch(events[-1].occurred_at.isoformat())
    assert PROGRAM.growth_at(state, end) == growth
    assert PROGRAM.level_tag(state) == "tier_" + level


def test_downgrade_warning_says_how_much_growth_is_still_needed() -> None:
    state, changes = run([paid("2023-04-01T10:00:00+08:00", 1_900_000),
                          paid("2024-03-15T15:00:00+08:00", 100_000),
                          paid("2025-01-10T10:00:00+08:00", 250_000)],
                         "2025-02-13T00:00:00+08:00")
    warning = changes[-1]
    assert (warning.type, warning.needed_growth, warning.growth) == (
        "tier.downgrade_warning", 20_000 - 3_500, 3_500)
    assert warning.at == "2025-02-13T00:00:00+08:00"
    assert warning.review_at == "2025-03-15T00:00:00+08:00"
    assert warning.cause == {"timer": "tier.downgrade_warning@2025-02-13T00:00:00+08:00"}
    assert warning.change_id == change_id_for(M, "tier:platinum",
                                              "tier.downgrade_warning", warning.cause)


def test_upgrade_record_has_the_design_shape() -> None:
    order = paid("2024-03-01T12:00:00+08:00", 520_000, event_id="ord-1")
    _, (change,) = run([order])
    assert msgspec.json.decode(encode_change(change)) == {
        "change_id": change_id_for(M, "tier:normal>gold", "tier.upgraded", {"event_id": "ord-1"}),
        "member_id": M, "type": "tier.upgraded", "from": "normal", "to": "gold",
        "growth": 5200, "cause": {"event_id": "ord-1"}, "at": "2024-03-01T12:00:00+08:00",
        # the design's record plus the member's guides, always written (issue 12; the engine
        # fills them in: test_default_pack's test_tier_changes_name_the_members_guides_too)
        "guides": []}


def test_next_deadline_is_the_earliest_and_advance_is_idempotent() -> None:
    state, _ = run([paid("2024-03-15T15:00:00+08:00", 500_000)])
    # the points lot of 2024 warns on 2025-12-02; the gold review warns on 2025-02-13
    assert PROGRAM.next_deadline(state) == epoch("2025-02-13T00:00:00+08:00")
    assert PROGRAM.advance(state, epoch("2025-02-12T23:59:59+08:00"), M) == []
    first = PROGRAM.advance(state, epoch("2025-02-13T00:00:00+08:00"), M)
    assert first == []  # gold is met: the warning deadline passes silently
    assert PROGRAM.next_deadline(state) == epoch("2025-03-15T00:00:00+08:00")
    assert PROGRAM.advance(state, epoch("2025-03-15T00:00:00+08:00"), M) == []
    assert state.review_at == epoch("2026-03-15T00:00:00+08:00")
    assert PROGRAM.next_deadline(None) is None


def test_apply_fires_due_deadlines_before_the_event() -> None:
    state, changes = run([paid("2024-03-15T15:00:00+08:00", 100_000, order_id="A"),
                          refund("2024-03-16T10:00:00+08:00", 100_000, "A"),
                          paid("2025-04-01T10:00:00+08:00", 100_000)])
    assert brief(changes) == [
        ("tier.upgraded", "normal", "silver", "2024-03-15"),
        ("tier.downgrade_warning", "silver", "normal", "2025-02-13"),
        ("tier.downgraded", "silver", "normal", "2025-03-15"),
        ("tier.upgraded", "normal", "silver", "2025-04-01")]


# --- points ----------------------------------------------------------------------------------

# (id, program, events, points redeemed after event i, balance, shortfall)
POINT_CASES = [
    ("1 point per full 100 yuan", PROGRAM, [paid("2024-03-01T10:00:00+08:00", 19_999)], {}, 1, 0),
    ("member day in local time though UTC is the 7th", PROGRAM,
     [paid("2024-03-08T00:30:00+08:00", 30_000)], {}, 6, 0),
    ("the evening before the member day is single", PROGRAM,
     [paid("2024-03-07T23:30:00+08:00", 30_000)], {}, 3, 0),
    ("late on the member day, UTC still the 8th, is double", PROGRAM,
     [paid("2024-03-08T23:30:00+08:00", 30_000)], {}, 6, 0),
    ("just after the member day is single though UTC is the 8th", PROGRAM,
     [paid("2024-03-09T00:30:00+08:00", 30_000)], {}, 3, 0),
    ("multiplier period, its last minute", FESTIVAL,
     [paid("2024-11-11T23:59:00+08:00", 30_000)], {}, 9, 0),
    ("multiplier period over: the next midnight is single", FESTIVAL,
     [paid("2024-11-12T00:00:00+08:00", 30_000)], {}, 3, 0),
    ("member day inside a period takes the larger multiplier, not both", FESTIVAL,
     [paid("2024-11-08T10:00:00+08:00", 30_000)], {}, 9, 0),
    ("a refund claws back the order's points", PROGRAM,
     [paid("2024-03-01T10:00:00+08:00", 50_000, order_id="A"),
      paid("2024-03-02T10:00:00+08:00", 30_000, order_id="B"),
      refund("2024-03-05T10:00:00+08:00", 50_000, "A")], {}, 3, 0),
    ("a partial refund of a member-day order at its multiplier", PROGRAM,
     [paid("2024-03-08T10:00:00+08:00", 30_000, order_id="A"),
      refund("2024-03-09T10:00:00+08:00", 10_000, "A")], {}, 4, 0),
    ("a refund after points were spent floors at 0 and records the shortfall", PROGRAM,
     [paid("2024-03-01T10:00:00+08:00", 100_000, order_id="A"),
      refund("2024-03-05T10:00:00+08:00", 100_000, "A")], {0: 8}, 0, 8),
    ("new points pay the shortfall first", PROGRAM,
     [paid("2024-03-01T10:00:00+08:00", 100_000, order_id="A"),
      refund("2024-03-05T10:00:00+08:00", 100_000, "A"),
      paid("2024-03-06T10:00:00+08:00", 50_000)], {0: 8}, 0, 3),
    ("the same refund delivered twice under new ids claws back once", PROGRAM,
     [paid("2024-03-01T10:00:00+08:00", 50_000, order_id="A"),
      paid("2024-03-02T10:00:00+08:00", 30_000),
      refund("2024-03-05T10:00:00+08:00", 50_000, "A"),
      refund("2024-03-05T10:00:01+08:00", 50_000, "A")], {}, 3, 0),
    ("a refund of an order not remembered claws back at the base rate", PROGRAM,
     [paid("2024-03-08T10:00:00+08:00", 50_000), refund("2024-03-09T10:00:00+08:00", 20_000,
                                                          "unknown")], {}, 8, 0),
]


@pytest.mark.parametrize("program,events,spend,balance,shortfall",
                         [c[1:] for c in POINT_CASES], ids=[c[0] for c in POINT_CASES])
def test_points(program, events, spend, balance, shortfall) -> None:
    state, _ = run(events, program=program, spend=spend)
    assert (state.points, state.shortfall) == (balance, shortfall)


def test_refund_of_a_forgotten_order_takes_growth_from_the_newest_days() -> None:
    state, _ = run([paid("2024-03-01T10:00:00+08:00", 50_000),
                    sign_in("2024-03-02T10:00:00+08:00"),
                    refund("2024-03-03T10:00:00+08:00", 1_000, "unknown")])
    assert PROGRAM.growth_at(state, epoch("2024-03-03T10:00:00+08:00")) == 500 + 5 - 10


# Points of 2023 are valid through 2024-12-31 (a leap year) and expire 2025-01-01 00:00 local;
# points of the 2024-02-29 order expire 2026-01-01 00:00 local. Warnings 30 days before.
EXPIRY_EVENTS = [paid("2023-06-01T10:00:00+08:00", 50_000),
                 paid("2024-02-29T10:00:00+08:00", 30_000)]
# (id, redeemed after event i, advance to, balance, [(type, points, balance, at, expires_at)])
EXPIRY_CASES = [
    ("nothing due before the warning", {}, "2024-12-01T23:59:59+08:00", 8, []),
    ("warning 30 days before the end of the year after", {}, "2024-12-02T00:00:00+08:00", 8,
     [("points.expiry_warning", 5, 8, "2024-12-02T00:00:00+08:00",
       "2025-01-01T00:00:00+08:00")]),
    ("still valid on the last second of 2024", {}, "2024-12-31T23:59:59+08:00", 8,
     [("points.expiry_warning", 5, 8, "2024-12-02T00:00:00+08:00",
       "2025-01-01T00:00:00+08:00")]),
    ("2023 expires at 2025-01-01 local midnight, oldest lot only", {},
     "2025-01-01T00:00:00+08:00", 3,
     [("points.expiry_warning", 5, 8, "2024-12-02T00:00:00+08:00", "2025-01-01T00:00:00+08:00"),
      ("points.expired", 5, 3, "2025-01-01T00:00:00+08:00", "2025-01-01T00:00:00+08:00")]),
    ("the 29 February lot expires at the start of 2026", {}, "2026-01-01T00:00:00+08:00", 0,
     [("points.expiry_warning", 5, 8, "2024-12-02T00:00:00+08:00", "2025-01-01T00:00:00+08:00"),
      ("points.expired", 5, 3, "2025-01-01T00:00:00+08:00", "2025-01-01T00:00:00+08:00"),
      ("points.expiry_warning", 3, 3, "2025-12-02T00:00:00+08:00", "2026-01-01T00:00:00+08:00"),
      ("points.expired", 3, 0, "2026-01-01T00:00:00+08:00", "2026-01-01T00:00:00+08:00")]),
    ("points are spent oldest first, so less expires", {1: 6}, "2026-01-01T00:00:00+08:00", 0,
     [("points.expiry_warning", 2, 2, "2025-12-02T00:00:00+08:00", "2026-01-01T00:00:00+08:00"),
      ("points.expired", 2, 0, "2026-01-01T00:00:00+08:00", "2026-01-01T00:00:00+08:00")]),
]


@pytest.mark.parametrize("spend,until,balance,expected", [c[1:] for c in EXPIRY_CASES],
                         ids=[c[0] for c in EXPIRY_CASES])
def test_points_expiry(spend, until, balance, expected) -> None:
    state, changes = run(EXPIRY_EVENTS, until, spend=spend)
    assert [(c.type, c.points, c.balance, c.at, c.expires_at) for c in changes
            if c.type.startswith("points.")] == expected
    assert state.points == balance
    for change in changes:
        assert change.cause == {"timer": f"{change.type}@{change.at}"}


def test_expired_change_ids_differ_per_lot_and_repeat_on_replay() -> None:
    _, first = run(EXPIRY_EVENTS, "2026-01-01T00:00:00+08:00")
    _, again = run(EXPIRY_EVENTS, "2026-01-01T00:00:00+08:00")
    ids = [c.change_id for c in first]
    assert ids == [c.change_id for c in again] and len(set(ids)) == len(ids)


def test_redeem_more_than_the_balance_is_rejected() -> None:
    state, _ = run([paid("2024-03-01T10:00:00+08:00", 50_000)])
    with pytest.raises(EventRejected, match="balance is 5"):
        PROGRAM.redeem(state, 6)


def test_profile() -> None:
    state, _ = run(EXPIRY_EVENTS + [paid("2024-03-15T15:00:00+08:00", 500_000)])
    assert msgspec.to_builtins(PROGRAM.profile(state, epoch("2024-03-20T00:00:00+08:00"))) == {
        "tier": "gold", "tier_name_zh": "金卡", "tier_since": "2024-03-15T15:00:00+08:00",
        "tier_review_at": "2025-03-15T00:00:00+08:00", "growth": 500 + 300 + 5000,
        "next_tier": {"tier": "platinum", "growth_needed": 20_000 - 5800},
        "points": 5 + 3 + 50,
        "points_lots": [
            {"earned_year": 2023, "points": 5, "expires_at": "2025-01-01T00:00:00+08:00"},
            {"earned_year": 2024, "points": 53, "expires_at": "2026-01-01T00:00:00+08:00"}],
        "points_shortfall": 0}
    assert PROGRAM.level_tags[0] == ("tier_normal", "普通")


# --- compile errors --------------------------------------------------------------------------

# (id, text to replace in the default section, replacement, line, message fragment)
BAD = [
    ("unknown key with a suggestion", "evaluation_months: 12", "evaluation_month: 12", 11,
     "did you mean 'evaluation_months'"),
    ("thresholds not increasing", "threshold: 20000", "threshold: 5000", 9,
     "thresholds must increase"),
    ("lowest level above 0", "{id: normal, name_zh: 普通, threshold: 0}",
     "{id: normal, name_zh: 普通, threshold: 10}", 6, "must have threshold 0"),
    ("negative number", "downgrade_warning_days: 30", "downgrade_warning_days: -30", 12,
     "at least 0"),
    ("a fraction", "per_yuan_paid: 1", "per_yuan_paid: 1.5", 14, "whole number"),
    ("unknown event type", "scan.cap_opened: {", "scan.cap_open: {", 16,
     "did you mean 'scan.cap_opened'"),
    ("orders earn through per_yuan_paid", "interaction.sign_in: {growth: 5, daily_cap_count: 1}",
     "order.paid: {growth: 5}", 17, "per_yuan_paid"),
    ("two daily caps", "daily_cap_count: 1}", "daily_cap_count: 1, daily_cap_growth: 5}", 17,
     "one daily cap"),
    ("unknown key in an event source", "{growth: 10, daily_cap_growth: 100}",
     "{growth: 10, daily_cap_grwth: 100}", 16, "did you mean 'daily_cap_growth'"),
    ("member day out of range", "days_of_month: [8]", "days_of_month: [32]", 20, "days 1-31"),
    ("bad date", "multiplier_periods: []",
     "multiplier_periods:\n      - {name: x, start: \"2024-02-30\", end: 2024-03-01, "
     "multiplier: 2}", 22, "not a valid date"),
    ("end before start", "multiplier_periods: []",
     "multiplier_periods:\n      - {name: x, start: 2024-03-02, end: 2024-03-01, "
     "multiplier: 2}", 22, "'end' is before 'start'"),
    ("zero multiplier", "days_of_month: [8], multiplier: 2", "days_of_month: [8], multiplier: 0",
     20, "at least 1"),
    ("unknown expiry key", "\n      warning_days: 30", "\n      warn_days: 30", 25,
     "did you mean 'warning_days'"),
    ("level id not snake case", "{id: gold,", "{id: Gold,", 8, "lower_snake_case"),
]


@pytest.mark.parametrize("old,new,line,fragment", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_compile_errors_name_file_and_line(old, new, line, fragment) -> None:
    assert old in DEFAULT_YAML
    with pytest.raises(RuleDefinitionError) as caught:
        program_from(DEFAULT_YAML.replace(old, new, 1), "brand.yaml")
    assert caught.value.path == "brand.yaml"
    assert caught.value.line == line, str(caught.value)
    assert fragment in str(caught.value)


# --- bounded state ---------------------------------------------------------------------------


def _simulate(days: int, daily, program=PROGRAM) -> tuple[LoyaltyState, int]:
    """Feed `daily(i, day_text)` events for `days` days from 2023-01-01; return the state and
    the largest encoded size seen in the last year."""
    state, largest = None, 0
    start = date(2023, 1, 1)
    for i in range(days):
        day = (start + timedelta(days=i)).isoformat()
        for ev in daily(i, day):
            state, _ = program.apply(state, ev, epoch(ev.occurred_at.isoformat()), M,
                                     {"event_id": ev.event_id})
        if state is not None and i >= days - 365:
            largest = max(largest, len(msgspec.msgpack.encode(state)))
    return state, largest


def typical(i: int, day: str):
    if i % 7 == 0:
        yield sign_in(f"{day}T09:00:00+08:00")
    if i % 30 == 0:
        yield paid(f"{day}T20:00:00+08:00", 35_800)
    if i % 45 == 0:
        yield from scans(day, 2)


def heavy(i: int, day: str):
    yield sign_in(f"{day}T09:00:00+08:00")
    yield from scans(day, 12)
    yield paid(f"{day}T20:00:00+08:00", 1_288_800, order_id=f"o-{i}")
    if i % 10 == 0:
        yield refund(f"{day}T21:00:00+08:00", 100_000, f"o-{i}")


TYPICAL_LIMIT = 600
HEAVY_LIMIT = 2_600


@pytest.mark.parametrize("daily,limit", [(typical, TYPICAL_LIMIT), (heavy, HEAVY_LIMIT)],
                         ids=["typical member", "heavy member: every source every day"])
def test_state_size_is_bounded_after_years(daily, limit) -> None:
    _, two_years = _simulate(2 * 365, daily)
    state, four_years = _simulate(4 * 365, daily)
    assert four_years <= limit
    assert four_years <= two_years + 16  # does not grow with the number of events
    encoded = msgspec.msgpack.encode(state)
    assert msgspec.msgpack.decode(encoded, type=LoyaltyState) == state


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 15), st.integers(0, 3_000_000)),
                min_size=400, max_size=900))
def test_state_size_bound_holds_for_any_activity(days) -> None:
    def daily(i: int, day: str):
        sign_ins, cap_scans, amount = days[i]
        for _ in range(sign_ins):
            yield sign_in(f"{day}T09:00:00+08:00")
        yield from scans(day, cap_scans)
        if amount:
            yield paid(f"{day}T20:00:00+08:00", amount)

    _, largest = _simulate(len(days), daily)
    assert largest <= HEAVY_LIMIT
