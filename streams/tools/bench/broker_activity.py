"""What the bench's Kafka nodes did while the latency phase was slow: their JVMs' collection
pauses (each node's gc.log) and the lines of their own logs (warnings, the log cleaner's
runs). A second whose orders were late while every worker's loop was on time is told apart
by these: a stall in the broker, not in tagstream."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

# "[2026-12-05T17:34:17.277+0000][0.450s] GC(0) Pause Young (Normal) (G1 Evacuation Pause)
#  6M->3M(64M) 2.967ms": -Xlog's time decorator stamps the end of the pause.
_GC_PAUSE = re.compile(r"^\[(?P<time>[^\]]+)\](?:\[[^\]]*\])* GC\(\d+\) (?P<kind>Pause .+?) "
                       r"\d+[KMG]->\d+[KMG]\(\d+[KMG]\) (?P<ms>[\d.]+)ms$")
# "[2026-12-05 17:34:17,277 +0000] INFO ..." (streams/tools/kafka_server/log4j2.properties)
_LOG_LINE = re.compile(r"^\[(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [+-]\d{4})\] (?P<rest>.*)$")
# The summary the log cleaner logs at the end of each pass (its continuation lines joined).
_CLEANER_PASS = re.compile(r"cleaned log \S+ .*? (?P<mb>[\d,.]+) MB of log processed "
                           r"in (?P<seconds>[\d,.]+) seconds")
_MAX_LINES = 10  # per broker and window: the first few say what it was doing
_MAX_TEXT = 600  # characters of one entry, its continuation lines included


@dataclass(frozen=True)
class BrokerPause:
    broker: str  # "broker-<node id>"
    ended_at: float  # epoch s
    seconds: float
    kind: str  # "Pause Young (Normal) (G1 Evacuation Pause)"

    @property
    def started_at(self) -> float:
        return self.ended_at - self.seconds


def read_gc_pauses(broker: str, lines: Iterable[str]) -> list[BrokerPause]:
    pauses = []
    for line in lines:
        found = _GC_PAUSE.match(line.rstrip())
        if found is not None:
            ended = datetime.strptime(found["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            pauses.append(BrokerPause(broker, ended, float(found["ms"]) / 1000, found["kind"]))
    return pauses


def read_log_lines(lines: Iterable[str]) -> list[tuple[float, str]]:
    """(epoch s, text) of each stamped line, with the lines that continue it (the cleaner's
    summary, a stack trace) joined on, up to _MAX_TEXT characters."""
    stamped: list[tuple[float, str]] = []
    for line in lines:
        found = _LOG_LINE.match(line.rstrip())
        if found is not None:
            at = datetime.strptime(found["time"], "%Y-%m-%d %H:%M:%S,%f %z").timestamp()
            stamped.append((at, found["rest"]))
        elif stamped and line.strip():
            at, text = stamped[-1]
            stamped[-1] = (at, f"{text} {line.strip()}"[:_MAX_TEXT])
    return stamped


class BrokerActivity:
    """The nodes' pauses and log lines, read once after the phase."""

    def __init__(self, pauses: list[BrokerPause], lines: dict[str, list[tuple[float, str]]]
                 ) -> None:
        self.pauses = pauses
        self.lines = lines

    @classmethod
    def read(cls, logs: dict[str, tuple[Path, Path]]) -> "BrokerActivity":
        """`logs`: broker name -> (its gc.log, its own log); a missing file reads as empty."""
        pauses: list[BrokerPause] = []
        lines: dict[str, list[tuple[float, str]]] = {}
        for broker, (gc_log, own_log) in logs.items():
            pauses += read_gc_pauses(broker, _lines(gc_log))
            lines[broker] = read_log_lines(_lines(own_log))
        return cls(pauses, lines)

    def between(self, start: float, end: float) -> dict[str, Any]:
        """The pauses that overlap [start, end) and the log lines stamped inside it."""
        pauses = self._overlapping(start, end)
        inside = {broker: [text for at, text in stamped if start <= at < end]
                  for broker, stamped in self.lines.items()}
        return {
            "gc_pauses": [{"broker": p.broker, "ms": round(p.seconds * 1000, 1),
                           "ended_s": round(p.ended_at - start, 3), "kind": p.kind}
                          for p in pauses],
            "gc_pause_ms": round(sum(p.seconds for p in pauses) * 1000, 1),
            "log": {broker: texts[:_MAX_LINES] for broker, texts in inside.items() if texts},
        }

    def gc_summary(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Per broker, its collection pauses overlapping [start, end): how many, how long in
        all, the longest (ms)."""
        summary: dict[str, dict[str, float]] = {}
        for pause in self._overlapping(start, end):
            entry = summary.setdefault(pause.broker, {"pauses": 0, "ms": 0.0, "longest_ms": 0.0})
            entry["pauses"] += 1
            entry["ms"] = round(entry["ms"] + pause.seconds * 1000, 1)
            entry["longest_ms"] = max(entry["longest_ms"], round(pause.seconds * 1000, 1))
        return summary

    def cleaner_summary(self, start: float, end: float) -> dict[str, dict[str, float]]:
        """Per broker, its log cleaner's passes that overlap [start, end): how many, the MB they
        processed and their seconds (whole passes, as logged at their end)."""
        summary: dict[str, dict[str, float]] = {}
        for broker, stamped in self.lines.items():
            for ended, text in stamped:
                found = _CLEANER_PASS.search(text)
                if found is None:
                    continue
                seconds = float(found["seconds"].replace(",", ""))
                if not (ended - seconds < end and ended >= start):
                    continue
                entry = summary.setdefault(broker, {"passes": 0, "mb": 0.0, "seconds": 0.0})
                entry["passes"] += 1
                entry["mb"] = round(entry["mb"] + float(found["mb"].replace(",", "")), 1)
                entry["seconds"] = round(entry["seconds"] + seconds, 1)
        return summary

    def _overlapping(self, start: float, end: float) -> list[BrokerPause]:
        return [p for p in self.pauses if p.started_at < end and p.ended_at > start]


def stack_activity(stack: Any) -> BrokerActivity | None:
    """The private stack's nodes (a LocalStack), None without one (`--use-stack`)."""
    layout = stack.layout() if stack is not None else None
    if layout is None:
        return None
    names = {f"broker-{node.node_id}": node for node in layout.nodes}
    return BrokerActivity.read({name: (node.gc_log_path, stack.log_path(name))
                                for name, node in names.items()})


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return []
