"""Events tagstream itself writes to its input topics: erasure requests, guide and campaign
marks. They take the same road as any upstream producer's events (the member's partition of
the event's own topic, validated by the worker's decoder), so the worker, replay and the dry
run treat them exactly like the rest."""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping

import orjson

from schemas.decode import decode_event
from schemas.events import TOPIC_BY_EVENT_TYPE
from streams.platform.kafka_clients import kafka_producer
from streams.platform.partitioning import partition_for
from streams.platform.topics import TopicNames


def build_event(event_type: str, member_id: str, *, channel: str, event_id: str | None = None,
                occurred_at: datetime | None = None, **fields: Any) -> bytes:
    """One event as JSON, checked by the decoder the worker uses: a bad member id or field
    fails here with the decoder's reason (schemas.errors.EventRejected)."""
    prefix = event_type.rsplit(".", 1)[-1].replace("_", "-")
    body: dict[str, Any] = {
        "event_id": event_id or f"{prefix}-{uuid.uuid4().hex}",
        "event_type": event_type, "member_id": member_id,
        "occurred_at": (occurred_at or datetime.now(timezone.utc)).isoformat(),
        "channel": channel, "schema_version": 1,
        **{key: value for key, value in fields.items() if value is not None}}
    value = orjson.dumps(body)
    decode_event(value)
    return value


class EventWriter:
    """Writes built events to their topics, each on its member's partition. Starts its
    producer on `start()`, never at construction."""

    def __init__(self, bootstrap: str, partitions: int, names: TopicNames,
                 security: Mapping[str, Any] | None = None) -> None:
        self._partitions = partitions
        self._topic_of = {"events.orders": names.orders, "events.interactions":
                          names.interactions, "events.scans": names.scans}
        self._bootstrap, self._security = bootstrap, dict(security or {})
        # Made in start(): aiokafka binds a producer to the running loop when it is made, and
        # `tagstream api` builds its app (and this writer) before any loop runs.
        self._producer: Any = None

    async def start(self) -> None:
        if self._producer is None:
            self._producer = kafka_producer(self._bootstrap, **self._security)
        await self._producer.start()

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def __aenter__(self) -> "EventWriter":
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def write(self, events: Iterable[bytes]) -> int:
        """Send and wait until every in-sync replica has them; returns how many."""
        futures = []
        for value in events:
            body = orjson.loads(value)
            member_id = body["member_id"]
            topic = self._topic_of[TOPIC_BY_EVENT_TYPE[body["event_type"]]]
            futures.append(await self._producer.send(
                topic, value, key=member_id.encode(),
                partition=partition_for(member_id, self._partitions)))
        for future in futures:
            await future
        return len(futures)
