"""The Faust/aiokafka adjustments in streams/compat.py are installed and do what they say."""

from __future__ import annotations

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
