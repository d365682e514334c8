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
# almost nothing, yet each walks what is alive then: the open batch's decoded states, events
# and records, which a young collection also promotes for the middle one to walk again. At
# 500,000 a young collection comes every ~3,300 events at full load, when most of a batch
# is freed: 0.7-0.9 s of a 100,000-member pipeline phase, against 18-26 s at 20,000
# (docs/performance-log.md has every threshold tried). Collections still come on their own
# once half a million objects more are made than freed, so cycles some library makes (an
# exception's traceback) are reclaimed (tests/worker/test_pauses.py).
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
