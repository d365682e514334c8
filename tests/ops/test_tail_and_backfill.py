"""`tagstream tail` and `tagstream backfill` against the shared Kafka."""

from __future__ import annotations

import io

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner

from schemas.control import BACKFILL, control_kind
from streams.ops.backfill import request_backfill
from streams.ops.cli import main
from streams.ops.tail import format_record, tail_topic
from streams.platform.kafka_clients import UnknownTopics
from streams.platform.topics import topic_names
from tests.support.kafka import at_least, create_topics, read_topic

pytestmark = pytest.mark.e2e

CHANGE = {"change_id": "c1", "member_id": "M1", "tag": "repeat_buyer", "op": "added",
          "name_zh": "复购客", "at": "2024-03-02T10:00:00+08:00",
          "evidence": {"paid_orders[365d]": 2}, "cause": {"event_id": "ord-2"}}


def test_a_tag_change_reads_as_a_guide_would_and_anything_else_stays_readable() -> None:
    assert format_record(orjson.dumps(CHANGE)) == (
        "2024-03-02T10:00:00+08:00  M1  + 复购客 (repeat_buyer)  paid_orders[365d]=2  [ord-2]")
    timer = {**CHANGE, "op": "removed", "cause": {"timer": "repeat_buyer"}, "evidence": {}}
    assert format_record(orjson.dumps(timer)).endswith(
        "- 复购客 (repeat_buyer)    [timer repeat_buyer]")
    assert format_record(b'{"other": 1}') == '{"other":1}'
    assert format_record(b"\xff not json") == "\ufffd not json"


async def test_tail_prints_every_record_from_the_beginning_then_stops_when_idle(
        stack_settings) -> None:
    await create_topics(stack_settings)
    topic = topic_names(stack_settings).tag_changes
    producer = AIOKafkaProducer(bootstrap_servers=stack_settings.broker_bootstrap)
    await producer.start()
    try:
        for n in range(3):
            await producer.send_and_wait(topic, orjson.dumps({**CHANGE, "change_id": f"c{n}"}),
                                         key=b"M1", partition=n % 2)
    finally:
        await producer.stop()
    out = io.StringIO()
    count = await tail_topic(stack_settings.broker_bootstrap, topic, from_beginning=True,
                             idle_s=1.0, out=out)
    assert count == 3 and out.getvalue().count("+ 复购客 (repeat_buyer)") == 3


async def test_tail_of_a_missing_topic_is_a_clear_error(stack_settings) -> None:
    with pytest.raises(UnknownTopics, match="does not exist"):
        await tail_topic(stack_settings.broker_bootstrap,
                         f"{stack_settings.topic_namespace}no.such.topic", idle_s=0.5)


def test_tagstream_tail_of_a_missing_topic_says_so_without_a_traceback(stack_settings) -> None:
    topic = f"{stack_settings.topic_namespace}no.such.topic"
    result = CliRunner().invoke(main, ["tail", "--topic", topic, "--idle", "0.5"],
                                env=stack_settings.to_env())
    assert result.exit_code == 1, result.output
    assert f"Error: topic '{topic}' does not exist" in result.output
    assert "Traceback" not in result.output


async def test_backfill_puts_one_marker_on_every_partition_of_the_reroute_topic(
        stack_settings) -> None:
    await create_topics(stack_settings)
    names = topic_names(stack_settings)
    assert await request_backfill(stack_settings.broker_bootstrap, stack_settings.partitions,
                                  names=names) == stack_settings.partitions
    markers = await read_topic(stack_settings.broker_bootstrap, names.reroute,
                               until=at_least(stack_settings.partitions), timeout=30)
    assert sorted(m.partition for m in markers) == list(range(stack_settings.partitions))
    assert all(control_kind(m.headers) == BACKFILL and m.value == b"" for m in markers)
