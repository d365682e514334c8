"""Several workers on one host, out of the box: `tagstream worker --web-port PORT` is all that
differs between them (same environment, same TAGSTREAM_WEB_PORT and TAGSTREAM_DATA_DIR);
every other per-instance resource (Faust web server, data directory) follows from the port.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import orjson
import pytest

from schemas.events import TOPIC_BY_EVENT_TYPE
from streams.ops.replay import produce_raw
from streams.platform.partitioning import partition_for
from streams.platform.topics import topic_names
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import raw_event
from tests.support import free_ports
from tests.support.kafka import WorkerProcess, change_ids_cover, create_topics, read_topic

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # two worker processes start and join
CST = timezone(timedelta(hours=8))
# aiokafka's line after each rebalance; a non-empty set means this worker got partitions (the
# orders topic's name may have the topic namespace before it).
ASSIGNED = re.compile(r"Setting newly assigned partitions[^\[]*?\| \S*events\.orders +\| \{\d")


class PortWorker(WorkerProcess):
    """`tagstream worker --web-port PORT` with the shared settings' environment unchanged."""

    def __init__(self, settings, log_path: Path, web_port: int) -> None:
        super().__init__(settings, log_path, ("worker", "--web-port", str(web_port)))
        self.web_port = web_port

    def log(self) -> str:
        return "\n".join(self.child.log_lines()) if self.child is not None else ""


def _web_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
            return response.status < 500
    except OSError:
        return False


async def _until(condition, timeout: float, workers: list[PortWorker], what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for worker in workers:
            assert worker.alive(), f"worker {worker.web_port} died:\n{worker.log_tail(60)}"
        if time.monotonic() > deadline:
            tails = "\n\n".join(f"--- {w.web_port}\n{w.log_tail(60)}" for w in workers)
            raise AssertionError(f"timed out waiting for {what}:\n{tails}")
        await asyncio.sleep(0.5)


async def test_two_workers_on_one_host_differ_only_by_web_port(stack, tmp_path):
    port_a, port_b = free_ports(2)
    members = [f"MH{n:03d}" for n in range(40)]
    now = datetime.now(CST).replace(microsecond=0)
    # Orders only: one topic keeps each member's events in order, so the stream must produce
    # exactly the dry run's changes (across topics a worker may see them in another order).
    events = [raw_event("order.paid", (now - timedelta(hours=2, minutes=n)).isoformat(),
                        member=member, amount_fen=700_000)
              for member in members for n in (2, 1)]
    lines = [orjson.dumps(event) for event in events]
    engine = Engine(load_rules(stack.rules_path), stack.allowed_lateness_s)
    expected = {change.change_id for change in dry_run(engine, lines).changes}
    homes = {partition_for(member, stack.partitions) for member in members}
    assert homes == set(range(stack.partitions))  # every partition, so both workers get work

    names = topic_names(stack)
    await create_topics(stack)
    workers = [PortWorker(stack, tmp_path / f"worker-{port}.log", port).start()
               for port in (port_a, port_b)]
    try:
        await _until(lambda: all(ASSIGNED.search(w.log()) for w in workers), 90, workers,
                     "both workers to be assigned partitions")
        for event, line in zip(events, lines):
            await produce_raw(stack.broker_bootstrap,
                              names.actual(TOPIC_BY_EVENT_TYPE[event["event_type"]]),
                              [(event["member_id"].encode(), line)])
        changes = await read_topic(stack.broker_bootstrap, names.tag_changes, timeout=120,
                                   until=change_ids_cover(expected))
        found = {orjson.loads(record.value)["change_id"] for record in changes}
        assert expected <= found, f"{len(expected - found)} tag changes missing"

        await _until(lambda: all(_web_answers(w.web_port) for w in workers), 30, workers,
                     "both web servers")
        for worker in workers:
            assert worker.alive(), worker.log_tail(60)
            assert ASSIGNED.search(worker.log()), worker.log_tail(60)
            assert "Traceback" not in worker.log(), worker.log_tail(80)
            assert (stack.data_dir / f"worker-{worker.web_port}").is_dir()
    finally:
        for worker in workers:
            worker.stop()
    for worker in workers:
        assert worker.returncode is not None
