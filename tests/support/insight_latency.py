"""Measure GET /insights/tags at 100,000 members (reported, never asserted).

    .venv/bin/python -m tests.support.insight_latency [--members 100000] [--requests 200]

Starts a private Kafka and Redis; writes `--members` profiles through RedisProfileStore (the
sink's own write path: the same Lua script keeps the counts), cloned with new member ids from
a dry run of a generated history so tags and guides are realistic; takes 400 daily snapshots;
then times sequential requests to the real API over loopback: everyone's counts, one guide's,
and a 400-day history of five tags. Prints p50/p99 per route.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from streams.serving.insight_counts import InsightCounts
from streams.serving.redis_store import RedisProfileStore
from streams.tools.stack import LocalStack
from tests.support import free_port, private_stack_settings
from tests.support.api import OPERATOR, TOKENS, bearer, running_api
from tests.support.insights import dry_run_profiles
from tests.support.kafka import create_topics

DAY = 86_400


async def load(settings, members: int) -> str:
    """`members` profiles in Redis; returns the guide with the most members."""
    base = dry_run_profiles(members=2000, days=400, seed=15)
    async with RedisProfileStore(settings.redis_url) as store:
        batch = []
        for n in range(members):
            profile = base[n % len(base)]
            batch.append({**profile, "member_id": f"L{n:07d}"})
            if len(batch) == 1000:
                await store.apply(batch)
                batch = []
        if batch:
            await store.apply(batch)
        counts = InsightCounts(store.redis, store.prefix)
        start = int(time.time()) - 399 * DAY
        for day in range(400):
            await counts.take_snapshot(time.strftime("%Y-%m-%d", time.gmtime(
                start + day * DAY + 8 * 3600)), start + day * DAY)
        guides = await counts.guide_members()
        total = (await counts.counts()).members
    print(f"loaded {total} members, {len(guides)} guides, 400 snapshots")
    return max(guides, key=guides.get)


async def timed(session: aiohttp.ClientSession, path: str, requests: int) -> list[float]:
    out = []
    for _ in range(requests):
        started = time.perf_counter()
        async with session.get(path, headers=bearer(OPERATOR)) as response:
            await response.read()
            assert response.status == 200, (path, response.status)
        out.append((time.perf_counter() - started) * 1000)
    return out


async def measure(members: int, requests: int, workdir: Path) -> None:
    settings = dataclasses.replace(private_stack_settings(workdir), api_tokens=TOKENS,
                                   api_port=free_port())
    with LocalStack(settings) as stack:
        stack.up(1)
        await create_topics(settings)
        guide = await load(settings, members)
        tags = "&".join(f"tag={t}" for t in ("member", "repeat_buyer", "high_value",
                                             "dormant_90d", "churn_risk"))
        async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
            for path in ("/insights/tags", f"/insights/tags?guide={guide}",
                         f"/insights/tags/history?{tags}&days=400"):
                await timed(session, path, 20)  # warm up
                ms = sorted(await timed(session, path, requests))
                p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
                print(f"{path[:60]:60s} p50 {statistics.median(ms):6.2f} ms  "
                      f"p99 {p99:6.2f} ms  ({requests} requests)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=200)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        asyncio.run(measure(options.members, options.requests, Path(workdir)))


if __name__ == "__main__":
    main()
