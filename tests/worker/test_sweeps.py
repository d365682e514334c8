"""The deadline sweep runs on its own task, one at a time; the timer that pokes it never waits.

Regression: the sweep ran inside Faust's timer, which it held for 0.25-3.6 s at full load,
and Faust logged every such tick as overlapping."""

from __future__ import annotations

import asyncio

from streams.worker.sweeps import Sweeper


class HeldSweeps:
    """Sweeps that run until released, counting how many started."""

    def __init__(self) -> None:
        self.started = 0
        self.release = asyncio.Event()

    async def __call__(self) -> None:
        self.started += 1
        await self.release.wait()


async def no_failure(exc: BaseException) -> None:
    raise AssertionError(f"unexpected failure {exc!r}")


async def test_a_poke_returns_at_once_and_starts_no_second_sweep_while_one_runs():
    sweeps = HeldSweeps()
    sweeper = Sweeper(sweeps, on_failure=no_failure)

    assert sweeper.poke() is True  # returns without waiting for the sweep
    await asyncio.sleep(0)
    assert (sweeps.started, sweeper.running) == (1, True)
    assert sweeper.poke() is False
    await asyncio.sleep(0)
    assert sweeps.started == 1

    sweeps.release.set()
    for _ in range(3):
        await asyncio.sleep(0)
    assert sweeper.running is False
    assert sweeper.poke() is True  # the next interval's sweep
    await asyncio.sleep(0)
    assert sweeps.started == 2
    await sweeper.stop()


async def test_a_failed_sweep_goes_to_on_failure_and_the_next_poke_sweeps_again():
    failures: list[BaseException] = []
    calls = 0

    async def sweep() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("engine bug")

    async def on_failure(exc: BaseException) -> None:
        failures.append(exc)

    sweeper = Sweeper(sweep, on_failure=on_failure)
    sweeper.poke()
    for _ in range(3):
        await asyncio.sleep(0)
    assert [str(e) for e in failures] == ["engine bug"]
    assert sweeper.poke() is True
    for _ in range(3):
        await asyncio.sleep(0)
    assert (calls, len(failures)) == (2, 1)


async def test_stop_cancels_the_running_sweep_and_waits_for_it():
    cancelled = asyncio.Event()

    async def sweep() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    sweeper = Sweeper(sweep, on_failure=no_failure)
    sweeper.poke()
    await asyncio.sleep(0)
    await sweeper.stop()
    assert cancelled.is_set() and sweeper.running is False
    await sweeper.stop()  # nothing running: nothing to do


async def test_no_sweep_starts_after_stop():
    """Regression: the timer still pokes while the worker's last batches ship after stop,
    and a poke then started a sweep again."""
    sweeps = HeldSweeps()
    sweeper = Sweeper(sweeps, on_failure=no_failure)
    await sweeper.stop()

    assert sweeper.poke() is False
    await asyncio.sleep(0)
    assert (sweeps.started, sweeper.running) == (0, False)
