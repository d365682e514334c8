"""Event-time arithmetic: rendering and epoch seconds agree with datetime's own, everywhere."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from taggers.clock import LocalCalendar, civil_from_days, to_epoch

OFFSETS = ["+08:00", "+00:00", "-05:30", "+14:00", "-12:00", "+05:45"]
# 1970 through 2199 (the years events may have), and the days around leap days and eras
EDGES = [0, -1, 86_399, 86_400, 951_782_399, 951_782_400, 951_868_800, 4_102_444_799,
         4_102_444_800, 7_258_118_400, 946_684_800, 1_709_164_800, 1_709_251_199]


def instants(count: int = 20_000) -> list[int]:
    rng = random.Random(14)
    return EDGES + [rng.randrange(0, 7_258_118_400) for _ in range(count)]


@pytest.mark.parametrize("offset", OFFSETS)
def test_render_is_datetime_isoformat(offset: str) -> None:
    calendar = LocalCalendar.parse(offset)
    for instant in instants():
        assert calendar.render(instant) == \
            datetime.fromtimestamp(instant, calendar.tz).isoformat(), instant


def test_civil_from_days_is_the_proleptic_gregorian_date() -> None:
    for day in range(-719_162, 2_932_896, 37):  # every 37th day of years 1-9999
        expected = datetime.fromordinal(day + 719_163)
        assert civil_from_days(day) == (expected.year, expected.month, expected.day), day


@pytest.mark.parametrize("offset", OFFSETS)
def test_to_epoch_is_the_floor_of_timestamp(offset: str) -> None:
    calendar = LocalCalendar.parse(offset)
    rng = random.Random(7)
    for instant in instants(5_000):
        moment = datetime.fromtimestamp(instant, calendar.tz).replace(
            microsecond=rng.choice([0, 1, 500_000, 999_999]))
        assert to_epoch(moment) == int(moment.timestamp() // 1) == instant, moment


def test_to_epoch_of_a_utc_instant_and_a_naive_one() -> None:
    assert to_epoch(datetime(2024, 1, 2, 2, 0, tzinfo=timezone.utc)) == 1_704_160_800
    assert to_epoch(datetime(2024, 1, 2, 10, 0, tzinfo=timezone(timedelta(hours=8)))) == \
        1_704_160_800
    naive = datetime(2024, 1, 2, 10, 0)
    assert to_epoch(naive) == int(naive.timestamp() // 1)
