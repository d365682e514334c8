"""A stored state's deadline, read without decoding the state (a fresh worker's heap rebuild)."""

from __future__ import annotations

import msgspec

from taggers.state import (
    HeldTag, LoyaltyState, MemberState, decode_next_deadline, decode_state, encode_state,
)


def test_the_deadline_alone_is_the_decoded_states() -> None:
    states = [
        MemberState(member_id="M1"),
        MemberState(member_id="M2", next_deadline=1_767_225_600,
                    tags={"vip": HeldTag(since=1, rules_version="v1", evidence={"spend": 9})},
                    counters={"orders": [1, 2, 3, 4]}, seen=[12345, 1],
                    loyalty=LoyaltyState(level="gold", tier_since=5), unit_deadlines=[3, 7]),
        MemberState(member_id="M3", watermark=5, next_deadline=-1),
    ]
    for state in states:
        raw = encode_state(state)
        assert decode_next_deadline(raw) == decode_state(raw).next_deadline == state.next_deadline


def test_a_state_written_before_later_fields_existed_has_no_deadline() -> None:
    raw = msgspec.msgpack.encode(["M4", None, None])  # member_id, joined_at, birthday only
    assert decode_next_deadline(raw) is None is decode_state(raw).next_deadline
