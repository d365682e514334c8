"""Audience insight (人群透视) on the real broker and Redis: the counts the API serves equal the
tags held in a dry run's final profiles, written by the real Redis sink, overall and per guide;
erasure and lost tags decrement; the daily snapshot is taken once whatever runs it; who may ask."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import msgspec
import pytest

from streams.serving.insight_counts import SNAPSHOT_DAYS, InsightCounts
from streams.serving.insight_snapshots import DailySnapshots
from streams.serving.redis_store import RedisProfileStore
from taggers.clock import LocalCalendar
from taggers.state import MemberState
from tests.support.api import LI, OPERATOR, ZHANG, api_settings, bearer, running_api
from tests.support.insights import (dry_run_states, held_counts, publish_states, rendered,
                                    running_sink, served_counts, wait_sink_reaches)
from tests.support.kafka import create_topics
from tests.support.profiles import make_profile

pytestmark = pytest.mark.e2e

CST = timezone(timedelta(hours=8))
CALENDAR = LocalCalendar(8 * 3600)


@pytest.fixture(scope="module")
def states() -> list[MemberState]:
    return dry_run_states(members=300, days=400, seed=15)


async def get(session: aiohttp.ClientSession, path: str, token: str | None) -> tuple[int, Any]:
    async with session.get(path, headers=bearer(token) if token else {}) as response:
        return response.status, await response.json()


async def assert_counts_match(session: aiohttp.ClientSession,
                              profiles: list[dict[str, Any]]) -> int:
    """Everyone's counts and every guide's equal a count over `profiles`; returns the guides."""
    status, body = await get(session, "/insights/tags", OPERATOR)
    assert status == 200 and body["guide"] is None
    assert served_counts(body) == held_counts(profiles)
    guides = sorted({g["userid"] for p in profiles for g in p["guides"]})
    assert [g["guide"] for g in body["guides"]] == guides
    for entry in body["guides"]:
        status, one = await get(session, f"/insights/tags?guide={entry['guide']}", OPERATOR)
        assert status == 200 and one["guide"] == entry["guide"] and "guides" not in one
        assert served_counts(one) == held_counts(profiles, entry["guide"])
        assert entry["members"] == one["members"]
    return len(guides)


async def test_counts_equal_the_dry_run_and_erasure_decrements(stack, states):
    settings = api_settings(stack)
    await create_topics(settings)
    profiles = rendered(states)
    with_guides = [s for s in states if s.guides]
    assert len(with_guides) > 50 and any(p["rfm"] for p in profiles)
    async with running_sink(settings), running_api(settings) as base, \
            aiohttp.ClientSession(base) as session:
        await wait_sink_reaches(settings, await publish_states(settings, states))
        guides = await assert_counts_match(session, profiles)
        assert guides >= 3
        # The sink took today's snapshot once it had caught up with its topics.
        for _ in range(100):
            status, body = await get(session, "/insights/tags/history?tag=member&days=1",
                                     OPERATOR)
            if body["series"][0]["members"] != [None]:
                break
            await asyncio.sleep(0.1)
        assert body["series"][0]["members"][0] is not None

        # The groups are the group tags' counts, in the pack's terms.
        status, body = await get(session, "/insights/tags", OPERATOR)
        by_tag = {t["id"]: t["members"] for t in body["tags"]}
        assert [t["value"] for t in body["lifecycle"]] == ["new", "first", "active", "silent",
                                                          "lost"]
        assert all(g["members"] == by_tag[g["tag"]] for g in body["lifecycle"] + body["tiers"])
        assert sum(g["members"] for g in body["tiers"]) == body["members"]
        assert sum(c["members"] for c in body["rfm"]) == sum(1 for p in profiles if p["rfm"])
        assert {(c["r"], c["f"], c["m"]) for c in body["rfm"]} == {
            (r, f, m) for r in ("high", "low") for f in ("high", "low") for m in ("high", "low")}

        # Erasure (tombstones) and a member losing a tag and a guide both decrement; a stale
        # state (an older watermark, so an older as_of) and a replayed one change nothing.
        erased = [s.member_id for s in with_guides[:25]]
        changed = with_guides[25]
        assert changed.watermark is not None
        shrunk = msgspec.structs.replace(
            changed, watermark=changed.watermark + 86_400,
            tags=dict(sorted(changed.tags.items())[1:]), guides=changed.guides[1:])
        stale = msgspec.structs.replace(
            with_guides[26], tags={},
            watermark=int(datetime(2020, 1, 1, tzinfo=CST).timestamp()))
        ends = await publish_states(settings, [*((m, None) for m in erased), shrunk, stale,
                                               with_guides[27]])
        await wait_sink_reaches(settings, ends)
        [shrunk_profile] = rendered([shrunk])
        now = [p for p in profiles if p["member_id"] not in set(erased)]
        now = [shrunk_profile if p["member_id"] == changed.member_id else p for p in now]
        await assert_counts_match(session, now)
        status, body = await get(session, "/insights/tags", OPERATOR)
        assert body["members"] == len(profiles) - 25


async def test_only_operators_see_other_guides_and_bad_questions_get_400(stack):
    settings = api_settings(stack)
    await create_topics(settings)
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply([make_profile("M1", tags=["member", "high_value"], guides=["zhang"]),
                           make_profile("M2", tags=["member"], guides=["li", "zhang"]),
                           make_profile("M3", tags=["member"], guides=[])])
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
        status, own = await get(session, "/insights/tags", ZHANG)  # no guide: the caller's
        assert status == 200 and own["guide"] == "zhang" and "guides" not in own
        assert served_counts(own) == {":members": 2, "member": 2, "high_value": 1}
        status, same = await get(session, "/insights/tags?guide=zhang", ZHANG)
        assert status == 200 and same["members"] == 2
        for path in ("/insights/tags?guide=li", "/insights/tags/history?tag=member&guide=li"):
            status, body = await get(session, path, ZHANG)
            assert status == 403 and body["error"] == "forbidden"
        status, body = await get(session, "/insights/tags", None)
        assert status == 401 and body["error"] == "unauthorized"
        status, everyone = await get(session, "/insights/tags", OPERATOR)
        assert served_counts(everyone) == {":members": 3, "member": 3, "high_value": 1}
        assert everyone["guides"] == [{"guide": "li", "members": 1},
                                      {"guide": "zhang", "members": 2}]
        status, li = await get(session, "/insights/tags?guide=li", LI)
        assert served_counts(li) == {":members": 1, "member": 1}
        for query, words in [("", "tag"), ("?tag=member&days=0", "days"),
                             ("?tag=member&days=401", "days"), ("?tag=member&days=x", "days"),
                             ("?tag=-not-a-tag", "tag id"),
                             ("?" + "&".join(f"tag=t{i}" for i in range(21)), "at most")]:
            status, body = await get(session, "/insights/tags/history" + query, OPERATOR)
            assert status == 400 and body["error"] == "bad_request" and words in body["message"]
        status, body = await get(session, "/insights/tags/history?tag=wecom:vip.1&days=2",
                                 OPERATOR)  # a guide's own WeCom tag is a tag too
        assert status == 200 and body["series"][0]["tag"] == "wecom:vip.1"


async def test_one_snapshot_a_day_whoever_takes_it_and_the_history_shows_it(stack):
    settings = api_settings(stack)
    await create_topics(settings)
    day1 = datetime(2026, 12, 1, 0, 0, 30, tzinfo=CST).timestamp()
    clock = [day1]
    async with RedisProfileStore(settings.redis_url) as store:
        counts = InsightCounts(store.redis, store.prefix)
        await store.apply([make_profile("M1", tags=["member"], guides=["zhang"]),
                           make_profile("M2", tags=["member", "high_value"], guides=["li"])])
        # Two sinks (or one restarted) on the same day: one snapshot, taken once.
        first = DailySnapshots(counts, CALENDAR, clock=lambda: clock[0])
        second = DailySnapshots(counts, CALENDAR, clock=lambda: clock[0])
        assert await first.check() is True
        assert await second.check() is False and await first.check() is False
        await store.apply([make_profile("M3", tags=["member"], guides=["zhang"])])
        clock[0] += 3600  # later the same day, after a restart: still the morning's counts
        assert await DailySnapshots(counts, CALENDAR, clock=lambda: clock[0]).check() is False
        ttl = await store.redis.ttl(counts.snapshot_key("2026-12-01"))
        assert SNAPSHOT_DAYS * 86_400 - 60 < ttl <= SNAPSHOT_DAYS * 86_400
        assert await store.redis.ttl(counts.snapshot_key("2026-12-01", "zhang")) > 0
        # 2026-12-02: nobody ran. 2026-12-03: M1 erased, then the day's snapshot.
        await store.forget(["M1"])
        clock[0] = day1 + 2 * 86_400
        assert await second.check() is True

    now = day1 + 2 * 86_400 + 5 * 3600
    async with running_api(settings, clock=lambda: now) as base, \
            aiohttp.ClientSession(base) as session:
        status, body = await get(
            session, "/insights/tags/history?tag=member,high_value&tag=gift_buyer&days=4",
            OPERATOR)
        assert status == 200
        assert body["dates"] == ["2026-11-30", "2026-12-01", "2026-12-02", "2026-12-03"]
        assert [(s["tag"], s["members"]) for s in body["series"]] == [
            ("member", [None, 2, None, 2]), ("high_value", [None, 1, None, 1]),
            ("gift_buyer", [None, 0, None, 0])]
        assert body["series"][0]["name_zh"] == "会员"
        status, mine = await get(session, "/insights/tags/history?tag=member&days=3", ZHANG)
        assert status == 200 and mine["guide"] == "zhang"
        assert mine["series"][0]["members"] == [1, None, 1]  # M3 joined; M1 was erased
