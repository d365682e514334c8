"""Outbound records: tag changes (`tags.changes`) and tier / points changes (`tiers.changes`)
in the DESIGN.md shapes, and their deterministic id."""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


Timestamp = Annotated[str, Meta(extra_json_schema={"format": "date-time"})]


TagSource = Literal["rule", "guide", "wecom", "import"]


class Guide(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    userid: str
    external_userid: str | None = None


class TagChange(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    change_id: str
    member_id: str
    tag: str
    op: Literal["added", "removed"]
    rule_id: str
    rules_version: str
    cause: dict[str, str]
    evidence: dict[str, Any]
    at: Timestamp
    guides: tuple[Guide, ...] = ()
    name_zh: str = ""
    family: str = ""
    # Where the tag came from: the rule pack, a guide in the API, a guide in WeCom, an import.
    source: TagSource = "rule"


TierChangeType = Literal["tier.upgraded", "tier.downgraded", "tier.downgrade_warning",
                         "points.expired", "points.expiry_warning"]


class TierChange(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    """A `tiers.changes` record. `from`/`to` are always written (null on points records), and
    so are the member's `guides` (empty when none), so that a guide's feed needs no lookup; the
    detail fields after `guides` only when they apply."""

    change_id: str
    member_id: str
    type: TierChangeType
    from_: str | None = msgspec.field(name="from")
    to: str | None
    growth: int  # growth value of the last evaluation window at `at`
    cause: dict[str, str]
    at: Timestamp
    # The member's guides when the change happened: required, so it is always written.
    guides: tuple[Guide, ...]
    points: int | None = None  # points expired / about to expire
    balance: int | None = None  # points balance after the change
    expires_at: str | None = None
    needed_growth: int | None = None  # growth still needed to keep the tier at `review_at`
    review_at: str | None = None


def change_id_for(member_id: str, subject: str, op: str, cause: dict[str, str]) -> str:
    """Deterministic id: the same member, tag, op and cause always give the same id, so a
    consumer can drop the duplicates a crash or a replay produces."""
    cause_text = cause.get("event_id") or cause.get("timer") or ""
    kind = "e" if "event_id" in cause else "t"
    digest = hashlib.blake2b(
        f"{member_id}\x1f{subject}\x1f{op}\x1f{kind}\x1f{cause_text}".encode(), digest_size=16)
    return digest.hexdigest()


_encoder = msgspec.json.Encoder()


def encode_change(change: msgspec.Struct) -> bytes:
    return _encoder.encode(change)
