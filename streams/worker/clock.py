"""The worker's clock per partition: wall time (live) or the event-time watermark (replay).

With `TAGSTREAM_CLOCK=event` each event topic's copy of a partition is *complete through*
some instant: an event at t proves everything before t - W has been written, where W is the
reorder window (0 when producers write a topic in time order; equal times may still follow),
and a watermark marker M from the replay tool says everything up to and including M has been
written. The partition's clock is the
lowest of the three topics' completeness: events at or before it can be applied in time order
and deadlines at or before it can fire, with nothing earlier still to come. That is what
makes a replayed year produce exactly the tags that living through it would.
"""

from __future__ import annotations

import time
from typing import Callable, Iterable


class PartitionClocks:
    def __init__(self, mode: str, inputs: Iterable[str],
                 wall: Callable[[], float] = time.time, reorder_window_s: int = 0) -> None:
        self.mode = mode
        self.inputs = tuple(inputs)
        self._wall = wall
        self.reorder_window_s = reorder_window_s
        self._complete: dict[tuple[str, int], int] = {}
        # partition -> the lowest completeness of its inputs, kept by `_advance` and `forget`:
        # `now` is asked several times an event and answers with one lookup. A partition not
        # in it has an input that has not said where it is.
        self._low: dict[int, int] = {}

    def observe_event(self, topic: str, partition: int, instant: int) -> None:
        """An event at t proves the topic complete through t - 1 - the reorder window."""
        self._advance(topic, partition, instant - 1 - self.reorder_window_s)

    def observe_marker(self, topic: str, partition: int, instant: int) -> None:
        self._advance(topic, partition, instant)

    def _advance(self, topic: str, partition: int, complete_through: int) -> None:
        key = (topic, partition)
        if complete_through > self._complete.get(key, -(1 << 62)):
            self._complete[key] = complete_through
            if topic in self.inputs:
                self._lowest(partition)

    def _lowest(self, partition: int) -> None:
        low = None
        for topic in self.inputs:
            complete = self._complete.get((topic, partition))
            if complete is None:
                return
            if low is None or complete < low:
                low = complete
        if low is not None:
            self._low[partition] = low

    def complete_through(self, topic: str, partition: int) -> int | None:
        """What one topic's copy of a partition is known complete through, if anything."""
        return self._complete.get((topic, partition))

    def now(self, partition: int) -> int | None:
        """The partition's clock, or None while some input has not said where it is."""
        if self.mode == "wall":
            return int(self._wall())
        return self._low.get(partition)

    def forget(self, partition: int) -> None:
        for topic in self.inputs:
            self._complete.pop((topic, partition), None)
        self._low.pop(partition, None)
