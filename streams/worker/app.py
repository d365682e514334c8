"""Builds the Faust app from settings, and nothing else (STYLE.md rule 1)."""

from __future__ import annotations

from typing import Any

import faust

from streams.platform.settings import Settings
from streams.worker.credentials import faust_broker_credentials

PRODUCE_BATCH_BYTES = 256 * 1024


def kafka_producer(app: faust.App) -> Any:
    """The aiokafka producer under the app's Faust producer (started with the app). The member
    agent ships its batches with it directly (streams/worker/outbox.py): a Faust `send` per record
    costs more than the rest of an event's processing."""
    return app.producer._ensure_producer()  # noqa: SLF001


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=faust_broker_credentials(settings),
        # RocksDB (through rocksdict) under datadir: a restarted worker reads only the
        # changelog after the offset its store last persisted (streams/worker/state_store.py).
        store="rocksdb://",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication,
        datadir=str(settings.worker_data_dir),
        web_port=settings.web_port,
        web_host="127.0.0.1",
        web_bind="127.0.0.1",
        autodiscover=False,
        key_serializer="raw",
        value_serializer="raw",
        consumer_auto_offset_reset="earliest",
        # A group join otherwise waits out Faust's 60 s rebalance timeout; with these a
        # (re)join takes a few seconds.
        broker_rebalance_timeout=6,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        producer_linger_ms=5,
        # The member agent ships a batch per partition per flush; batches up to this size go
        # as one record batch (the broker's default message limit is 1 MiB).
        producer_max_batch_size=PRODUCE_BATCH_BYTES,
        producer_acks=-1,
        producer_compression_type=(None if settings.producer_compression == "none"
                                   else settings.producer_compression),
        # The member agent acknowledges events only once their state is in the changelog
        # (and holds some for the event-time clock), so "wait until every event is acked"
        # before a rebalance would wait for ever. Instead the agent flushes on revocation
        # and leaves what it held unacknowledged: the next owner gets those events again.
        stream_wait_empty=False,
        # No standby replicas: a takeover reads the changelog from what the new owner's store
        # persisted (all of it on a new disk); a standby would make every worker read every
        # other worker's changelog all the time, which two cores cannot spare.
        table_standby_replicas=0,
    )
