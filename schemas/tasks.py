"""Guide task records (`tasks.changes`, 客户SOP): a task's whole newest state, and its id.

A task opens for one guide of a member when a rule-file trigger fires (a tag added, or a tier
or points change) and closes once: `done` (the guide marked it), `lapsed` (its tag came off),
`expired` (due time + `expire_after_due`) or `cancelled` (consent withdrawn, erasure). A done
task may later get `converted_at`. Every record of a task carries a `version` one higher than
the previous one, so a consumer keeps the highest and redeliveries change nothing.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec

from schemas.changes import Timestamp

TaskStatus = Literal["open", "done", "lapsed", "expired", "cancelled"]
TaskPriority = Literal["high", "normal", "low"]
TASK_STATUSES: tuple[str, ...] = ("open", "done", "lapsed", "expired", "cancelled")
TASK_PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
# `closed_by` of the closes no guide made (a done task names its guide instead).
CLOSED_BY_RULE = "rule"
CLOSED_BY_EXPIRY = "expiry"
CLOSED_BY_CONSENT = "consent"
CLOSED_BY_ERASURE = "erasure"
MAX_NOTE_CHARS = 500


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    task_id: str
    member_id: str
    guide: str  # the guide's WeCom userid
    kind: str  # the task's id in the rule file, e.g. invite_first_order
    name_zh: str
    script_zh: str  # with the trigger's numbers filled in
    priority: TaskPriority
    opened_at: Timestamp
    due_at: Timestamp
    status: TaskStatus
    closed_at: Timestamp | None = None
    closed_by: str | None = None  # the guide's userid when done; rule, expiry, consent, erasure
    note: str | None = None  # the guide's note when done
    converted_at: Timestamp | None = None  # an order paid within convert_within of done
    # {"change_id": ..., "tag": ...} or {"change_id": ..., "type": "tier.downgrade_warning"}
    trigger: dict[str, str]
    evidence: dict[str, Any]
    rules_version: str
    version: int  # 1 when opened, +1 on every later record of the task


def task_id_for(member_id: str, kind: str, guide: str, trigger_change_id: str) -> str:
    """Deterministic: the same trigger gives the same task for the same guide after a crash
    or a replay, so consumers (and the engine itself) can drop duplicates."""
    digest = hashlib.blake2b(f"{member_id}\x1f{kind}\x1f{guide}\x1f{trigger_change_id}".encode(),
                             digest_size=16)
    return digest.hexdigest()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TaskRecord)


def encode_task(record: TaskRecord) -> bytes:
    return _encoder.encode(record)


def decode_task(raw: bytes) -> TaskRecord:
    return _decoder.decode(raw)
