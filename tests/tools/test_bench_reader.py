"""The latency phase's librdkafka reader of tag changes, against the shared broker."""

from __future__ import annotations

import threading
import time

from streams.ops.replay import produce_raw
from streams.platform.security import librdkafka_config
from streams.platform.topics import topic_names
from tests.support.kafka import create_topics
from streams.tools.bench.librdkafka_reader import TopicReader

WAIT_S = 30.0


class Received:
    """What a reader's callback got, for a test to wait on."""

    def __init__(self) -> None:
        self.messages: list[tuple[float, bytes | None, bytes | None, int]] = []
        self._changed = threading.Condition()

    def __call__(self, at: float, key: bytes | None, value: bytes | None,
                 partition: int) -> None:
        with self._changed:
            self.messages.append((at, key, value, partition))
            self._changed.notify_all()

    def wait_for(self, count: int) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.messages) >= count, WAIT_S), (
                f"{len(self.messages)} of {count} messages read")


async def test_the_reader_reads_what_is_written_after_it_starts_once_each_and_stamped(
        stack_settings) -> None:
    await create_topics(stack_settings)
    topic = topic_names(stack_settings).tag_changes
    for number in range(4):  # before the reader starts: not read
        await produce_raw(stack_settings.broker_bootstrap, topic,
                          [(b"k%d" % number, b"early-%d" % number)], partition=number % 2)
    received = Received()
    reader = TopicReader(stack_settings.broker_bootstrap, librdkafka_config(stack_settings),
                         topic, 2, received)
    try:
        reader.start()
        before = time.perf_counter()
        for number in range(10):
            await produce_raw(stack_settings.broker_bootstrap, topic,
                              [(b"k%d" % number, b"late-%d" % number)], partition=number % 2)
        received.wait_for(10)
        time.sleep(0.2)  # long enough for a duplicate or an early message to show up
    finally:
        reader.stop()
    assert sorted(value for _, _, value, _ in received.messages) == sorted(
        b"late-%d" % number for number in range(10))
    assert {partition for _, _, _, partition in received.messages} == {0, 1}
    assert all(at >= before for at, _, _, _ in received.messages)
    assert reader.error is None and reader.transient_errors == []


async def test_an_error_on_the_readers_thread_is_reported_not_lost(stack_settings) -> None:
    """A tag change the phase cannot read stops the reader with the reason, and the phase
    asks `error` on each turn; a thread that died quietly would leave orders missing with no
    reason given."""
    await create_topics(stack_settings)
    topic = topic_names(stack_settings).tag_changes

    def unreadable(_at: float, _key: bytes | None, value: bytes | None, _partition: int) -> None:
        raise ValueError(f"not a tag change: {value!r}")

    reader = TopicReader(stack_settings.broker_bootstrap, librdkafka_config(stack_settings),
                         topic, 2, unreadable)
    try:
        reader.start()
        await produce_raw(stack_settings.broker_bootstrap, topic, [(b"k", b"garbage")],
                          partition=0)
        deadline = time.monotonic() + WAIT_S
        while reader.error is None and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        reader.stop()
    assert reader.error == f"reading {topic}: ValueError: not a tag change: b'garbage'"
