"""The workers' pauses over a phase (and the bench's own): their `/metrics` read before and
after it. Also the time each worker spent in the member agent's own code.

Each worker exports how long its garbage collections took and how late its event loop
woke (streams/worker/pauses.py); the difference of two readings is what happened in the
phase, which is what a latency tail in that phase is made of. The bench, which stamps the
latency phase's sends and receipts, runs the same monitor and reads its own registry."""

from __future__ import annotations

from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from streams.platform.metrics import render_metrics
from streams.tools.bench.common import BenchError

GC = "tagstream_worker_gc_pause_seconds"
LOOP_LAG = "tagstream_worker_loop_lag_seconds"
AGENT = "tagstream_worker_agent_seconds"

# (metric, labels without "le") -> {"le" bound or "sum"/"count": value}
Reading = dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, float]]


async def read_pauses(web_ports: list[int]) -> list[Reading]:
    """Each worker's pause histograms now."""
    return [parse_pauses(text) for text in await _expositions(web_ports)]


async def read_agent_seconds(web_ports: list[int]) -> list[dict[str, float]]:
    """Each worker's time in the member agent's own code so far, by part (handle, seal)."""
    return [parse_agent_seconds(text) for text in await _expositions(web_ports)]


def parse_agent_seconds(exposition: str) -> dict[str, float]:
    return {sample.labels["part"]: sample.value
            for family in text_string_to_metric_families(exposition) if family.name == AGENT
            for sample in family.samples if sample.name == f"{AGENT}_total"}


async def _expositions(web_ports: list[int]) -> list[str]:
    """Each worker's /metrics page now."""
    texts = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        for port in web_ports:
            url = f"http://127.0.0.1:{port}/metrics"
            try:
                async with http.get(url) as response:
                    texts.append(await response.text())
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise BenchError(f"could not read the worker's metrics at {url}: {exc}") from exc
    return texts


def read_own_pauses() -> Reading:
    """This process's pause histograms now (a PauseMonitor started here fills them)."""
    return parse_pauses(render_metrics()[0].decode())


def parse_pauses(exposition: str) -> Reading:
    reading: Reading = {}
    for family in text_string_to_metric_families(exposition):
        if family.name not in (GC, LOOP_LAG):
            continue
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "le"}
            series = reading.setdefault((family.name, tuple(sorted(labels.items()))), {})
            if sample.name.endswith("_bucket"):
                series[sample.labels["le"]] = sample.value
            elif sample.name.endswith(("_sum", "_count")):
                series[sample.name.rsplit("_", 1)[1]] = sample.value
    return reading


def pauses_between(before: Reading, after: Reading) -> dict[str, Any]:
    """What one worker's histograms gained between two readings: per GC generation the
    collections, their seconds and how many took over 50 ms; for the loop, how often a
    wake came over 50 and over 100 ms late, and the bucket bound of the latest one."""
    def gained(key: tuple[str, tuple[tuple[str, str], ...]]) -> dict[str, float]:
        old = before.get(key, {})
        return {k: v - old.get(k, 0.0) for k, v in after.get(key, {}).items()}

    def over(series: dict[str, float], bound: str) -> int:
        return round(series.get("+Inf", 0.0) - series.get(bound, 0.0))

    def longest(series: dict[str, float]) -> str | None:
        """The smallest bucket bound holding every sample: the longest is at most this."""
        total = series.get("+Inf", 0.0)
        if not total:
            return None
        bounds = sorted((float(le), le) for le in series if le not in ("sum", "count"))
        return next(le for value, le in bounds if series[le] >= total)

    collections = {}
    for key in sorted(after):
        name, labels = key
        if name != GC:
            continue
        series = gained(key)
        if series.get("count"):
            collections[dict(labels)["generation"]] = {
                "count": round(series["count"]), "seconds": round(series.get("sum", 0.0), 3),
                "over_50ms": over(series, "0.05"), "longest_at_most_s": longest(series)}
    lag = gained((LOOP_LAG, ()))
    return {"gc": collections,
            "loop_lag": {"wakes": round(lag.get("count", 0.0)),
                         "over_50ms": over(lag, "0.05"), "over_100ms": over(lag, "0.1"),
                         "longest_at_most_s": longest(lag)}}


def describe_pauses(name: str, paused: dict[str, Any]) -> str:
    """One line of `pauses_between`'s result for the bench's progress output."""
    lag = paused["loop_lag"]
    collections = ", ".join(f"gen {generation} x{c['count']} ({c['seconds']} s)"
                            for generation, c in paused["gc"].items())
    return (f"{name}'s loop woke over 50 ms late {lag['over_50ms']} times (over 100 ms "
            f"{lag['over_100ms']}); collections: {collections or 'none'}")
