"""The deadline sweep's task: due deadlines fire with no event needed, on a task of their own,
so the timer that starts a sweep is never held by it.

A sweep yields to the loop between steps, so under load every step waits behind a run of
events, and a sweep outlasts the timer's interval by design (0.25-3.6 s at full load in the
bench). Run inside Faust's timer it held the timer that long, and Faust logged each such tick
as "overlapping", a warning that read like a stall to an operator. The loop's real stalls are
measured by PauseMonitor (streams/worker/pauses.py); one sweep at a time is kept here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Awaitable, Callable

log = logging.getLogger(__name__)


class Sweeper:
    """Runs `sweep` on its own task, one at a time. A sweep that raises is logged and handed
    to `on_failure` (the worker crashes, as it did when the timer itself raised)."""

    def __init__(self, sweep: Callable[[], Awaitable[None]],
                 on_failure: Callable[[BaseException], Awaitable[Any]]) -> None:
        self._sweep = sweep
        self._on_failure = on_failure
        self._task: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def poke(self) -> bool:
        """Start a sweep unless one is running or the sweeper was stopped; True if this
        started one. Returns at once."""
        if self._stopped or self.running:
            return False
        self._task = asyncio.ensure_future(self._run())
        return True

    async def stop(self) -> None:
        """Cancel the running sweep, wait for it, and start no more: the timer goes on
        poking while the worker's last batches ship, and a sweep started then would add to
        a batch after it was drained. A sweep cut short leaves its deadlines in the stored
        states, due again at the next start."""
        self._stopped = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        try:
            await self._sweep()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, then the worker stops
            log.exception("the deadline sweep failed")
            await self._on_failure(exc)
