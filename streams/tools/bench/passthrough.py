"""Phase 2: raw aiokafka passthrough, and the Faust floor over the same messages."""

from __future__ import annotations

import asyncio
import sys
import time

import orjson

from streams.platform.kafka_clients import UPSTREAM_LINGER_MS, kafka_consumer, kafka_producer
from streams.tools.bench.children import Child
from streams.tools.bench.cpu_timeline import machine_pct, machine_times
from streams.tools.processes import free_ports
from streams.tools.bench.common import (
    BenchError, PASSTHROUGH_TOPIC, READY_TIMEOUT_S, _Run, _event_partitions,
)


async def raw_passthrough(run: _Run) -> float:
    """Plain aiokafka: consume the event topics, orjson-decode, produce to another topic."""
    run.say("raw passthrough: aiokafka consume -> orjson -> produce")
    consumer = kafka_consumer(run.bootstrap, enable_auto_commit=False,
                              **run.security)
    producer = kafka_producer(run.bootstrap, acks="all", linger_ms=UPSTREAM_LINGER_MS,
                              max_batch_size=256 * 1024, **run.security)
    await consumer.start()
    await producer.start()
    passthrough = run.names.actual(PASSTHROUGH_TOPIC)
    try:
        tps = _event_partitions(run)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        total = run.messages
        loop = asyncio.get_running_loop()
        all_acked = loop.create_future()
        state = {"in_flight": 0, "errors": 0, "reading": True, "last_ack": 0.0}

        def acked(future: asyncio.Future) -> None:
            state["in_flight"] -= 1
            if future.cancelled() or future.exception() is not None:
                state["errors"] += 1
            if not state["reading"] and state["in_flight"] == 0 and not all_acked.done():
                state["last_ack"] = time.perf_counter()
                all_acked.set_result(None)

        consumed = undecodable = 0
        first: float | None = None
        loads = orjson.loads
        while consumed < total:
            batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for tp, messages in batch.items():
                if first is None and messages:
                    first = time.perf_counter()
                for message in messages:
                    try:
                        loads(message.value)
                    except orjson.JSONDecodeError:
                        undecodable += 1
                    future = await producer.send(passthrough, message.value,
                                                 key=message.key, partition=tp.partition)
                    state["in_flight"] += 1
                    future.add_done_callback(acked)
                consumed += len(messages)
        state["reading"] = False
        if state["in_flight"] == 0:
            state["last_ack"] = time.perf_counter()
        else:
            await all_acked
        if state["errors"]:
            raise BenchError(f"raw passthrough: {state['errors']} sends failed")
    finally:
        await producer.stop()
        await consumer.stop()
    seconds = state["last_ack"] - (first or state["last_ack"])
    eps = consumed / seconds if seconds > 0 else 0.0
    run.result["details"]["raw_passthrough"] = {
        "messages": consumed, "seconds": round(seconds, 3), "not_json": undecodable}
    run.say(f"raw passthrough: {consumed:,} messages in {seconds:.2f} s = {eps:,.0f}/s")
    return round(eps)


async def faust_floor(run: _Run, direct: bool = False) -> None:
    """A Faust agent that only acknowledges (streams/tools/bench_floor.py) over the same messages:
    the floor `of_faust_floor` is measured against. `direct`: the same worker with its
    fetcher handing each message to a handler that only acknowledges it, as it hands the member
    agent its messages (no stream): Faust's fetch path alone."""
    total = run.messages
    name = "faust direct floor" if direct else "faust floor"
    slug = name.replace(" ", "-")
    report = run.workdir / f"{slug}.json"
    report.unlink(missing_ok=True)
    run.say(f"{name}: " + ("a Faust worker's fetcher handing each message to a handler that "
                           "only acknowledges it" if direct else
                           "a Faust agent that only acknowledges") +
            f", over the same {total:,} messages")
    [port] = free_ports(1)
    machine_before, wall_from = machine_times(), time.time()
    child = Child(name, [sys.executable, "-m", "streams.tools.bench_floor", str(total),
                         str(report), *(["--direct"] if direct else [])],
                  run.env(app_id=f"{run.settings.app_id}-{slug}", web_port=port),
                  run.workdir / f"{slug}.log", run.children)
    deadline = time.monotonic() + READY_TIMEOUT_S + total / 1000  # >= 1,000 messages/s
    while not report.exists():
        if not child.alive():
            raise BenchError(f"the {name} worker exited; its log ({child.log_path}):\n"
                             f"{child.log_tail()}")
        if time.monotonic() > deadline:
            raise BenchError(f"the {name} worker did not see {total:,} messages in time; "
                             f"its log ({child.log_path}):\n{child.log_tail()}")
        await asyncio.sleep(0.2)
    machine = machine_pct(machine_before, machine_times(), time.time() - wall_from)
    child.stop()
    floor = orjson.loads(report.read_bytes())
    eps = floor["messages"] / floor["seconds"] if floor["seconds"] > 0 else 0.0
    if direct:
        run.result["faust_direct_floor_eps"] = round(eps)
        run.result["details"]["faust_direct_floor"] = {
            "messages": floor["messages"], "seconds": round(floor["seconds"], 3),
            "machine_pct_of_one_core": machine}
        run.say(f"{name}: {floor['messages']:,} messages in {floor['seconds']:.2f} s = "
                f"{eps:,.0f}/s")
        return
    raw = run.result["raw_passthrough_eps"]
    run.result["faust_floor_eps"] = round(eps)
    run.result["ratio_ceiling"] = round(eps / raw, 3) if raw else None
    run.result["details"]["faust_floor"] = {
        "messages": floor["messages"], "seconds": round(floor["seconds"], 3),
        # over the floor worker's whole run, its start included: a floor measured while
        # the hypervisor gave the cores to another guest shows it in "steal"
        "machine_pct_of_one_core": machine}
    run.say(f"faust floor: {floor['messages']:,} messages in {floor['seconds']:.2f} s = "
            f"{eps:,.0f}/s (ratio ceiling {run.result['ratio_ceiling']})")
