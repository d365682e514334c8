"""Where the machine's CPU went, per process and for the machine as a whole, second by second.

A latency tail on the bench's 2-core machine comes in bursts of a few seconds, and a phase's
average CPU per process cannot say what was busy in those seconds. The timeline records,
each second, the CPU each watched process used and how the machine's time divided: busy,
idle, and steal (time the hypervisor ran another guest instead of this one, which no
process here can show). A slow second can then be matched with what ran in it.

Figures are % of one core, as the bench's other CPU figures: a machine of 2 cores has 200.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple

from streams.tools.bench.common import _quantile, _round, cpu_seconds

SAMPLE_INTERVAL_S = 1.0
SLOW_SECOND_P99_MS = 100.0  # issue 14's latency target: a second above it is reported


class MachineTimes(NamedTuple):
    """Seconds of CPU time since boot, summed over every core (/proc/stat's first line)."""

    busy: float
    idle: float  # idle and waiting for I/O
    steal: float


def parse_machine_times(proc_stat: str, ticks_per_second: float) -> MachineTimes:
    """/proc/stat's aggregate "cpu" line: user nice system idle iowait irq softirq steal (the
    guest columns are already counted in user and nice)."""
    for line in proc_stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            user, nice, system, idle, iowait, irq, softirq, steal = (
                int(value) / ticks_per_second for value in (fields[1:9] + ["0"] * 8)[:8])
            return MachineTimes(busy=user + nice + system + irq + softirq,
                                idle=idle + iowait, steal=steal)
    raise ValueError("no aggregate cpu line in /proc/stat")


def machine_times() -> MachineTimes:
    return parse_machine_times(Path("/proc/stat").read_text(), os.sysconf("SC_CLK_TCK"))


def machine_pct(before: MachineTimes, after: MachineTimes, wall_s: float) -> dict[str, float]:
    """How the machine's cores spent `wall_s` seconds, as % of one core."""
    if wall_s <= 0:
        return {"busy": 0.0, "idle": 0.0, "steal": 0.0}
    return {name: round(100 * (getattr(after, name) - getattr(before, name)) / wall_s, 1)
            for name in MachineTimes._fields}


class Second(NamedTuple):
    at: float  # wall clock (epoch seconds) at the start of the interval
    seconds: float  # its length
    processes: dict[str, float]  # name -> % of one core
    machine: dict[str, float]  # busy / idle / steal, % of one core


class CpuTimeline:
    """Samples the watched processes and the machine every `interval_s` between `start` and
    `stop`. The readers and clocks are parameters so that tests drive it without /proc."""

    def __init__(self, pids: Mapping[str, int], interval_s: float = SAMPLE_INTERVAL_S, *,
                 read_process: Callable[[int], float] = cpu_seconds,
                 read_machine: Callable[[], MachineTimes] = machine_times,
                 wall_clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.pids = dict(pids)
        self.interval_s = interval_s
        self._read_process = read_process
        self._read_machine = read_machine
        self._wall_clock = wall_clock
        self._sleep = sleep
        self.seconds: list[Second] = []
        self._task: asyncio.Task[None] | None = None
        self._first: tuple[float, dict[str, float], MachineTimes] | None = None
        self._last: tuple[float, dict[str, float], MachineTimes] | None = None

    def start(self) -> None:
        self._first = self._last = self._reading()
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> list[Second]:
        """Stop sampling; the last, partial interval is recorded too."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
            self.sample()
        return self.seconds

    def sample(self) -> None:
        """Record the interval since the previous reading."""
        if self._last is None:
            raise RuntimeError("CpuTimeline.sample() before start()")
        then = self._last
        self._last = self._reading()
        interval = _between(then, self._last)
        if interval is not None:
            self.seconds.append(interval)

    def whole(self) -> Second | None:
        """From `start` to the last reading (the one `stop` took) as one interval."""
        if self._first is None or self._last is None:
            return None
        return _between(self._first, self._last)

    def _reading(self) -> tuple[float, dict[str, float], MachineTimes]:
        return (self._wall_clock(),
                {name: self._read_process(pid) for name, pid in self.pids.items()},
                self._read_machine())

    async def _run(self) -> None:
        while True:
            await self._sleep(self.interval_s)
            self.sample()


def _between(then: tuple[float, dict[str, float], MachineTimes],
             now: tuple[float, dict[str, float], MachineTimes]) -> Second | None:
    (at, processes_then, machine_then), (until, processes_now, machine_now) = then, now
    wall_s = until - at
    if wall_s <= 0:
        return None
    return Second(
        at=at, seconds=round(wall_s, 3),
        processes={name: round(100 * (processes_now[name] - processes_then[name]) / wall_s, 1)
                   for name in processes_then},
        machine=machine_pct(machine_then, machine_now, wall_s))


def write_timeline(seconds: Iterable[Second], names: list[str], path: Path) -> None:
    """One row per interval: when (epoch s), how long, each process, then the machine."""
    header = ["at", "seconds", *names, "machine_busy", "machine_idle", "machine_steal"]
    rows = [",".join(header)]
    for second in seconds:
        rows.append(",".join(str(value) for value in (
            f"{second.at:.3f}", second.seconds, *(second.processes[name] for name in names),
            second.machine["busy"], second.machine["idle"], second.machine["steal"])))
    path.write_text("\n".join(rows) + "\n")


def slow_seconds(orders: Iterable[tuple[float, float]], started_at: float,
                 timeline: list[Second], threshold_ms: float = SLOW_SECOND_P99_MS,
                 brokers: Callable[[float, float], dict[str, Any]] | None = None
                 ) -> list[dict[str, Any]]:
    """The whole seconds of a latency phase whose orders' p99 exceeded `threshold_ms`, each
    with the CPU of the timeline interval it overlaps most and, given `brokers`
    (BrokerActivity.between), what the brokers did from the second's start until its
    slowest order arrived. `orders` are (sent, ms after `started_at` (epoch s); latency,
    ms)."""
    by_second: dict[int, list[float]] = {}
    for sent_ms, latency_ms in orders:
        by_second.setdefault(int(sent_ms // 1000), []).append(latency_ms)
    slow = []
    for second, latencies in sorted(by_second.items()):
        ordered = sorted(latencies)
        p99 = _quantile(ordered, 0.99)
        if p99 <= threshold_ms:
            continue
        start = started_at + second
        interval = max(timeline, key=lambda s: _overlap(s, start, start + 1.0), default=None)
        slow.append({
            "second": second, "orders": len(ordered), "p50_ms": _round(_quantile(ordered, 0.5)),
            "p99_ms": _round(p99),
            "cpu_pct_of_one_core": None if interval is None else interval.processes,
            "machine_pct_of_one_core": None if interval is None else interval.machine,
            **({} if brokers is None
               else {"brokers": brokers(start, start + 1.0 + ordered[-1] / 1000)})})
    return slow


def _overlap(interval: Second, start: float, end: float) -> float:
    return max(0.0, min(interval.at + interval.seconds, end) - max(interval.at, start))
