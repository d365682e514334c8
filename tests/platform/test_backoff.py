"""The one retry delay (streams/platform/backoff.py)."""

from __future__ import annotations

import random

from streams.platform.backoff import backoff_delay


def test_the_delay_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_delay(n, 0.2, 5.0) for n in range(1, 8)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert backoff_delay(0, 0.2, 5.0) == 0.2  # "no failure yet" waits as the first does


def test_equal_jitter_keeps_half_fixed_and_spreads_the_other_half() -> None:
    rng = random.Random(7)
    delays = [backoff_delay(4, 0.5, 30.0, rng) for _ in range(500)]  # ceiling 4 s
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert max(delays) - min(delays) > 1.5  # spread, so callers failing together part
