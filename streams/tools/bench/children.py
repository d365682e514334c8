"""The bench's child processes: started with their own log, stopped by their pid."""

from __future__ import annotations

import asyncio
import ctypes
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path
from typing import Mapping


from streams.tools.bench.common import BenchError, _ANSI, _LOG_TIME
from streams.tools.stack import stop_child


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if the bench dies without stopping it (kill -9)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """One process the bench started: its log file, its peak memory, stopping it by pid."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path,
                 registry: list["Child"], web_port: int | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.web_port = web_port  # a worker's: its data dir is <data dir>/worker-<web port>
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.offset = log.tell()
            self.started = time.time()
            # Own session: a Ctrl-C at the terminal reaches only the bench, which then stops
            # its children in order.
            self.process = subprocess.Popen(
                argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)
        registry.append(self)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def peak_rss_mb(self) -> float | None:
        """VmHWM: the most resident memory the process has had, while it still runs."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
        return None

    def log_lines(self) -> list[str]:
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return _ANSI.sub("", text).splitlines()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines()[-lines:]) or "(log is empty)"

    def first_line_time(self, marker: str) -> float | None:
        """The time Faust logged the first line containing `marker` (epoch seconds)."""
        for line in self.log_lines():
            if marker in line:
                return _log_time(line)
        return None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.process.send_signal(sig)  # Popen keeps its child unreaped: the pid is ours

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` for the process to exit by itself."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; waits for the exit."""
        stop_child(self.process, timeout)


def _log_time(line: str) -> float | None:
    match = _LOG_TIME.match(line)
    if match is None:
        return None
    # Faust logs local time with milliseconds; the bench runs in the same time zone.
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


async def wait_for_log(child: Child, marker: str, timeout: float) -> float:
    """When `child` logged `marker` (waiting for it); fails if it exits or takes too long."""
    deadline = time.monotonic() + timeout
    while True:
        at = child.first_line_time(marker)
        if at is not None:
            return at
        if not child.alive():
            raise BenchError(f"{child.name} exited with code {child.process.returncode} before "
                             f"logging {marker.strip(' ]:')!r}; its log ({child.log_path}):\n"
                             f"{child.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not log {marker.strip(' ]:')!r} within "
                             f"{timeout:.0f} s; its log ({child.log_path}):\n{child.log_tail()}")
        await asyncio.sleep(0.05)
