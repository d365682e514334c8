"""The per-partition deadline heap: due members in deadline order, stale entries surfacing."""

from __future__ import annotations

from streams.worker.deadlines import DeadlineIndex


def test_due_members_come_out_in_deadline_order_and_only_once() -> None:
    index = DeadlineIndex()
    index.load(0, [(30, "C"), (10, "A"), (20, "B")])
    assert index.pop_due(0, 20) == ["A", "B"]
    assert index.pop_due(0, 20) == [] and len(index) == 1
    assert index.pop_due(0, 30) == ["C"] and len(index) == 0


def test_partitions_are_apart_and_a_dropped_one_must_be_loaded_again() -> None:
    index = DeadlineIndex()
    index.push(1, 5, "X")
    index.push(2, 5, "Y")
    assert index.pop_due(1, 9) == ["X"] and index.is_loaded(2)
    index.drop(2)
    assert not index.is_loaded(2) and index.pop_due(2, 9) == []


def test_a_moved_deadline_leaves_a_stale_entry_that_the_caller_skips() -> None:
    """Entries are never updated in place: both surface, the state decides (members.py)."""
    index = DeadlineIndex()
    index.push(0, 10, "A")
    index.push(0, 40, "A")  # A's deadline moved later
    assert index.pop_due(0, 10) == ["A"]  # the stale one: the state says 40, so it is skipped
    assert index.pop_due(0, 40) == ["A"]


def test_no_deadline_adds_nothing() -> None:
    index = DeadlineIndex()
    index.push(0, None, "A")
    assert len(index) == 0 and not index.is_loaded(0)
