"""Flat integer series, the compact shape member state keeps its history in: day buckets
`[day, value, day, value, ...]` ascending by day, and keys last seen `[key, day, ...]`. Flat
lists of ints encode small (msgpack) and cost no object per entry."""

from __future__ import annotations


def add_to_bucket(series: list[int], day: int, amount: int) -> None:
    """Add to the day's bucket in a flat ascending [day, value, ...] list."""
    i = len(series) - 2
    if i >= 0 and series[i] == day:
        series[i + 1] += amount
        return
    if i < 0 or series[i] < day:
        series.extend((day, amount))
        return
    while i >= 0 and series[i] > day:
        i -= 2
    if i >= 0 and series[i] == day:
        series[i + 1] += amount
    else:
        series[i + 2:i + 2] = [day, amount]


def touch_key(series: list[int], key: int, day: int, limit: int) -> None:
    """Record that `key` was seen on `day` in a flat [key, last_day, ...] list."""
    for i in range(0, len(series), 2):
        if series[i] == key:
            if day > series[i + 1]:
                series[i + 1] = day
            return
    series.extend((key, day))
    if len(series) > 2 * limit:
        oldest = min(range(1, len(series), 2), key=lambda i: series[i])
        del series[oldest - 1:oldest + 1]


def prune_buckets(series: list[int], low_day: int) -> None:
    cut = 0
    while cut < len(series) and series[cut] < low_day:
        cut += 2
    if cut:
        del series[:cut]


def prune_keys(series: list[int], low_day: int) -> None:
    if min(series[1::2], default=low_day) >= low_day:
        return  # every key was seen on or after low_day: nothing to drop, no copy
    series[:] = [v for i in range(0, len(series), 2) if series[i + 1] >= low_day
                 for v in (series[i], series[i + 1])]
