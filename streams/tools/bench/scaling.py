"""The last phase with `--compare-workers N`: the pipeline again with N workers, in the same
run, against the one measured first.

The second pass reads the same event topics from their start under a new app id (its own
consumer group, changelog and data dirs), writes to the same output topics (only changes made
after it starts are counted) and is served by the Redis sink of the first pass, as the first
was. On 2 cores this is no scaling claim: the CPU of every process is reported with it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from streams.tools.bench.common import _Run
from streams.tools.bench.pipeline import Expected, _pipeline


async def compare_workers(run: _Run, expected: Expected, workers: int) -> None:
    settings, options, ports = run.settings, run.options, run.worker_ports
    run.settings = dataclasses.replace(settings, app_id=f"{settings.app_id}-x{workers}")
    run.options = dataclasses.replace(options, workers=workers, profile=None)
    run.say(f"compare: the pipeline again with {workers} worker(s), app id "
            f"{run.settings.app_id}")
    measured: dict[str, Any] = {}
    try:
        await _pipeline(run, expected, start_sink=False, out=measured)
    finally:
        run.settings, run.options, run.worker_ports = settings, options, ports
    first_eps = run.result.get("pipeline_eps")
    details = measured["details"]["pipeline"]
    run.result["workers_compare"] = {
        "workers": workers,
        "pipeline_eps": measured["pipeline_eps"],
        "one_pass_workers": options.workers,
        "one_pass_eps": first_eps,
        "ratio_to_first_pass": round(measured["pipeline_eps"] / first_eps, 3)
        if first_eps else None,
        "matches_dry_run": measured["matches_dry_run"],
        "cpu_pct_of_one_core": details["cpu_pct_of_one_core"],
        "first_pass_cpu_pct_of_one_core":
            run.result["details"].get("pipeline", {}).get("cpu_pct_of_one_core"),
        "rss_mb_per_worker": details["rss_mb_per_worker"],
        "seconds": details["seconds"],
    }
    run.result["details"]["pipeline_compare"] = details
