"""The Faust/aiokafka adjustments in streams/compat.py are installed and do what they say."""

from __future__ import annotations

import asyncio

import pytest
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.group import LeaveGroupRequest

import streams.app  # noqa: F401 - importing the app installs the adjustments
from streams.compat import FETCH_MAX_WAIT_MS


class FakeCoordinator:
    group_id = "tagstream"
    member_id = "faust-member-1"
    _group_instance_id = None

    def __init__(self, generation: int) -> None:
        self.generation = generation
        self.sent: list[object] = []

    async def _send_req(self, request: object) -> None:
        self.sent.append(request)

    def reset_generation(self) -> None:
        self.generation = -1


async def test_a_member_of_generation_zero_leaves_the_group_on_close() -> None:
    """Regression: Tansu's first generation is 0 and aiokafka left only when generation > 0,
    so a stopped worker stayed in the group and a restarted one waited out its session."""
    coordinator = FakeCoordinator(generation=0)
    await GroupCoordinator._maybe_leave_group(coordinator)  # type: ignore[arg-type]
    [request] = coordinator.sent
    assert isinstance(request, LeaveGroupRequest) and coordinator.generation == -1


async def test_a_member_that_never_joined_sends_nothing() -> None:
    coordinator = FakeCoordinator(generation=-1)
    await GroupCoordinator._maybe_leave_group(coordinator)  # type: ignore[arg-type]
    assert coordinator.sent == []


def test_the_worker_consumer_fetch_wait_is_capped() -> None:
    from faust.transport.drivers import aiokafka as faust_aiokafka

    assert faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer.__name__ == \
        "_consumer_with_short_fetch_wait"
    assert FETCH_MAX_WAIT_MS <= 100


# --- 4. the consumer's delivery, stepped once instead of four tasks per message --------------


class FakeConsumerService:
    """What `Consumer.wait_first` reads of its service: the stopped and crashed flags."""

    def __init__(self) -> None:
        self._stopped = asyncio.Event()
        self._crashed = asyncio.Event()
        self.loop = asyncio.get_running_loop()


def _wait_first():
    from faust.transport.consumer import Consumer

    return Consumer.wait_first


async def test_a_delivery_that_does_not_block_completes_without_a_task() -> None:
    service = FakeConsumerService()
    delivered: list[str] = []
    loop = asyncio.get_running_loop()
    created: list[object] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: object, **kwargs: object):
        created.append(coro)
        return asyncio.Task(coro, loop=loop, **kwargs)  # type: ignore[arg-type]

    async def deliver() -> str:
        delivered.append("m1")
        return "done"

    waiter = asyncio.Event().wait()
    loop.set_task_factory(counting_factory)
    try:
        result = await _wait_first()(service, deliver(), waiter)
    finally:
        loop.set_task_factory(None)
    assert delivered == ["m1"] and result.results == ["done"] and not result.stopped
    assert created == []  # Faust's own wait_first made four tasks here
    assert waiter.cr_frame is None  # the suspend-flow waiter was closed, not left pending


async def test_a_delivery_that_blocks_is_continued_until_it_completes() -> None:
    """A delivery blocked on a full buffer must finish exactly once, with its own result."""
    service = FakeConsumerService()
    room = asyncio.Event()
    steps: list[str] = []

    async def deliver() -> str:
        steps.append("started")
        await room.wait()
        steps.append("put")
        return "delivered"

    waiting = asyncio.ensure_future(_wait_first()(service, deliver(), asyncio.Event().wait()))
    await asyncio.sleep(0.01)
    assert steps == ["started"] and not waiting.done()
    room.set()
    result = await asyncio.wait_for(waiting, 1)
    assert steps == ["started", "put"] and "delivered" in result.results


async def test_a_blocked_delivery_is_abandoned_when_the_flow_is_suspended() -> None:
    """What the original wait_first is for: a rebalance interrupts a blocked delivery."""
    service = FakeConsumerService()
    suspend = asyncio.Event()

    async def deliver() -> None:
        await asyncio.Event().wait()  # never room

    waiting = asyncio.ensure_future(_wait_first()(service, deliver(), suspend.wait()))
    await asyncio.sleep(0.01)
    suspend.set()
    result = await asyncio.wait_for(waiting, 1)
    assert result.results == [True] and not result.stopped


async def test_a_delivery_that_fails_raises_its_error() -> None:
    service = FakeConsumerService()

    async def deliver() -> None:
        raise ValueError("bad message")

    with pytest.raises(ValueError, match="bad message"):
        await _wait_first()(service, deliver(), asyncio.Event().wait())


async def test_a_stopped_consumer_reports_stopped_as_before() -> None:
    service = FakeConsumerService()
    service._stopped.set()

    async def deliver() -> str:
        return "done"

    result = await _wait_first()(service, deliver(), asyncio.Event().wait())
    assert result.stopped


# --- 5. table recovery: one wait_for without a task per record, need_recovery -------------------


async def test_recovery_wait_for_returns_a_queued_item_and_waits_for_a_missing_one() -> None:
    from faust.tables import recovery

    queue: asyncio.Queue[str] = asyncio.Queue()
    queue.put_nowait("record-1")
    assert await recovery.asyncio.wait_for(queue.get(), timeout=1.0) == "record-1"
    later = asyncio.get_running_loop().call_later(0.01, queue.put_nowait, "record-2")
    assert await recovery.asyncio.wait_for(queue.get(), timeout=1.0) == "record-2"
    later.cancel()
    with pytest.raises(recovery.asyncio.TimeoutError):
        await recovery.asyncio.wait_for(queue.get(), timeout=0.01)
    assert queue.empty()


def test_need_recovery_matches_what_remains_per_partition() -> None:
    from collections import Counter

    from faust.tables.recovery import Recovery
    from faust.types import TP

    class FakeRecovery:
        def __init__(self, highwaters: dict, offsets: dict) -> None:
            self.active_highwaters = highwaters
            self.active_offsets = Counter(offsets)

    a, b = TP("t-changelog", 0), TP("t-changelog", 1)
    cases = [({a: 10, b: 5}, {a: 10, b: 5}, False), ({a: 10, b: 5}, {a: 10, b: 4}, True),
             ({a: None, b: 5}, {b: 5}, False), ({a: 3}, {}, True), ({}, {}, False)]
    for highwaters, offsets, expected in cases:
        assert Recovery.need_recovery(FakeRecovery(highwaters, offsets)) is expected
