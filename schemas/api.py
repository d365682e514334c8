"""The guide API's response bodies, besides the profile and the change records. The OpenAPI
document's schemas are generated from these models (streams/serving/api/openapi.py)."""

from __future__ import annotations

import msgspec

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


_encoder = msgspec.json.Encoder()


def encode_body(body: msgspec.Struct) -> bytes:
    return _encoder.encode(body)
