"""Event-time arithmetic: instants as epoch seconds, local calendar days, RFC 3339 text.

The engine works on integer epoch seconds (cheap to store, compare and hash). Calendar
questions (which day, which month, the member day) use the brand's fixed UTC offset from the
rule file; China has no daylight saving, so a fixed offset is exact and branch-free.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

DAY = 86_400


class LocalCalendar:
    """Day numbers and RFC 3339 rendering in one fixed UTC offset."""

    __slots__ = ("offset_s", "tz", "_rendered")

    def __init__(self, offset_s: int) -> None:
        self.offset_s = offset_s
        self.tz = timezone(timedelta(seconds=offset_s))
        # the same instants come back again and again (a member's last order, its deadlines)
        self._rendered: dict[int, str] = {}

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
        text = self._rendered.get(instant)
        if text is None:
            if len(self._rendered) >= 200_000:
                self._rendered.clear()
            text = self._rendered[instant] = datetime.fromtimestamp(instant, self.tz).isoformat()
        return text


def to_epoch(moment: datetime) -> int:
    """Whole epoch seconds of an aware datetime (sub-second precision is not used by rules)."""
    return int(moment.timestamp() // 1)
