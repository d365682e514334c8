"""Follow a topic and print its records: tag changes as a guide would read them."""

from __future__ import annotations

import asyncio
from typing import Any, Mapping, TextIO

import orjson

from streams.platform.kafka_clients import kafka_consumer, partitions_of


def format_record(value: bytes) -> str:
    """One line per record; tag changes get their display name and evidence."""
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return value.decode("utf-8", "replace")
    if isinstance(record, dict) and "tag" in record and "op" in record:
        sign = "+" if record["op"] == "added" else "-"
        name = record.get("name_zh") or record["tag"]
        evidence = " ".join(f"{k}={v}" for k, v in (record.get("evidence") or {}).items())
        cause = record.get("cause") or {}
        why = cause.get("event_id") or f"timer {cause.get('timer', '')}"
        return (f"{record.get('at', '')}  {record.get('member_id', '')}  {sign} {name} "
                f"({record['tag']})  {evidence}  [{why}]")
    return orjson.dumps(record).decode()


async def tail_topic(bootstrap: str, topic: str, *, from_beginning: bool = False,
                     idle_s: float | None = None, limit: int | None = None,
                     out: TextIO | None = None,
                     security: Mapping[str, Any] | None = None) -> int:
    """Print records until `limit` records or `idle_s` seconds without one; returns the count."""
    consumer = kafka_consumer(bootstrap, enable_auto_commit=False,
                              **(security or {}))
    await consumer.start()
    count = 0
    try:
        assigned = await partitions_of(consumer, [topic])
        consumer.assign(assigned)
        if from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        loop = asyncio.get_running_loop()
        last = loop.time()
        while limit is None or count < limit:
            batch = await consumer.getmany(timeout_ms=200, max_records=500)
            records = [m for messages in batch.values() for m in messages]
            for message in records:
                if out is not None:
                    out.write(format_record(message.value) + "\n")
                count += 1
            if out is not None and records:
                out.flush()
            if records:
                last = loop.time()
            elif idle_s is not None and loop.time() - last > idle_s:
                break
    finally:
        await consumer.stop()
    return count
