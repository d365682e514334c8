"""The synthetic history generator: deterministic, valid on the wire, and rich enough that every
default rule (RULES.md) has members who qualify."""

from __future__ import annotations

import io
import re
import tracemalloc
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.decode import decode_event
from schemas.events import TOPIC_BY_EVENT_TYPE
from streams.tools.generate import DEFAULT_START, generate_events, write_jsonl

MEMBERS, DAYS, SEED = 300, 400, 7
RFC3339_CST = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+08:00$")
DAY = timedelta(days=1)


def jsonl(members: int, days: int, seed: int, start: datetime | None = None) -> bytes:
    buf = io.BytesIO()
    write_jsonl(generate_events(members, days, seed, start), buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def history() -> list[dict]:
    return list(generate_events(MEMBERS, DAYS, SEED))


@pytest.fixture(scope="module")
def at(history: list[dict]) -> list[datetime]:
    return [datetime.fromisoformat(ev["occurred_at"]) for ev in history]


def by_member(history: list[dict], at: list[datetime], *types: str) -> dict[str, list[datetime]]:
    out: dict[str, list[datetime]] = defaultdict(list)
    for ev, t in zip(history, at):
        if ev["event_type"] in types:
            out[ev["member_id"]].append(t)
    return out


def max_in_window(times: list[datetime], window: timedelta) -> int:
    """The most of `times` (sorted) that fall within any `window`."""
    best, lo = 0, 0
    for hi, t in enumerate(times):
        while t - times[lo] >= window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def members_with(history: list[dict], at: list[datetime], types: tuple[str, ...], n: int,
                 window: timedelta) -> set[str]:
    return {m for m, ts in by_member(history, at, *types).items() if max_in_window(ts, window) >= n}


# --- determinism and the wire format ----------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_bytes() -> None:
    first = jsonl(60, 120, seed=1)
    assert first == jsonl(60, 120, seed=1)
    assert first != jsonl(60, 120, seed=2)
    assert first.count(b"\n") > 300


def test_start_moves_the_history_and_nothing_else() -> None:
    start = datetime(2023, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=8)))
    events = list(generate_events(20, 30, 3, start))
    times = [datetime.fromisoformat(ev["occurred_at"]) for ev in events]
    assert start <= min(times) and max(times) < start + 30 * DAY
    default = list(generate_events(20, 30, 3))
    assert datetime.fromisoformat(default[0]["occurred_at"]) >= DEFAULT_START


def test_every_event_decodes_on_its_own_topic(history: list[dict]) -> None:
    for ev in history:
        decoded = decode_event(orjson.dumps(ev), TOPIC_BY_EVENT_TYPE[ev["event_type"]])
        assert decoded.event_type == ev["event_type"]


def test_common_fields(history: list[dict]) -> None:
    for ev in history:
        assert ev["schema_version"] == 1
        assert RFC3339_CST.match(ev["occurred_at"]), ev["occurred_at"]
        assert re.fullmatch(r"M\d{7}", ev["member_id"])
        for key in ("amount_fen",):
            if key in ev:
                assert type(ev[key]) is int and ev[key] >= 0
        for item in ev.get("items") or ():
            assert type(item["unit_price_fen"]) is int and item["unit_price_fen"] > 0


def test_time_never_goes_backwards(at: list[datetime]) -> None:
    assert all(a <= b for a, b in zip(at, at[1:]))
    assert DEFAULT_START <= at[0] and at[-1] < DEFAULT_START + DAYS * DAY


def test_event_ids_are_unique(history: list[dict]) -> None:
    assert len({ev["event_id"] for ev in history}) == len(history)


# An erasure is an operations request (`tagstream erase`), not member behaviour: a generated
# history never deletes its own members (tests/e2e/test_erasure.py covers it). A task done is
# a guide's answer to a task the engine opened, whose id only a run of the engine knows
# (tests/support/task_done.py adds them to a history after a dry run).
NOT_GENERATED = {"interaction.erasure_requested", "interaction.task_done"}


def test_every_event_type_appears(history: list[dict]) -> None:
    seen = Counter(ev["event_type"] for ev in history)
    wanted = set(TOPIC_BY_EVENT_TYPE) - NOT_GENERATED
    assert wanted <= set(seen), wanted - set(seen)
    assert not NOT_GENERATED & set(seen)
    refusals = [ev for ev in history if ev["event_type"] == "interaction.consent_changed"]
    assert {ev["marketing"] for ev in refusals} == {False, True}


def test_density_is_about_ten_events_per_member_per_hundred_days(history: list[dict]) -> None:
    per_member_100d = len(history) / MEMBERS / DAYS * 100
    assert 5 <= per_member_100d <= 20


@settings(max_examples=25, deadline=None)
@given(members=st.integers(0, 25), days=st.integers(0, 90), seed=st.integers(0, 2**32))
def test_any_small_history_is_valid_and_ordered(members: int, days: int, seed: int) -> None:
    events = list(generate_events(members, days, seed))
    times = [datetime.fromisoformat(ev["occurred_at"]) for ev in events]
    assert times == sorted(times)
    assert len({ev["event_id"] for ev in events}) == len(events)
    joined = {ev["member_id"] for ev in events if ev["event_type"] == "interaction.member_joined"}
    assert {ev["member_id"] for ev in events} == joined  # nobody acts before joining
    assert len(joined) <= members
    for ev in events:
        decode_event(orjson.dumps(ev), TOPIC_BY_EVENT_TYPE[ev["event_type"]])


def test_write_jsonl_text_and_binary_agree() -> None:
    events = list(generate_events(10, 30, 5))
    binary, text = io.BytesIO(), io.StringIO()
    assert write_jsonl(iter(events), binary) == len(events)
    assert write_jsonl(iter(events), text) == len(events)
    assert binary.getvalue() == text.getvalue().encode("utf-8")
    lines = binary.getvalue().splitlines()
    assert [orjson.loads(line) for line in lines] == events


def test_memory_does_not_grow_with_days() -> None:
    def peak(days: int) -> int:
        tracemalloc.start()
        try:
            for _ in generate_events(100, days, 1):
                pass
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    short, long = peak(600), peak(3000)
    assert long < 1.5 * short, (short, long)


# --- what the rules need -----------------------------------------------------------------------


def test_members_join_across_the_period_on_every_channel(history: list[dict],
                                                          at: list[datetime]) -> None:
    joins = [(t, ev["channel"]) for ev, t in zip(history, at)
             if ev["event_type"] == "interaction.member_joined"]
    assert len(joins) == MEMBERS
    assert {c for _, c in joins} == {"tmall", "jd", "douyin", "youzan", "weimob", "miniprogram",
                                     "pos", "wecom"}
    late = [t for t, _ in joins if t > DEFAULT_START + DAYS * DAY / 2]
    assert len(late) > MEMBERS / 4


def test_refunds_reference_an_earlier_order_of_the_same_member(history: list[dict]) -> None:
    orders: dict[str, dict] = {}
    refunds = 0
    for ev in history:
        if ev["event_type"] == "order.paid":
            assert ev["order_id"] not in orders
            orders[ev["order_id"]] = ev
        elif ev["event_type"] == "order.refunded":
            refunds += 1
            order = orders[ev["order_id"]]
            assert order["member_id"] == ev["member_id"]
            assert 0 < ev["amount_fen"] <= order["amount_fen"]
            for item in ev.get("items") or ():
                assert item["sku"] in {i["sku"] for i in order["items"]}
    assert refunds > 20


def test_orders_cover_every_category_and_carry_stores_and_guides(history: list[dict]) -> None:
    orders = [ev for ev in history if ev["event_type"] == "order.paid"]
    assert {i["category"] for ev in orders for i in ev["items"]} == {
        "baijiu", "wine", "beer", "huangjiu", "oil", "rice"}
    assert any("store_id" in ev for ev in orders)
    assert any(ev.get("guide_id", "").startswith("guide_") for ev in orders)
    for ev in orders:
        assert ev["amount_fen"] <= sum(i["unit_price_fen"] * i["quantity"] for i in ev["items"])


def test_trial_buyers_some_convert_within_30_days_some_never(history: list[dict],
                                                             at: list[datetime]) -> None:
    trial: dict[tuple[str, str], datetime] = {}
    converted, regular_after = set(), defaultdict(list)
    for ev, t in zip(history, at):
        if ev["event_type"] != "order.paid":
            continue
        for item in ev["items"]:
            key = (ev["member_id"], item["sku"])
            if item["spec"] == "trial":
                trial.setdefault(key, t)
            elif key in trial:
                regular_after[key].append(t)
                if t - trial[key] <= 30 * DAY:
                    converted.add(key)
    never = [key for key, t in trial.items()
             if not regular_after[key] and t < DEFAULT_START + (DAYS - 30) * DAY]
    late = [key for key, ts in regular_after.items() if key not in converted]
    assert converted and never and late, (len(converted), len(never), len(late))


def test_high_value_premium_and_no_order_members(history: list[dict], at: list[datetime]) -> None:
    spend: dict[str, list[tuple[datetime, int]]] = defaultdict(list)
    premium = set()
    for ev, t in zip(history, at):
        if ev["event_type"] == "order.paid":
            spend[ev["member_id"]].append((t, ev["amount_fen"]))
            if any(i["unit_price_fen"] >= 100_000 for i in ev["items"]):
                premium.add(ev["member_id"])

    def best_365d(orders: list[tuple[datetime, int]]) -> int:
        return max(sum(a for u, a in orders if t <= u < t + 365 * DAY) for t, _ in orders)

    high_value = {m for m, orders in spend.items() if best_365d(orders) >= 500_000}
    assert len(high_value) >= 3
    assert premium & high_value
    members = {ev["member_id"] for ev in history}
    assert len(members - set(spend)) >= 10  # joined, never ordered
    assert any(len(o) == 1 for o in spend.values())  # one-time buyers
    assert any(len(o) >= 2 for o in spend.values())  # repeat buyers


def test_category_lovers(history: list[dict]) -> None:
    share: dict[str, Counter] = defaultdict(Counter)
    for ev in history:
        if ev["event_type"] == "order.paid":
            for item in ev["items"]:
                share[ev["member_id"]][item["category"]] += item["unit_price_fen"] * item["quantity"]

    def lovers(category: str) -> list[str]:
        return [m for m, c in share.items() if c[category] >= 0.6 * sum(c.values())]

    assert len(lovers("baijiu")) >= 3 and len(lovers("wine")) >= 3


@pytest.mark.parametrize(("types", "n", "days"), [
    (("order.refunded",), 2, 90),  # refund_prone
    (("interaction.coupon_redeemed",), 3, 90),  # coupon_sensitive
    (("interaction.share",), 3, 30),  # sharer
    (("scan.cap_opened",), 3, 90),  # cap_opener
    (("interaction.sign_in", "interaction.share", "interaction.browse", "interaction.lottery",
      "interaction.review", "interaction.coupon_claimed", "interaction.event_attended"), 5, 30),
])
def test_window_count_rules_have_members(history: list[dict], at: list[datetime],
                                         types: tuple[str, ...], n: int, days: int) -> None:
    assert len(members_with(history, at, types, n, days * DAY)) >= 3


def test_scan_verifiers(history: list[dict]) -> None:
    scans = [ev for ev in history if ev["event_type"] == "scan.verified"]
    assert len({ev["member_id"] for ev in scans}) >= 10
    assert len({ev["code_id"] for ev in history if "code_id" in ev}) == sum(
        1 for ev in history if "code_id" in ev)


def test_members_go_dormant_and_some_come_back(history: list[dict], at: list[datetime]) -> None:
    end = DEFAULT_START + DAYS * DAY
    orders = by_member(history, at, "order.paid")
    came_back = {m for m, ts in orders.items() if any(b - a >= 90 * DAY for a, b in zip(ts, ts[1:]))}
    stayed_away = {m for m, ts in orders.items() if len(ts) >= 2 and end - ts[-1] >= 180 * DAY}
    assert len(came_back) >= 3 and len(stayed_away) >= 3


def test_profiles_and_wecom_contacts(history: list[dict]) -> None:
    birthdays = [ev["birthday"] for ev in history
                 if ev["event_type"] == "interaction.profile_updated" and "birthday" in ev]
    assert len(set(b[:2] for b in birthdays)) == 12
    added = [ev for ev in history if ev["event_type"] == "interaction.wecom_friend_added"]
    removed = [ev for ev in history if ev["event_type"] == "interaction.wecom_friend_removed"]
    assert added and removed
    assert all(ev["guide_id"].startswith("guide_") for ev in added + removed)
    assert all(ev["external_userid"].startswith("wm") for ev in added + removed)
    pairs = {(ev["member_id"], ev["guide_id"], ev["external_userid"]) for ev in added}
    assert all((ev["member_id"], ev["guide_id"], ev["external_userid"]) in pairs for ev in removed)
    guides = defaultdict(set)
    for ev in added:
        guides[ev["member_id"]].add(ev["guide_id"])
    assert any(len(g) >= 2 for g in guides.values())
