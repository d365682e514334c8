"""`tagstream wecom-reconcile`: read what WeCom actually shows and repair drift both ways.

WeCom can drift from tagstream: a guide removes a tag by hand, an admin re-adds an old one,
a call was lost before tagstream kept its offsets. For each served member with WeCom
customers, one `externalcontact/get` per customer returns every guide's view of them; within
tagstream's own tag group (自动标签) each current pair is set to exactly the member's synced
tags (none while marketing consent is withdrawn) with one `mark_tag` where it differs. Tags
of any other group, and personal tags (type 2), are never touched.

The expected state is the served profile (Redis), so run it while the Redis sink is caught up:
a profile that lags behind wecom.marks would undo the newest marks until the next run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable, Mapping, Protocol

from streams.serving.wecom.client import WeComError
from streams.serving.wecom.sync import (GROUP_NAME, PAIR_GONE_ERRCODES, Pair, TagMapper,
                                        corp_tag_name)
from taggers.marked import marked_guides
from taggers.wecom import SyncedTag, pair_tags

log = logging.getLogger(__name__)

CORP_TAG = 1  # follow_user.tags.type: 1 corp tag, 2 the guide's personal tag


class ContactApi(Protocol):
    async def get_external_contact(self, external_userid: str) -> list[dict[str, Any]]: ...

    async def mark_tag(self, userid: str, external_userid: str, *, add: Any = (),
                       remove: Any = ()) -> None: ...


class ProfileSource(Protocol):
    def member_ids(self) -> AsyncIterator[str]: ...

    async def get_profile(self, member_id: str) -> dict[str, Any] | None: ...


@dataclass
class ReconcileStats:
    members: int = 0          # members with at least one WeCom customer
    contacts_read: int = 0    # externalcontact/get calls (pages included)
    pairs_checked: int = 0
    pairs_repaired: int = 0   # pairs that needed a mark_tag
    tags_added: int = 0
    tags_removed: int = 0
    foreign_seen: int = 0     # tags outside tagstream's group, left as they were
    pairs_missing: int = 0    # pairs the profile names that WeCom does not show
    errors: dict[str, int] = field(default_factory=dict)


def expected_tags(profile: Mapping[str, Any]) -> dict[Pair, dict[str, tuple[str, str]]]:
    """Per current pair of the profile: corp tag name -> (tagstream tag id, name_zh), by the
    same rule the worker's marks follow (taggers.wecom.pair_tags)."""
    held = {tag["id"]: tag for tag in profile.get("tags") or []}
    synced = []
    for tag in held.values():
        synced.append(SyncedTag(tag["id"], tag.get("source") or "rule",
                                marked_guides(tag.get("evidence") or {}),
                                tag.get("share") or "all"))
    pairs = [(g["userid"], g["external_userid"])
             for g in profile.get("guides") or [] if g.get("external_userid")]
    marketing = (profile.get("consent") or {}).get("marketing", True)
    return {Pair(*pair): {corp_tag_name(t, held[t].get("name_zh") or ""):
                          (t, held[t].get("name_zh") or "") for t in sorted(tags)}
            for pair, tags in pair_tags(pairs, synced, marketing).items()}


def repairs(expected: Mapping[str, Any], shown: list[Mapping[str, Any]],
            group_name: str = GROUP_NAME) -> tuple[dict[str, str], list[str], int]:
    """What one pair needs: ({tagstream tag id: name_zh} to add, corp tag ids to remove) and
    how many shown tags lie outside tagstream's group (untouched)."""
    ours: dict[str, str] = {}
    foreign = 0
    for tag in shown:
        if tag.get("type") == CORP_TAG and tag.get("group_name") == group_name:
            ours[str(tag.get("tag_name"))] = str(tag.get("tag_id"))
        else:
            foreign += 1
    add = {tag_id: name_zh for name, (tag_id, name_zh) in expected.items() if name not in ours}
    remove = sorted(tag_id for name, tag_id in ours.items() if name not in expected)
    return add, remove, foreign


class WeComReconciler:
    def __init__(self, api: ContactApi, mapper: TagMapper, profiles: ProfileSource) -> None:
        self.api = api
        self.mapper = mapper
        self.profiles = profiles
        self.stats = ReconcileStats()

    async def run(self, member_id: str | None = None,
                  owns: Callable[[str], bool] | None = None) -> ReconcileStats:
        """One member, or every served member (only those `owns` accepts, when given)."""
        if member_id is not None:
            await self.member(member_id)
        else:
            async for served in self.profiles.member_ids():
                if owns is None or owns(served):
                    await self.member(served)
        return self.stats

    async def member(self, member_id: str) -> None:
        profile = await self.profiles.get_profile(member_id)
        if profile is None:
            return
        expected = expected_tags(profile)
        if not expected:
            return
        self.stats.members += 1
        for external_userid in sorted({pair.external_userid for pair in expected}):
            try:
                follow = await self.api.get_external_contact(external_userid)
            except WeComError as exc:
                self._error(exc)
                continue
            self.stats.contacts_read += 1
            shown = {str(f.get("userid")): f.get("tags") or [] for f in follow}
            for pair in sorted(p for p in expected if p.external_userid == external_userid):
                if pair.userid not in shown:
                    self.stats.pairs_missing += 1
                    continue
                await self._repair(pair, expected[pair], shown[pair.userid])

    async def _repair(self, pair: Pair, expected: Mapping[str, Any],
                      shown: list[Mapping[str, Any]]) -> None:
        self.stats.pairs_checked += 1
        add, remove, foreign = repairs(expected, shown, self.mapper.group_name)
        self.stats.foreign_seen += foreign
        if not add and not remove:
            return
        try:
            ids = await self.mapper.resolve(add)
            await self.api.mark_tag(pair.userid, pair.external_userid,
                                    add=sorted(ids.values()), remove=remove)
        except WeComError as exc:
            self._error(exc)
            return
        self.stats.pairs_repaired += 1
        self.stats.tags_added += len(add)
        self.stats.tags_removed += len(remove)

    def _error(self, exc: WeComError) -> None:
        label = str(exc.errcode) if exc.errcode is not None else "unreachable"
        self.stats.errors[label] = self.stats.errors.get(label, 0) + 1
        if exc.errcode not in PAIR_GONE_ERRCODES:
            log.warning("WeCom reconcile: %s", exc)
