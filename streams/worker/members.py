"""The member agent: events of a member's partition in, state and tag changes out.

A thin adapter (STYLE.md rule 2): it decodes, routes, calls the pure engine, stores the new
state and sends the results. Every business decision lives in `taggers`.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterable, Iterator, NamedTuple

import faust

from schemas.changes import encode_change
from schemas.control import BACKFILL, WATERMARK, control_kind, decode_watermark
from schemas.decode import decode_event
from schemas.errors import EventRejected
from schemas.events import TIE_RANK_BY_TOPIC
from streams.platform import metrics
from streams.platform.partitioning import partition_for
from streams.platform.settings import Settings
from streams.platform.topics import TopicNames, Topics
from streams.worker import compat
from streams.worker.acks import Ack, AckSlot, OrderedAcks
from streams.worker.clock import PartitionClocks
from streams.worker.deadletter import dead_letter
from streams.worker.deadlines import DeadlineIndex
from streams.worker.outbox import Record, RecordSender
from streams.worker.reorder import ReorderBuffer
from streams.worker.sequence import Admission, DeliverySequence
from streams.worker.state_store import MemberStore, StagedBatch, StagedStates
from streams.worker.sweeps import Sweeper
from taggers.clock import to_epoch
from taggers.engine import Engine, Outcome
from schemas.erasure import encode_erasure
from schemas.tasks import encode_task
from schemas.wecom import encode_marks
from taggers.state import MemberState, decode_next_deadline, decode_state, encode_state

log = logging.getLogger(__name__)

ORIGIN_HEADER = "tagstream-origin"  # "topic:partition:offset" of a re-routed event


@dataclass
class Counters:
    processed: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    rerouted: int = 0
    tag_changes: int = 0
    timers_fired: int = 0
    erased: int = 0


# A batch is shipped this long after its first record or acknowledgement (the latency a quiet
# stream adds), or at once when this many events or changed members are waiting (the memory a
# busy one holds). Per batch, each changed member costs one changelog record (its profile is
# rendered from that record by the Redis sink, on another core: streams/serving/profiles.py).
FLUSH_LINGER_S = 0.02
FLUSH_EVENTS = 5000
FLUSH_MEMBERS = 2000
# Batches queued to the producer and not yet delivered; the agent waits beyond this.
MAX_BATCHES_IN_FLIGHT = 4
# Stored states read per loop turn while a deadline heap is rebuilt on the wall clock
# (~6 us each: about 30 ms of the loop per step).
DEADLINE_LOAD_STEP = 5000
# Deadlines fired per partition per step of a tick, which yields to the loop between steps,
# and after each message, where nothing yields between the messages Faust has buffered.
# Deadlines cluster: every member whose window rolls at the same midnight, or whose dormancy
# falls due 90 days after the same sale day, is due at one instant. Fired all at once they
# stopped the worker's loop for 3-8 s at a time at 1,000,000 members (on the event clock of a
# replay, where an event-day's midnight comes every minute): 20,000 members due at once took
# one call of 2,087 ms; in steps of 500 calls of 44.8 ms (median), of 200 17.8 ms
# (`python -m tests.support.deadline_cluster 20000`). What is left stays due for the next
# step or message, and an event of a member still due fires that member's deadlines itself
# first (Engine.apply), so what is fired, and when it is stamped, does not depend on steps.
DEADLINE_TICK_STEP = 200
DEADLINE_MESSAGE_STEP = 20


class SealedBatch(NamedTuple):
    outputs: list[Record]  # tag, tier, task and WeCom records, dead letters, re-routes
    changelog: list[Record]  # each changed member's state: sent once `outputs` are delivered
    acks: list[AckSlot]
    staged: StagedBatch  # its states, written to the store once `changelog` is delivered
    # Changelogs go out in sealing order: this batch's waits for the previous batch's turn
    # (True once that changelog was queued; False if it never will be) and then sets its own.
    previous_turn: asyncio.Future[bool] | None
    turn: asyncio.Future[bool]


class ChangedMember(NamedTuple):
    partition: int
    state: bytes | None  # encoded; None: the member was erased in this batch (a tombstone)


class BatchAbandoned(Exception):
    """An earlier batch failed: this one's states build on it, so its changelog may not go."""


class MemberProcessor:
    """Handles the inbound messages of the partitions this worker owns, a batch at a time.

    `handle` does all the work of a message at once and awaits nothing: routing, the
    event-time clock, the engine, and the records that result go to the open batch. `flush`
    seals the batch (each changed member's state into the table, and its changelog record into
    the batch) and ships it. Crash safety: an event is acknowledged to Kafka (so
    its offset may be committed) only once every record of its batch is delivered. A crash
    before that redelivers the event, which re-creates the same changes with the same ids.

    `names` are the topics it reads and writes; `clocks` must follow `names.events`."""

    def __init__(self, engine: Engine, sender: RecordSender, table: Any, changelog_topic: str,
                 clocks: PartitionClocks, partitions: int, names: TopicNames,
                 clock: Callable[[], float] = time.monotonic,
                 linger_s: float = FLUSH_LINGER_S,
                 timer: Callable[[], float] = time.perf_counter,
                 hold_limit: int = Settings.event_hold_limit,
                 tick_step: int = DEADLINE_TICK_STEP,
                 message_step: int = DEADLINE_MESSAGE_STEP) -> None:
        self.engine = engine
        self.tick_step = tick_step
        self.message_step = message_step
        self.sender = sender
        self.table = table
        self.store = MemberStore(table, changelog_topic)
        self.changelog_topic = changelog_topic
        self.clocks = clocks
        self.partitions = partitions
        self.names = names
        # made from a state
        self._member_outputs = (names.tag_changes, names.tier_changes, names.wecom_marks,
                                names.erasures, names.task_changes)
        self.deadlines = DeadlineIndex()
        # partition -> its stored (deadline, member) pairs not yet read into `deadlines`
        self._loading: dict[int, Iterator[tuple[int | None, str]]] = {}
        self.pending = ReorderBuffer()
        self.hold_limit = hold_limit
        # Topic-partitions whose fetching this processor paused (too much of them held for the
        # event clock); the agent's registration sets how they are paused and resumed.
        self.paused: set[tuple[str, int]] = set()
        self.pause_fetching: Callable[[str, int], None] = _no_flow_control
        self.resume_fetching: Callable[[str, int], None] = _no_flow_control
        self.counters = Counters()
        # added to the Prometheus metrics once per batch; a tag change is a rule's fire too
        self.tally = metrics.Tally(also={metrics.TAG_CHANGES: (metrics.RULE_FIRES, 1)})
        self._handle_seconds = 0.0  # in `handle` since the last seal: one tally entry a batch
        self._monotonic = clock
        self._timer = timer  # times the agent's own code (metrics.AGENT_SECONDS)
        self.linger_s = linger_s
        # the next offset per topic-partition; `rewind` is set by the agent's registration
        self.sequence = DeliverySequence(rewind=_cannot_rewind)
        self.positions = self.sequence.next_offsets
        # The open batch.
        self._records: list[Record] = []
        # key -> the member's newest state, as this batch changed them
        self._dirty: dict[bytes, ChangedMember] = {}
        self._acks: list[AckSlot] = []
        self.acks = OrderedAcks()
        self._opened_at: float | None = None
        # Sealed batches are queued to the producer in the order they were sealed.
        self._queueing = asyncio.Lock()
        self._last_turn: asyncio.Future[bool] | None = None  # see SealedBatch.turn

    # --- the open batch -----------------------------------------------------------------------

    def _emit(self, record: Record) -> None:
        if self._opened_at is None:
            self._opened_at = self._monotonic()
        self._records.append(record)

    def _owe(self, ack: AckSlot) -> None:
        if self._opened_at is None:
            self._opened_at = self._monotonic()
        self._acks.append(ack)

    def batch_open(self) -> bool:
        return self._opened_at is not None

    def batch_full(self) -> bool:
        return len(self._acks) >= FLUSH_EVENTS or len(self._dirty) >= FLUSH_MEMBERS

    def batch_due(self) -> bool:
        """Something waits and it has waited the linger time (or the batch is full)."""
        if self._opened_at is None:
            return False
        return self.batch_full() or self._monotonic() - self._opened_at >= self.linger_s

    # --- messages -----------------------------------------------------------------------------

    def handle(self, message: Any, ack: Ack) -> None:
        """Process one message; `ack` is called once its batch is delivered (maybe later)."""
        started = self._timer()
        try:
            self._handle(message, ack)
        finally:
            self._handle_seconds += self._timer() - started

    def _handle(self, message: Any, ack: Ack) -> None:
        partition = message.partition
        if self.sequence.admit(message.topic, partition, message.offset) is not Admission.HANDLE:
            return  # not acknowledged: it comes again, or came before (streams/worker/sequence.py)
        if not self.deadlines.is_loaded(partition):
            self._load_deadlines(partition)
        slot = self.acks.register(message.topic, partition, ack)
        try:
            self._route(message, slot)
        except Exception as exc:  # noqa: BLE001 - a bug must not stop the partition
            origin = _safe_origin(message, self.names.reroute)
            log.exception("unexpected error handling %s:%s:%s", *origin)
            self.reject(f"internal error: {type(exc).__name__}: {exc}", origin, message)
            self._owe(slot)  # a slot is acknowledged once, even if owed twice

    def _route(self, message: Any, ack: AckSlot) -> None:
        partition = message.partition
        kind = control_kind(message.headers)
        if kind is not None:
            self._control(kind, message)
            self._owe(ack)
            self._release_and_fire(partition)
            return
        origin = _origin(message, self.names.reroute)
        # Decided by the kind of topic the event entered on: its family, its tie rank.
        entered = self.names.canonical(origin[0])
        try:
            event = decode_event(message.value, topic=entered, namespace=self.names.namespace)
        except EventRejected as rejected:
            self.reject(rejected.reason, origin, message)
            self._owe(ack)
            return

        home = partition_for(event.member_id, self.partitions)
        if home != partition:
            self._reroute(message, event.member_id, home, origin)
            self._owe(ack)
            return
        if self.clocks.mode == "wall":
            self._apply(event, origin, message)
            self._owe(ack)
            self._fire_due(partition, self.message_step)
            return
        occurred = to_epoch(event.occurred_at)
        passed = self._passed(message.topic, partition)
        if passed is not None and occurred <= passed:
            state = self._load(event.member_id.encode(), partition)
            if self.engine.has_applied(state, event) or _redelivered(state, message):
                # a producer's retry wrote it twice: applied once, not an error
                self.counters.duplicates += 1
                self._owe(ack)
                return
            self.reject(
                f"late event: occurred_at {self.engine.calendar.render(occurred)} arrived after "
                f"{message.topic} partition {partition} was complete through "
                f"{self.engine.calendar.render(passed)}; events may be out of order by at "
                f"most TAGSTREAM_REORDER_WINDOW_S={self.clocks.reorder_window_s} s",
                origin, message)
            self._owe(ack)
            return
        if message.topic in self.names.events:
            self.clocks.observe_event(message.topic, partition, occurred)
        rank = TIE_RANK_BY_TOPIC.get(entered, 9) if entered is not None else 9
        held = self.pending.push(partition, occurred, rank, message.topic,
                                 (event, origin, message, ack))
        if held >= self.hold_limit:
            self._hold(message.topic, partition)
        self._release_and_fire(partition)

    def _hold(self, topic: str, partition: int) -> None:
        """`topic` has hold_limit events on `partition` waiting for the clock: a topic read far
        ahead of the others in event time (a replay's orders while its interactions are still
        being read). Its fetching is paused until the clock catches up, or the hold would grow
        to the whole topic (a 5,000,000-event replay held 3 GB, and each full collection of
        it stopped the loop for up to 10 s). Never the topic the clock waits for, whose own
        completeness is the clock: pausing it would stop the clock for good."""
        if (topic, partition) in self.paused:
            return
        own = self.clocks.complete_through(topic, partition)
        now = self.clocks.now(partition)
        if own is None or (now is not None and own <= now):
            return
        self.paused.add((topic, partition))
        self.tally.add(metrics.HOLD_PAUSES, topic)
        self.pause_fetching(topic, partition)

    def fetching_reset(self) -> None:
        """A rebalance assigned partitions afresh: nothing is paused until held again."""
        self.paused.clear()

    def _resume_caught_up(self, partition: int) -> None:
        """Resume the partition's paused topics once the clock has drained half their hold,
        or reached their own completeness (what they hold then waits for their own later
        events, within the reorder window, which only fetching them brings)."""
        now = self.clocks.now(partition)
        for topic, paused_partition in [key for key in self.paused if key[1] == partition]:
            own = self.clocks.complete_through(topic, partition)
            caught_up = now is not None and own is not None and own <= now
            if caught_up or self.pending.held_from(topic, partition) <= self.hold_limit // 2:
                self.paused.discard((topic, partition))
                self.resume_fetching(topic, partition)

    def _passed(self, topic: str, partition: int) -> int | None:
        """The instant an arriving event must lie after: the partition's clock, or its own
        topic's completeness, which runs ahead of the clock while another topic is silent
        (an event older than that broke the topic's promise of order, even if the clock
        could still apply it)."""
        clock = self.clocks.now(partition)
        own = (self.clocks.complete_through(topic, partition) if topic in self.names.events
               else None)
        if own is None or (clock is not None and clock >= own):
            return clock
        return own

    def _release_and_fire(self, partition: int) -> None:
        """Event clock: apply held events the clock has passed, in order, then due timers."""
        if self.clocks.mode == "event":
            now = self.clocks.now(partition)
            if now is None:
                return
            for event, origin, message, ack in self.pending.pop_ready(partition, now):
                self._apply(event, origin, message)
                self._owe(ack)
            if self.paused:
                self._resume_caught_up(partition)
        self._fire_due(partition, self.message_step)

    def _apply(self, event: Any, origin: tuple[str, int, int], message: Any) -> None:
        key = event.member_id.encode()
        partition = message.partition
        state = self._load(key, partition)
        try:
            outcome = self.engine.apply(state, event)
        except EventRejected as rejected:
            if _redelivered(state, message):
                self.counters.duplicates += 1  # applied before a takeover: not an error
                return
            self.reject(rejected.reason, origin, message)
            return
        except Exception as exc:  # noqa: BLE001 - an engine bug must not stop the partition
            log.exception("engine failed on %s:%s:%s", *origin)
            self.reject(f"internal error: {type(exc).__name__}: {exc}", origin, message)
            return
        if outcome.duplicate:
            self.counters.duplicates += 1
            return
        if outcome.erasure is None:
            applied = outcome.state.applied
            if message.offset > applied.get(message.topic, -1):
                applied[message.topic] = message.offset
        self.counters.processed += 1
        self.tally.add(metrics.EVENTS_PROCESSED, origin[0])
        self._store(partition, key, outcome)

    # --- control messages ---------------------------------------------------------------------

    def _control(self, kind: bytes, message: Any) -> None:
        if kind == WATERMARK:
            try:
                instant = to_epoch(decode_watermark(message.value))
            except EventRejected as rejected:
                self.reject(rejected.reason, _origin(message, self.names.reroute), message)
                return
            if message.topic in self.names.events:
                self.clocks.observe_marker(message.topic, message.partition, instant)
        elif kind == BACKFILL:
            self._reevaluate_partition(message.partition)
        else:
            self.reject(f"unknown control message {kind!r}",
                        _origin(message, self.names.reroute), message)

    def _fire_due(self, partition: int, step: int) -> bool:
        """Fire up to `step` of the partition's due deadlines; True if more may be due."""
        now = self.clocks.now(partition)
        if now is None:
            return False
        for member_id in self.deadlines.pop_due(partition, now, step):
            key = member_id.encode()
            state = self._load(key, partition)
            if state is None:
                continue  # erased
            if state.next_deadline is None or state.next_deadline > now:
                # the state is the truth; the index has no entry for the member now
                self.deadlines.push(partition, state.next_deadline, member_id)
                continue
            outcome = self.engine.advance(state, now)
            self.counters.timers_fired += 1
            self._store(partition, key, outcome)
        return self.deadlines.any_due(partition, now)

    # --- state and outputs --------------------------------------------------------------------

    def _load(self, key: bytes, partition: int) -> MemberState | None:
        """The member's newest state: from the open batch, else the table."""
        dirty = self._dirty.get(key)
        raw_state = dirty.state if dirty is not None else self.store.get(key, partition)
        return decode_state(raw_state) if raw_state else None

    def _store(self, partition: int, key: bytes, outcome: Outcome) -> None:
        state = outcome.state
        if self._opened_at is None:
            self._opened_at = self._monotonic()
        # Encoded now, while the state's objects are fresh in the cache, and freed: the open
        # batch holds bytes, not up to FLUSH_MEMBERS decoded states.
        self._dirty[key] = ChangedMember(
            partition, None if outcome.erasure is not None else encode_state(state))
        for change in outcome.changes:
            self._records.append(
                Record(self.names.tag_changes, partition, key, encode_change(change)))
            self.tally.add(metrics.TAG_CHANGES, change.tag, change.op)
        for tier_change in outcome.tier_changes:
            self._records.append(
                Record(self.names.tier_changes, partition, key, encode_change(tier_change)))
            self.tally.add(metrics.TIER_CHANGES, tier_change.type)
        for marks in outcome.marks:
            self._records.append(
                Record(self.names.wecom_marks, partition, key, encode_marks(marks)))
        for task in outcome.tasks:
            self._records.append(Record(self.names.task_changes, partition, key, encode_task(task)))
            self.tally.add(metrics.TASK_CHANGES, task.kind, task.status)
        self.counters.tag_changes += len(outcome.changes)
        if outcome.erasure is not None:
            # keyed by the hash too: the record names no one, not even in its key
            erasure = outcome.erasure
            # after its tasks' cancelled records: the member's tasks are gone from the views
            self._records.append(Record(self.names.task_changes, partition, key, None))
            self._records.append(Record(self.names.erasures, partition,
                                        erasure.member_hash.encode(), encode_erasure(erasure)))
            self.counters.erased += 1
            return
        self.deadlines.push(partition, state.next_deadline, state.member_id)

    def seal(self) -> SealedBatch | None:
        """Close the open batch (None if nothing waits); `ship` it next. Changed states are
        staged in the store now (so later events read them), written to it once delivered;
        their changelog records follow the batch's outputs."""
        started = self._timer()
        try:
            return self._seal()
        finally:
            # counted in the next batch's flush
            self.tally.add(metrics.AGENT_SECONDS, "seal", amount=self._timer() - started)

    def _seal(self) -> SealedBatch | None:
        if self._handle_seconds:
            self.tally.add(metrics.AGENT_SECONDS, "handle", amount=self._handle_seconds)
            self._handle_seconds = 0.0
        self.tally.flush()
        if self._opened_at is None:
            return None
        outputs, acks, dirty = self._records, self._acks, self._dirty
        self._records, self._acks, self._dirty, self._opened_at = [], [], {}, None
        states: StagedStates = []
        changelog: list[Record] = []
        for key, (partition, raw) in dirty.items():
            # None (erased): the tombstone deletes the member from the store and the sink
            states.append((key, partition, raw))
            changelog.append(Record(self.changelog_topic, partition, key, raw))
        previous_turn, self._last_turn = (
            self._last_turn, asyncio.get_running_loop().create_future())
        return SealedBatch(outputs, changelog, acks, self.store.stage(states), previous_turn,
                           self._last_turn)

    async def ship(self, sealed: SealedBatch) -> None:
        """Deliver a sealed batch in two steps, acknowledge its events, then write its states
        to the store.

        Invariant: a changelog record is sent only once every output of the states it holds
        is delivered. A worker killed mid-shipment may have delivered any part of what it
        queued; a state in the changelog whose tag changes never arrived would
        make the next owner take the redelivered events for duplicates, and those outputs
        would be lost for good. Outputs first means a kill at worst sends them twice, with
        the same ids. Changelog records are queued in sealing order (a later state of a
        member must land after an earlier one), and not at all once an earlier batch failed,
        since this batch's states contain that batch's events.

        Outputs are queued to the producer one batch at a time in the order they were sealed
        (the lock is FIFO), so a partition's records reach Kafka in the order they were made;
        several batches may be in flight. A batch that cannot be delivered raises: its states
        are never written and its events stay unacknowledged."""
        outputs, changelog, acks, staged, previous_turn, turn = sealed
        try:
            async with self._queueing:
                outputs_delivered = await self.sender.enqueue(outputs)
            await outputs_delivered
            if previous_turn is not None and not await asyncio.shield(previous_turn):
                raise BatchAbandoned("an earlier batch could not be delivered")
            offsets = None
            if changelog:
                async with self._queueing:
                    delivered = await self.sender.enqueue(changelog)
                turn.set_result(True)
                offsets = await delivered
            else:
                turn.set_result(True)
        except BaseException:
            if not turn.done():
                turn.set_result(False)
            self.store.abandon(staged)
            raise
        # Acknowledged at delivery, not at the write: the write waits for earlier batches,
        # and a crash before it is safe (the persisted offset has not moved, so recovery
        # reads these states back from the changelog).
        for slot in acks:
            await self.acks.done(slot)
        await self.store.write(staged, offsets)

    async def flush(self) -> None:
        """Seal the open batch and ship it."""
        sealed = self.seal()
        if sealed is not None:
            await self.ship(sealed)

    def tick(self, partitions: Iterable[int]) -> bool:
        """Periodic, with no event: fire due deadlines, a step per partition. True if more may
        be due: the caller ships what is due and yields to the loop, then ticks again."""
        more = False
        for partition in partitions:
            if not self.deadlines.is_loaded(partition):
                self._load_deadlines(partition)
            more = self._fire_due(partition, self.tick_step) or more
        return more

    # --- rule versions ------------------------------------------------------------------------

    def use_rules(self, engine: Engine) -> None:
        """Switch to a newly loaded rule pack: each member is re-evaluated with it on their
        next event or deadline (or at once, for all, by `tagstream backfill`)."""
        self.engine = engine

    def _partition_of(self, key: bytes) -> int:
        return partition_for(key.decode() if isinstance(key, bytes) else str(key),
                             self.partitions)

    def _reevaluate_partition(self, partition: int) -> None:
        now = self.clocks.now(partition)
        for key, _ in list(self.store.partition_items(partition, self._partition_of)):
            state = self._load(key, partition)
            if state is None:
                continue
            at = now if now is not None else state.watermark
            if at is None:
                continue
            self._store(partition, key, self.engine.reevaluate(state, at))

    def _reroute(self, message: Any, member_id: str, home: int,
                 origin: tuple[str, int, int]) -> None:
        self.counters.rerouted += 1
        self._emit(Record(self.names.reroute, home, member_id.encode(), message.value,
                          [(ORIGIN_HEADER, f"{origin[0]}:{origin[1]}:{origin[2]}".encode())]))

    def reject(self, reason: str, origin: tuple[str, int, int], message: Any) -> None:
        self.counters.dead_lettered += 1
        self.tally.add(metrics.EVENTS_DEADLETTERED, origin[0])
        log.warning("dead-lettered %s:%s:%s: %s", origin[0], origin[1], origin[2], reason)
        self._emit(Record(self.names.deadletter, message.partition, message.key,
                          dead_letter(reason, *origin, message.value)))

    def _load_deadlines(self, partition: int) -> None:
        """Start rebuilding a partition's deadline heap from its stored states (once per
        assignment). On the event clock it is read at once: what fires, and in which order,
        must not depend on how far a rebuild got. On the wall clock it is read a step at a
        time (`load_deadlines`) while events go on, so a fresh worker answers at once; a
        deadline that falls due meanwhile fires when it is read, a little late."""
        self.deadlines.open_partition(partition)
        stored = self._stored_deadlines(partition)
        if self.clocks.mode == "event":
            self.deadlines.add_stored(partition, stored)
        else:
            self._loading[partition] = stored

    def _stored_deadlines(self, partition: int) -> Iterator[tuple[int | None, str]]:
        for key, raw_state in self.store.partition_items(partition, self._partition_of):
            if raw_state:
                yield (decode_next_deadline(raw_state),
                       key.decode() if isinstance(key, bytes) else str(key))

    def load_deadlines(self, budget: int = DEADLINE_LOAD_STEP) -> bool:
        """Read up to `budget` stored states of the deadline heaps being rebuilt; True while
        some remain."""
        for partition, stored in list(self._loading.items()):
            step = list(itertools.islice(stored, budget))
            self.deadlines.add_stored(partition, step)
            if len(step) < budget:
                del self._loading[partition]
            budget -= len(step)
            if budget <= 0:
                break
        return bool(self._loading)

    def forget(self, partitions: set[int]) -> None:
        """Revoked partitions (after their batches are delivered): what they hold unapplied
        stays unacknowledged, so their next owner gets it again. So do events applied since
        the last batch was sealed (the agent may handle a few while the revocation waits
        for delivery): their state and changes are dropped with their acknowledgements, or
        this worker would write the changelog of a partition it no longer owns."""
        self.store.drop_in_flight(partitions)
        self.sequence.forget(partitions)
        for partition in partitions:
            self._loading.pop(partition, None)
            self.deadlines.drop(partition)
            self.clocks.forget(partition)
            self.pending.drop(partition)
        self.acks.drop(partitions)
        self.paused = {key for key in self.paused if key[1] not in partitions}
        self._dirty = {key: entry for key, entry in self._dirty.items()
                       if entry[0] not in partitions}
        self._records = [r for r in self._records
                         if r.topic not in self._member_outputs or r.partition not in partitions]


def _no_flow_control(topic: str, partition: int) -> None:
    return None


def _cannot_rewind(topic: str, partition: int, offset: int) -> None:
    raise RuntimeError(f"no consumer to rewind {topic} partition {partition} to {offset}")


def _origin(message: Any, reroute_topic: str) -> tuple[str, int, int]:
    """Where an event first entered: its own coordinates, or those a re-route recorded."""
    if message.topic == reroute_topic and message.headers:
        items = message.headers.items() if isinstance(message.headers, dict) else message.headers
        for name, value in items:
            if name == ORIGIN_HEADER:
                topic, partition, offset = bytes(value).decode().rsplit(":", 2)
                return topic, int(partition), int(offset)
    return message.topic, message.partition, message.offset


def _safe_origin(message: Any, reroute_topic: str) -> tuple[str, int, int]:
    try:
        return _origin(message, reroute_topic)
    except Exception:  # noqa: BLE001 - a malformed origin header
        return message.topic, message.partition, message.offset


class StreamAck:
    """The agent's acknowledgement of one event to its Faust stream, which counts only those
    given inside `compat.acknowledging`; calling it again does nothing. One slotted object
    an event rather than a closure with its two cells, a partial and a bound method: an event
    held for the clock keeps its acknowledgement alive, and what is held is what each
    collection of the oldest generation walks."""

    __slots__ = ("_stream", "_event", "_done")

    def __init__(self, stream: Any, event: Any) -> None:
        self._stream = stream
        self._event = event
        self._done = False

    async def __call__(self) -> None:
        if not self._done:
            self._done = True
            with compat.acknowledging():
                await self._stream.ack(self._event)


class ConsumerAck:
    """The agent's acknowledgement of one message the fetcher handed it directly (compat
    adjustment 6): to Faust's consumer, inside `compat.acknowledging`; Faust counts a message
    once however often it is acknowledged. Slotted, for the reason StreamAck is."""

    __slots__ = ("_consumer", "_message")

    def __init__(self, consumer: Any, message: Any) -> None:
        self._consumer = consumer
        self._message = message

    async def __call__(self) -> None:
        with compat.acknowledging():
            self._consumer.ack(self._message)


class BatchShipper:
    """When the member agent's batches are sealed and shipped: once the open batch is due
    (its linger time passed, or it is full) and, on a quiet stream, by a timer. Up to
    MAX_BATCHES_IN_FLIGHT batches are delivered while the next fills.

    Under load the batches grow instead of the agent waiting: a batch due while as many
    batches are in flight as allowed keeps taking events and is shipped the moment one of
    them is delivered; only a full batch makes the agent wait. (Waiting with a batch of a
    linger's worth of events bounded the pipeline by the delivery round trips: two produce
    round trips per batch, four batches in flight.) The time bound is the delivery of the
    batch in flight, and a full batch is shipped as soon as a slot frees.

    A batch the producer could not deliver (it retries for producer_request_timeout first)
    stops the worker through `on_failure`: its events were never acknowledged, so the worker
    that takes over gets them again. Carrying on would leave a hole behind later batches."""

    def __init__(self, processor: MemberProcessor,
                 on_failure: Callable[[BaseException], Awaitable[Any]],
                 paused: Callable[[], bool] = lambda: False,
                 linger_s: float | None = None) -> None:
        self.processor = processor
        self.on_failure = on_failure
        self.paused = paused  # a rebalance or table recovery is under way
        self.linger_s = processor.linger_s if linger_s is None else linger_s
        self._in_flight: collections.deque[asyncio.Task[None]] = collections.deque()
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for_slot: asyncio.Future[None] | None = None

    async def ship_when_due(self) -> None:
        """After a message or a tick: ship the open batch if it is due (or, with every slot
        taken, as soon as one frees; at once if it is full), else make sure the linger timer
        ships it when it is."""
        if self.processor.batch_due() and not self.paused():
            if self._slot_free() or self.processor.batch_full():
                await self.ship_open_batch()
            elif self._waiting_for_slot is None or self._waiting_for_slot.done():
                self._waiting_for_slot = asyncio.ensure_future(self.ship_open_batch())
        else:
            self._arm()

    def _slot_free(self) -> bool:
        while self._in_flight and self._in_flight[0].done():
            self._in_flight.popleft()
        return len(self._in_flight) < MAX_BATCHES_IN_FLIGHT

    def _arm(self) -> None:
        if self._timer is None and self.processor.batch_open():
            self._timer = asyncio.get_running_loop().call_later(self.linger_s, self._on_timer)

    def _on_timer(self) -> None:
        """Quiet stream: ship what waits. Not while the table is being recovered: a state
        written to it now could be overwritten by an older one from the changelog."""
        self._timer = None
        if self.paused():
            self._arm()
        else:
            asyncio.ensure_future(self.ship_open_batch())

    async def ship_open_batch(self) -> None:
        """Seal the open batch and start shipping it (first waiting for the oldest batch in
        flight if there are as many as allowed)."""
        while not self._slot_free():
            await asyncio.wait([self._in_flight[0]])
        sealed = self.processor.seal()
        if sealed is not None:
            self._in_flight.append(asyncio.ensure_future(self._ship(sealed)))

    async def _ship(self, sealed: SealedBatch) -> None:
        try:
            await self.processor.ship(sealed)
        except Exception as exc:  # noqa: BLE001 - reported, then the worker stops
            log.critical("a batch of %d records could not be delivered (%s: %s); stopping so "
                         "that its events are processed again",
                         len(sealed.outputs) + len(sealed.changelog),
                         type(exc).__name__, exc)
            await self.on_failure(exc)

    async def drain(self) -> None:
        """Ship everything and wait until it is delivered (rebalance, shutdown)."""
        if self._waiting_for_slot is not None:
            await self._waiting_for_slot
        await self.ship_open_batch()
        while self._in_flight:
            await asyncio.wait(list(self._in_flight))
            self._in_flight = collections.deque(t for t in self._in_flight if not t.done())


def recovering(app: faust.App) -> bool:
    """A rebalance or a table recovery is under way: the table is not yet whole."""
    return bool(app.rebalancing or app.in_recovery
                or not app.tables.recovery.completed.is_set())


def register_member_agent(app: faust.App, processor: MemberProcessor, topics: Topics,
                          timer_interval_s: float) -> None:
    shipper = BatchShipper(processor, on_failure=app.crash,
                           paused=functools.partial(recovering, app))
    event_topics = processor.names.events

    def rewind(topic: str, partition: int, offset: int) -> None:
        asyncio.ensure_future(compat.rewind(app.consumer, topic, partition, offset))

    processor.sequence.rewind = rewind
    compat.on_agent_partitions_sought(processor.sequence.start_at)

    paused_fetching: compat.PausedFetching | None = None

    def sync_paused(*_: Any) -> None:
        """aiokafka fetches every partition but those the processor paused now."""
        nonlocal paused_fetching
        if paused_fetching is None:
            paused_fetching = compat.PausedFetching(app.consumer)
        asyncio.ensure_future(paused_fetching.sync(set(processor.paused)))

    processor.pause_fetching = processor.resume_fetching = sync_paused

    # Manual acks: an event is acknowledged (and so its offset committed) only once its
    # batch is delivered, and an event held for the event-time clock only once applied;
    # Faust commits up to the first unacknowledged offset.
    async def hand_over(message: Any) -> None:
        processor.handle(message, ConsumerAck(app.consumer, message))
        await shipper.ship_when_due()

    # The fetcher hands the inbound messages to `hand_over` itself (compat adjustment 6):
    # Faust's stream path cost more per event than all the rest of Faust. The agent's stream
    # below subscribes the topics, and handles what reaches it only were that not installed.
    compat.hand_directly(processor.names.inbound, hand_over)

    @app.agent(topics.inbound, name="members")
    async def members(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            processor.handle(event.message, StreamAck(manual, event))
            await shipper.ship_when_due()

    def owned_partitions() -> list[int]:
        """The event partitions this worker owns now (read again after each yield)."""
        return sorted({tp.partition for tp in app.assignor.assigned_actives()
                       if tp.topic in event_topics})

    async def sweep() -> None:
        """Deadlines fire with no event needed."""
        if recovering(app):
            # Mid-rebalance the table is still being restored: a deadline heap built now
            # would miss the members not yet recovered, and their deadlines would never fire.
            return
        # A deadline heap being rebuilt is read a step per loop turn, the agent's events
        # in between (a fresh worker's first orders waited 1.2 s behind a whole rebuild at
        # 100,000 members, 8 s at 1,000,000).
        while processor.load_deadlines():
            await asyncio.sleep(0)
            if recovering(app):
                return
        # Due deadlines a step at a time, each step's batch shipped when due and the loop
        # free between steps: a cluster of them (a midnight) stopped it for seconds.
        while processor.tick(owned_partitions()):
            await shipper.ship_when_due()
            await asyncio.sleep(0)
            if recovering(app):
                return
        # Regression: this shipped only a batch already due, so the changes of a deadline
        # fired here waited for the next tick (deadline -> tags.changes: median 525 ms).
        await shipper.ship_when_due()

    sweeper = Sweeper(sweep, on_failure=app.crash)

    @app.timer(timer_interval_s)
    async def tick() -> None:
        """A sweep each interval, unless one still runs (streams/worker/sweeps.py)."""
        sweeper.poke()

    @app.timer(5.0)
    async def report_lag() -> None:
        for tp in app.assignor.assigned_actives():
            if tp.topic not in event_topics:
                continue
            highwater = app.consumer.highwater(tp)
            position = processor.positions.get((tp.topic, tp.partition))
            if highwater is not None and position is not None:
                metrics.CONSUMER_LAG.labels(app.conf.id, tp.topic, str(tp.partition)).set(
                    max(0, highwater - position))

    @app.page("/metrics")
    async def serve_metrics(web: Any, request: Any) -> Any:
        body, content_type = metrics.render_metrics()
        return web.bytes(body, content_type=content_type.split(";")[0])

    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: set[Any], **_: Any) -> None:
        await shipper.drain()
        processor.forget({tp.partition for tp in revoked if tp.topic in event_topics})

    @app.on_partitions_assigned.connect
    async def on_assigned(app: faust.App, assigned: set[Any], **_: Any) -> None:
        processor.fetching_reset()
        sync_paused()

    @app.on_before_shutdown.connect
    async def on_shutdown(app: faust.App, **_: Any) -> None:
        await sweeper.stop()
        await shipper.drain()


def _redelivered(state: MemberState | None, message: Any) -> bool:
    """The message lies at or below the offset this member's events of its topic were
    applied through (MemberState.applied): it was handled before."""
    return state is not None and message.offset <= state.applied.get(message.topic, -1)
