"""Per-member rolling state: the only thing the engine remembers about a member.

Bounded by design: window counters are sparse daily buckets kept only as long as the longest
window that reads them; recent event ids are a capped ring; nothing grows with the number of
events. Serialised as compact msgpack arrays for the Faust table and its changelog.
"""

from __future__ import annotations

import msgspec


# How many recent event ids a member remembers for redelivery checks. An event older than
# the oldest remembered id is treated as too late to apply (dead-lettered, never applied twice).
SEEN_CAPACITY = 64



class LoyaltyState(msgspec.Struct, array_like=True, gc=False):
    level: str  # level id
    tier_since: int  # when the member reached the level (first event for the lowest level)
    review_at: int | None = None  # next anniversary review; None on the lowest level
    warned_review: int | None = None  # the review whose downgrade warning has fired
    # growth per local day: flat [gap, growth, gap, growth, ...]; the first gap counts from
    # day 0, so a day is the running sum of gaps (1-byte gaps keep a daily member small)
    growth: list[int] = []
    # capped sources: event type -> {local day: growth awarded that day}
    caps: dict[str, dict[int, int]] = {}
    lots: list[int] = []  # flat [earned local year, points, ...], oldest first
    warned_year: int = 0  # lots up to this year have had their expiry warning
    # refund ledger: flat rows of _ORDER_STRIDE ints, oldest first
    orders: list[int] = []
    shortfall: int = 0  # points clawed back that the balance could not cover

    @property
    def points(self) -> int:
        return sum(self.lots[1::2])

class OrderStats(msgspec.Struct, array_like=True, gc=False):
    count: int = 0
    distinct_days: int = 0
    last_day: int = -1
    spend_fen: int = 0
    refund_fen: int = 0
    first_at: int | None = None
    last_at: int | None = None


class GuideLink(msgspec.Struct, array_like=True, frozen=True, gc=False):
    userid: str
    external_userid: str | None = None


class HeldTag(msgspec.Struct, array_like=True, gc=False):
    since: int
    rules_version: str
    evidence: dict[str, object] = {}
    until: int | None = None  # a tag with a ttl is held at least until then
    source: str = "rule"  # where the tag came from: rule, guide, wecom or import


class HeldTask(msgspec.Struct, array_like=True, gc=False):
    """A guide task the member's state still needs (taggers/tasks.py): open ones, and closed
    ones until `closed_at + convert_within_s` (a done one can convert until then; any closed
    one still answers a late `interaction.task_done` as a no-op rather than an unknown id).
    It carries everything its next record repeats, so a rule-file change cannot alter it."""

    task_id: str
    kind: str
    guide: str
    name_zh: str
    script_zh: str
    priority: str
    trigger: dict[str, str]
    evidence: dict[str, object]
    rules_version: str
    opened_at: int
    due_at: int
    expires_at: int
    convert_within_s: int
    lapse: bool  # closes as lapsed when its trigger tag is removed
    status: str = "open"
    version: int = 1
    closed_at: int | None = None
    closed_by: str | None = None
    note: str | None = None
    converted_at: int | None = None


class MemberState(msgspec.Struct, array_like=True, gc=False):
    member_id: str
    joined_at: int | None = None
    birthday: str | None = None
    orders: OrderStats = msgspec.field(default_factory=OrderStats)
    # daily counter name -> flat [day, value, day, value, ...], days ascending
    counters: dict[str, list[int]] = {}
    # distinct counter name -> flat [key hash, last day seen, ...]
    distinct: dict[str, list[int]] = {}
    # tracker name -> flat [key, started at, ...]
    pending: dict[str, list[str | int]] = {}
    tags: dict[str, HeldTag] = {}
    ever: list[str] = []  # tag ids this member has held at some time (for had_tag)
    guides: list[GuideLink] = []
    # recent event ids: flat [hash64, occurred_at, ...], oldest first
    seen: list[int] = []
    watermark: int | None = None  # newest instant this member's state reflects
    next_deadline: int | None = None  # earliest instant a time-based rule may change a tag
    rules_version: str = ""
    loyalty: LoyaltyState | None = None  # tier, growth and points (taggers/loyalty.py)
    # flat [unit index, deadline, ...]: when each rule unit can next change by time alone, so
    # a deadline re-evaluates only the rules due then (indexes of the pack `rules_version`)
    unit_deadlines: list[int] = []
    marketing: bool = True  # consent to marketing (interaction.consent_changed)
    # The worker's redelivery guard: per topic consumed from, the highest offset of this
    # member's events applied. A member's events of one topic come in offset order and are
    # applied in time order, so an event at or below it that the engine would refuse as late
    # was applied (or dead-lettered) already: a redelivery after a takeover, even one the
    # `seen` ring has forgotten. Empty in the dry run, which never redelivers.
    applied: dict[str, int] = {}
    # Guide tasks (客户SOP) still open or still able to convert, oldest first (taggers/tasks.py).
    tasks: list[HeldTask] = []


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(MemberState)

# A state's fields up to next_deadline, the ones before it kept as undecoded msgpack: reading
# a stored state's deadline this way costs about a third of decoding the state (a fresh
# worker reads every stored deadline to rebuild its deadline heaps).
_DEADLINE_AT = MemberState.__struct_fields__.index("next_deadline")
_DeadlineOnly = msgspec.defstruct(
    "_DeadlineOnly",
    [(name, msgspec.Raw, msgspec.Raw()) for name in MemberState.__struct_fields__[:_DEADLINE_AT]]
    + [("next_deadline", int | None, None)],
    array_like=True, gc=False)
_deadline_decoder = msgspec.msgpack.Decoder(_DeadlineOnly)


def encode_state(state: MemberState) -> bytes:
    return _encoder.encode(state)


def decode_state(raw: bytes) -> MemberState:
    return _decoder.decode(raw)


def decode_next_deadline(raw: bytes) -> int | None:
    """`decode_state(raw).next_deadline`, without decoding the rest of the state."""
    return _deadline_decoder.decode(raw).next_deadline  # type: ignore[attr-defined]
