"""The bench's result header and its human summary."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any, Mapping

import taggers
from streams.tools.bench.common import BenchOptions


def _header(options: BenchOptions, workdir: Path) -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "events": None, "events_requested": options.events, "members": options.members,
        "partitions": options.partitions, "workers": options.workers,
        "raw_passthrough_eps": None, "faust_floor_eps": None, "ratio_ceiling": None,
        "pipeline_eps": None, "ratio": None, "of_faust_floor": None, "matches_dry_run": None,
        "latency_ms": None,
        "rss_mb": None, "state_bytes_per_member": None,
        # seconds from process start to "Worker ready", and changelog records read
        "restart": {"with_store_s": None, "with_store_records": None, "fresh_disk_s": None,
                    "fresh_disk_records": None, "changelog_records": None},
        "clock": {"pipeline": "event", "restart": "wall", "latency": "wall"},
        "redis_sink": "on: tagstream redis-sink, its own process",
        "broker": None,  # "Apache Kafka <version>, N node(s)", once the cluster answered
        # "mypyc", or why the workers' engine runs interpreted (taggers/compiled.py)
        "engine_build": taggers.ENGINE_BUILD,
        "profile": None, "seed": options.seed,
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "cpu": _cpu_model(),
                    "mem_gib": _mem_gib(),
                    # Other work on the machine skews every figure: the load before and after.
                    "loadavg_1m_start": round(os.getloadavg()[0], 2)},
        "versions": {name: version(name) for name in ("faust-streaming", "aiokafka")},
        "command": options.command, "workdir": str(workdir), "details": {},
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _mem_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def format_summary(result: Mapping[str, Any]) -> str:
    """The result for a person: the headline figures, then where the details are."""
    latency = result.get("latency_ms") or {}
    floor = latency.get("floor") or {}
    warm_up = latency.get("warm_up") or {}
    restart = result.get("restart") or {}
    restart_details = (result.get("details") or {}).get("restart") or {}
    with_store = restart_details.get("with_store") or {}
    fresh_disk = restart_details.get("fresh_disk") or {}
    machine = result.get("machine") or {}
    seconds = (result.get("details") or {}).get("latency_seconds") or {}
    phase_machine = seconds.get("machine_pct_of_one_core") or {}
    share = ((result.get("details") or {}).get("pipeline") or {}).get("agent_us_per_event") or {}

    def number(value: Any, unit: str = "") -> str:
        if value is None:
            return "-"
        if isinstance(value, int) and not isinstance(value, bool):
            return f"{value:,}{unit}"
        return f"{value}{unit}"

    lines = [
        f"tagstream bench: {number(result.get('events'))} events, "
        f"{number(result.get('members'))} members, {result.get('partitions')} partitions, "
        f"{result.get('workers')} worker(s); {result.get('broker')}; "
        f"{machine.get('nproc')} cores, Python {machine.get('python')}",
        f"  raw passthrough      {number(result.get('raw_passthrough_eps'), ' events/s')}",
        f"  Faust, agent idle    {number(result.get('faust_floor_eps'), ' events/s')}"
        f"  (ratio ceiling {number(result.get('ratio_ceiling'))})",
        f"  pipeline             {number(result.get('pipeline_eps'), ' events/s')}"
        f"  (ratio {number(result.get('ratio'))}, {number(result.get('of_faust_floor'))} of the "
        f"Faust floor, matches the dry run: "
        f"{number(result.get('matches_dry_run'))})",
        f"  the agent's own code {number(share.get('handle'))} + {number(share.get('seal'))} µs "
        f"(handle + seal) of {number(share.get('pipeline'))} µs an event",
        f"  latency at {number(latency.get('rate_eps'), '/s')}  p50 {number(latency.get('p50'))} ms, "
        f"p99 {number(latency.get('p99'))} ms ({number(latency.get('received'))} of "
        f"{number(latency.get('sent'))} live orders)",
        f"  seconds over 100 ms  {number(len(seconds['over_100_ms']) if seconds else None)} "
        f"(the machine over the phase: busy {number(phase_machine.get('busy'))}, stolen "
        f"{number(phase_machine.get('steal'))} of {number(100 * (machine.get('nproc') or 1))})",
        f"  warm-up before it    {number(warm_up.get('seconds'), ' s')} at "
        f"{number(warm_up.get('rate_eps'), '/s')}: p50 {number(warm_up.get('p50'))} ms, "
        f"p99 {number(warm_up.get('p99'))} ms (not in the figures above)",
        f"  latency floor (20/s) p50 {number(floor.get('p50'))} ms, p99 {number(floor.get('p99'))} ms",
        f"  worker peak RSS      {number(result.get('rss_mb'), ' MB')}",
        f"  state per member     {number(result.get('state_bytes_per_member'), ' bytes')}",
        f"  restart, with store  {number(restart.get('with_store_s'), ' s')} (group join "
        f"{number(with_store.get('join_s'), ' s')}, changelog "
        f"{number(with_store.get('changelog_s'), ' s')} for "
        f"{number(restart.get('with_store_records'))} records)",
        f"  restart, empty disk  {number(restart.get('fresh_disk_s'), ' s')} (group join "
        f"{number(fresh_disk.get('join_s'), ' s')}, changelog "
        f"{number(fresh_disk.get('changelog_s'), ' s')} for "
        f"{number(restart.get('fresh_disk_records'))} of "
        f"{number(restart.get('changelog_records'))} records)",
    ]
    compare = result.get("workers_compare")
    if compare:
        lines.append(
            f"  {compare['workers']} workers          {number(compare.get('pipeline_eps'), ' events/s')}"
            f"  ({number(compare.get('ratio_to_first_pass'))} of {compare.get('one_pass_workers')} "
            f"worker(s) in this run; CPU % of a core: {compare.get('cpu_pct_of_one_core')}; "
            f"its Redis sink served {number(compare.get('members_served'))} of "
            f"{number(compare.get('members_expected'))} members)")
    lines += [f"  WARNING: {warning}" for warning in result.get("warnings", [])]
    profile = result.get("profile")
    if profile:
        lines.append(f"  profile ({profile.get('tool')}): {', '.join(profile.get('reports', []))}")
        for row in profile.get("top_self", [])[:8]:
            lines.append(f"    {row['pct']:5.1f} %  {row['function']}")
    lines.append(f"  logs and reports in {result.get('workdir')}")
    if result.get("error"):
        lines.append(f"FAILED: {result['error']}")
    lines.append(f"  command: {result.get('command')}")
    return "\n".join(lines)
