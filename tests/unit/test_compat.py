"""The Faust adjustment in streams/compat.py, once installed, does what it says."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

from faust.tables.recovery import Recovery
from faust.types import TP

import pytest

from streams import compat


@pytest.fixture(autouse=True)
def adjusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Installed for each test, and Faust's own method back afterwards (undo of the no-op
    setattr), so no other test runs patched by accident."""
    monkeypatch.setattr(Recovery, "on_recovery_completed", Recovery.on_recovery_completed)
    compat.install()


class RecordingConsumer:
    """What Recovery.on_recovery_completed does to the consumer, in order."""

    def __init__(self, assignment: set[TP]) -> None:
        self._assignment = assignment
        self.calls: list[tuple[str, object]] = []

    def assignment(self) -> set[TP]:
        return self._assignment

    async def perform_seek(self) -> None:
        self.calls.append(("seek", None))

    def resume_partitions(self, partitions: set[TP]) -> None:
        self.calls.append(("resume", frozenset(partitions)))

    def resume_flow(self) -> None:
        self.calls.append(("resume_flow", None))


def recovery_with(consumer: RecordingConsumer) -> Any:
    async def nothing(*_: Any, **__: Any) -> None:
        return None

    async def wait(coro: Any, timeout: float | None = None) -> None:
        await coro

    app = SimpleNamespace(
        consumer=consumer, consumer_generation_id=3,
        on_rebalance_complete=SimpleNamespace(send=nothing),
        conf=SimpleNamespace(broker_request_timeout=30),
        flow_control=SimpleNamespace(resume=lambda: consumer.calls.append(("flow", None))),
        _fetcher=SimpleNamespace(maybe_start=nothing),
        assignor=SimpleNamespace(assigned_standbys=lambda: set()),
        on_rebalance_end=lambda: None)
    log = logging.getLogger("test")
    return SimpleNamespace(
        app=app, log=SimpleNamespace(info=log.info, warning=log.warning, dev=log.debug),
        tables=SimpleNamespace(
            values=lambda: [], on_actives_ready=lambda: None, on_standbys_ready=lambda: None),
        actives_for_table={}, standbys_for_table={}, completed=asyncio.Event(),
        _set_recovery_ended=lambda: None, _wait=wait,
        _is_changelog_tp=lambda tp: tp.topic.endswith("-changelog"))


async def test_stream_partitions_are_sought_to_the_commit_before_they_are_resumed() -> None:
    """Regression: Faust resumed them first, so until the seek landed the agent got messages
    from beyond the commit; the clock passed events the seek delivered again, and those were
    dead-lettered as late (7,215 in one kill-a-worker run)."""
    events = TP("events.orders", 1)
    changelog = TP("tagstream-members-changelog", 1)
    consumer = RecordingConsumer({events, changelog})
    recovery = recovery_with(consumer)
    await Recovery.on_recovery_completed(recovery, generation_id=3)
    # then Faust's own order: resume, seek (which is what wakes the consumer), flow
    assert [name for name, _ in consumer.calls] == [
        "seek", "resume", "seek", "flow", "resume_flow"]
    assert consumer.calls[1] == ("resume", frozenset({events}))
    assert recovery.completed.is_set()


async def test_a_recovery_overtaken_by_a_new_rebalance_neither_seeks_nor_resumes() -> None:
    consumer = RecordingConsumer({TP("events.orders", 1)})
    recovery = recovery_with(consumer)
    await Recovery.on_recovery_completed(recovery, generation_id=2)  # the app is at 3
    assert consumer.calls == [] and not recovery.completed.is_set()


def test_installing_twice_keeps_one_adjustment() -> None:
    compat.install()
    compat.install()
    assert compat.installed()


async def test_faust_alone_resumes_before_it_seeks(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the adjustment is for: without it the first call is the resume (the race)."""
    monkeypatch.setattr(Recovery, "on_recovery_completed", compat._on_recovery_completed)
    consumer = RecordingConsumer({TP("events.orders", 1)})
    await Recovery.on_recovery_completed(recovery_with(consumer), generation_id=3)
    assert [name for name, _ in consumer.calls][:2] == ["resume", "seek"]
