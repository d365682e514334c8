"""The evaluation memo: one slot per distinct memoised value, shared by every rule reading it,
filled once per evaluation (a None result included), empty again in the next evaluation."""

from __future__ import annotations

from typing import Any

from taggers.clock import LocalCalendar
from taggers.context import EvalContext, memo_slot
from taggers.counters import memoized
from taggers.state import MemberState

CALENDAR = LocalCalendar.parse("+08:00")


def counting(result: Any) -> tuple[list[int], Any]:
    calls: list[int] = []

    def compute(ctx: Any) -> Any:
        calls.append(1)
        return result

    return calls, compute


def context() -> EvalContext:
    return EvalContext(MemberState(member_id="m1"), None, 1_700_000_000, CALENDAR)


def test_two_readers_of_one_window_share_a_slot_and_compute_it_once() -> None:
    calls, compute = counting(42)
    first = memoized("test_memo_orders", 30, compute, True)
    second = memoized("test_memo_orders", 30, compute, True)
    ctx = context()
    assert (first(ctx), second(ctx), first(ctx)) == (42, 42, 42)
    assert len(calls) == 1
    assert second(context()) == 42 and len(calls) == 2  # a new evaluation computes again


def test_a_none_result_is_remembered_too() -> None:
    calls, compute = counting(None)
    read = memoized("test_memo_none", 7, compute, False)
    ctx = context()
    assert read(ctx) is None and read(ctx) is None
    assert len(calls) == 1


def test_value_next_change_and_window_length_have_slots_of_their_own() -> None:
    keys = [("test_memo_slots", 30, True), ("test_memo_slots", 30, False),
            ("test_memo_slots", 90, True), (":test_memo_definition", 0, True)]
    slots = [memo_slot(key) for key in keys]
    assert len(set(slots)) == len(keys)
    assert [memo_slot(key) for key in keys] == slots  # the same key, the same slot
    assert len(context().memo) > max(slots)  # a context made later has room for them all
