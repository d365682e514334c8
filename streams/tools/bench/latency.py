"""Live latency: orders produced at a rate, each to its tag change on tags.changes.

The orders go out through aiokafka's producer, which puts every partition's batch in one
request as Kafka's own Java client does; the changes are read by librdkafka's consumer
(librdkafka_reader.py says why).
"""

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

from streams.platform.kafka_clients import UPSTREAM_LINGER_MS, kafka_producer
from streams.platform.partitioning import partition_for
from streams.platform.security import librdkafka_config
from streams.tools.bench.children import Child
from streams.tools.bench.librdkafka_reader import READER_CLIENT, TopicReader
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
                          first: int = 0, label: str = "") -> dict[str, Any]:
    """Paced live orders -> their first tag change read back; latencies in ms. `label` names
    a measure that is not the phase's own (its per-order file and its lines)."""
    partitions = run.options.partitions
    said = f"latency ({label})" if label else "latency"
    run.say(f"{said}: live first orders at {rate:,.0f}/s for {seconds:.0f} s")
    # Batched as an upstream system's producer would be: on the 2 cores the broker and the
    # bench share with the worker, a request per order would take the CPU the measured worker
    # needs. An order's latency still counts from its send, linger included.
    producer = kafka_producer(run.bootstrap, acks="all", linger_ms=UPSTREAM_LINGER_MS,
                              **run.security)
    sent_at: dict[bytes, float] = {}  # event_id -> perf_counter when sent
    samples: list[tuple[float, float, int]] = []  # (sent, ms after the start), ms, partition
    prefix = LIVE_MEMBER_PREFIX.encode()

    def received(at: float, key: bytes | None, value: bytes | None, partition: int) -> None:
        # on the reader's thread; the dict's pop and the list's append are atomic. `started`
        # is read only for an order in `sent_at`, all of them sent after it is set.
        if not (key or b"").startswith(prefix) or value is None:
            return  # a history member's timer firing meanwhile
        cause = orjson.loads(value).get("cause") or {}
        sent = sent_at.pop(str(cause.get("event_id", "")).encode(), None)
        if sent is not None:
            samples.append(((sent - started) * 1000, (at - sent) * 1000, partition))

    reader = TopicReader(run.bootstrap, librdkafka_config(run.settings), run.names.tag_changes,
                         partitions, received)
    try:
        await producer.start()
        await asyncio.to_thread(reader.start)
        in_flight = InFlightSends()
        started = time.perf_counter()
        started_at = time.time()  # the same instant on the wall clock, for the CPU timeline
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
            _require_reading(reader)
            _require_alive(watched)
            await asyncio.sleep(0.002)
        sent_seconds = time.perf_counter() - started
        await in_flight.confirm()
        waited_until = time.perf_counter() + LATENCY_GRACE_S
        while sent_at and time.perf_counter() < waited_until:
            _require_reading(reader)
            await asyncio.sleep(0.01)
    finally:
        await producer.stop()
        await asyncio.to_thread(reader.stop)
    samples_path = run.workdir / f"latency-{rate:g}{'-' + label if label else ''}-per-second.csv"
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
        "producer_linger_ms": UPSTREAM_LINGER_MS, "reader": READER_CLIENT,
        "reader_transient_errors": len(reader.transient_errors)}
    run.say(f"{said}: p50 {summary['p50']} ms, p99 {summary['p99']} ms over "
            f"{len(ordered):,} of {number:,} live orders")
    return summary


def read_orders(per_order: str) -> list[tuple[float, float]]:
    """(sent, ms after the phase started; latency, ms) of each order in a `per_order` file."""
    lines = Path(per_order).read_text().splitlines()[1:]
    return [(float(sent), float(ms)) for sent, ms, _ in (line.split(",") for line in lines)]


def _require_reading(reader: TopicReader) -> None:
    if reader.error is not None:
        raise BenchError(f"the latency phase's reader stopped: {reader.error}")


def _require_alive(watched: list[Child]) -> None:
    for child in watched:
        if not child.alive():
            raise BenchError(f"{child.name} exited during the latency phase; its log "
                             f"({child.log_path}):\n{child.log_tail()}")
