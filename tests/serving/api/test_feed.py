"""The guide feed (server-sent events) on the real broker: filtering, live delivery, exact resume."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.platform.topics import TopicNames, topic_names
from streams.serving.api.feed import decode_cursor
from tests.support.api import LI, OPERATOR, ZHANG, api_settings, bearer, open_feed, running_api
from tests.support.kafka import create_topics

pytestmark = pytest.mark.e2e

_ids = itertools.count()


def tag_change(member_id: str, guides: list[str], tag: str = "high_value",
               op: str = "added") -> dict[str, Any]:
    n = next(_ids)
    return {"change_id": f"c{n:06d}", "member_id": member_id, "tag": tag, "op": op,
            "rule_id": tag, "rules_version": "2024-03-01.1", "cause": {"event_id": f"ord-{n}"},
            "evidence": {"spend_fen[365d]": 612000}, "at": "2024-03-01T12:00:00+08:00",
            "guides": [{"userid": g, "external_userid": f"wm-{g}-{member_id}"} for g in guides],
            "name_zh": "高价值", "family": "transaction"}


@dataclass
class ChangeProducer:
    producer: AIOKafkaProducer
    names: TopicNames  # the topics of the test's topic namespace


@pytest.fixture
async def producer(stack):
    await create_topics(stack)
    producer = AIOKafkaProducer(bootstrap_servers=stack.broker_bootstrap, acks="all",
                                linger_ms=1)
    await producer.start()
    yield ChangeProducer(producer, topic_names(stack))
    await producer.stop()


async def send(producer: ChangeProducer, changes: list[dict[str, Any]],
               tiers: bool = False) -> None:
    """To tags.changes, or with `tiers` to tiers.changes."""
    topic = producer.names.tier_changes if tiers else producer.names.tag_changes
    for change in changes:
        await producer.producer.send(topic, key=change["member_id"].encode(),
                                     value=orjson.dumps(change))
    await producer.producer.flush()


def mixed_changes(count: int) -> list[dict[str, Any]]:
    """zhang's, li's, shared and unbound members' changes, interleaved over many partitions."""
    out = []
    for i in range(count):
        out.append(tag_change(f"Z{i % 7}", ["zhang"]))
        out.append(tag_change(f"L{i % 5}", ["li"]))
        if i % 3 == 0:
            out.append(tag_change(f"B{i % 4}", ["zhang", "li"]))
        if i % 4 == 0:
            out.append(tag_change(f"N{i % 3}", []))
    return out


def per_member(changes: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for change in changes:
        out.setdefault(change["member_id"], []).append(change["change_id"])
    return out


def assert_exactly(received: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    ids = [c["change_id"] for c in received]
    assert len(ids) == len(set(ids)), "a change was delivered twice"
    assert set(ids) == {c["change_id"] for c in expected}
    assert per_member(received) == per_member(expected)  # each member's changes in order


async def test_guides_get_only_their_members_changes_live(stack, producer):
    settings = api_settings(stack)
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session, \
            open_feed(session, "/guides/zhang/feed", ZHANG) as zhang, \
            open_feed(session, "/feed", LI) as li, \
            open_feed(session, "/feed", OPERATOR) as operator, \
            open_feed(session, "/guides/li/feed", OPERATOR) as operator_li:
        changes = mixed_changes(30)
        await send(producer, changes)
        # A tier change names its guides as a tag change does: no lookup (Redis holds nothing
        # for Z0 here).
        tier = {"change_id": "tier-1", "member_id": "Z0", "type": "tier.upgraded",
                "from": "silver", "to": "gold", "growth": 5200, "cause": {"event_id": "ord-x"},
                "at": "2024-03-01T12:00:00+08:00",
                "guides": [{"userid": "zhang", "external_userid": "wm-z0"}]}
        await send(producer, [tier], tiers=True)

        def of(guide: str) -> list[dict[str, Any]]:
            return [c for c in changes if guide in {g["userid"] for g in c["guides"]}]

        zhang_events = await zhang.events(len(of("zhang")) + 1, timeout=20)
        assert_exactly([e.data for e in zhang_events if e.type == "tag"], of("zhang"))
        assert [e.data for e in zhang_events if e.type == "tier"] == [tier]
        assert_exactly([e.data for e in await li.events(len(of("li")), timeout=20)], of("li"))
        assert_exactly([e.data for e in await operator_li.events(len(of("li")), timeout=20)],
                       of("li"))
        everything = await operator.events(len(changes) + 1, timeout=20)
        assert_exactly([e.data for e in everything if e.type == "tag"], changes)
        assert [e.data for e in everything if e.type == "tier"] == [tier]
        # Nothing more for zhang: the other guides' changes never arrive.
        with pytest.raises(asyncio.TimeoutError):
            await zhang.next_event(timeout=1.0)


@pytest.mark.parametrize("feed_buffer", [5000, 2], ids=["from-buffer", "from-kafka"])
async def test_resume_with_last_event_id_has_no_gap_and_no_repeat(stack, producer, feed_buffer):
    settings = api_settings(stack)
    async with running_api(settings, feed_buffer=feed_buffer) as base, \
            aiohttp.ClientSession(base) as session:
        first = mixed_changes(40)
        zhang_first = [c for c in first if any(g["userid"] == "zhang" for g in c["guides"])]
        async with open_feed(session, "/guides/zhang/feed", ZHANG) as feed:
            await send(producer, first)
            got = [e.data for e in await feed.events(17, timeout=20)]
            last_id = feed.last_id
        assert last_id is not None and decode_cursor(last_id, topic_names(settings))

        # Missed while away: the rest of the first batch, and more.
        second = mixed_changes(25)
        await send(producer, second)
        expected = zhang_first + [c for c in second
                                  if any(g["userid"] == "zhang" for g in c["guides"])]
        async with open_feed(session, "/guides/zhang/feed", ZHANG, last_id) as feed:
            got += [e.data for e in await feed.events(len(expected) - 17, timeout=20)]
            with pytest.raises(asyncio.TimeoutError):
                await feed.next_event(timeout=1.0)
        assert_exactly(got, expected)


async def test_cursor_moves_past_other_guides_changes(stack, producer):
    settings = api_settings(stack)
    async with running_api(settings, heartbeat_s=0.2) as base, \
            aiohttp.ClientSession(base) as session:
        async with open_feed(session, "/guides/zhang/feed", ZHANG) as feed:
            start = None
            await send(producer, [tag_change(f"L{i}", ["li"]) for i in range(12)])
            with pytest.raises(asyncio.TimeoutError):
                await feed.next_event(timeout=1.5)  # heartbeats only: id-only blocks
            start = decode_cursor(feed.ids_seen[0], topic_names(settings))
            moved = decode_cursor(feed.last_id, topic_names(settings))
        assert sum(moved.values()) - sum(start.values()) == 12
        mine = tag_change("Z1", ["zhang"])
        await send(producer, [mine])
        async with open_feed(session, "/guides/zhang/feed", ZHANG, feed.last_id) as feed:
            assert (await feed.next_event(timeout=10)).data == mine


async def test_a_malformed_last_event_id_is_refused(stack, producer):
    settings = api_settings(stack)
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
        for bad in ("nonsense", "t0=1,x9=2", "t0=-1", "t0=1;r0=2"):
            async with session.get("/feed", headers={**bearer(ZHANG),
                                                     "Last-Event-ID": bad}) as response:
                assert response.status == 400, bad
