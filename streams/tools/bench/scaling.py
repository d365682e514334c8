"""The last phase with `--compare-workers N`: the pipeline again with N workers, in the same
run, against the one measured first.

The second pass reads the same event topics from their start under a new app id (its own
consumer group, changelog and data dirs), writes to the same output topics (only changes made
after it starts are counted) and is served by the Redis sink of the first pass, as the first
was. On 2 cores this is no scaling claim: the CPU of every process is reported with it.
"""

from __future__ import annotations

import copy
import dataclasses

from streams.tools.bench.common import _Run
from streams.tools.bench.pipeline import Expected, _pipeline

_PASS_KEYS = ("pipeline_eps", "ratio", "rss_mb", "matches_dry_run", "profile")


async def compare_workers(run: _Run, expected: Expected, workers: int) -> None:
    first = {key: run.result[key] for key in _PASS_KEYS if key in run.result}
    first_details = copy.deepcopy(run.result["details"].get("pipeline", {}))
    settings, options, ports = run.settings, run.options, run.worker_ports
    run.settings = dataclasses.replace(settings, app_id=f"{settings.app_id}-x{workers}")
    run.options = dataclasses.replace(options, workers=workers, profile=None)
    run.say(f"compare: the pipeline again with {workers} worker(s), app id "
            f"{run.settings.app_id}")
    try:
        await _pipeline(run, expected, start_sink=False)
        details = run.result["details"]["pipeline"]
        eps = run.result["pipeline_eps"]
        run.result["workers_compare"] = {
            "workers": workers,
            "pipeline_eps": eps,
            "one_pass_workers": options.workers,
            "one_pass_eps": first.get("pipeline_eps"),
            "ratio_to_first_pass": round(eps / first["pipeline_eps"], 3)
            if first.get("pipeline_eps") else None,
            "matches_dry_run": run.result["matches_dry_run"],
            "cpu_pct_of_one_core": details["cpu_pct_of_one_core"],
            "first_pass_cpu_pct_of_one_core": first_details.get("cpu_pct_of_one_core"),
            "rss_mb_per_worker": details["rss_mb_per_worker"],
            "seconds": details["seconds"],
        }
        run.result["details"]["pipeline_compare"] = details
    finally:
        for key in _PASS_KEYS:
            if key in first:
                run.result[key] = first[key]
            else:
                run.result.pop(key, None)
        run.result["details"]["pipeline"] = first_details
        run.settings, run.options, run.worker_ports = settings, options, ports
