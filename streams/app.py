"""Builds the Faust app from settings, and nothing else (STYLE.md rule 1)."""

from __future__ import annotations

import faust

from streams.security import faust_broker_credentials
from streams.settings import Settings


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
        producer_acks=-1,
    )
