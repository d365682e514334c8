"""When the replay writes a watermark (pure: no broker). The agent-alone harness follows the
same cadence, so both must agree on it."""

from __future__ import annotations

from datetime import datetime, timedelta

from streams.ops.replay import WATERMARK_EVERY, WatermarkCadence

T0 = datetime.fromisoformat("2026-01-01T00:00:00+08:00")


def test_a_mark_for_the_newest_time_queued_every_so_many_events_in_time_order():
    cadence = WatermarkCadence()
    marks = [cadence.before(T0 + timedelta(seconds=i)) for i in range(2 * WATERMARK_EVERY + 1)]
    due = [(i, mark) for i, mark in enumerate(marks) if mark is not None]
    # before the event after each full run, marking the run's last time
    assert due == [(WATERMARK_EVERY, T0 + timedelta(seconds=WATERMARK_EVERY - 1)),
                   (2 * WATERMARK_EVERY, T0 + timedelta(seconds=2 * WATERMARK_EVERY - 1))]
    assert cadence.last == T0 + timedelta(seconds=2 * WATERMARK_EVERY)


def test_no_mark_while_the_time_stands_still_and_none_once_the_file_went_back():
    cadence = WatermarkCadence()
    for _ in range(WATERMARK_EVERY + 5):
        assert cadence.before(T0) is None  # a mark needs a later event: ties may still come
    assert cadence.before(T0 + timedelta(seconds=1)) == T0
    cadence.before(T0 - timedelta(seconds=1))  # out of order: markers cannot be trusted
    later = [cadence.before(T0 + timedelta(seconds=2 + i)) for i in range(3 * WATERMARK_EVERY)]
    assert later == [None] * (3 * WATERMARK_EVERY)
    assert cadence.last == T0 + timedelta(seconds=1 + 3 * WATERMARK_EVERY)
