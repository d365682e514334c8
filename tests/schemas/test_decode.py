"""decode_event: every event type decodes on its topic; everything else is rejected with a reason
its producer can act on, and nothing but EventRejected ever escapes (the agent must never crash
on input)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import events as ev
from schemas.decode import decode_event
from schemas.errors import EventRejected
from schemas.events import (
    INTERACTIONS_TOPIC,
    MAX_EVENT_BYTES,
    ORDERS_TOPIC,
    SCANS_TOPIC,
    TOPIC_BY_EVENT_TYPE,
)

AT = "2024-03-01T12:00:00+08:00"
AT_PARSED = datetime(2024, 3, 1, 12, 0, tzinfo=timezone(timedelta(hours=8)))
ITEM = {"sku": "MT-53-500", "category": "baijiu", "unit_price_fen": 149900, "quantity": 2}
WECOM = {"guide_id": "zhangsan", "external_userid": "wmAbC123"}
SCAN = {"code_id": "C-0001", "sku": "MT-53-500", "category": "baijiu"}

# Fields each event type requires beyond the common ones.
REQUIRED_EXTRA: dict[str, dict[str, Any]] = {
    "order.paid": {"order_id": "T20240301-1", "amount_fen": 299800, "items": [ITEM]},
    "order.refunded": {"order_id": "T20240301-1", "amount_fen": 149900},
    "interaction.wecom_friend_added": WECOM,
    "interaction.wecom_friend_removed": WECOM,
    "interaction.consent_changed": {"marketing": False},
    "interaction.erasure_requested": {},
    "interaction.tag_marked": {"tag": "vip_banquet", "op": "added", "source": "guide",
                               "guide_id": "zhangsan"},
    "interaction.task_done": {"task_id": "0123456789abcdef0123456789abcdef",
                              "guide_id": "zhangsan"},
    "scan.verified": SCAN,
    "scan.cap_opened": SCAN,
}


def event(event_type: str = "order.paid", **fields: Any) -> dict[str, Any]:
    """A valid event of `event_type` as a dict; `fields` override or add (None-valued keys are
    dropped, to build a missing-field case)."""
    body: dict[str, Any] = {
        "event_id": f"{event_type}-000123", "event_type": event_type, "member_id": "M000123",
        "occurred_at": AT, "channel": "tmall", "schema_version": 1,
        **REQUIRED_EXTRA.get(event_type, {}),
    }
    body.update(fields)
    return {key: value for key, value in body.items() if value is not None}


def raw(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False).encode()


def without(event_type: str, field: str) -> dict[str, Any]:
    body = event(event_type)
    del body[field]
    return body


def nested(depth: int, leaf: bytes = b"1") -> bytes:
    return b'{"a":' * depth + leaf + b"}" * depth


def decode_or_reject(data: Any, topic: str | None) -> ev.Event | EventRejected:
    try:
        return decode_event(data, topic)
    except EventRejected as rejected:
        return rejected


# --- valid events: one of every type, on its own topic -------------------------------------

VALID = [
    pytest.param(
        ORDERS_TOPIC, event("order.paid", store_id="S-021", guide_id="zhangsan",
                            items=[ITEM, {**ITEM, "sku": "MT-50ml", "unit_price_fen": 0,
                                          "quantity": 1, "spec": "trial"}]),
        ev.OrderPaid,
        {"order_id": "T20240301-1", "amount_fen": 299800, "store_id": "S-021",
         "guide_id": "zhangsan"},
        id="order.paid",
    ),
    pytest.param(ORDERS_TOPIC, event("order.refunded"), ev.OrderRefunded,
                 {"order_id": "T20240301-1", "amount_fen": 149900, "items": None},
                 id="order.refunded"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.member_joined", store_id="S-021"),
                 ev.MemberJoined, {"store_id": "S-021", "campaign_id": None},
                 id="interaction.member_joined"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.sign_in"), ev.SignIn, {},
                 id="interaction.sign_in"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.share", campaign_id="cny-2024"),
                 ev.Share, {"campaign_id": "cny-2024"}, id="interaction.share"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.coupon_claimed", campaign_id="c1"),
                 ev.CouponClaimed, {"campaign_id": "c1"}, id="interaction.coupon_claimed"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.coupon_redeemed"), ev.CouponRedeemed,
                 {}, id="interaction.coupon_redeemed"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.lottery"), ev.Lottery, {},
                 id="interaction.lottery"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.browse"), ev.Browse, {},
                 id="interaction.browse"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.review"), ev.Review, {},
                 id="interaction.review"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.follow_official_account"),
                 ev.FollowOfficialAccount, {}, id="interaction.follow_official_account"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.event_attended", store_id="S-021"),
                 ev.EventAttended, {"store_id": "S-021"}, id="interaction.event_attended"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.profile_updated", birthday="02-29"),
                 ev.ProfileUpdated, {"birthday": "02-29"}, id="interaction.profile_updated"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.wecom_friend_added"),
                 ev.WecomFriendAdded, WECOM, id="interaction.wecom_friend_added"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.wecom_friend_removed"),
                 ev.WecomFriendRemoved, WECOM, id="interaction.wecom_friend_removed"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.consent_changed"),
                 ev.ConsentChanged, {"marketing": False}, id="interaction.consent_changed"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.erasure_requested", request_id="T-7"),
                 ev.ErasureRequested, {"request_id": "T-7"},
                 id="interaction.erasure_requested"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.tag_marked", tag="spring_tasting",
                                           op="added", source="import", name_zh="春季品鉴会",
                                           expires_at="2024-04-01T00:00:00+08:00"),
                 ev.TagMarked, {"tag": "spring_tasting", "op": "added", "source": "import",
                                "guide_id": "zhangsan", "name_zh": "春季品鉴会"},
                 id="interaction.tag_marked"),
    pytest.param(INTERACTIONS_TOPIC, event("interaction.task_done", note="客户下周到店"),
                 ev.TaskDone, {"task_id": "0123456789abcdef0123456789abcdef",
                               "guide_id": "zhangsan", "note": "客户下周到店"},
                 id="interaction.task_done"),
    pytest.param(SCANS_TOPIC, event("scan.verified", province="贵州", city="遵义"),
                 ev.ScanVerified, {**SCAN, "province": "贵州", "city": "遵义", "batch": None},
                 id="scan.verified"),
    pytest.param(SCANS_TOPIC, event("scan.cap_opened", batch="B2024-03", store_id="S-021"),
                 ev.CapOpened, {**SCAN, "batch": "B2024-03", "store_id": "S-021"},
                 id="scan.cap_opened"),
]


@pytest.mark.parametrize(("topic", "body", "cls", "expected"), VALID)
def test_valid_event_decodes_into_its_class(topic, body, cls, expected):
    decoded = decode_event(raw(body), topic)

    assert type(decoded) is cls
    assert decoded.event_type == body["event_type"]
    assert decoded.event_id == body["event_id"]
    assert decoded.member_id == "M000123"
    assert decoded.occurred_at == AT_PARSED
    assert decoded.occurred_at.utcoffset() == timedelta(hours=8)
    assert decoded.channel == "tmall"
    assert decoded.schema_version == 1
    for field, value in expected.items():
        assert getattr(decoded, field) == value, field


@pytest.mark.parametrize(("topic", "body", "cls", "expected"), VALID)
def test_valid_event_decodes_without_a_topic(topic, body, cls, expected):
    assert type(decode_event(raw(body))) is cls


def test_every_event_type_has_a_valid_example():
    assert {p.id for p in VALID} == set(TOPIC_BY_EVENT_TYPE)
    assert all(p.values[0] == TOPIC_BY_EVENT_TYPE[p.id] for p in VALID)


def test_order_items_decode_with_spec_default_and_amount():
    paid = decode_event(raw(VALID[0].values[1]), ORDERS_TOPIC)

    regular, trial = paid.items
    assert isinstance(regular, ev.Item)
    assert (regular.sku, regular.category, regular.spec) == ("MT-53-500", "baijiu", "regular")
    assert regular.amount_fen == 299800
    assert (trial.spec, trial.amount_fen) == ("trial", 0)


def test_utc_z_and_other_offsets_are_accepted():
    for stamp, offset in [("2024-03-01T04:00:00Z", 0), ("2024-03-01T04:00:00.123456+00:00", 0),
                          ("2024-02-29T20:00:00-08:00", -8)]:
        decoded = decode_event(raw(event(occurred_at=stamp)), ORDERS_TOPIC)
        assert decoded.occurred_at.utcoffset() == timedelta(hours=offset)


def test_unknown_extra_fields_are_ignored_for_forward_compatibility():
    body = event("order.paid", coupon_codes=["X"], buyer={"nick": "小王", "level": [1, {"a": 2}]},
                 items=[{**ITEM, "discount_fen": 100, "gift": True}])
    plain = event("order.paid")

    assert decode_event(raw(body), ORDERS_TOPIC) == decode_event(raw(plain), ORDERS_TOPIC)


def test_message_of_exactly_the_size_limit_is_accepted():
    body = event(padding="")
    body["padding"] = "x" * (MAX_EVENT_BYTES - len(raw(body)))
    data = raw(body)
    assert len(data) == MAX_EVENT_BYTES

    assert isinstance(decode_event(data, ORDERS_TOPIC), ev.OrderPaid)


# --- rejections: each with a reason a producer can act on ----------------------------------

GBK_MEMBER = raw(event()).replace(b'"M000123"', '"会员123"'.encode("gbk"))
OVERSIZED = raw(event(padding="x" * MAX_EVENT_BYTES))

REJECTED = [
    # shape
    pytest.param(ORDERS_TOPIC, raw(without("order.paid", "order_id")),
                 "missing required field `order_id`", id="missing-required-field"),
    pytest.param(ORDERS_TOPIC, raw(without("order.paid", "occurred_at")),
                 "missing required field `occurred_at`", id="missing-occurred_at"),
    pytest.param(ORDERS_TOPIC, raw(without("order.paid", "schema_version")),
                 "missing required field `schema_version`", id="missing-schema_version"),
    pytest.param(ORDERS_TOPIC, raw(event(member_id=123)),
                 "Expected `str`, got `int` - at `$.member_id`", id="wrong-type"),
    pytest.param(ORDERS_TOPIC, raw(event(items={"sku": "x"})),
                 "Expected `array`, got `object` - at `$.items`", id="wrong-type-items"),
    pytest.param(ORDERS_TOPIC, raw(event(items=[ITEM] * 201)),
                 "at `$.items`", id="too-many-items"),
    # event_type and topic
    pytest.param(ORDERS_TOPIC, raw(event("order.shipped")),
                 "unknown event_type 'order.shipped'", id="unknown-event_type"),
    pytest.param(ORDERS_TOPIC, raw(without("order.paid", "event_type")),
                 "missing required field `event_type`", id="missing-event_type"),
    pytest.param(SCANS_TOPIC, raw(event("order.paid")),
                 "event_type 'order.paid' belongs on topic 'events.orders', not 'events.scans'",
                 id="wrong-topic-order-on-scans"),
    pytest.param(ORDERS_TOPIC, raw(event("interaction.sign_in")),
                 "belongs on topic 'events.interactions'", id="wrong-topic-interaction-on-orders"),
    pytest.param(INTERACTIONS_TOPIC, raw(event("scan.cap_opened")),
                 "belongs on topic 'events.scans'", id="wrong-topic-scan-on-interactions"),
    # money: integer fen only
    pytest.param(ORDERS_TOPIC, raw(event(amount_fen=100.0)),
                 "Expected `int`, got `float` - at `$.amount_fen`", id="float-money"),
    pytest.param(ORDERS_TOPIC, raw(event(items=[{**ITEM, "unit_price_fen": 99.5}])),
                 "Expected `int`, got `float` - at `$.items[0].unit_price_fen`",
                 id="float-item-price"),
    pytest.param(ORDERS_TOPIC, raw(event(amount_fen=True)),
                 "Expected `int`, got `bool` - at `$.amount_fen`", id="bool-money"),
    pytest.param(ORDERS_TOPIC, raw(event(amount_fen="100")),
                 "Expected `int`, got `str` - at `$.amount_fen`", id="string-money"),
    pytest.param(ORDERS_TOPIC, raw(event(amount_fen=-1)),
                 "Expected `int` >= 0 - at `$.amount_fen`", id="negative-money"),
    pytest.param(ORDERS_TOPIC, raw(event("order.refunded", amount_fen=10**13)),
                 "at `$.amount_fen`", id="absurd-money"),
    # time
    pytest.param(ORDERS_TOPIC, raw(event(occurred_at="2024-03-01T12:00:00")),
                 "timezone component - at `$.occurred_at`", id="naive-timestamp"),
    pytest.param(ORDERS_TOPIC, raw(event(occurred_at="2024/03/01 12:00:00+08:00")),
                 "Invalid RFC3339 encoded datetime - at `$.occurred_at`",
                 id="non-rfc3339-timestamp"),
    pytest.param(ORDERS_TOPIC, raw(event(occurred_at="2024-03-01")),
                 "at `$.occurred_at`", id="date-only-timestamp"),
    pytest.param(ORDERS_TOPIC, raw(event(occurred_at=1709265600)),
                 "at `$.occurred_at`", id="epoch-seconds-timestamp"),
    # identifiers
    pytest.param(ORDERS_TOPIC, raw(event(event_id="")),
                 "Expected `str` of length >= 1 - at `$.event_id`", id="event_id-empty"),
    pytest.param(ORDERS_TOPIC, raw(event(event_id="e" * 129)),
                 "Expected `str` of length <= 128 - at `$.event_id`", id="event_id-129-chars"),
    pytest.param(ORDERS_TOPIC, raw(event(event_id=0)),
                 "Expected `str`, got `int` - at `$.event_id`", id="event_id-number-0"),
    pytest.param(ORDERS_TOPIC, raw(event(member_id="M 000123")),
                 "at `$.member_id`", id="member_id-inner-space"),
    pytest.param(ORDERS_TOPIC, raw(event(member_id="\tM000123")),
                 "at `$.member_id`", id="member_id-leading-tab"),
    pytest.param(ORDERS_TOPIC, raw(event(member_id="M000123\u3000")),
                 "at `$.member_id`", id="member_id-ideographic-space"),
    pytest.param(ORDERS_TOPIC, raw(event(member_id="")),
                 "at `$.member_id`", id="member_id-empty"),
    # the bytes themselves
    pytest.param(ORDERS_TOPIC, OVERSIZED,
                 f"message is {len(OVERSIZED)} bytes; the limit is {MAX_EVENT_BYTES}",
                 id="oversized"),
    pytest.param(ORDERS_TOPIC, b"", "empty message value", id="empty-value"),
    pytest.param(ORDERS_TOPIC, None, "empty message value", id="none-value"),
    pytest.param(ORDERS_TOPIC, b"order.paid M000123 299800", "not valid UTF-8 JSON",
                 id="non-json"),
    pytest.param(ORDERS_TOPIC, raw(event())[:-1], "not valid UTF-8 JSON", id="truncated-json"),
    pytest.param(ORDERS_TOPIC, b"\xff\xfe" + raw(event()), "not valid UTF-8 JSON",
                 id="non-utf8-bytes"),
    pytest.param(ORDERS_TOPIC, raw(event()).decode().encode("utf-16"), "not valid UTF-8 JSON",
                 id="utf16-encoded"),
    pytest.param(ORDERS_TOPIC, b"[" + raw(event()) + b"]", "Expected `object`, got `array`",
                 id="json-array"),
    pytest.param(ORDERS_TOPIC, b"299800", "Expected `object`, got `int`", id="json-number"),
    pytest.param(ORDERS_TOPIC, json.dumps(raw(event()).decode()).encode(),
                 "Expected `object`, got `str`", id="json-string"),
    pytest.param(ORDERS_TOPIC, b"null", "Expected `object`, got `null`", id="json-null"),
    # field values
    pytest.param(ORDERS_TOPIC, raw(event(items=[{**ITEM, "quantity": 0}])),
                 "Expected `int` >= 1 - at `$.items[0].quantity`", id="item-quantity-0"),
    pytest.param(ORDERS_TOPIC, raw(event(items=[{**ITEM, "spec": "sample"}])),
                 "Invalid enum value 'sample' - at `$.items[0].spec`", id="item-spec-unknown"),
    pytest.param(ORDERS_TOPIC, raw(event(items=[{**ITEM, "category": "Baijiu"}])),
                 "at `$.items[0].category`", id="item-category-uppercase"),
    pytest.param(INTERACTIONS_TOPIC, raw(event("interaction.profile_updated", birthday="13-01")),
                 "at `$.birthday`", id="birthday-month-13"),
    pytest.param(INTERACTIONS_TOPIC,
                 raw(event("interaction.profile_updated", birthday="1990-01-13")),
                 "at `$.birthday`", id="birthday-full-date"),
    pytest.param(ORDERS_TOPIC, raw(event(schema_version=2)),
                 "Invalid enum value 2 - at `$.schema_version`", id="schema_version-2"),
    pytest.param(ORDERS_TOPIC, raw(event(schema_version="1")),
                 "at `$.schema_version`", id="schema_version-string"),
    pytest.param(ORDERS_TOPIC, raw(event(channel="Tmall")),
                 "at `$.channel`", id="channel-uppercase"),
    pytest.param(INTERACTIONS_TOPIC, raw(without("interaction.wecom_friend_added", "guide_id")),
                 "missing required field `guide_id`", id="wecom-friend-without-guide"),
    pytest.param(INTERACTIONS_TOPIC, raw(event("interaction.task_done", task_id="t-1")),
                 "at `$.task_id`", id="task-done-id-not-a-task-id"),
    pytest.param(INTERACTIONS_TOPIC, raw(event("interaction.task_done", note="好" * 501)),
                 "at `$.note`", id="task-done-note-too-long"),
    pytest.param(SCANS_TOPIC, raw(without("scan.verified", "code_id")),
                 "missing required field `code_id`", id="scan-without-code"),
]


@pytest.mark.parametrize(("topic", "data", "reason_part"), REJECTED)
def test_rejected_with_producer_actionable_reason(topic, data, reason_part):
    with pytest.raises(EventRejected) as rejected:
        decode_event(data, topic)

    assert reason_part in rejected.value.reason
    assert str(rejected.value) == rejected.value.reason


def test_every_rejection_id_is_unique():
    ids = [p.id for p in REJECTED]
    assert len(ids) == len(set(ids))


# --- deep nesting: rejected or ignored, RecursionError never escapes -----------------------

VALID_ORDER = raw(event())


@pytest.mark.parametrize("depth", [10, 500, 5_000, 50_000], ids=lambda d: f"depth-{d}")
@pytest.mark.parametrize("where", [
    "top-level-arrays", "top-level-objects", "unknown-field-last", "unknown-field-first",
    "unknown-field-in-item", "unknown-field-with-unknown-event_type", "unterminated",
])
def test_deep_nesting_is_rejected_or_ignored_never_crashes(where, depth):
    deep = b"[" * depth + b"]" * depth
    data = {
        "top-level-arrays": deep,
        "top-level-objects": nested(depth),
        "unknown-field-last": VALID_ORDER[:-1] + b', "x": ' + deep + b"}",
        "unknown-field-first": b'{"x": ' + deep + b", " + VALID_ORDER[1:],
        "unknown-field-in-item": VALID_ORDER.replace(b'"quantity": 2', b'"x": ' + deep
                                                     + b', "quantity": 2'),
        "unknown-field-with-unknown-event_type":
            raw(event("order.shipped"))[:-1] + b', "x": ' + deep + b"}",
        "unterminated": VALID_ORDER[:-1] + b', "x": ' + b"[" * depth,
    }[where]

    result = decode_or_reject(data, ORDERS_TOPIC)

    assert isinstance(result, (ev.OrderPaid, EventRejected))
    if where.startswith("top-level") or where == "unterminated":
        assert isinstance(result, EventRejected)
    if isinstance(result, ev.OrderPaid):  # ignored, as any unknown field is
        assert result == decode_event(VALID_ORDER, ORDERS_TOPIC)


def test_deep_nesting_reason_says_so():
    with pytest.raises(EventRejected, match="nested too deeply"):
        decode_event(VALID_ORDER[:-1] + b', "x": ' + b"[" * 5_000 + b"]" * 5_000 + b"}",
                     ORDERS_TOPIC)


# --- regressions: one per bug found, named after what broke --------------------------------

def test_non_utf8_inside_a_string_is_rejected_not_a_unicode_decode_error():
    # msgspec raised UnicodeDecodeError (not DecodeError) for a GBK-encoded member_id, and it
    # escaped decode_event, crashing the agent instead of dead-lettering the event.
    with pytest.raises(EventRejected, match="not valid UTF-8"):
        decode_event(GBK_MEMBER, ORDERS_TOPIC)


def test_non_utf8_in_an_unknown_field_of_a_bad_event_type_is_rejected_not_a_crash():
    # The event_type probe that explains tag errors decodes the whole value and hit the same
    # UnicodeDecodeError in a field the main decoder never reached.
    data = raw(event("order.shipped"))[:-1] + b', "note": "' + "备注".encode("gbk") + b'"}'
    with pytest.raises(EventRejected):
        decode_event(data, ORDERS_TOPIC)


def test_cesu8_surrogate_bytes_are_rejected_not_a_crash():
    data = raw(event()).replace(b"M000123", "M\ud800".encode("utf-8", "surrogatepass"))
    with pytest.raises(EventRejected, match="not valid UTF-8"):
        decode_event(data, ORDERS_TOPIC)


@pytest.mark.parametrize(("field", "value", "event_type"), [
    ("member_id", "M000123\n", "order.paid"),
    ("channel", "tmall\n", "order.paid"),
    ("birthday", "01-13\n", "interaction.profile_updated"),
], ids=["member_id", "channel", "birthday"])
def test_trailing_newline_is_rejected(field, value, event_type):
    # Python's `$` matches before a final "\n", so "M000123\n" passed ^[^\s]+$ and became a
    # second member (on another partition) beside "M000123".
    body = event(event_type, **{field: value})
    with pytest.raises(EventRejected, match=rf"at `\$\.{field}`"):
        decode_event(raw(body), TOPIC_BY_EVENT_TYPE[event_type])


def test_known_event_type_not_reported_unknown_when_another_value_quotes_event_type():
    # A bad item spec of "event_type" made the reason "unknown event_type 'order.paid'".
    body = event(items=[{**ITEM, "spec": "event_type"}])
    with pytest.raises(EventRejected) as rejected:
        decode_event(raw(body), ORDERS_TOPIC)

    assert "$.items[0].spec" in rejected.value.reason
    assert "unknown event_type" not in rejected.value.reason


# --- property: nothing but an Event or EventRejected, for any input ------------------------

TOPICS = [None, ORDERS_TOPIC, INTERACTIONS_TOPIC, SCANS_TOPIC]
FIELDS = sorted({*event("order.paid"), *ITEM, *SCAN, *WECOM, "birthday", "x"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text()
    | st.sampled_from(["", AT, "2024-03-01T12:00:00", "order.paid", "scan.verified", "trial"]),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=12) | st.sampled_from(FIELDS), children, max_size=5),
    max_leaves=40,
)


def encode_loosely(value: Any) -> bytes:
    # allow_nan emits NaN/Infinity (not JSON); surrogatepass emits CESU-8 (not UTF-8): both are
    # inputs a broken producer can send.
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def assert_event_or_rejected(data: Any, topic: str | None) -> None:
    try:
        result = decode_event(data, topic)
    except EventRejected as rejected:
        assert rejected.reason
    else:
        assert isinstance(result, ev.Event)


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=512), topic=st.sampled_from(TOPICS))
def test_any_bytes_decode_or_are_rejected(data, topic):
    assert_event_or_rejected(data, topic)


@FUZZ
@given(value=json_values, topic=st.sampled_from(TOPICS))
def test_any_json_value_decodes_or_is_rejected(value, topic):
    assert_event_or_rejected(encode_loosely(value), topic)


@FUZZ
@given(
    event_type=st.sampled_from(sorted(TOPIC_BY_EVENT_TYPE)),
    changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=4),
    item_changes=st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3),
    topic=st.sampled_from(TOPICS),
)
def test_any_mutation_of_a_valid_event_decodes_or_is_rejected(event_type, changes, item_changes,
                                                              topic):
    body = event(event_type)
    body["items"] = [{**ITEM, **item_changes}]
    body.update(changes)
    assert_event_or_rejected(encode_loosely(body), topic)


@FUZZ
@given(data=st.binary(max_size=64), cut=st.integers(min_value=0, max_value=400),
       topic=st.sampled_from(TOPICS))
def test_any_corruption_of_a_valid_event_decodes_or_is_rejected(data, cut, topic):
    valid = raw(event("order.paid"))
    cut = min(cut, len(valid))
    assert_event_or_rejected(valid[:cut] + data + valid[cut:], topic)


def test_no_event_class_is_subclassed() -> None:
    """The engine tells events apart by their exact class (`type(event) is OrderPaid`,
    taggers/engine.py): a subclass of an event class would pass as none of them."""
    classes = [cls for family in ev.FAMILY_BY_TOPIC.values() for cls in family.__args__]
    assert len(classes) == len(ev.TOPIC_BY_EVENT_TYPE)
    assert [cls.__name__ for cls in classes if cls.__subclasses__()] == []


# --- the patterns the decoder checks itself (schemas/events.py, MemberId, Channel, Category) ---


@pytest.mark.parametrize(("topic", "body", "where"), [
    (ORDERS_TOPIC, event(member_id="M 123"), "member_id"),
    (ORDERS_TOPIC, event(member_id="M\u3000123"), "member_id"),  # a Unicode space
    (ORDERS_TOPIC, event(items=[ITEM, ITEM, {**ITEM, "category": "bai jiu"}]),
     "items[2].category"),
    (SCANS_TOPIC, event("scan.cap_opened", **{**SCAN, "category": "Baijiu"}), "category"),
], ids=["member-space", "member-unicode-space", "third-item", "scan-category"])
def test_pattern_rejections_read_as_msgspec_wrote_them(topic, body, where):
    pattern = ev.MEMBER_ID_PATTERN if where == "member_id" else ev.CODE_NAME_PATTERN
    expected = f"invalid event: Expected `str` matching regex {pattern!r} - at `$.{where}`"
    for _ in range(2):  # a rejected value is not remembered as accepted
        with pytest.raises(EventRejected) as rejected:
            decode_event(raw(body), topic)
        assert rejected.value.reason == expected


def test_accepted_values_are_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch):
    from schemas import decode
    monkeypatch.setattr(decode._MEMBER_ID, "accepted", set())
    monkeypatch.setattr(decode._MEMBER_ID, "MAX_REMEMBERED", 3)
    for n in range(7):
        decode_event(raw(event(member_id=f"M{n}")), ORDERS_TOPIC)
        assert 1 <= len(decode._MEMBER_ID.accepted) <= 3
    assert "M6" in decode._MEMBER_ID.accepted
    with pytest.raises(EventRejected, match="member_id"):
        decode_event(raw(event(member_id="M6 ")), ORDERS_TOPIC)


def _decoder_pattern_paths(info: Any, path: str) -> set[str]:
    """Paths under `info` whose pattern is only in the JSON Schema (extra_json_schema), so
    msgspec does not check it."""
    import msgspec.inspect as mi
    if isinstance(info, mi.Metadata):
        if "pattern" in (info.extra_json_schema or {}):
            return {path}
        return _decoder_pattern_paths(info.type, path)
    if isinstance(info, mi.UnionType):
        return set().union(*(_decoder_pattern_paths(t, path) for t in info.types))
    if isinstance(info, mi.VarTupleType):
        return _decoder_pattern_paths(info.item_type, path + "[]")
    if isinstance(info, mi.StructType):
        return set().union(*(_decoder_pattern_paths(f.type, f"{path}.{f.name}".lstrip("."))
                             for f in info.fields))
    return set()


def test_every_pattern_msgspec_leaves_is_checked_by_the_decoder():
    import msgspec.inspect as mi
    from schemas import decode
    for family in ev.FAMILY_BY_TOPIC.values():
        for cls in family.__args__:
            has_items, has_category = decode._SHAPES[cls]
            checked = ({"member_id", "channel"} | ({"items[].category"} if has_items else set())
                       | ({"category"} if has_category else set()))
            assert _decoder_pattern_paths(mi.type_info(cls), "") == checked, cls
