"""Event-time arithmetic: instants as epoch seconds, local calendar days, RFC 3339 text.

The engine works on integer epoch seconds (cheap to store, compare and hash). Calendar
questions (which day, which month, the member day) use the brand's fixed UTC offset from the
rule file; China has no daylight saving, so a fixed offset is exact and branch-free.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Final

DAY: Final = 86_400


class LocalCalendar:
    """Day numbers and RFC 3339 rendering in one fixed UTC offset."""

    __slots__ = ("offset_s", "tz", "_rendered", "_suffix")

    def __init__(self, offset_s: int) -> None:
        self.offset_s = offset_s
        self.tz = timezone(timedelta(seconds=offset_s))
        # the same instants come back again and again (a member's last order, its deadlines)
        self._rendered: dict[int, str] = {}
        self._suffix = datetime(2000, 1, 1, tzinfo=self.tz).isoformat()[19:]  # "+08:00"

    @classmethod
    def parse(cls, text: str) -> "LocalCalendar":
        """'+08:00' or '-05:30' → calendar; raises ValueError otherwise."""
        if len(text) != 6 or text[0] not in "+-" or text[3] != ":":
            raise ValueError(f"timezone must look like '+08:00', not {text!r}")
        hours, minutes = int(text[1:3]), int(text[4:6])
        if hours > 14 or minutes > 59:
            raise ValueError(f"timezone offset out of range: {text!r}")
        sign = 1 if text[0] == "+" else -1
        return cls(sign * (hours * 3600 + minutes * 60))

    def day_of(self, instant: int) -> int:
        """Local calendar day number (days since 1970-01-01 local)."""
        return (instant + self.offset_s) // DAY

    def day_start(self, day: int) -> int:
        """The instant local day `day` begins."""
        return day * DAY - self.offset_s

    def render(self, instant: int) -> str:
        """`datetime.fromtimestamp(instant, self.tz).isoformat()`, in integer arithmetic
        (a tenth of the instructions; one per tag change, most of them instants not seen
        before)."""
        text = self._rendered.get(instant)
        if text is None:
            if len(self._rendered) >= 200_000:
                self._rendered.clear()
            day, second = divmod(instant + self.offset_s, DAY)
            year, month, date_ = civil_from_days(day)
            hour, second = divmod(second, 3600)
            minute, second = divmod(second, 60)
            # only str parts: the compiled f-string joins them without a format call each
            text = self._rendered[instant] = (
                f"{str(year) if year >= 1000 else _padded_year(year)}-{_TWO_DIGITS[month]}-"
                f"{_TWO_DIGITS[date_]}T{_TWO_DIGITS[hour]}:{_TWO_DIGITS[minute]}:"
                f"{_TWO_DIGITS[second]}{self._suffix}")
        return text


_TWO_DIGITS: Final = [f"{i:02d}" for i in range(100)]


def _padded_year(year: int) -> str:
    return f"{year:04d}"


def civil_from_days(day: int) -> tuple[int, int, int]:
    """(year, month, day of month) of day number `day` (0 = 1970-01-01), proleptic Gregorian
    (H. Hinnant's days_from_civil inverse: whole 400-year eras, then the day of the era)."""
    z = day + 719_468
    era = z // 146_097
    day_of_era = z - era * 146_097
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524
                   - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153  # March = 0
    date_ = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    return year_of_era + era * 400 + (month <= 2), month, date_


def to_epoch(moment: datetime) -> int:
    """Whole epoch seconds of an aware datetime (sub-second precision is not used by rules):
    `int(moment.timestamp() // 1)`, from its fields (timestamp() subtracts two aware
    datetimes, each asking its tzinfo for the offset)."""
    offset = moment.utcoffset()
    if offset is None:
        return int(moment.timestamp() // 1)  # naive: local time, as timestamp() has it
    return ((moment.toordinal() - 719_163) * DAY + moment.hour * 3600 + moment.minute * 60
            + moment.second - offset.days * DAY - offset.seconds)
