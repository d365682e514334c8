"""Phases 3 and 4: the dry run's expected result, then the whole pipeline against it."""

from __future__ import annotations

import asyncio
import gc
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from streams.platform.kafka_clients import kafka_consumer
from streams.tools.bench.children import Child, wait_for_log
from streams.tools.bench.cpu_timeline import machine_pct, machine_times
from streams.tools.bench.pauses import (
    describe_pauses, pauses_between, read_agent_seconds, read_pauses)
from streams.tools.processes import free_ports
from streams.tools.bench.common import (
    BenchError, READY_TIMEOUT_S, WORKER_READY, _Run, _offset_ranges, _quantile, _stack_pids, _warn,
    cpu_seconds,
)
from streams.tools.bench.profiling import _pyinstrument_reports, _start_py_spy, _stop_py_spy


@dataclass(frozen=True)
class Expected:
    change_ids: frozenset[str]
    tier_changes: int
    described: Mapping[str, str]  # change_id -> "member tag op cause", to name what is missing


def _dry_run(run: _Run, path: Path) -> Expected:
    from taggers.dryrun import dry_run
    from taggers.engine import Engine
    from taggers.rules import load_rules
    from taggers.state import encode_state

    run.say("dry run of the same file with the default pack (the expected tag changes)")
    started = time.perf_counter()
    engine = Engine(load_rules(run.settings.rules_path), run.settings.allowed_lateness_s)
    with path.open("rb") as lines:
        result = dry_run(engine, lines)
    if result.rejected:
        raise BenchError(f"the dry run rejected {len(result.rejected)} generated events, e.g. "
                         f"line {result.rejected[0][0]}: {result.rejected[0][1]}")
    sizes = sorted(len(encode_state(state)) for state in result.states.values())
    expected = Expected(frozenset(c.change_id for c in result.changes), len(result.tier_changes),
                        {c.change_id: f"{c.member_id} {c.op} {c.tag} at {c.at} ({c.cause})"
                         for c in result.changes})
    run.result["state_bytes_per_member"] = round(statistics.fmean(sizes)) if sizes else 0
    run.result["details"]["state_bytes"] = {
        "members": len(sizes), "p50": _quantile(sizes, 0.5), "p99": _quantile(sizes, 0.99),
        "max": sizes[-1] if sizes else 0}
    run.result["details"]["dry_run"] = {
        "seconds": round(time.perf_counter() - started, 1),
        "events_per_s": round(run.result["events"] / (time.perf_counter() - started)),
        "tag_changes": len(expected.change_ids), "tier_changes": expected.tier_changes}
    if len(expected.change_ids) != len(result.changes):
        raise BenchError("the dry run produced two tag changes with one change_id")
    del result
    gc.collect()
    return expected


def _worker_argv(run: _Run, web_port: int, report: Path | None) -> list[str]:
    worker = ["-m", "streams.ops.cli", "worker", "--web-port", str(web_port)]
    if report is not None and run.options.profile == "pyinstrument":
        # The whole worker's life in the main thread (Faust's consumer has a thread of its own,
        # which py-spy sees and pyinstrument does not).
        return [sys.executable, "-m", "pyinstrument", "-r", "pyisession", "-o", str(report),
                *worker]
    return [sys.executable, *worker]


def _start_workers(run: _Run, phase: str, clock: str, profile: bool,
                   ports: list[int]) -> list[Child]:
    """A worker per web port; each keeps its RocksDB store in <data dir>/worker-<port>."""
    workers = []
    for index, port in enumerate(ports, start=1):
        report = None
        if profile and run.options.profile == "pyinstrument":
            report = run.workdir / f"profile-{phase}-worker{index}.pyisession"
        workers.append(Child(f"{phase} worker {index}", _worker_argv(run, port, report),
                             run.env(clock=clock, web_port=port),
                             run.workdir / f"{phase}-worker{index}.log",
                             run.children, web_port=port))
    return workers


def _start_sink(run: _Run) -> Child:
    return Child("redis sink", [sys.executable, "-m", "streams.ops.cli", "redis-sink"], run.env(),
                 run.workdir / "redis-sink.log", run.children)


async def _pipeline(run: _Run, expected: Expected, out: dict[str, Any] | None = None) -> None:
    """The pipeline's workers and a Redis sink over the event topics from their start; what it
    measures goes into `out` (default: the run's result)."""
    options = run.options
    out = run.result if out is None else out
    details = out.setdefault("details", {})
    tags = [TopicPartition(run.names.tag_changes, p) for p in range(options.partitions)]
    reader = kafka_consumer(run.bootstrap, enable_auto_commit=False,
                            **run.security)
    await reader.start()
    try:
        baseline = await reader.end_offsets(tags)
        tier_baseline = await _positions(run, run.names.tier_changes)
        dead_baseline = await _positions(run, run.names.deadletter)
        sink = _start_sink(run)
        run.say(f"pipeline: {options.workers} worker(s), event clock, default pack, "
                f"Redis sink on; {len(expected.change_ids):,} tag changes expected")
        run.worker_ports = free_ports(options.workers)
        workers = _start_workers(run, "pipeline", "event", profile=options.profile is not None,
                                 ports=run.worker_ports)
        ready = [await wait_for_log(w, WORKER_READY, READY_TIMEOUT_S) for w in workers]
        # Attached once the interpreter is up (py-spy cannot attach to one still starting).
        spies = _start_py_spy(run, workers, "pipeline") if options.profile == "py-spy" else []
        started = min(ready)
        web_ports = [w.web_port for w in workers if w.web_port is not None]
        pauses_before = await read_pauses(web_ports)
        cpu_pids = {**{w.name: w.pid for w in workers}, sink.name: sink.pid, **_stack_pids(run)}
        cpu_before = {name: cpu_seconds(pid) for name, pid in cpu_pids.items()}
        machine_before = machine_times()
        cpu_from = time.time()
        run.say(f"pipeline: worker(s) ready after {started - workers[0].started:.1f} s; "
                "measuring from here")
        finished, seen = await _wait_for_changes(run, reader, tags, baseline, expected,
                                                 workers + [sink])
        cpu_window = time.time() - cpu_from
        cpu_used = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in cpu_pids.items()}
        machine = machine_pct(machine_before, machine_times(), cpu_window)
        agent_seconds = await read_agent_seconds(web_ports)
        pauses = [pauses_between(before, after) for before, after
                  in zip(pauses_before, await read_pauses(web_ports))]
        seconds = finished - started
        eps = run.result["events"] / seconds if seconds > 0 else 0.0
        out["pipeline_eps"] = round(eps)
        raw = run.result["raw_passthrough_eps"]
        out["ratio"] = round(eps / raw, 3) if raw else None
        # issue 14's measure: the pipeline against a Faust agent that does nothing
        floor = run.result["faust_floor_eps"]
        out["of_faust_floor"] = round(eps / floor, 3) if floor else None
        tiers = await _read_all(run, run.names.tier_changes, tier_baseline)
        dead = await _read_all(run, run.names.deadletter, dead_baseline)
        peaks = [w.peak_rss_mb() for w in workers]
        out["rss_mb"] = max((p for p in peaks if p is not None), default=None)
        out["matches_dry_run"] = not seen.missing and not seen.unexpected
        details["pipeline"] = {
            "seconds": round(seconds, 3), "tag_changes": seen.total,
            "duplicate_tag_changes": seen.duplicates, "unexpected_tag_changes": seen.unexpected,
            "tier_changes": len(tiers),  # as far as written when the last tag change was
            "tier_changes_expected": expected.tier_changes,
            "matches_dry_run": out["matches_dry_run"],
            "dead_lettered": len(dead),
            "dead_letter_examples": [_dead_letter_text(value) for value in dead[:5]],
            "missing_tag_changes": len(seen.missing),
            "missing_examples": seen.missing[:10],
            "unexpected_examples": seen.unexpected_examples,
            "first_change_after_ready_s": round(seen.first - started, 3) if seen.first else None,
            "workers_ready_spread_s": round(max(ready) - min(ready), 3),
            "rss_mb_per_worker": peaks, "redis_sink_rss_mb": sink.peak_rss_mb(),
            # CPU time each process used from "Worker ready" until the bench saw the last
            # change, as % of one core: ~100 for a worker means it is CPU-bound.
            "cpu_pct_of_one_core": {name: round(100 * used / cpu_window, 1)
                                    for name, used in cpu_used.items()},
            "machine_pct_of_one_core": machine,
            "agent_us_per_event": _agent_share(agent_seconds, run.result["events"], eps),
            # each worker's collections and loop lag from "Worker ready" to the last change
            "pauses": pauses}
        if seen.missing or seen.unexpected:
            _warn(run, f"the stream's tag changes differ from the dry run's: "
                       f"{len(seen.missing)} missing, {seen.unexpected} unexpected "
                       "(see details.pipeline)")
        run.say(f"pipeline: {run.result['events']:,} events in {seconds:.2f} s = {eps:,.0f}/s "
                f"(ratio {out['ratio']}, {out['of_faust_floor']} of the Faust floor); "
                f"worker peak RSS {out['rss_mb']} MB")
        for worker, paused in zip(workers, pauses):
            run.say(f"pipeline: {describe_pauses(worker.name, paused)}")
        if spies:
            out["profile"] = await _stop_py_spy(
                spies, "pipeline phase (event clock), all threads, CPU only (idle excluded)")
        run.say("stopping the pipeline worker(s) cleanly (SIGTERM) for the restart")
        stop_started = time.perf_counter()
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))
        details["pipeline"]["worker_stop_s"] = round(
            time.perf_counter() - stop_started, 2)
        if options.profile == "pyinstrument":
            out["profile"] = _pyinstrument_reports(run, workers)
    finally:
        await reader.stop()


async def _positions(run: _Run, topic: str) -> dict[int, int]:
    """Where each partition of `topic` ends now (its records from here on are this run's)."""
    _, ends = await _offset_ranges(
        run, [TopicPartition(topic, p) for p in range(run.options.partitions)])
    return {tp.partition: end for tp, end in ends.items()}


async def _read_all(run: _Run, topic: str, start: dict[int, int]) -> list[bytes]:
    """The values of `topic` from `start` to its end offsets now."""
    consumer = kafka_consumer(run.bootstrap, enable_auto_commit=False,
                              **run.security)
    await consumer.start()
    values: list[bytes] = []
    try:
        tps = [TopicPartition(topic, p) for p in start]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, start[tp.partition])
        pending = [tp for tp in tps if start[tp.partition] < ends[tp]]
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=10_000)
            for tp, messages in batch.items():
                values.extend(m.value for m in messages if m.offset < ends[tp])
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return values
    finally:
        await consumer.stop()


def _dead_letter_text(value: bytes) -> str:
    try:
        record = orjson.loads(value)
        return f"{record.get('topic')}:{record.get('partition')}@{record.get('offset')}: " \
               f"{record.get('error')}"
    except orjson.JSONDecodeError:
        return repr(value[:200])


@dataclass
class _Seen:
    total: int = 0
    duplicates: int = 0
    unexpected: int = 0
    first: float | None = None  # Kafka timestamps (epoch s) of the first and last expected
    last: float | None = None
    last_unexpected: float | None = None
    missing: list[str] = field(default_factory=list)  # expected changes never published
    unexpected_examples: list[str] = field(default_factory=list)


def _agent_share(agent_seconds: list[dict[str, float]], events: int,
                 eps: float) -> dict[str, float | None]:
    """Of the pipeline's time per event, what the member agent's own code took (summed over
    the workers, from their start), and with one worker the rest: Faust's per-message path,
    the Kafka producer, the store's writes and the event loop."""
    def per_event(part: str) -> float:
        return round(sum(seconds.get(part, 0.0) for seconds in agent_seconds)
                     / max(events, 1) * 1e6, 1)

    share: dict[str, float | None] = {
        "handle": per_event("handle"), "seal": per_event("seal"),
        "pipeline": round(1e6 / eps, 1) if eps else None}
    if len(agent_seconds) == 1 and share["pipeline"] is not None:
        share["rest"] = round(share["pipeline"] - share["handle"] - share["seal"], 1)
    return share


async def _wait_for_changes(run: _Run, reader: AIOKafkaConsumer, tps: list[TopicPartition],
                            baseline: dict[TopicPartition, int], expected: Expected,
                            watched: list[Child]) -> tuple[float, _Seen]:
    """Wait until every expected change is on tags.changes; when the last one was written.

    While the workers run, only the end offsets are polled (cheap), so the bench takes no CPU
    from them; the records are read once there are at least as many as expected (again as
    more come, should some be unexpected), or once nothing has come for `stall_s`. The end
    time comes from the records' own timestamps, not from when they were read."""
    missing = set(expected.change_ids)
    seen = _Seen()
    positions = dict(baseline)
    reader.assign(tps)
    for tp in tps:
        reader.seek(tp, baseline[tp])
    last_total, last_progress, read_at = -1, time.monotonic(), -1
    while True:
        for child in watched:
            if not child.alive():
                raise BenchError(f"{child.name} exited with code {child.returncode}; "
                                 f"its log ({child.log_path}):\n{child.log_tail()}")
        ends = await reader.end_offsets(tps)
        total = sum(ends[tp] - baseline[tp] for tp in tps)
        if total != last_total:
            last_total, last_progress = total, time.monotonic()
        if total >= len(expected.change_ids) and total != read_at:
            read_at = total
            await _read_changes(reader, ends, positions, missing, expected, seen)
            if not missing:
                assert seen.last is not None or not expected.change_ids
                return (seen.last if seen.last is not None else time.time()), seen
        if time.monotonic() - last_progress > run.options.stall_s:
            await _read_changes(reader, ends, positions, missing, expected, seen)
            if not missing:
                continue
            seen.missing = [expected.described[c] for c in sorted(missing)]
            if seen.last is None:
                raise BenchError(f"pipeline stalled: no tag change in {run.options.stall_s:.0f} s;"
                                 f" worker log: {watched[0].log_path}")
            # The stream finished with other changes than the dry run: the speed is still
            # measured (to its last change); the mismatch is reported, not hidden.
            return max(seen.last, seen.last_unexpected or 0.0), seen
        await asyncio.sleep(0.2)


async def _read_changes(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int],
                        positions: dict[TopicPartition, int], missing: set[str],
                        expected: Expected, seen: _Seen) -> None:
    """Read on from `positions` to `ends` at least (and whatever else a fetch brings)."""
    while True:
        batch = await reader.getmany(timeout_ms=300, max_records=20_000)
        if not batch and all(positions[tp] >= ends[tp] for tp in ends):
            return
        for tp, messages in batch.items():
            for message in messages:
                positions[tp] = message.offset + 1
                seen.total += 1
                change_id = orjson.loads(message.value)["change_id"]
                if change_id in missing:
                    missing.discard(change_id)
                    at = message.timestamp / 1000
                    seen.first = at if seen.first is None else min(seen.first, at)
                    seen.last = at if seen.last is None else max(seen.last, at)
                elif change_id in expected.change_ids:
                    seen.duplicates += 1
                else:
                    seen.unexpected += 1
                    seen.last_unexpected = message.timestamp / 1000
                    if len(seen.unexpected_examples) < 10:
                        change = orjson.loads(message.value)
                        seen.unexpected_examples.append(
                            f"{change['member_id']} {change['op']} {change['tag']} at "
                            f"{change['at']} ({change['cause']})")
        if not missing:
            return
