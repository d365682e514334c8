"""The `loyalty:` section of a rule file, compiled into a `LoyaltyProgram` (taggers/loyalty.py):
every key checked, every error with its file, line and a suggestion."""

from __future__ import annotations

from datetime import date
from typing import Any

from schemas.errors import RuleDefinitionError
from schemas.events import TOPIC_BY_EVENT_TYPE
from taggers.clock import LocalCalendar
from taggers.loyalty import (
    EventGrowth,
    LEVEL_ID,
    Level,
    LoyaltyProgram,
    MultiplierPeriod,
    WECOM_TAG_NAME_LIMIT,
    _day,
)
from taggers.yamlsrc import check_keys, line, suggest


_SECTION_KEYS = {"levels", "evaluation_months", "downgrade_warning_days", "growth", "points",
                 "description"}
_LEVEL_KEYS = {"id", "name_zh", "threshold"}
_GROWTH_KEYS = {"per_yuan_paid", "events"}
_EVENT_KEYS = {"growth", "daily_cap_growth", "daily_cap_count"}
_POINTS_KEYS = {"yuan_per_point", "member_days", "multiplier_periods", "expiry",
                "refund_window_days", "settle_shortfall"}
_MEMBER_DAY_KEYS = {"days_of_month", "multiplier"}
_PERIOD_KEYS = {"name", "start", "end", "multiplier"}
_EXPIRY_KEYS = {"end_of_year_after", "warning_days"}
_MONEY_EVENTS = ("order.paid", "order.refunded")


class _Reader:
    """Typed reads of one YAML mapping, each error naming the file and the key's line."""

    def __init__(self, spec: Any, what: str, source: str, allowed: set[str],
                 at: int | None = None) -> None:
        if not isinstance(spec, dict):
            raise RuleDefinitionError(f"{what} must be a mapping", path=source, line=at)
        check_keys(spec, allowed, what, source)
        self.spec, self.what, self.source = spec, what, source

    def fail(self, key: str | None, message: str, hint: str | None = None) -> RuleDefinitionError:
        return RuleDefinitionError(f"{self.what}: {message}", path=self.source,
                                   line=line(self.spec, key), hint=hint)

    def line(self, key: str) -> int | None:
        return line(self.spec, key)

    def integer(self, key: str, default: int | None, minimum: int = 0) -> int:
        value = self.spec.get(key, default)
        if value is None and default is None and key not in self.spec:
            raise self.fail(None, f"needs '{key}'")
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(key, f"'{key}' must be a whole number, not {value!r}")
        if value < minimum:
            raise self.fail(key, f"'{key}' must be at least {minimum}, not {value}")
        return value

    def day(self, key: str) -> int:
        value = self.spec.get(key)
        if isinstance(value, str):
            try:
                value = date.fromisoformat(value)
            except ValueError:
                raise self.fail(key, f"'{key}' is not a valid date: {value!r}",
                                "write YYYY-MM-DD") from None
        if not isinstance(value, date):
            raise self.fail(key, f"'{key}' must be a date like 2024-11-11, not {value!r}")
        return _day(value)


def compile_loyalty(spec: Any, source: str, calendar: LocalCalendar) -> LoyaltyProgram:
    """Validate and compile the `loyalty:` section; every error names the file and line."""
    section = _Reader(spec, "loyalty", source, _SECTION_KEYS)
    levels = _compile_levels(spec.get("levels"), section, source)

    growth = _Reader(spec.get("growth") or {}, "loyalty.growth", source, _GROWTH_KEYS,
                     section.line("growth"))
    event_specs = growth.spec.get("events") or {}
    if not isinstance(event_specs, dict):
        raise growth.fail("events", "'events' must map event types to growth")
    event_growth: dict[str, EventGrowth] = {}
    for event_type, event_spec in event_specs.items():
        if str(event_type).startswith("__"):
            continue
        if event_type in _MONEY_EVENTS:
            raise RuleDefinitionError(
                f"loyalty.growth.events: {event_type} earns growth through 'per_yuan_paid'",
                path=source, line=line(event_specs, event_type))
        if event_type not in TOPIC_BY_EVENT_TYPE:
            options = [t for t in TOPIC_BY_EVENT_TYPE if t not in _MONEY_EVENTS]
            raise RuleDefinitionError(f"loyalty.growth.events: unknown event type {event_type!r}",
                                      path=source, line=line(event_specs, event_type),
                                      hint=suggest(str(event_type), options))
        reader = _Reader(event_spec, f"loyalty.growth.events.{event_type}", source, _EVENT_KEYS,
                         line(event_specs, event_type))
        amount = reader.integer("growth", None)
        if "daily_cap_growth" in reader.spec and "daily_cap_count" in reader.spec:
            raise reader.fail("daily_cap_count",
                              "give one daily cap: 'daily_cap_growth' or 'daily_cap_count'")
        cap = None
        if "daily_cap_growth" in reader.spec:
            cap = reader.integer("daily_cap_growth", None)
        elif "daily_cap_count" in reader.spec:
            cap = reader.integer("daily_cap_count", None) * amount
        event_growth[event_type] = EventGrowth(event_type, amount, cap)

    points = _Reader(spec.get("points") or {}, "loyalty.points", source, _POINTS_KEYS,
                     section.line("points"))
    member_days = _Reader(points.spec.get("member_days") or {}, "loyalty.points.member_days",
                          source, _MEMBER_DAY_KEYS, points.line("member_days"))
    days = member_days.spec.get("days_of_month", [])
    days = [days] if isinstance(days, int) else days
    if not isinstance(days, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 31 for d in days):
        raise member_days.fail("days_of_month", f"'days_of_month' must be days 1-31, not {days!r}")
    periods = _compile_periods(points.spec.get("multiplier_periods") or [], points, source)
    expiry = _Reader(points.spec.get("expiry") or {}, "loyalty.points.expiry", source,
                     _EXPIRY_KEYS, points.line("expiry"))
    years_after = expiry.spec.get("end_of_year_after", 1)
    if years_after is not None:
        years_after = expiry.integer("end_of_year_after", 1)
    settle = points.spec.get("settle_shortfall", True)
    if not isinstance(settle, bool):
        raise points.fail("settle_shortfall", "'settle_shortfall' must be true or false")

    return LoyaltyProgram(
        levels=levels,
        growth_per_yuan=growth.integer("per_yuan_paid", 1),
        event_growth=event_growth,
        evaluation_months=section.integer("evaluation_months", 12, minimum=1),
        downgrade_warning_days=section.integer("downgrade_warning_days", 30),
        fen_per_point=points.integer("yuan_per_point", 100, minimum=1) * 100,
        member_days=frozenset(days),
        member_day_multiplier=member_days.integer("multiplier", 1, minimum=1),
        periods=periods,
        expiry_years_after=years_after,
        expiry_warning_days=expiry.integer("warning_days", 30),
        refund_window_days=points.integer("refund_window_days", 365, minimum=1),
        settle_shortfall=settle,
        calendar=calendar,
    )


def _compile_levels(specs: Any, section: _Reader, source: str) -> tuple[Level, ...]:
    if not isinstance(specs, list) or not specs:
        raise section.fail("levels", "'levels' must be a list of {id, name_zh, threshold}, "
                                     "lowest first")
    levels: list[Level] = []
    for spec in specs:
        reader = _Reader(spec, "loyalty level", source, _LEVEL_KEYS, section.line("levels"))
        level_id = spec.get("id")
        if not isinstance(level_id, str) or not LEVEL_ID.match(level_id):
            raise reader.fail("id", f"level id {level_id!r} must be lower_snake_case, ≤ 35 chars")
        if any(level.id == level_id for level in levels):
            raise reader.fail("id", f"duplicate level id {level_id!r}")
        name_zh = spec.get("name_zh")
        if not isinstance(name_zh, str) or not name_zh.strip():
            raise reader.fail(None, f"level {level_id!r} needs a display name 'name_zh'")
        if len(name_zh) > WECOM_TAG_NAME_LIMIT:
            raise reader.fail("name_zh", f"level {level_id!r}: name_zh is {len(name_zh)} "
                                         f"characters; WeCom allows {WECOM_TAG_NAME_LIMIT}")
        threshold = reader.integer("threshold", None)
        if not levels and threshold != 0:
            raise reader.fail("threshold", f"the lowest level {level_id!r} must have "
                                           f"threshold 0, not {threshold}")
        if levels and threshold <= levels[-1].threshold:
            raise reader.fail("threshold", f"thresholds must increase: {level_id!r} has "
                                           f"{threshold}, not above {levels[-1].id!r} "
                                           f"({levels[-1].threshold})")
        levels.append(Level(level_id, name_zh.strip(), threshold))
    return tuple(levels)


def _compile_periods(specs: Any, points: _Reader,
                     source: str) -> tuple[MultiplierPeriod, ...]:
    if not isinstance(specs, list):
        raise points.fail("multiplier_periods", "'multiplier_periods' must be a list of "
                                                "{name, start, end, multiplier}")
    periods = []
    for spec in specs:
        reader = _Reader(spec, "loyalty.points.multiplier_periods", source, _PERIOD_KEYS,
                         points.line("multiplier_periods"))
        first, last = reader.day("start"), reader.day("end")
        if last < first:
            raise reader.fail("end", "'end' is before 'start'")
        periods.append(MultiplierPeriod(str(spec.get("name", "")), first, last,
                                        reader.integer("multiplier", None, minimum=1)))
    return tuple(periods)
