"""Guide tasks (客户SOP): pure functions driven by the engine's own outputs.

The engine calls `TaskBook.follow` after each step that can produce tag or tier changes,
`check` before an event changes anything, `after_event` once the event is applied and `erase`
for an erasure. Tasks live in `MemberState.tasks` (taggers/state.py), so the stream and the
dry run, which run the same engine over the same events, open and close the same tasks.

Invariants:
- a trigger opens one task per guide the change names (its `guides`), never while the member
  refuses marketing; the id is `task_id_for(member, kind, guide, trigger change_id)`, and an
  id already held is never opened again (a replayed trigger opens nothing twice);
- a task closes once: done, lapsed, expired or cancelled; a done task converts at most once;
- everything happens in event time: triggers and expiries are taken in time order, an expiry
  at or before a trigger's instant first, so how the engine's calls split the timeline (an
  `advance` before an event, or the event alone) cannot change the result;
- a closed task stays in the state until `closed_at + convert_within` (while it can convert,
  and so that a late done for it is a no-op, not an unknown id), then it is dropped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Callable

from schemas.changes import TagChange, TierChange
from schemas.errors import EventRejected
from schemas.events import ConsentChanged, Event, OrderPaid, TaskDone
from schemas.tasks import (CLOSED_BY_CONSENT, CLOSED_BY_ERASURE, CLOSED_BY_EXPIRY,
                           CLOSED_BY_RULE, TaskRecord, task_id_for)
from taggers.clock import LocalCalendar, to_epoch
from taggers.outcome import Outcome
from taggers.state import HeldTask, MemberState
from taggers.tasks_compiler import TaskDef

_TIER_EVIDENCE = ("from_", "to", "growth", "points", "balance", "expires_at", "needed_growth",
                  "review_at")


class TaskBook:
    """The task definitions of one rule pack, indexed by trigger."""

    def __init__(self, tasks: tuple[TaskDef, ...], calendar: LocalCalendar,
                 rules_version: str) -> None:
        self.calendar = calendar
        self.rules_version = rules_version
        self.on_tag: dict[str, list[TaskDef]] = {}
        self.on_change: dict[str, list[TaskDef]] = {}
        for task in tasks:
            if task.on_tag is not None:
                self.on_tag.setdefault(task.on_tag, []).append(task)
            elif task.on_change is not None:
                self.on_change.setdefault(task.on_change, []).append(task)

    # --- engine hooks ------------------------------------------------------------------------

    def follow(self, state: MemberState, outcome: Outcome, until: int) -> None:
        """Take the changes the outcome gained since the last call, and the expiries, up to
        `until`, in time order."""
        changes, tier_changes = outcome.changes, outcome.tier_changes
        seen_tags, seen_tiers = outcome.task_cursor
        if len(changes) == seen_tags and len(tier_changes) == seen_tiers:
            if state.tasks:
                self._expire(state, until, outcome.tasks)
                self._settle(state, until)
            return
        outcome.task_cursor = (len(changes), len(tier_changes))
        triggers: list[tuple[int, int, int, Any]] = []
        for i in range(seen_tags, len(changes)):
            change = changes[i]
            if (change.op == "added" and change.tag in self.on_tag) or \
                    (change.op == "removed" and (change.tag in self.on_tag or state.tasks)):
                triggers.append((_instant(change.at), 0, i, change))
        for i in range(seen_tiers, len(tier_changes)):
            tier_change = tier_changes[i]
            if tier_change.type in self.on_change:
                triggers.append((_instant(tier_change.at), 1, i, tier_change))
        triggers.sort(key=lambda row: row[:3])
        for at, _, _, change in triggers:
            self._expire(state, at, outcome.tasks)
            if isinstance(change, TierChange):
                self._open(state, self.on_change[change.type], change, at,
                           {"change_id": change.change_id, "type": change.type},
                           _tier_evidence(change), outcome.tasks)
            elif change.op == "added":
                self._open(state, self.on_tag[change.tag], change, at,
                           {"change_id": change.change_id, "tag": change.tag},
                           change.evidence, outcome.tasks)
            else:
                self._lapse(state, change.tag, at, outcome.tasks)
        self._expire(state, until, outcome.tasks)
        self._settle(state, until)

    def check(self, state: MemberState, event: Event,
              state_at: Callable[[MemberState, int], MemberState]) -> None:
        """Reject, before anything changes, a done for a task this member never had (or not
        for a long time) or for another guide's task. `state_at(state, t)` is a copy of the
        state with its deadlines up to `t` fired: a task a timer opens just before the done
        is known then, whichever way the caller's calls split the timeline."""
        if type(event) is not TaskDone:
            return
        occurred = to_epoch(event.occurred_at)
        task = _known(state, event.task_id, occurred)
        if task is None and state.next_deadline is not None and state.next_deadline <= occurred:
            task = _known(state_at(state, occurred), event.task_id, occurred)
        if task is None:
            raise EventRejected(
                f"task {event.task_id} is not a task of member {event.member_id} (never "
                f"opened, or closed long before {self.calendar.render(occurred)})")
        if task.guide != event.guide_id:
            raise EventRejected(f"task {event.task_id} belongs to guide {task.guide!r}, not "
                                f"{event.guide_id!r}")

    def after_event(self, state: MemberState, event: Event, now: int,
                    outcome: Outcome) -> None:
        """What the event itself does to tasks, then the tasks its changes open or lapse."""
        if type(event) is TaskDone:  # exact classes: see taggers/engine.py
            self._done(state, event, now, outcome.tasks)
        elif type(event) is ConsentChanged and not event.marketing:
            self._cancel(state, now, CLOSED_BY_CONSENT, outcome.tasks)
        elif type(event) is OrderPaid:
            self._convert(state, now, outcome.tasks)
        self.follow(state, outcome, now)

    def erase(self, state: MemberState | None, now: int, records: list[TaskRecord]) -> None:
        """The member is erased at `now`: what expired before stays expired, the rest is
        cancelled."""
        if state is None or not state.tasks:
            return
        self._expire(state, now, records)
        self._cancel(state, now, CLOSED_BY_ERASURE, records)

    # --- steps -------------------------------------------------------------------------------

    def _open(self, state: MemberState, tasks: list[TaskDef], change: TagChange | TierChange,
              at: int, trigger: dict[str, str], evidence: dict[str, Any],
              records: list[TaskRecord]) -> None:
        if not state.marketing or not change.guides:
            return
        held = {task.task_id for task in state.tasks}
        for task in tasks:
            script = task.script.fill(evidence)
            due_at = task.due_at(at, self.calendar)
            for guide in change.guides:
                task_id = task_id_for(state.member_id, task.kind, guide.userid,
                                      change.change_id)
                if task_id in held:
                    continue
                opened = HeldTask(task_id, task.kind, guide.userid, task.name_zh, script,
                                  task.priority, trigger, dict(evidence), self.rules_version,
                                  at, due_at, due_at + task.expire_after_s,
                                  task.convert_within_s, task.lapse)
                state.tasks.append(opened)
                held.add(task_id)
                records.append(self._record(state, opened))

    def _lapse(self, state: MemberState, tag: str, at: int, records: list[TaskRecord]) -> None:
        for task in state.tasks:
            if task.status == "open" and task.lapse and task.trigger.get("tag") == tag:
                self._close(state, task, "lapsed", at, CLOSED_BY_RULE, records)

    def _expire(self, state: MemberState, until: int, records: list[TaskRecord]) -> None:
        due = [t for t in state.tasks if t.status == "open" and t.expires_at <= until]
        for task in sorted(due, key=lambda t: (t.expires_at, t.task_id)):
            self._close(state, task, "expired", task.expires_at, CLOSED_BY_EXPIRY, records)

    def _cancel(self, state: MemberState, at: int, by: str, records: list[TaskRecord]) -> None:
        for task in state.tasks:
            if task.status == "open":
                self._close(state, task, "cancelled", at, by, records)

    def _done(self, state: MemberState, event: TaskDone, at: int,
              records: list[TaskRecord]) -> None:
        """Close the guide's task; one no longer open stays as it is (no error)."""
        for task in state.tasks:
            if task.task_id == event.task_id and task.status == "open":
                task.note = event.note
                self._close(state, task, "done", at, event.guide_id, records)

    def _convert(self, state: MemberState, at: int, records: list[TaskRecord]) -> None:
        for task in state.tasks:
            if task.status == "done" and task.converted_at is None and task.closed_at is not None \
                    and task.closed_at <= at < task.closed_at + task.convert_within_s:
                task.converted_at = at
                task.version += 1
                records.append(self._record(state, task))

    def _close(self, state: MemberState, task: HeldTask, status: str, at: int, by: str,
               records: list[TaskRecord]) -> None:
        task.status, task.closed_at, task.closed_by = status, at, by
        task.version += 1
        records.append(self._record(state, task))

    @staticmethod
    def _settle(state: MemberState, now: int) -> None:
        """Drop the closed tasks that can no longer convert; the next expiry becomes (or
        stays) a deadline of the member."""
        tasks = state.tasks
        if any(t.closed_at is not None and t.closed_at + t.convert_within_s <= now
               for t in tasks):
            tasks[:] = [t for t in tasks
                        if t.closed_at is None or t.closed_at + t.convert_within_s > now]
        expiry = next_task_expiry(state, now)
        if expiry is not None and (state.next_deadline is None or expiry < state.next_deadline):
            state.next_deadline = expiry

    def _record(self, state: MemberState, task: HeldTask) -> TaskRecord:
        render = self.calendar.render
        return TaskRecord(
            task_id=task.task_id, member_id=state.member_id, guide=task.guide, kind=task.kind,
            name_zh=task.name_zh, script_zh=task.script_zh,
            priority=task.priority,  # type: ignore[arg-type]
            opened_at=render(task.opened_at), due_at=render(task.due_at),
            status=task.status,  # type: ignore[arg-type]
            closed_at=render(task.closed_at) if task.closed_at is not None else None,
            closed_by=task.closed_by, note=task.note,
            converted_at=render(task.converted_at) if task.converted_at is not None else None,
            trigger=task.trigger, evidence=task.evidence, rules_version=task.rules_version,
            version=task.version)


def next_task_expiry(state: MemberState, after: int) -> int | None:
    """The earliest expiry of an open task later than `after` (the engine's deadlines up to
    `after` have fired; `TaskBook.follow` takes those expiries in time order)."""
    return min((t.expires_at for t in state.tasks
                if t.status == "open" and t.expires_at > after), default=None)


def _known(state: MemberState, task_id: str, at: int) -> HeldTask | None:
    for task in state.tasks:
        if task.task_id == task_id and (task.closed_at is None
                                        or task.closed_at + task.convert_within_s > at):
            return task
    return None


def _instant(text: str) -> int:
    return to_epoch(datetime.fromisoformat(text))


def _tier_evidence(change: TierChange) -> dict[str, Any]:
    evidence = {}
    for name in _TIER_EVIDENCE:
        value = getattr(change, name)
        if value is not None:
            evidence[name.rstrip("_")] = value
    return evidence
