"""Erasure end to end: `tagstream erase` -> worker -> a changelog tombstone, Redis
sink, API, WeCom sync -> the fake WeCom.

Afterwards the member is in no Redis key or index, the API answers 404, their WeCom customer
has none of tagstream's tags, the changelog holds a tombstone, members.erasures holds one
record naming no one, and a later event of the same id starts a new member. Another member
is untouched throughout.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

import aiohttp
import orjson
import pytest
import redis.asyncio as aioredis

from schemas.erasure import member_hash
from streams.ops.replay import produce_raw
from streams.platform.partitioning import partition_for
from streams.platform.topics import members_changelog, topic_names
from tests.factories import raw_event
from tests.support import REPO_ROOT
from tests.support.api import OPERATOR, api_settings, bearer, running_api
from tests.support.kafka import WorkerProcess, create_topics, read_topic, running_worker
from tests.support.wecom_fake import FakeWeCom
from tests.support.wecom_fake import wecom_fake  # noqa: F401 - the fixture
from tests.support.wecom_sync import start_service, sync_settings

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

GONE, KEPT = "M-ERASE-1", "M-KEEP-2"


def history(member: str, guide: str) -> list[dict]:
    start = datetime.now(timezone(timedelta(hours=8))) - timedelta(minutes=30)
    at = lambda minutes: (start + timedelta(minutes=minutes)).isoformat()  # noqa: E731
    return [raw_event("interaction.member_joined", at(0), member),
            raw_event("order.paid", at(1), member, amount_fen=120_000),
            raw_event("order.paid", at(2), member, amount_fen=90_000),
            raw_event("interaction.wecom_friend_added", at(3), member, channel="wecom",
                      guide_id=guide, external_userid=f"wm{member}")]


async def produce(settings, events: list[dict]) -> None:
    names = topic_names(settings)
    for event in events:
        topic = names.orders if event["event_type"].startswith("order") else names.interactions
        await produce_raw(settings.broker_bootstrap, topic,
                          [(event["member_id"].encode(), orjson.dumps(event))],
                          partition=partition_for(event["member_id"], settings.partitions))


async def until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        await asyncio.sleep(0.2)


async def redis_mentions(url: str, member_id: str) -> list[str]:
    """Every key that names the member or holds them (keys, set and hash members)."""
    client = aioredis.from_url(url)
    found = []
    try:
        async for key in client.scan_iter():
            name = key.decode()
            kind = (await client.type(key)).decode()
            if member_id in name:
                found.append(name)
            elif kind == "zset" and await client.zscore(key, member_id) is not None:
                found.append(name)
            elif kind == "set" and await client.sismember(key, member_id):
                found.append(name)
            elif kind == "hash" and member_id.encode() in b"".join(
                    k + v for k, v in (await client.hgetall(key)).items()):
                found.append(name)
    finally:
        await client.aclose()
    return found


async def test_erase_removes_the_member_everywhere_and_a_later_event_starts_anew(
        stack, wecom_fake: FakeWeCom, tmp_path) -> None:
    settings = api_settings(sync_settings(stack, wecom_fake))
    names = topic_names(settings)
    await create_topics(settings)
    with running_worker(settings, tmp_path) as worker:
        sink = WorkerProcess(settings, tmp_path / "sink.log", ("redis-sink",)).start()
        service = await start_service(settings)
        try:
            async with running_api(settings) as base, aiohttp.ClientSession(base) as http:
                async def member(member_id: str) -> tuple[int, dict]:
                    async with http.get(f"/members/{member_id}",
                                        headers=bearer(OPERATOR)) as response:
                        return response.status, await response.json()

                await produce(settings, history(GONE, "zhang") + history(KEPT, "li"))
                pair = ("zhang", f"wm{GONE}")
                await until(lambda: _ready(member, GONE), 120, "the member is served")
                await until(lambda: _has(wecom_fake, pair), 120, "WeCom has the member's tags")
                assert await redis_mentions(settings.redis_url, GONE)

                done = subprocess.run(
                    [sys.executable, "-m", "streams.ops.cli", "erase", GONE,
                     "--request-id", "PIPL-7"], cwd=REPO_ROOT, capture_output=True, text=True,
                    env={**os.environ, **settings.to_env()}, timeout=60)
                assert done.returncode == 0, done.stderr
                assert "erasure of" in done.stdout

                await until(lambda: _status_is(member, GONE, 404), 120, "the API answers 404")
                await until(lambda: _empty(wecom_fake, pair), 120, "the WeCom pair is bare")
                assert await redis_mentions(settings.redis_url, GONE) == []
                assert (await member(KEPT))[0] == 200 and _has_now(wecom_fake, ("li", f"wm{KEPT}"))

                erasures = await read_topic(settings.broker_bootstrap, names.erasures,
                                            worker=worker, until=lambda new: bool(new),
                                            timeout=60)
                [record] = [orjson.loads(r.value) for r in erasures]
                assert record["member_hash"] == member_hash(GONE)
                assert record["request_id"] == "PIPL-7" and record["state_found"]
                assert GONE.encode() not in erasures[0].value and erasures[0].key != GONE.encode()
                changelog = await read_topic(
                    settings.broker_bootstrap, members_changelog(settings),
                    worker=worker, until=lambda new: False, timeout=30, idle_s=3)
                assert [r.value for r in changelog if r.key == GONE.encode()][-1] is None

                # the same id later: a new member, none of the erased history
                await produce(settings, [raw_event(
                    "order.paid", datetime.now(timezone.utc).isoformat(), GONE,
                    amount_fen=500)])
                status, profile = await until(lambda: _ready(member, GONE), 120,
                                              "the new member is served")
                assert profile["joined_at"] is None and profile["orders"]["count"] == 1
                assert profile["guides"] == []
        finally:
            await service.stop()
            sink.stop()


async def _ready(member, member_id):
    status, body = await member(member_id)
    return (status, body) if status == 200 else None


async def _status_is(member, member_id, status):
    return (await member(member_id))[0] == status


def _has_now(fake: FakeWeCom, pair) -> bool:
    return bool(fake.state_by_name().get(pair))


async def _has(fake: FakeWeCom, pair) -> bool:
    return _has_now(fake, pair)


async def _empty(fake: FakeWeCom, pair) -> bool:
    return not _has_now(fake, pair)
