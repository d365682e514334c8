"""Faust app settings that decide what a takeover does, and how long a fetch may wait."""

from __future__ import annotations

import pytest

from streams.platform.settings import Settings, SettingsError
from streams.worker.app import create_app


def test_no_standby_replicas():
    """With the memory store a takeover re-reads the whole changelog (there is no persisted
    offset), so a standby would only make every worker read the others' changelogs all the
    time, and feed their records to the same recovery code as its own partitions."""
    app = create_app(Settings.from_env({}))
    assert app.conf.table_standby_replicas == 0


def test_the_fetch_wait_comes_from_the_environment_and_is_checked():
    assert Settings.from_env({}).consumer_fetch_max_wait_ms == 100
    env = {"TAGSTREAM_CONSUMER_FETCH_MAX_WAIT_MS": "250"}
    assert Settings.from_env(env).consumer_fetch_max_wait_ms == 250
    with pytest.raises(SettingsError, match="TAGSTREAM_CONSUMER_FETCH_MAX_WAIT_MS"):
        Settings.from_env({"TAGSTREAM_CONSUMER_FETCH_MAX_WAIT_MS": "-1"})
