"""What a member's WeCom customers must change after one step of the engine: pure.

A member's *pairs* are their guides with an external_userid (a WeCom contact); the *synced
tags* are the tags every pair must show: all the member holds, none while the member refuses
marketing (consent withdrawn; tagstream keeps the tags, WeCom shows none of them). The marks turn one view of these into the next:
a pair present in both gets the difference, a pair that appeared gets the whole synced set,
a pair that left gets nothing (the contact is gone; WeCom drops its tags with it).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from schemas.wecom import MarkReason, PairMark, WecomMarks, mark_id_for
from taggers.state import MemberState

Pair = tuple[str, str]  # (guide userid, customer external_userid)


class WecomView(NamedTuple):
    tags: frozenset[str]  # the synced tags: none while marketing consent is withdrawn
    pairs: tuple[Pair, ...]
    marketing: bool = True


def pairs_of(state: MemberState) -> tuple[Pair, ...]:
    return tuple((g.userid, g.external_userid) for g in state.guides if g.external_userid)


def view_of(state: MemberState) -> WecomView:
    tags = frozenset(state.tags) if state.marketing else frozenset()
    return WecomView(tags, pairs_of(state), state.marketing)


def plan_marks(member_id: str, before: WecomView, after: WecomView,
               name_of: Callable[[str], str], cause: dict[str, str],
               at: str, reason: MarkReason | None = None) -> WecomMarks | None:
    """The record that takes every pair of `after` from `before` to `after`; None if none
    has anything to change. `reason` names why, when the views alone cannot tell."""
    added = tuple(sorted(after.tags - before.tags))
    removed = tuple(sorted(before.tags - after.tags))
    full = tuple(sorted(after.tags))
    old_pairs = set(before.pairs)
    marks: list[PairMark] = []
    reasons: list[MarkReason] = []
    for userid, external_userid in after.pairs:
        if (userid, external_userid) in old_pairs:
            if added or removed:
                marks.append(PairMark(userid=userid, external_userid=external_userid,
                                      add=added, remove=removed))
                why: MarkReason = reason or ("consent" if before.marketing != after.marketing
                                             else "tags")
                if why not in reasons:
                    reasons.append(why)
        elif full:
            marks.append(PairMark(userid=userid, external_userid=external_userid, add=full))
            if "pair_added" not in reasons:
                reasons.append("pair_added")
    if not marks:
        return None
    names = {tag: name_of(tag) for mark in marks for tag in (*mark.add, *mark.remove)}
    return WecomMarks(mark_id=mark_id_for(member_id, cause), member_id=member_id,
                      reasons=tuple(reasons), marks=tuple(marks), names=names, cause=cause,
                      at=at)
