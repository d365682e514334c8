"""Live latency: orders produced at a rate, each to its tag change on tags.changes."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections import deque
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import orjson
from aiokafka import TopicPartition

from streams.platform.kafka_clients import UPSTREAM_LINGER_MS, kafka_consumer, kafka_producer
from streams.platform.partitioning import partition_for
from streams.tools.bench.children import Child
from streams.tools.generate import CST
from streams.tools.bench.common import (
    BenchError, LATENCY_GRACE_S, LIVE_MEMBER_PREFIX, _Run, _quantile, _round,
)


@contextlib.contextmanager
def not_collecting() -> Iterator[None]:
    """The bench's loop stamps each order's send and receipt, so it does not collect garbage
    while it measures: a collection of the oldest generation stopped it for up to 250 ms at
    100,000 members, and every order in flight then read as that much slower. Collected once
    before; reference counting still frees what the phase makes."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


class InFlightSends:
    """The live orders' sends not yet confirmed, let go of as they are. Gathering a whole
    phase's sends at its end (~40,000 futures, a callback each) stopped the bench's loop for
    up to 100 ms just as the last orders' tag changes arrived: they were stamped that late,
    and every run's last second looked slow."""

    def __init__(self) -> None:
        self._sends: deque[asyncio.Future] = deque()

    def __len__(self) -> int:
        return len(self._sends)

    def add(self, send: asyncio.Future) -> None:
        self._sends.append(send)

    def settle(self) -> None:
        """Let go of the confirmed sends at the front; a failed one raises its error."""
        while self._sends and self._sends[0].done():
            self._sends.popleft().result()

    async def confirm(self) -> None:
        """Wait for the rest; a failed one raises its error."""
        self.settle()
        await asyncio.gather(*self._sends)
        self._sends.clear()


def live_order(number: int) -> tuple[str, bytes]:
    """A first order of a new member: `first_purchase` (and more) is added at once."""
    member_id = f"{LIVE_MEMBER_PREFIX}{number:08d}"
    event = {"event_id": f"bench-live-{number:08d}", "event_type": "order.paid",
             "member_id": member_id,
             "occurred_at": datetime.now(CST).isoformat(timespec="milliseconds"),
             "channel": "miniprogram", "schema_version": 1, "order_id": f"bench-o-{number:08d}",
             "amount_fen": 5900,
             "items": [{"sku": "RICE-NE-5KG", "category": "rice", "unit_price_fen": 5900,
                        "quantity": 1, "spec": "regular"}]}
    return member_id, orjson.dumps(event)


async def measure_latency(run: _Run, rate: float, seconds: float, watched: list[Child], *,
                          first: int = 0) -> dict[str, Any]:
    """Paced live orders -> their first tag change read back; latencies in ms."""
    partitions = run.options.partitions
    run.say(f"latency: live first orders at {rate:,.0f}/s for {seconds:.0f} s")
    # Batched as an upstream system's producer would be: on the 2 cores the broker and the
    # bench share with the worker, a request per order would take the CPU the measured worker
    # needs. An order's latency still counts from its send, linger included.
    producer = kafka_producer(run.bootstrap, acks="all", linger_ms=UPSTREAM_LINGER_MS,
                              **run.security)
    consumer = kafka_consumer(run.bootstrap, enable_auto_commit=False,
                              fetch_max_wait_ms=10, **run.security)
    await producer.start()
    await consumer.start()
    sent_at: dict[bytes, float] = {}  # event_id -> perf_counter when sent
    samples: list[tuple[float, float, int]] = []  # (sent, ms after the start), ms, partition
    done = asyncio.Event()
    sending = True
    try:
        tps = [TopicPartition(run.names.tag_changes, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        for tp in tps:
            await consumer.position(tp)  # the seek is lazy: fix it before producing

        async def read() -> None:
            prefix = LIVE_MEMBER_PREFIX.encode()
            while not done.is_set():
                batch = await consumer.getmany(timeout_ms=50, max_records=5000)
                received = time.perf_counter()
                for messages in batch.values():
                    for message in messages:
                        if not (message.key or b"").startswith(prefix):
                            continue  # a history member's timer firing meanwhile
                        cause = orjson.loads(message.value).get("cause") or {}
                        event_id = str(cause.get("event_id", "")).encode()
                        sent = sent_at.pop(event_id, None)
                        if sent is not None:
                            samples.append(((sent - started) * 1000, (received - sent) * 1000,
                                            message.partition))
                if not sending and not sent_at:
                    done.set()

        started = time.perf_counter()
        started_at = time.time()  # the same instant on the wall clock, for the CPU timeline
        reader = asyncio.create_task(read())
        in_flight = InFlightSends()
        orders_topic = run.names.orders  # built afresh on each read: once here, not per order
        number = 0
        while (now := time.perf_counter()) - started < seconds:
            due = int((now - started) * rate)
            while number < due:
                member_id, value = live_order(first + number)
                sent_at[f"bench-live-{first + number:08d}".encode()] = time.perf_counter()
                in_flight.add(await producer.send(
                    orders_topic, value, key=member_id.encode(),
                    partition=partition_for(member_id, partitions)))
                number += 1
            in_flight.settle()
            if reader.done():
                reader.result()  # raises what stopped it
            _require_alive(watched)
            await asyncio.sleep(0.002)
        sent_seconds = time.perf_counter() - started
        sending = False
        await in_flight.confirm()
        try:
            await asyncio.wait_for(done.wait(), LATENCY_GRACE_S)
        except asyncio.TimeoutError:
            pass
        done.set()
        await reader
    finally:
        await producer.stop()
        await consumer.stop()
    samples_path = run.workdir / f"latency-{rate:g}-per-second.csv"
    samples_path.write_text("sent_ms,latency_ms,partition\n" + "".join(
        f"{sent:.1f},{ms:.1f},{partition}\n" for sent, ms, partition in sorted(samples)))
    ordered = sorted(ms for _, ms, _ in samples)
    summary = {
        "p50": _round(_quantile(ordered, 0.5)), "p90": _round(_quantile(ordered, 0.9)),
        "p99": _round(_quantile(ordered, 0.99)), "max": _round(ordered[-1] if ordered else None),
        "rate_eps": round(number / sent_seconds, 1) if sent_seconds else 0.0,
        "target_rate_eps": round(rate, 1), "sent": number, "received": len(ordered),
        "missing": number - len(ordered), "seconds": round(sent_seconds, 1),
        "started_at": round(started_at, 3), "per_order": str(samples_path),
        "producer_linger_ms": UPSTREAM_LINGER_MS}
    run.say(f"latency: p50 {summary['p50']} ms, p99 {summary['p99']} ms over "
            f"{len(ordered):,} of {number:,} live orders")
    return summary


def read_orders(per_order: str) -> list[tuple[float, float]]:
    """(sent, ms after the phase started; latency, ms) of each order in a `per_order` file."""
    lines = Path(per_order).read_text().splitlines()[1:]
    return [(float(sent), float(ms)) for sent, ms, _ in (line.split(",") for line in lines)]


def _require_alive(watched: list[Child]) -> None:
    for child in watched:
        if not child.alive():
            raise BenchError(f"{child.name} exited during the latency phase; its log "
                             f"({child.log_path}):\n{child.log_tail()}")
