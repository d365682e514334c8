"""The process runner's signal guard and port chooser, without any process started."""

from __future__ import annotations

import random
import signal
import socket
from pathlib import Path

import pytest

from streams.tools.processes import (LOWEST_CHOSEN_PORT, ProcessError, free_ports,
                                     uninterrupted_stopping)


def test_interrupts_while_stopping_are_reported_not_raised_and_the_handlers_come_back() -> None:
    said: list[str] = []
    # Ctrl-C as at a terminal (a suite run as a shell's background job inherits it ignored)
    outside = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        with uninterrupted_stopping(said.append, "the broker"):
            signal.raise_signal(signal.SIGINT)  # its handler has run when this returns
            signal.raise_signal(signal.SIGTERM)
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        signal.signal(signal.SIGINT, outside)
    assert said == ["still stopping the broker"] * 2


def test_an_ignored_signal_stays_ignored_while_stopping() -> None:
    said: list[str] = []
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with uninterrupted_stopping(said.append, "the broker"):
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert said == []


def ephemeral_from(tmp_path: Path, first: int) -> Path:
    path = tmp_path / "ip_local_port_range"
    path.write_text(f"{first}\t60999\n")
    return path


def test_free_ports_lie_below_the_ephemeral_range_and_are_distinct(tmp_path: Path) -> None:
    # Regression: a worker's web port came from bind(0), inside the ephemeral range, and a
    # Kafka client's outgoing connection took it before the worker bound it (CI, stop 46).
    ports = free_ports(20, ephemeral_range=ephemeral_from(tmp_path, 32768))
    assert len(set(ports)) == 20
    assert all(LOWEST_CHOSEN_PORT <= port < 32768 for port in ports)
    for port in ports:
        with socket.socket() as server:
            server.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_not_chosen(tmp_path: Path) -> None:
    (held,) = free_ports(1)
    ephemeral = ephemeral_from(tmp_path, 32768)

    class HeldPortFirst(random.Random):
        def shuffle(self, x: list[int]) -> None:  # type: ignore[override]
            x.sort(key=lambda port: port != held)

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", held))
        listener.listen()
        ports = free_ports(3, rng=HeldPortFirst(), ephemeral_range=ephemeral)
    assert held not in ports and len(set(ports)) == 3


def test_too_few_ports_below_the_range_is_a_clear_error(tmp_path: Path) -> None:
    one_candidate = ephemeral_from(tmp_path, LOWEST_CHOSEN_PORT + 1)
    with pytest.raises(ProcessError, match="below the ephemeral range"):
        free_ports(2, ephemeral_range=one_candidate)


def test_a_range_starting_low_leaves_the_choice_to_the_kernel(tmp_path: Path) -> None:
    ports = free_ports(3, ephemeral_range=ephemeral_from(tmp_path, 1024))
    assert len(set(ports)) == 3 and all(port > 0 for port in ports)
