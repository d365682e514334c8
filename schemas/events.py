"""Typed, frozen models of the inbound events (DESIGN.md "Events") and their decoder.

Everything past the Kafka edge works on these models, never on dicts. Decoding is one pass
with msgspec's typed JSON decoder: it checks UTF-8, JSON syntax, field types, lengths and the
event_type tag together (0.2 µs per order event, vs 2.7 µs for orjson.loads + a separate
validation pass), and its errors name the offending path, e.g. "Expected `int`, got `float`
- at `$.amount_fen`", which is what a producer needs to fix their payload.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, ClassVar, Literal, Union

import msgspec
from msgspec import Meta

# Limits a producer can see in the exported JSON Schema. Generous for real data, small
# enough that one hostile message cannot bloat a member's state or the dead-letter topic.
MAX_EVENT_BYTES = 256 * 1024

EventId = Annotated[str, Meta(min_length=1, max_length=128)]
# Patterns end in `$(?!\n)`, not `$`: they are matched with Python's re.search, where `$` also
# matches before a final "\n", so "M000123\n" passed as a member_id. The lookahead closes that
# gap and is a no-op in ECMA-262, the regex dialect of the exported JSON Schema.
# The three patterns every event carries (MemberId, Channel, Category) are in the exported
# JSON Schema but checked by schemas/decode.py, not by msgspec: msgspec calls the regex's
# `search` through a generic method call per field, a twentieth of a dry run's instructions,
# and these values repeat, so the decoder matches each distinct one once.
MEMBER_ID_PATTERN = r"^[^\s]+$(?!\n)"
CODE_NAME_PATTERN = r"^[a-z0-9_]+$(?!\n)"
MemberId = Annotated[str, Meta(min_length=1, max_length=64,
                               extra_json_schema={"pattern": MEMBER_ID_PATTERN})]
ShortName = Annotated[str, Meta(min_length=1, max_length=64)]
Code = Annotated[str, Meta(min_length=1, max_length=128)]
Channel = Annotated[str, Meta(min_length=1, max_length=32,
                              extra_json_schema={"pattern": CODE_NAME_PATTERN})]
Category = Annotated[str, Meta(min_length=1, max_length=32,
                               extra_json_schema={"pattern": CODE_NAME_PATTERN})]
Fen = Annotated[int, Meta(ge=0, le=10**12)]  # money is integer fen; floats are rejected
AwareTime = Annotated[datetime, Meta(tz=True)]  # naive timestamps are rejected
MonthDay = Annotated[str, Meta(pattern=r"^(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$(?!\n)")]
Spec = Literal["regular", "trial"]


class Item(msgspec.Struct, frozen=True, kw_only=True, gc=False, forbid_unknown_fields=False):
    sku: Code
    category: Category
    unit_price_fen: Fen
    quantity: Annotated[int, Meta(ge=1, le=100_000)]
    spec: Spec = "regular"

    @property
    def amount_fen(self) -> int:
        return self.unit_price_fen * self.quantity


Items = Annotated[tuple[Item, ...], Meta(max_length=200)]


class Event(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="event_type"):
    """Fields common to every event. Unknown extra fields are ignored (forward compatible)."""

    event_id: EventId
    member_id: MemberId
    occurred_at: AwareTime
    channel: Channel
    schema_version: Literal[1]
    # The type's tag, set on each event class below: a plain class attribute, because reading
    # __struct_config__ builds a new config object on every access (the engine reads the
    # type several times per event).
    event_type: ClassVar[str]


# --- events.orders -------------------------------------------------------------------------


class OrderPaid(Event, tag="order.paid", kw_only=True):
    order_id: Code
    amount_fen: Fen
    items: Items
    store_id: ShortName | None = None
    guide_id: ShortName | None = None


class OrderRefunded(Event, tag="order.refunded", kw_only=True):
    order_id: Code
    amount_fen: Fen
    items: Items | None = None


# --- events.interactions -------------------------------------------------------------------


class Interaction(Event, kw_only=True):
    campaign_id: ShortName | None = None
    store_id: ShortName | None = None


class MemberJoined(Interaction, tag="interaction.member_joined", kw_only=True):
    pass


class SignIn(Interaction, tag="interaction.sign_in", kw_only=True):
    pass


class Share(Interaction, tag="interaction.share", kw_only=True):
    pass


class CouponClaimed(Interaction, tag="interaction.coupon_claimed", kw_only=True):
    pass


class CouponRedeemed(Interaction, tag="interaction.coupon_redeemed", kw_only=True):
    pass


class Lottery(Interaction, tag="interaction.lottery", kw_only=True):
    pass


class Browse(Interaction, tag="interaction.browse", kw_only=True):
    pass


class Review(Interaction, tag="interaction.review", kw_only=True):
    pass


class FollowOfficialAccount(Interaction, tag="interaction.follow_official_account", kw_only=True):
    pass


class EventAttended(Interaction, tag="interaction.event_attended", kw_only=True):
    pass


class ProfileUpdated(Interaction, tag="interaction.profile_updated", kw_only=True):
    birthday: MonthDay | None = None


class ConsentChanged(Interaction, tag="interaction.consent_changed", kw_only=True):
    """The member allows (true) or refuses (false) marketing based on automated decisions
    (PIPL Art. 24): while refused, tagstream's tags are taken off their WeCom customers."""

    marketing: bool


class ErasureRequested(Interaction, tag="interaction.erasure_requested", kw_only=True):
    """Delete the member (PIPL): their state, served profile and tagstream's tags in WeCom.
    `request_id` names the request (e.g. the privacy desk's ticket) in the erasure record."""

    request_id: ShortName | None = None


MarkedTagId = Annotated[str, Meta(min_length=1, max_length=64,
                                   pattern=r"^[A-Za-z0-9][A-Za-z0-9_:.-]*$(?!\n)")]
TagNameZh = Annotated[str, Meta(min_length=1, max_length=30)]  # WeCom's corp tag name limit


class TagMarked(Interaction, tag="interaction.tag_marked", kw_only=True):
    """A tag a person set or took off, not a rule: a guide through the API (`guide`), a guide
    in WeCom's own customer page (`wecom`, read from the callback), or an operator's campaign
    list (`import`). Rules never remove such a tag; `expires_at` (imports with a ttl) does.
    A tag the rule pack does not declare under `marked_tags` needs `name_zh`."""

    tag: MarkedTagId
    op: Literal["added", "removed"]
    source: Literal["guide", "wecom", "import"]
    guide_id: ShortName | None = None  # who marked it; required for `guide` and `wecom`
    name_zh: TagNameZh | None = None
    expires_at: AwareTime | None = None

    def __post_init__(self) -> None:
        if self.source != "import" and self.guide_id is None:
            raise ValueError(f"a tag marked by source {self.source!r} names its guide_id")
        if self.expires_at is not None and self.expires_at <= self.occurred_at:
            raise ValueError("expires_at must be later than occurred_at")


TaskId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$(?!\n)")]  # schemas/tasks.py task_id_for
TaskNote = Annotated[str, Meta(max_length=500)]


class TaskDone(Interaction, tag="interaction.task_done", kw_only=True):
    """A guide marked one of their tasks (客户SOP, schemas/tasks.py) done, with an optional note.
    The engine closes the task in the member's event order; a task no longer open is left as
    it is, and an id the member never had is rejected."""

    task_id: TaskId
    guide_id: ShortName
    note: TaskNote | None = None


class WecomFriendAdded(Interaction, tag="interaction.wecom_friend_added", kw_only=True):
    guide_id: ShortName
    external_userid: Code


class WecomFriendRemoved(Interaction, tag="interaction.wecom_friend_removed", kw_only=True):
    guide_id: ShortName
    external_userid: Code


# --- events.scans --------------------------------------------------------------------------


class Scan(Event, kw_only=True):
    code_id: Code
    sku: Code
    category: Category
    batch: ShortName | None = None
    province: ShortName | None = None
    city: ShortName | None = None
    store_id: ShortName | None = None


class ScanVerified(Scan, tag="scan.verified", kw_only=True):
    pass


class CapOpened(Scan, tag="scan.cap_opened", kw_only=True):
    pass


OrderEvent = Union[OrderPaid, OrderRefunded]
InteractionEvent = Union[
    MemberJoined, SignIn, Share, CouponClaimed, CouponRedeemed, Lottery, Browse, Review,
    FollowOfficialAccount, EventAttended, ProfileUpdated, WecomFriendAdded, WecomFriendRemoved,
    ConsentChanged, ErasureRequested, TagMarked, TaskDone,
]
ScanEvent = Union[ScanVerified, CapOpened]
AnyEvent = Union[OrderEvent, InteractionEvent, ScanEvent]

ORDERS_TOPIC = "events.orders"
INTERACTIONS_TOPIC = "events.interactions"
SCANS_TOPIC = "events.scans"

# Each source topic accepts exactly its own family: an interaction on events.orders is a
# producer bug and is dead-lettered with a reason that says so.
FAMILY_BY_TOPIC: dict[str, object] = {
    ORDERS_TOPIC: OrderEvent,
    INTERACTIONS_TOPIC: InteractionEvent,
    SCANS_TOPIC: ScanEvent,
}


def _members(union: object) -> tuple[type[Event], ...]:
    return tuple(union.__args__)  # type: ignore[attr-defined]


for _family in FAMILY_BY_TOPIC.values():
    for _event_class in _members(_family):
        _event_class.event_type = _event_class.__struct_config__.tag  # type: ignore[misc]

EVENT_TYPES_BY_TOPIC: dict[str, tuple[str, ...]] = {
    topic: tuple(cls.event_type for cls in _members(family))
    for topic, family in FAMILY_BY_TOPIC.items()
}
TOPIC_BY_EVENT_TYPE: dict[str, str] = {
    event_type: topic for topic, types in EVENT_TYPES_BY_TOPIC.items() for event_type in types
}

# Events of one member at the same instant are applied interactions first, then orders, then
# scans (a member joins, then buys, then scans the bottle), and in arrival order within a
# topic. The stream and `tagstream dryrun` both order by (occurred_at, this rank, position).
TIE_RANK_BY_TOPIC: dict[str, int] = {INTERACTIONS_TOPIC: 0, ORDERS_TOPIC: 1, SCANS_TOPIC: 2}
