"""Fixtures for tests that need the real broker and Redis.

Every test gets a stack of its own (fresh ports, its own in-memory broker): a fresh stack answers
in about 0.1 s, so sharing one would buy nothing and let tests meet through leftover topics and
keys. A missing broker or redis-server is an error, never a skip: the StackError says how to
install it. The event loop is per test (asyncio_default_fixture_loop_scope in pyproject.toml),
matching the per-test stack.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from streams.settings import Settings
from streams.stack import EmbeddedStack
from tests.support import private_stack_settings


@pytest.fixture
def stack_settings(tmp_path: Path) -> Settings:
    """Settings for a private stack that is not started."""
    return private_stack_settings(tmp_path)


@pytest.fixture
def embedded_stack(stack_settings: Settings) -> Iterator[EmbeddedStack]:
    """The private stack's controller, not started; whatever it recorded is stopped afterwards."""
    controller = EmbeddedStack(stack_settings)
    try:
        yield controller
    finally:
        controller.down()


@pytest.fixture
def stack(embedded_stack: EmbeddedStack) -> Settings:
    """A running private broker and Redis; the Settings that point at them."""
    embedded_stack.up()
    return embedded_stack.settings
