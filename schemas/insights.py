"""Audience insight (人群透视) bodies of the API: members per tag, tier, lifecycle stage and RFM
cell, now (GET /insights/tags) and per day (GET /insights/tags/history). The OpenAPI document's
schemas are generated from these models (streams/serving/api/openapi.py)."""

from __future__ import annotations

from typing import Literal

import msgspec


class TagCount(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str
    name_zh: str
    family: str | None  # None: a tag the rule pack does not declare (e.g. an imported one)
    members: int


class GroupCount(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One value of an exclusive group (a tier, a lifecycle stage) and its members."""

    value: str
    tag: str
    name_zh: str
    members: int


class RfmCell(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    segment: str
    tag: str
    name_zh: str
    r: Literal["high", "low"]
    f: Literal["high", "low"]
    m: Literal["high", "low"]
    members: int


class GuideCount(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    guide: str
    members: int


class TagInsight(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    """The members of one guide (or of everyone: guide None) counted per tag and group."""

    guide: str | None
    as_of: str  # when the counts were read, in the rule pack's time zone
    members: int
    tags: list[TagCount]  # every tag of the pack, and any other tag somebody holds
    tiers: list[GroupCount]  # lowest tier first
    lifecycle: list[GroupCount]  # funnel order: new, first, active, silent, lost
    rfm: list[RfmCell]
    guides: list[GuideCount] | msgspec.UnsetType = msgspec.UNSET  # operators, everyone only


class TagSeries(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    tag: str
    name_zh: str
    members: list[int | None]  # one per date; None: no snapshot that day


class TagHistory(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Daily snapshots (local dates, oldest first) of the counts of some tags."""

    guide: str | None
    days: int
    dates: list[str]
    series: list[TagSeries]
