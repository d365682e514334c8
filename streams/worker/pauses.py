"""How long the worker's event loop could not run: garbage collections and loop lag.

A tag change waits for everything else the loop does first, so a latency tail is a pause:
a collection of the older generations, or one long callback. Both are exported as
histograms on the worker's `/metrics` (and read by `tagstream bench` around its latency
phase), so an operator can tell a slow pipeline from a paused one.
"""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any, Callable

from streams.platform import metrics


# The collector's thresholds (young, middle, oldest) once a worker is started, against
# Python's (700, 10, 10). What the worker makes per event forms no reference cycles (states
# are bytes; the engine makes none, tests/taggers/test_dryrun.py), so its collections free
# almost nothing (254 objects in a 300,000-event replay), yet each full one walks every event
# held for the event clock. Over the pipeline phase of `tagstream bench --members 100000
# --events 300000`: 9,077 young, 825 middle and 53 full collections, 6.2 s of 78 and 43 loop
# wakes over 50 ms late, with Python's; 347, 31 and 2, 0.5 s of 69 and 6 late, with (5000,
# 10, 100). Since the fetcher hands the agent its messages, a worker under full load holds
# about four times as many new objects per event across a collection (a faster batch's
# events, acknowledgements and records), and at 5,000 the young ones were collected every
# ~160 events while still held: 18 s of a 197-s phase at 100,000 members. At 20,000, four
# runs alternated (`tagstream bench --members 100000 --events 1000000`): 14.1 and 14.8 s of
# collections against 17.8 and 18.5, pipeline 5,161 and 5,351 ev/s against 4,956 and 5,118,
# p99 at half rate 61.4 and 52.3 ms against 55.1 and 51.9. At 500,000 a young collection
# comes every ~3,300 events instead of every ~670, when the batch whose objects it would
# walk and promote is mostly freed: over the same phase 303 young, 28 middle and 3 full
# collections took 0.7 s against 1,490, 135 and 4 taking 18.0 s (1,386, 125 and 3: 25.8 s
# in a second run), and the pipeline ran at 4,942 ev/s against 4,479 and 3,577
# (docs/performance-log.md, twenty-first session). A collection is still due once half a million objects more are made than freed:
# the cycles some library makes (an exception's traceback) are still reclaimed.
STARTED_WORKER_GC_THRESHOLDS = (500_000, 10, 100)


class PauseMonitor:
    """Times every garbage collection (`gc.callbacks`) and, while started, how late a
    sleeper of `interval_s` wakes (the loop's lag). `clock` is monotonic seconds."""

    def __init__(self, interval_s: float = 0.01,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._gc_started: float | None = None
        self._task: asyncio.Task[None] | None = None
        self.frozen: int | None = None  # objects `freeze_survivors` froze, once it has run

    def start(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
        if self._task is None:
            self._task = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    def freeze_survivors(self) -> int:
        """Collect, then move every object alive now out of the collector's reach: what a
        started worker holds for good (modules, the app, its clients). A collection of the
        oldest generation otherwise walks all of them each time and stops the loop for tens
        of milliseconds; after this it walks only what processing made since. Objects frozen
        are still freed when their last reference goes; only a cycle among them would stay.
        Returns how many objects were frozen."""
        gc.collect()
        gc.freeze()
        self.frozen = gc.get_freeze_count()
        return self.frozen

    @staticmethod
    def collect_less_often() -> None:
        """The collector's thresholds for a started worker (STARTED_WORKER_GC_THRESHOLDS)."""
        gc.set_threshold(*STARTED_WORKER_GC_THRESHOLDS)

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_started = self._clock()
        elif self._gc_started is not None:
            metrics.GC_PAUSE_SECONDS.labels(str(info["generation"])).observe(
                self._clock() - self._gc_started)
            self._gc_started = None

    async def _watch(self) -> None:
        clock, interval = self._clock, self.interval_s
        while True:
            asleep = clock()
            await asyncio.sleep(interval)
            metrics.LOOP_LAG_SECONDS.observe(max(0.0, clock() - asleep - interval))
