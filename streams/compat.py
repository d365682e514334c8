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
4. Faust's consumer hands every fetched message to the streams with
   `wait_first(callback(message), suspend_flow.wait())`: four tasks and an `asyncio.wait`
   per message, so that a rebalance can interrupt a delivery blocked on a full buffer. Almost
   every delivery completes without blocking, and those tasks were most of what Faust costs
   per message (an agent doing nothing went from ~10,000 to ~N messages/s here). The
   consumer's `wait_first` now steps the delivery once; only one that blocks is waited for
   the original way, continued from where it stopped.
5. Table recovery pays the same way per changelog record: `asyncio.wait_for(queue.get())`
   (a task each) and `need_recovery()`, which builds a Counter over every partition, for
   each record. A restarted worker here read a changelog at ~10,500 records/s, and on a
   broker without compaction (the embedded one) the changelog holds a record per member per
   batch. Recovery's `wait_for` steps the `get` once the same way, and `need_recovery` stops
   at the first partition with records left.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiokafka.errors as kafka_errors
from aiokafka.consumer.consumer import AIOKafkaConsumer
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.protocol.group import LeaveGroupRequest
from aiokafka.structs import TopicPartition
from faust.tables import recovery as faust_recovery
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

log = logging.getLogger(__name__)

FETCH_MAX_WAIT_MS = 20
PROBE_WAIT_MS = 100
PROBE_BYTES = 64 * 1024

_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_maybe_leave_group = GroupCoordinator._maybe_leave_group
_end_offsets = AIOKafkaConsumer.end_offsets
_wait_first = faust_consumer.Consumer.wait_first


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


class _Continued:
    """Awaiting this continues a coroutine already stepped once, now waiting on `pending`
    (what it yielded): the task that awaits it takes over that wait."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Any:
        coro, value = self.coro, self.pending
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # noqa: BLE001 - thrown in by the task: pass it on
                step = coro.throw, exc
            else:
                step = coro.send, sent
            try:
                value = step[0](step[1])
            except StopIteration as done:
                return done.value


async def _continue(coro: Any, pending: Any) -> Any:
    return await _Continued(coro, pending)


async def _wait_first_stepping_the_delivery(self: Any, first: Any, *others: Any,
                                            timeout: Any = None) -> Any:
    if not asyncio.iscoroutine(first) or self._stopped.is_set() or self._crashed.is_set():
        return await _wait_first(self, first, *others, timeout=timeout)
    try:
        pending = first.send(None)
    except StopIteration as done:  # delivered without blocking: the usual case
        _close(others)
        return WaitResults([first], [done.value], False)
    except BaseException:
        _close(others)
        raise
    return await _wait_first(self, _continue(first, pending), *others, timeout=timeout)


class _AsyncioWithSteppedWaitFor:
    """`asyncio` as faust.tables.recovery sees it: the same but for `wait_for`."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def wait_for(awaitable: Any, timeout: float | None) -> Any:
        if not asyncio.iscoroutine(awaitable):
            return await asyncio.wait_for(awaitable, timeout)
        try:
            pending = awaitable.send(None)
        except StopIteration as done:  # the record was waiting in the queue
            return done.value
        return await asyncio.wait_for(_continue(awaitable, pending), timeout)


def _need_recovery_first_found(self: Any) -> bool:
    offsets = self.active_offsets
    for tp, highwater in self.active_highwaters.items():
        offset = offsets[tp]
        if highwater is not None and offset is not None and highwater - offset > 0:
            return True
    return False


def _close(awaitables: tuple[Any, ...]) -> None:
    for awaitable in awaitables:
        if asyncio.iscoroutine(awaitable):
            awaitable.close()  # never started: closing it avoids "never awaited"


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _consumer_with_short_fetch_wait
AIOKafkaConsumer.end_offsets = _end_offsets_after_the_last_record
GroupCoordinator._maybe_leave_group = _leave_group_in_generation_zero_too
faust_consumer.Consumer.wait_first = _wait_first_stepping_the_delivery
faust_recovery.asyncio = _AsyncioWithSteppedWaitFor()  # type: ignore[assignment]
faust_recovery.Recovery.need_recovery = _need_recovery_first_found
