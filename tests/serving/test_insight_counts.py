"""The audience counters on a real Redis: after any sequence of profile writes, stale and replayed
ones, and deletions, every count equals the size of the index set it stands for."""

from __future__ import annotations

import asyncio
import random
from datetime import datetime, timedelta, timezone

import pytest

from streams.serving.insight_counts import InsightCounts
from streams.serving.insight_snapshots import DailySnapshots
from streams.serving.redis_store import RedisProfileStore
from taggers.clock import LocalCalendar
from tests.support.profiles import make_profile

pytestmark = pytest.mark.e2e

TAGS = ["member", "first_purchase", "repeat_buyer", "high_value", "tier_gold"]
GUIDES = ["zhang", "li", "wang"]


@pytest.fixture
async def store(stack):
    async with RedisProfileStore(stack.redis_url) as store:
        yield store


async def index_sizes(store: RedisProfileStore, guide: str | None) -> dict[str, int]:
    """What the counts must be, from the index sets themselves."""
    out = {}
    for tag in TAGS:
        key = store.tag_key(tag) if guide is None else store.audience_key(guide, tag)
        if size := await store.redis.zcard(key):
            out[tag] = size
    members = (len([k async for k in store.redis.scan_iter(match="ts:member:*")])
               if guide is None else await store.redis.zcard(store.guide_key(guide)))
    if members:
        out[":members"] = members
    return out


async def test_counts_follow_every_write_stale_replayed_and_deleted(store):
    counts = InsightCounts(store.redis, store.prefix)
    rng = random.Random(15)
    for step in range(12):
        batch = [make_profile(f"M{m}", tags=rng.sample(TAGS, rng.randint(0, 4)),
                              guides=rng.sample(GUIDES, rng.randint(0, 2)),
                              as_of=f"2024-03-01T12:00:{rng.randint(0, 59):02d}+08:00")
                 for m in rng.sample(range(40), 15)]
        await store.apply(batch, seqs=[step] * len(batch))
        await store.apply(batch[:3], seqs=[step] * 3)  # replayed: no change
        if step % 4 == 3:
            await store.forget([f"M{m}" for m in rng.sample(range(40), 6)] + ["M-never"])
        for guide in (None, *GUIDES):
            got = await counts.counts(guide)
            assert {**got.tags, **({":members": got.members} if got.members else {})} == \
                await index_sizes(store, guide), (step, guide)
    assert set(await counts.guide_members()) <= set(GUIDES)
    await store.forget([f"M{m}" for m in range(40)])
    assert [k async for k in store.redis.scan_iter(match="ts:counts:*")] == []


async def test_the_daily_snapshot_waits_until_the_sink_has_caught_up(store):
    counts = InsightCounts(store.redis, store.prefix)
    await store.apply([make_profile("M1", tags=["member"], guides=["zhang"])])
    now = datetime(2026, 12, 3, 0, 0, 30, tzinfo=timezone(timedelta(hours=8))).timestamp()
    snapshots = DailySnapshots(counts, LocalCalendar(8 * 3600), clock=lambda: now,
                               check_interval_s=0.05)
    caught_up, stop = [False], asyncio.Event()
    task = asyncio.create_task(snapshots.run(stop, ready=lambda: caught_up[0]))
    try:
        await asyncio.sleep(0.5)
        assert await counts.history(["2026-12-03"], ["member"]) == {"member": [None]}
        caught_up[0] = True
        for _ in range(50):
            if (await counts.history(["2026-12-03"], ["member"]))["member"] == [1]:
                break
            await asyncio.sleep(0.1)
        assert (await counts.history(["2026-12-03"], ["member"], "zhang"))["member"] == [1]
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
