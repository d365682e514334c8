"""Every Kafka topic tagstream reads or writes (DESIGN.md "Topics"), declared in one place.

The constants are the canonical names. The names on the broker are the canonical names with
the topic namespace (TAGSTREAM_TOPIC_NAMESPACE) before them: `TopicNames` holds them, and
every component that names a topic takes them from it. Whatever decides by the kind of a
topic (the event family it accepts, tie ranks, the feed's cursor codes) maps the name on the
broker back to its canonical name with `TopicNames.canonical`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.events import INTERACTIONS_TOPIC, ORDERS_TOPIC, SCANS_TOPIC
from streams.platform.settings import Settings, check_topic_namespace

EVENT_TOPICS = (ORDERS_TOPIC, INTERACTIONS_TOPIC, SCANS_TOPIC)
DEADLETTER_TOPIC = "events.deadletter"
TAG_CHANGES_TOPIC = "tags.changes"
TIER_CHANGES_TOPIC = "tiers.changes"
# What each member's WeCom customers must add and remove (schemas/wecom.py), keyed by
# member_id: the WeCom sync's only input.
WECOM_MARKS_TOPIC = "wecom.marks"
# One record per member erased (schemas/erasure.py), with no personal data.
ERASURES_TOPIC = "members.erasures"
# Guide tasks (客户SOP, schemas/tasks.py), keyed by member_id: each record is a task's whole
# newest state (consumers keep the highest version); a tombstone means the member was erased.
TASK_CHANGES_TOPIC = "tasks.changes"
# Internal: events that arrived on the wrong partition (wrong or missing key, or a producer
# with another partitioner) are forwarded here to their member's partition; timer ticks too.
REROUTE_TOPIC = "tagstream-events.reroute"

ALL_TOPIC_NAMES = EVENT_TOPICS + (DEADLETTER_TOPIC, TAG_CHANGES_TOPIC, TIER_CHANGES_TOPIC,
                                  REROUTE_TOPIC, WECOM_MARKS_TOPIC, ERASURES_TOPIC,
                                  TASK_CHANGES_TOPIC)


@dataclass(frozen=True)
class TopicNames:
    """The names on the broker of every tagstream topic, for one namespace."""

    namespace: str
    orders: str
    interactions: str
    scans: str
    deadletter: str
    tag_changes: str
    tier_changes: str
    reroute: str
    wecom_marks: str
    erasures: str
    task_changes: str
    # Derived: the three event topics (in EVENT_TOPICS order), those and the re-route topic
    # (what the member agent consumes), and every topic (in ALL_TOPIC_NAMES order).
    events: tuple[str, str, str] = field(init=False, repr=False, compare=False)
    inbound: tuple[str, ...] = field(init=False, repr=False, compare=False)
    all: tuple[str, ...] = field(init=False, repr=False, compare=False)
    _canonical: dict[str, str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        events = (self.orders, self.interactions, self.scans)
        every = events + (self.deadletter, self.tag_changes, self.tier_changes, self.reroute,
                          self.wecom_marks, self.erasures, self.task_changes)
        object.__setattr__(self, "events", events)
        object.__setattr__(self, "inbound", events + (self.reroute,))
        object.__setattr__(self, "all", every)
        object.__setattr__(self, "_canonical", dict(zip(every, ALL_TOPIC_NAMES)))

    @classmethod
    def for_namespace(cls, namespace: str = "") -> "TopicNames":
        """The names with `namespace` before each canonical name ("" gives the canonical names)."""
        check_topic_namespace(namespace)
        return cls(namespace, *(namespace + name for name in ALL_TOPIC_NAMES))

    def canonical(self, name: str) -> str | None:
        """The canonical name of a topic of this namespace (None for any other topic)."""
        return self._canonical.get(name)

    def actual(self, canonical: str) -> str:
        """The name on the broker of a canonical name (also of a tool's own topic)."""
        return self.namespace + canonical


def topic_names(settings: Settings) -> TopicNames:
    """The topic names the settings' components read and write."""
    return TopicNames.for_namespace(settings.topic_namespace)


# The worker's state table. Faust names its changelog `<app id>-<table>-changelog`: each
# member's newest state keyed by member_id, compacted, written once the batch's outputs are
# delivered. The Redis sink renders and serves profiles from it, so a Redis outage never
# stalls tagging and Redis catches up after.
MEMBERS_TABLE = "members"
# The changelog is compacted (Faust's default), but Kafka compacts only closed segments and
# the default segment is 1 GiB: at ~1,000 bytes a state, 100,000 members would never leave
# the active segment, and a worker on a new disk or a sink rebuilding an empty Redis would
# read every state ever written. Smaller segments keep the log near one record per member.
MEMBERS_CHANGELOG_CONFIG = {
    "segment.bytes": str(16 * 1024 * 1024),
    "min.cleanable.dirty.ratio": "0.2",
}


def members_changelog(settings: Settings) -> str:
    return f"{settings.app_id}-{MEMBERS_TABLE}-changelog"


@dataclass(frozen=True)
class Topics:
    """The app's Faust topic objects; all co-partitioned so a member's partition is the same
    number on every topic and in the state table's changelog."""

    inbound: Any  # events.* and the re-route topic, consumed by the member agent
    reroute: Any
    deadletter: Any
    tag_changes: Any
    tier_changes: Any


def declare_topics(app: Any, partitions: int, names: TopicNames) -> Topics:
    def topic(*topic_names: str) -> Any:
        return app.topic(*topic_names, key_serializer="raw", value_serializer="raw",
                         partitions=partitions)

    return Topics(
        inbound=topic(*names.inbound),
        reroute=topic(names.reroute),
        deadletter=topic(names.deadletter),
        tag_changes=topic(names.tag_changes),
        tier_changes=topic(names.tier_changes),
    )


def topic_partitions(partitions: int, names: TopicNames) -> dict[str, int]:
    """What `ensure_topics` creates: every topic with the same partition count."""
    return {name: partitions for name in names.all}
