"""The one retry delay every tagstream component backs off with: exponential, capped, jittered."""

from __future__ import annotations

import random


def backoff_delay(failures: int, base: float, cap: float,
                  rng: random.Random | None = None) -> float:
    """The delay after the `failures`-th failure in a row (1 for the first): `base` doubled
    per further failure, at most `cap`. With `rng`, "equal jitter": half the delay fixed and
    half random, so callers that failed together do not all come back at the same moment."""
    ceiling = min(cap, base * 2 ** (max(1, failures) - 1))
    if rng is None:
        return ceiling
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
