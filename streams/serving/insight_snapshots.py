"""Once per local day, a copy of the audience counts (streams/serving/insight_counts.py).

The Redis sink runs this next to its consumer loop (run_redis_sink). The sink, not the API, was
chosen because it is the one process that always runs wherever the counts change: an API may be
scaled to zero replicas or to several, and a snapshot should not wait for someone to look at a
page. Several sinks (one per partition share) and restarts are harmless: the snapshot script
writes a day at most once, atomically, so checking again is only one EXISTS.

The day is the rule pack's calendar (its fixed UTC offset, +08:00 for the default pack: the days
the engine counts in), taken from an injected wall clock. The snapshot of a day holds the counts
at the first check of that day, i.e. within CHECK_INTERVAL_S of local midnight while the sink
runs and has caught up with its topics (a sink rebuilding an emptied Redis waits until it
has); a day the sink did not run has no snapshot (the history shows a gap, not a guess).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import date, timedelta
from typing import Callable

import redis.exceptions

from streams.platform.settings import Settings
from streams.serving.insight_counts import SNAPSHOT_DAYS, InsightCounts
from streams.serving.redis_store import RedisProfileStore
from taggers.clock import LocalCalendar

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 60.0
EPOCH_DAY = date(1970, 1, 1)
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


def local_date(calendar: LocalCalendar, instant: float) -> date:
    return EPOCH_DAY + timedelta(days=calendar.day_of(int(instant)))


class DailySnapshots:
    def __init__(self, counts: InsightCounts, calendar: LocalCalendar, *,
                 clock: Callable[[], float] = time.time,
                 check_interval_s: float = CHECK_INTERVAL_S) -> None:
        self.counts = counts
        self.calendar = calendar
        self.clock = clock
        self.check_interval_s = check_interval_s
        self.done: date | None = None  # the last day this process saw a snapshot for

    async def check(self) -> bool:
        """Take today's snapshot unless it exists; True if this call took it."""
        now = self.clock()
        today = local_date(self.calendar, now)
        if today == self.done:
            return False
        taken = await self.counts.take_snapshot(today.isoformat(), int(now),
                                                SNAPSHOT_DAYS * 86_400)
        self.done = today
        if taken:
            log.info("audience counts snapshot taken for %s", today)
        return taken

    async def run(self, stop: asyncio.Event, ready: Callable[[], bool] = lambda: True) -> None:
        """Check every interval until `stop`, once `ready()` (the sink has caught up); while
        it is not, look again every second, so a starting sink snapshots as soon as it can."""
        while not stop.is_set():
            waiting = not ready()
            try:
                if not waiting:
                    await self.check()
            except REDIS_ERRORS as exc:  # the sink reports Redis outages; retry next check
                log.debug("snapshot check failed (%s); retrying", exc)
            try:
                await asyncio.wait_for(stop.wait(), min(1.0, self.check_interval_s)
                                       if waiting else self.check_interval_s)
            except asyncio.TimeoutError:
                pass


def snapshots_for(settings: Settings, store: RedisProfileStore) -> DailySnapshots:
    """The sink's snapshotter: on the store's connection, in the rule pack's calendar."""
    from taggers.rules import load_rules

    return DailySnapshots(InsightCounts(store.redis, store.prefix),
                          load_rules(settings.rules_path).calendar)
