"""`tagstream wecom-sync`: wecom.marks in, WeCom customer tags out, offsets committed only
behind changes that WeCom has applied.

A thin adapter (STYLE.md rule 2): it decodes records, hands them to `streams.serving.wecom.sync`,
and commits. It is a plain aiokafka consumer in its own group (`<app_id>-wecom`) with manual
commits, not a Faust agent, because the sync needs exact control of what is committed:

- A change is done when its mark_tag calls succeed, which can be minutes after it arrived
  (a WeCom outage) and out of offset order (pairs progress independently). The commit point
  of a partition is the first change not done (`OffsetTracker`); nothing after it is
  committed, so a crash or a restart resumes there and re-sends at most some done changes,
  which is harmless because a re-sent call carries the desired final state.
- Faust acks and commits on its own schedule, waits for every unacked event before a
  rebalance (a 60 s outage would stall the whole group) and warns of livelock while events
  stay unacked; none of which helps here, and the sync has no tables or changelogs to gain.
- On a rebalance the sync must stop calling WeCom for revoked partitions *before* another
  member starts on them, or an old call could land after a newer one. aiokafka awaits the
  revoke callback before re-joining, so the callback cancels every open call, commits the
  done prefix and drops all pending state; the new assignment restarts from committed offsets.

Backpressure: a partition whose tracker holds more than `max_pending` records is paused until
it drains to half, so an outage costs memory in proportion to that bound, not to its length.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

import msgspec
from mode import Service
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from schemas.wecom import decode_marks
from schemas.errors import TagstreamError
from streams.platform.kafka_clients import kafka_consumer
from streams.platform.metrics import CONSUMER_LAG
from streams.platform.security import kafka_client_kwargs
from streams.platform.settings import Settings, SettingsError
from streams.platform.topics import topic_names
from streams.serving.wecom.client import WeComClient, WeComError
from streams.serving.wecom.sync import OffsetTracker, TagMapper, WeComSync

log = logging.getLogger(__name__)


def wecom_group_id(settings: Settings) -> str:
    return f"{settings.app_id}-wecom"


def client_from_settings(settings: Settings) -> WeComClient:
    if not settings.wecom_corp_id or not settings.wecom_secret:
        raise SettingsError("the WeCom sync needs TAGSTREAM_WECOM_CORP_ID and "
                            "TAGSTREAM_WECOM_SECRET")
    return WeComClient(settings.wecom_base_url, settings.wecom_corp_id, settings.wecom_secret,
                       calls_per_minute=settings.wecom_calls_per_minute)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, service: "WeComSyncService") -> None:
        self.service = service

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.service.partitions_revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        log.info("WeCom sync assigned %s", sorted(tp.partition for tp in assigned))


class WeComSyncService(Service):
    """Consumes wecom.marks in group `<app_id>-wecom` and keeps WeCom tags in step."""

    def __init__(self, settings: Settings, *, client: WeComClient | None = None,
                 commit_interval_s: float = 1.0, max_pending: int = 20_000,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.settings = settings
        self.group_id = wecom_group_id(settings)
        self.client = client or client_from_settings(settings)
        self.mapper = TagMapper(self.client)
        self.sync = WeComSync(self.client, self.mapper, on_done=self._done,
                              coalesce_s=settings.wecom_coalesce_ms / 1000.0,
                              workers=self.client.max_in_flight)
        self.commit_interval_s = commit_interval_s
        self.max_pending = max_pending
        self.consumer: AIOKafkaConsumer | None = None
        self.undecodable = 0
        self.commits = 0
        self._trackers: dict[TopicPartition, OffsetTracker] = {}
        self._committed: dict[TopicPartition, int] = {}
        self._paused: set[TopicPartition] = set()
        self._generation = 0
        self._consuming: asyncio.Future[Any] | None = None
        self._reconciling: asyncio.Future[Any] | None = None
        self.reconciles: list[dict[str, Any]] = []  # the stats of each periodic reconcile
        self._stopping = False

    # --- lifecycle ------------------------------------------------------------------------------

    async def on_start(self) -> None:
        await self.client.start()
        try:
            await self.mapper.refresh()
        except WeComError as exc:  # not fatal: the first lookup refreshes again
            log.warning("WeCom tag list not loaded at start: %s", exc)
        self.consumer = kafka_consumer(
            self.settings.broker_bootstrap, group_id=self.group_id,
            client_id=self.group_id, enable_auto_commit=False, auto_offset_reset="earliest",
            session_timeout_ms=10_000, heartbeat_interval_ms=1_000, rebalance_timeout_ms=6_000,
            max_poll_interval_ms=300_000, **kafka_client_kwargs(self.settings))
        self.consumer.subscribe([topic_names(self.settings).wecom_marks],
                                listener=_Rebalance(self))
        await self.consumer.start()
        await self.sync.start()
        self._consuming = self.add_future(self._consume())
        if self.settings.wecom_reconcile_s > 0:
            self._reconciling = self.add_future(self._reconcile_every(
                self.settings.wecom_reconcile_s))
        log.info("WeCom sync started: group %s, %r, coalescing %d ms", self.group_id,
                 self.client, self.settings.wecom_coalesce_ms)

    async def on_stop(self) -> None:
        self._stopping = True
        for running in (self._consuming, self._reconciling):
            if running is not None:
                running.cancel()
                await asyncio.gather(running, return_exceptions=True)
        await self.sync.stop()
        if self.consumer is not None:
            await self._commit()
            await self.consumer.stop()
        await self.client.stop()

    # --- what the consumer loop does -----------------------------------------------------------

    async def _consume(self) -> None:
        assert self.consumer is not None
        next_commit = time.monotonic() + self.commit_interval_s
        while True:
            generation = self._generation
            try:
                batch = await self.consumer.getmany(timeout_ms=200, max_records=2000)
            except KafkaError as exc:  # aiokafka reconnects by itself; keep polling
                log.warning("WeCom sync: fetching wecom.marks failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
                continue
            if generation == self._generation:  # else: fetched across a rebalance; re-read
                for tp, records in batch.items():
                    for record in records:
                        self._submit(tp, record)
                self._backpressure()
            if time.monotonic() >= next_commit:
                await self._commit()
                next_commit = time.monotonic() + self.commit_interval_s

    def _submit(self, tp: TopicPartition, record: Any) -> None:
        tracker = self._trackers.get(tp)
        if tracker is None:
            tracker = self._trackers[tp] = OffsetTracker()
        tracker.add(record.offset)
        ticket = (self._generation, tp, record.offset)
        try:
            change = decode_marks(record.value)
        except (msgspec.DecodeError, TypeError) as exc:
            # Not ours to fix (the worker writes this topic); never retried, so never blocking.
            self.undecodable += 1
            log.error("%s:%s:%s is not a wecom.marks record (%s); skipped", tp.topic, tp.partition,
                      record.offset, exc)
            tracker.done(record.offset)
            return
        self.sync.submit(change, ticket)

    def _done(self, ticket: Any) -> None:
        generation, tp, offset = ticket
        if generation != self._generation:
            return
        tracker = self._trackers.get(tp)
        if tracker is not None:
            tracker.done(offset)

    def _backpressure(self) -> None:
        assert self.consumer is not None
        for tp, tracker in self._trackers.items():
            if tp not in self._paused and len(tracker) > self.max_pending:
                self.consumer.pause(tp)
                self._paused.add(tp)
                log.info("WeCom sync: partition %d paused, %d changes not yet applied",
                         tp.partition, len(tracker))
            elif tp in self._paused and len(tracker) <= self.max_pending // 2:
                self.consumer.resume(tp)
                self._paused.discard(tp)

    async def _commit(self) -> None:
        """Commit, per partition, the first offset whose change is not done."""
        assert self.consumer is not None
        offsets = {}
        for tp, tracker in self._trackers.items():
            point = tracker.commit_point()
            if point is not None and point > self._committed.get(tp, -1):
                offsets[tp] = point
        if offsets:
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # a rebalance is under way; what is not committed is redone
                log.warning("WeCom sync: commit failed (%s); will retry", exc)
                return
            self._committed.update(offsets)
            self.commits += 1
        self._update_lag()

    def _update_lag(self) -> None:
        assert self.consumer is not None
        for tp, committed in self._committed.items():
            highwater = self.consumer.highwater(tp)
            if highwater is not None:
                CONSUMER_LAG.labels(self.group_id, tp.topic, str(tp.partition)).set(
                    max(0, highwater - committed))

    async def partitions_revoked(self, revoked: Any) -> None:
        """Stop every WeCom call before another consumer may start on these partitions."""
        self._generation += 1
        if self._stopping:
            await self.sync.stop()
        else:
            await self.sync.reset()
        if self.consumer is not None:
            await self._commit()
        self._trackers.clear()
        self._paused.clear()
        self._committed.clear()
        log.info("WeCom sync revoked %s", sorted(tp.partition for tp in revoked))

    async def _reconcile_every(self, interval_s: float) -> None:
        """Repair drift between WeCom and the served profiles every `interval_s`, for the
        members whose wecom.marks partition this instance holds (so two instances never
        reconcile the same member), through the same client and so the same call budget."""
        from streams.platform.partitioning import partition_for
        from streams.platform.security import redis_client_kwargs
        from streams.serving.redis_store import RedisProfileStore
        from streams.serving.wecom.reconcile import WeComReconciler

        partitions = self.settings.partitions
        while True:
            await asyncio.sleep(interval_s)
            assert self.consumer is not None
            mine = {tp.partition for tp in self.consumer.assignment()}
            if not mine:
                continue
            started = time.monotonic()
            try:
                async with RedisProfileStore(
                        self.settings.redis_url,
                        connection=redis_client_kwargs(self.settings)) as profiles:
                    stats = await WeComReconciler(self.client, self.mapper, profiles).run(
                        owns=lambda member: partition_for(member, partitions) in mine)
            except Exception as exc:  # Redis away: the next round tries again
                log.warning("WeCom reconcile failed (%s); next in %.0f s", exc, interval_s)
                continue
            figures = dataclasses.asdict(stats)
            figures["seconds"] = round(time.monotonic() - started, 2)
            self.reconciles.append(figures)
            log.info("WeCom reconcile of partitions %s: %s", sorted(mine), figures)

    # --- for tests and the closing report -------------------------------------------------------

    def committed(self) -> dict[int, int]:
        return {tp.partition: offset for tp, offset in self._committed.items()}

    def report(self) -> dict[str, Any]:
        stats = self.client.stats
        return {"changes": self.sync.stats.changes, "done": self.sync.stats.done,
                "pending": self.sync.pending, "marks": self.sync.stats.marks,
                "failed_marks": self.sync.stats.failed_marks,
                "unreachable": self.sync.stats.unreachable,
                "without_pairs": self.sync.stats.without_pairs,
                "coalesced": self.sync.stats.coalesced, "max_batch": self.sync.stats.max_batch,
                "undecodable": self.undecodable, "client_calls": stats.calls,
                "retries": stats.retries, "token_fetches": stats.token_fetches,
                "client_max_in_flight": stats.max_in_flight,
                "tags_created": self.mapper.created, "tag_list_reads": self.mapper.refreshes,
                "commits": self.commits}


async def run_wecom_sync(settings: Settings, stop: asyncio.Event) -> None:
    """Run the sync until `stop` is set (the `tagstream wecom-sync` command)."""
    from streams.platform.admin import ensure_tagstream_topics

    service = WeComSyncService(settings)  # fails fast on a missing corp id or secret
    await ensure_tagstream_topics(settings)
    await service.start()
    try:
        while not stop.is_set() and not service.crashed:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await service.stop()
        log.info("WeCom sync stopped: %s", service.report())
    if service.crashed:
        raise TagstreamError(f"the WeCom sync stopped on an error: {service.crash_reason!r}")
