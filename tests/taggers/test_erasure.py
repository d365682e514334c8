"""Erasure in the engine and the dry run: the state goes, the WeCom tags come off, the
record names no one, and a later event starts a new member."""

from __future__ import annotations

from datetime import datetime, timezone

import msgspec
import orjson
import pytest

from schemas.erasure import member_hash
from streams.ops.erase import erasure_event
from streams.platform.settings import DEFAULT_RULES
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import event, joined, paid, raw_event


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_rules(DEFAULT_RULES))


def history(member: str = "M000123") -> list:
    return [joined("2024-01-01T10:00:00+08:00", member),
            paid("2024-01-02T10:00:00+08:00", 80_000, member),
            event("interaction.wecom_friend_added", "2024-01-03T10:00:00+08:00", member,
                  guide_id="zhang", external_userid="wmX", channel="wecom")]


def test_erasing_takes_every_tag_off_every_pair_and_records_no_personal_data(engine):
    state = None
    for e in history():
        state = engine.apply(state, e).state
    held = sorted(state.tags)
    request = event("interaction.erasure_requested", "2024-01-04T10:00:00+08:00", "M000123",
                    request_id="PIPL-2024-0007", channel="ops")
    outcome = engine.apply(state, request)
    assert outcome.erasure is not None and outcome.changes == []
    [marks] = outcome.marks
    assert marks.reasons == ("erasure",)
    assert [(m.userid, m.external_userid, m.add, tuple(m.remove)) for m in marks.marks] == [
        ("zhang", "wmX", (), tuple(held))]
    record = msgspec.to_builtins(outcome.erasure)
    assert record["member_hash"] == member_hash("M000123")
    assert record["request_id"] == "PIPL-2024-0007" and record["state_found"] is True
    assert record["tags_cleared"] == len(held) and record["wecom_pairs_cleared"] == 1
    text = orjson.dumps(record).decode()
    assert "M000123" not in text and "wmX" not in text and "zhang" not in text


def test_the_dry_run_forgets_the_member_and_a_later_event_starts_a_new_one(engine):
    lines = [orjson.dumps(raw_event("interaction.member_joined", "2024-01-01T10:00:00+08:00",
                                    "M9")),
             orjson.dumps(raw_event("order.paid", "2024-01-02T10:00:00+08:00", "M9",
                                    amount_fen=90_000))]
    erase = orjson.loads(erasure_event(
        "M9", now=datetime(2024, 1, 5, 2, tzinfo=timezone.utc)))  # after the order
    later = raw_event("order.paid", "2024-01-09T10:00:00+08:00", "M9", amount_fen=1_000)
    result = dry_run(engine, [*lines, orjson.dumps(erase), orjson.dumps(later)])
    assert [e.request_event_id for e in result.erasures] == [erase["event_id"]]
    state = result.states["M9"]
    assert state.joined_at is None and state.orders.count == 1  # a new member, no history
    assert state.orders.spend_fen == 1_000


def test_erasing_an_unknown_member_is_recorded_as_such(engine):
    outcome = engine.apply(None, event("interaction.erasure_requested",
                                       "2024-01-04T10:00:00+08:00", "NOBODY", channel="ops"))
    assert outcome.marks == [] and outcome.erasure.state_found is False


def test_the_command_refuses_a_member_id_the_worker_would_reject():
    from schemas.errors import EventRejected

    with pytest.raises(EventRejected, match="member_id"):
        erasure_event("has space")
    assert orjson.loads(erasure_event("M1", "T-1"))["request_id"] == "T-1"
