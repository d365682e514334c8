"""Every Kafka topic tagstream reads or writes (DESIGN.md "Topics"), declared in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.events import INTERACTIONS_TOPIC, ORDERS_TOPIC, SCANS_TOPIC

EVENT_TOPICS = (ORDERS_TOPIC, INTERACTIONS_TOPIC, SCANS_TOPIC)
DEADLETTER_TOPIC = "events.deadletter"
TAG_CHANGES_TOPIC = "tags.changes"
TIER_CHANGES_TOPIC = "tiers.changes"
# Each member's current profile (DESIGN.md shape), keyed by member_id, compacted: what the
# Redis sink serves from, so a Redis outage never stalls tagging and Redis catches up after.
PROFILES_TOPIC = "members.profiles"
# Internal: events that arrived on the wrong partition (wrong or missing key, or a producer
# with another partitioner) are forwarded here to their member's partition; timer ticks too.
REROUTE_TOPIC = "tagstream-events.reroute"

ALL_TOPIC_NAMES = EVENT_TOPICS + (DEADLETTER_TOPIC, TAG_CHANGES_TOPIC, TIER_CHANGES_TOPIC,
                                  PROFILES_TOPIC, REROUTE_TOPIC)


@dataclass(frozen=True)
class Topics:
    """The app's Faust topic objects; all co-partitioned so a member's partition is the same
    number on every topic and in the state table's changelog."""

    inbound: Any  # events.* and the re-route topic, consumed by the member agent
    reroute: Any
    deadletter: Any
    tag_changes: Any
    tier_changes: Any
    profiles: Any


def declare_topics(app: Any, partitions: int) -> Topics:
    def topic(*names: str) -> Any:
        return app.topic(*names, key_serializer="raw", value_serializer="raw",
                         partitions=partitions)

    return Topics(
        inbound=topic(*EVENT_TOPICS, REROUTE_TOPIC),
        reroute=topic(REROUTE_TOPIC),
        deadletter=topic(DEADLETTER_TOPIC),
        tag_changes=topic(TAG_CHANGES_TOPIC),
        tier_changes=topic(TIER_CHANGES_TOPIC),
        profiles=topic(PROFILES_TOPIC),
    )


def topic_partitions(partitions: int) -> dict[str, int]:
    """What `ensure_topics` creates: every topic with the same partition count."""
    return {name: partitions for name in ALL_TOPIC_NAMES}
