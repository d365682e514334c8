"""Bad input fuzzed offline, through the worker's own pure path: decode (with the topic it
arrived on), the engine's apply and the wall-clock deadlines after it, and the dead-letter
record. Whatever the bytes, the outcome is processed or EventRejected with a reason, never
another exception; the dead letter keeps the original bytes exactly.

The end-to-end twin (tests/e2e/test_bad_input_fuzz.py) sends the same kinds of cases to a real
worker; this one runs many more of them, fast.
"""

from __future__ import annotations

import base64
import sys
import time

import orjson
import pytest
from hypothesis import HealthCheck, event, find, given, settings
from hypothesis import strategies as st

from schemas.decode import MAX_JSON_DEPTH, OCCURRED_AT_YEARS, decode_event
from schemas.errors import EventRejected
from schemas.events import MAX_EVENT_BYTES
from streams.platform.settings import DEFAULT_RULES
from streams.worker.deadletter import MAX_RAW_BYTES, MAX_RECORD_BYTES, dead_letter
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import raw_event
from tests.support.fuzz_events import KINDS, expected_verdict, fuzz_case

OFFLINE_EXAMPLES = 2000
ENGINE = Engine(load_rules(DEFAULT_RULES), 7 * 86400)
NOW = int(time.time())


def raw_of(record: dict) -> bytes:
    if record["raw_encoding"] == "base64":
        return base64.b64decode(record["raw"])
    return record["raw"].encode("utf-8")


@settings(max_examples=OFFLINE_EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.large_base_example])
@given(st.integers(0, 10**6).flatmap(lambda n: fuzz_case(n, "u")))
def test_any_message_is_processed_or_rejected_with_a_reason(case):
    verdict = expected_verdict(case, ENGINE)  # anything but EventRejected fails here
    event(f"{case.kind}: {'processed' if verdict.accepted else 'rejected'}")
    if verdict.accepted:
        decoded = decode_event(case.value, topic=case.topic)
        state = ENGINE.apply(None, decoded).state
        ENGINE.advance(state, NOW)  # the worker's wall-clock deadlines after the event
        return
    assert verdict.reason and verdict.reason.strip()
    letter = dead_letter(verdict.reason, case.topic, 3, 42, case.value)
    assert len(letter) <= MAX_RECORD_BYTES
    record = orjson.loads(letter)
    assert record["error"] == verdict.reason
    assert (record["topic"], record["partition"], record["offset"]) == (case.topic, 3, 42)
    assert record["raw_bytes"] == len(case.value)
    if not record.get("raw_truncated"):
        assert raw_of(record) == case.value


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_of_case_is_generated(kind):
    """Each kind can be drawn (a kind whose branch broke would silently vanish otherwise)."""
    found = find(st.integers(0, 1000).flatmap(lambda n: fuzz_case(n, "k")),
                 lambda case: case.kind == kind,
                 settings=settings(max_examples=2000, database=None,
                                   suppress_health_check=list(HealthCheck)))
    assert found.kind == kind and found.topic.startswith("events.")


@pytest.mark.parametrize("at", [
    "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00-12:00", "9999-12-31T23:59:59-12:00",
    "9999-12-31T23:59:59+14:00", "1970-01-01T00:00:00+00:00", "1999-12-31T23:59:59+08:00",
    "2200-01-01T00:00:00+08:00"])
def test_occurred_at_outside_the_supported_years_is_rejected_with_the_reason(at):
    """Regression: year 1 and 9999 timestamps decoded, then crashed the engine with
    OverflowError / ValueError ("year 0 is out of range") instead of being dead-lettered."""
    body = orjson.dumps(raw_event("order.paid", at, member="M1", amount_fen=1))
    with pytest.raises(EventRejected, match="outside the supported years"):
        decode_event(body, topic="events.orders")


@pytest.mark.parametrize("at", ["2000-01-01T00:00:00+08:00", "2199-12-31T23:59:59+08:00"])
def test_the_supported_years_are_inclusive(at):
    first, last = OCCURRED_AT_YEARS
    decoded = decode_event(orjson.dumps(raw_event("order.paid", at, member="M1",
                                                  amount_fen=1)), topic="events.orders")
    assert first <= decoded.occurred_at.year <= last
    state = ENGINE.apply(None, decoded).state
    ENGINE.advance(state, NOW)


@pytest.mark.parametrize("raw", [
    b"\x00" * (MAX_EVENT_BYTES + 1000),  # JSON-escaped as \u0000: six bytes each
    b"\x01\x1f" * 300_000,
    b'"' * 600_000,
    b"\xff" * 600_000,
    "会".encode() * 200_000,
], ids=["nul", "control", "quotes", "binary", "cjk"])
def test_a_dead_letter_stays_under_the_broker_message_limit(raw):
    """Regression: 256 KiB of NUL bytes made a 1.5 MB dead letter; the producer refused it and
    the member agent crashed, leaving the message neither processed nor dead-lettered."""
    letter = dead_letter("message is too big", "events.orders", 0, 7, raw)
    assert len(letter) <= MAX_RECORD_BYTES
    record = orjson.loads(letter)
    assert record["raw_bytes"] == len(raw)
    assert raw_of(record) == raw[:MAX_RAW_BYTES]
    assert record.get("raw_truncated", False) == (len(raw) > MAX_RAW_BYTES)


def _decode_at_stack_depth(raw: bytes, frames: int) -> str:
    if frames > 0:
        return _decode_at_stack_depth(raw, frames - 1)
    try:
        decode_event(raw, topic="events.orders")
    except EventRejected as rejected:
        return rejected.reason
    return "accepted"


@pytest.mark.parametrize("depth", [3, 60, 64, 65, 400, 5000])
def test_the_json_depth_verdict_does_not_depend_on_the_callers_stack(depth):
    """Regression: msgspec's nesting limit counts the caller's frames too, so an event with a
    deep unknown field was accepted by the dry run and dead-lettered inside the worker."""
    body = raw_event("order.paid", "2024-03-01T12:00:00+08:00", member="M1", amount_fen=1)
    raw = orjson.dumps(body)[:-1] + b',"extra":' + b"[" * (depth - 1) + b"]" * (depth - 1) + b"}"
    shallow = _decode_at_stack_depth(raw, 0)
    deep = _decode_at_stack_depth(raw, sys.getrecursionlimit() - 150)
    assert shallow == deep
    assert (shallow == "accepted") == (depth <= MAX_JSON_DEPTH), shallow
