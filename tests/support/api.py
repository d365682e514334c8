"""Helpers for guide API tests: run the app on a free port, read server-sent events."""

from __future__ import annotations

import asyncio
import dataclasses
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import aiohttp
import orjson
from aiohttp import web

from streams.platform.settings import Settings
from streams.serving.api.app import create_app
from tests.support import free_port

ZHANG = "zhang-token-0123456789abcdef"
LI = "li-token-0123456789abcdef0000"
OPERATOR = "operator-token-0123456789abcd"
TOKENS = f"{ZHANG}=zhang, {LI}=li,{OPERATOR}=*"


def api_settings(settings: Settings) -> Settings:
    return dataclasses.replace(settings, api_tokens=TOKENS, api_port=free_port())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@asynccontextmanager
async def running_api(settings: Settings, **options: Any) -> AsyncIterator[str]:
    """The API for `settings` on 127.0.0.1:<api_port>; yields its base URL once feeds are ready."""
    app = create_app(settings, **options)
    runner = web.AppRunner(app, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.api_port)
    await site.start()
    try:
        from streams.serving.api.app import HUB

        await asyncio.wait_for(app[HUB].ready.wait(), 30)
        yield f"http://127.0.0.1:{settings.api_port}"
    finally:
        await runner.cleanup()


@dataclass
class SseEvent:
    id: str | None
    type: str
    data: Any = None


@dataclass
class SseStream:
    """An open feed: events (with data) and the latest id seen, read as they arrive."""

    response: aiohttp.ClientResponse
    last_id: str | None = None
    ids_seen: list[str] = field(default_factory=list)

    async def next_event(self, timeout: float) -> SseEvent:
        """The next event that carries data; id-only blocks just move `last_id`."""
        event_id, kind, data = None, "message", []
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise asyncio.TimeoutError
            line = await asyncio.wait_for(self.response.content.readline(), left)
            if not line:
                raise EOFError("the feed ended")
            text = line.decode().rstrip("\r\n")
            if text == "":
                if event_id is not None:
                    self.last_id = event_id
                    self.ids_seen.append(event_id)
                if data:
                    return SseEvent(event_id, kind, orjson.loads("\n".join(data)))
                event_id, kind, data = None, "message", []
                continue
            if text.startswith(":"):
                continue
            name, _, value = text.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                event_id = value
            elif name == "event":
                kind = value
            elif name == "data":
                data.append(value)

    async def events(self, count: int, timeout: float) -> list[SseEvent]:
        return [await self.next_event(timeout) for _ in range(count)]


@asynccontextmanager
async def open_feed(session: aiohttp.ClientSession, url: str, token: str,
                    last_event_id: str | None = None) -> AsyncIterator[SseStream]:
    headers = {**bearer(token), "Accept": "text/event-stream"}
    if last_event_id:
        headers["Last-Event-ID"] = last_event_id
    async with session.get(url, headers=headers,
                           timeout=aiohttp.ClientTimeout(total=None, sock_read=None)) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/event-stream")
        stream = SseStream(response)
        yield stream
