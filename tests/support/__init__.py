"""Helpers shared by the test tiers: free loopback ports and settings for a private stack."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from streams.platform.settings import Settings
from streams.tools.processes import free_ports

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: tests/support/__init__.py


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    return free_ports(1)[0]


def private_stack_settings(tmp_path: Path, brokers: int = 1) -> Settings:
    """Settings for Kafka node(s), Redis and a worker of this test's own, on fresh ports under
    tmp_path (nothing started)."""
    *broker_ports, redis_port, web_port = free_ports(brokers + 2)
    return dataclasses.replace(
        Settings(),
        broker=",".join(f"kafka://127.0.0.1:{port}" for port in broker_ports),
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        web_port=web_port,
        data_dir=tmp_path / "data",
        stack_dir=tmp_path / "stack",
        stack_broker_jit="client",  # brokers living minutes (streams/tools/kafka_server)
    )
