"""The latency phase's reader of tag changes, on librdkafka (confluent-kafka).

On 2 cores the bench shares the machine with the worker it measures, so its own clients must
cost little. Sending 2,000 live orders/s and reading 8,000 tag changes/s took one process
26.7-32.2% of a core with aiokafka's producer and consumer, 23.1-25.7% with this reader in
place of the consumer (docs/performance-log.md, twenty-sixth session). The orders still go out
through aiokafka: librdkafka sends each partition's batch in a request of its own
(librdkafka issue #1700), four times the produce requests of aiokafka or Kafka's Java
client at 4 partitions, which cost the broker and the worker more than the bench saved.

The reader runs on a thread of its own and stamps each message when librdkafka hands it over,
so a busy bench loop cannot make an order look slower than it was.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Callable

import confluent_kafka
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from streams.tools.bench.common import BenchError

READER_CLIENT = (f"librdkafka {confluent_kafka.libversion()[0]} "
                 f"(confluent-kafka {confluent_kafka.__version__})")
# (perf_counter when received, key, value, partition) of each message read
OnMessage = Callable[[float, bytes | None, bytes | None, int], None]
# How long the reader waits for a first message before it looks whether it should stop.
READ_WAIT_S = 0.05
# Most messages taken at once after the first: what librdkafka has fetched already.
READ_BATCH = 5000
METADATA_TIMEOUT_S = 10.0
# What asking a partition's offsets answers before the partition has a leader; librdkafka does
# not mark these retriable there.
_NO_LEADER_YET = frozenset({KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                            KafkaError.UNKNOWN_TOPIC_OR_PART})


class TopicReader:
    """Reads every partition of a topic from where it ends when started, on its own thread,
    calling `on_message` there for each message. Stop it with `stop`, even after an error."""

    def __init__(self, bootstrap: str, security: dict[str, str], topic: str, partitions: int,
                 on_message: OnMessage) -> None:
        self._consumer = Consumer({
            "bootstrap.servers": bootstrap, **security,
            "group.id": f"tagstream-bench-reader-{uuid.uuid4().hex}",  # never joined
            "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self._topic, self._partitions, self._on_message = topic, partitions, on_message
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._read, name="bench-reader", daemon=True)
        self.error: str | None = None  # what stopped it, if anything did
        # errors librdkafka reported and recovers from itself (a broker connection lost...)
        self.transient_errors: list[str] = []

    def start(self) -> None:
        """From the end of each partition now: a message written after this returns is read."""
        deadline = time.monotonic() + METADATA_TIMEOUT_S
        positions = [TopicPartition(self._topic, partition, self._end(partition, deadline))
                     for partition in range(self._partitions)]
        self._consumer.assign(positions)
        self._thread.start()

    def _end(self, partition: int, deadline: float) -> int:
        """The partition's end offset; retried while its leader is not known yet (a topic
        just made) until `deadline`."""
        while True:
            try:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self._topic, partition),
                    timeout=max(deadline - time.monotonic(), 0.1))
                return int(high)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if not (isinstance(error, KafkaError) and (
                        error.retriable() or error.code() in _NO_LEADER_YET)) or (
                        time.monotonic() >= deadline):
                    raise BenchError(f"cannot find where {self._topic} partition {partition} "
                                     f"ends: {exc}") from None
                time.sleep(0.1)

    def stop(self) -> None:
        self._stopping.set()
        if self._thread.is_alive():
            self._thread.join()
        self._consumer.close()

    def _read(self) -> None:
        try:
            self._read_until_stopped()
        except Exception as exc:  # noqa: BLE001 - reported to the phase, which stops on it
            self.error = f"reading {self._topic}: {type(exc).__name__}: {exc}"

    def _read_until_stopped(self) -> None:
        consumer = self._consumer
        while not self._stopping.is_set():
            first = consumer.consume(1, READ_WAIT_S)
            if not first:
                continue
            messages = first + consumer.consume(READ_BATCH, 0)
            received = time.perf_counter()
            for message in messages:
                error = message.error()
                if error is None:
                    self._on_message(received, message.key(), message.value(),
                                     message.partition())
                elif error.fatal():
                    self.error = f"reading {self._topic}: {error}"
                    return
                else:
                    self.transient_errors.append(str(error))
