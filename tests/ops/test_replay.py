"""`replay` against the real broker: every line on its topic and partition, in file order, byte
for byte; unroutable lines reported; every partition closed by a watermark marker."""

from __future__ import annotations

import io
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import NewTopic

from schemas.control import control_kind, decode_watermark, WATERMARK
from schemas.events import TOPIC_BY_EVENT_TYPE
from streams.ops.replay import produce_raw, replay
from streams.platform.admin import TopicError
from streams.platform.partitioning import partition_for
from streams.platform.settings import Settings
from streams.platform.topics import topic_names
from streams.tools.generate import generate_events, write_jsonl
from tests.support.kafka import admin_client

pytestmark = pytest.mark.e2e

PARTITIONS = 4

# (line inserted before generated line i, the line, why replay cannot route it)
GARBAGE = [
    (0, b"not json at all", "not valid JSON"),
    (5, b"", "empty line"),
    (9, b'{"event_type": "order.paid", "order_id": "x"}', "no member_id"),
    (17, b'{"event_type": "order.shipped", "member_id": "M0000001"}', "unknown event_type"),
    (23, b'["order.paid", "M0000001"]', "not a JSON object"),
    (31, b'{"member_id": "M0000002"}', "no event_type"),
    (40, b'{"event_type": 7, "member_id": "M0000002"}', "event_type is not a string"),
    (41, b'{"event_type": "scan.verified", "member_id": 12}', "member_id is not"),
]
# Routable but invalid: replay only routes, the worker decodes and dead-letters it.
INVALID_BUT_ROUTABLE = (b'{"event_type": "order.paid", "member_id": "M0000003", '
                        b'"amount_fen": 1.5}')


async def create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    async with admin_client(bootstrap) as admin:
        await admin.create_topics([NewTopic(t, n, 1) for t, n in topics.items()])


async def consume_all(bootstrap: str, topics: dict[str, int]) -> dict[tuple[str, int], list]:
    """Every record on every partition of `topics`, from the beginning, without a group."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tps = [TopicPartition(t, p) for t, n in topics.items() for p in range(n)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        records: dict[tuple[str, int], list] = {(tp.topic, tp.partition): [] for tp in tps}
        deadline = time.monotonic() + 30
        while True:
            behind = [tp for tp in tps if await consumer.position(tp) < end[tp]]
            if not behind:
                return records
            assert time.monotonic() < deadline, f"not read up to the end offsets: {behind}"
            for tp, batch in (await consumer.getmany(*behind, timeout_ms=200)).items():
                records[(tp.topic, tp.partition)].extend(batch)
    finally:
        await consumer.stop()


def write_file(path: Path, members: int = 40, days: int = 60, seed: int = 3) -> list[bytes]:
    """A generated history with garbage lines spliced in; returns the file's lines."""
    buf = io.BytesIO()
    write_jsonl(generate_events(members, days, seed), buf)
    lines = buf.getvalue().splitlines()
    for index, line, _ in sorted(GARBAGE, reverse=True):
        lines.insert(index, line)
    lines.insert(50, INVALID_BUT_ROUTABLE)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return lines


async def test_replay_routes_every_line_in_file_order_and_ends_with_watermarks(
        stack: Settings, tmp_path: Path) -> None:
    bootstrap, names = stack.broker_bootstrap, topic_names(stack)
    await create_topics(bootstrap, {topic: PARTITIONS for topic in names.events})
    path = tmp_path / "events.jsonl"
    lines = write_file(path)

    result = await replay(bootstrap, path, names=names, partitions=PARTITIONS, progress=False)

    expected: dict[tuple[str, int], list[tuple[bytes, bytes]]] = defaultdict(list)
    times = []
    for line in lines:
        try:
            ev = orjson.loads(line)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(ev, dict) or not isinstance(ev.get("member_id"), str) \
                or ev.get("event_type") not in TOPIC_BY_EVENT_TYPE:
            continue
        topic = names.actual(TOPIC_BY_EVENT_TYPE[ev["event_type"]])
        expected[(topic, partition_for(ev["member_id"], PARTITIONS))].append(
            (ev["member_id"].encode(), line))
        if "occurred_at" in ev:
            times.append(datetime.fromisoformat(ev["occurred_at"]))
    last = max(times)

    skipped = {s.line: s.reason for s in result.skipped}
    line_numbers = {line: number for number, line in enumerate(lines, 1)}
    assert len(skipped) == len(GARBAGE)
    for _, line, reason in GARBAGE:
        assert reason in skipped[line_numbers[line]], (line, skipped[line_numbers[line]])
    assert result.events == len(lines) - len(GARBAGE) == sum(map(len, expected.values()))
    assert result.produced == {topic: sum(len(v) for (t, _), v in expected.items() if t == topic)
                               for topic in names.events}
    assert result.last_event_time == last
    assert result.watermarks == len(names.events) * PARTITIONS

    records = await consume_all(bootstrap, {topic: PARTITIONS for topic in names.events})
    for (topic, partition), got in records.items():
        *events, marker = got
        assert [(r.key, r.value) for r in events] == expected[(topic, partition)], (topic, partition)
        assert all(control_kind(r.headers) is None for r in events)
        assert control_kind(marker.headers) == WATERMARK
        assert marker.key is None
        assert decode_watermark(marker.value) == last
    assert sum(len(v) for v in records.values()) == result.events + result.watermarks


async def test_topic_override_sends_every_line_raw(stack: Settings, tmp_path: Path) -> None:
    bootstrap, names = stack.broker_bootstrap, topic_names(stack)
    topic = names.actual("garbage.in")
    await create_topics(bootstrap, {topic: PARTITIONS, **{t: PARTITIONS for t in names.events}})
    lines = [line for _, line, _ in GARBAGE] + [INVALID_BUT_ROUTABLE]
    path = tmp_path / "garbage.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")

    result = await replay(bootstrap, path, names=names, partitions=PARTITIONS, progress=False,
                          topic_override=topic)

    assert result.skipped == ()
    assert result.produced == {topic: len(lines)}
    assert result.last_event_time is None and result.watermarks == 0
    records = await consume_all(bootstrap, {topic: PARTITIONS})
    expected: dict[int, list[tuple[bytes | None, bytes]]] = defaultdict(list)
    for line in lines:
        try:
            member_id = orjson.loads(line).get("member_id")
        except (orjson.JSONDecodeError, AttributeError):
            member_id = None
        if isinstance(member_id, str):  # keyed by member, on the member's partition
            expected[partition_for(member_id, PARTITIONS)].append((member_id.encode(), line))
        else:  # unkeyed, on partition 0
            expected[0].append((None, line))
    for partition in range(PARTITIONS):
        got = [(r.key, r.value) for r in records[(topic, partition)]]
        assert got == expected[partition], partition


async def test_replay_creates_missing_topics_and_refuses_another_partition_count(
        stack: Settings, tmp_path: Path) -> None:
    bootstrap, names = stack.broker_bootstrap, topic_names(stack)
    path = tmp_path / "events.jsonl"
    with path.open("wb") as fp:
        write_jsonl(generate_events(5, 10, 1), fp)

    result = await replay(bootstrap, path, names=names, partitions=3, progress=False)
    assert result.watermarks == len(names.events) * 3
    records = await consume_all(bootstrap, {t: 3 for t in names.events})
    assert sum(map(len, records.values())) == result.events + result.watermarks

    with pytest.raises(TopicError, match="3 partitions"):
        await replay(bootstrap, path, names=names, partitions=PARTITIONS, progress=False)


async def test_speed_paces_sends_by_event_time_gaps(stack: Settings, tmp_path: Path) -> None:
    events = [{"event_id": f"e{i}", "event_type": "interaction.sign_in", "member_id": "M0000001",
               "occurred_at": f"2024-03-01T12:0{i}:00+08:00", "channel": "miniprogram",
               "schema_version": 1} for i in range(3)]
    path = tmp_path / "paced.jsonl"
    with path.open("wb") as fp:
        write_jsonl(events, fp)
    started = time.monotonic()
    # two 60 s gaps at 120x: at least a second, however fast the broker is
    result = await replay(stack.broker_bootstrap, path, names=topic_names(stack), partitions=2,
                          speed=120, progress=False)
    assert time.monotonic() - started >= 0.95
    assert result.events == 3


async def test_produce_raw_sends_bytes_as_they_are(stack: Settings) -> None:
    bootstrap, topic = stack.broker_bootstrap, topic_names(stack).actual("raw.test")
    await create_topics(bootstrap, {topic: 2})
    items = [(None, b"\xff\xfe not utf-8"), (b"M0000001", b"{}"), (None, b"")]
    placed = await produce_raw(bootstrap, topic, items, partition=1)
    assert [p for p, _ in placed] == [1, 1, 1]
    records = await consume_all(bootstrap, {topic: 2})
    assert [(r.key, r.value) for r in records[(topic, 1)]] == items
    assert records[(topic, 0)] == []


async def test_periodic_watermarks_never_overtake_the_events_before_them(
        stack: Settings, tmp_path: Path) -> None:
    """Under the event clock a marker W promises nothing at or before W follows it."""
    path = tmp_path / "events.jsonl"
    with path.open("wb") as fp:
        write_jsonl(generate_events(300, 200, 5), fp)
    names = topic_names(stack)
    result = await replay(stack.broker_bootstrap, path, names=names, partitions=PARTITIONS,
                          progress=False)
    assert result.events > 3 * 2000
    records = await consume_all(stack.broker_bootstrap, {t: PARTITIONS for t in names.events})
    mid_stream_markers = 0
    for (topic, partition), batch in records.items():
        complete_through = None
        for position, record in enumerate(batch):
            if control_kind(record.headers) == WATERMARK:
                complete_through = decode_watermark(record.value)
                mid_stream_markers += position < len(batch) - 1
            else:
                at = datetime.fromisoformat(orjson.loads(record.value)["occurred_at"])
                assert complete_through is None or at > complete_through, (topic, partition)
    assert mid_stream_markers > 0
    assert result.watermarks > 3 * PARTITIONS
