"""Rule files: parse YAML (keeping line numbers), validate, compile once into a `RulePack`.

A `RulePack` holds only frozen data and closures; evaluating an event never parses or
interprets rule text again. The language is documented in docs/rules.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from schemas.errors import RuleDefinitionError
from schemas.events import TOPIC_BY_EVENT_TYPE
from taggers.clock import LocalCalendar
from taggers.context import EvalContext
from taggers.counters import (
    CounterDef,
    Recorder,
    TrackerDef,
    compile_counter,
    compile_tracker,
    counter_kind,
    daily_window,
    event_types_of,
    distinct_window,
    memoized,
    parse_duration,
)
from taggers.expr import (
    ANY_EVENT,
    LEVEL_MOVED,
    BOOL,
    NUM,
    STR,
    Compiled,
    ExprError,
    Field,
    Scope,
    compile_expression,
)
from taggers.loyalty_compiler import compile_loyalty
from taggers.marked import TAG_MARKED, MarkedTag, compile_marked_tags
from taggers.tasks_compiler import CHANGE_EVIDENCE, TaskDef, compile_tasks
from taggers.scope import (
    EVENT_FIELDS,
    base_functions,
    pending_function,
    state_fields,
    tag_functions,
)
from taggers.yamlsrc import check_keys, line, load_yaml, suggest

__all__ = ["EvalContext", "RulePack", "TagRule", "compile_rules", "load_rules"]

TAG_ID = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
FAMILIES = ("collected", "service", "transaction", "interaction", "scan", "operational",
            "model", "lifecycle", "rfm", "tier")
WECOM_TAG_NAME_LIMIT = 30  # WeCom rejects corp tag names longer than this
TOP_LEVEL = {"version", "timezone", "definitions", "counters", "trackers", "tags", "loyalty",
             "marked_tags", "tasks"}
TAG_KEYS = {"id", "name_zh", "family", "when", "group", "value", "ttl", "description"}


@dataclass(frozen=True)
class TagRule:
    id: str
    name_zh: str
    family: str
    condition: Compiled
    line: int | None
    depends_on: tuple[str, ...]
    group: str | None = None  # tags of one group are exclusive: the first that holds wins
    value: str | None = None  # what the profile shows for the group when this tag is held
    ttl_s: int | None = None  # held at least this long after its condition last held
    # Reads the current event: true only at that instant, so a ttl runs from the event.
    instant: bool = False


@dataclass(frozen=True)
class RulePack:
    version: str
    calendar: LocalCalendar
    counters: tuple[CounterDef, ...]
    trackers: tuple[TrackerDef, ...]
    # Evaluation units in dependency order: a lone tag, or all tags of one exclusive group.
    units: tuple[tuple[TagRule, ...], ...]
    source: str
    loyalty: Any = None
    marked: dict[str, MarkedTag] = field(default_factory=dict)  # tags people set
    tasks: tuple[TaskDef, ...] = ()  # guide tasks (客户SOP), in file order
    # event type -> the recorders of the counters and trackers it feeds
    _by_type: dict[str, tuple[Recorder, ...]] = field(default_factory=dict, repr=False)
    _affected: dict[str, tuple[int, ...]] = field(default_factory=dict, repr=False)
    # the same, for an event that also moved the member's loyalty level
    _affected_level_moved: dict[str, tuple[int, ...]] = field(default_factory=dict,
                                                               repr=False)
    _by_id: dict[str, TagRule] = field(default_factory=dict, repr=False)
    _dependents: dict[int, frozenset[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._by_id.update((rule.id, rule) for unit in self.units for rule in unit)
        by_type: dict[str, list[Recorder]] = {}
        for recorded in self.counters + self.trackers:
            for event_type in recorded.event_types:
                by_type.setdefault(event_type, []).append(recorded.recorder)
        self._by_type.update({k: tuple(v) for k, v in by_type.items()})
        self._affected.update(self._units_affected_by_event_type())
        level_readers = self._affected.pop(LEVEL_MOVED)
        self._affected_level_moved.update(
            (event_type, self.with_dependents({*units, *level_readers}))
            for event_type, units in self._affected.items())

    def _units_affected_by_event_type(self) -> dict[str, tuple[int, ...]]:
        """For each event type, the units whose result it can change: those reading what it
        writes, and (transitively) those reading their tags through has_tag/had_tag."""
        unit_of = {rule.id: i for i, unit in enumerate(self.units) for rule in unit}
        direct: dict[int, set[int]] = {}
        for i, unit in enumerate(self.units):
            for rule in unit:
                for tag_id in rule.depends_on:
                    direct.setdefault(unit_of[tag_id], set()).add(i)
        for i in range(len(self.units)):
            closure, frontier = set(), [i]
            while frontier:
                for dependent in direct.get(frontier.pop(), ()):
                    if dependent not in closure:
                        closure.add(dependent)
                        frontier.append(dependent)
            self._dependents[i] = frozenset(closure)
        affected: dict[str, tuple[int, ...]] = {}
        for event_type in (*TOPIC_BY_EVENT_TYPE, LEVEL_MOVED):
            chosen = {i for i, unit in enumerate(self.units)
                      if any(event_type in r.condition.inputs or ANY_EVENT in r.condition.inputs
                             for r in unit)}
            affected[event_type] = self.with_dependents(chosen)
        return affected

    def with_dependents(self, units: Any) -> tuple[int, ...]:
        """These units and every unit reading their tags, in evaluation order."""
        chosen = set(units)
        for i in list(chosen):
            chosen |= self._dependents.get(i, frozenset())
        return tuple(sorted(chosen))

    @property
    def tier_unit(self) -> int | None:
        """The unit of the tier_<level> tags (evaluated when a loyalty deadline fires)."""
        return next((i for i, unit in enumerate(self.units) if unit[0].group == "tier"), None)

    def units_affected_by(self, event_type: str, level_moved: bool = False) -> tuple[int, ...]:
        """The units an event of this type can change; `level_moved`: the event also moved
        the member's loyalty level (the tier tags change only then, or at a review)."""
        if level_moved:
            return self._affected_level_moved.get(event_type, ())
        return self._affected.get(event_type, ())

    @property
    def tags(self) -> tuple[TagRule, ...]:
        return tuple(self._by_id.values())

    def recorders_for(self, event_type: str) -> tuple[Recorder, ...]:
        return self._by_type.get(event_type, ())

    def tag(self, tag_id: str) -> TagRule | None:
        return self._by_id.get(tag_id)

    def group_value(self, group: str, held: Any) -> str | None:
        """The value the profile shows for `group`, given the member's held tags."""
        for tag_id in held:
            rule = self._by_id.get(tag_id)
            if rule is not None and rule.group == group:
                return rule.value or rule.id
        return None


# --- loading ---------------------------------------------------------------------------------


def load_rules(path: str | Path) -> RulePack:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RuleDefinitionError(f"cannot read rule file: {exc}", path=str(path)) from None
    return compile_rules(text, source=str(path))


def compile_rules(text: str, source: str = "<rules>") -> RulePack:
    document = load_yaml(text, source)
    if not isinstance(document, dict):
        raise RuleDefinitionError("a rule file is a mapping with 'version', 'counters' and 'tags'",
                                  path=source, line=1)
    check_keys(document, TOP_LEVEL, "rule file", source)
    version = document.get("version")
    if not isinstance(version, str) or not version.strip():
        raise RuleDefinitionError("'version' must be a non-empty string, e.g. \"2024-03-01.1\"",
                                  path=source, line=line(document, "version") or 1)
    try:
        calendar = LocalCalendar.parse(str(document.get("timezone", "+08:00")))
    except ValueError as exc:
        raise RuleDefinitionError(str(exc), path=source, line=line(document, "timezone")) from None

    counter_specs = _mapping(document, "counters", source)
    tracker_specs = _mapping(document, "trackers", source)
    definition_specs = _mapping(document, "definitions", source)
    tag_specs = document.get("tags") or []
    if not isinstance(tag_specs, list):
        raise RuleDefinitionError("'tags' must be a list of tag rules", path=source,
                                  line=line(document, "tags"))

    trackers = tuple(compile_tracker(name, spec, source) for name, spec in tracker_specs.items())
    kinds = {name: counter_kind(spec) for name, spec in counter_specs.items()}
    retention: dict[str, int] = {}

    def windows(counter: str, days: int) -> Field:
        retention[counter] = max(retention.get(counter, 0), days)
        spec = counter_specs[counter]
        if not isinstance(spec, dict):
            raise ExprError(f"counter {counter!r} is not defined as a mapping")
        inputs = event_types_of(spec, f"counter {counter!r}", source)
        window = distinct_window if kinds[counter] == "distinct" else daily_window
        return window(counter, days, inputs)

    tag_ids = _tag_ids(tag_specs, source)
    marked = compile_marked_tags(document.get("marked_tags"), source, tag_ids)
    dependencies: list[str] = []
    functions = {**base_functions(), **tag_functions(tag_ids, dependencies, frozenset(marked)),
                 "pending": pending_function({t.name: (t.keep_s, t.event_types)
                                              for t in trackers})}
    scope = Scope(fields=state_fields(), windows=windows, window_names=list(kinds),
                  functions=functions, tag_reads=dependencies)
    _compile_definitions(definition_specs, document.get("definitions") or {}, scope, source)

    tags = [_compile_tag(spec, source, scope) for spec in tag_specs]
    counters = tuple(compile_counter(name, spec, source, retention.get(name, 0))
                     for name, spec in counter_specs.items())
    loyalty = None
    if document.get("loyalty") is not None:
        loyalty = compile_loyalty(document["loyalty"], source, calendar)
        tags.extend(_tier_tags(loyalty, [*tag_ids, *marked], source, line(document, "loyalty")))
    tasks = compile_tasks(document.get("tasks"), source,
                          {t.id: tuple(label for label, _, _ in t.condition.leaves) for t in tags},
                          tuple(CHANGE_EVIDENCE) if loyalty is not None else ())
    return RulePack(version.strip(), calendar, counters, trackers,
                    _evaluation_units(tags, source), source, loyalty, marked, tasks)


def _tier_tags(program: Any, tag_ids: list[str], source: str,
               at: int | None) -> list[TagRule]:
    """The member's tier shown as a tag (tier_gold...), one at a time, for guides and WeCom.
    The level moves only by an event or a review deadline: an event evaluates this group
    only when it moved the level (`LEVEL_MOVED`); a loyalty deadline always does."""

    def level(ctx: EvalContext) -> str:
        return program.level_tag(ctx.state.loyalty)

    def growth(ctx: EvalContext) -> int:
        loyalty = ctx.state.loyalty
        return program.growth_at(loyalty, ctx.now) if loyalty is not None else 0

    rules = []
    for tag_id, name_zh in program.level_tags:
        if tag_id in tag_ids:
            raise RuleDefinitionError(f"tag id {tag_id!r} is taken by the loyalty tiers",
                                      path=source, line=at)
        condition = Compiled(BOOL, (lambda t: lambda ctx: level(ctx) == t)(tag_id),
                             leaves=(("tier", level, STR), ("growth", growth, NUM)),
                             inputs=frozenset({LEVEL_MOVED}))
        rules.append(TagRule(tag_id, name_zh, "tier", condition, at, (), "tier",
                             tag_id.removeprefix("tier_")))
    return rules


def _mapping(document: dict[str, Any], key: str, source: str) -> dict[str, Any]:
    """The named entries of a section (the `__line__`/`__lines__` bookkeeping stays with
    the section: read it through `line(section, name)`)."""
    value = document.get(key) or {}
    if not isinstance(value, dict):
        raise RuleDefinitionError(f"'{key}' must be a mapping of name to definition",
                                  path=source, line=line(document, key))
    return {str(k): v for k, v in value.items() if not str(k).startswith("__")}


def _tag_ids(tag_specs: list[Any], source: str) -> list[str]:
    tag_ids: list[str] = []
    for spec in tag_specs:
        if isinstance(spec, dict) and isinstance(spec.get("id"), str):
            if spec["id"] in tag_ids:
                raise RuleDefinitionError(f"duplicate tag id {spec['id']!r}", path=source,
                                          line=line(spec, "id"))
            tag_ids.append(spec["id"])
    return tag_ids


def _compile_definitions(specs: dict[str, Any], section: dict[str, Any], scope: Scope,
                         source: str) -> None:
    """Named sub-conditions, usable by later definitions and by tags. Their evidence is the
    values they read, so a guide sees the numbers, not just the name."""
    for name, text in specs.items():
        at = line(section, name)
        if not re.match(r"^[a-z][a-z0-9_]{0,39}$", name):
            raise RuleDefinitionError(f"definition name {name!r} must be lower_snake_case",
                                      path=source, line=at)
        if name in scope.fields or name in scope.functions:
            raise RuleDefinitionError(f"definition {name!r} hides a built-in name",
                                      path=source, line=at)
        start = len(scope.tag_reads)
        try:
            compiled = compile_expression(str(text), scope)
        except ExprError as exc:
            raise RuleDefinitionError(f"definition {name!r}: {exc}", path=source, line=at,
                                      hint=exc.hint) from None
        reads_tags = tuple(dict.fromkeys(scope.tag_reads[start:]))
        del scope.tag_reads[start:]  # a tag reads them where it uses the definition
        get, next_change = compiled.eval, compiled.next_change
        if not reads_tags and TAG_MARKED not in compiled.inputs:
            # Reads no tag, so nothing an evaluation changes: one value (and next change)
            # per evaluation serves every rule using it (the eight RFM tags read r_high...).
            get = memoized(":" + name, 0, get, True)
            if next_change is not None:
                next_change = memoized(":" + name, 0, next_change, False)
        scope.fields[name] = Field(compiled.kind, get, compiled.nullable, next_change,
                                   compiled.monotone, compiled.reaches, leaves=compiled.leaves,
                                   inputs=compiled.inputs, reads_tags=reads_tags)


def _compile_tag(spec: Any, source: str, scope: Scope) -> TagRule:
    """The tags its condition reads are what `scope.tag_reads` gains while it compiles."""
    if not isinstance(spec, dict):
        raise RuleDefinitionError("each tag rule is a mapping with id, name_zh, family, when",
                                  path=source)
    check_keys(spec, TAG_KEYS, "tag rule", source)
    tag_id = spec.get("id")
    if not isinstance(tag_id, str) or not TAG_ID.match(tag_id):
        raise RuleDefinitionError(f"tag id {tag_id!r} must be lower_snake_case, ≤ 40 chars",
                                  path=source, line=line(spec, "id"))
    name_zh = spec.get("name_zh")
    if not isinstance(name_zh, str) or not name_zh.strip():
        raise RuleDefinitionError(f"tag {tag_id!r} needs a display name 'name_zh'", path=source,
                                  line=line(spec))
    if len(name_zh) > WECOM_TAG_NAME_LIMIT:
        raise RuleDefinitionError(
            f"tag {tag_id!r}: name_zh is {len(name_zh)} characters; WeCom allows "
            f"{WECOM_TAG_NAME_LIMIT}", path=source, line=line(spec, "name_zh"))
    family = spec.get("family")
    if family not in FAMILIES:
        raise RuleDefinitionError(f"tag {tag_id!r}: unknown family {family!r}", path=source,
                                  line=line(spec, "family"),
                                  hint=suggest(str(family), FAMILIES) or
                                  f"one of {', '.join(FAMILIES)}")
    when = spec.get("when")
    if isinstance(when, bool):
        when = "true" if when else "false"
    if not isinstance(when, str) or not when.strip():
        raise RuleDefinitionError(f"tag {tag_id!r} needs a condition 'when'", path=source,
                                  line=line(spec))
    start = len(scope.tag_reads)
    try:
        condition = compile_expression(when, scope)
    except ExprError as exc:
        raise RuleDefinitionError(f"tag {tag_id!r}: {exc}", path=source,
                                  line=line(spec, "when"), hint=exc.hint) from None
    if condition.kind != BOOL:
        raise RuleDefinitionError(f"tag {tag_id!r}: 'when' must be true/false, "
                                  f"not a {condition.kind}", path=source, line=line(spec, "when"))
    ttl_s = None
    if spec.get("ttl") is not None:
        ttl_s = parse_duration(spec["ttl"], f"tag {tag_id!r} 'ttl'", source, line(spec, "ttl"))
    reads_event = any(label in EVENT_FIELDS for label, _, _ in condition.leaves)
    if reads_event and ttl_s is None:
        raise RuleDefinitionError(
            f"tag {tag_id!r} reads the current event, so its condition is true only at that "
            f"event", path=source, line=line(spec, "when"),
            hint="give it a ttl (e.g. ttl: 7d) to keep it for a while after the event")
    group = spec.get("group")
    if group is not None and (not isinstance(group, str) or not TAG_ID.match(group)):
        raise RuleDefinitionError(f"tag {tag_id!r}: group must be lower_snake_case",
                                  path=source, line=line(spec, "group"))
    if group is not None and ttl_s is not None:
        raise RuleDefinitionError(f"tag {tag_id!r}: a tag in an exclusive group cannot have a "
                                  f"ttl", path=source, line=line(spec, "ttl"))
    value = spec.get("value")
    if value is not None and (group is None or not isinstance(value, str)):
        raise RuleDefinitionError(f"tag {tag_id!r}: 'value' is the text a group shows and "
                                  f"needs a 'group'", path=source, line=line(spec, "value"))
    return TagRule(tag_id, name_zh.strip(), family, condition, line(spec, "when"),
                   tuple(dict.fromkeys(scope.tag_reads[start:])), group, value, ttl_s,
                   reads_event)


def _evaluation_units(tags: list[TagRule], source: str) -> tuple[tuple[TagRule, ...], ...]:
    """Order tags so each comes after the tags it reads; a group is one unit."""
    units: dict[str, list[TagRule]] = {}
    unit_of: dict[str, str] = {}
    for rule in tags:
        key = f"group:{rule.group}" if rule.group else rule.id
        units.setdefault(key, []).append(rule)
        unit_of[rule.id] = key
    ordered: list[tuple[TagRule, ...]] = []
    state: dict[str, int] = {}  # 1 visiting, 2 done

    def visit(key: str, trail: list[str]) -> None:
        if state.get(key) == 2:
            return
        if state.get(key) == 1:
            cycle = " -> ".join(trail[trail.index(key):] + [key])
            raise RuleDefinitionError(f"tag rules read each other in a cycle: {cycle}",
                                      path=source, line=units[key][0].line,
                                      hint="a tag cannot depend on itself through has_tag")
        state[key] = 1
        for rule in units[key]:
            for dependency in rule.depends_on:
                if unit_of[dependency] != key:
                    visit(unit_of[dependency], trail + [key])
        state[key] = 2
        ordered.append(tuple(units[key]))

    for rule in tags:
        visit(unit_of[rule.id], [])
    return tuple(ordered)
