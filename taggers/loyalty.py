"""Tiers over growth value (成长值) and points (积分): the program compiled from the rule
file's `loyalty:` section (taggers/loyalty_compiler.py), applied as pure functions to a small
per-member `LoyaltyState` (taggers/state.py).

No Kafka, no wall clock: time is the event's `occurred` or the caller's `now`, calendar days
are the rule file's fixed offset. The state is mutated in place (like `MemberState`) and is
bounded whatever the number of events: daily growth buckets cover the evaluation window,
cap counters the last few days, the order ledger the refund window.

Semantics (every number is a parameter of the `loyalty:` section; RULES.md "Tiers", "Points"):

- Growth: per full ¥1 paid; per event of a configured type with an optional daily cap (in
  growth or in a count of events, per local day). A refund takes back the growth its order
  gave, from the bucket of the order's day (so it also leaves the evaluation window).
- "Growth" is what was earned in the evaluation window: from the same local date
  `evaluation_months` earlier (month end clamped) through today.
- Upgrade at once when an event brings the window's growth to a higher level's threshold,
  straight to the highest level reached: one `tier.upgraded` from the old to the new level.
  A refund never downgrades at once; its growth is simply gone at the next review.
- Review at local 00:00 of each anniversary date of `tier_since` (every `evaluation_months`):
  if the growth of the months before it is below the level's threshold, drop exactly one
  level (`tier.downgraded`); `tier_since` becomes the review instant. The lowest level has
  no review. `downgrade_warning_days` before a review, a member still short gets one
  `tier.downgrade_warning` with the growth still needed.
- Points: per full `yuan_per_point` of an order, times the day's multiplier (the largest of
  the member-day multiplier and any multiplier period covering the local day). Points earned
  in local year Y expire at local 00:00 of 1 January Y + `end_of_year_after` + 1 (the
  default, 1: valid through 31 December of the next year), oldest lot first, with one
  `points.expiry_warning` `warning_days` before.
- A refund claws back the points its order gave (recomputed on the order's remaining net
  amount, at the order's multiplier): from the order's own lot, then oldest first; what the
  balance cannot cover is recorded as `shortfall` and, with `settle_shortfall`, paid off by
  the next points earned.
- Orders are remembered for `refund_window_days` (at most `MAX_ORDERS` of them). A refund of
  an order not remembered takes back growth per ¥ refunded from the newest growth and points
  per full `yuan_per_point` refunded without multiplier.
"""

from __future__ import annotations

import calendar as gregorian
import functools
import hashlib
import re
from bisect import bisect_left
from dataclasses import dataclass, field
from datetime import date, timedelta
from itertools import accumulate
from typing import Any, Callable

from schemas.changes import TierChange, change_id_for
from schemas.errors import EventRejected
from schemas.events import Event, OrderPaid, OrderRefunded
from schemas.profile import NextTier, PointsLot
from taggers.clock import DAY, LocalCalendar
from taggers.series import add_to_bucket
from taggers.state import LoyaltyState

LEVEL_ID = re.compile(r"^[a-z][a-z0-9_]{0,34}$")  # "tier_" + id stays a valid tag id
WECOM_TAG_NAME_LIMIT = 30
# Daily cap counters are kept for this many local days, so an event that arrives late
# (the engine accepts 7 days of lateness) is still checked against its own day's cap.
CAP_MEMORY_DAYS = 8
# Growth buckets outlive the evaluation window by this many days for the same reason.
LATE_SLACK_DAYS = 8
# Most orders the refund ledger holds (newest kept); bounds a heavy buyer's state.
MAX_ORDERS = 32
_ORDER_STRIDE = 7  # [order_key, day, paid_fen, refunded_fen, growth, points, multiplier]
_EPOCH = date(1970, 1, 1)


# --- compiled program ------------------------------------------------------------------------


@dataclass(frozen=True)
class Level:
    id: str
    name_zh: str
    threshold: int


@dataclass(frozen=True)
class EventGrowth:
    """Growth per event of one type; `daily_cap` is the most growth it gives in a local day."""

    event_type: str
    growth: int
    daily_cap: int | None


@dataclass(frozen=True)
class MultiplierPeriod:
    name: str
    first_day: int  # local day numbers, both inclusive
    last_day: int
    multiplier: int


@dataclass(frozen=True)
class LoyaltyProgram:
    levels: tuple[Level, ...]
    growth_per_yuan: int
    event_growth: dict[str, EventGrowth]
    evaluation_months: int
    downgrade_warning_days: int
    fen_per_point: int
    member_days: frozenset[int]
    member_day_multiplier: int
    periods: tuple[MultiplierPeriod, ...]
    expiry_years_after: int | None  # None: points never expire
    expiry_warning_days: int
    refund_window_days: int
    settle_shortfall: bool
    calendar: LocalCalendar
    # level id -> its index in `levels` (made from them; a level read on every event)
    _level_indexes: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_level_indexes",
                           {level.id: i for i, level in reversed(list(enumerate(self.levels)))})

    # --- events -------------------------------------------------------------------------------

    def apply(self, state: LoyaltyState | None, event: Event, occurred: int, member_id: str,
              cause: dict[str, str]) -> tuple[LoyaltyState, list[TierChange]]:
        """Growth and points of one event, then an upgrade if the growth reached a higher level.

        Deadlines due at or before `occurred` fire first (a no-op when the caller already
        advanced the member), so the changes are in time order either way."""
        if state is None:
            state = LoyaltyState(level=self.levels[0].id, tier_since=occurred)
            changes: list[TierChange] = []
        else:
            changes = self.advance(state, occurred, member_id)
        day = self.calendar.day_of(occurred)
        self._prune(state, day)
        if type(event) is OrderPaid:  # exact classes: see taggers/engine.py
            earned = self._paid(state, event, day)
        elif type(event) is OrderRefunded:
            self._refunded(state, event)
            earned = 0
        else:
            source = self.event_growth.get(event.event_type)
            earned = 0 if source is None else self._earn_capped(state, source, day)
        if earned:
            upgrade = self._upgrade(state, occurred, member_id, cause)
            if upgrade is not None:
                changes.append(upgrade)
        return state, changes

    def redeem(self, state: LoyaltyState, points: int) -> None:
        """Spend points, oldest lot first. There is no redemption event type yet; this is the
        operation one will call."""
        if points < 0 or points > state.points:
            raise EventRejected(f"cannot redeem {points} points; the balance is {state.points}")
        self._take_points(state, None, points)

    def _paid(self, state: LoyaltyState, event: OrderPaid, day: int) -> int:
        growth = event.amount_fen // 100 * self.growth_per_yuan
        multiplier = self.multiplier_on(day)
        points = event.amount_fen // self.fen_per_point * multiplier
        _add_growth(state.growth, day, growth)
        if points:
            self._give_points(state, _local_date(day).year, points)
        key = _order_key(event.order_id)
        rows = state.orders
        for i in range(0, len(rows), _ORDER_STRIDE):
            if rows[i] == key:  # a second payment of the same order adds to it
                rows[i + 2] += event.amount_fen
                rows[i + 4] += growth
                rows[i + 5] += points
                return growth
        rows.extend((key, day, event.amount_fen, 0, growth, points, multiplier))
        if len(rows) > MAX_ORDERS * _ORDER_STRIDE:
            del rows[:_ORDER_STRIDE]
        return growth

    def _refunded(self, state: LoyaltyState, event: OrderRefunded) -> None:
        key = _order_key(event.order_id)
        rows = state.orders
        for i in range(0, len(rows), _ORDER_STRIDE):
            if rows[i] != key:
                continue
            _, day, paid, refunded, growth, points, multiplier = rows[i:i + _ORDER_STRIDE]
            refunded = min(paid, refunded + event.amount_fen)
            net = paid - refunded
            keep_growth = min(growth, net // 100 * self.growth_per_yuan)
            keep_points = min(points, net // self.fen_per_point * multiplier)
            rows[i + 3:i + 6] = [refunded, keep_growth, keep_points]
            _take_growth(state.growth, growth - keep_growth, day)
            self._take_points(state, _local_date(day).year, points - keep_points)
            return
        _take_growth(state.growth, event.amount_fen // 100 * self.growth_per_yuan, None)
        self._take_points(state, None, event.amount_fen // self.fen_per_point)

    def _earn_capped(self, state: LoyaltyState, source: EventGrowth, day: int) -> int:
        amount = source.growth
        if source.daily_cap is not None:
            awarded = state.caps.setdefault(source.event_type, {})
            amount = max(0, min(amount, source.daily_cap - awarded.get(day, 0)))
            if not amount:
                return 0
            awarded[day] = awarded.get(day, 0) + amount
        _add_growth(state.growth, day, amount)
        return amount

    def _upgrade(self, state: LoyaltyState, occurred: int, member_id: str,
                 cause: dict[str, str]) -> TierChange | None:
        current = self._level_index(state)
        if current + 1 == len(self.levels):
            return None  # the top level: nothing to reach
        growth = self.growth_at(state, occurred)
        target = current
        while target + 1 < len(self.levels) and growth >= self.levels[target + 1].threshold:
            target += 1
        if target == current:
            return None
        old = self.levels[current].id
        state.level = self.levels[target].id
        state.tier_since = occurred
        state.review_at = self._review(occurred, 1)
        state.warned_review = None
        return self._change(member_id, "tier.upgraded", f"tier:{old}>{state.level}", cause,
                            occurred, old, state.level, growth)

    # --- points lots --------------------------------------------------------------------------

    def _give_points(self, state: LoyaltyState, year: int, points: int) -> None:
        if self.settle_shortfall and state.shortfall:
            settled = min(points, state.shortfall)
            state.shortfall -= settled
            points -= settled
        if points:
            add_to_bucket(state.lots, year, points)

    def _take_points(self, state: LoyaltyState, year: int | None, points: int) -> None:
        """Take points from `year`'s lot first, then oldest first; the rest is shortfall."""
        lots = state.lots
        order = list(range(0, len(lots), 2))
        if year is not None:
            order.sort(key=lambda i: lots[i] != year)
        for i in order:
            if not points:
                break
            taken = min(points, lots[i + 1])
            lots[i + 1] -= taken
            points -= taken
        state.lots = [v for i in range(0, len(lots), 2) if lots[i + 1]
                      for v in lots[i:i + 2]]
        state.shortfall += points

    # --- time ---------------------------------------------------------------------------------

    def advance(self, state: LoyaltyState, now: int, member_id: str) -> list[TierChange]:
        """Fire every deadline due at or before `now`, in deadline order, each at its deadline."""
        changes: list[TierChange] = []
        while True:
            due = self._next_due(state)
            if due is None or due[0] > now:
                return changes
            at, _, fire = due
            self._prune(state, self.calendar.day_of(at))
            change = fire(self, state, at, member_id)
            if change is not None:
                changes.append(change)

    def next_deadline(self, state: LoyaltyState | None) -> int | None:
        due = None if state is None else self._next_due(state)
        return None if due is None else due[0]

    def _next_due(self, state: LoyaltyState) -> tuple[int, int, Callable[..., Any]] | None:
        """(deadline, rank among deadlines at the same instant, handler) of the earliest."""
        # Candidates come in rank order, so the first of the earliest instant is the one due.
        best: tuple[int, int, Callable[..., Any]] | None = None
        cls = LoyaltyProgram
        lots = state.lots
        for i in range(0, len(lots), 2):
            expires = self.expires_at(lots[i])
            if expires is None:
                break
            if i == 0:
                best = (expires, 0, cls._fire_points_expired)
            if self.expiry_warning_days and lots[i] > state.warned_year:
                warn = expires - self.expiry_warning_days * DAY
                if best is None or warn < best[0]:
                    best = (warn, 1, cls._fire_points_expiry_warning)
                break
        review_at = state.review_at
        if review_at is not None:
            warn = review_at - self.downgrade_warning_days * DAY
            if (self.downgrade_warning_days and state.warned_review != review_at
                    and warn > state.tier_since and (best is None or warn < best[0])):
                best = (warn, 2, cls._fire_tier_downgrade_warning)
            if best is None or review_at < best[0]:
                best = (review_at, 3, cls._fire_tier_review)
        return best

    def _fire_points_expired(self, state: LoyaltyState, at: int,
                             member_id: str) -> TierChange:
        year, points = state.lots[:2]
        del state.lots[:2]
        state.warned_year = max(state.warned_year, year)
        return self._timer_change(member_id, "points.expired", f"points:{year}", at, state,
                                  points=points, balance=state.points,
                                  expires_at=self.calendar.render(at))

    def _fire_points_expiry_warning(self, state: LoyaltyState, at: int,
                                    member_id: str) -> TierChange:
        i = next(i for i in range(0, len(state.lots), 2) if state.lots[i] > state.warned_year)
        year, points = state.lots[i:i + 2]
        state.warned_year = year
        return self._timer_change(member_id, "points.expiry_warning", f"points:{year}", at, state,
                                  points=points, balance=state.points,
                                  expires_at=self.calendar.render(
                                      at + self.expiry_warning_days * DAY))

    def _fire_tier_downgrade_warning(self, state: LoyaltyState, at: int,
                                     member_id: str) -> TierChange | None:
        review = state.review_at or at
        state.warned_review = review
        index = self._level_index(state)
        counted = self.growth_at(state, review)
        needed = self.levels[index].threshold - counted
        if index == 0 or needed <= 0:
            return None
        lower = self.levels[index - 1].id
        return self._timer_change(member_id, "tier.downgrade_warning", f"tier:{state.level}", at,
                                  state, from_=state.level, to=lower, growth=counted,
                                  needed_growth=needed, review_at=self.calendar.render(review))

    def _fire_tier_review(self, state: LoyaltyState, at: int,
                          member_id: str) -> TierChange | None:
        index = self._level_index(state)
        if index == 0:  # the rule file dropped the member's level: nothing to review
            state.review_at = None
            return None
        counted = self.growth_at(state, at, before=True)
        if counted >= self.levels[index].threshold:
            state.review_at = self._next_review(state.tier_since, at)
            return None
        old = state.level
        state.level = self.levels[index - 1].id
        state.tier_since = at
        state.review_at = self._review(at, 1) if index > 1 else None
        state.warned_review = None
        return self._timer_change(member_id, "tier.downgraded", f"tier:{old}>{state.level}", at,
                                  state, from_=old, to=state.level, growth=counted,
                                  cause_what="tier.review")

    def _review(self, since: int, cycles: int) -> int:
        """Local 00:00 of the date `cycles` evaluation periods after the date of `since`."""
        start = _local_date(self.calendar.day_of(since))
        return self.calendar.day_start(_day(_add_months(start, cycles * self.evaluation_months)))

    def _next_review(self, since: int, after: int) -> int:
        start = _local_date(self.calendar.day_of(since))
        end = _local_date(self.calendar.day_of(after))
        months = (end.year - start.year) * 12 + end.month - start.month
        cycles = max(1, months // self.evaluation_months)
        while self._review(since, cycles) <= after:
            cycles += 1
        return self._review(since, cycles)

    def expires_at(self, year: int) -> int | None:
        """Local 00:00 of 1 January after the last year the points of `year` are valid."""
        if self.expiry_years_after is None:
            return None
        return self.calendar.day_start(_new_year(year + self.expiry_years_after + 1))

    # --- reading ------------------------------------------------------------------------------

    def window_start(self, day: int) -> int:
        """First local day whose growth counts on `day`: the same date evaluation_months ago."""
        return _months_before(day, self.evaluation_months)

    def growth_at(self, state: LoyaltyState, at: int, before: bool = False) -> int:
        """Growth of the evaluation window ending on the local day of `at` (with `before`:
        ending the day before, i.e. the window a review at local midnight `at` reads)."""
        day = self.calendar.day_of(at)
        days = list(accumulate(state.growth[0::2]))
        first = bisect_left(days, self.window_start(day))
        end = bisect_left(days, day) if before else len(days)
        return sum(state.growth[2 * first + 1:2 * end:2])

    def multiplier_on(self, day: int) -> int:
        multiplier = 1
        if _local_date(day).day in self.member_days:
            multiplier = self.member_day_multiplier
        for period in self.periods:
            if period.first_day <= day <= period.last_day:
                multiplier = max(multiplier, period.multiplier)
        return multiplier

    def level_tag(self, state: LoyaltyState | None) -> str:
        """The member's exclusive tier tag, e.g. `tier_gold`."""
        level = self.levels[0] if state is None else self.levels[self._level_index(state)]
        return "tier_" + level.id

    @property
    def level_tags(self) -> tuple[tuple[str, str], ...]:
        """Every tier tag and its display name, lowest first."""
        return tuple(("tier_" + level.id, level.name_zh) for level in self.levels)

    def profile(self, state: LoyaltyState | None, now: int) -> dict[str, Any]:
        """The loyalty fields of the member profile (`schemas.profile.Profile`), as of `now`."""
        render = self.calendar.render
        if state is None:
            state = LoyaltyState(level=self.levels[0].id, tier_since=now)
        index = self._level_index(state)
        growth = self.growth_at(state, now)
        upper = self.levels[index + 1] if index + 1 < len(self.levels) else None
        return {
            "tier": self.levels[index].id,
            "tier_name_zh": self.levels[index].name_zh,
            "tier_since": render(state.tier_since),
            "tier_review_at": None if state.review_at is None else render(state.review_at),
            "growth": growth,
            "next_tier": None if upper is None else NextTier(
                tier=upper.id, growth_needed=max(0, upper.threshold - growth)),
            "points": state.points,
            "points_lots": [
                PointsLot(earned_year=year, points=points,
                          expires_at=None if expires is None else render(expires))
                for year, points in zip(state.lots[::2], state.lots[1::2])
                for expires in [self.expires_at(year)]],
            "points_shortfall": state.shortfall,
        }

    # --- helpers ------------------------------------------------------------------------------

    def _level_index(self, state: LoyaltyState) -> int:
        """A level the rule file no longer has counts as the lowest."""
        return self._level_indexes.get(state.level, 0)

    def _prune(self, state: LoyaltyState, day: int) -> None:
        # runs on every event: writes only what changed, and skips the caps most members lack
        growth = state.growth
        kept = _drop_growth_before(growth, self.window_start(day) - LATE_SLACK_DAYS)
        if kept is not growth:
            state.growth = kept
        caps = state.caps
        if caps:
            for event_type, awarded in list(caps.items()):
                for old in [d for d in awarded if d <= day - CAP_MEMORY_DAYS]:
                    del awarded[old]
                if not awarded:
                    del caps[event_type]
        rows = state.orders
        cut = 0
        while cut < len(rows) and rows[cut + 1] <= day - self.refund_window_days:
            cut += _ORDER_STRIDE
        if cut:
            del rows[:cut]

    def _change(self, member_id: str, kind: str, subject: str, cause: dict[str, str], at: int,
                # guides: the engine, which knows the member's, fills them in (Engine._guided)
                from_: str | None, to: str | None, growth: int, **detail: Any) -> TierChange:
        return TierChange(change_id=change_id_for(member_id, subject, kind, cause),
                          member_id=member_id, type=kind,  # type: ignore[arg-type]
                          from_=from_, to=to, growth=growth, cause=cause,
                          at=self.calendar.render(at), guides=(), **detail)

    def _timer_change(self, member_id: str, kind: str, subject: str, at: int,
                      state: LoyaltyState, *, from_: str | None = None, to: str | None = None,
                      growth: int | None = None, cause_what: str | None = None,
                      **detail: Any) -> TierChange:
        cause = {"timer": f"{cause_what or kind}@{self.calendar.render(at)}"}
        if growth is None:
            growth = self.growth_at(state, at)
        return self._change(member_id, kind, subject, cause, at, from_, to, growth,
                            **detail)


# --- growth buckets: flat [gap, value, ...] --------------------------------------------------


def _add_growth(series: list[int], day: int, amount: int) -> None:
    if amount <= 0:
        return
    last = sum(series[0::2])
    if series and day == last:
        series[-1] += amount
    elif day > last or not series:
        series.extend((day - last, amount))
    else:
        pairs = _pairs(series)
        pairs[day] = pairs.get(day, 0) + amount
        series[:] = _flat(pairs)


def _take_growth(series: list[int], amount: int, day: int | None) -> None:
    """Take growth back from `day`'s bucket, or (None) from the newest buckets backwards."""
    if amount <= 0 or not series:
        return
    pairs = _pairs(series)
    for bucket in ([day] if day is not None else sorted(pairs, reverse=True)):
        if bucket in pairs and amount:
            taken = min(amount, pairs[bucket])
            pairs[bucket] -= taken
            amount -= taken
    series[:] = _flat({d: v for d, v in pairs.items() if v})


def _drop_growth_before(series: list[int], low: int) -> list[int]:
    current = 0
    for i in range(0, len(series), 2):
        current += series[i]
        if current >= low:
            if i == 0:
                return series
            return [current] + series[i + 1:]
    return []


def _pairs(series: list[int]) -> dict[int, int]:
    pairs, current = {}, 0
    for i in range(0, len(series), 2):
        current += series[i]
        pairs[current] = series[i + 1]
    return pairs


def _flat(pairs: dict[int, int]) -> list[int]:
    series: list[int] = []
    last = 0
    for day in sorted(pairs):
        series.extend((day - last, pairs[day]))
        last = day
    return series


def _order_key(order_id: str) -> int:
    # 32 bits: a collision needs two of one member's last MAX_ORDERS orders to share a hash
    return int.from_bytes(hashlib.blake2b(order_id.encode(), digest_size=4).digest(), "big")


@functools.lru_cache(maxsize=8192)
def _months_before(day: int, months: int) -> int:
    """The local day the same date `months` earlier (clamped to the month's last day)."""
    return _day(_add_months(_local_date(day), -months))


@functools.lru_cache(maxsize=512)
def _new_year(year: int) -> int:
    """The local day number of 1 January of `year`."""
    return _day(date(year, 1, 1))


def _local_date(day: int) -> date:
    return _EPOCH + timedelta(days=day)


def _day(moment: date) -> int:
    return (moment - _EPOCH).days


def _add_months(moment: date, months: int) -> date:
    year, month = divmod(moment.month - 1 + months, 12)
    year += moment.year
    last = gregorian.monthrange(year, month + 1)[1]
    return date(year, month + 1, min(moment.day, last))
