"""Faust app settings that decide what a takeover does, how long a fetch may wait, and how
what the worker produces is compressed."""

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


def test_the_worker_compresses_what_it_produces_only_when_told():
    assert create_app(Settings.from_env({})).conf.producer_compression_type is None
    lz4 = Settings.from_env({"TAGSTREAM_PRODUCER_COMPRESSION": "lz4"})
    assert create_app(lz4).conf.producer_compression_type == "lz4"
    zstd = Settings.from_env({"TAGSTREAM_PRODUCER_COMPRESSION": "zstd"})
    assert create_app(zstd).conf.producer_compression_type == "zstd"
    none = Settings.from_env({"TAGSTREAM_PRODUCER_COMPRESSION": "none"})
    assert create_app(none).conf.producer_compression_type is None
    with pytest.raises(SettingsError, match="TAGSTREAM_PRODUCER_COMPRESSION.*'brotli'"):
        Settings.from_env({"TAGSTREAM_PRODUCER_COMPRESSION": "brotli"})
