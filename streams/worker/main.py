"""Assembles a runnable worker: app, topics, state table, rules, engine, agents."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from typing import Any, Awaitable, Callable

import faust


from streams.platform.admin import ensure_tagstream_topics
from streams.platform.redaction import install_log_redaction
from streams.platform.rules_watch import RulesWatcher
from streams.platform.settings import Settings
from streams.platform.topics import (MEMBERS_CHANGELOG_CONFIG, MEMBERS_TABLE, declare_topics,
                                     topic_names)
from streams.worker import compat
from streams.worker.app import create_app, kafka_producer
from streams.worker.clock import PartitionClocks
from streams.worker.members import MemberProcessor, recovering, register_member_agent
from streams.worker.outbox import KafkaRecordSender
from streams.worker.pauses import PauseMonitor
import taggers
from taggers.engine import Engine
from taggers.rules import RulePack, load_rules

log = logging.getLogger(__name__)

# The member table's RocksDB, one database per partition, through rocksdict. Faust's default
# block cache is 2 GiB per partition; states are small and read once per event, so a small
# cache and write buffer keep a worker's memory near its state's size.
ROCKSDB_OPTIONS = {
    "driver": "rocksdict",
    "block_cache_size": 32 * 1024 * 1024,
    "write_buffer_size": 16 * 1024 * 1024,
}


@dataclass
class WorkerParts:
    app: faust.App
    processor: MemberProcessor


def build_worker(settings: Settings, pack: RulePack | None = None) -> WorkerParts:
    """Everything wired, nothing started. Rules are compiled once (here, unless `pack` is
    the settings' rules already compiled): a bad rule file stops the worker before it joins
    the group."""
    if pack is None:
        pack = load_rules(settings.rules_path)
    app = create_app(settings)
    names = topic_names(settings)
    topics = declare_topics(app, settings.partitions, names)
    # Keys and values are bytes stored as they are. Faust picks the changelog codec from
    # key_type/value_type (bytes -> raw); anything else falls back to JSON, and recovery then
    # fails on our msgpack values.
    table = app.Table(MEMBERS_TABLE, partitions=settings.partitions, default=None,
                      key_type=bytes, value_type=bytes,
                      options=dict(ROCKSDB_OPTIONS),  # Faust pops keys off it
                      extra_topic_configs=MEMBERS_CHANGELOG_CONFIG)
    processor = MemberProcessor(
        Engine(pack, settings.allowed_lateness_s), KafkaRecordSender(lambda: kafka_producer(app)),
        table, table.changelog_topic.get_topic_name(),
        PartitionClocks(settings.clock, names.events,
                        reorder_window_s=settings.reorder_window_s), settings.partitions,
        names, linger_s=settings.batch_linger_ms / 1000, hold_limit=settings.event_hold_limit)
    register_member_agent(app, processor, topics, settings.timer_interval_s)
    watch_pauses(app, PauseMonitor())
    if settings.rules_reload_s > 0:
        watcher = RulesWatcher(settings.rules_path, pack, lambda new: processor.use_rules(
            Engine(new, settings.allowed_lateness_s)))
        app.timer(settings.rules_reload_s)(_as_coroutine(watcher.check))
    log.info("rules %s loaded from %s: %d tags; engine %s", pack.version, settings.rules_path,
             len(pack.tags), taggers.ENGINE_BUILD)
    return WorkerParts(app, processor)


def watch_pauses(app: faust.App, monitor: PauseMonitor) -> None:
    """The monitor runs while the worker does; once the worker has first recovered its
    tables, what it holds then is frozen out of the garbage collector's walks, and the
    collector runs less often from then on."""

    @app.task
    async def start_pause_monitor() -> None:
        monitor.start()

    @app.timer(1.0)
    async def freeze_once_recovered() -> None:
        if monitor.frozen is None and not recovering(app):
            log.info("froze %d objects alive after recovery out of the garbage collector's "
                     "walks", monitor.freeze_survivors())
            monitor.collect_less_often()

    @app.on_before_shutdown.connect
    async def stop_pause_monitor(app: faust.App, **_: Any) -> None:
        await monitor.stop()


def _as_coroutine(check: Callable[[], object]) -> Callable[[], Awaitable[None]]:
    async def run() -> None:
        check()

    return run


def run_worker(settings: Settings) -> None:
    install_log_redaction(settings)
    compat.install(agent_topics=topic_names(settings).inbound,
                   fetch_max_wait_ms=settings.consumer_fetch_max_wait_ms)
    pack = load_rules(settings.rules_path)  # a bad rule file stops the worker before Kafka
    # Faust creates the changelog topic itself, with the app's replication: resolve "0" first.
    replication = asyncio.run(ensure_tagstream_topics(settings))
    parts = build_worker(replace(settings, replication=replication), pack)
    settings.worker_data_dir.mkdir(parents=True, exist_ok=True)
    worker = quiet_worker(parts.app, settings.log_level)
    worker.execute_from_commandline()


def quiet_worker(app: faust.App, log_level: str) -> faust.Worker:
    """A Faust worker that logs at `log_level` and no lower.

    Faust's terminal spinner sets the root logger to DEBUG so that it can spin on every record:
    every aiokafka and Faust debug message is then built (and, here, redacted) and thrown
    away. That cost a third of the worker's time; without the spinner the level holds."""
    worker = faust.Worker(app, loglevel=log_level, quiet=True)
    worker.spinner = None
    return worker
