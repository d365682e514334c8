"""Audience insight (人群透视) for the API: who may ask for which scope, and the answers of
GET /insights/tags and GET /insights/tags/history, built from the counters Redis keeps
(streams/serving/insight_counts.py) and the rule pack's names and groups.

A guide token sees only its own guide's members (no `guide`: its own); an operator sees any
guide's, or everyone's when `guide` is absent. Reading is a few Redis round trips whatever the
number of members: one HGETALL for the counts, one pipeline for a history.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Mapping

from schemas.events import MarkedTagId
from schemas.insights import (GroupCount, GuideCount, RfmCell, TagCount, TagHistory, TagInsight,
                              TagSeries)
from streams.serving.api.auth import Principal
from streams.serving.insight_counts import SNAPSHOT_DAYS, InsightCounts
from streams.serving.insight_snapshots import local_date
from taggers.marked import MARKED_FAMILY
from taggers.profile import RFM_LETTERS

DEFAULT_DAYS = 30
MAX_HISTORY_TAGS = 20
# The lifecycle funnel runs in the order a member lives through it (the pack evaluates it in
# another order: the first stage that holds wins).
FUNNEL = ("new", "first", "active", "silent", "lost")
# Any tag a member can hold: a marked tag's id (wecom:..., campaign ids) or a rule's, which is
# narrower (taggers.rules.TAG_ID).
HELD_TAG_ID = re.compile(MarkedTagId.__metadata__[0].pattern)
LEVEL = {"H": "high", "L": "low"}


class InsightRefused(Exception):
    """Why a question is not answered: an HTTP status, a stable code and a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def scope_of(principal: Principal, query: Mapping[str, str]) -> str | None:
    """The guide whose members are counted (None: everyone), as the caller may see it."""
    guide = query.get("guide")
    if guide is None or guide == "":
        return principal.guide
    if not principal.may_see_guide(guide):
        raise InsightRefused(403, "forbidden", "a guide sees only their own members")
    return guide


def _group(pack: Any, group: str) -> list[Any]:
    return [rule for rule in pack.tags if getattr(rule, "group", None) == group]


def tag_insight(pack: Any, counts: Any, guide: str | None, as_of: str,
                guides: Mapping[str, int] | None = None) -> TagInsight:
    """Counts in the pack's terms: every tag (0 for tags nobody holds), then the tier, lifecycle
    and RFM groups; tags the pack does not know (imported, or from an older pack) come last."""
    held = counts.tags
    tags = [TagCount(id=rule.id, name_zh=rule.name_zh, family=rule.family,
                     members=held.get(rule.id, 0)) for rule in pack.tags]
    tags += [TagCount(id=tag.id, name_zh=tag.name_zh, family=MARKED_FAMILY,
                      members=held.get(tag.id, 0)) for tag in pack.marked.values()]
    known = {t.id for t in tags}
    tags += [TagCount(id=tag, name_zh=tag, family=None, members=n)
             for tag, n in sorted(held.items()) if tag not in known]

    def values(group: str) -> list[GroupCount]:
        return [GroupCount(value=rule.value or rule.id, tag=rule.id, name_zh=rule.name_zh,
                           members=held.get(rule.id, 0)) for rule in _group(pack, group)]

    lifecycle = values("lifecycle")
    lifecycle.sort(key=lambda g: FUNNEL.index(g.value) if g.value in FUNNEL else len(FUNNEL))
    rfm = [RfmCell(segment=rule.value, tag=rule.id, name_zh=rule.name_zh,
                   r=LEVEL[letters[0]], f=LEVEL[letters[1]], m=LEVEL[letters[2]],
                   members=held.get(rule.id, 0))
           for rule in _group(pack, "rfm")
           if (letters := RFM_LETTERS.get(rule.value or ""))]
    extra: dict[str, Any] = {}
    if guides is not None:
        extra["guides"] = [GuideCount(guide=g, members=n) for g, n in guides.items()]
    return TagInsight(guide=guide, as_of=as_of, members=counts.members, tags=tags,
                      tiers=values("tier"), lifecycle=lifecycle, rfm=rfm, **extra)


def history_args(query: Any) -> tuple[list[str], int]:
    """The tags (repeat `tag`, or separate them with commas) and the number of days."""
    tags = [t.strip() for raw in query.getall("tag", []) for t in raw.split(",") if t.strip()]
    if not tags:
        raise InsightRefused(400, "bad_request", "name at least one tag: ?tag=high_value")
    if len(tags) > MAX_HISTORY_TAGS:
        raise InsightRefused(400, "bad_request", f"at most {MAX_HISTORY_TAGS} tags at a time")
    bad = [t for t in tags if len(t) > 64 or not HELD_TAG_ID.match(t)]
    if bad:
        raise InsightRefused(400, "bad_request", f"not a tag id: {bad[0][:40]!r}")
    raw_days = query.get("days", str(DEFAULT_DAYS))
    days = int(raw_days) if raw_days.isdigit() else 0
    if not 1 <= days <= SNAPSHOT_DAYS:
        raise InsightRefused(400, "bad_request", f"days must be 1..{SNAPSHOT_DAYS}")
    return list(dict.fromkeys(tags)), days


async def tag_history(pack: Any, counts: InsightCounts, guide: str | None, tags: list[str],
                      days: int, now: float) -> TagHistory:
    """The last `days` local dates up to today, oldest first, and each tag's daily count."""
    today = local_date(pack.calendar, now)
    dates = [(today - timedelta(days=back)).isoformat() for back in range(days - 1, -1, -1)]
    series = await counts.history(dates, tags, guide)
    names = {rule.id: rule.name_zh for rule in pack.tags}
    names.update({tag.id: tag.name_zh for tag in pack.marked.values()})
    return TagHistory(guide=guide, days=days, dates=dates, series=[
        TagSeries(tag=tag, name_zh=names.get(tag, tag), members=series[tag]) for tag in tags])
