"""Builders of valid events (each call returns a decoded, typed event) and records for tests."""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from schemas.changes import TagChange
from schemas.decode import decode_event
from schemas.events import Event
from schemas.wecom import PairMark, WecomMarks
from streams.platform.partitioning import partition_for

_ids = itertools.count(1)


def raw_event(event_type: str, at: str, member: str = "M1", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"event_id": fields.pop("event_id", f"ev-{next(_ids)}"),
                            "event_type": event_type, "member_id": member,
                            "occurred_at": at, "channel": fields.pop("channel", "tmall"),
                            "schema_version": 1}
    if event_type == "order.paid":
        body.update(order_id=f"o-{body['event_id']}", items=[])
    if event_type == "order.refunded":
        body.update(order_id=fields.pop("order_id", "o-x"))
    if event_type.startswith("scan."):
        body.update(code_id=f"c-{body['event_id']}", sku="sku-1", category="baijiu")
    body.update(fields)
    return body


def members_of_partition(count: int, partitions: int, partition: int = 0) -> list[str]:
    """The first `count` ids "M0", "M1", ... whose members live on `partition`."""
    ids = (f"M{n}" for n in itertools.count())
    return list(itertools.islice((m for m in ids if partition_for(m, partitions) == partition),
                                 count))


def event(event_type: str, at: str, member: str = "M1", **fields: Any) -> Event:
    return decode_event(orjson.dumps(raw_event(event_type, at, member, **fields)))


def paid(at: str, amount_fen: int, member: str = "M1", **fields: Any) -> Event:
    return event("order.paid", at, member, amount_fen=amount_fen, **fields)


def joined(at: str, member: str = "M1", **fields: Any) -> Event:
    return event("interaction.member_joined", at, member, **fields)


def marks_for_change(change: TagChange) -> WecomMarks:
    """The wecom.marks record that carries one tag change to each pair the change names (a
    guide without an external_userid is no pair)."""
    edit = {"add": (change.tag,)} if change.op == "added" else {"remove": (change.tag,)}
    return WecomMarks(
        mark_id=change.change_id, member_id=change.member_id, reasons=("tags",),
        marks=tuple(PairMark(userid=g.userid, external_userid=g.external_userid or "", **edit)
                    for g in change.guides),
        names={change.tag: change.name_zh}, cause=change.cause, at=change.at)


def shown_on_pair(userid: str, marketing: bool, tags: list[tuple[str, str, Any, Any]]) -> set[str]:
    """The test oracle for what a guide's WeCom customer shows, written apart from
    taggers/wecom.py: every rule tag; a marked tag shared with all guides, or with its own
    guide; never a tag the guide set in WeCom itself; nothing without marketing consent.
    `tags` are (id, source, marking guides, share)."""
    if not marketing:
        return set()
    shown = set()
    for tag_id, source, guides, share in tags:
        if source == "rule":
            shown.add(tag_id)
        elif source == "wecom" and userid in guides:
            continue
        elif share == "all" or userid in guides:
            shown.add(tag_id)
    return shown


def _guides(evidence: dict[str, Any]) -> tuple[str, ...]:
    if "guides" in evidence:
        return tuple(evidence["guides"])
    return (evidence["guide"],) if evidence.get("guide") else ()


def state_tags(state: Any, pack: Any) -> list[tuple[str, str, Any, Any]]:
    """A MemberState's held tags as `shown_on_pair` reads them."""
    out = []
    for tag_id, held in state.tags.items():
        declared = pack.marked.get(tag_id)
        share = declared.share if declared else ("all" if held.source == "import" else "own")
        out.append((tag_id, held.source, _guides(held.evidence), share))
    return out


def profile_tags(profile: dict[str, Any]) -> list[tuple[str, str, Any, Any]]:
    """A served profile's tags as `shown_on_pair` reads them."""
    return [(t["id"], t.get("source", "rule"), _guides(t.get("evidence") or {}),
             t.get("share")) for t in profile["tags"]]
