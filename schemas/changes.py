"""Outbound records: tag changes (`tags.changes`) in the DESIGN.md shape, and their id."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import msgspec


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
    at: str
    guides: tuple[Guide, ...] = ()
    name_zh: str = ""
    family: str = ""


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
