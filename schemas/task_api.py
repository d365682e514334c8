"""The guide API's bodies for guide tasks (客户SOP): the to-do list, marking a task done and the
task insights. The OpenAPI document's schemas are generated from these models."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.changes import Timestamp
from schemas.events import TaskNote
from schemas.tasks import TaskRecord

TaskList = Literal["open", "done", "lapsed", "expired", "cancelled", "closed"]


class TasksPage(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One page of a guide's tasks: open ones earliest due first, closed ones newest first;
    `next_cursor` is None on the last page."""

    guide: str
    status: TaskList
    tasks: list[TaskRecord]
    next_cursor: str | None


class TaskDoneRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /guides/{guide}/tasks/{task_id}/done: the guide's note is optional."""

    note: TaskNote | None = None


class TaskDoneAccepted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The interaction.task_done event is on events.interactions; the worker closes the task
    and tasks.changes, Redis and the feed follow within moments."""

    event_id: str
    task_id: str


class TaskWindow(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A guide's tasks over the `days` before `end` (the window is (start, end])."""

    days: int
    start: Timestamp
    end: Timestamp
    opened: int  # opened_at in the window
    done: int  # closed as done, closed_at in the window
    lapsed: int
    expired: int
    cancelled: int
    open_past_due: int  # still open, due_at in the window
    converted: int  # of `done`: converted by an order (converted_at set so far)
    completion_rate: float | None  # done / (done + lapsed + expired + open_past_due)
    conversion_rate: float | None  # converted / done


class GuideTaskInsights(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    guide: str
    windows: list[TaskWindow]  # 7 days, then 30 days


class TaskInsights(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    at: Timestamp  # the end of every window
    guides: list[GuideTaskInsights]
