"""The places tagstream reaches into Faust and aiokafka, and why. Installed on import.

1. Faust builds its worker consumer with a fixed fetch_max_wait_ms=1500 and no setting to
   change it. A broker that holds a fetch for the full wait (the embedded one does) then adds
   up to 1.5 s between an event and its tag change. The wait is capped at FETCH_MAX_WAIT_MS
   (the aiokafka default is 500 ms).
2. aiokafka leaves its group on close only when `generation > 0`, but the embedded broker
   (Tansu) numbers a group's first generation 0. A worker stopped in generation 0 then stayed
   a member until its session timed out, and a restarted worker waited for it: two group
   joins and a session timeout, 18 of the 30 s a 10,000-member restart took. The leave is
   sent in generation 0 too; Apache Kafka starts at 1, so nothing changes there.
3. The embedded broker answers ListOffsets(latest) with the first offset of a partition's
   last record batch + 1, not the offset after its last record (fetch responses carry the
   right high watermark). Faust's table recovery reads a changelog up to that end, so the
   rest of the last batch was skipped: the members in it went back to their previous state,
   and the events applied since were lost although acknowledged. `end_offsets` now checks
   each non-empty partition with one fetch at the reported end and takes the fetch's high
   watermark when it is larger; on Apache Kafka the two agree.
4. When a worker's table recovery completes, Faust 0.15 resumes the stream partitions and
   only then seeks them to their committed offsets (`Recovery.on_recovery_completed`); flow
   is already on from the changelog reads. Until the seek lands (9 s once here) the consumer
   fetches from wherever aiokafka put the partitions, and those messages reach the agent.
   After a takeover those were ahead of the commit: the event-time clock moved past events
   the seek then delivered again, and those were dead-lettered as late (7,215 orders events
   in one kill-a-worker run, with a since-reverted adjustment that made it frequent; most
   likely also the CI run where 16 expected tag changes never came). The partitions are
   now sought to their commits before Faust resumes them (and Faust's own seek follows).
"""

from __future__ import annotations

import logging
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.consumer.consumer import AIOKafkaConsumer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import TopicPartition
from faust.tables import recovery as faust_recovery
from faust.transport.drivers import aiokafka as faust_aiokafka

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 20
PROBE_WAIT_MS = 100
PROBE_BYTES = 64 * 1024

_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_maybe_leave_group = GroupCoordinator._maybe_leave_group
_end_offsets = AIOKafkaConsumer.end_offsets
_on_recovery_completed = faust_recovery.Recovery.on_recovery_completed


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


async def _end_offsets_after_the_last_record(self: Any, partitions: Any) -> dict[Any, int]:
    ends = dict(await _end_offsets(self, partitions))
    probes: dict[int, dict[str, list[tuple[int, int, int]]]] = {}  # leader -> topic -> parts
    for tp, end in ends.items():
        leader = self._client.cluster.leader_for_partition(tp)  # noqa: SLF001
        if end and leader is not None and leader >= 0:
            probes.setdefault(leader, {}).setdefault(tp.topic, []).append(
                (tp.partition, end - 1, PROBE_BYTES))
    for leader, topics in probes.items():
        parts = sum(len(p) for p in topics.values())
        # min_bytes 1: the embedded broker answers a zero-byte fetch with no partitions
        request = FetchRequest(PROBE_WAIT_MS, 1, PROBE_BYTES * parts, 0, list(topics.items()))
        response = await self._client.send(leader, request)  # noqa: SLF001
        for topic, answers in response.topics:
            for partition, error_code, highwater, *_ in answers:
                tp = TopicPartition(topic, partition)
                if error_code == 0 and highwater > ends.get(tp, highwater):
                    ends[tp] = highwater
    return ends


async def _on_recovery_completed_seeking_first(self: Any, generation_id: int = 0) -> None:
    """Seek the stream partitions to their commits before Faust resumes them, then let Faust
    go on as before (resume, and its own seek). Only its own seek, with the resume before it,
    wakes the consumer: a version that seeked once, before the resume, left a restarted
    worker idle for a minute with an event waiting (tests/e2e/test_spine.py)."""
    consumer = self.app.consumer
    if self.app.consumer_generation_id == generation_id and consumer.assignment():
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    await _on_recovery_completed(self, generation_id)


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _consumer_with_short_fetch_wait
AIOKafkaConsumer.end_offsets = _end_offsets_after_the_last_record
GroupCoordinator._maybe_leave_group = _leave_group_in_generation_zero_too
faust_recovery.Recovery.on_recovery_completed = _on_recovery_completed_seeking_first
