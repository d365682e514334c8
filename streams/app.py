"""Builds the Faust app from settings, and nothing else (STYLE.md rule 1)."""

from __future__ import annotations

from typing import Any

import faust

from streams import compat  # noqa: F401 - installs the Faust/aiokafka adjustments
from streams.security import faust_broker_credentials
from streams.settings import Settings

PRODUCE_BATCH_BYTES = 256 * 1024


def kafka_producer(app: faust.App) -> Any:
    """The aiokafka producer under the app's Faust producer (started with the app). The member
    agent ships its batches with it directly (streams/outbox.py): a Faust `send` per record
    costs more than the rest of an event's processing."""
    return app.producer._ensure_producer()  # noqa: SLF001


def create_app(settings: Settings) -> faust.App:
    return faust.App(
        settings.app_id,
        broker=settings.broker,
        broker_credentials=faust_broker_credentials(settings),
        store="memory://",  # state is rebuilt from the changelog topic on start
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
        # A group join otherwise waits out Faust's 60 s rebalance timeout; these values make
        # a (re)join take ~5 s on the embedded broker and Apache Kafka alike.
        broker_rebalance_timeout=6,
        broker_session_timeout=10,
        broker_heartbeat_interval=1,
        producer_linger_ms=5,
        # The member agent ships a batch per partition per flush; batches up to this size go
        # as one record batch (the broker's default message limit is 1 MiB).
        producer_max_batch_size=PRODUCE_BATCH_BYTES,
        producer_acks=-1,
        # The member agent acknowledges events only once their state is in the changelog
        # (and holds some for the event-time clock), so "wait until every event is acked"
        # before a rebalance would wait for ever. Instead the agent flushes on revocation
        # and leaves what it held unacknowledged: the next owner gets those events again.
        stream_wait_empty=False,
        # No standby replicas. With the memory store a takeover re-reads a partition's whole
        # changelog anyway (there is no persisted offset to start from), so a standby would
        # only make every worker read the other workers' changelogs all the time.
        table_standby_replicas=0,
    )
