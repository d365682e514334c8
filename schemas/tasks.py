"""`tasks.changes`: guide tasks (客户SOP), each record the task's whole newest state.

Keyed by member_id, like tags.changes. A task opens for each of the member's guides when its
trigger (a tag added, or a tier / points warning) fires, and closes as `lapsed` (its reason
stopped holding), `done` (the guide marked it), `expired` (due time + 7 days) or `cancelled`
(consent withdrawn, or the member erased). Every later record of a task has a higher
`version`; consumers keep the highest, so redelivery and replay change nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from schemas.changes import Timestamp

TaskStatus = Literal["open", "done", "lapsed", "expired", "cancelled"]
TaskPriority = Literal["high", "normal", "low"]


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    task_id: str  # task_id_for(...): replay and a crash give the same id
    member_id: str
    guide: str  # the guide's WeCom userid
    kind: str  # the task's id in the rule file, e.g. invite_first_order
    name_zh: str  # e.g. 邀请首单
    script_zh: str  # the script with the trigger's numbers filled in
    priority: TaskPriority
    opened_at: Timestamp
    due_at: Timestamp
    status: TaskStatus
    closed_at: Timestamp | None = None
    # The guide's userid when done; "rule" when lapsed; "expiry"; "consent"; "erasure".
    closed_by: str | None = None
    note: str | None = None  # the guide's note when done
    converted_at: Timestamp | None = None  # set on a later record when an order converts it
    # {"change_id": ..., "tag": ...} or {"change_id": ..., "type": "tier.downgrade_warning"}
    trigger: dict[str, str]
    evidence: dict[str, Any]
    rules_version: str
    version: int  # 1 when opened, +1 on every later record of the task


def task_id_for(member_id: str, kind: str, guide: str, trigger_change_id: str) -> str:
    """Deterministic: the same member, task kind, guide and trigger always give the same id."""
    return hashlib.blake2b(f"{member_id}\x1f{kind}\x1f{guide}\x1f{trigger_change_id}".encode(),
                           digest_size=16).hexdigest()


_encoder = msgspec.json.Encoder()


def encode_task(record: TaskRecord) -> bytes:
    return _encoder.encode(record)
