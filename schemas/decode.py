"""Decoding raw Kafka values into typed events, with reasons a producer can act on."""

from __future__ import annotations

import re

import msgspec

from schemas.errors import EventRejected
from schemas.events import (
    CODE_NAME_PATTERN,
    FAMILY_BY_TOPIC,
    MAX_EVENT_BYTES,
    MEMBER_ID_PATTERN,
    TOPIC_BY_EVENT_TYPE,
    AnyEvent,
    Event,
    Item,
)

_DECODERS = {topic: msgspec.json.Decoder(family) for topic, family in FAMILY_BY_TOPIC.items()}
_ANY_DECODER = msgspec.json.Decoder(AnyEvent)
_EVENT_TYPE_PROBE = msgspec.json.Decoder(dict[str, object])
# occurred_at years a member event can have. Outside them the time is a producer bug (epoch 0,
# 0001-01-01, 9999-12-31 placeholders), and near year 1 or 9999 the calendar arithmetic of the
# rules (windows, deadlines a year ahead) leaves the range Python's datetime can represent.
OCCURRED_AT_YEARS = (2000, 2199)
# Events nest 3 deep (event > items > item). msgspec's own limit depends on how deep the
# caller's stack already is, so a message near it was accepted by `tagstream dryrun` and
# rejected inside the worker; a fixed limit makes the verdict the same everywhere.
MAX_JSON_DEPTH = 64
_JSON_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.S)
_JSON_BRACKET = re.compile(rb"[\[\]{}]")


def decode_event(raw: bytes | None, topic: str | None = None, *, namespace: str = "") -> Event:
    """Decode one event. With `topic` (a canonical name: streams/platform/topics.py), only that
    topic's event family is accepted. `namespace` (TAGSTREAM_TOPIC_NAMESPACE) goes before the topic
    names a reason gives, so that they are the names on the broker."""
    if raw is None or len(raw) == 0:
        raise EventRejected("empty message value: expected a JSON event object")
    if len(raw) > MAX_EVENT_BYTES:
        raise EventRejected(f"message is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise EventRejected(f"JSON nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    decoder = _DECODERS.get(topic, _ANY_DECODER) if topic else _ANY_DECODER
    try:
        event = decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventRejected(_explain_validation(raw, topic, str(exc), namespace)) from None
    except msgspec.DecodeError as exc:
        raise EventRejected(f"not valid UTF-8 JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        # msgspec raises this (not DecodeError) for invalid UTF-8 inside a string it keeps.
        raise EventRejected(f"not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise EventRejected("JSON nested too deeply") from None
    _check_patterns(event)
    first, last = OCCURRED_AT_YEARS
    if not first <= event.occurred_at.year <= last:
        raise EventRejected(f"occurred_at {event.occurred_at.isoformat()} is outside the "
                            f"supported years {first}-{last}")
    return event


class _Pattern:
    """One pattern of schemas/events.py, matched as msgspec would (re.search), each distinct
    value once: the values it accepted are remembered (at most MAX_REMEMBERED, then forgotten
    all at once), so a value is accepted exactly when the pattern matches it."""

    MAX_REMEMBERED = 100_000

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.search = re.compile(pattern).search
        self.accepted: set[str] = set()

    def check(self, value: str, path: str) -> None:
        """Match a value not accepted yet (the caller looked it up in `accepted` first) and
        remember it, or reject the event naming `path`."""
        accepted = self.accepted
        if self.search(value) is None:
            # msgspec's own wording, as when it checked the pattern itself
            raise EventRejected(f"invalid event: Expected `str` matching regex "
                                f"{self.pattern!r} - at `$.{path}`")
        if len(accepted) >= self.MAX_REMEMBERED:
            accepted.clear()
        accepted.add(value)


_MEMBER_ID = _Pattern(MEMBER_ID_PATTERN)
_CODE_NAME = _Pattern(CODE_NAME_PATTERN)
# per event class: whether it has `items` and a `category` of its own (Category fields)
_SHAPES = {cls: ("items" in cls.__struct_fields__, "category" in cls.__struct_fields__)
           for family in FAMILY_BY_TOPIC.values() for cls in family.__args__}


def _check_patterns(event: Event) -> None:
    """The patterns msgspec leaves to the decoder (schemas/events.py): member_id, channel
    and every category. A remembered value costs one set lookup here (this runs per event)."""
    member_ids, names = _MEMBER_ID.accepted, _CODE_NAME.accepted
    if event.member_id not in member_ids:
        _MEMBER_ID.check(event.member_id, "member_id")
    if event.channel not in names:
        _CODE_NAME.check(event.channel, "channel")
    has_items, has_category = _SHAPES[type(event)]
    if has_items:
        items: tuple[Item, ...] = event.items or ()  # type: ignore[attr-defined]
        for i, item in enumerate(items):
            if item.category not in names:
                _CODE_NAME.check(item.category, f"items[{i}].category")
    if has_category and event.category not in names:  # type: ignore[attr-defined]
        _CODE_NAME.check(event.category, "category")  # type: ignore[attr-defined]


def _json_depth(raw: bytes) -> int:
    """How deep brackets nest outside JSON strings (cheap: most events have too few to check)."""
    if raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH:
        return 0
    depth = deepest = 0
    for bracket in _JSON_BRACKET.findall(_JSON_STRING.sub(b"", raw)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _explain_validation(raw: bytes, topic: str | None, message: str, namespace: str) -> str:
    """Turn an unknown-tag error into 'this event type belongs on another topic' where true."""
    if "$.event_type" not in message and "event_type" not in message:
        return f"invalid event: {message}"
    try:
        event_type = _EVENT_TYPE_PROBE.decode(raw).get("event_type")
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return f"invalid event: {message}"
    home = TOPIC_BY_EVENT_TYPE.get(event_type) if isinstance(event_type, str) else None
    if home and topic and home != topic:
        return (f"event_type {event_type!r} belongs on topic {namespace + home!r}, "
                f"not {namespace + topic!r}")
    if home:  # the tag is fine; the message only quoted "event_type" as some other bad value
        return f"invalid event: {message}"
    if event_type is None:
        return "invalid event: missing required field `event_type`"
    known = ", ".join(sorted(TOPIC_BY_EVENT_TYPE))
    return f"invalid event: unknown event_type {event_type!r}; known types: {known}"
