"""The Redis sink: keeps Redis equal to the profile of every member's newest state on the member
table's changelog, and to the newest record of every guide task on `tasks.changes`.

It is its own consumer group (`<app_id>-redis`), decoupled from tagging: when Redis is down the
worker keeps tagging and writing states, the sink retries with backoff, and Redis converges
once it is back. Batches are up to 500 records or 50 ms; within a batch only a member's newest
state is rendered (streams/serving/profiles.py) and written, and only a task's highest version.
A changelog tombstone (an erasure) deletes the member's profile and tasks.

Where to resume is kept in Redis itself, not only in Kafka: each batch's pipeline ends by
recording the next offset per partition (RedisProfileStore.write_batch). Before every batch the
sink checks that Redis still holds the offsets it last wrote; after any Redis error, and after a
partition assignment, it re-reads them and seeks there. So a Redis that restarts empty (no
persistence) or restores an older snapshot is rebuilt from the compacted changelog, and nothing is
lost or left stale whatever happens between the writes. Kafka offsets are committed once Redis
confirmed a batch, at most every COMMIT_INTERVAL_S and when the sink stops, for lag monitoring
and tools; the sink itself trusts Redis's record.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import msgspec
import redis.exceptions
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streams.platform import metrics
from streams.platform.admin import TopicError, ensure_tagstream_topics
from streams.platform.kafka_clients import kafka_consumer
from streams.platform.rules_watch import RulesWatcher
from streams.platform.security import kafka_client_kwargs, redis_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import members_changelog, topic_names
from schemas.tasks import decode_task
from streams.serving.insight_snapshots import snapshots_for
from streams.serving.profiles import ProfileRenderer
from streams.serving.redis_store import RedisProfileStore, ServedProfile
from taggers.rules import load_rules

log = logging.getLogger(__name__)

BATCH_MAX = 500
BATCH_WAIT_S = 0.05
BACKOFF_START_S = 0.1
BACKOFF_MAX_S = 5.0
# The Kafka commit is only a copy for monitoring, so it is not made per batch: at 500 live
# orders/s one per batch was 43 of the broker's 681 requests/s (bench, 2,000 members).
COMMIT_INTERVAL_S = 1.0
COMMIT_ON_STOP_TIMEOUT_S = 5.0
REDIS_ERRORS = (redis.exceptions.RedisError, OSError, asyncio.TimeoutError)


def group_id(settings: Settings) -> str:
    return f"{settings.app_id}-redis"


def offset_field(tp: TopicPartition) -> str:
    return f"{tp.topic}:{tp.partition}"


@dataclass
class Batch:
    """The newest record per member among a batch of records, and where each partition ends."""

    profiles: dict[str, tuple[ServedProfile, int]]  # member_id -> (profile, offset)
    deletes: dict[str, int]  # member_id -> offset of its tombstone
    ends: dict[TopicPartition, int]  # next offset after the batch, per partition
    skipped: int = 0
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)  # task_id -> highest record
    # Members whose tasks a tombstone on tasks.changes deletes (before the batch's records).
    task_deletes: set[str] = field(default_factory=set)


def _collect_task(batch: Batch, tp: TopicPartition, message: Any) -> None:
    if message.value is None:  # the member's tasks are gone (an erasure)
        if message.key:
            member_id = message.key.decode()
            batch.task_deletes.add(member_id)
            batch.tasks = {k: r for k, r in batch.tasks.items() if r["member_id"] != member_id}
        return
    try:
        record = msgspec.to_builtins(decode_task(message.value))
    except msgspec.DecodeError as exc:
        # Only the worker writes this topic; a bad record is a bug to see, not to stall on.
        log.error("skipping unreadable task at %s:%s@%s: %s",
                  tp.topic, tp.partition, message.offset, exc)
        batch.skipped += 1
        return
    held = batch.tasks.get(record["task_id"])
    if held is None or record["version"] > held["version"]:
        batch.tasks[record["task_id"]] = record


def collect(records: dict[TopicPartition, list[Any]], render: Callable[[bytes], ServedProfile],
            tasks_topic: str | None = None) -> Batch:
    """The batch's writes: the profile of each member's newest state (`render`ed once per
    member), its tombstones, and its tasks."""
    batch = Batch({}, {}, {})
    # member key -> (its newest state, where that record is); rendered once all are read
    newest: dict[bytes, tuple[bytes, TopicPartition, int]] = {}
    for tp, messages in records.items():
        for message in messages:
            batch.ends[tp] = message.offset + 1
            if tp.topic == tasks_topic:
                _collect_task(batch, tp, message)
                continue
            if not message.key:
                log.error("skipping a state without a member key at %s:%s@%s",
                          tp.topic, tp.partition, message.offset)
                batch.skipped += 1
                continue
            if message.value is None:  # a tombstone: the member is gone
                newest.pop(message.key, None)
                batch.deletes[message.key.decode()] = message.offset
                continue
            newest[message.key] = (message.value, tp, message.offset)
            batch.deletes.pop(message.key.decode(), None)
    for raw, tp, offset in newest.values():
        try:
            profile = render(raw)
        except Exception as exc:  # noqa: BLE001
            # Only the worker writes this topic; a bad record is a bug to see, not to stall
            # on (raised again, it would stop the sink at the same offset after every restart).
            log.error("skipping a member state at %s:%s@%s that does not render: %s: %s",
                      tp.topic, tp.partition, offset, type(exc).__name__, exc,
                      exc_info=not isinstance(exc, ValueError))
            batch.skipped += 1
            continue
        batch.profiles[profile.member_id] = (profile, offset)
    return batch


class _Assignments(ConsumerRebalanceListener):
    def __init__(self, sink: "RedisSink") -> None:
        self.sink = sink

    async def on_partitions_revoked(self, revoked: Any) -> None:
        pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # No Redis I/O here (it may be down): the main loop re-syncs before its next batch.
        self.sink.need_sync = True


class RedisSink:
    def __init__(self, settings: Settings, store: RedisProfileStore, renderer: ProfileRenderer,
                 *, batch_max: int = BATCH_MAX, batch_wait_s: float = BATCH_WAIT_S,
                 commit_interval_s: float = COMMIT_INTERVAL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.store = store
        self.renderer = renderer
        self.batch_max = batch_max
        self.batch_wait_s = batch_wait_s
        self.commit_interval_s = commit_interval_s
        self._clock = clock
        # Written to Redis, not yet committed to Kafka: the next offset per partition.
        self.uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = clock()  # the first commit comes an interval after the start
        self.need_sync = True
        # Redis holds what the topics held a moment ago (nothing waiting, or under a batch
        # behind on every partition) since the last resync: the daily snapshot of the audience
        # counts waits for it, so a sink rebuilding an emptied Redis never snapshots half of it.
        self.caught_up = False
        self.written: dict[TopicPartition, int] = {}  # what Redis holds, as far as we know
        self.consumer: AIOKafkaConsumer | None = None
        self.topics = (members_changelog(settings), topic_names(settings).task_changes)

    async def run(self, stop: asyncio.Event) -> None:
        self.consumer = await self._start_consumer(stop)
        if self.consumer is None:
            return
        backoff = BACKOFF_START_S
        try:
            while not stop.is_set():
                try:
                    if self.need_sync:
                        await self._sync_positions()
                    records = await self.consumer.getmany(timeout_ms=int(self.batch_wait_s * 1000),
                                                          max_records=self.batch_max)
                    if not records and not self.need_sync:
                        self.caught_up = True
                    if records and not self.need_sync:
                        await self._write(collect(records, self.renderer.served,
                                                  self.topics[1]))
                    if self._clock() - self._committed_at >= self.commit_interval_s:
                        await self._commit()
                    backoff = BACKOFF_START_S
                except REDIS_ERRORS as exc:
                    metrics.REDIS_WRITE_FAILURES.inc()
                    self.need_sync = True
                    log.warning("Redis unavailable (%s: %s); retrying in %.1f s, tagging goes on",
                                type(exc).__name__, exc, backoff)
                    await _sleep_unless(stop, backoff)
                    backoff = min(backoff * 2, BACKOFF_MAX_S)
        finally:
            try:
                # bounded: with the broker gone a commit would wait for a coordinator for ever
                await asyncio.wait_for(self._commit(), COMMIT_ON_STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.info("Kafka offset commit on stop timed out; Redis holds the batches")
            await self.consumer.stop()

    async def _start_consumer(self, stop: asyncio.Event) -> AIOKafkaConsumer | None:
        backoff = BACKOFF_START_S
        while not stop.is_set():
            try:
                # the changelog is the worker's (its Faust table's), but the sink may start first
                await ensure_tagstream_topics(self.settings)
            except TopicError as exc:
                log.warning("topics not ready for the Redis sink (%s); retrying", exc)
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            consumer = kafka_consumer(
                self.settings.broker_bootstrap, group_id=group_id(self.settings),
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # A group (re)join takes ~5 s with these, as for the worker (streams/worker/app.py).
                session_timeout_ms=10_000, heartbeat_interval_ms=1_000, rebalance_timeout_ms=6_000,
                max_poll_records=self.batch_max,
                **kafka_client_kwargs(self.settings),
            )
            try:
                await consumer.start()
            except KafkaError as exc:
                await consumer.stop()
                log.warning("broker unavailable for the Redis sink (%s); retrying", exc)
                await _sleep_unless(stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            consumer.subscribe(list(self.topics), listener=_Assignments(self))
            return consumer
        return None

    async def _sync_positions(self) -> None:
        """Seek every assigned partition to the offset Redis says it reached."""
        self.caught_up = False
        assert self.consumer is not None
        assigned = sorted(self.consumer.assignment())
        # a revoked partition's offsets are its new owner's to commit
        self.uncommitted = {tp: end for tp, end in self.uncommitted.items() if tp in assigned}
        stored = await self.store.read_offsets([offset_field(tp) for tp in assigned])
        self.written = {}
        for tp in assigned:
            offset = stored[offset_field(tp)]
            if offset is None:
                await self.consumer.seek_to_beginning(tp)
                self.written[tp] = -1
            else:
                self.consumer.seek(tp, offset)
                self.written[tp] = offset
        if assigned:
            log.info("Redis sink resumes %s", ", ".join(
                f"{tp.partition}@{'start' if self.written[tp] < 0 else self.written[tp]}"
                for tp in assigned))
        # An empty assignment (the group is still joining) is synced again on the next loop.
        self.need_sync = not assigned

    async def _write(self, batch: Batch) -> None:
        assert self.consumer is not None
        tps = sorted(batch.ends)
        if any(tp not in self.written for tp in tps):
            self.need_sync = True  # assigned since the last sync
            return
        stored = await self.store.read_offsets([offset_field(tp) for tp in tps])
        for tp in tps:
            offset = stored[offset_field(tp)]
            if (-1 if offset is None else offset) != self.written[tp]:
                # Redis lost writes (restarted empty, or an older snapshot), or another sink
                # instance moved on: resume from what Redis really holds.
                log.warning("Redis holds %s at %s, not %s: resyncing", offset_field(tp),
                            offset, self.written[tp])
                self.need_sync = True
                return
        started = time.perf_counter()
        members = list(batch.profiles)
        result = await self.store.write_batch(
            [batch.profiles[m][0] for m in members], [batch.profiles[m][1] for m in members],
            forget=list(batch.deletes), offsets={offset_field(tp): batch.ends[tp] for tp in tps},
            tasks=list(batch.tasks.values()), forget_tasks_of=sorted(batch.task_deletes))
        metrics.REDIS_BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.REDIS_PROFILES_WRITTEN.labels("applied").inc(result.applied)
        metrics.REDIS_PROFILES_WRITTEN.labels("stale").inc(result.stale)
        metrics.REDIS_PROFILES_WRITTEN.labels("deleted").inc(result.deleted)
        metrics.REDIS_PROFILES_WRITTEN.labels("skipped").inc(batch.skipped)
        for tp in tps:
            self.written[tp] = batch.ends[tp]
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                metrics.CONSUMER_LAG.labels(group_id(self.settings), tp.topic,
                                            str(tp.partition)).set(highwater - batch.ends[tp])
        self.caught_up = self.caught_up or all(
            (highwater := self.consumer.highwater(tp)) is not None
            and highwater - self.written.get(tp, 0) < self.batch_max
            for tp in self.consumer.assignment())
        self.uncommitted.update((tp, batch.ends[tp]) for tp in tps)

    async def _commit(self) -> None:
        """Commit to Kafka what Redis holds (COMMIT_INTERVAL_S)."""
        self._committed_at = self._clock()
        if not self.uncommitted or self.consumer is None:
            return
        offsets, self.uncommitted = self.uncommitted, {}
        try:
            await self.consumer.commit(offsets)
        except (CommitFailedError, IllegalStateError, KafkaError) as exc:
            # Redis has the batches and their offsets; only the monitoring copy lags behind
            # until the next commit (a partition revoked meanwhile is dropped at the resync).
            for tp, end in offsets.items():
                self.uncommitted.setdefault(tp, end)
            log.info("Kafka offset commit skipped (%s); Redis holds the batches", exc)


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def run_redis_sink(settings: Settings, stop_event: asyncio.Event) -> None:
    """Run the sink until `stop_event` is set (the CLI's `redis-sink`, or a test's task). A
    rule file that does not load stops it before it reads anything, as it stops a worker."""
    pack = load_rules(settings.rules_path)
    renderer = ProfileRenderer(pack)
    store = RedisProfileStore(settings.redis_url, connection=redis_client_kwargs(settings))
    await store.start()
    sink = RedisSink(settings, store, renderer)
    background = [asyncio.create_task(
        snapshots_for(settings, store).run(stop_event, ready=lambda: sink.caught_up))]
    if settings.rules_reload_s > 0:
        watcher = RulesWatcher(settings.rules_path, pack, renderer.use_rules)
        background.append(asyncio.create_task(
            _every(settings.rules_reload_s, watcher.check, stop_event)))
    try:
        await sink.run(stop_event)
    finally:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await store.stop()


async def _every(seconds: float, call: Callable[[], object], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await _sleep_unless(stop, seconds)
        call()
