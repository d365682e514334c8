"""The default pack against RULES.md, row by row: each tag, lifecycle stage and RFM segment
where it holds, where it does not, and at its boundary; then its timers on a fake clock.

The engine has no clock: `Engine.advance(state, now)` is the clock. "Day N" below means N
times 24 h after the first event (10:00 +08:00 on 2024-01-01, a leap year), which is how
`days_since` and `pending` count; windows `x[Nd]` count local calendar days, today included.
Where RULES.md leaves an edge open, the reading an operations team would expect is chosen and
said so next to the case.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import orjson
import pytest

from schemas.changes import change_id_for
from streams.platform.settings import DEFAULT_RULES
from taggers.clock import to_epoch
from taggers.engine import Engine
from taggers.rules import load_rules
from taggers.state import MemberState
from tests.factories import event, joined, paid

CST = timezone(timedelta(hours=8))
START = datetime(2024, 1, 1, 10, 0, tzinfo=CST)
DAY = 86_400


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_rules(DEFAULT_RULES))


# --- building histories -----------------------------------------------------------------------


def d(days: float = 0, seconds: int = 0) -> str:
    """RFC 3339 text of day `days` (+ `seconds`) after the start of every history."""
    return (START + timedelta(days=days, seconds=seconds)).isoformat()


def epoch(text: str) -> int:
    return to_epoch(datetime.fromisoformat(text))


def item(category: str = "baijiu", price: int = 10_000, quantity: int = 1,
         sku: str | None = None, spec: str = "regular") -> dict[str, Any]:
    return {"sku": sku or f"{category.upper()}-500ML", "category": category,
            "unit_price_fen": price, "quantity": quantity, "spec": spec}


def order(at: str, *items: dict[str, Any], amount: int | None = None, **fields: Any):
    """A paid order of these items; its amount is their total unless given."""
    if amount is None:
        amount = sum(i["unit_price_fen"] * i["quantity"] for i in items)
    return paid(at, amount, items=list(items), **fields)


def refund(at: str, amount: int = 1_000):
    return event("order.refunded", at, amount_fen=amount)


def trial(at: str, sku: str = "BJ-QX42-500ML"):
    return order(at, item("baijiu", 9_900, sku=sku, spec="trial"))


def regular(at: str, sku: str = "BJ-QX42-500ML"):
    return order(at, item("baijiu", 45_900, sku=sku))


def interaction(kind: str, at: str, **fields: Any):
    return event(f"interaction.{kind}", at, **fields)


def scan(kind: str, at: str):
    return event(f"scan.{kind}", at)


def befriend(at: str, guide: str, external: str = "wm-1"):
    return interaction("wecom_friend_added", at, guide_id=guide, external_userid=external)


def unfriend(at: str, guide: str, external: str = "wm-1"):
    return interaction("wecom_friend_removed", at, guide_id=guide, external_userid=external)


def birthday(at: str, month_day: str | None):
    return interaction("profile_updated", at, birthday=month_day)


def run(engine: Engine, events: Any, as_of: str | None = None,
        state: MemberState | None = None) -> tuple[MemberState, list[Any]]:
    """Apply events in order, then (if given) let the clock run to `as_of`."""
    changes: list[Any] = []
    for ev in events:
        outcome = engine.apply(state, ev)
        state = outcome.state
        changes.extend(outcome.changes)
    assert state is not None
    if as_of is not None:
        changes.extend(engine.advance(state, epoch(as_of)).changes)
    return state, changes


def ops(changes: list[Any], prefix: str = "") -> list[tuple[str, str]]:
    return [(c.tag, c.op) for c in changes if c.tag.startswith(prefix)]


def held_in_group(state: MemberState, prefix: str) -> list[str]:
    return sorted(tag for tag in state.tags if tag.startswith(prefix))


# --- the Tags table ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    events: tuple[Any, ...]
    held: bool
    as_of: str | None = None  # let the clock run to here after the events


def case(id: str, events: list[Any], held: bool, as_of: str | None = None) -> Case:
    return Case(id, tuple(events), held, as_of)


HV = 500_000  # ¥5,000 in fen: the high_value line

TAG_CASES: dict[str, list[Case]] = {
    "member": [
        case("joined", [joined(d(0))], True),
        case("signs in without joining", [interaction("sign_in", d(0))], False),
        case("orders without joining", [order(d(0), item())], False),
    ],
    "wecom_friend": [
        case("one guide adds", [befriend(d(0), "g1")], True),
        case("one guide adds then removes", [befriend(d(0), "g1"), unfriend(d(1), "g1")],
             False),
        case("two guides add, one removes", [befriend(d(0), "g1", "wm-1"),
                                             befriend(d(1), "g2", "wm-2"),
                                             unfriend(d(2), "g1", "wm-1")], True),
        case("two guides add, both remove", [befriend(d(0), "g1", "wm-1"),
                                             befriend(d(1), "g2", "wm-2"),
                                             unfriend(d(2), "g1", "wm-1"),
                                             unfriend(d(3), "g2", "wm-2")], False),
        case("removed then added again", [befriend(d(0), "g1"), unfriend(d(1), "g1"),
                                          befriend(d(2), "g1")], True),
        # a store guide on an order is a guide, not a WeCom contact
        case("served by a guide in store only", [order(d(0), item(), guide_id="g1")], False),
    ],
    "first_purchase": [
        case("exactly one order", [order(d(0), item())], True),
        case("no order", [joined(d(0))], False),
        case("two orders", [order(d(0), item()), order(d(1), item())], False),
        case("one order ever, 400 days ago", [order(d(0), item())], True, as_of=d(400)),
        # a refunded order was still paid: one paid order ever
        case("its only order refunded", [order(d(0), item()), refund(d(1), 10_000)], True),
    ],
    "repeat_buyer": [
        case("two orders the same day", [order(d(0), item()), order(d(0, 60), item())], True),
        case("one order", [order(d(0), item())], False),
        # day 0 is still in the 365-local-day window on day 364, not on day 365
        case("second order 364 days later", [order(d(0), item()), order(d(364), item())],
             True),
        case("second order 365 days later", [order(d(0), item()), order(d(365), item())],
             False),
        case("first order leaves the window", [order(d(0), item()), order(d(10), item())],
             False, as_of=d(365)),
    ],
    "high_value": [
        case("net ¥5,000 exactly", [paid(d(0), HV)], True),
        case("net ¥4,999.99", [paid(d(0), HV - 1)], False),
        case("two orders make ¥5,000", [paid(d(0), 200_000), paid(d(100), 300_000)], True),
        case("¥5,200 less a ¥200 refund is ¥5,000", [paid(d(0), 520_000),
                                                     refund(d(1), 20_000)], True),
        case("¥5,200 less a ¥200.01 refund", [paid(d(0), 520_000), refund(d(1), 20_001)],
             False),
        case("the spend leaves the 365-day window", [paid(d(0), HV)], False, as_of=d(365)),
        case("the spend 364 days back", [paid(d(0), HV)], True, as_of=d(364)),
    ],
    "premium_buyer": [
        case("an item at ¥1,000 a unit", [order(d(0), item(price=100_000))], True),
        case("an item at ¥999.99 a unit", [order(d(0), item(price=99_999))], False),
        case("two units at ¥600 are not one at ¥1,200",
             [order(d(0), item(price=60_000, quantity=2))], False),
        case("the premium item among cheaper ones",
             [order(d(0), item(price=5_000), item("wine", 120_000))], True),
        case("bought 365 days ago", [order(d(0), item(price=100_000))], False, as_of=d(365)),
    ],
    "baijiu_lover": [
        case("two baijiu-only orders", [order(d(0), item()), order(d(5), item())], True),
        case("one baijiu order", [order(d(0), item(price=90_000))], False),
        case("60.0 % baijiu over two baijiu orders",
             [order(d(0), item(price=60_000), item("wine", 80_000)),
              order(d(5), item(price=60_000))], True),
        case("59.9 % baijiu over two baijiu orders",
             [order(d(0), item(price=59_900), item("wine", 80_200)),
              order(d(5), item(price=59_900))], False),
        case("a large wine order dilutes the share",
             [order(d(0), item()), order(d(1), item()), order(d(2), item("wine", 20_000))],
             False),
        case("one baijiu order left in the window",
             [order(d(0), item()), order(d(30), item())], False, as_of=d(365)),
    ],
    "wine_lover": [
        case("two wine-only orders", [order(d(0), item("wine")), order(d(5), item("wine"))],
             True),
        case("one wine order", [order(d(0), item("wine", 90_000))], False),
        case("60.0 % wine over two wine orders",
             [order(d(0), item("wine", 60_000), item("baijiu", 80_000)),
              order(d(5), item("wine", 60_000))], True),
        case("59.9 % wine over two wine orders",
             [order(d(0), item("wine", 59_900), item("baijiu", 80_200)),
              order(d(5), item("wine", 59_900))], False),
    ],
    "trial_not_converted": [
        case("trial, no regular for 30 days", [trial(d(0))], True, as_of=d(30)),
        case("trial, one second short of 30 days", [trial(d(0))], False, as_of=d(30, -1)),
        case("regular bought on day 29", [trial(d(0)), regular(d(29))], False, as_of=d(60)),
        case("regular bought on day 30, after the tag", [trial(d(0)), regular(d(30, 3600))],
             False),
        case("regular of another product", [trial(d(0)), regular(d(10), sku="WN-CAB-750ML")],
             True, as_of=d(30)),
        case("trial listed before the regular in one order",
             [order(d(0), item(sku="X", spec="trial", price=0), item(sku="X", price=45_900))],
             False, as_of=d(40)),
        # 买正装送小样: the free sample comes with the full size; the member is converted,
        # whatever order the shop lists the lines in
        case("a free trial with the regular in one order",
             [order(d(0), item(sku="X", price=45_900), item(sku="X", spec="trial", price=0))],
             False, as_of=d(40)),
        case("a second trial does not restart the 30 days", [trial(d(0)), trial(d(20))], True,
             as_of=d(30)),
        # the tracker forgets a trial `keep: 365d` after it started (a rule-file parameter)
        case("trial forgotten after a year", [trial(d(0))], False, as_of=d(365)),
    ],
    "refund_prone": [
        case("two refunds in a week", [refund(d(0)), refund(d(6))], True),
        case("one refund", [refund(d(0))], False),
        case("the first refund 89 days back", [refund(d(0)), refund(d(89))], True),
        case("the first refund 90 days back", [refund(d(0)), refund(d(90))], False),
        case("the first refund leaves the window", [refund(d(0)), refund(d(1))], False,
             as_of=d(90)),
    ],
    "active_interactor": [
        case("five kinds of interaction in a day",
             [interaction(k, d(0)) for k in ("sign_in", "share", "browse", "review", "lottery")],
             True),
        case("four interactions", [interaction("sign_in", d(i)) for i in range(4)], False),
        case("five within 30 local days",
             [interaction("sign_in", d(i)) for i in (0, 7, 14, 21, 29)], True),
        case("five, the first 30 days back",
             [interaction("sign_in", d(i)) for i in (0, 7, 14, 21, 30)], False),
        case("joining, profile and WeCom events are not interactions",
             [joined(d(0)), birthday(d(0), "05-01"), befriend(d(0), "g1")]
             + [interaction("sign_in", d(i)) for i in range(4)], False),
    ],
    "coupon_sensitive": [
        case("three coupons redeemed in 90 days",
             [interaction("coupon_redeemed", d(i)) for i in (0, 40, 89)], True),
        case("two redeemed", [interaction("coupon_redeemed", d(i)) for i in (0, 40)], False),
        case("three claimed, none redeemed",
             [interaction("coupon_claimed", d(i)) for i in (0, 1, 2)], False),
        case("the first redeemed 90 days back",
             [interaction("coupon_redeemed", d(i)) for i in (0, 40, 90)], False),
    ],
    "sharer": [
        case("three shares in 30 days", [interaction("share", d(i)) for i in (0, 10, 29)],
             True),
        case("two shares", [interaction("share", d(i)) for i in (0, 10)], False),
        case("the first share 30 days back", [interaction("share", d(i)) for i in (0, 15, 30)],
             False),
        case("three shares, then 30 days pass", [interaction("share", d(i)) for i in (0, 1, 2)],
             False, as_of=d(30)),
    ],
    "scan_verifier": [
        case("one verify scan", [scan("verified", d(0))], True),
        case("cap scans only", [scan("cap_opened", d(0)), scan("cap_opened", d(1))], False),
        case("verified 364 days back", [scan("verified", d(0))], True, as_of=d(364)),
        case("verified 365 days back", [scan("verified", d(0))], False, as_of=d(365)),
    ],
    "cap_opener": [
        case("three cap scans in 90 days", [scan("cap_opened", d(i)) for i in (0, 45, 89)],
             True),
        case("two cap scans", [scan("cap_opened", d(i)) for i in (0, 45)], False),
        case("the first cap scan 90 days back", [scan("cap_opened", d(i)) for i in (0, 45, 90)],
             False),
        case("verify scans are not cap scans", [scan("verified", d(i)) for i in (0, 1, 2)],
             False),
    ],
    "new_member_no_order_31d": [
        case("joined 31 days ago, no order", [joined(d(0))], True, as_of=d(31)),
        case("one second short of 31 days", [joined(d(0))], False, as_of=d(31, -1)),
        case("ordered on day 30", [joined(d(0)), order(d(30), item())], False, as_of=d(40)),
        case("ordered on day 35", [joined(d(0)), order(d(35), item())], False),
        case("never joined", [interaction("sign_in", d(0))], False, as_of=d(60)),
    ],
    "dormant_90d": [
        case("no order for 90 days", [order(d(0), item())], True, as_of=d(90)),
        case("one second short of 90 days", [order(d(0), item())], False, as_of=d(90, -1)),
        case("ordered again on day 60", [order(d(0), item()), order(d(60), item())], False,
             as_of=d(90)),
        case("never ordered", [joined(d(0))], False, as_of=d(200)),
        case("woken by an order", [order(d(0), item()), order(d(100), item())], False),
    ],
    "churn_risk": [
        case("high value, no order for 60 days", [paid(d(0), HV)], True, as_of=d(60)),
        case("one second short of 60 days", [paid(d(0), HV)], False, as_of=d(60, -1)),
        case("never high value", [paid(d(0), HV - 1)], False, as_of=d(200)),
        # "was high_value": held it once, even if its 365-day spend has lapsed since
        case("former high value", [paid(d(0), HV), paid(d(330), 1_000)], True, as_of=d(390)),
        case("high value, ordered again on day 59", [paid(d(0), HV), paid(d(59), 1_000)],
             False, as_of=d(60)),
    ],
    "birthday_month": [
        case("00:00 on the 1st of the month", [birthday(d(9), "03-15")], True,
             as_of="2024-03-01T00:00:00+08:00"),
        case("a second before the month", [birthday(d(9), "03-15")], False,
             as_of="2024-02-29T23:59:59+08:00"),
        case("last second of the month", [birthday(d(9), "03-15")], True,
             as_of="2024-03-31T23:59:59+08:00"),
        case("the next month", [birthday(d(9), "03-15")], False,
             as_of="2024-04-01T00:00:00+08:00"),
        case("birthday given during its month", [birthday("2024-03-20T10:00:00+08:00", "03-15")],
             True),
        case("December, across the new year", [birthday(d(9), "12-05")], False,
             as_of="2025-01-01T00:00:00+08:00"),
        case("no birthday given", [joined(d(0)), birthday(d(1), None)], False,
             as_of="2024-03-15T00:00:00+08:00"),
    ],
}

# The Tags table of RULES.md, in its order.
RULES_TAGS = ("member", "wecom_friend", "first_purchase", "repeat_buyer", "high_value",
              "premium_buyer", "baijiu_lover", "wine_lover", "trial_not_converted",
              "refund_prone", "active_interactor", "coupon_sensitive", "sharer",
              "scan_verifier", "cap_opener", "new_member_no_order_31d", "dormant_90d",
              "churn_risk", "birthday_month")

# Regression: whole-day recency thresholds were '> 90', '> 180' and '<= 90', so lc_silent
# and R-low began at 91 days and lc_lost at 181, a day after dormant_90d. The cases at exactly
# 90 and 180 days (and half a day later) below are named after what broke.
def _params(table: dict[str, list[Any]]) -> list[Any]:
    params = []
    for name, cases in table.items():
        for c in cases:
            params.append(pytest.param(name, c, id=f"{name}: {c.id}"))
    return params


@pytest.mark.parametrize("tag,case", _params(TAG_CASES))
def test_tag_row(engine: Engine, tag: str, case: Case) -> None:
    state, _ = run(engine, case.events, case.as_of)
    assert (tag in state.tags) == case.held, sorted(state.tags)


def test_every_row_of_the_tags_table_is_covered(engine: Engine) -> None:
    pack_tags = {rule.id for rule in engine.pack.tags if rule.group is None}
    assert set(RULES_TAGS) == set(TAG_CASES) == pack_tags
    for tag, cases in TAG_CASES.items():
        assert {c.held for c in cases} == {True, False}, tag


# --- lifecycle: one stage at a time ----------------------------------------------------------


@dataclass(frozen=True)
class StageCase:
    id: str
    events: tuple[Any, ...]
    stage: str | None  # the one lc_* tag held, or none
    as_of: str | None = None


def stage(id: str, events: list[Any], expected: str | None, as_of: str | None = None):
    return StageCase(id, tuple(events), expected, as_of)


TWO = [order(d(0), item()), order(d(10), item())]  # two orders, the last on day 10

LIFECYCLE_CASES = {
    "lifecycle": [
        stage("not joined, no order", [interaction("sign_in", d(0))], None),
        stage("joined, no order", [joined(d(0))], "lc_new"),
        stage("joined long ago, still no order", [joined(d(0))], "lc_new", as_of=d(400)),
        stage("one order", [order(d(0), item())], "lc_first"),
        stage("joined, then one order", [joined(d(0)), order(d(1), item())], "lc_first"),
        stage("two orders", TWO, "lc_active"),
        stage("one order, a second short of 90 days", [order(d(0), item())], "lc_first",
              as_of=d(90, -1)),
        stage("two orders, a second short of 90 days", TWO, "lc_active", as_of=d(100, -1)),
        # RULES.md: active "last order ≤ 90 d", silent "90–180 d", lost "> 180 d". The ends
        # overlap; read as [0, 90), [90, 180), [180, ...) so a member turns silent at the
        # very moment dormant_90d (沉睡, "none in the last 90 d") is added.
        stage("two orders, 90 days on", TWO, "lc_silent", as_of=d(100)),
        stage("two orders, 90 days and 12 hours on", TWO, "lc_silent",
              as_of=d(100, 12 * 3600)),
        stage("one order, 100 days on", [order(d(0), item())], "lc_silent", as_of=d(100)),
        stage("a second short of 180 days", TWO, "lc_silent", as_of=d(190, -1)),
        stage("180 days on", TWO, "lc_lost", as_of=d(190)),
        stage("180 days and 12 hours on", TWO, "lc_lost", as_of=d(190, 12 * 3600)),
        stage("200 days on", TWO, "lc_lost", as_of=d(210)),
        stage("a lost member orders again", TWO + [order(d(300), item())], "lc_active"),
    ],
}


@pytest.mark.parametrize("group,case", _params(LIFECYCLE_CASES))
def test_lifecycle_stage(engine: Engine, group: str, case: StageCase) -> None:
    state, _ = run(engine, case.events, case.as_of)
    assert held_in_group(state, "lc_") == ([case.stage] if case.stage else [])
    expected_value = case.stage[3:] if case.stage else None
    assert engine.pack.group_value(group, state.tags) == expected_value


# --- RFM: one of the classic eight segments ---------------------------------------------------

BIG, SMALL = 100_000, 10_000  # three BIG orders make M high (¥3,000); SMALL ones do not


def orders_of(amount: int, days: tuple[int, ...] = (0, 10, 20)) -> list[Any]:
    return [paid(d(day), amount) for day in days]


RFM_CASES = {
    "rfm": [
        stage("HHH", orders_of(BIG), "rfm_important_value"),
        stage("HLH", orders_of(3 * BIG, (0,)), "rfm_important_develop"),
        stage("LHH", orders_of(BIG), "rfm_important_keep", as_of=d(120)),
        stage("LLH", orders_of(3 * BIG, (0,)), "rfm_important_retain", as_of=d(100)),
        stage("HHL", orders_of(SMALL), "rfm_general_value"),
        stage("HLL", orders_of(SMALL, (0,)), "rfm_general_develop"),
        stage("LHL", orders_of(SMALL), "rfm_general_keep", as_of=d(120)),
        stage("LLL", orders_of(SMALL, (0,)), "rfm_general_retain", as_of=d(100)),
        stage("no orders, no segment", [joined(d(0))], None, as_of=d(100)),
        stage("F: two orders are low", orders_of(150_000, (0, 10)), "rfm_important_develop"),
        stage("M: ¥2,999.99 is low", [paid(d(0), BIG), paid(d(10), BIG),
                                      paid(d(20), BIG - 1)], "rfm_general_value"),
        # M reads net spend, like high_value: refunds take spend back
        stage("M: a refund takes it below", orders_of(BIG) + [refund(d(21), 1)],
              "rfm_general_value"),
        stage("R: a second short of 90 days", orders_of(3 * BIG, (0,)),
              "rfm_important_develop", as_of=d(90, -1)),
        stage("R: 90 days on", orders_of(3 * BIG, (0,)), "rfm_important_retain", as_of=d(90)),
        stage("R: 90 days and 12 hours on", orders_of(3 * BIG, (0,)), "rfm_important_retain",
              as_of=d(90, 12 * 3600)),
        stage("all orders older than 365 days", orders_of(BIG), "rfm_general_retain",
              as_of=d(400)),
    ],
}


@pytest.mark.parametrize("group,case", _params(RFM_CASES))
def test_rfm_segment(engine: Engine, group: str, case: StageCase) -> None:
    state, _ = run(engine, case.events, case.as_of)
    assert held_in_group(state, "rfm_") == ([case.stage] if case.stage else [])


def test_every_lifecycle_stage_and_rfm_segment_is_covered(engine: Engine) -> None:
    groups = {rule.id for rule in engine.pack.tags if rule.group in ("lifecycle", "rfm")}
    covered = {c.stage for table in (LIFECYCLE_CASES, RFM_CASES) for cases in table.values()
               for c in cases if c.stage}
    assert covered == groups
    assert len([g for g in groups if g.startswith("rfm_")]) == 8


# --- timers on a fake clock -------------------------------------------------------------------


def timer(tag: str, at: str) -> dict[str, str]:
    return {"timer": f"{tag}@{at}"}


def changes_of(changes: list[Any], tag: str) -> list[Any]:
    return [c for c in changes if c.tag == tag]


def test_new_member_no_order_31d_fires_at_joined_plus_31_days(engine: Engine) -> None:
    state, _ = run(engine, [joined(d(0))])
    assert state.next_deadline == epoch(d(31))
    early = engine.advance(state, epoch(d(31, -1)))
    assert changes_of(early.changes, "new_member_no_order_31d") == []
    fired = changes_of(engine.advance(state, epoch(d(31))).changes, "new_member_no_order_31d")
    assert [(c.op, c.cause, c.at) for c in fired] == [
        ("added", timer("new_member_no_order_31d", "2024-02-01T10:00:00+08:00"),
         "2024-02-01T10:00:00+08:00")]
    assert fired[0].change_id == change_id_for("M1", "new_member_no_order_31d", "added",
                                               fired[0].cause)
    assert fired[0].name_zh == "入会31天未购" and fired[0].family == "operational"
    # a later order removes it, caused by that order
    late = order(d(45), item(), event_id="late-order")
    _, later = run(engine, [late], state=state)
    assert [(c.op, c.cause) for c in changes_of(later, "new_member_no_order_31d")] == [
        ("removed", {"event_id": "late-order"})]


def test_dormant_90d_fires_at_last_order_plus_90_days(engine: Engine) -> None:
    state, _ = run(engine, [order(d(0), item()), order(d(20), item())])
    assert changes_of(engine.advance(state, epoch(d(110, -1))).changes, "dormant_90d") == []
    fired = changes_of(engine.advance(state, epoch(d(110))).changes, "dormant_90d")
    assert [(c.op, c.cause) for c in fired] == [
        ("added", timer("dormant_90d", "2024-04-20T10:00:00+08:00"))]
    assert fired[0].evidence == {"orders.count": 2, "days_since(orders.last_at)": 90,
                                 "orders.last_at": "2024-01-21T10:00:00+08:00"}
    _, later = run(engine, [order(d(150), item())], state=state)
    assert ops(changes_of(later, "dormant_90d")) == [("dormant_90d", "removed")]


def test_churn_risk_only_for_a_high_value_member_after_60_days(engine: Engine) -> None:
    valued, _ = run(engine, [paid(d(0), HV)])
    assert changes_of(engine.advance(valued, epoch(d(60, -1))).changes, "churn_risk") == []
    fired = changes_of(engine.advance(valued, epoch(d(60))).changes, "churn_risk")
    assert [(c.op, c.cause) for c in fired] == [
        ("added", timer("churn_risk", "2024-03-01T10:00:00+08:00"))]
    assert fired[0].evidence["had_tag(high_value)"] is True

    ordinary, _ = run(engine, [paid(d(0), HV - 1)])
    _, changes = run(engine, [], as_of=d(500), state=ordinary)
    assert changes_of(changes, "churn_risk") == []


def test_churn_risk_for_a_former_high_value_member(engine: Engine) -> None:
    # high_value lapses on day 366 (its 365-day window); the member keeps buying a little
    state, changes = run(engine, [paid(d(0), HV), paid(d(330), 1_000)], as_of=d(389))
    assert ("high_value", "removed") in ops(changes)
    assert "churn_risk" not in state.tags
    fired = changes_of(engine.advance(state, epoch(d(390))).changes, "churn_risk")
    assert [(c.op, c.at) for c in fired] == [("added", d(390))]


def test_birthday_month_by_timer_at_local_month_starts(engine: Engine) -> None:
    state, _ = run(engine, [birthday(d(9), "03-15")])
    _, changes = run(engine, [], as_of="2024-02-29T23:59:59+08:00", state=state)
    assert changes_of(changes, "birthday_month") == []
    _, changes = run(engine, [], as_of="2024-03-01T00:00:00+08:00", state=state)
    assert [(c.op, c.cause) for c in changes_of(changes, "birthday_month")] == [
        ("added", timer("birthday_month", "2024-03-01T00:00:00+08:00"))]
    _, changes = run(engine, [], as_of="2024-03-31T23:59:59+08:00", state=state)
    assert changes_of(changes, "birthday_month") == []
    _, changes = run(engine, [], as_of="2024-04-01T00:00:00+08:00", state=state)
    assert [(c.op, c.cause) for c in changes_of(changes, "birthday_month")] == [
        ("removed", timer("birthday_month", "2024-04-01T00:00:00+08:00"))]
    # and again a year later
    _, changes = run(engine, [], as_of="2025-03-01T00:00:00+08:00", state=state)
    assert ops(changes_of(changes, "birthday_month")) == [("birthday_month", "added")]


def walk_deadlines(engine: Engine, state: MemberState, until: str) -> list[str]:
    """Step the fake clock from deadline to deadline; the instants it stopped at."""
    stops = []
    while state.next_deadline is not None and state.next_deadline <= epoch(until):
        stops.append(engine.calendar.render(state.next_deadline))
        engine.advance(state, state.next_deadline)
    return stops


def test_members_without_a_birthday_do_not_wake_up_monthly(engine: Engine) -> None:
    state, _ = run(engine, [joined(d(0)), birthday(d(1), None)])
    # the only deadline is day 31 (new_member_no_order_31d); no month starts
    assert walk_deadlines(engine, state, d(800)) == [d(31)]
    assert state.next_deadline is None
    # a buyer without a birthday: windows, recency and points expiry, but no month starts
    # other than 1 January (when points expire)
    state, _ = run(engine, [joined(d(0)), order(d(3), item()), interaction("share", d(4))])
    stops = walk_deadlines(engine, state, d(900))
    assert len(stops) <= 10
    assert {s for s in stops if s[8:] == "01T00:00:00+08:00"} <= {"2026-01-01T00:00:00+08:00"}
    # with a birthday, the month starts are the wake-ups
    state, _ = run(engine, [joined(d(0)), birthday(d(1), "03-15")])
    stops = walk_deadlines(engine, state, "2024-05-01T00:00:00+08:00")
    assert "2024-03-01T00:00:00+08:00" in stops and "2024-04-01T00:00:00+08:00" in stops


def test_lifecycle_moves_by_timers_leaving_before_entering(engine: Engine) -> None:
    pack = engine.pack
    state, changes = run(engine, [joined(d(0))])
    assert ops(changes, "lc_") == [("lc_new", "added")]
    state, changes = run(engine, [order(d(1), item())], state=state)
    assert ops(changes, "lc_") == [("lc_new", "removed"), ("lc_first", "added")]
    state, changes = run(engine, [order(d(2), item())], state=state)
    assert ops(changes, "lc_") == [("lc_first", "removed"), ("lc_active", "added")]
    assert pack.group_value("lifecycle", state.tags) == "active"

    _, changes = run(engine, [], as_of=d(2 + 100), state=state)
    silent = [c for c in changes if c.tag.startswith("lc_")]
    assert ops(silent) == [("lc_active", "removed"), ("lc_silent", "added")]
    assert all("timer" in c.cause for c in silent) and silent[0].at == silent[1].at
    assert held_in_group(state, "lc_") == ["lc_silent"]

    _, changes = run(engine, [], as_of=d(2 + 200), state=state)
    assert ops(changes, "lc_") == [("lc_silent", "removed"), ("lc_lost", "added")]
    assert held_in_group(state, "lc_") == ["lc_lost"]
    assert pack.group_value("lifecycle", state.tags) == "lost"


LIFECYCLE_BY_TIMER = [
    # (stage, days after the last order it is entered)
    pytest.param("lc_silent", 90, id="silent at 90 d"),
    pytest.param("lc_lost", 180, id="lost at 180 d"),
]


@pytest.mark.parametrize("stage_id,days", LIFECYCLE_BY_TIMER)
def test_lifecycle_timer_fires_at_the_threshold(engine: Engine, stage_id: str, days: int) -> None:
    state, _ = run(engine, [order(d(-5), item()), order(d(0), item())])
    assert stage_id not in state.tags
    run(engine, [], as_of=d(days, -1), state=state)
    assert stage_id not in state.tags
    _, changes = run(engine, [], as_of=d(days), state=state)
    entered = changes_of(changes, stage_id)
    assert [(c.op, c.at) for c in entered] == [("added", d(days))]


def test_rfm_segment_changes_by_time(engine: Engine) -> None:
    state, _ = run(engine, orders_of(BIG, (0, 1, 2)))
    assert held_in_group(state, "rfm_") == ["rfm_important_value"]
    # recency goes low: important value -> important keep, leaving before entering
    _, changes = run(engine, [], as_of=d(2 + 100), state=state)
    assert ops(changes, "rfm_") == [("rfm_important_value", "removed"),
                                    ("rfm_important_keep", "added")]
    # day 0 leaves the 365-day windows: F and M both go low
    _, changes = run(engine, [], as_of=d(365), state=state)
    assert ops(changes, "rfm_") == [("rfm_important_keep", "removed"),
                                    ("rfm_general_retain", "added")]
    assert all(c.at == "2024-12-31T00:00:00+08:00" for c in changes if c.tag.startswith("rfm_"))


def test_rfm_recency_goes_low_at_90_days(engine: Engine) -> None:
    state, _ = run(engine, orders_of(3 * BIG, (0,)))
    run(engine, [], as_of=d(90, -1), state=state)
    assert held_in_group(state, "rfm_") == ["rfm_important_develop"]
    _, changes = run(engine, [], as_of=d(90), state=state)
    assert [(c.tag, c.op, c.at) for c in changes if c.tag.startswith("rfm_")] == [
        ("rfm_important_develop", "removed", d(90)), ("rfm_important_retain", "added", d(90))]


def test_trial_regular_on_day_29_never_tags(engine: Engine) -> None:
    _, changes = run(engine, [trial(d(0)), regular(d(29))], as_of=d(400))
    assert changes_of(changes, "trial_not_converted") == []


def test_trial_regular_on_day_30_removes_the_tag(engine: Engine) -> None:
    state, changes = run(engine, [trial(d(0))], as_of=d(30))
    added = changes_of(changes, "trial_not_converted")
    assert [(c.op, c.cause) for c in added] == [
        ("added", timer("trial_not_converted", "2024-01-31T10:00:00+08:00"))]
    assert added[0].evidence == {"pending(trial_skus, 30d)": 1,
                                 "trial_skus.keys": "BJ-QX42-500ML"}
    _, changes = run(engine, [regular(d(30, 3600))], state=state)
    assert ops(changes_of(changes, "trial_not_converted")) == [
        ("trial_not_converted", "removed")]


def test_trial_regular_at_the_very_deadline(engine: Engine) -> None:
    # DESIGN.md "Time": deadlines due at or before an event fire first, so a regular bought
    # at exactly trial + 30 d finds the tag just added and removes it at the same instant.
    _, changes = run(engine, [trial(d(0)), regular(d(30))])
    assert [(c.op, c.at) for c in changes_of(changes, "trial_not_converted")] == [
        ("added", d(30)), ("removed", d(30))]


def test_trial_never_converted_stays_until_forgotten(engine: Engine) -> None:
    state, changes = run(engine, [trial(d(0), sku="A"), trial(d(3), sku="B")], as_of=d(200))
    assert ops(changes_of(changes, "trial_not_converted")) == [("trial_not_converted", "added")]
    assert state.tags["trial_not_converted"].evidence["trial_skus.keys"] == "A"
    # converting one product keeps the tag for the other
    _, changes = run(engine, [regular(d(201), sku="A")], state=state)
    assert changes_of(changes, "trial_not_converted") == []
    assert "trial_not_converted" in state.tags


# --- evidence: what a guide sees --------------------------------------------------------------


def test_high_value_evidence_shows_spend_and_refunds(engine: Engine) -> None:
    _, changes = run(engine, [paid(d(0), 520_000), refund(d(1), 10_000)])
    added = changes_of(changes, "high_value")
    assert [c.evidence for c in added] == [{"spend_fen[365d]": 520_000, "refund_fen[365d]": 0}]
    _, changes = run(engine, [paid(d(0), 520_000), refund(d(1), 30_000)])
    removed = changes_of(changes, "high_value")[-1]
    assert removed.op == "removed"
    assert removed.evidence == {"spend_fen[365d]": 520_000, "refund_fen[365d]": 30_000}


def test_baijiu_lover_evidence_shows_share_and_orders(engine: Engine) -> None:
    _, changes = run(engine, [order(d(0), item(price=60_000), item("wine", 80_000)),
                              order(d(5), item(price=60_000))])
    (added,) = changes_of(changes, "baijiu_lover")
    assert added.evidence == {"baijiu_spend_fen[365d]": 120_000,
                              "item_spend_fen[365d]": 200_000, "baijiu_orders[365d]": 2}


def test_refund_prone_evidence_counts_refunds(engine: Engine) -> None:
    _, changes = run(engine, [refund(d(0)), refund(d(6))])
    assert [c.evidence for c in changes_of(changes, "refund_prone")] == [{"refunds[90d]": 2}]


def test_guides_of_a_wecom_friend_are_on_every_change(engine: Engine) -> None:
    _, changes = run(engine, [befriend(d(0), "g1", "wm-1"), befriend(d(1), "g2", "wm-2"),
                              paid(d(2), HV)])
    (added,) = changes_of(changes, "high_value")
    assert [(g.userid, g.external_userid) for g in added.guides] == [("g1", "wm-1"),
                                                                     ("g2", "wm-2")]


def test_tier_changes_name_the_members_guides_too(engine: Engine) -> None:
    """The guide feed takes a tier change's guides from the change (no Redis lookup)."""
    state, tier_changes = None, []
    for ev in [befriend(d(0), "g1", "wm-1"), paid(d(1), 5_000_000)]:
        outcome = engine.apply(state, ev)
        state, tier_changes = outcome.state, tier_changes + outcome.tier_changes
    upgrades = [c for c in tier_changes if c.type == "tier.upgraded"]
    assert upgrades and all([(g.userid, g.external_userid) for g in c.guides] == [("g1", "wm-1")]
                            for c in upgrades)
    encoded = orjson.loads(msgspec.json.encode(upgrades[0]))
    assert encoded["guides"] == [{"userid": "g1", "external_userid": "wm-1"}]
    # a member with no guide: the field is still there, empty
    lone = engine.apply(None, paid(d(1), 5_000_000, member="M2")).tier_changes
    assert lone and orjson.loads(msgspec.json.encode(lone[0]))["guides"] == []


def test_the_tier_tag_follows_the_level_on_the_event_that_moves_it(engine: Engine) -> None:
    """The tier tags are evaluated after an event only when it moved the level: the events
    that move it must still move the tag, at once, and a sign-in that does not, leaves it."""
    held = []
    state = None
    # growth 1 per yuan: silver at 1,000, gold at 5,000
    for ev in [joined(d(0)), paid(d(1), 60_000), event("interaction.sign_in", d(2)),
               paid(d(3), 50_000), paid(d(4), 400_000), event("interaction.sign_in", d(5))]:
        outcome = engine.apply(state, ev)
        state = outcome.state
        held.append(sorted(t for t in state.tags if t.startswith("tier_")))
        moved = [(c.tag, c.op) for c in outcome.changes if c.tag.startswith("tier_")]
        if ev.event_type == "interaction.sign_in":
            assert moved == []
    assert held == [["tier_normal"], ["tier_normal"], ["tier_normal"], ["tier_silver"],
                    ["tier_gold"], ["tier_gold"]]
