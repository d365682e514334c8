"""Guide tags (导购打标) through the API: POST /members/{member_id}/tags.

A guide marks only their own members; an operator may mark anyone. The mark becomes an
`interaction.tag_marked` event on the member's partition of events.interactions, applied by
the worker in the member's order like every event, so replay and the dry run reproduce it.
The answer is 202: the profile, the feed and WeCom follow once the worker has applied it.
"""

from __future__ import annotations

from typing import Any, Protocol

import msgspec
import orjson

from schemas.api import MarkAccepted, MarkRequest
from schemas.errors import EventRejected
from streams.platform.event_writer import build_event
from streams.serving.api.auth import Principal

MAX_BODY = 4096


class MarkRefused(Exception):
    """Why a mark is not taken: an HTTP status, a stable code and a sentence."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


class Profiles(Protocol):
    async def get_profile(self, member_id: str) -> dict[str, Any] | None: ...


class Events(Protocol):
    async def write(self, events: Any) -> int: ...


def parse_request(body: bytes) -> MarkRequest:
    if len(body) > MAX_BODY:
        raise MarkRefused(413, "too_large", f"a mark is at most {MAX_BODY} bytes")
    try:
        return msgspec.json.decode(body, type=MarkRequest)
    except msgspec.DecodeError as exc:
        raise MarkRefused(400, "bad_request", f"invalid mark: {exc}") from None


async def mark_member_tag(principal: Principal, member_id: str, request: MarkRequest, *,
                          pack: Any, profiles: Profiles, events: Events) -> MarkAccepted:
    profile = await profiles.get_profile(member_id)
    if profile is None or not principal.may_see_member(profile):
        if principal.operator:
            raise MarkRefused(404, "not_found", "no such member")
        raise MarkRefused(403, "forbidden", "this member is not bound to you")
    rule = pack.tag(request.tag)
    if rule is not None:
        raise MarkRefused(400, "rule_tag", f"tag {request.tag!r} is set by the rule pack "
                                           f"({rule.family}); guides mark their own tags")
    held = {tag["id"] for tag in profile.get("tags") or ()}
    if request.op == "added" and request.tag not in pack.marked and request.name_zh is None \
            and request.tag not in held:
        raise MarkRefused(400, "name_required", f"tag {request.tag!r} is not one of the rule "
                                                f"pack's marked tags: send its name_zh")
    source = "import" if principal.operator else "guide"
    try:
        event = build_event("interaction.tag_marked", member_id, channel="guide_api",
                            tag=request.tag, op=request.op, source=source,
                            guide_id=principal.guide, name_zh=request.name_zh)
    except EventRejected as exc:
        raise MarkRefused(400, "bad_request", str(exc)) from None
    await events.write([event])
    return MarkAccepted(event_id=orjson.loads(event)["event_id"], member_id=member_id,
                        tag=request.tag, op=request.op, source=source)
