"""The worker's pause monitor: garbage collections and loop lag land in its histograms.

The monitor's clock is injected, so the pauses it records are the ones the test makes."""

from __future__ import annotations

import asyncio
import gc

import pytest

from streams.platform.metrics import REGISTRY
from streams.worker.pauses import STARTED_WORKER_GC_THRESHOLDS, PauseMonitor


def _bucket(name: str, le: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(f"{name}_bucket", {**labels, "le": le}) or 0.0


class SteppingClock:
    """Each reading is `step` seconds after the previous one."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.mark.asyncio
async def test_a_collection_is_timed_by_generation_while_started_and_not_after_stop() -> None:
    name = "tagstream_worker_gc_pause_seconds"
    monitor = PauseMonitor(interval_s=60, clock=SteppingClock(0.3))
    monitor.start()
    try:
        under, over = _bucket(name, "0.25", generation="2"), _bucket(name, "0.5", generation="2")
        gc.collect()
        # a 0.3 s collection of generation 2: above the 0.25 s bucket, within the 0.5 s one
        assert _bucket(name, "0.25", generation="2") == under
        assert _bucket(name, "0.5", generation="2") == over + 1
    finally:
        await monitor.stop()
    after_stop = _bucket(name, "0.5", generation="2")
    gc.collect()
    assert _bucket(name, "0.5", generation="2") == after_stop


@pytest.mark.asyncio
async def test_loop_lag_is_how_late_the_sleeper_woke() -> None:
    name = "tagstream_worker_loop_lag_seconds"
    # asleep at 100.0, woke at 100.07 (0.06 s late for a 0.01 s sleep); then always on time
    readings = iter([100.0, 100.07])
    monitor = PauseMonitor(interval_s=0.01, clock=lambda: next(readings, 200.0))

    def between_50_and_100_ms() -> float:
        return _bucket(name, "0.1") - _bucket(name, "0.05")

    before, over_100_ms, samples = (between_50_and_100_ms(),
                                    _bucket(name, "+Inf") - _bucket(name, "0.1"),
                                    _bucket(name, "+Inf"))
    gc_callbacks = list(gc.callbacks)
    gc.disable()  # a collection would read the clock too
    monitor.start()
    try:
        while _bucket(name, "+Inf") < samples + 3:
            await asyncio.sleep(0.005)
    finally:
        await monitor.stop()
        gc.enable()
    assert gc.callbacks == gc_callbacks  # stop took its callback off
    assert between_50_and_100_ms() == before + 1
    assert _bucket(name, "+Inf") - _bucket(name, "0.1") == over_100_ms


def test_freeze_survivors_takes_what_is_alive_out_of_the_collections() -> None:
    monitor = PauseMonitor()
    survivor = [object() for _ in range(1000)]
    try:
        frozen = monitor.freeze_survivors()
        # a frozen object whose last reference goes leaves the count: it can only shrink
        assert monitor.frozen == frozen >= gc.get_freeze_count() >= len(survivor)
        assert not any(obj is survivor for obj in gc.get_objects())  # no longer walked
    finally:
        gc.unfreeze()


def test_a_started_worker_collects_less_often_than_python_would() -> None:
    python_default = gc.get_threshold()
    try:
        PauseMonitor.collect_less_often()
        assert gc.get_threshold() == STARTED_WORKER_GC_THRESHOLDS
        assert all(ours > python for ours, python in
                   zip(STARTED_WORKER_GC_THRESHOLDS[::2], python_default[::2]))
    finally:
        gc.set_threshold(*python_default)


def test_at_the_started_thresholds_reference_cycles_are_still_collected_on_their_own() -> None:
    """Collections come rarely, not never: cycles some library leaves (an exception and its
    traceback) are reclaimed once enough of them pile up, with no explicit gc.collect()."""
    python_default = gc.get_threshold()
    collected: list[int] = []

    def note(phase: str, info: dict) -> None:
        if phase == "stop":
            collected.append(info["collected"])

    gc.collect()
    gc.callbacks.append(note)
    try:
        PauseMonitor.collect_less_often()
        for _ in range(STARTED_WORKER_GC_THRESHOLDS[0] + 1000):
            cycle: list = []
            cycle.append(cycle)
            del cycle
        assert sum(collected) > 0
    finally:
        gc.callbacks.remove(note)
        gc.set_threshold(*python_default)
