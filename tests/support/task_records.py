"""Guide task records (tasks.changes) built with the contract's own model, for sink, API and
page tests."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import msgspec

from schemas.tasks import TaskRecord, task_id_for

OPENED = "2024-03-01T12:00:00+08:00"
CLOSED_BY = {"lapsed": "rule", "expired": "expiry", "cancelled": "consent"}


def make_task(member_id: str, guide: str, *, change_id: str = "chg-1",
              kind: str = "invite_first_order", opened_at: str = OPENED,
              due_days: float = 3) -> dict[str, Any]:
    """A task's first record (open, version 1) as JSON-ready builtins."""
    opened = datetime.fromisoformat(opened_at)
    return msgspec.to_builtins(TaskRecord(
        task_id=task_id_for(member_id, kind, guide, change_id), member_id=member_id,
        guide=guide, kind=kind, name_zh="邀请首单",
        script_zh="入会一个月还没下单，发一张新人券邀请首单", priority="normal",
        opened_at=opened_at, due_at=(opened + timedelta(days=due_days)).isoformat(),
        status="open", trigger={"change_id": change_id, "tag": "new_member_no_order_31d"},
        evidence={"days_since(joined_at)": 31, "orders.count": 0},
        rules_version="2024-03-01.1", version=1))


def closed(task: dict[str, Any], status: str, *, after_days: float = 1,
           closed_by: str | None = None, converted_at: str | None = None,
           note: str | None = None) -> dict[str, Any]:
    """The task's next record, closed as `status` `after_days` after it opened."""
    at = datetime.fromisoformat(task["opened_at"]) + timedelta(days=after_days)
    return {**task, "status": status, "closed_at": at.isoformat(),
            "closed_by": closed_by or CLOSED_BY.get(status, task["guide"]), "note": note,
            "converted_at": converted_at, "version": task["version"] + 1}
