"""A local broker's log cleaner runs at a low CPU priority, so it compacts on idle cores.

The local stack's brokers share two cores with the workers, the Redis sink and the bench. Kafka
bounds its cleaner's I/O (`log.cleaner.io.max.bytes.per.second`), but its throttler checks the
rate only every 300 ms, measured from its last check: after an idle gap the first check sees a
low rate, and the next comes 300 ms of full-speed work later. A pass over one 64 MB segment of
`members.profiles` takes about 0.3 s, so it is never slowed, and it holds a whole core while
live orders wait behind it. A thread's niceness is its own on Linux, so the cleaner threads alone
are given a high one: they still get every core the workers leave idle, and little of one they
need. Production brokers, on machines of their own, keep Kafka's default.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from streams.tools.kafka_server import KafkaServerError

# Kafka names them "kafka-log-cleaner-thread-<n>"; Linux keeps the first 15 bytes of a name.
CLEANER_THREAD_NAME = "kafka-log-clean"
PROC = Path("/proc")


class CleanerThreadsNotFound(KafkaServerError):
    pass


def cleaner_threads(pid: int, proc: Path = PROC) -> list[int]:
    """The thread ids of process `pid`'s log-cleaner threads (none if it has exited)."""
    found = []
    for task in sorted((proc / str(pid) / "task").glob("*")):
        try:
            name = (task / "comm").read_text().strip()
        except OSError:  # the thread ended between the listing and the read
            continue
        if name.startswith(CLEANER_THREAD_NAME):
            found.append(int(task.name))
    return found


def niceness(thread_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, thread_id)


def lower_cleaner_priority(pid: int, nice: int, timeout: float = 10.0,
                           proc: Path = PROC) -> list[int]:
    """Give broker `pid`'s log-cleaner threads the CPU niceness `nice` (0 leaves them as the
    JVM started them) and return their thread ids. Kafka starts the cleaner as the broker
    joins the cluster, so its threads are awaited for up to `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (threads := cleaner_threads(pid, proc)):
        if time.monotonic() >= deadline:
            raise CleanerThreadsNotFound(
                f"the Kafka broker (pid {pid}) has no thread named {CLEANER_THREAD_NAME}* after "
                f"{timeout:g} s, so its log cleaner's priority could not be lowered; set "
                "TAGSTREAM_STACK_CLEANER_NICE=0 to start it without")
        time.sleep(0.1)
    if nice:
        for thread_id in threads:
            os.setpriority(os.PRIO_PROCESS, thread_id, nice)
    return threads
