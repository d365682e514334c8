"""The event-time hold: events come out in (time, topic rank, arrival) order once passed, and
it counts what it holds per source topic and partition."""

from __future__ import annotations

from streams.worker.reorder import ReorderBuffer


def test_held_events_come_out_in_time_then_rank_then_arrival_order() -> None:
    buffer = ReorderBuffer()
    buffer.push(0, 100, 2, "orders", "order@100")
    buffer.push(0, 90, 5, "scans", "scan@90")
    buffer.push(0, 100, 1, "interactions", "join@100")  # same instant, lower rank: first
    buffer.push(0, 100, 1, "interactions", "join@100-again")  # same instant and rank: arrival
    buffer.push(0, 200, 0, "orders", "later")
    assert buffer.pop_ready(0, 100) == ["scan@90", "join@100", "join@100-again", "order@100"]
    assert buffer.held(0) == 1 and buffer.pop_ready(0, 199) == []


def test_partitions_hold_apart_and_a_revoked_one_is_dropped_with_its_count() -> None:
    buffer = ReorderBuffer()
    buffer.push(0, 1, 0, "orders", "a")
    buffer.push(1, 1, 0, "orders", "b")
    buffer.push(1, 2, 0, "orders", "c")
    assert buffer.drop(1) == 2 and buffer.held() == 1
    assert buffer.held_from("orders", 1) == 0 and buffer.held_from("orders", 0) == 1
    assert buffer.pop_ready(1, 10) == [] and buffer.pop_ready(0, 10) == ["a"]


def test_what_a_source_holds_on_a_partition_is_counted_in_and_out() -> None:
    buffer = ReorderBuffer()
    assert [buffer.push(0, t, 0, "orders", t) for t in (5, 6, 7)] == [1, 2, 3]
    assert buffer.push(0, 1, 1, "scans", "s") == 1
    assert buffer.push(1, 1, 0, "orders", "other partition") == 1
    assert buffer.pop_ready(0, 5) == ["s", 5]
    assert buffer.held_from("orders", 0) == 2 and buffer.held_from("scans", 0) == 0
    assert buffer.held_from("orders", 1) == 1
