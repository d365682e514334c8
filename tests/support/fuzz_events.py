"""Hostile inbound messages for the bad-input fuzz tests (hypothesis strategies).

Each case is one Kafka message (topic, key, value), its topic a canonical name (the test puts
its topic namespace before it). Case `n` of run `run` gets the member id `F{run}-{n}` and event
id `fe-{run}-{n}` unless the case breaks those fields on purpose, and any member id it makes up
ends in `~{run}-{n}`: no two cases share a member, so each is its member's first event and its
outcome does not depend on how the worker interleaves topics. That makes the offline verdict
(`expected_verdict`) exact for the stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from schemas.decode import decode_event
from schemas.errors import EventRejected
from schemas.events import MAX_EVENT_BYTES, ORDERS_TOPIC, TOPIC_BY_EVENT_TYPE
from streams.platform.topics import EVENT_TOPICS
from taggers.engine import Engine
from tests.factories import raw_event

EVENT_TYPES = sorted(TOPIC_BY_EVENT_TYPE)
FIELDS = ["event_id", "event_type", "member_id", "occurred_at", "channel", "schema_version",
          "order_id", "amount_fen", "items", "code_id", "sku", "category", "store_id",
          "guide_id", "birthday", "external_userid", "campaign_id", "batch", "province"]


@dataclass(frozen=True)
class FuzzCase:
    kind: str
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str | None  # the dead-letter reason the worker must give when not accepted
    member_id: str | None


def expected_verdict(case: FuzzCase, engine: Engine, namespace: str = "") -> Verdict:
    """What the worker must do with `case`, sent under the topic `namespace`: the same pure
    functions it calls, offline."""
    try:
        event = decode_event(case.value, topic=case.topic, namespace=namespace)
        engine.apply(None, event)
    except EventRejected as rejected:
        return Verdict(False, rejected.reason, None)
    return Verdict(True, None, event.member_id)


# --- building blocks ------------------------------------------------------------------------

TIMESTAMPS = [
    "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-12:00", "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-12:00", "9999-12-31T23:59:59+14:00", "9999-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z", "1969-12-31T23:59:59-00:00", "1999-12-31T23:59:59+14:00",
    "2000-01-01T00:00:00-12:00", "2199-12-31T23:59:59+14:00", "2200-01-01T00:00:00-12:00",
    "2038-01-19T03:14:08Z", "2024-02-29T12:00:00+08:00", "2023-02-29T12:00:00+08:00",
    "2024-02-30T12:00:00+08:00", "2024-03-01T24:00:00+08:00", "2016-12-31T23:59:60Z",
    "2024-03-01T12:00:00.123456789+08:00", "2024-03-01t12:00:00+08:00", "2024-03-01 12:00:00Z",
    "2024-03-01T12:00:00", "2024-03-01T12:00:00+24:00", "2024-03-01T12:00:00+14:01",
    "2024-03-01T12:00:00+08", "2024-03-01", "20240301T120000Z", "", " ", "now", "-1",
    "2024-03-01T12:00:00+08:00\n", "\u0662\u0660\u0662\u0664-03-01T12:00:00+08:00",
]
ODD_TEXT = ["", " ", "\x00", "a\x00b", "\u202e\u200fRTL", "\u200b", "\ufeff", "😀🍶", "会员",
            "\ud7ff", "\ue000", "\U0010ffff", "M 1", "M\n", "M\t1", "x" * 65, "x" * 129,
            "\\", '"', "'", "NULL", "None", "\u0130", "é\u0301", "\u2028", "%s%n"]
# Lone surrogates and other escapes only JSON text can carry (not valid Python str to encode).
ESCAPED_TEXT = ['"\\ud800"', '"\\udfff"', '"\\ud83d"', '"\\ud83d\\ude00"', '"\\u0000"',
                '"a\\u0000b"', '"\\u202e"', '"\\uffff"', '"\\x41"', '"\\u12"', '"\\"']
WRONG_VALUES: list[Any] = [None, True, False, 0, -1, 1.5, 1e308, 10**30, -(10**30), 2**63,
                           "", "12", "1e3", [], [1], {}, {"a": 1}, "😀", 100.0]
GBK_TEXT = ["会员生日月", "白酒", "开盖扫码", "导购张三"]

text_values = st.one_of(st.sampled_from(ODD_TEXT), st.text(max_size=12))


def base_event(event_type: str, n: int, run: str, amount: int = 50_000) -> dict[str, Any]:
    body = raw_event(event_type, "2024-03-01T12:00:00+08:00", member=f"F{run}-{n}",
                     event_id=f"fe-{run}-{n}", amount_fen=amount)
    if not event_type.startswith("order."):
        body.pop("amount_fen")
    if event_type.startswith("interaction.wecom_friend"):
        body.update(guide_id="zhangsan", external_userid=f"wm-{run}-{n}")
    if event_type == "order.paid":
        body["items"] = [{"sku": "sku-1", "category": "baijiu", "unit_price_fen": amount,
                          "quantity": 1}]
    return body


def _dumps(body: Any) -> bytes:
    """Compact UTF-8 JSON; the standard library's encoder, as it also writes integers past
    64 bits (orjson refuses them) and non-finite floats (NaN, Infinity)."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _home_topic(body: dict[str, Any]) -> str:
    return TOPIC_BY_EVENT_TYPE.get(body.get("event_type"), ORDERS_TOPIC)  # type: ignore[arg-type]


def _unique_member(value: str, n: int, run: str) -> str:
    return f"{value}~{run}-{n}"


@st.composite
def fuzz_case(draw, n: int, run: str) -> FuzzCase:
    kind = draw(st.sampled_from(KINDS))
    event_type = draw(st.sampled_from(EVENT_TYPES))
    body = base_event(event_type, n, run, amount=draw(st.integers(0, 10**7)))
    topic = _home_topic(body)
    key: bytes | None = body["member_id"].encode()
    value: bytes

    if kind == "valid":
        value = _dumps(body)
    elif kind == "random_bytes":
        value = draw(st.binary(max_size=300))
        topic = draw(st.sampled_from(EVENT_TOPICS))
    elif kind == "json_noise":
        value = _dumps(draw(st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text_values,
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text_values, inner,
                                                                      max_size=4),
            max_leaves=12)))
        topic = draw(st.sampled_from(EVENT_TOPICS))
    elif kind == "huge":
        # just under, at and just over the 256 KiB limit, padded in an unknown field
        target = MAX_EVENT_BYTES + draw(st.integers(-300, 300))
        probe = _dumps({**body, "padding": ""})
        body["padding"] = "x" * max(0, target - len(probe))
        value = _dumps(body)
        if draw(st.booleans()):
            value = value.replace(b'"x', b'"\xe4\xbc\x9a', 1)  # a multi-byte char near the end
    elif kind == "huge_garbage":
        value = b"\x00" * (MAX_EVENT_BYTES + draw(st.integers(1, 4096)))
    elif kind == "deep_json":
        depth = draw(st.integers(50, 20_000))
        opener, closer = draw(st.sampled_from([(b"[", b"]"), (b'{"a":', b"}")]))
        nested = opener * depth + b"1" + closer * depth
        field = draw(st.sampled_from(["items", "unknown_deep", None]))
        value = nested if field is None else _dumps(body)[:-1] + f',"{field}":'.encode() + \
            nested + b"}"
    elif kind == "wrong_type":
        field = draw(st.sampled_from(FIELDS))
        body[field] = draw(st.sampled_from(WRONG_VALUES))
        if field == "member_id" and isinstance(body[field], str):
            body[field] = _unique_member(body[field], n, run)
        value = _dumps(body)
    elif kind == "missing_field":
        body.pop(draw(st.sampled_from(sorted(body))), None)
        value = _dumps(body)
    elif kind == "unknown_fields":
        extra = draw(st.dictionaries(text_values, st.sampled_from(WRONG_VALUES), max_size=5))
        value = _dumps({**extra, **body})
    elif kind == "unicode":
        field = draw(st.sampled_from(["member_id", "event_id", "channel", "order_id", "sku",
                                      "store_id", "category", "code_id"]))
        text = draw(text_values)
        body[field] = _unique_member(text, n, run) if field == "member_id" else text
        value = _dumps(body)
    elif kind == "escaped_unicode":
        field = draw(st.sampled_from(["member_id", "event_id", "sku", "store_id", "note"]))
        escaped = draw(st.sampled_from(ESCAPED_TEXT))
        if field == "member_id":
            escaped = escaped[:-1] + f'~{run}-{n}"'
        body[field] = "@@"
        value = _dumps(body).replace(b'"@@"', escaped.encode(), 1)
    elif kind == "gbk":
        text = draw(st.sampled_from(GBK_TEXT))
        body["store_id"] = "@@"
        value = _dumps(body).replace(b"@@", text.encode("gbk"), 1)
    elif kind == "bom_or_framing":
        raw = _dumps(body)
        value = draw(st.sampled_from([b"\xef\xbb\xbf" + raw, raw + b"\n", raw + b"garbage",
                                      raw + raw, b" " + raw, raw[:-1], raw.replace(b"{", b"[", 1),
                                      b"null", b"0", b'""', b"[]"]))
    elif kind == "timestamp":
        body["occurred_at"] = draw(st.one_of(st.sampled_from(TIMESTAMPS),
                                             st.sampled_from([0, 1709265600, -1, 1e20])))
        value = _dumps(body)
    elif kind == "wrong_topic":
        topic = draw(st.sampled_from([t for t in EVENT_TOPICS if t != topic]))
        value = _dumps(body)
    elif kind == "key":
        key = draw(st.one_of(st.none(), st.binary(max_size=20), st.just(b"F-someone-else")))
        value = _dumps(body)
    else:  # pragma: no cover - KINDS and this chain are kept in step
        raise AssertionError(kind)
    return FuzzCase(kind, topic, key, value)


KINDS = ["valid", "random_bytes", "json_noise", "huge", "huge_garbage", "deep_json",
         "wrong_type", "missing_field", "unknown_fields", "unicode", "escaped_unicode", "gbk",
         "bom_or_framing", "timestamp", "wrong_topic", "key"]
