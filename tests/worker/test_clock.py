"""A partition's event clock: the lowest completeness of its input topics, kept as they advance."""

from __future__ import annotations

from streams.worker.clock import PartitionClocks

INPUTS = ("orders", "interactions", "scans")


def clocks_at(instant: int, partition: int, **options: int) -> PartitionClocks:
    """Event clocks whose every input has marked `partition` complete through `instant`."""
    clocks = PartitionClocks("event", INPUTS, **options)
    for topic in INPUTS:
        clocks.observe_marker(topic, partition, instant)
    return clocks


def test_the_clock_waits_until_every_input_has_said_where_it_is() -> None:
    clocks = PartitionClocks("event", INPUTS)
    clocks.observe_event("orders", 0, 100)
    clocks.observe_marker("interactions", 0, 500)
    assert clocks.now(0) is None
    clocks.observe_marker("scans", 0, 300)
    assert clocks.now(0) == 99  # the orders' event at 100 proves only up to 99
    assert clocks.now(1) is None  # another partition has its own clock


def test_the_clock_is_the_lowest_input_and_follows_whichever_input_is_lowest() -> None:
    clocks = clocks_at(1_000, partition=3, reorder_window_s=10)
    assert clocks.now(3) == 1_000
    clocks.observe_marker("orders", 3, 2_000)  # not the lowest any more: the others still are
    assert clocks.now(3) == 1_000
    clocks.observe_marker("interactions", 3, 1_500)
    clocks.observe_event("scans", 3, 1_800)  # complete through 1,800 - 1 - the window
    assert clocks.now(3) == 1_500
    clocks.observe_marker("scans", 3, 900)  # never backwards
    clocks.observe_marker("interactions", 3, 2_500)
    assert clocks.now(3) == 1_789
    assert clocks.complete_through("orders", 3) == 2_000


def test_a_topic_that_is_not_an_input_does_not_move_the_clock() -> None:
    clocks = clocks_at(50, partition=0)
    clocks.observe_marker("tags.changes", 0, 10)
    assert clocks.now(0) == 50
    assert clocks.complete_through("tags.changes", 0) == 10


def test_a_forgotten_partition_has_no_clock_until_its_inputs_speak_again() -> None:
    clocks = clocks_at(700, partition=2)
    clocks.forget(2)
    assert clocks.now(2) is None
    clocks.observe_marker("orders", 2, 40)
    clocks.observe_marker("interactions", 2, 40)
    assert clocks.now(2) is None  # an earlier owner's word on scans does not count
    clocks.observe_marker("scans", 2, 30)
    assert clocks.now(2) == 30


def test_the_wall_clock_is_the_injected_time_in_whole_seconds() -> None:
    clocks = PartitionClocks("wall", INPUTS, wall=lambda: 1_700_000_000.9)
    assert clocks.now(5) == 1_700_000_000
