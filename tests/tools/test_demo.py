"""`tagstream demo` end to end on a private stack: it starts Kafka and Redis, tags a small
generated history, shows a profile served from Redis, serves the guide and operator pages with
the tokens it prints until SIGINT, and then stops everything it started."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from streams.tools.stack import LocalStack
from tests.support import free_port, private_stack_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

PAGES = re.compile(r"guide page\s+(?P<guide_url>\S+)\n\s+sign in as guide (?P<guide>\S+) with the "
                   r"token (?P<guide_token>\S+)\noperator page\s+(?P<operator_url>\S+)\n\s+sign "
                   r"in as operator with the token (?P<operator_token>\S+)")


def proc_start(pid: int) -> int | None:
    """The kernel start time of `pid` (tells a recycled pid apart), None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def descendants(root: int) -> dict[int, int]:
    """Every process below `root`, with its start time."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
    found, frontier = {}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found and (start := proc_start(pid)) is not None:
                found[pid] = start
                frontier.append(pid)
    return found


def get(url: str, token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        return r.status, r.read()


def test_the_demo_serves_both_pages_until_sigint_and_stops_what_it_started(tmp_path) -> None:
    settings = private_stack_settings(tmp_path)
    env = {**os.environ, **settings.to_env(), "TAGSTREAM_API_PORT": str(free_port())}
    out_path, err_path = tmp_path / "demo.out", tmp_path / "demo.err"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        demo = subprocess.Popen(
            [sys.executable, "-m", "streams.ops.cli", "demo", "--members", "60", "--days", "200"],
            env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 480
        while not (pages := PAGES.search(out_path.read_text("utf-8"))):
            assert demo.poll() is None, err_path.read_text("utf-8")[-3000:]
            assert time.monotonic() < deadline, err_path.read_text("utf-8")[-3000:]
            time.sleep(0.5)
        started = descendants(demo.pid)  # Kafka, Redis, worker, Redis sink, API

        assert get(pages["guide_url"])[0] == 200
        assert b"<html" in get(pages["guide_url"])[1].lower()
        assert get(pages["operator_url"])[0] == 200
        base = pages["guide_url"].rstrip("/")
        status, me = get(f"{base}/me", pages["guide_token"])
        assert status == 200 and json.loads(me) == {"guide": pages["guide"], "operator": False}
        status, me = get(f"{base}/me", pages["operator_token"])
        assert status == 200 and json.loads(me)["operator"] is True
        status, members = get(f"{base}/guides/{pages['guide']}/members", pages["guide_token"])
        assert status == 200 and json.loads(members)["members"]  # the guide's served members

        demo.send_signal(signal.SIGINT)
        assert demo.wait(120) == 0, err_path.read_text("utf-8")[-3000:]
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    stderr = err_path.read_text("utf-8")
    steps = re.findall(r"\[demo [\d:]+\] (\d)/6", stderr)
    assert steps == ["1", "2", "3", "4", "5", "6"], stderr[-3000:]
    changes = int(re.search(r"(\d+) tag changes:", stderr).group(1))
    assert changes > 0 and "+ " in out_path.read_text("utf-8")  # printed as a guide reads them
    assert "served from Redis, member" in stderr
    assert len(started) >= 5, started
    assert [pid for pid, start in started.items() if proc_start(pid) == start] == []
    status = LocalStack(settings).status()
    assert not any(broker["alive"] for broker in status["brokers"])
    assert not status["redis"]["alive"]
