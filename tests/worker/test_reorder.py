"""The event-time hold: events come out in (time, topic rank, arrival) order once passed."""

from __future__ import annotations

from streams.worker.reorder import ReorderBuffer


def test_held_events_come_out_in_time_then_rank_then_arrival_order() -> None:
    buffer = ReorderBuffer()
    buffer.push(0, 100, 2, "order@100")
    buffer.push(0, 90, 5, "scan@90")
    buffer.push(0, 100, 1, "join@100")  # same instant, lower rank: first (as the dry run)
    buffer.push(0, 100, 1, "join@100-again")  # same instant and rank: arrival order
    buffer.push(0, 200, 0, "later")
    assert buffer.pop_ready(0, 100) == ["scan@90", "join@100", "join@100-again", "order@100"]
    assert buffer.held(0) == 1 and buffer.pop_ready(0, 199) == []


def test_partitions_hold_apart_and_a_revoked_one_is_dropped_with_its_count() -> None:
    buffer = ReorderBuffer()
    buffer.push(0, 1, 0, "a")
    buffer.push(1, 1, 0, "b")
    buffer.push(1, 2, 0, "c")
    assert buffer.drop(1) == 2 and buffer.held() == 1
    assert buffer.pop_ready(1, 10) == [] and buffer.pop_ready(0, 10) == ["a"]
