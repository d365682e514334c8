"""The one place tagstream changes Faust's behaviour, and why. Nothing happens on import:
`install(agent_topics)` applies it, and each process that runs a Faust worker calls it at its
start. Each change has a behavioural test in tests/worker/test_compat.py.

1. Seek before resume. When a worker's table recovery completes, Faust 0.15 resumes the
stream partitions and only then seeks them to their committed offsets
(`Recovery.on_recovery_completed`); flow is already on from the changelog reads. Until the
seek lands (9 s once, in a takeover) the consumer fetches from wherever aiokafka put the
partitions, and those messages reach the agent. After a takeover they are ahead of the
commit: the event-time clock moves past events the seek then delivers again, and those are
dead-lettered as late. The partitions are sought to their commits before Faust resumes them,
and Faust's own seek follows: only that one, after the resume, wakes the consumer.

2. Only the agent acknowledges its input. The member agent acknowledges an event once its
results are delivered (streams/worker/acks.py). Faust's stream also acknowledges, by itself, every
message it skips: one fetched under an earlier consumer generation, or dequeued while flow is
suspended (faust/streams.py: `do_ack or value is skipped_value`). A skipped message never
reaches the agent, yet the ack lets Faust commit past it, and the next owner of the partition
starts after events nobody applied (16,522 of 39,116 tag changes missing in one
kill-a-worker run). On the agent's topics an ack counts only when the agent gives it
(`acknowledging()`).

3. A partition with no committed offset is sought to its beginning. Faust's "seek to the
committed offsets" leaves such a partition wherever the fetcher is, so messages fetched and
skipped at a generation change are never read again; and since the agent's acknowledgements
then start after them, the first commit passes them. With auto_offset_reset "earliest" the
beginning is where a commit would point, so this only makes the reset explicit. Where each of
the agent's partitions was sought to (its commit, or its beginning) is handed to the callback
`on_agent_partitions_sought` registered, so the agent can tell that the first message it is
handed is not the first one there (streams/worker/sequence.py).

4. The worker consumer's fetch wait is a setting. Faust builds it with fetch_max_wait_ms=1500,
hard-coded. aiokafka leaves a partition out of its next fetch while records fetched for it
are still unconsumed (after a 100 ms back-off it fetches the node's other partitions). When
the agent is still working through a large fetch of every busy partition, that next fetch
holds only quiet ones, the broker keeps it the whole 1.5 s, and the busy partitions are
fetched again only after it: the next fetch is large again, and the cycle repeats. At 800 live
orders/s (5,000 members) every order from the 7th second on took 1.0-1.7 s (p99 1,776 ms);
with 100 ms no order waited a second. TAGSTREAM_CONSUMER_FETCH_MAX_WAIT_MS, 100 by default:
an idle worker sends ten fetches a second instead of one every 1.5 s.

5. The fetcher hands a message over in place when the stream has room for it. Faust's fetcher
hands each message to the conductor as `wait_first(callback(message), suspend_flow.wait())`:
a rebalance that suspends flow while the stream's queue is full must not leave the fetcher
stuck in a put. That race costs four tasks and an `asyncio.wait` per message, and a loop turn
before the message moves: about 60 µs of the pipeline's ~330 µs an event (20,000 members),
and about a fifth of the Faust floor's own time. The hand-off is now stepped once in place;
if it finishes (the queue had room) no task is made. If it has to wait, the rest of it (the
same coroutine, not a new hand-off) is raced against `suspend_flow` exactly as Faust races
it, and while flow is suspended, or the consumer stopping, Faust's own path runs. Only that
call of the fetcher is recognised (its second argument is this consumer's
`suspend_flow.wait()`); every other `wait_first` is Faust's.

6. The fetcher hands the member agent's messages to the agent's handler, not to a stream.
For every other topic Faust's per-partition callback decodes a message into an Event, puts it
on each subscribing channel's queue, and the agent's stream takes it off, tracks it, calls the
sensors, and acknowledges it through the Event and the Message. That path, not the fetch,
is what bounds a Faust agent here: on one broker and 404,001 messages, an agent that only
acknowledges read 12,900-13,300 a second in six runs, and the same worker whose callback
acknowledged each message itself 107,000 in the run after them (raw aiokafka on the same
machine: about 108,000). For the topics handed to `hand_directly` the callback is the
agent's handler. It keeps what the stream does that correctness rests on: a message
fetched under an earlier consumer generation, or while flow is suspended for a rebalance, is
skipped unacknowledged (Faust seeks back to the commits before flow resumes, so it comes
again), and a message is tracked as unacknowledged before it is handed over (a revocation
waits for those). The channel queue, the Event and the sensors are left out, except the time
each partition last took a message in, which Faust's livelock check reads (without it, every
partition of the agent's was logged as a stream that never started once the worker had run
300 s). The agent's own stream still subscribes the topics; nothing reaches it.
"""

from __future__ import annotations

import asyncio
import contextvars
from contextlib import contextmanager
from time import monotonic
from typing import Any, Awaitable, Callable, Coroutine, Generator, Iterable, Iterator

from faust.tables import recovery as faust_recovery
from faust.transport import conductor as faust_conductor
from faust.transport import consumer as faust_consumer
from faust.transport.drivers import aiokafka as faust_aiokafka
from mode.services import WaitResults

_on_recovery_completed = faust_recovery.Recovery.on_recovery_completed
_consumer_ack = faust_consumer.Consumer.ack
_perform_seek = faust_consumer.Consumer.perform_seek
_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
_wait_first = faust_consumer.Consumer.wait_first
_build_handler = faust_conductor.Conductor._build_handler

_agent_topics: frozenset[str] = frozenset()
_fetch_max_wait_ms = 1500  # Faust's own, until install() sets the worker's
SoughtCallback = Callable[[dict[tuple[str, int], int]], None]
_on_sought: SoughtCallback | None = None
MessageHandler = Callable[[Any], Awaitable[None]]
# topic -> the handler its messages are handed to (adjustment 6)
_direct_handlers: dict[str, MessageHandler] = {}
_agent_acknowledging: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "tagstream_agent_acknowledging", default=False)


async def _on_recovery_completed_seeking_first(self: Any, generation_id: int = 0) -> None:
    """Seek the stream partitions to their commits before Faust resumes them, then let Faust
    go on as before (resume, and its own seek)."""
    consumer = self.app.consumer
    if self.app.consumer_generation_id == generation_id and consumer.assignment():
        await self._wait(consumer.perform_seek(), timeout=self.app.conf.broker_request_timeout)
    await _on_recovery_completed(self, generation_id)


@contextmanager
def acknowledging() -> Iterator[None]:
    """The agent's own acknowledgements are given inside this (a context variable, so an ack
    Faust gives from another task at the same time is still refused)."""
    token = _agent_acknowledging.set(True)
    try:
        yield
    finally:
        _agent_acknowledging.reset(token)


def _ack_given_by_the_agent(self: Any, message: Any) -> bool:
    if message.topic in _agent_topics and not _agent_acknowledging.get():
        return False  # Faust's ack of a message it skipped: the agent never saw it
    return _consumer_ack(self, message)


async def _perform_seek_uncommitted_from_the_beginning(self: Any) -> None:
    await _perform_seek(self)
    agent_partitions = [tp for tp in self.assignment() if tp.topic in _agent_topics]
    uncommitted = [self._new_topicpartition(tp.topic, tp.partition) for tp in agent_partitions
                   if not self._committed_offset.get(tp)]
    if uncommitted:
        await self._thread.seek_to_beginning(*uncommitted)
    if _on_sought is None or not agent_partitions:
        return
    starts = {(tp.topic, tp.partition): self._committed_offset[tp] for tp in agent_partitions
              if self._committed_offset.get(tp)}
    if uncommitted:
        earliest = await self._thread.earliest_offsets(*uncommitted)
        starts.update({(tp.topic, tp.partition): offset for tp, offset in earliest.items()})
    _on_sought(starts)


def on_agent_partitions_sought(callback: SoughtCallback | None) -> None:
    """`callback` gets, after each seek, (topic, partition) -> the offset each of the agent's
    assigned partitions was sought to (one member agent per process)."""
    global _on_sought
    _on_sought = callback


def _create_worker_consumer_waiting_less(self: Any, transport: Any) -> Any:
    consumer = _create_worker_consumer(self, transport)
    # read when the consumer starts and builds its fetcher (aiokafka's own constructor value)
    consumer._fetch_max_wait_ms = _fetch_max_wait_ms  # noqa: SLF001
    return consumer


async def rewind(consumer: Any, topic: str, partition: int, offset: int) -> None:
    """Fetch `topic` `partition` again from `offset` (streams/worker/sequence.py): seeks it in the
    consumer's own thread, as Faust's seek to committed offsets does, and moves Faust's read
    position with it (else Faust drops the messages it fetches again as already read)."""
    tp = consumer._new_topicpartition(topic, partition)  # noqa: SLF001
    await consumer._thread.seek_wait({tp: offset})  # noqa: SLF001
    consumer._read_offset[tp] = offset if offset else None  # noqa: SLF001


class PausedFetching:
    """Which partitions aiokafka itself fetches: exactly those not in the latest `wanted` set
    handed to `sync` (the member agent's paused topic-partitions, MemberProcessor.paused).

    Not Faust's `pause_partitions`: Faust drops the records it has already fetched for a
    partition it paused (its getmany yields only active partitions) and has moved past them,
    so they come back only through a rewind (an e2e replay lost most of its changes that
    way). aiokafka discards a paused partition's fetched records without moving its position
    and fetches them again once resumed. Applied in the consumer's own thread, where aiokafka
    runs; each sync carries a snapshot and a number, so a late one never undoes a newer one.
    A rebalance gives every partition a fresh, unpaused state; Faust never pauses in aiokafka."""

    def __init__(self, consumer: Any) -> None:
        self._consumer = consumer
        self._version = 0
        self._applied = 0

    async def sync(self, wanted: set[tuple[str, int]]) -> None:
        self._version += 1
        thread = self._consumer._thread  # noqa: SLF001
        await thread.call_thread(self._apply, thread, frozenset(wanted), self._version)

    async def _apply(self, thread: Any, wanted: frozenset[tuple[str, int]],
                     version: int) -> None:
        if version < self._applied:
            return
        self._applied = version
        aiokafka_consumer = thread._ensure_consumer()  # noqa: SLF001
        paused = aiokafka_consumer.paused()
        for tp in aiokafka_consumer.assignment():
            if (tp.topic, tp.partition) in wanted:
                if tp not in paused:
                    aiokafka_consumer.pause(tp)
            elif tp in paused:
                aiokafka_consumer.resume(tp)


async def _wait_first_handing_over_in_place(self: Any, *coros: Any,
                                            timeout: Any = None) -> WaitResults:
    if (len(coros) == 2 and timeout is None and _is_flow_suspension(self, coros[1])
            and asyncio.iscoroutine(coros[0]) and not self.suspend_flow.is_set()
            and not self._stopped.is_set() and not self._crashed.is_set()):  # noqa: SLF001
        handoff, suspension = coros
        try:
            blocked_on = handoff.send(None)
        except StopIteration as handed:
            suspension.close()
            return WaitResults([handoff], [handed.value], False)
        except BaseException:
            suspension.close()
            raise
        coros = (Resumed(handoff, blocked_on), suspension)
    return await _wait_first(self, *coros, timeout=timeout)


def _is_flow_suspension(consumer: Any, waiting: Any) -> bool:
    """`waiting` is `consumer.suspend_flow.wait()`, not yet started."""
    frame = getattr(waiting, "cr_frame", None)
    return (getattr(waiting, "cr_code", None) is asyncio.Event.wait.__code__
            and frame is not None and frame.f_locals.get("self") is consumer.suspend_flow)


class Resumed:
    """A coroutine already stepped once, which then yielded `blocked_on`, as an awaitable
    that finishes it: whatever awaits this waits for `blocked_on` and goes on stepping the
    same coroutine. A cancellation is thrown into the coroutine, as if it were awaited."""

    __slots__ = ("_coroutine", "_blocked_on")

    def __init__(self, coroutine: Coroutine[Any, Any, Any], blocked_on: Any) -> None:
        self._coroutine = coroutine
        self._blocked_on = blocked_on

    def __await__(self) -> Generator[Any, Any, Any]:
        coroutine, yielded = self._coroutine, self._blocked_on
        while True:
            thrown: BaseException | None = None
            try:
                sent = yield yielded
            except GeneratorExit:
                coroutine.close()
                raise
            except BaseException as error:  # a task's cancellation, above all
                thrown = error
            try:
                yielded = coroutine.send(sent) if thrown is None else coroutine.throw(thrown)
            except StopIteration as finished:
                return finished.value


def hand_directly(topics: Iterable[str], handler: MessageHandler | None) -> None:
    """The fetcher hands each message of `topics` to `handler` (None: to the topics'
    streams again), from the next assignment on; one member agent per process."""
    _direct_handlers.clear()
    if handler is not None:
        _direct_handlers.update(dict.fromkeys(topics, handler))


def _build_handler_handing_directly(self: Any, tp: Any, channels: Any) -> Any:
    handler = _direct_handlers.get(tp.topic)
    if handler is None:
        return _build_handler(self, tp, channels)
    return _handing_to(self.app, handler)


def _handing_to(app: Any, handler: MessageHandler) -> Callable[[Any], Awaitable[None]]:
    flow_control = app.flow_control
    unacknowledged = app.consumer._unacked_messages  # noqa: SLF001
    # When each partition last had a message taken in, which a stream records through
    # Monitor.on_stream_event_in. Faust's livelock check reads it: a partition with messages
    # to read and no time here after stream_processing_timeout (300 s) is logged as a stream
    # that never started, every 7 s, and its commits are then never checked.
    inbound_times = app.monitor.stream_inbound_time

    async def on_message(message: Any) -> None:
        # as Faust's callback: nothing is handed over while a rebalance suspends flow
        await flow_control.acquire()
        # as Faust's stream: a message of an earlier generation is skipped, and (adjustment
        # 2) not acknowledged
        if (message.generation_id != app.consumer_generation_id
                or not flow_control.is_active()):
            return
        if not message.tracked:
            message.tracked = True
            unacknowledged.add(message)
        inbound_times[message.tp] = monotonic()
        await handler(message)

    return on_message


def install(agent_topics: Iterable[str], fetch_max_wait_ms: int) -> None:
    """Apply the adjustments (idempotent); `agent_topics` are the topics the member agent
    consumes and acknowledges itself; `fetch_max_wait_ms` is how long the worker consumer's
    fetch may wait at the broker for a message."""
    global _agent_topics, _fetch_max_wait_ms
    _agent_topics = frozenset(agent_topics)
    _fetch_max_wait_ms = fetch_max_wait_ms
    faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = (
        _create_worker_consumer_waiting_less)
    faust_recovery.Recovery.on_recovery_completed = _on_recovery_completed_seeking_first
    faust_consumer.Consumer.ack = _ack_given_by_the_agent
    faust_consumer.Consumer.perform_seek = _perform_seek_uncommitted_from_the_beginning
    faust_consumer.Consumer.wait_first = _wait_first_handing_over_in_place
    faust_conductor.Conductor._build_handler = _build_handler_handing_directly


def installed() -> bool:
    return (faust_recovery.Recovery.on_recovery_completed is _on_recovery_completed_seeking_first
            and faust_consumer.Consumer.ack is _ack_given_by_the_agent
            and faust_consumer.Consumer.perform_seek
            is _perform_seek_uncommitted_from_the_beginning
            and faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer
            is _create_worker_consumer_waiting_less
            and faust_consumer.Consumer.wait_first is _wait_first_handing_over_in_place
            and faust_conductor.Conductor._build_handler is _build_handler_handing_directly)
