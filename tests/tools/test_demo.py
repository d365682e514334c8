"""`tagstream demo` end to end on a private stack: it starts Kafka and Redis, tags a small
generated history, shows a profile served from Redis, and stops what it started."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from streams.tools.stack import LocalStack
from tests.support import private_stack_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def test_the_demo_runs_start_to_finish_and_stops_what_it_started(tmp_path) -> None:
    settings = private_stack_settings(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "demo", "--members", "60", "--days", "200"],
        env={**os.environ, **settings.to_env()}, capture_output=True, text=True, timeout=540,
        stdin=subprocess.DEVNULL)
    steps = re.findall(r"\[demo [\d:]+\] (\d)/5", done.stderr)
    assert done.returncode == 0, done.stderr[-3000:]
    assert steps == ["1", "2", "3", "4", "5"], done.stderr[-3000:]
    changes = int(re.search(r"(\d+) tag changes:", done.stderr).group(1))
    assert changes > 0 and "+ " in done.stdout  # printed as a guide reads them
    assert "served from Redis, member" in done.stderr
    status = LocalStack(settings).status()
    assert not any(broker["alive"] for broker in status["brokers"])
    assert not status["redis"]["alive"]
