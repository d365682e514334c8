"""The Faust adjustments in streams/worker/compat.py, once installed, do what they say."""

from __future__ import annotations

import asyncio
import logging
from time import monotonic
from types import SimpleNamespace
from typing import Any
from weakref import WeakSet

from collections import defaultdict

from mode.utils.queues import FlowControlEvent

from faust.tables.recovery import Recovery
from faust.transport.conductor import Conductor
from faust.transport.consumer import Consumer
from faust.transport.drivers.aiokafka import (
    SLOW_PROCESSING_NO_RECENT_COMMIT, SLOW_PROCESSING_STREAM_IDLE_SINCE_START,
    AIOKafkaConsumerThread,
)
from faust.types import TP

import pytest

from streams.worker import compat
from streams.worker.members import ConsumerAck, StreamAck


AGENT_TOPICS = ("events.orders", "tagstream-events.reroute")
FETCH_MAX_WAIT_MS = 100


@pytest.fixture(autouse=True)
def adjusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed for each test, and Faust's own methods back afterwards (undo of the no-op
    setattrs), so no other test runs patched by accident."""
    monkeypatch.setattr(Recovery, "on_recovery_completed", Recovery.on_recovery_completed)
    monkeypatch.setattr(Consumer, "ack", Consumer.ack)
    monkeypatch.setattr(Consumer, "perform_seek", Consumer.perform_seek)
    monkeypatch.setattr(Consumer, "wait_first", Consumer.wait_first)
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer",
                        AIOKafkaConsumerThread._create_worker_consumer)
    monkeypatch.setattr(compat, "_agent_topics", compat._agent_topics)
    monkeypatch.setattr(compat, "_fetch_max_wait_ms", compat._fetch_max_wait_ms)
    monkeypatch.setattr(compat, "_on_sought", compat._on_sought)
    monkeypatch.setattr(Conductor, "_build_handler", Conductor._build_handler)
    monkeypatch.setattr(compat, "_direct_handlers", {})
    compat.install(AGENT_TOPICS, FETCH_MAX_WAIT_MS)


class RecordingConsumer:
    """What Recovery.on_recovery_completed does to the consumer, in order."""

    def __init__(self, assignment: set[TP]) -> None:
        self._assignment = assignment
        self.calls: list[tuple[str, object]] = []

    def assignment(self) -> set[TP]:
        return self._assignment

    async def perform_seek(self) -> None:
        self.calls.append(("seek", None))

    def resume_partitions(self, partitions: set[TP]) -> None:
        self.calls.append(("resume", frozenset(partitions)))

    def resume_flow(self) -> None:
        self.calls.append(("resume_flow", None))


def recovery_with(consumer: RecordingConsumer) -> Any:
    async def nothing(*_: Any, **__: Any) -> None:
        return None

    async def wait(coro: Any, timeout: float | None = None) -> None:
        await coro

    app = SimpleNamespace(
        consumer=consumer, consumer_generation_id=3,
        on_rebalance_complete=SimpleNamespace(send=nothing),
        conf=SimpleNamespace(broker_request_timeout=30),
        flow_control=SimpleNamespace(resume=lambda: consumer.calls.append(("flow", None))),
        _fetcher=SimpleNamespace(maybe_start=nothing),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=lambda: None)
    log = logging.getLogger("test")
    return SimpleNamespace(
        app=app, log=SimpleNamespace(info=log.info, warning=log.warning, dev=log.debug),
        tables=SimpleNamespace(
            values=lambda: [], on_actives_ready=lambda: None, on_standbys_ready=lambda: None),
        actives_for_table={}, standbys_for_table={}, completed=asyncio.Event(),
        _set_recovery_ended=lambda: None, _wait=wait,
        _is_changelog_tp=lambda tp: tp.topic.endswith("-changelog"))


async def test_stream_partitions_are_sought_to_the_commit_before_they_are_resumed() -> None:
    """Regression: Faust resumed them first, so until the seek landed the agent got messages
    from beyond the commit; the clock passed events the seek delivered again, and those were
    dead-lettered as late (7,215 in one kill-a-worker run)."""
    events = TP("events.orders", 1)
    changelog = TP("tagstream-members-changelog", 1)
    consumer = RecordingConsumer({events, changelog})
    recovery = recovery_with(consumer)
    await Recovery.on_recovery_completed(recovery, generation_id=3)
    # then Faust's own order: resume, seek (which is what wakes the consumer), flow
    assert [name for name, _ in consumer.calls] == [
        "seek", "resume", "seek", "flow", "resume_flow"]
    assert consumer.calls[1] == ("resume", frozenset({events}))
    assert recovery.completed.is_set()


async def test_a_recovery_overtaken_by_a_new_rebalance_neither_seeks_nor_resumes() -> None:
    consumer = RecordingConsumer({TP("events.orders", 1)})
    recovery = recovery_with(consumer)
    await Recovery.on_recovery_completed(recovery, generation_id=2)  # the app is at 3
    assert consumer.calls == [] and not recovery.completed.is_set()


def test_installing_twice_keeps_one_adjustment() -> None:
    compat.install(AGENT_TOPICS, FETCH_MAX_WAIT_MS)
    compat.install(AGENT_TOPICS, FETCH_MAX_WAIT_MS)
    assert compat.installed()


async def test_faust_alone_resumes_before_it_seeks(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the adjustment is for: without it the first call is the resume (the race)."""
    monkeypatch.setattr(Recovery, "on_recovery_completed", compat._on_recovery_completed)
    consumer = RecordingConsumer({TP("events.orders", 1)})
    await Recovery.on_recovery_completed(recovery_with(consumer), generation_id=3)
    assert [name for name, _ in consumer.calls][:2] == ["resume", "seek"]


# --- 2. only the agent acknowledges its input ------------------------------------------------

def bookkeeping_consumer() -> Any:
    """The state Faust's Consumer.ack and _new_offset keep, and nothing else."""
    return SimpleNamespace(
        app=SimpleNamespace(topics=SimpleNamespace(acks_enabled_for=lambda topic: True)),
        _committed_offset=defaultdict(lambda: None), _acked=defaultdict(list),
        _acked_index=defaultdict(set), _gap=defaultdict(lambda: None),
        _unacked_messages=set(), _n_acked=0, _waiting_for_ack=None)


class FetchedMessage:
    """The fields of a Faust message that Consumer.ack reads (hashable, as Faust's are)."""

    def __init__(self, topic: str, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, 0, offset
        self.tp = TP(topic, 0)
        self.acked = False


def test_an_ack_faust_gives_a_skipped_message_is_not_committed() -> None:
    """Regression: Faust's stream acknowledged the messages it skipped at a generation change
    and committed past them; the next owner started after events nobody applied (16,522 of
    39,116 tag changes missing in one kill-a-worker run)."""
    consumer, tp = bookkeeping_consumer(), TP("events.orders", 0)
    for offset in range(3):  # skipped by the stream, never handed to the agent
        assert Consumer.ack(consumer, FetchedMessage("events.orders", offset)) is False
    assert Consumer._new_offset(consumer, tp) is None


def test_the_agents_own_ack_is_committed() -> None:
    consumer, tp = bookkeeping_consumer(), TP("events.orders", 0)
    with compat.acknowledging():
        for offset in range(3):
            assert Consumer.ack(consumer, FetchedMessage("events.orders", offset)) is True
    assert Consumer._new_offset(consumer, tp) == 3


async def test_the_agents_stream_ack_counts_and_is_given_once() -> None:
    """The member agent hands the processor a StreamAck per event: given inside
    `acknowledging`, so Faust commits it, and to the stream once however often it is called
    (a slot may be owed twice after an error)."""
    consumer, tp = bookkeeping_consumer(), TP("events.orders", 0)

    class Stream:
        acks = 0

        async def ack(self, event: FetchedMessage) -> bool:
            self.acks += 1
            return Consumer.ack(consumer, event)

    stream = Stream()
    ack = StreamAck(stream, FetchedMessage("events.orders", 0))
    await ack()
    await ack()
    assert stream.acks == 1
    assert Consumer._new_offset(consumer, tp) == 1


def test_other_topics_are_acknowledged_as_faust_does() -> None:
    consumer = bookkeeping_consumer()
    assert Consumer.ack(consumer, FetchedMessage("tagstream-members-changelog", 0)) is True


def test_faust_alone_commits_past_what_its_stream_skipped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the adjustment is for: Faust's own ack makes the skipped offsets committable."""
    monkeypatch.setattr(Consumer, "ack", compat._consumer_ack)
    consumer = bookkeeping_consumer()
    for offset in range(3):
        Consumer.ack(consumer, FetchedMessage("events.orders", offset))
    assert Consumer._new_offset(consumer, TP("events.orders", 0)) == 3


# --- 3. a partition with no committed offset is sought to its beginning ----------------------

class SeekingConsumer:
    """What Consumer.perform_seek reads and calls: the commits aiokafka reports, and the
    seeks to the beginning it is asked for."""

    def __init__(self, committed: dict[TP, int | None]) -> None:
        self.committed = committed
        self.to_beginning: list[tuple[str, int]] = []
        self._read_offset: dict[TP, int | None] = {}
        self._committed_offset: dict[TP, int | None] = defaultdict(lambda: None)
        self.earliest: dict[TP, int] = {}
        self.earliest_asked: list[tuple[str, int]] = []
        self._thread = SimpleNamespace(seek_to_beginning=self._seek_to_beginning,
                                       earliest_offsets=self._earliest_offsets)

    async def _seek_to_beginning(self, *partitions: tuple[str, int]) -> None:
        self.to_beginning.extend(partitions)

    async def _earliest_offsets(self, *partitions: tuple[str, int]) -> dict[TP, int]:
        self.earliest_asked.extend(partitions)
        return {TP(*tp): self.earliest.get(TP(*tp), 0) for tp in partitions}

    async def seek_to_committed(self) -> dict[TP, int | None]:
        return dict(self.committed)

    def assignment(self) -> set[TP]:
        return set(self.committed)

    def _new_topicpartition(self, topic: str, partition: int) -> tuple[str, int]:
        return (topic, partition)


async def test_an_uncommitted_agent_partition_is_sought_to_its_beginning() -> None:
    """Regression: Faust's seek left it where the fetcher was, after messages skipped at
    the generation change, so they were never read (one partition's first 5,713)."""
    consumer = SeekingConsumer({
        TP("events.orders", 0): None,  # no commit yet: from the beginning
        TP("events.orders", 1): 120,  # sought to its commit by aiokafka, left alone here
        TP("tagstream-members-changelog", 0): None,  # not the agent's: Faust's business
    })
    await Consumer.perform_seek(consumer)
    assert consumer.to_beginning == [("events.orders", 0)]
    assert consumer._committed_offset[TP("events.orders", 1)] == 120


async def test_where_each_agent_partition_was_sought_to_is_handed_to_the_agent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    handed: list[dict] = []
    monkeypatch.setattr(compat, "_on_sought", None)
    compat.on_agent_partitions_sought(handed.append)
    consumer = SeekingConsumer({
        TP("events.orders", 0): None,  # its beginning, read from the broker
        TP("events.orders", 1): 120,  # its commit
        TP("tagstream-events.reroute", 2): 0,  # a commit of 0 is Faust's "none": the beginning
        TP("tagstream-members-changelog", 0): None,  # not the agent's
    })
    consumer.earliest = {TP("events.orders", 0): 7}
    await Consumer.perform_seek(consumer)
    assert handed == [{("events.orders", 0): 7, ("events.orders", 1): 120,
                       ("tagstream-events.reroute", 2): 0}]
    assert sorted(consumer.earliest_asked) == [("events.orders", 0),
                                               ("tagstream-events.reroute", 2)]


async def test_without_a_callback_no_beginning_is_asked_for(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "_on_sought", None)
    consumer = SeekingConsumer({TP("events.orders", 0): None})
    await Consumer.perform_seek(consumer)
    assert consumer.to_beginning == [("events.orders", 0)] and consumer.earliest_asked == []


async def test_faust_alone_leaves_an_uncommitted_partition_where_it_is(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Consumer, "perform_seek", compat._perform_seek)
    consumer = SeekingConsumer({TP("events.orders", 0): None})
    await Consumer.perform_seek(consumer)
    assert consumer.to_beginning == []


class SeekingThread:
    def __init__(self) -> None:
        self.sought: list[dict] = []

    async def seek_wait(self, partitions: dict) -> None:
        self.sought.append(dict(partitions))


async def test_a_rewind_seeks_in_the_consumer_thread_and_moves_fausts_read_position() -> None:
    """Faust drops a fetched message below its read position as already read, so a rewind
    that left the read position would lose the very messages it fetches again."""
    consumer = SimpleNamespace(_thread=SeekingThread(), _read_offset=defaultdict(lambda: None),
                               _new_topicpartition=lambda topic, partition: TP(topic, partition))
    tp = TP("events.orders", 2)
    consumer._read_offset[tp] = 97
    await compat.rewind(consumer, "events.orders", 2, 40)
    assert consumer._thread.sought == [{tp: 40}] and consumer._read_offset[tp] == 40


# --- 4. the worker consumer's fetch wait is a setting ----------------------------------------

def worker_consumer() -> Any:
    """Faust's consumer of a worker app (not started: nothing connects)."""
    from streams.platform.settings import Settings
    from streams.worker.app import create_app

    return create_app(Settings(broker="kafka://127.0.0.1:9")).consumer


def worker_consumer_thread() -> Any:
    """Faust's consumer thread of a worker app, and its transport."""
    consumer = worker_consumer()
    return consumer._thread, consumer.transport


async def test_the_worker_consumer_fetches_with_the_configured_wait() -> None:
    thread, transport = worker_consumer_thread()
    consumer = thread._create_worker_consumer(transport)
    try:
        assert consumer._fetch_max_wait_ms == FETCH_MAX_WAIT_MS
    finally:
        await consumer.stop()  # never started: only closes its client


async def test_faust_alone_waits_a_second_and_a_half(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the adjustment is for: Faust's own worker consumer holds a fetch up to 1.5 s."""
    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer",
                        compat._create_worker_consumer)
    thread, transport = worker_consumer_thread()
    consumer = thread._create_worker_consumer(transport)
    try:
        assert consumer._fetch_max_wait_ms == 1500
    finally:
        await consumer.stop()


class HandOff:
    """The conductor's side of the fetcher's hand-off: takes a message, waiting for room
    first when `room` is given (a future: the stream's queue is full until it is done)."""

    def __init__(self, room: asyncio.Future[None] | None = None) -> None:
        self.room = room
        self.handed: list[str] = []
        self.cancelled = False

    async def __call__(self, message: str) -> str:
        if self.room is not None:
            try:
                await self.room
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        self.handed.append(message)
        return f"handed {message}"


async def hand_over(consumer: Any, hand_off: HandOff, message: str) -> Any:
    """The fetcher's call, as `Consumer._drain_messages` makes it."""
    return await consumer.wait_first(hand_off(message), consumer.suspend_flow.wait())


async def test_a_message_the_stream_has_room_for_is_handed_over_without_a_loop_turn() -> None:
    consumer, hand_off, turns = worker_consumer(), HandOff(), []
    asyncio.get_running_loop().call_soon(turns.append, "a loop turn")
    results = await hand_over(consumer, hand_off, "m1")
    assert hand_off.handed == ["m1"] and results.results == ["handed m1"]
    assert not results.stopped
    assert turns == []  # nothing else ran: no task was made for it


async def test_faust_alone_hands_every_message_over_after_a_loop_turn(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """What the adjustment is for: Faust's own race makes tasks and waits for them."""
    monkeypatch.setattr(Consumer, "wait_first", compat._wait_first)
    consumer, hand_off, turns = worker_consumer(), HandOff(), []
    asyncio.get_running_loop().call_soon(turns.append, "a loop turn")
    await hand_over(consumer, hand_off, "m1")
    assert hand_off.handed == ["m1"] and turns == ["a loop turn"]


async def test_a_hand_over_that_waits_for_room_finishes_once_there_is_room() -> None:
    room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    consumer, hand_off = worker_consumer(), HandOff(room)
    handing = asyncio.ensure_future(hand_over(consumer, hand_off, "m1"))
    await asyncio.sleep(0.01)
    assert not handing.done() and hand_off.handed == []
    room.set_result(None)
    results = await asyncio.wait_for(handing, 5)
    assert hand_off.handed == ["m1"] and "handed m1" in results.results


async def test_a_hand_over_waiting_for_room_gives_way_when_flow_is_suspended() -> None:
    """A rebalance suspends flow while the stream's queue is full: the fetcher is not stuck
    in the put, and the waiting hand-off is cancelled, as in Faust's own race."""
    room: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    consumer, hand_off = worker_consumer(), HandOff(room)
    handing = asyncio.ensure_future(hand_over(consumer, hand_off, "m1"))
    await asyncio.sleep(0.01)
    consumer.suspend_flow.set()
    results = await asyncio.wait_for(handing, 5)
    await asyncio.sleep(0)  # the cancelled hand-off's task runs its cancellation
    assert hand_off.handed == [] and hand_off.cancelled
    assert results.results == [True]  # the suspension won


async def test_while_flow_is_suspended_fausts_own_race_hands_over() -> None:
    consumer, hand_off, turns = worker_consumer(), HandOff(), []
    consumer.suspend_flow.set()
    asyncio.get_running_loop().call_soon(turns.append, "a loop turn")
    await hand_over(consumer, hand_off, "m1")
    assert turns == ["a loop turn"]  # Faust's path: tasks, and a turn of the loop


async def test_a_hand_over_that_fails_raises_and_leaves_no_coroutine_unawaited() -> None:
    consumer = worker_consumer()

    async def failing(message: str) -> None:
        raise ValueError(f"cannot decode {message}")

    suspension = consumer.suspend_flow.wait()
    with pytest.raises(ValueError, match="cannot decode m1"):
        await consumer.wait_first(failing("m1"), suspension)
    assert suspension.cr_frame is None  # closed, never left to warn "never awaited"


async def test_other_waits_are_fausts_own() -> None:
    consumer, hand_off, turns = worker_consumer(), HandOff(), []
    asyncio.get_running_loop().call_soon(turns.append, "a loop turn")
    other = asyncio.Event()
    other.set()
    await consumer.wait_first(hand_off("m1"), other.wait())  # not the consumer's suspend_flow
    assert turns == ["a loop turn"]


async def test_a_resumed_coroutine_gets_what_it_waited_for_and_its_cancellation() -> None:
    loop = asyncio.get_running_loop()
    first, second = loop.create_future(), loop.create_future()

    async def two_waits() -> list[str]:
        return [await first, await second]

    coroutine = two_waits()
    resumed = asyncio.ensure_future(compat.Resumed(coroutine, coroutine.send(None)))
    first.set_result("a")
    second.set_result("b")
    assert await asyncio.wait_for(resumed, 5) == ["a", "b"]

    never: asyncio.Future[None] = loop.create_future()
    seen: list[str] = []

    async def waits_forever() -> None:
        try:
            await never
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    coroutine = waits_forever()
    resumed = asyncio.ensure_future(compat.Resumed(coroutine, coroutine.send(None)))
    await asyncio.sleep(0)
    resumed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await resumed
    assert seen == ["cancelled"]


# --- 6. the fetcher hands the agent's messages to its handler --------------------------------

class HandedMessage:
    """The fields of a Faust message the direct hand-off reads (weak-referenceable, as
    Faust's consumer tracks its unacknowledged messages in a WeakSet)."""

    def __init__(self, topic: str, offset: int, generation_id: int) -> None:
        self.topic, self.partition, self.offset = topic, 0, offset
        self.tp = TP(topic, 0)
        self.generation_id = generation_id
        self.tracked = False
        self.acked = False


def conductor_of(generation_id: int = 7) -> Any:
    flow = FlowControlEvent()
    flow.resume()
    consumer = SimpleNamespace(_unacked_messages=WeakSet())
    monitor = SimpleNamespace(stream_inbound_time={})  # what Faust's Monitor keeps per TP
    return SimpleNamespace(app=SimpleNamespace(flow_control=flow, consumer=consumer,
                                               consumer_generation_id=generation_id,
                                               monitor=monitor,
                                               topics=SimpleNamespace(
                                                   acks_enabled_for=lambda topic: True)))


def handing_to(handled: list[Any]) -> Any:
    async def handler(message: Any) -> None:
        handled.append(message)

    compat.hand_directly(AGENT_TOPICS, handler)
    return handler


async def test_the_agents_messages_are_tracked_and_handed_to_its_handler() -> None:
    handled: list[Any] = []
    handing_to(handled)
    conductor = conductor_of()
    callback = Conductor._build_handler(conductor, TP("events.orders", 0), set())
    message = HandedMessage("events.orders", 5, generation_id=7)
    await callback(message)
    assert handled == [message]
    # tracked before the hand-off: a revocation waits for it to be acknowledged
    assert message.tracked and message in conductor.app.consumer._unacked_messages


async def test_a_message_of_an_earlier_generation_is_skipped_unacknowledged() -> None:
    """As Faust's stream skips it: the seek at the rebalance brings it again."""
    handled: list[Any] = []
    handing_to(handled)
    conductor = conductor_of(generation_id=8)
    callback = Conductor._build_handler(conductor, TP("events.orders", 0), set())
    message = HandedMessage("events.orders", 5, generation_id=7)
    await callback(message)
    assert handled == [] and not message.tracked and not message.acked


async def test_nothing_is_handed_over_while_flow_is_suspended() -> None:
    handled: list[Any] = []
    handing_to(handled)
    conductor = conductor_of(generation_id=7)
    callback = Conductor._build_handler(conductor, TP("events.orders", 0), set())
    conductor.app.flow_control.suspend()
    waiting = asyncio.ensure_future(callback(HandedMessage("events.orders", 5, 7)))
    await asyncio.sleep(0.01)
    assert not waiting.done() and handled == []
    # the rebalance ends with a new generation: the message fetched before it is skipped
    conductor.app.consumer_generation_id = 8
    conductor.app.flow_control.resume()
    await waiting
    assert handled == []


async def test_other_topics_get_fausts_own_callback(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[TP] = []
    monkeypatch.setattr(compat, "_build_handler",
                        lambda conductor, tp, channels: built.append(tp) or "faust's own")
    handing_to([])
    assert Conductor._build_handler(conductor_of(), TP("tables.x", 0), set()) == "faust's own"
    compat.hand_directly(AGENT_TOPICS, None)  # handed to the streams again
    assert Conductor._build_handler(conductor_of(), TP("events.orders", 0), set()) == (
        "faust's own")
    assert built == [TP("tables.x", 0), TP("events.orders", 0)]


async def test_the_agents_consumer_ack_counts_and_counts_once() -> None:
    """Given inside `acknowledging`, so Faust commits it; again, it changes nothing."""
    consumer, tp = bookkeeping_consumer(), TP("events.orders", 0)
    consumer.ack = lambda message: Consumer.ack(consumer, message)
    ack = ConsumerAck(consumer, FetchedMessage("events.orders", 0))
    await ack()
    await ack()
    assert consumer._acked[tp] == [0]
    assert Consumer._new_offset(consumer, tp) == 1


class ErrorLog:
    def __init__(self) -> None:
        self.errors: list[str] = []

    def error(self, message: str, *args: Any) -> None:
        self.errors.append(message % args if args else message)


def fausts_liveness_check(app: Any, tp: TP, *, running_s: float,
                          last_commit_s_ago: float) -> list[str]:
    """What Faust's own check of a partition's event path (AIOKafkaConsumerThread.
    verify_event_path, every 7 s) logs for `tp` of a worker running `running_s`, whose
    partition has messages past its position (fetched, not all acknowledged)."""
    now = monotonic()
    log = ErrorLog()
    position = SimpleNamespace(highwater=100, position=40)
    assignment = SimpleNamespace(state_value=lambda aiotp: position)
    aiokafka_consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment))))
    thread = SimpleNamespace(
        consumer=SimpleNamespace(app=app), time_started=now - running_s, log=log,
        _verify_aiokafka_event_path=lambda now, tp: False,  # the fetches themselves are fine
        _ensure_consumer=lambda: aiokafka_consumer,
        tp_stream_timeout_secs=300.0, tp_commit_timeout_secs=300.0,
        tp_last_committed_at={tp: now - last_commit_s_ago},
        _log_slow_processing_stream=log.error, _log_slow_processing_commit=log.error)
    AIOKafkaConsumerThread.verify_event_path(thread, now, tp)
    return log.errors


async def test_fausts_liveness_check_sees_the_agent_take_its_messages_in() -> None:
    """Regression: with the hand-off, no stream recorded taking a message in, so once a worker
    had run 300 s Faust logged every partition of the agent's as a stream that never started,
    every 7 s (1,066 errors in the 1,000,000-member bench's 17-minute phase)."""
    handing_to([])
    conductor, tp = conductor_of(), TP("events.orders", 0)
    await Conductor._build_handler(conductor, tp, set())(HandedMessage("events.orders", 5, 7))
    assert fausts_liveness_check(conductor.app, tp, running_s=400, last_commit_s_ago=1) == []


def test_without_the_record_faust_reports_a_stream_that_never_started() -> None:
    conductor, tp = conductor_of(), TP("events.orders", 0)
    [error] = fausts_liveness_check(conductor.app, tp, running_s=400, last_commit_s_ago=1)
    assert error.startswith(SLOW_PROCESSING_STREAM_IDLE_SINCE_START.split("%r")[0] + repr(tp))


async def test_fausts_commit_check_now_reaches_the_agents_partitions() -> None:
    """Past the stream check, Faust checks the partition's commits: a stalled commit on a
    partition the agent takes messages from is reported as one."""
    handing_to([])
    conductor, tp = conductor_of(), TP("events.orders", 0)
    await Conductor._build_handler(conductor, tp, set())(HandedMessage("events.orders", 5, 7))
    [error] = fausts_liveness_check(conductor.app, tp, running_s=900, last_commit_s_ago=400)
    assert error.startswith(SLOW_PROCESSING_NO_RECENT_COMMIT.split("%r")[0] + repr(tp))
