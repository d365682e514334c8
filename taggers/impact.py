"""What a rule change would do (`tagstream impact`): two dry runs of the same events, one per
rule pack, compared.

- per tag: the members holding it at the end under each pack, and who gained or lost it;
- per task kind: the tasks each run opened (distinct task ids; a task is counted once however
  many records it has);
- the WeCom mark_tag calls each run's `wecom.marks` records would cause.

Pure: it compares finished results. Running the dry runs, and counting a record's calls the
way the WeCom sync makes them, is the caller's (streams/ops/impact.py), so this module needs
neither Kafka nor the serving side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from schemas.tasks import TaskRecord
from schemas.wecom import WecomMarks
from taggers.dryrun import DryRunResult
from taggers.marked import marked_name
from taggers.rules import RulePack
from taggers.state import MemberState


@dataclass(frozen=True)
class TagImpact:
    tag: str
    name_zh: str
    before: int  # members holding the tag at the end under the old pack
    after: int  # ... under the new pack
    gained: int  # holding it after, not before
    lost: int  # holding it before, not after

    @property
    def changed(self) -> bool:
        return bool(self.gained or self.lost)


@dataclass(frozen=True)
class TaskImpact:
    kind: str
    name_zh: str
    before: int  # tasks of this kind the old pack's run opened
    after: int


@dataclass(frozen=True)
class Impact:
    members: int  # members of the events (both runs see the same events)
    as_of: int | None
    old_version: str
    new_version: str
    tags: tuple[TagImpact, ...]  # every tag held in either run, by id
    tasks: tuple[TaskImpact, ...]  # every task kind either run opened, by kind
    mark_tag_calls_before: int
    mark_tag_calls_after: int

    @property
    def mark_tag_calls_difference(self) -> int:
        return self.mark_tag_calls_after - self.mark_tag_calls_before


def holders(states: Mapping[str, MemberState]) -> dict[str, set[str]]:
    """Tag id -> the members holding it in `states`."""
    held: dict[str, set[str]] = {}
    for member_id, state in states.items():
        for tag_id in state.tags:
            held.setdefault(tag_id, set()).add(member_id)
    return held


def tag_impacts(before: Mapping[str, MemberState], after: Mapping[str, MemberState],
                name_of: Callable[[str], str]) -> tuple[TagImpact, ...]:
    held_before, held_after = holders(before), holders(after)
    impacts = []
    for tag_id in sorted(held_before.keys() | held_after.keys()):
        old, new = held_before.get(tag_id, set()), held_after.get(tag_id, set())
        impacts.append(TagImpact(tag=tag_id, name_zh=name_of(tag_id), before=len(old),
                                 after=len(new), gained=len(new - old), lost=len(old - new)))
    return tuple(impacts)


def opened_tasks(tasks: Iterable[TaskRecord]) -> tuple[dict[str, int], dict[str, str]]:
    """Per task kind, how many distinct tasks were opened, and each kind's name_zh. A task
    publishes a record per state (version 1, 2, ...): counting ids counts each task once."""
    ids: dict[str, set[str]] = {}
    names: dict[str, str] = {}
    for record in tasks:
        ids.setdefault(record.kind, set()).add(record.task_id)
        names.setdefault(record.kind, record.name_zh)
    return {kind: len(task_ids) for kind, task_ids in ids.items()}, names


def task_impacts(before: Iterable[TaskRecord], after: Iterable[TaskRecord]
                 ) -> tuple[TaskImpact, ...]:
    opened_before, names = opened_tasks(before)
    opened_after, names_after = opened_tasks(after)
    names = {**names, **names_after}
    return tuple(TaskImpact(kind=kind, name_zh=names[kind], before=opened_before.get(kind, 0),
                            after=opened_after.get(kind, 0))
                 for kind in sorted(opened_before.keys() | opened_after.keys()))


def tag_namer(new: RulePack, old: RulePack,
              states: Iterable[Mapping[str, MemberState]]) -> Callable[[str], str]:
    """A tag's display name: the new pack's, else the old pack's, else (a tag people set
    that no pack declares) the name its marks carried, else its id."""
    def name_of(tag_id: str) -> str:
        for pack in (new, old):
            rule = pack.tag(tag_id)
            if rule is not None:
                return rule.name_zh
            if tag_id in pack.marked:
                return pack.marked[tag_id].name_zh
        for members in states:
            for state in members.values():
                if tag_id in state.tags:
                    return marked_name(tag_id, state.tags[tag_id], None)
        return tag_id
    return name_of


def compare(old: DryRunResult, new: DryRunResult, old_pack: RulePack, new_pack: RulePack,
            mark_tag_calls: Callable[[WecomMarks], int]) -> Impact:
    """The impact of replacing `old_pack` by `new_pack`, from their dry runs over the same
    events. `mark_tag_calls(record)` says how many calls one wecom.marks record causes."""
    name_of = tag_namer(new_pack, old_pack, (old.states, new.states))
    return Impact(
        members=len(old.states.keys() | new.states.keys()),
        as_of=new.as_of,
        old_version=old_pack.version,
        new_version=new_pack.version,
        tags=tag_impacts(old.states, new.states, name_of),
        tasks=task_impacts(old.tasks, new.tasks),
        mark_tag_calls_before=sum(mark_tag_calls(record) for record in old.marks),
        mark_tag_calls_after=sum(mark_tag_calls(record) for record in new.marks),
    )
