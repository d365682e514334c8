"""The guide API's response bodies, besides the profile and the change records. The OpenAPI
document's schemas are generated from these models (streams/serving/api/openapi.py)."""

from __future__ import annotations

from typing import Literal

import msgspec

from schemas.changes import TagSource
from schemas.events import MarkedTagId, TagNameZh
from schemas.profile import Profile


class ApiError(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """Every 4xx and 5xx body: a stable code and a sentence for a person."""

    error: str
    message: str


class Me(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    guide: str | None  # None for an operator
    operator: bool


class CatalogueTag(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    id: str
    name_zh: str
    family: str
    group: str | None  # tags of one group are exclusive (lifecycle, rfm, tier)
    # Marked tags (family "marked") are set by people; the others by rules.
    share: Literal["all", "own"] | msgspec.UnsetType = msgspec.UNSET


class TagCatalogue(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The tags of the rule pack with their display names: what the page shows instead of ids."""

    rules_version: str
    tags: list[CatalogueTag]


class MembersPage(msgspec.Struct, frozen=True, kw_only=True, gc=False, omit_defaults=True):
    """One page of an audience, in member id order; `next_cursor` is None on the last page."""

    members: list[Profile]
    next_cursor: str | None
    guide: str | msgspec.UnsetType = msgspec.UNSET  # on /guides/{guide}/members
    tag: str | None | msgspec.UnsetType = msgspec.UNSET


class MarkRequest(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """POST /members/{member_id}/tags: a guide (or an operator) marks or unmarks a tag."""

    tag: MarkedTagId
    op: Literal["added", "removed"]
    name_zh: TagNameZh | None = None  # needed for a tag the rule pack does not declare


class MarkAccepted(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The mark is on events.interactions; the profile and WeCom follow within moments."""

    event_id: str
    member_id: str
    tag: str
    op: Literal["added", "removed"]
    source: TagSource


_encoder = msgspec.json.Encoder()


def encode_body(body: msgspec.Struct) -> bytes:
    return _encoder.encode(body)
