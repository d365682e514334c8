"""The member profile (DESIGN.md "Member profile"): what Redis serves, the API returns and
`tagstream dryrun --profiles-out` writes, rendered by `taggers.profile.render_profile`.

The guide API's OpenAPI document takes its schema from these models, so the document cannot
drift from what the worker writes. Times are RFC 3339 strings in the rule pack's time zone.
The loyalty fields are present exactly when the rule pack has a `loyalty:` section.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from schemas.changes import Guide, TagSource, Timestamp

Level = Literal["high", "low"]


class OrderTotals(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Paid orders over the member's whole history (refunds counted apart, in fen)."""

    count: int
    distinct_days: int
    spend_fen: int
    refund_fen: int
    first_at: Timestamp | None
    last_at: Timestamp | None


class Rfm(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The member's RFM cell: recency, frequency and money, each high or low, and the segment."""

    r: Level | None
    f: Level | None
    m: Level | None
    segment: str


class HeldTag(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A tag the member holds now, since when, under which rules, and why."""

    id: str
    name_zh: str
    family: str | None  # None for a tag the current rule pack no longer defines
    since: Timestamp | None
    rule_version: str
    evidence: dict[str, Any]  # the values that made the rule hold, or who marked it
    source: TagSource = "rule"
    # Marked tags only (set by a person): "all" shows on every guide's WeCom customer, "own"
    # only on the marking guide's; absent on rule tags, which show everywhere.
    share: Literal["all", "own"] | UnsetType = UNSET
    expires_at: Timestamp | None | UnsetType = UNSET  # a marked tag with a ttl ends then


class NextTier(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    tier: str
    growth_needed: int


class Consent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    marketing: bool  # False: no tagstream tag on the member's WeCom customers


class PointsLot(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Points earned in one year, and when they expire (None: they never do)."""

    earned_year: int
    points: int
    expires_at: Timestamp | None


class Profile(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    member_id: str
    joined_at: Timestamp | None
    lifecycle: str | None
    orders: OrderTotals
    rfm: Rfm | None
    tags: list[HeldTag]
    guides: list[Guide]
    birthday: str | None  # MM-DD
    rules_version: str
    next_deadline: Timestamp | None  # the next time a time-based rule will look at this member
    as_of: Timestamp | None  # the member's event-time clock when this was rendered
    consent: Consent
    tier: str | UnsetType = UNSET
    tier_name_zh: str | UnsetType = UNSET
    tier_since: Timestamp | UnsetType = UNSET
    tier_review_at: Timestamp | None | UnsetType = UNSET
    growth: int | UnsetType = UNSET
    next_tier: NextTier | None | UnsetType = UNSET
    points: int | UnsetType = UNSET
    points_lots: list[PointsLot] | UnsetType = UNSET
    points_shortfall: int | UnsetType = UNSET


_encoder = msgspec.json.Encoder()


def encode_profile(profile: Profile) -> bytes:
    return _encoder.encode(profile)
