"""Decoding raw Kafka values into typed events, with reasons a producer can act on."""

from __future__ import annotations

import msgspec

from schemas.errors import EventRejected
from schemas.events import (
    FAMILY_BY_TOPIC,
    MAX_EVENT_BYTES,
    TOPIC_BY_EVENT_TYPE,
    AnyEvent,
    Event,
)

_DECODERS = {topic: msgspec.json.Decoder(family) for topic, family in FAMILY_BY_TOPIC.items()}
_ANY_DECODER = msgspec.json.Decoder(AnyEvent)
_EVENT_TYPE_PROBE = msgspec.json.Decoder(dict[str, object])


def decode_event(raw: bytes | None, topic: str | None = None) -> Event:
    """Decode one event. With `topic`, only that topic's event family is accepted."""
    if raw is None or len(raw) == 0:
        raise EventRejected("empty message value: expected a JSON event object")
    if len(raw) > MAX_EVENT_BYTES:
        raise EventRejected(f"message is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES}")
    decoder = _DECODERS.get(topic, _ANY_DECODER) if topic else _ANY_DECODER
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise EventRejected(_explain_validation(raw, topic, str(exc))) from None
    except msgspec.DecodeError as exc:
        raise EventRejected(f"not valid UTF-8 JSON: {exc}") from None
    except UnicodeDecodeError as exc:
        # msgspec raises this (not DecodeError) for invalid UTF-8 inside a string it keeps.
        raise EventRejected(f"not valid UTF-8 JSON: {exc}") from None
    except RecursionError:
        raise EventRejected("JSON nested too deeply") from None


def _explain_validation(raw: bytes, topic: str | None, message: str) -> str:
    """Turn an unknown-tag error into 'this event type belongs on another topic' where true."""
    if "$.event_type" not in message and "event_type" not in message:
        return f"invalid event: {message}"
    try:
        event_type = _EVENT_TYPE_PROBE.decode(raw).get("event_type")
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError):
        return f"invalid event: {message}"
    home = TOPIC_BY_EVENT_TYPE.get(event_type) if isinstance(event_type, str) else None
    if home and topic and home != topic:
        return f"event_type {event_type!r} belongs on topic {home!r}, not {topic!r}"
    if home:  # the tag is fine; the message only quoted "event_type" as some other bad value
        return f"invalid event: {message}"
    if event_type is None:
        return "invalid event: missing required field `event_type`"
    known = ", ".join(sorted(TOPIC_BY_EVENT_TYPE))
    return f"invalid event: unknown event_type {event_type!r}; known types: {known}"
