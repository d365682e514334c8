"""taggers/impact.py's counting: a task counts once however many records it has, and a tag's
gained and lost are members, not counts (one in, one out keeps the count and shows both)."""

from __future__ import annotations

from schemas.tasks import TaskRecord, task_id_for
from taggers.impact import tag_impacts, task_impacts
from taggers.state import HeldTag, MemberState

AT = "2025-01-01T10:00:00+08:00"


def task(member: str, kind: str, version: int, status: str = "open") -> TaskRecord:
    return TaskRecord(
        task_id=task_id_for(member, kind, "g01", f"change-{member}"), member_id=member,
        guide="g01", kind=kind, name_zh={"wake_up": "唤醒关怀"}.get(kind, "邀请首单"),
        script_zh="…", priority="normal", opened_at=AT, due_at=AT, status=status,
        trigger={"change_id": f"change-{member}", "tag": "dormant_90d"}, evidence={},
        rules_version="1", version=version)


def member(member_id: str, *tags: str) -> MemberState:
    return MemberState(member_id=member_id, tags={t: HeldTag(since=0, rules_version="1")
                                                  for t in tags})


def test_a_task_counts_once_over_its_records_and_kinds_only_one_side_has_show_zero() -> None:
    before = [task("M1", "wake_up", 1), task("M1", "wake_up", 2, "done")]
    after = [task("M1", "wake_up", 1), task("M2", "wake_up", 1), task("M2", "wake_up", 2,
             "lapsed"), task("M3", "invite_first_order", 1)]

    impacts = {t.kind: (t.name_zh, t.before, t.after) for t in task_impacts(before, after)}

    assert impacts == {"wake_up": ("唤醒关怀", 1, 2), "invite_first_order": ("邀请首单", 0, 1)}


def test_one_member_in_and_one_out_keeps_the_count_and_shows_both() -> None:
    before = {"M1": member("M1", "dormant_90d", "member"), "M2": member("M2", "member")}
    after = {"M1": member("M1", "member"), "M2": member("M2", "dormant_90d", "member")}

    impacts = {t.tag: (t.before, t.after, t.gained, t.lost, t.changed)
               for t in tag_impacts(before, after, str.upper)}

    assert impacts == {"dormant_90d": (1, 1, 1, 1, True), "member": (2, 2, 0, 0, False)}
