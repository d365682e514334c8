"""The local broker's log-cleaner threads are found by name and given a low CPU priority.

These tests rename a real thread of the test process as Kafka names its cleaner threads (a
thread may rename itself through /proc), so what is found and reniced is a real Linux thread;
`tests/tools/test_stack.py` checks the shared broker's own cleaner thread."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import pytest

from streams.platform.settings import Settings, SettingsError
from streams.tools.kafka_server.cleaner import (CLEANER_THREAD_NAME, CleanerThreadsNotFound,
                                                cleaner_threads, lower_cleaner_priority,
                                                niceness)


def _named_thread(name: str) -> Iterator[int]:
    """A live thread of this process whose Linux name is `name`; yields its thread id."""
    named, release = threading.Event(), threading.Event()
    thread_ids: list[int] = []

    def run() -> None:
        thread_id = threading.get_native_id()
        Path(f"/proc/self/task/{thread_id}/comm").write_text(name)
        thread_ids.append(thread_id)
        named.set()
        release.wait()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    named.wait()
    try:
        yield thread_ids[0]
    finally:
        release.set()
        thread.join()


@pytest.fixture
def kafka_cleaner_thread() -> Iterator[int]:
    yield from _named_thread("kafka-log-cleaner-thread-0")


@pytest.fixture
def other_thread() -> Iterator[int]:
    yield from _named_thread("kafka-scheduler")


def test_the_cleaner_threads_are_found_by_their_truncated_name(
        kafka_cleaner_thread: int, other_thread: int) -> None:
    # Linux keeps 15 bytes of a thread's name: what Kafka's name leaves is what is looked for
    assert Path(f"/proc/self/task/{kafka_cleaner_thread}/comm").read_text().strip() == \
        CLEANER_THREAD_NAME

    assert cleaner_threads(os.getpid()) == [kafka_cleaner_thread]


def test_the_cleaner_threads_alone_get_the_niceness(kafka_cleaner_thread: int,
                                                    other_thread: int) -> None:
    before = niceness(other_thread)

    assert lower_cleaner_priority(os.getpid(), 19) == [kafka_cleaner_thread]

    assert niceness(kafka_cleaner_thread) == 19
    assert niceness(other_thread) == before
    assert niceness(threading.get_native_id()) == before


def test_niceness_zero_leaves_the_cleaner_as_it_was(kafka_cleaner_thread: int) -> None:
    before = niceness(kafka_cleaner_thread)

    assert lower_cleaner_priority(os.getpid(), 0) == [kafka_cleaner_thread]

    assert niceness(kafka_cleaner_thread) == before


def test_a_broker_without_cleaner_threads_is_a_clear_error() -> None:
    with pytest.raises(CleanerThreadsNotFound,
                       match=rf"pid {os.getpid()}\) has no thread named {CLEANER_THREAD_NAME}\* "
                             r"after 0.2 s.*TAGSTREAM_STACK_CLEANER_NICE=0"):
        lower_cleaner_priority(os.getpid(), 19, timeout=0.2)


def test_an_exited_process_has_no_cleaner_threads(tmp_path: Path) -> None:
    assert cleaner_threads(999_999_999, proc=tmp_path) == []


def test_the_niceness_setting_is_19_by_default_and_bounded() -> None:
    assert Settings().stack_cleaner_nice == 19
    assert Settings.from_env({"TAGSTREAM_STACK_CLEANER_NICE": "0"}).stack_cleaner_nice == 0
    for wrong in ("-1", "20"):
        with pytest.raises(SettingsError, match="TAGSTREAM_STACK_CLEANER_NICE must be from 0 to 19"):
            Settings.from_env({"TAGSTREAM_STACK_CLEANER_NICE": wrong})
