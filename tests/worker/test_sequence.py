"""The offset check in front of the member agent (streams/worker/sequence.py), alone."""

from __future__ import annotations

from streams.worker.sequence import Admission, DeliverySequence

HANDLE, ALREADY, WAIT = Admission.HANDLE, Admission.ALREADY_HANDLED, Admission.WAIT_FOR_REWIND


def sequence() -> tuple[DeliverySequence, list[tuple[str, int, int]]]:
    rewinds: list[tuple[str, int, int]] = []
    return DeliverySequence(rewind=lambda *where: rewinds.append(where)), rewinds


def test_the_first_offset_after_an_assignment_is_taken_as_it_comes() -> None:
    seq, rewinds = sequence()
    assert [seq.admit("t", 0, o) for o in (57, 58, 59)] == [HANDLE] * 3 and rewinds == []


def test_a_jump_rewinds_once_and_what_was_fetched_before_waits() -> None:
    seq, rewinds = sequence()
    assert [seq.admit("t", 0, o) for o in (0, 1, 4, 5, 6)] == [HANDLE, HANDLE, WAIT, WAIT, WAIT]
    assert rewinds == [("t", 0, 2)] and seq.rewinds == 1
    assert [seq.admit("t", 0, o) for o in (2, 3, 4, 5)] == [HANDLE] * 4
    assert seq.admit("t", 0, 9) is WAIT and rewinds[-1] == ("t", 0, 6)  # a new jump, a new rewind


def test_a_jump_confirmed_by_the_rewind_is_passed() -> None:
    seq, rewinds = sequence()
    assert [seq.admit("t", 0, o) for o in (0, 3, 3, 4)] == [HANDLE, WAIT, HANDLE, HANDLE]
    assert rewinds == [("t", 0, 1)]


def test_offsets_already_handled_are_ignored_and_partitions_are_apart() -> None:
    seq, _ = sequence()
    assert [seq.admit("t", 0, o) for o in (0, 1, 2, 1, 2)] == [HANDLE] * 3 + [ALREADY] * 2
    assert seq.admit("t", 1, 40) is HANDLE and seq.admit("u", 0, 7) is HANDLE


def test_forget_starts_revoked_partitions_afresh_on_every_topic() -> None:
    seq, rewinds = sequence()
    for topic in ("t", "u"):
        seq.admit(topic, 0, 0)
        seq.admit(topic, 1, 0)
    seq.admit("t", 0, 5)  # a jump pending on a partition about to be revoked
    seq.forget({0})
    assert seq.admit("t", 0, 90) is HANDLE and seq.admit("u", 0, 91) is HANDLE
    assert seq.admit("t", 1, 2) is WAIT and len(rewinds) == 2


def test_a_first_message_past_where_the_partition_was_sought_to_rewinds_to_it() -> None:
    """Regression: the first message after an assignment was taken as it came, so a member's
    first order that Faust dropped (fetched while its flow was suspended) was never applied
    and its second was applied as the first (a two-worker run on one host)."""
    seq, rewinds = sequence()
    seq.start_at({("t", 0): 0, ("t", 1): 120})
    assert [seq.admit("t", 0, o) for o in (1, 2)] == [WAIT, WAIT] and rewinds == [("t", 0, 0)]
    assert [seq.admit("t", 0, o) for o in (0, 1, 2)] == [HANDLE] * 3
    assert seq.admit("t", 1, 120) is HANDLE and seq.admit("u", 0, 57) is HANDLE  # no start known


def test_a_start_does_not_move_a_partition_that_has_handled_since_its_assignment() -> None:
    seq, rewinds = sequence()
    assert seq.admit("t", 0, 10) is HANDLE
    seq.start_at({("t", 0): 4})  # Faust's second seek, after messages flowed
    assert seq.admit("t", 0, 11) is HANDLE and rewinds == []


def test_a_revoked_partition_takes_the_start_of_its_next_assignment() -> None:
    seq, rewinds = sequence()
    seq.start_at({("t", 0): 0})
    assert seq.admit("t", 0, 0) is HANDLE
    seq.forget({0})
    seq.start_at({("t", 0): 30})
    assert seq.admit("t", 0, 31) is WAIT and rewinds == [("t", 0, 30)]
