"""The last phase with `--compare-workers N`: the pipeline again with N workers, in the same
run, against the one measured first.

The second pass reads the same event topics from their start under a new app id (its own
consumer group, changelog and data dirs) and writes to the same output topics (only changes
made after it starts are counted). The Redis sink renders profiles from the app's changelog,
so the pass gets a sink of its own, following its changelog into another Redis database:
it renders and writes every profile again, as the first pass's did, and the first pass's sink
is stopped. On 2 cores this is no scaling claim: the CPU of every process is reported with it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from streams.platform.security import redis_client_kwargs
from streams.platform.settings import Settings
from streams.serving.insight_counts import InsightCounts
from streams.serving.redis_store import RedisProfileStore
from streams.tools.bench.common import _Run
from streams.tools.bench.pipeline import Expected, _pipeline

# How long the second pass's sink may take, after the pass's last tag change, to have served
# every member (it runs behind the workers by its batches).
SINK_CATCH_UP_S = 120.0


def other_database(redis_url: str) -> str:
    """The same Redis, the next database (0-15; 15 wraps to 0)."""
    parts = urlsplit(redis_url)
    path = parts.path.strip("/")
    database = (int(path) + 1) % 16 if path.isdigit() else 1
    return urlunsplit(parts._replace(path=f"/{database}"))


async def compare_workers(run: _Run, expected: Expected, workers: int) -> None:
    settings, options, ports = run.settings, run.options, run.worker_ports
    for sink in [c for c in run.children if c.name == "redis sink" and c.alive()]:
        await asyncio.to_thread(sink.stop)  # it follows the first app's changelog only
    run.settings = dataclasses.replace(settings, app_id=f"{settings.app_id}-x{workers}",
                                       redis_url=other_database(settings.redis_url))
    run.options = dataclasses.replace(options, workers=workers, profile=None)
    run.say(f"compare: the pipeline again with {workers} worker(s), app id "
            f"{run.settings.app_id}, its own Redis sink writing to {run.settings.redis_url}")
    measured: dict[str, Any] = {}
    members = run.result["details"]["state_bytes"]["members"]
    try:
        await _pipeline(run, expected, out=measured)
        served = await _members_served(run.settings, members)
    finally:
        run.settings, run.options, run.worker_ports = settings, options, ports
    first_eps = run.result.get("pipeline_eps")
    details = measured["details"]["pipeline"]
    run.result["workers_compare"] = {
        "workers": workers,
        "pipeline_eps": measured["pipeline_eps"],
        "one_pass_workers": options.workers,
        "one_pass_eps": first_eps,
        "ratio_to_first_pass": round(measured["pipeline_eps"] / first_eps, 3)
        if first_eps else None,
        "matches_dry_run": measured["matches_dry_run"],
        "cpu_pct_of_one_core": details["cpu_pct_of_one_core"],
        "first_pass_cpu_pct_of_one_core":
            run.result["details"].get("pipeline", {}).get("cpu_pct_of_one_core"),
        "rss_mb_per_worker": details["rss_mb_per_worker"],
        "seconds": details["seconds"],
        # the pass's own sink: members whose profile it wrote, of those the dry run knows
        "members_served": served,
        "members_expected": members,
    }
    run.result["details"]["pipeline_compare"] = details


async def _members_served(settings: Settings, members: int) -> int:
    """Members whose profile the sink of `settings` has written, once it has all `members`
    or SINK_CATCH_UP_S passed (the served count: streams/serving/insight_counts.py)."""
    async with RedisProfileStore(settings.redis_url,
                                 connection=redis_client_kwargs(settings)) as store:
        counts = InsightCounts(store.redis, store.prefix)
        deadline = time.monotonic() + SINK_CATCH_UP_S
        while True:
            served = (await counts.counts()).members
            if served >= members or time.monotonic() > deadline:
                return served
            await asyncio.sleep(0.5)
