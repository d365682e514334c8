"""The process runner's signal guard, without any process started."""

from __future__ import annotations

import signal

from streams.tools.processes import uninterrupted_stopping


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
