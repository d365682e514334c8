"""Faust app settings that decide what a takeover does."""

from __future__ import annotations

from streams.platform.settings import Settings
from streams.worker.app import create_app


def test_no_standby_replicas():
    """With the memory store a takeover re-reads the whole changelog (there is no persisted
    offset), so a standby would only make every worker read the others' changelogs all the
    time, and feed their records to the same recovery code as its own partitions."""
    app = create_app(Settings.from_env({}))
    assert app.conf.table_standby_replicas == 0
