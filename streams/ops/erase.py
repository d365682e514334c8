"""`tagstream erase MEMBER_ID`: ask the workers to delete a member (PIPL).

The request is an `interaction.erasure_requested` event on the member's partition of
events.interactions, so it is applied in the member's order like any event: the worker
deletes the state (a changelog tombstone), tombstones the served profile (the Redis sink
deletes it and every index entry), takes tagstream's tags off the member's WeCom customers,
and writes the erasure record to members.erasures.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Mapping

import orjson

from streams.platform.event_writer import EventWriter, build_event
from streams.platform.topics import TopicNames


def erasure_event(member_id: str, request_id: str | None = None,
                  now: datetime | None = None) -> bytes:
    """The request as an event, validated by the same decoder the worker uses."""
    return build_event("interaction.erasure_requested", member_id, channel="ops",
                       occurred_at=now, request_id=request_id or None)


async def request_erasure(bootstrap: str, partitions: int, member_id: str, *,
                          names: TopicNames, request_id: str | None = None,
                          security: Mapping[str, Any] | None = None) -> str:
    """Send the request; returns its event id (the erasure record names it)."""
    value = erasure_event(member_id, request_id)
    async with EventWriter(bootstrap, partitions, names, security) as writer:
        await writer.write([value])
    return orjson.loads(value)["event_id"]
