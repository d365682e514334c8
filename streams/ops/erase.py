"""`tagstream erase MEMBER_ID`: ask the workers to delete a member (PIPL).

The request is an `interaction.erasure_requested` event on the member's partition of
events.interactions, so it is applied in the member's order like any event: the worker
deletes the state (a changelog tombstone), tombstones the served profile (the Redis sink
deletes it and every index entry), takes tagstream's tags off the member's WeCom customers,
and writes the erasure record to members.erasures.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Mapping

import orjson

from schemas.decode import decode_event
from streams.platform.kafka_clients import kafka_producer
from streams.platform.partitioning import partition_for
from streams.platform.topics import TopicNames


def erasure_event(member_id: str, request_id: str | None = None,
                  now: datetime | None = None) -> bytes:
    """The request as an event, validated by the same decoder the worker uses."""
    body: dict[str, Any] = {
        "event_id": f"erase-{uuid.uuid4().hex}",
        "event_type": "interaction.erasure_requested", "member_id": member_id,
        "occurred_at": (now or datetime.now(timezone.utc)).isoformat(),
        "channel": "ops", "schema_version": 1}
    if request_id:
        body["request_id"] = request_id
    value = orjson.dumps(body)
    decode_event(value)  # a bad member id fails here, with the decoder's reason
    return value


async def request_erasure(bootstrap: str, partitions: int, member_id: str, *,
                          names: TopicNames, request_id: str | None = None,
                          security: Mapping[str, Any] | None = None) -> str:
    """Send the request; returns its event id (the erasure record names it)."""
    value = erasure_event(member_id, request_id)
    producer = kafka_producer(bootstrap, **(security or {}))
    await producer.start()
    try:
        await producer.send_and_wait(names.interactions, value, key=member_id.encode(),
                                     partition=partition_for(member_id, partitions))
    finally:
        await producer.stop()
    return orjson.loads(value)["event_id"]
