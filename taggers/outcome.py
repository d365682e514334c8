"""What one call of the engine did (taggers/engine.py), read by the task book too."""

from __future__ import annotations

from schemas.changes import TagChange, TierChange
from schemas.erasure import Erasure
from schemas.tasks import TaskRecord
from schemas.wecom import WecomMarks
from taggers.state import MemberState


class Outcome:
    """What one call of the engine did. A plain class, not a dataclass: one is made per
    event, and a dataclass's generated __init__ stays interpreted under mypyc."""

    state: MemberState
    changes: list[TagChange]
    tier_changes: list[TierChange]  # for tiers.changes
    marks: list[WecomMarks]  # for wecom.marks
    duplicate: bool
    # The member was erased: the state must be deleted (tombstones), this is the record.
    erasure: Erasure | None
    tasks: list[TaskRecord]  # for tasks.changes
    task_cursor: tuple[int, int]  # changes, tier_changes the tasks have followed

    def __init__(self, state: MemberState, duplicate: bool = False) -> None:
        self.state = state
        self.changes = []
        self.tier_changes = []
        self.marks = []
        self.duplicate = duplicate
        self.erasure = None
        self.tasks = []
        self.task_cursor = (0, 0)
