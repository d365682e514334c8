"""`members.erasures`: the record that a member was erased, holding no personal data.

Written by the worker when it applies `interaction.erasure_requested` (sent by `tagstream
erase` or by an upstream system). The member is named only by a hash of their id, so an
auditor who knows the member id can confirm the erasure, and the record alone reveals nobody.
"""

from __future__ import annotations

import hashlib

import msgspec

from schemas.changes import Timestamp


class Erasure(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    erasure_id: str  # deterministic: the request's event id, hashed
    member_hash: str  # blake2b-128 of the member id
    request_event_id: str
    request_id: str | None  # the requester's reference, if they gave one
    requested_at: Timestamp  # the request's occurred_at
    state_found: bool  # False: tagstream held nothing for this member id
    tags_cleared: int  # tags the member held
    wecom_pairs_cleared: int  # WeCom customers whose tagstream tags are removed


def member_hash(member_id: str) -> str:
    return hashlib.blake2b(member_id.encode(), digest_size=16).hexdigest()


def erasure_id_for(event_id: str) -> str:
    return hashlib.blake2b(f"erasure\x1f{event_id}".encode(), digest_size=16).hexdigest()


_encoder = msgspec.json.Encoder()


def encode_erasure(record: Erasure) -> bytes:
    return _encoder.encode(record)
