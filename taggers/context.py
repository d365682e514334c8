"""What a condition sees while one member is evaluated, and the memo its windows share.

Each distinct memoised value (a window's sum or next change, a named definition) has a slot
number, given when a rule pack is compiled; an evaluation's memo is a list with a slot per
number, so a read is an index, not a dict lookup of a (counter, days, kind) tuple.
"""

from __future__ import annotations

from typing import Any, Final

from taggers.clock import LocalCalendar

# The slots of every memoised value compiled in this process: the same value read by several
# rules (or packs) shares one. Bounded by the distinct counters, windows and definitions ever
# compiled, a few dozen.
_SLOTS: dict[tuple[str, int, bool], int] = {}


class _Unset:
    """The memo's empty slot (a memoised value may be None)."""


UNSET: Final = _Unset()


def memo_slot(key: tuple[str, int, bool]) -> int:
    """The slot of (counter or ":definition", days, value rather than next change)."""
    slot = _SLOTS.get(key)
    if slot is None:
        slot = _SLOTS[key] = len(_SLOTS)
    return slot


class EvalContext:
    """What a condition sees: the member's state, the current event (None on a timer), now."""

    __slots__ = ("state", "event", "now", "today", "calendar", "held", "memo")

    def __init__(self, state: Any, event: Any, now: int, calendar: LocalCalendar) -> None:
        self.state = state
        self.event = event
        self.now = now
        self.today = calendar.day_of(now)
        self.calendar = calendar
        self.held: dict[str, bool] = {}
        # window values and their next changes, computed once per evaluation however many
        # rules read them; every slot given so far exists (packs compile before they run)
        self.memo: list[Any] = [UNSET] * len(_SLOTS)
