"""Profiling the pipeline's workers (py-spy, pyinstrument) and summarising stacks."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping


from streams.tools.bench.children import Child
from streams.tools.bench.common import BenchError, PY_SPY_RATE, _Run


def _require_profiler(name: str) -> None:
    if name == "py-spy" and _py_spy() is None:
        raise BenchError("py-spy is not installed: pip install -e '.[bench]'")
    if name == "pyinstrument":
        try:
            import pyinstrument  # noqa: F401
        except ImportError:
            raise BenchError("pyinstrument is not installed: pip install -e '.[bench]'") from None


def _py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _start_py_spy(run: _Run, workers: list[Child], phase: str) -> list[tuple[Child, Path]]:
    """py-spy attached to each worker, recording collapsed stacks until it is interrupted."""
    spies = []
    for index, worker in enumerate(workers, start=1):
        report = run.workdir / f"profile-{phase}-worker{index}.py-spy.txt"
        spy = Child(f"py-spy of {phase} worker {index}",
                    [_py_spy() or "py-spy", "record", "--pid", str(worker.pid), "--rate",
                     str(PY_SPY_RATE), "--format", "raw", "--output", str(report)],
                    os.environ, run.workdir / f"py-spy-{phase}-worker{index}.log", run.children)
        spies.append((spy, report))
    return spies


async def _stop_py_spy(spies: list[tuple[Child, Path]], covers: str) -> dict[str, Any]:
    reports = []
    for spy, report in spies:
        spy.signal(signal.SIGINT)  # py-spy writes its report on Ctrl-C
        await asyncio.to_thread(spy.wait, 60.0)
        spy.stop()
        reports.append(report)
    profile: dict[str, Any] = {"tool": "py-spy", "reports": [str(r) for r in reports],
                               "covers": covers}
    if reports and reports[0].exists():
        stacks = parse_collapsed(reports[0].read_text(errors="replace").splitlines())
        profile.update(summarize_stacks(stacks))
        summary_path = reports[0].with_suffix(".top.txt")
        summary_path.write_text(format_top(profile))
        profile["summary"] = str(summary_path)
    else:
        profile["error"] = f"py-spy wrote no report; see {spies[0][0].log_path}"
    return profile


def _pyinstrument_reports(run: _Run, workers: list[Child]) -> dict[str, Any]:
    profile: dict[str, Any] = {"tool": "pyinstrument", "reports": [],
                               "covers": "the pipeline workers' whole life, wall time (waits "
                                         "included), main thread only (Faust's consumer thread "
                                         "is not sampled)"}
    for index in range(1, len(workers) + 1):
        session = run.workdir / f"profile-pipeline-worker{index}.pyisession"
        if not session.exists():
            profile["error"] = f"pyinstrument wrote no session; see {workers[index - 1].log_path}"
            continue
        html = session.with_suffix(".html")
        subprocess.run([sys.executable, "-m", "pyinstrument", "--load", str(session), "-r",
                        "html", "-o", str(html)], check=False, capture_output=True)
        profile["reports"].append(str(html))
        if index == 1:
            from pyinstrument.session import Session

            loaded = Session.load(str(session))
            stacks = Counter()
            for frames, seconds in loaded.frame_records:
                stacks[tuple(_pyinstrument_frame(f) for f in frames)] += seconds
            profile.update(summarize_stacks(stacks))
            summary_path = session.with_suffix(".top.txt")
            summary_path.write_text(format_top(profile))
            profile["summary"] = str(summary_path)
    return profile


def _pyinstrument_frame(identifier: str) -> str:
    """pyinstrument's "function\\x00file\\x00line" as py-spy's "function (file:line)"."""
    parts = identifier.split("\x01", 1)[0].split("\x00")  # attributes follow \x01
    if len(parts) >= 3:
        return f"{parts[0]} ({_short_path(parts[1])}:{parts[2]})"
    return parts[0]


def parse_collapsed(lines: Iterable[str]) -> Counter:
    """py-spy's raw format ("frame;frame;frame count", outermost first) -> {stack: samples}."""
    stacks: Counter = Counter()
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = tuple(_shorten_frame(frame) for frame in stack.split(";"))
        stacks[frames] += int(count)
    return stacks


def _shorten_frame(frame: str) -> str:
    match = re.match(r"^(.*) \((.*):(\d+)\)$", frame)
    if match is None:
        return frame
    return f"{match.group(1)} ({_short_path(match.group(2))}:{match.group(3)})"


def _short_path(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def summarize_stacks(stacks: Mapping[tuple[str, ...], float], top: int = 15) -> dict[str, Any]:
    """The functions with the most samples on their own (self) and anywhere on the stack
    (total), as a share of all samples; lines are dropped so a function counts once."""
    total = sum(stacks.values())
    own: Counter = Counter()
    inclusive: Counter = Counter()
    for frames, weight in stacks.items():
        if not frames:
            continue
        names = [re.sub(r":\d+\)$", ")", frame) for frame in frames]
        own[names[-1]] += weight
        for name in set(names):
            inclusive[name] += weight

    def share(counter: Counter) -> list[dict[str, Any]]:
        return [{"function": name, "pct": round(100 * weight / total, 1)}
                for name, weight in counter.most_common(top)] if total else []

    return {"samples": round(total, 3), "top_self": share(own), "top_total": share(inclusive)}


def format_top(profile: Mapping[str, Any]) -> str:
    lines = [f"{profile['tool']}: {profile.get('covers', '')}", "", "self %  function"]
    lines += [f"{row['pct']:6.1f}  {row['function']}" for row in profile.get("top_self", [])]
    lines += ["", "total %  function"]
    lines += [f"{row['pct']:7.1f}  {row['function']}" for row in profile.get("top_total", [])]
    return "\n".join(lines) + "\n"
