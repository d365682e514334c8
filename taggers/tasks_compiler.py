"""The rule file's `tasks:` section (客户SOP), compiled once into frozen `TaskDef`s.

Each task says what opens it (`on: {tag: ...}` when the tag is added, or `on: {change: ...}`
for a tier / points change), what the guide sees (`name_zh`, `script_zh` with `{placeholders}`
filled from the trigger's evidence), its `priority`, when it is due (`due: 3d`, or
`due: {day_of_month: 7}`), how long after that it expires, how long a done task can convert,
and whether it lapses when its tag comes off. Every placeholder is checked against what the
trigger can give at load time; scripts are filled by string pieces, never `format`/`eval`.
"""

from __future__ import annotations

import re
from calendar import monthrange
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Mapping

from schemas.errors import RuleDefinitionError
from schemas.tasks import TASK_PRIORITIES
from taggers.clock import DAY, LocalCalendar
from taggers.counters import parse_duration
from taggers.yamlsrc import check_keys, line, suggest

TASK_KEYS = {"id", "on", "name_zh", "script_zh", "priority", "due", "expire_after_due",
             "convert_within", "lapse", "description"}
TASK_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
NAME_ZH_LIMIT = 30
SCRIPT_LIMIT = 500
DEFAULT_EXPIRE_AFTER_DUE_S = 7 * DAY
DEFAULT_CONVERT_WITHIN_S = 14 * DAY
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")

# What each tier / points change gives a script (schemas/changes.py TierChange fields).
CHANGE_EVIDENCE: dict[str, tuple[str, ...]] = {
    "tier.upgraded": ("from", "to", "growth"),
    "tier.downgraded": ("from", "to", "growth"),
    "tier.downgrade_warning": ("from", "to", "growth", "needed_growth", "review_at"),
    "points.expired": ("growth", "points", "balance", "expires_at"),
    "points.expiry_warning": ("growth", "points", "balance", "expires_at"),
}


@dataclass(frozen=True)
class Script:
    """`script_zh` cut into literal text and placeholder names, alternating (text first)."""

    pieces: tuple[str, ...]

    def fill(self, evidence: Mapping[str, Any]) -> str:
        out = []
        for i, piece in enumerate(self.pieces):
            if i % 2 == 0:
                out.append(piece)
            else:
                value = evidence.get(piece)
                out.append("-" if value is None else str(value))
        return "".join(out)


@dataclass(frozen=True)
class TaskDef:
    kind: str
    name_zh: str
    script: Script
    priority: str
    on_tag: str | None  # opens when this tag is added ...
    on_change: str | None  # ... or on this tier / points change type
    due_s: int | None  # due this long after opening ...
    due_day_of_month: int | None  # ... or by the end of this day of the opening month
    expire_after_s: int
    convert_within_s: int
    lapse: bool
    line: int | None

    def due_at(self, opened_at: int, calendar: LocalCalendar) -> int:
        """When the task is due. A day of the month already past when it opens: the end of
        the opening day (the guide still gets the day)."""
        if self.due_s is not None or self.due_day_of_month is None:
            return opened_at + (self.due_s or 0)
        local = datetime.fromtimestamp(opened_at, calendar.tz)
        today = calendar.day_of(opened_at)
        last_day = monthrange(local.year, local.month)[1]
        due_day = today - local.day + min(self.due_day_of_month, last_day)
        return calendar.day_start(max(due_day, today) + 1) - 1


def compile_tasks(specs: Any, source: str, evidence_of: Mapping[str, tuple[str, ...]],
                  change_types: tuple[str, ...]) -> tuple[TaskDef, ...]:
    """`evidence_of` maps every rule tag a task may open on to the evidence its changes carry;
    `change_types` are the tier / points changes the pack emits (none without `loyalty`)."""
    if specs is None:
        return ()
    if not isinstance(specs, list):
        raise RuleDefinitionError("'tasks' must be a list of tasks (id, on, name_zh, "
                                  "script_zh, due)", path=source)
    tasks: list[TaskDef] = []
    for spec in specs:
        task = _compile_task(spec, source, evidence_of, change_types)
        if any(t.kind == task.kind for t in tasks):
            raise RuleDefinitionError(f"duplicate task id {task.kind!r}", path=source,
                                      line=line(spec, "id"))
        tasks.append(task)
    return tuple(tasks)


def _compile_task(spec: Any, source: str, evidence_of: Mapping[str, tuple[str, ...]],
                  change_types: tuple[str, ...]) -> TaskDef:
    if not isinstance(spec, dict):
        raise RuleDefinitionError("each task is a mapping with id, on, name_zh, script_zh, due",
                                  path=source)
    check_keys(spec, TASK_KEYS, "task", source)
    kind = spec.get("id")
    at = line(spec, "id") or line(spec)
    if not isinstance(kind, str) or not TASK_ID.match(kind):
        raise RuleDefinitionError(f"task id {kind!r} must be lower_snake_case, ≤ 40 chars",
                                  path=source, line=at)
    what = f"task {kind!r}"
    on_tag, on_change, evidence = _trigger(spec, what, source, evidence_of, change_types)
    name_zh = _text(spec, "name_zh", what, source, NAME_ZH_LIMIT)
    script = _script(_text(spec, "script_zh", what, source, SCRIPT_LIMIT), evidence, what,
                     source, line(spec, "script_zh"))
    priority = spec.get("priority", "normal")
    if priority not in TASK_PRIORITIES:
        raise RuleDefinitionError(f"{what}: priority is one of {', '.join(TASK_PRIORITIES)}, "
                                  f"not {priority!r}", path=source, line=line(spec, "priority"),
                                  hint=suggest(str(priority), TASK_PRIORITIES))
    due_s, day_of_month = _due(spec, what, source)
    expire_after_s = _duration(spec, "expire_after_due", what, source, DEFAULT_EXPIRE_AFTER_DUE_S)
    convert_within_s = _duration(spec, "convert_within", what, source, DEFAULT_CONVERT_WITHIN_S)
    lapse = spec.get("lapse", on_tag is not None)
    if not isinstance(lapse, bool):
        raise RuleDefinitionError(f"{what}: lapse is true or false", path=source,
                                  line=line(spec, "lapse"))
    if lapse and on_tag is None:
        raise RuleDefinitionError(f"{what}: only a task opened by a tag can lapse (when the tag "
                                  f"is removed); a change does not end", path=source,
                                  line=line(spec, "lapse"))
    return TaskDef(kind, name_zh, script, priority, on_tag, on_change, due_s, day_of_month,
                   expire_after_s, convert_within_s, lapse, at)


def _trigger(spec: dict[str, Any], what: str, source: str,
             evidence_of: Mapping[str, tuple[str, ...]],
             change_types: tuple[str, ...]) -> tuple[str | None, str | None, tuple[str, ...]]:
    on = spec.get("on")
    at = line(spec, "on") or line(spec)
    if not isinstance(on, dict):
        raise RuleDefinitionError(f"{what} needs 'on': {{tag: <tag id>}} or {{change: <tier or "
                                  f"points change>}}", path=source, line=at)
    check_keys(on, {"tag", "change"}, f"{what} 'on'", source)
    tag, change = on.get("tag"), on.get("change")
    if (tag is None) == (change is None) or not isinstance(tag or change, str):
        raise RuleDefinitionError(f"{what}: 'on' names one tag or one change, by its id",
                                  path=source, line=at)
    if tag is not None:
        if tag not in evidence_of:
            raise RuleDefinitionError(f"{what}: unknown tag {tag!r} (a task opens on a tag of "
                                      f"this rule file's 'tags' or a tier tag)", path=source,
                                      line=line(on, "tag") or at,
                                      hint=suggest(str(tag), sorted(evidence_of)))
        return tag, None, evidence_of[tag]
    if change not in CHANGE_EVIDENCE:
        raise RuleDefinitionError(f"{what}: unknown change {change!r}", path=source,
                                  line=line(on, "change") or at,
                                  hint=suggest(str(change), sorted(CHANGE_EVIDENCE)) or
                                  f"one of {', '.join(CHANGE_EVIDENCE)}")
    if change not in change_types:
        raise RuleDefinitionError(f"{what}: {change!r} changes come from the 'loyalty' section, "
                                  f"which this rule file does not have", path=source,
                                  line=line(on, "change") or at)
    return None, change, CHANGE_EVIDENCE[change]


def _text(spec: dict[str, Any], key: str, what: str, source: str, limit: int) -> str:
    value = spec.get(key)
    if not isinstance(value, str) or not value.strip() or len(value.strip()) > limit:
        raise RuleDefinitionError(f"{what} needs a {key} of 1 to {limit} characters",
                                  path=source, line=line(spec, key) or line(spec))
    return value.strip()


def _script(text: str, evidence: tuple[str, ...], what: str, source: str,
            at: int | None) -> Script:
    pieces = _PLACEHOLDER.split(text)
    for name in pieces[1::2]:
        if name not in evidence:
            given = ", ".join("{" + e + "}" for e in evidence) or "no numbers"
            raise RuleDefinitionError(
                f"{what}: script_zh uses {{{name}}}, which its trigger does not give "
                f"(it gives {given})", path=source, line=at,
                hint=suggest(name, evidence))
    if any("{" in piece or "}" in piece for piece in pieces[0::2]):
        raise RuleDefinitionError(f"{what}: script_zh has an unmatched brace", path=source,
                                  line=at)
    return Script(tuple(pieces))


def _due(spec: dict[str, Any], what: str, source: str) -> tuple[int | None, int | None]:
    due = spec.get("due")
    at = line(spec, "due") or line(spec)
    if isinstance(due, dict):
        check_keys(due, {"day_of_month"}, f"{what} 'due'", source)
        day = due.get("day_of_month")
        if isinstance(day, bool) or not isinstance(day, int) or not 1 <= day <= 31:
            raise RuleDefinitionError(f"{what}: due day_of_month is a day 1 to 31, not {day!r}",
                                      path=source, line=line(due, "day_of_month") or at)
        return None, day
    if due is None:
        raise RuleDefinitionError(f"{what} needs 'due': a duration like 3d, or "
                                  f"{{day_of_month: 7}}", path=source, line=line(spec))
    return parse_duration(due, f"{what} 'due'", source, at), None


def _duration(spec: dict[str, Any], key: str, what: str, source: str, default: int) -> int:
    if spec.get(key) is None:
        return default
    return parse_duration(spec[key], f"{what} '{key}'", source, line(spec, key))
