"""Builds the Faust app from settings, and nothing else (STYLE.md rule 1)."""

from __future__ import annotations

from typing import Any

import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from streams.security import faust_broker_credentials
from streams.settings import Settings

# Faust builds its worker consumer with a fixed fetch_max_wait_ms=1500 and no setting to
# change it. A broker that holds a fetch for the full wait (the embedded one does) then adds
# up to 1.5 s between an event and its tag change. The wait is capped here, the one place
# tagstream reaches into Faust; the aiokafka default is 500 ms.
FETCH_MAX_WAIT_MS = 20
PRODUCE_BATCH_BYTES = 256 * 1024
_create_worker_consumer = faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer


def _consumer_with_short_fetch_wait(self, transport):  # type: ignore[no-untyped-def]
    consumer = _create_worker_consumer(self, transport)
    consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # noqa: SLF001 - read at consumer start
    return consumer


faust_aiokafka.AIOKafkaConsumerThread._create_worker_consumer = _consumer_with_short_fetch_wait


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
    )
