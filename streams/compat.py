"""The two places tagstream reaches into Faust and aiokafka, and why. Installed on import.

1. Faust builds its worker consumer with a fixed fetch_max_wait_ms=1500 and no setting to
   change it. A broker that holds a fetch for the full wait (the embedded one does) then adds
   up to 1.5 s between an event and its tag change. The wait is capped at FETCH_MAX_WAIT_MS
   (the aiokafka default is 500 ms).
2. aiokafka leaves its group on close only when `generation > 0`, but the embedded broker
   (Tansu) numbers a group's first generation 0. A worker stopped in generation 0 then stayed
   a member until its session timed out, and a restarted worker waited for it: two group
   joins and a session timeout, 18 of the 30 s a 10,000-member restart took. The leave is
   sent in generation 0 too; Apache Kafka starts at 1, so nothing changes there.
"""

from __future__ import annotations

import logging
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.group import LeaveGroupRequest
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 20

_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_maybe_leave_group = GroupCoordinator._maybe_leave_group


def _consumer_with_short_fetch_wait(self: Any, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001 - read at consumer start
    return consumer


async def _leave_group_in_generation_zero_too(self: Any) -> None:
    if self.generation != 0 or self._group_instance_id is not None:  # noqa: SLF001
        await _maybe_leave_group(self)
        return
    try:
        await self._send_req(LeaveGroupRequest(self.group_id, self.member_id))  # noqa: SLF001
    except kafka_errors.KafkaError as err:
        log.error("LeaveGroup request failed: %s", err)
    else:
        log.info("LeaveGroup request succeeded (generation 0)")
    self.reset_generation()


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _consumer_with_short_fetch_wait
GroupCoordinator._maybe_leave_group = _leave_group_in_generation_zero_too
