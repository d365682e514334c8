"""`tagstream dryrun`: the production engine over a file of events, with no Kafka.

Events are applied in (occurred_at, topic rank, file position) order — the order the stream's
event-time clock releases them in — and every member's deadlines fire up to `as_of`
(default: the last event's time, where `tagstream replay` leaves every partition's clock).
So what a rule author sees here is exactly what the stream will do.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass, field
from typing import Any, Iterable

from schemas.changes import TagChange, TierChange, encode_change
from schemas.decode import decode_event
from schemas.errors import EventRejected
from schemas.events import TIE_RANK_BY_TOPIC, TOPIC_BY_EVENT_TYPE, Event
from schemas.erasure import Erasure
from schemas.profile import encode_profile
from schemas.tasks import TaskRecord, encode_task
from schemas.wecom import WecomMarks
from taggers.clock import to_epoch
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.state import MemberState


@dataclass
class DryRunResult:
    states: dict[str, MemberState] = field(default_factory=dict)
    changes: list[TagChange] = field(default_factory=list)
    tier_changes: list[TierChange] = field(default_factory=list)
    marks: list[WecomMarks] = field(default_factory=list)  # what wecom.marks would carry
    erasures: list[Erasure] = field(default_factory=list)  # what members.erasures would carry
    tasks: list[TaskRecord] = field(default_factory=list)  # what tasks.changes would carry
    rejected: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    duplicates: int = 0
    as_of: int | None = None


def decode_lines(lines: Iterable[bytes], result: DryRunResult) -> list[tuple[int, int, int, Event]]:
    """Decode every line (rejects are recorded with their line number) into rows in the order
    they apply: by time, then topic rank, then line."""
    rows = []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line:
            continue
        try:
            event = decode_event(line)
        except EventRejected as rejected:
            result.rejected.append((number, rejected.reason))
            continue
        rank = TIE_RANK_BY_TOPIC[TOPIC_BY_EVENT_TYPE[event.event_type]]
        rows.append((to_epoch(event.occurred_at), rank, number, event))
    rows.sort()  # line numbers are unique, so comparing two rows never reaches their events
    return rows


def dry_run(engine: Engine, lines: Iterable[bytes], as_of: int | None = None) -> DryRunResult:
    result = DryRunResult()
    rows = decode_lines(lines, result)
    return run_decoded(engine, rows, result, as_of)


def run_decoded(engine: Engine, rows: list[tuple[int, int, int, Event]], result: DryRunResult,
                as_of: int | None = None) -> DryRunResult:
    """The dry run over rows `decode_lines` made (sorted): one decoding can feed
    several rule packs (`tagstream impact`). Events are frozen, so runs cannot disturb
    each other through them.

    The cyclic collector is paused meanwhile: the engine makes no reference cycles
    (tests/taggers/test_dryrun.py checks that a run leaves none), so reference counting frees
    everything it drops, and the collector would only walk the states and changes the run
    keeps, again and again as they grow (a quarter of a dry run's time at 20,000 members)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _run_decoded(engine, rows, result, as_of)
    finally:
        if collecting:
            gc.enable()


def _run_decoded(engine: Engine, rows: list[tuple[int, int, int, Event]], result: DryRunResult,
                 as_of: int | None) -> DryRunResult:
    states = result.states
    for occurred, _, number, event in rows:
        try:
            outcome = engine.apply(states.get(event.member_id), event, occurred)
        except EventRejected as rejected:
            result.rejected.append((number, rejected.reason))
            continue
        if outcome.erasure is not None:
            states.pop(event.member_id, None)
            result.erasures.append(outcome.erasure)
        else:
            states[event.member_id] = outcome.state
        result.changes.extend(outcome.changes)
        result.tier_changes.extend(outcome.tier_changes)
        result.marks.extend(outcome.marks)
        result.tasks.extend(outcome.tasks)
        result.duplicates += outcome.duplicate
    if as_of is None and rows:
        as_of = rows[-1][0]
    result.as_of = as_of
    if as_of is not None:
        for state in states.values():
            outcome = engine.advance(state, as_of)
            result.changes.extend(outcome.changes)
            result.tier_changes.extend(outcome.tier_changes)
            result.marks.extend(outcome.marks)
            result.tasks.extend(outcome.tasks)
    return result


def final_tasks(records: Iterable[TaskRecord]) -> list[TaskRecord]:
    """Each task's newest record (its highest version), by member, opening time and id."""
    newest: dict[str, TaskRecord] = {}
    for record in records:
        held = newest.get(record.task_id)
        if held is None or record.version > held.version:
            newest[record.task_id] = record
    return sorted(newest.values(), key=lambda t: (t.member_id, t.opened_at, t.task_id))


def write_dry_run(result: DryRunResult, pack: Any, profiles_out: Any | None,
                  changes_out: Any | None, tasks_out: Any | None = None) -> None:
    """One profile per member (by member id), every change, and each task's final state,
    as JSON lines."""
    if profiles_out is not None:
        for member_id in sorted(result.states):
            profiles_out.write(encode_profile(render_profile(result.states[member_id], pack)))
            profiles_out.write(b"\n")
    if changes_out is not None:
        for change in [*result.changes, *result.tier_changes]:
            changes_out.write(encode_change(change))
            changes_out.write(b"\n")
    if tasks_out is not None:
        for task in final_tasks(result.tasks):
            tasks_out.write(encode_task(task))
            tasks_out.write(b"\n")
