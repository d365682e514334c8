"""The worker's clock per partition: wall time (live) or the event-time watermark (replay).

`TAGSTREAM_CLOCK=event` makes a partition's clock the *lowest* of the newest event times seen
on each event topic's copy of that partition: every topic is written in time order by the
replay tool, so once all three have passed t nothing earlier can still arrive, and deadlines
at or before t may fire. That is what makes a replayed year produce the same tags as living
through it. Replay ends with a watermark marker on every partition, so all clocks finish at
the last event's time.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable


class PartitionClocks:
    def __init__(self, mode: str, inputs: Iterable[str],
                 wall: Callable[[], float] = time.time) -> None:
        self.mode = mode
        self.inputs = tuple(inputs)
        self._wall = wall
        self._newest: dict[tuple[str, int], int] = {}

    def observe(self, topic: str, partition: int, instant: int) -> None:
        """Record that `topic`'s copy of `partition` has reached `instant` (event mode)."""
        key = (topic, partition)
        if instant > self._newest.get(key, -(1 << 62)):
            self._newest[key] = instant

    def now(self, partition: int) -> int | None:
        if self.mode == "wall":
            return int(self._wall())
        newest = self._newest
        low = None
        for topic in self.inputs:
            seen = newest.get((topic, partition))
            if seen is None:
                return None
            if low is None or seen < low:
                low = seen
        return low

    def forget(self, partition: int) -> None:
        for topic in self.inputs:
            self._newest.pop((topic, partition), None)
