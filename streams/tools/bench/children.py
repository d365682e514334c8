"""The bench's child processes: the common runner, plus when Faust logged a line."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from pathlib import Path
from typing import Mapping

from streams.tools.bench.common import BenchError, _LOG_TIME
from streams.tools.processes import ChildProcess


class Child(ChildProcess):
    """One process the bench started: in `registry` until stopped, in its own session."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path,
                 registry: list["Child"], web_port: int | None = None) -> None:
        super().__init__(name, argv, env, log_path, own_session=True)
        self.web_port = web_port  # a worker's: its data dir is <data dir>/worker-<web port>
        registry.append(self)

    def first_line_time(self, marker: str) -> float | None:
        """The time Faust logged the first line containing `marker` (epoch seconds)."""
        for line in self.log_lines():
            if marker in line:
                return _log_time(line)
        return None


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
            raise BenchError(f"{child.name} exited with code {child.returncode} before "
                             f"logging {marker.strip(' ]:')!r}; its log ({child.log_path}):\n"
                             f"{child.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"{child.name} did not log {marker.strip(' ]:')!r} within "
                             f"{timeout:.0f} s; its log ({child.log_path}):\n{child.log_tail()}")
        await asyncio.sleep(0.05)
