"""What a member's WeCom customers must change after one step of the engine: pure.

A member's *pairs* are their guides with an external_userid (a WeCom contact). Each pair
shows the member's *synced tags*: every rule tag; a marked tag shared with `all` guides; an
`own` marked tag only on the pair of the guide who marked it; nothing while the member
refuses marketing (consent withdrawn: tagstream keeps the tags, WeCom shows none). A tag a
guide set in WeCom itself (source `wecom`) is never marked again on that guide's pair: it is
already there, in a group that is not tagstream's. The marks turn one view into the next: a
pair present in both gets the difference, a pair that appeared gets its whole synced set, a
pair that left gets nothing (the contact is gone; WeCom drops its tags with it).
"""

from __future__ import annotations

from typing import Callable, Iterable, Mapping

from schemas.wecom import MarkReason, PairMark, WecomMarks, mark_id_for
from taggers.marked import MarkedTag, is_marked, marked_guides, marked_name, share_of
from taggers.state import MemberState

Pair = tuple[str, str]  # (guide userid, customer external_userid)


class SyncedTag:
    """One held tag as the sync sees it. Plain classes, not NamedTuples, here: a few are made
    per event, and a NamedTuple's constructor stays interpreted under mypyc."""

    __slots__ = ("id", "source", "guides", "share")

    def __init__(self, id: str, source: str = "rule", guides: tuple[str, ...] = (),
                 share: str = "all") -> None:
        self.id = id
        self.source = source
        self.guides = guides  # who marked it (marked tags)
        self.share = share  # "all" guides' customers, or "own": the marking guide's only


class WecomView:
    __slots__ = ("pairs", "names", "marketing")

    def __init__(self, pairs: dict[Pair, frozenset[str]], names: dict[str, str],
                 marketing: bool = True) -> None:
        self.pairs = pairs  # each customer's synced tags
        # name_zh of the marked tags among them (rule tags: from the pack)
        self.names = names
        self.marketing = marketing


def pair_tags(pairs: Iterable[Pair], tags: Iterable[SyncedTag],
              marketing: bool) -> dict[Pair, frozenset[str]]:
    """The tags each pair must show (the rule in this module's docstring)."""
    pairs = list(pairs)
    if not marketing:
        return {pair: frozenset() for pair in pairs}
    shared: set[str] = set()
    own: dict[str, set[str]] = {}
    hidden: dict[str, set[str]] = {}  # already on this guide's customer, outside our group
    for tag in tags:
        if tag.source == "wecom":
            for guide in tag.guides:
                hidden.setdefault(guide, set()).add(tag.id)
        if tag.source == "rule" or tag.share == "all":
            shared.add(tag.id)
        else:
            for guide in tag.guides:
                own.setdefault(guide, set()).add(tag.id)
    return {(userid, external): frozenset((shared | own.get(userid, set()))
                                          - hidden.get(userid, set()))
            for userid, external in pairs}


def pairs_of(state: MemberState) -> tuple[Pair, ...]:
    return tuple((g.userid, g.external_userid) for g in state.guides if g.external_userid)


def view_of(state: MemberState, marked: Mapping[str, MarkedTag] | None = None) -> WecomView:
    marked = marked or {}
    synced: list[SyncedTag] = []
    names: dict[str, str] = {}
    for tag_id, held in state.tags.items():
        if not is_marked(held):
            synced.append(SyncedTag(tag_id))
            continue
        declared = marked.get(tag_id)
        synced.append(SyncedTag(tag_id, held.source, marked_guides(held.evidence),
                                share_of(tag_id, held, declared)))
        names[tag_id] = marked_name(tag_id, held, declared)
    return WecomView(pair_tags(pairs_of(state), synced, state.marketing), names,
                     state.marketing)


def plan_marks(member_id: str, before: WecomView, after: WecomView,
               name_of: Callable[[str], str], cause: dict[str, str],
               at: str, reason: MarkReason | None = None) -> WecomMarks | None:
    """The record that takes every pair of `after` from `before` to `after`; None if none
    has anything to change. `reason` names why, when the views alone cannot tell."""
    marks: list[PairMark] = []
    reasons: list[MarkReason] = []
    for (userid, external_userid), tags in after.pairs.items():
        old = before.pairs.get((userid, external_userid))
        if old is not None:
            added, removed = tuple(sorted(tags - old)), tuple(sorted(old - tags))
            if added or removed:
                marks.append(PairMark(userid=userid, external_userid=external_userid,
                                      add=added, remove=removed))
                why: MarkReason = reason or ("consent" if before.marketing != after.marketing
                                             else "tags")
                if why not in reasons:
                    reasons.append(why)
        elif tags:
            marks.append(PairMark(userid=userid, external_userid=external_userid,
                                  add=tuple(sorted(tags))))
            if "pair_added" not in reasons:
                reasons.append("pair_added")
    if not marks:
        return None
    names = {tag: after.names.get(tag) or before.names.get(tag) or name_of(tag)
             for mark in marks for tag in (*mark.add, *mark.remove)}
    return WecomMarks(mark_id=mark_id_for(member_id, cause), member_id=member_id,
                      reasons=tuple(reasons), marks=tuple(marks), names=names, cause=cause,
                      at=at)
