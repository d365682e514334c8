"""partitions_of on a real broker: a consumer subscribed to nothing starts knowing no topic,
so reading "no partitions" from its metadata made waits return at once (committed_to_the_end
did, until the Redis sink's commit test failed in CI on the race it let through)."""

from __future__ import annotations

import pytest
from aiokafka import TopicPartition

from streams.platform.kafka_clients import (UnknownTopics, kafka_consumer, kafka_producer,
                                            partitions_of)
from streams.platform.topics import topic_names
from tests.support.kafka import committed_to_the_end, create_topics


async def test_a_consumer_subscribed_to_nothing_finds_every_partition(stack_settings) -> None:
    await create_topics(stack_settings)
    names = topic_names(stack_settings)
    consumer = kafka_consumer(stack_settings.broker_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        found = await partitions_of(consumer, [names.tag_changes, names.orders])
    finally:
        await consumer.stop()
    assert found == sorted(TopicPartition(topic, p) for topic in (names.tag_changes, names.orders)
                           for p in range(stack_settings.partitions))


async def test_a_missing_topic_is_named_in_the_error(stack_settings) -> None:
    await create_topics(stack_settings)
    missing = f"{stack_settings.topic_namespace}no.such.topic"
    consumer = kafka_consumer(stack_settings.broker_bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        with pytest.raises(UnknownTopics, match=f"topic '{missing}' does not exist"):
            await partitions_of(consumer, [topic_names(stack_settings).orders, missing],
                                wait_s=0.5)
    finally:
        await consumer.stop()


async def test_committed_to_the_end_waits_for_a_group_that_committed_nothing(
        stack_settings) -> None:
    await create_topics(stack_settings)
    topic = topic_names(stack_settings).orders
    producer = kafka_producer(stack_settings.broker_bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topic, b"{}", key=b"m1")
    finally:
        await producer.stop()
    with pytest.raises(AssertionError, match="not committed to the end"):
        await committed_to_the_end(stack_settings.broker_bootstrap,
                                   f"{stack_settings.app_id}-nobody", [topic], timeout=1)
