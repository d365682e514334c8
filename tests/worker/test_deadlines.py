"""The per-partition deadline heap: due members in deadline order, stale entries dropped, and
the heap bounded by the members rather than by the events."""

from __future__ import annotations

import gc

from streams.worker.deadlines import COMPACT_SLACK, DeadlineIndex


def test_due_members_come_out_in_deadline_order_and_only_once() -> None:
    index = DeadlineIndex()
    index.open_partition(0)
    index.add_stored(0, [(30, "C"), (10, "A"), (20, "B")])
    assert index.pop_due(0, 20) == ["A", "B"]
    assert index.pop_due(0, 20) == [] and len(index) == 1
    assert index.pop_due(0, 30) == ["C"] and len(index) == 0


def test_a_limited_pop_takes_the_earliest_and_leaves_the_rest_due() -> None:
    index = DeadlineIndex()
    index.open_partition(0)
    index.add_stored(0, [(30, "C"), (10, "A"), (20, "B"), (50, "D")])
    index.push(0, 40, "C")  # C's entry at 30 is stale: it neither fires nor counts
    assert index.pop_due(0, 45, limit=1) == ["A"] and index.any_due(0, 45)
    assert index.pop_due(0, 45, limit=5) == ["B", "C"] and not index.any_due(0, 45)
    assert index.any_due(0, 50) and not index.any_due(1, 50)


def test_partitions_are_apart_and_a_dropped_one_must_be_loaded_again() -> None:
    index = DeadlineIndex()
    index.push(1, 5, "X")
    index.push(2, 5, "Y")
    assert index.pop_due(1, 9) == ["X"] and index.is_loaded(2)
    index.drop(2)
    assert not index.is_loaded(2) and index.pop_due(2, 9) == []


def test_a_moved_deadline_fires_at_its_new_time_only() -> None:
    index = DeadlineIndex()
    index.push(0, 10, "A")
    index.push(0, 40, "A")  # A's deadline moved later: the entry at 10 is stale
    assert index.pop_due(0, 10) == []
    index.push(0, 5, "A")  # and earlier again
    assert index.pop_due(0, 39) == ["A"] and index.pop_due(0, 40) == []


def test_a_member_that_no_longer_has_a_deadline_does_not_fire() -> None:
    index = DeadlineIndex()
    index.push(0, 10, "A")
    index.push(0, None, "A")
    assert index.pop_due(0, 10) == [] and len(index) == 0


def test_no_deadline_adds_nothing() -> None:
    index = DeadlineIndex()
    index.push(0, None, "A")
    assert len(index) == 0 and not index.is_loaded(0)


def test_an_unchanged_deadline_adds_no_entry() -> None:
    """Regression: every event pushed an entry, so a worker's heaps grew with the events
    (one per event with a timed rule) rather than with its members."""
    index = DeadlineIndex()
    for _ in range(10):
        index.push(0, 100, "A")
    assert index.heap_entries() == 1


def test_stale_entries_are_bounded_by_the_members() -> None:
    index = DeadlineIndex()
    members = [f"m{n}" for n in range(100)]
    for step in range(200):  # every member's deadline moves 200 times
        for member in members:
            index.push(0, 1_000 + step, member)
    assert len(index) == 100
    assert index.heap_entries() <= 2 * 100 + COMPACT_SLACK + 1
    assert index.pop_due(0, 1_198) == [] and sorted(index.pop_due(0, 1_199)) == sorted(members)


def test_a_stored_deadline_does_not_replace_a_newer_one() -> None:
    """While a heap is rebuilt from the store, a member already pushed (a newer state) keeps
    its own deadline; members with none in the store add nothing."""
    index = DeadlineIndex()
    index.open_partition(0)
    index.push(0, 50, "A")
    index.add_stored(0, [(10, "A"), (20, "B"), (None, "C")])
    assert len(index) == 2
    assert index.pop_due(0, 49) == ["B"] and index.pop_due(0, 50) == ["A"]


def test_pushed_deadlines_make_nothing_the_garbage_collector_tracks() -> None:
    """Regression: each entry was a (deadline, member) tuple, which the collector tracks until
    a young collection has walked it; at 1,000,000 members those collections found half a
    million entries at a time and stopped the worker for 0.3-0.4 s each."""
    index = DeadlineIndex()
    members = [f"m{n}" for n in range(100)]
    for member in members:
        index.push(0, 1, member)
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        tracked_before = len(gc.get_objects())
        for step in range(2, 100):
            for member in members:
                index.push(0, step, member)
        tracked_after = len(gc.get_objects())
    finally:
        if was_enabled:
            gc.enable()
    assert index.heap_entries() > 500  # hundreds of entries held (tuples, they were tracked)
    assert tracked_after - tracked_before < 100


def test_deadlines_before_the_epoch_and_far_ahead_keep_their_order() -> None:
    index = DeadlineIndex()
    index.push(0, 2**40, "far")
    index.push(0, -86_400, "before")
    index.push(0, 0, "epoch")
    index.push(0, -1, "just_before")
    assert index.pop_due(0, -86_401) == []
    assert index.pop_due(0, 0) == ["before", "just_before", "epoch"]
    assert index.pop_due(0, 2**40 - 1) == [] and index.pop_due(0, 2**40) == ["far"]


def test_a_rebuild_forgets_members_that_no_longer_have_a_deadline() -> None:
    """An erased member's id is held only until the next rebuild."""
    index = DeadlineIndex()
    index.push(0, 10, "erased")
    index.push(0, None, "erased")
    for step in range(COMPACT_SLACK + 10):  # stale entries enough for a rebuild
        index.push(0, 100 + step, "kept")
    assert index.named_members() == ["kept"]
    assert index.pop_due(0, 10**6) == ["kept"]


def test_members_that_fire_and_come_back_keep_the_table_of_members_bounded() -> None:
    """A member whose deadline fired (or went) is given a new ordinal when it gets one again;
    the old ones are dropped at the next rebuild, or the table would grow by one per firing."""
    index = DeadlineIndex()
    members = [f"m{n}" for n in range(10)]
    for step in range(1, 500):
        for member in members:
            index.push(0, step, member)
        assert sorted(index.pop_due(0, step)) == members
    assert len(index.named_members()) <= 2 * 10 + COMPACT_SLACK + 1
