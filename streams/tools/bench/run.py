"""`tagstream bench`: the phases in order, interruptible, with the stack it needs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import time
from datetime import datetime
from typing import Any


from schemas.errors import TagstreamError
from streams.platform.admin import ensure_tagstream_topics, ensure_topics
from streams.platform.settings import Settings
from streams.tools.kafka_server import kafka_version
from streams.tools.processes import free_ports, uninterrupted_stopping
from streams.tools.stack import LocalStack
from streams.tools.bench.common import (
    BenchError, BenchOptions, PASSTHROUGH_TOPIC, PROFILERS, Say, _Run, _cluster_nodes, _warn,
    broker_name,
)
from streams.tools.bench.history import (
    _event_messages, _generate, _preproduce, _require_empty_event_topics,
)
from streams.tools.bench.passthrough import faust_floor, raw_passthrough
from streams.tools.bench.pipeline import _dry_run, _pipeline
from streams.tools.bench.profiling import _require_profiler
from streams.tools.bench.recovery import _restart_and_latency
from streams.tools.bench.scaling import compare_workers
from streams.tools.bench.report import _header


def run_bench(settings: Settings, options: BenchOptions, say: Say) -> dict[str, Any]:
    """Run every phase; returns the result (with "error" set if a phase failed)."""
    if options.profile is not None and options.profile not in PROFILERS:
        raise BenchError(f"--profile must be one of {', '.join(PROFILERS)}")
    if options.profile is not None:
        _require_profiler(options.profile)
    if options.brokers < 1:
        raise BenchError(f"--brokers must be at least 1, not {options.brokers}")
    if options.use_stack and options.brokers != 1:
        raise BenchError("--brokers is for the private stack; with --use-stack the bench "
                         "measures the running cluster (and reports its node count)")
    workdir = (options.workdir or settings.data_dir / "bench"
               / datetime.now().strftime("%Y%m%d-%H%M%S")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if options.use_stack:
        # A fresh app id: its own consumer group and an empty changelog on a shared broker.
        settings = dataclasses.replace(settings, app_id=f"{settings.app_id}-bench-{int(time.time())}")
    else:
        *broker_ports, redis_port = free_ports(options.brokers + 1)
        settings = dataclasses.replace(
            settings, broker=",".join(f"kafka://127.0.0.1:{port}" for port in broker_ports),
            redis_url=f"redis://127.0.0.1:{redis_port}/0", stack_dir=workdir / "stack")
    settings = dataclasses.replace(settings, partitions=options.partitions,
                                   data_dir=workdir / "data", log_level="info")
    stack = None if options.use_stack else LocalStack(settings)
    run = _Run(settings, options, workdir, say, stack)
    run.result.update(_header(options, workdir))
    started = time.perf_counter()
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        if stack is not None:
            say(f"starting a private Kafka {kafka_version()} ({options.brokers} node(s), "
                f"{settings.broker}) and Redis ({settings.redis_url})")
            stack.up(options.brokers, fresh=True)
            run.settings = stack.client_settings()
        asyncio.run(_interruptible(_phases(run)))
    except (TagstreamError, KeyboardInterrupt, asyncio.CancelledError,
            Exception) as exc:  # noqa: BLE001 - reported in the result
        run.result["error"] = ("interrupted"
                               if isinstance(exc, (KeyboardInterrupt, asyncio.CancelledError))
                               else f"{type(exc).__name__}: {exc}")
    finally:
        with uninterrupted_stopping(say, "what the bench started"):
            for child in reversed(run.children):
                child.stop()
            if stack is not None:
                if options.keep_stack and "error" not in run.result:
                    say(f"Kafka ({settings.broker}) and Redis ({settings.redis_url}) keep "
                        f"running; stop them with: TAGSTREAM_STACK_DIR={settings.stack_dir} "
                        "tagstream stack down")
                else:
                    stack.down()
                    # The private cluster's log dirs: hundreds of MB at 100,000 members, and
                    # of no use once it is down (the run's logs stay beside them).
                    shutil.rmtree(stack.kafka_dir, ignore_errors=True)
        signal.signal(signal.SIGTERM, previous_sigterm)
        run.result["elapsed_s"] = round(time.perf_counter() - started, 1)
        run.result["machine"]["loadavg_1m_end"] = round(os.getloadavg()[0], 2)
        events_file = workdir / "events.jsonl"
        if events_file.exists():
            events_file.unlink()  # large, and the seed and days regenerate it exactly
    return run.result


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


async def _interruptible(phases: Any) -> None:
    """SIGTERM as asyncio.run treats Ctrl-C: the first cancels the phases (so each closes its
    clients on the way out), a second one interrupts at once."""
    task = asyncio.ensure_future(phases)
    loop = asyncio.get_running_loop()

    def on_sigterm(signum: int, frame: Any) -> None:
        if task.done() or task.cancelling():
            raise KeyboardInterrupt
        task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the loop if it waits in select()

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        await task
    finally:
        signal.signal(signal.SIGTERM, previous)


async def _phases(run: _Run) -> None:
    options = run.options
    nodes = await _cluster_nodes(run)
    # The pinned version: the private stack runs it, and docker-compose.yml runs the same.
    run.result["broker"] = broker_name(kafka_version(), nodes)
    # The topics as a worker creates them (the member changelog compacted), before any worker.
    replication = await ensure_tagstream_topics(run.settings)
    # Resolved once, so the replay, the workers and Faust's changelog all use the same factor.
    run.settings = dataclasses.replace(run.settings, replication=replication)
    await ensure_topics(run.bootstrap, {run.names.actual(PASSTHROUGH_TOPIC): options.partitions},
                        replication, security=run.security)
    run.result["details"]["broker"] = {"bootstrap": run.bootstrap, "nodes": nodes,
                                       "replication": replication,
                                       "private": not options.use_stack}
    if options.use_stack:
        await _require_empty_event_topics(run)
    path = run.workdir / "events.jsonl"
    # Generation and the dry run block the loop on purpose: nothing else runs meanwhile, and
    # a Ctrl-C then stops them at once (a worker thread would be waited for on the way out).
    _generate(run, path)
    await _preproduce(run, path)
    run.messages = await _event_messages(run)
    replayed = run.result["events"] + run.result["details"]["replay"]["watermark_markers"]
    if run.messages != replayed:
        _warn(run, f"the event topics hold {run.messages:,} records after the replay, which "
                   f"sent {replayed:,} (events and watermark markers)")
    run.result["raw_passthrough_eps"] = await raw_passthrough(run)
    await faust_floor(run)
    await faust_floor(run, direct=True)
    expected = _dry_run(run, path)
    await _pipeline(run, expected)
    await _restart_and_latency(run)
    if options.compare_workers is not None:
        await compare_workers(run, expected, options.compare_workers)
