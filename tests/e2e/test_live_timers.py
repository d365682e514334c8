"""Absence rules fire from timers at their deadline in live (wall-clock) mode, with no event.

A rule file with a 3-second absence rule; an order happens now; the tag must be added by the
worker on its own once 3 seconds have passed. The delay between the deadline and the change
reaching tags.changes is printed (measured, not asserted: the machine is shared and noisy).
"""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.platform.partitioning import partition_for
from streams.platform.topics import topic_names
from tests.factories import raw_event
from tests.support.kafka import create_topics, read_topic, running_worker, values

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # waits for a deadline in real time

RULES = """\
version: "live-timers.1"
tags:
  - id: quiet_3s
    name_zh: 三秒未购
    family: operational
    when: orders.count >= 1 and seconds_since(orders.last_at) >= 3
"""


async def test_absence_rule_fires_at_its_deadline_with_no_event(stack, tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    settings = replace(stack, rules_path=rules)
    names = topic_names(settings)
    await create_topics(settings)
    delays = []
    with running_worker(settings, tmp_path) as worker:
        producer = AIOKafkaProducer(bootstrap_servers=settings.broker_bootstrap, acks="all")
        await producer.start()
        try:
            # wait until the worker owns its partitions: a first member's tag comes out
            for n in range(6):
                member = f"M-live-{n}"
                at = datetime.now(timezone(timedelta(hours=8))).replace(microsecond=0)
                await producer.send_and_wait(
                    names.orders, orjson.dumps(raw_event("order.paid", at.isoformat(),
                                                         member=member, amount_fen=100)),
                    key=member.encode(), partition=partition_for(member, settings.partitions))
                deadline = at.timestamp() + 3
                records = await read_topic(
                    settings.broker_bootstrap, names.tag_changes, worker=worker, timeout=90,
                    until=lambda new, m=member: any(
                        orjson.loads(r.value)["member_id"] == m for r in new))
                arrived = time.time()
                [change] = [c for c in values(records) if c["member_id"] == member]
                assert change["tag"] == "quiet_3s" and change["op"] == "added"
                assert change["cause"] == {"timer": f"quiet_3s@{(at + timedelta(seconds=3)).isoformat()}"}
                if n:  # the first one waited for the group to form
                    delays.append(arrived - deadline)
        finally:
            await producer.stop()
        # the worker's Prometheus endpoint counts what it did
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{settings.web_port}/metrics") as response:
                assert response.status == 200
                exposition = await response.text()
    assert f'tagstream_events_processed_total{{topic="{names.orders}"}} 6.0' in exposition
    assert 'tagstream_tag_changes_total{op="added",tag="quiet_3s"} 6.0' in exposition
    assert "tagstream_consumer_lag" in exposition
    # the pause monitor runs in the worker: its sleeper woke many times over the test
    lag_count = next(float(line.split()[-1]) for line in exposition.splitlines()
                     if line.startswith("tagstream_worker_loop_lag_seconds_count"))
    assert lag_count > 10
    delays.sort()
    print(f"\ndeadline -> tags.changes delay over {len(delays)} timers: "
          f"median {delays[len(delays) // 2] * 1000:.0f} ms, max {delays[-1] * 1000:.0f} ms")
