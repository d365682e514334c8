"""Processes the tools and the tests start: one runner for them all.

Two kinds. A *detached* process (`start_process`) outlives its starter: `tagstream stack up`
returns while Kafka and Redis run on. It is recorded (pid, exact argv, kernel start time) and
stopped later by that record only, once `/proc` shows the pid still runs the recorded argv
since the recorded time, so a recycled pid is never signalled. A *child* (`ChildProcess`) is
owned by the process that started it (the bench's workers, the demo's, a test's): it stays
unreaped until stopped, so its pid cannot be reused meanwhile. Nothing is ever killed by name.
Linux only: process identity is read from `/proc` and signals go through pidfds.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator, Mapping

from schemas.errors import TagstreamError
from streams.platform.settings import Settings

ANSI_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class ProcessError(TagstreamError):
    """A process record cannot be read; the message says what to do."""


# --- Processes: start one, recognise it later by its record, stop it by pid --------------------


@dataclass(frozen=True)
class ProcessRecord:
    """What identifies a process we started: enough to never mistake a recycled pid for it."""

    pid: int
    argv: tuple[str, ...]
    started_at: str
    proc_start: int  # field 22 of /proc/<pid>/stat: clock ticks since boot, fixed per process
    log: str
    log_offset: int  # where this run's output starts in `log` (logs are appended, never truncated)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "ProcessRecord":
        data = json.loads(text)
        data["argv"] = tuple(data["argv"])
        return cls(**data)


def start_process(argv: list[str] | tuple[str, ...], log_path: Path) -> ProcessRecord:
    """Start `argv` in its own session, stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        offset = os.fstat(log_fd).st_size
        # posix_spawn rather than Popen: the process outlives this one (`tagstream stack up`
        # returns), so there is no Popen object to keep; it inherits our environment unchanged.
        pid = os.posix_spawn(
            argv[0], list(argv), os.environ,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, log_fd, 1),
                (os.POSIX_SPAWN_DUP2, log_fd, 2),
            ],
            setsid=True,
        )
    finally:
        os.close(log_fd)
    _wait_exec(pid, tuple(argv))
    return ProcessRecord(
        pid=pid, argv=tuple(argv), started_at=datetime.now(timezone.utc).isoformat(),
        proc_start=_proc_stat(pid)[1], log=str(log_path), log_offset=offset,
    )


def is_running(record: ProcessRecord) -> bool:
    """True while `record.pid` is still the process we started (not exited, not a reused pid)."""
    return (_proc_cmdline(record.pid) == record.argv
            and _proc_stat(record.pid)[1] == record.proc_start)


def stop_process(record: ProcessRecord, timeout: float = 10.0) -> bool:
    """SIGTERM the recorded process, SIGKILL it after `timeout`; False if not ours to stop."""
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return False
    try:
        # The pidfd pins the process the pid names now; if that is ours, signals through the
        # pidfd can only reach it, even if it exits and the pid is reused meanwhile.
        if not is_running(record):
            return False
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGTERM)
            if not _wait_exit(pidfd, timeout):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                _wait_exit(pidfd, 5.0)
        except ProcessLookupError:
            pass
        return True
    finally:
        os.close(pidfd)
        reap(record.pid)


def read_record(path: Path) -> ProcessRecord | None:
    try:
        return ProcessRecord.from_json(path.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, KeyError) as exc:
        raise ProcessError(f"{path} is not a process record ({exc}); "
                         "stop that process yourself, then delete the file") from None


def write_record(path: Path, record: ProcessRecord) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(record.to_json())
    tmp.replace(path)


def log_tail(record: ProcessRecord, lines: int = 20) -> str:
    """The last `lines` lines this run wrote to its log, without terminal colour codes."""
    try:
        with open(record.log, "rb") as f:
            f.seek(record.log_offset)
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(cannot read {record.log}: {exc})"
    text = ANSI_COLOUR.sub("", text)
    return "\n".join(text.rstrip().splitlines()[-lines:]) or "(log is empty)"


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
# Below the kernel's ephemeral range; a port here is never handed to an outgoing connection's
# source or to a bind on port 0, so a port chosen now is still free when its server binds it.
LOWEST_CHOSEN_PORT = 10000


def free_ports(count: int, *, rng: random.Random | None = None,
               ephemeral_range: Path = EPHEMERAL_RANGE) -> list[int]:
    """`count` distinct loopback ports nothing listened on a moment ago, chosen below the
    ephemeral range (the probe sockets stay bound until all are chosen, so no port is handed
    out twice). A port from bind(0) would lie inside that range, where any client's next
    connection may take it before the server that was meant to have it starts."""
    rng = rng or random.SystemRandom()
    first_ephemeral = int(ephemeral_range.read_text().split()[0])
    candidates: list[int] = list(range(LOWEST_CHOSEN_PORT, first_ephemeral))
    rng.shuffle(candidates)
    # A machine whose ephemeral range starts this low leaves nothing below it: let bind(0) choose.
    probes: list[socket.socket] = []
    try:
        for port in candidates or [0] * count:
            if len(probes) == count:
                break
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                probe.close()
                continue
            probes.append(probe)
        if len(probes) < count:
            raise ProcessError(f"only {len(probes)} of {count} loopback ports below the "
                               f"ephemeral range ({first_ephemeral}) are free; stop some servers")
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def port_taken(host: str, port: int) -> bool:
    """True if something on this machine already listens on host:port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # SO_REUSEADDR ignores sockets lingering in TIME_WAIT; Linux still refuses a live listener.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _proc_cmdline(pid: int) -> tuple[str, ...] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    if not raw:  # a zombie: exited, not yet reaped
        return None
    return tuple(os.fsdecode(arg) for arg in raw.removesuffix(b"\0").split(b"\0"))


def _proc_stat(pid: int) -> tuple[str, int]:
    """(state, start time) from /proc/<pid>/stat; state "" if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    after_name = stat[stat.rindex(")") + 2:].split()
    return after_name[0], int(after_name[19])


def _wait_exec(pid: int, argv: tuple[str, ...], timeout: float = 5.0) -> None:
    """Wait until /proc shows `pid` running `argv`, or the process has already exited.

    posix_spawn returns while the kernel is still setting up the new program, and /proc shows
    an empty command line until it is done; the record must not be checked against that.
    """
    deadline = time.monotonic() + timeout
    while (_proc_cmdline(pid) != argv and _proc_stat(pid)[0] not in ("", "Z", "X")
           and time.monotonic() < deadline):
        time.sleep(0.001)


def _wait_exit(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0, int(timeout * 1000))))


def reap(pid: int) -> None:
    """Collect the exit status if `pid` is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --- Children: owned by this process, stopped by it ---------------------------------------------


def tagstream_command(settings: Settings, *command: str) -> tuple[list[str], dict[str, str]]:
    """argv and environment of `tagstream <command>` run with `settings`, in this interpreter."""
    env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
    return [sys.executable, "-m", "streams.ops.cli", *command], env


@contextmanager
def uninterrupted_stopping(say: Callable[[str], None], what: str) -> Iterator[None]:
    """While the block stops `what`, Ctrl-C and SIGTERM only say so: an interrupt cutting the
    stopping short would leave processes running with nobody left to stop them. A signal the
    process ignores (a shell's background job ignores SIGINT) stays ignored. The previous
    handlers are back afterwards."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(sig, lambda signum, frame: say(f"still stopping {what}"))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it if its starter dies without stopping it (kill -9)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class ChildProcess:
    """A child with its own log file (appended to; this run's output starts at `offset`)."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, *,
                 own_session: bool = False) -> None:
        self.name = name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            self.offset = log.tell()
            self.started = time.time()
            # An own session keeps a Ctrl-C at the terminal from reaching the child directly:
            # the starter then stops its children in order. Such a child also dies with it.
            self.process = subprocess.Popen(
                argv, env=dict(env), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=own_session,
                preexec_fn=_die_with_parent if own_session else None)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

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
        """What this run logged so far, without terminal colour codes."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self.offset)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return []
        return ANSI_COLOUR.sub("", text).splitlines()

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_lines()[-lines:]) or "(log is empty)"

    def signal(self, sig: int) -> None:
        if self.alive():
            self.process.send_signal(sig)  # unreaped until waited for: the pid is still ours

    def kill(self) -> None:
        """SIGKILL: no shutdown hook runs (a crash); returns once it has exited."""
        if self.alive():
            self.process.kill()
        self.process.wait()

    def wait(self, timeout: float) -> None:
        """Wait up to `timeout` for the process to exit by itself."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after `timeout`; returns once it has exited."""
        if not self.alive():
            return
        self.process.terminate()
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
