"""`tagstream api` builds its app before any event loop runs (aiohttp's run_app starts the loop
afterwards): nothing the app holds may need a running loop when it is made. Regression: the
event writer of the guide marks made its Kafka producer at construction, so `tagstream api`
exited at start with "The object should be created within an async function"."""

from __future__ import annotations

import asyncio
import dataclasses

from streams.platform.settings import Settings
from streams.serving.api.app import create_app
from tests.support import free_ports


def test_the_api_app_is_built_outside_an_event_loop() -> None:
    broker_port, redis_port = free_ports(2)
    settings = dataclasses.replace(Settings(), broker=f"kafka://127.0.0.1:{broker_port}",
                                   redis_url=f"redis://127.0.0.1:{redis_port}/0",
                                   api_tokens="a-guide-token-0123456789=g01")
    try:
        asyncio.get_running_loop()
        raise AssertionError("this test must run with no event loop running")
    except RuntimeError:
        pass

    app = create_app(settings)

    assert app.router["page"] is not None  # built; its clients start with the app
