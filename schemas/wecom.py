"""`wecom.marks`: what each of a member's WeCom customers (a (guide, external_userid) pair)
must have added and removed among tagstream's tags, in the order it must happen.

The worker writes one record whenever a member's synced tags, their pairs or their consent
change, keyed by member_id, so a member's records stay in order on one partition whatever
order the events arrived in. A pair that appears is given the member's whole synced tag set
in its first mark, so tags held before a guide added the customer reach that guide too
(DESIGN.md: "a pair that appears later receives the full set"). `tagstream wecom-sync`
applies these records and nothing else; `tags.changes` stays the record of tag changes for
every other consumer.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from schemas.changes import Timestamp

MarkReason = Literal["tags", "pair_added", "consent", "erasure"]


class PairMark(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One WeCom customer's tag edits: tag ids to add and to remove (disjoint)."""

    userid: str
    external_userid: str
    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


class WecomMarks(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    mark_id: str  # deterministic: the same member and cause always give the same id
    member_id: str
    reasons: tuple[MarkReason, ...]
    marks: tuple[PairMark, ...]
    names: dict[str, str]  # tag id -> name_zh, for every tag in `marks` (the corp tag's name)
    cause: dict[str, str]
    at: Timestamp


def mark_id_for(member_id: str, cause: dict[str, str]) -> str:
    cause_text = cause.get("event_id") or cause.get("timer") or cause.get("request") or ""
    digest = hashlib.blake2b(f"{member_id}\x1fwecom\x1f{cause_text}".encode(), digest_size=16)
    return digest.hexdigest()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(WecomMarks)


def encode_marks(record: WecomMarks) -> bytes:
    return _encoder.encode(record)


def decode_marks(raw: bytes) -> WecomMarks:
    return _decoder.decode(raw)
