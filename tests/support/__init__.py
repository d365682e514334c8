"""Helpers shared by the test tiers: free loopback ports and settings for a private stack."""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

from streams.settings import Settings


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listened on a moment ago."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the probe sockets stay bound until all are chosen."""
    probes = []
    try:
        for _ in range(count):
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def private_stack_settings(tmp_path: Path) -> Settings:
    """Settings for a broker, Redis and worker of this test's own, on fresh ports under tmp_path."""
    broker_port, redis_port, web_port = free_ports(3)
    return dataclasses.replace(
        Settings(),
        broker=f"kafka://127.0.0.1:{broker_port}",
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        web_port=web_port,
        data_dir=tmp_path / "data",
        stack_dir=tmp_path / "stack",
    )
