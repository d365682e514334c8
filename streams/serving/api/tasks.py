"""Guide tasks (客户SOP) through the API: the to-do list, marking a task done, the insights.

A guide sees and marks only their own tasks; an operator sees every guide's. Marking a task
done writes an `interaction.task_done` event on the member's partition of events.interactions;
the worker closes the task in the member's event order (so replay and the dry run reproduce
it) and the record on tasks.changes reaches Redis and the feed. The answer is 202.

The insights are ZCOUNTs over the guides' task indexes (streams/serving/task_store.py) turned
into rates here, by a pure function of the counts.
"""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo
from typing import Any, Protocol, Sequence

import msgspec
import orjson

from schemas.errors import EventRejected
from schemas.task_api import GuideTaskInsights, TaskDoneAccepted, TaskDoneRequest, TaskWindow
from streams.platform.event_writer import build_event
from streams.serving.api.auth import Principal
from streams.serving.api.marking import Events
from streams.serving.task_store import OPEN, WindowCounts

MAX_BODY = 4096
WINDOW_DAYS = (7, 30)


class TaskRefused(Exception):
    """Why a request about a task is not taken: an HTTP status, a stable code, a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Tasks(Protocol):
    async def get(self, task_id: str) -> dict[str, Any] | None: ...


def parse_done_request(body: bytes) -> TaskDoneRequest:
    """The body is optional: empty means no note."""
    if len(body) > MAX_BODY:
        raise TaskRefused(413, "too_large", f"a done request is at most {MAX_BODY} bytes")
    if not body.strip():
        return TaskDoneRequest()
    try:
        return msgspec.json.decode(body, type=TaskDoneRequest)
    except msgspec.DecodeError as exc:
        raise TaskRefused(400, "bad_request", f"invalid done request: {exc}") from None


async def mark_task_done(principal: Principal, guide: str, task_id: str,
                         request: TaskDoneRequest, *, tasks: Tasks,
                         events: Events) -> TaskDoneAccepted:
    if not principal.may_see_guide(guide):
        raise TaskRefused(403, "forbidden", "a guide marks only their own tasks")
    task = await tasks.get(task_id)
    if task is None:
        raise TaskRefused(404, "not_found", "no such task")
    if task["guide"] != guide:
        raise TaskRefused(403, "forbidden", "this task belongs to another guide")
    if task["status"] != OPEN:
        raise TaskRefused(409, "not_open", f"the task is {task['status']}, not open")
    try:
        event = build_event("interaction.task_done", task["member_id"], channel="guide_api",
                            task_id=task_id, guide_id=guide, note=request.note)
    except EventRejected as exc:
        raise TaskRefused(400, "bad_request", str(exc)) from None
    await events.write([event])
    return TaskDoneAccepted(event_id=orjson.loads(event)["event_id"], task_id=task_id)


def windows_ending(at: datetime) -> list[tuple[float, float]]:
    """The (start, end] windows of WINDOW_DAYS before `at`, in epoch seconds."""
    end = at.timestamp()
    return [((at - timedelta(days=days)).timestamp(), end) for days in WINDOW_DAYS]


def _rate(part: int, whole: int) -> float | None:
    return None if whole == 0 else round(part / whole, 4)


def guide_insights(guide: str, at: datetime, counts: Sequence[WindowCounts],
                   tz: tzinfo) -> GuideTaskInsights:
    """The rates of one guide's windows (WINDOW_DAYS order) from their counts; no window with
    nothing to rate divides by zero: its rate is None."""
    local = at.astimezone(tz)
    windows = []
    for days, c in zip(WINDOW_DAYS, counts):
        due = c.done + c.lapsed + c.expired + c.open_past_due
        windows.append(TaskWindow(
            days=days, start=(local - timedelta(days=days)).isoformat(), end=local.isoformat(),
            opened=c.opened, done=c.done, lapsed=c.lapsed, expired=c.expired,
            cancelled=c.cancelled, open_past_due=c.open_past_due, converted=c.converted,
            completion_rate=_rate(c.done, due), conversion_rate=_rate(c.converted, c.done)))
    return GuideTaskInsights(guide=guide, windows=windows)
