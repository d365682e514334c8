"""Phases 5 and 6: a worker restarted with its store and a fresh one, then latency."""

from __future__ import annotations

import asyncio
import bisect
import os
import time
from typing import Any, Iterable, Mapping

from aiokafka import TopicPartition

from streams.platform.kafka_clients import kafka_consumer
from streams.platform.topics import members_changelog
from streams.tools.bench.broker_activity import stack_activity
from streams.tools.bench.children import Child, wait_for_log
from streams.tools.bench.common import (
    ASSIGNED, FLOOR_RATE, FLOOR_SECONDS, HIGHWATER_TABLE, RECOVERY_COMPLETE, RECOVERY_TIMEOUT_S,
    BenchError,
    START_TABLE, WORKER_READY, _Run, _TABLE_ROW, _count, _slowest, _stack_pids, _topic_records,
    _unused_ports,
)
from streams.tools.bench.cpu_timeline import (
    SLOW_SECOND_P99_MS, CpuTimeline, Second, slow_seconds, write_timeline,
)
from streams.tools.bench.latency import measure_latency, not_collecting, read_orders
from streams.tools.bench.pauses import (
    describe_pauses, pauses_between, read_own_pauses, read_pauses)
from streams.tools.bench.pipeline import _start_workers
from streams.tools.bench.profiling import _start_py_spy, _stop_py_spy
from streams.worker.pauses import PauseMonitor


async def _restart_and_latency(run: _Run) -> None:
    options = run.options
    restart = run.result["restart"]
    details: dict[str, Any] = {}
    run.result["details"]["restart"] = details
    changelog = members_changelog(run.settings)

    run.say(f"restart with the store: the {options.workers} pipeline worker(s) again, on their "
            "own data dirs, wall clock")
    with_store = _start_workers(run, "restart", "wall", profile=False, ports=run.worker_ports)
    details["with_store"], with_store_rounds = await _recovery(run, with_store)
    restart["with_store_s"] = details["with_store"]["ready_s"]
    run.say(f"restart with the store: ready after {restart['with_store_s']} s")
    stop_started = time.perf_counter()
    await asyncio.gather(*(asyncio.to_thread(w.stop) for w in with_store))
    details["with_store"]["stop_s"] = round(time.perf_counter() - stop_started, 2)

    # Kafka compacts only closed segments, so the changelog holds between one and every state
    # each member had: its records are counted, not taken from its offsets (compaction leaves
    # gaps). Read now, with no worker running, so the counting disturbs no figure.
    present = await _record_offsets(run, changelog)
    restart["changelog_records"] = sum(len(offsets) for offsets in present.values())
    details["changelog_offset_span"] = await _topic_records(run, changelog)  # end - start
    _count_reads(details["with_store"], with_store_rounds, present)
    restart["with_store_records"] = details["with_store"]["changelog_records_read"]
    run.say(f"restart with the store: {_count(restart['with_store_records'])} changelog "
            f"records read; the changelog holds {restart['changelog_records']:,} records "
            f"(offsets span {details['changelog_offset_span']:,})")
    run.say(f"restart on an empty disk: {options.workers} new worker(s), wall clock")
    workers = _start_workers(run, "fresh-disk", "wall", profile=False,
                             ports=_unused_ports(run, options.workers))
    details["fresh_disk"], fresh_rounds = await _recovery(run, workers)
    _count_reads(details["fresh_disk"], fresh_rounds, present)
    restart["fresh_disk_s"] = details["fresh_disk"]["ready_s"]
    restart["fresh_disk_records"] = details["fresh_disk"]["changelog_records_read"]
    run.say(f"restart on an empty disk: ready after {restart['fresh_disk_s']} s, "
            f"{_count(restart['fresh_disk_records'])} changelog records read")

    # Latency on the workers that rebuilt from the changelog: first a trickle, for the floor
    # with no queueing; then half the measured maximum rate.
    with not_collecting():
        floor = await measure_latency(run, FLOOR_RATE, min(FLOOR_SECONDS, options.latency_s),
                                      workers, first=0)
    rate = options.latency_rate or max(1.0, run.result["pipeline_eps"] * 0.5)
    # The broker here is minutes old: the first seconds of the phase's clients (the live
    # orders' producer, the reader, the fresh worker's small fetches) find Kafka's code for
    # them not yet compiled, and its JIT compiler took 13-35% of a core in those seconds
    # (docs/performance-log.md, thirty-second and thirty-third sessions). A broker in service
    # has compiled them long ago, so the measured window follows a warm-up at the same rate,
    # whose figures are reported beside it, not dropped.
    warm_up = None
    if options.latency_warm_up_s > 0:
        with not_collecting():
            warm_up = await measure_latency(run, rate, options.latency_warm_up_s, workers,
                                            first=floor["sent"], label="warm-up")
    spies = _start_py_spy(run, workers, "latency") if options.profile == "py-spy" else []
    cpu_pids = {**{w.name: w.pid for w in workers}, **_stack_pids(run),
                "redis sink": next(c.pid for c in run.children if c.name == "redis sink"),
                "bench (producer and reader)": os.getpid()}
    web_ports = [w.web_port for w in workers if w.web_port is not None]
    pauses_before = await read_pauses(web_ports)
    # The bench's own loop stamps each order's send and receipt: it is timed the way the
    # workers time theirs.
    own_pauses = PauseMonitor()
    timeline = CpuTimeline(cpu_pids)
    with not_collecting():
        own_pauses.start()
        own_before = read_own_pauses()
        timeline.start()
        run.result["latency_ms"] = await measure_latency(
            run, rate, options.latency_s, workers,
            first=floor["sent"] + (warm_up["sent"] if warm_up else 0))
        seconds = await timeline.stop()
        await own_pauses.stop()
        bench_paused = pauses_between(own_before, read_own_pauses())
    run.result["details"]["latency_bench_pauses"] = bench_paused
    pauses = [pauses_between(before, after) for before, after
              in zip(pauses_before, await read_pauses(web_ports))]
    run.result["details"]["latency_pauses"] = pauses
    for worker, paused in zip(workers, pauses):
        run.say(f"latency: {describe_pauses(worker.name, paused)}")
    run.say(f"latency: the bench's own loop woke over 50 ms late "
            f"{bench_paused['loop_lag']['over_50ms']} times (longest at most "
            f"{bench_paused['loop_lag']['longest_at_most_s']} s)")
    phase = timeline.whole()
    if phase is None:
        raise BenchError("the latency phase's CPU timeline holds no interval")
    run.result["details"]["latency_cpu_pct_of_one_core"] = phase.processes
    _report_seconds(run, timeline, seconds, phase.machine)
    if spies:
        run.result["profile"]["latency_phase"] = await _stop_py_spy(
            spies, "latency phase at half the pipeline rate (wall clock), all threads, CPU only")
    run.result["latency_ms"]["floor"] = {k: floor[k] for k in ("p50", "p99", "rate_eps", "sent")}
    run.result["latency_ms"]["warm_up"] = None if warm_up is None else {
        k: warm_up[k] for k in ("p50", "p99", "max", "rate_eps", "sent", "received", "seconds",
                                "per_order")}
    details["fresh_disk"]["rss_mb_after_latency"] = [w.peak_rss_mb() for w in workers]


def _report_seconds(run: _Run, timeline: CpuTimeline, seconds: list[Second],
                    machine: dict[str, float]) -> None:
    """The latency phase second by second: its CPU timeline as a file, the seconds whose
    orders missed the p99 target with what ran in them, and the machine over the phase."""
    latency = run.result["latency_ms"]
    path = run.workdir / f"latency-{latency['target_rate_eps']:g}-cpu-per-second.csv"
    write_timeline(seconds, list(timeline.pids), path)
    activity = stack_activity(run.stack)
    slow = slow_seconds(read_orders(latency["per_order"]), latency["started_at"], seconds,
                        brokers=None if activity is None else activity.between)
    run.result["details"]["latency_seconds"] = {
        "cpu_per_second": str(path), "machine_pct_of_one_core": machine,
        "most_steal_in_a_second": max((s.machine["steal"] for s in seconds), default=None),
        f"over_{SLOW_SECOND_P99_MS:g}_ms": slow}
    if activity is not None:
        phase_end = latency["started_at"] + latency["seconds"] + (latency["max"] or 0) / 1000
        phase = run.result["details"]["latency_seconds"]
        phase["broker_gc"] = activity.gc_summary(latency["started_at"], phase_end)
        phase["broker_cleaner"] = activity.cleaner_summary(latency["started_at"], phase_end)
    run.say(f"latency: the machine {machine['busy']}% busy, {machine['steal']}% stolen by the "
            f"hypervisor (of {100 * (os.cpu_count() or 1)}); {len(slow)} second(s) with a p99 "
            f"over {SLOW_SECOND_P99_MS:g} ms" + "".join(
                f"; second {s['second']}: p99 {s['p99_ms']} ms, machine "
                f"{s['machine_pct_of_one_core']}" + _broker_note(s) for s in slow[:5]))


def _broker_note(slow: dict[str, Any]) -> str:
    brokers = slow.get("brokers")
    if brokers is None:
        return ""
    return (f", broker GC pauses {brokers['gc_pause_ms']} ms, broker log lines "
            f"{sum(len(lines) for lines in brokers['log'].values())}")


# One recovery round: (changelog topic, partition) -> (offset reading starts after, highwater)
RecoveryRound = dict[tuple[str, int], tuple[int, int]]


async def _recovery(run: _Run, workers: list[Child]
                    ) -> tuple[dict[str, Any], list[list[RecoveryRound]]]:
    """Wait for every worker's "Worker ready"; how long it took, and per worker the changelog
    ranges its recovery rounds read (up to then)."""
    ready = [await wait_for_log(w, WORKER_READY, RECOVERY_TIMEOUT_S) for w in workers]
    assigned = [w.first_line_time(ASSIGNED) for w in workers]
    recovered = [w.first_line_time(RECOVERY_COMPLETE) for w in workers]
    rounds = [recovery_rounds(w.log_lines()) for w in workers]
    result: dict[str, Any] = {
        # process start -> "Worker ready", the slowest worker
        "ready_s": _slowest(r - w.started for r, w in zip(ready, workers)),
        # start -> partitions assigned (group join) and assigned -> changelog read, slowest
        "join_s": None, "changelog_s": None,
        "web_ports": [w.web_port for w in workers],
        "rss_mb_per_worker": [w.peak_rss_mb() for w in workers]}
    if None not in assigned and None not in recovered:
        result["join_s"] = _slowest(a - w.started for a, w in zip(assigned, workers))
        result["changelog_s"] = _slowest(r - a for r, a in zip(recovered, assigned))
    return result, rounds


def _count_reads(result: dict[str, Any], rounds: list[list[RecoveryRound]],
                 present: Mapping[tuple[str, int], list[int]]) -> None:
    """The records in the ranges each worker's rounds read, of those the changelog holds.
    With several workers a rebalance can cut a round short (it counts in full) and move a
    partition to a worker that reads it again: the figure is exact for one worker."""
    per_round = [[records_in(round_, present) for round_ in worker] for worker in rounds]
    logged = [sum(worker) for worker in per_round if worker]
    result["changelog_records_read"] = sum(logged) if logged else None
    result["changelog_records_read_per_round"] = per_round  # per worker, by recovery round


def records_in(round_: RecoveryRound, present: Mapping[tuple[str, int], list[int]]) -> int:
    """How many of the records at `present` offsets lie after each partition's start offset
    and up to its highwater."""
    return sum(bisect.bisect_right(present.get(tp, []), highwater)
               - bisect.bisect_right(present.get(tp, []), start)
               for tp, (start, highwater) in round_.items())


async def _record_offsets(run: _Run, topic: str) -> dict[tuple[str, int], list[int]]:
    """The offset of every record `topic` holds now, per partition, ascending."""
    consumer = kafka_consumer(run.bootstrap, enable_auto_commit=False,
                              max_partition_fetch_bytes=4 * 1024 * 1024, **run.security)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(run.options.partitions)]
        ends = await consumer.end_offsets(tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        offsets: dict[tuple[str, int], list[int]] = {(topic, tp.partition): [] for tp in tps}
        pending = [tp for tp in tps if await consumer.position(tp) < ends[tp]]
        while pending:
            batch = await consumer.getmany(*pending, timeout_ms=500, max_records=50_000)
            for tp, messages in batch.items():
                offsets[(topic, tp.partition)].extend(m.offset for m in messages
                                                      if m.offset < ends[tp])
            pending = [tp for tp in pending if await consumer.position(tp) < ends[tp]]
        return offsets
    finally:
        await consumer.stop()


def recovery_rounds(lines: Iterable[str]) -> list[RecoveryRound]:
    """Each of a worker's recovery rounds, from Faust's log: for every active changelog
    partition, the offset reading started after and the highwater (its last offset) it read
    to; [] if the log has no such tables."""
    tables: list[tuple[str, dict[tuple[str, int], int]]] = []
    rows: dict[tuple[str, int], int] | None = None
    topic = ""
    for line in lines:
        if line.startswith("["):  # a new log record; a table continues on the lines below
            lowered = line.lower()
            rows = None
            for kind in (HIGHWATER_TABLE, START_TABLE):
                if kind in lowered:
                    rows = {}
                    tables.append((kind, rows))
            continue
        match = _TABLE_ROW.match(line.strip()) if rows is not None else None
        if match is None:
            continue
        topic = topic if match.group(1) == "〃" else match.group(1)
        rows[(topic, int(match.group(2)))] = int(match.group(3))
    rounds: list[RecoveryRound] = []
    highwaters: dict[tuple[str, int], int] = {}
    for kind, table in tables:
        if kind == HIGHWATER_TABLE:
            highwaters = table
            continue
        rounds.append({tp: (start, max(start, highwaters.get(tp, start)))
                       for tp, start in table.items()})
    return rounds
