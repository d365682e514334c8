"""POST /members/{member_id}/tags (导购打标) on the real broker and Redis.

First the API alone (profiles put into Redis): who may mark whom, which marks are refused and
why, and the `interaction.tag_marked` event a mark becomes on the member's partition of
events.interactions (a refused request writes nothing). Then the whole loop with a real worker
and the Redis sink: the mark shows in the profile GET /members/{id} serves, with its source and
its sharing, and a removal takes it away.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone
from typing import Any, Callable

import aiohttp
import orjson
import pytest

from schemas.decode import decode_event
from schemas.events import TagMarked
from streams.platform.event_writer import EventWriter, build_event
from streams.platform.partitioning import partition_for
from streams.platform.security import kafka_client_kwargs
from streams.platform.settings import Settings
from streams.platform.topics import topic_names
from streams.serving.redis_store import RedisProfileStore
from tests.support.api import LI, OPERATOR, ZHANG, api_settings, bearer, running_api
from tests.support.kafka import create_topics, read_topic, running_worker, values_cover
from tests.support.profiles import make_profile

pytestmark = pytest.mark.e2e


async def post_mark(session: aiohttp.ClientSession, member_id: str, token: str | None,
                    body: Any) -> tuple[int, dict[str, Any]]:
    """(status, JSON body) of one mark; `body` is sent as JSON unless it is bytes."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {**(bearer(token) if token else {}), "Content-Type": "application/json"}
    async with session.post(f"/members/{member_id}/tags", data=data,
                            headers=headers) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()



async def interactions(settings: Settings, event_ids: set[str]) -> list[Any]:
    """Every record of events.interactions, read until all of `event_ids` are there."""
    records = await read_topic(settings.broker_bootstrap, topic_names(settings).interactions,
                               until=values_cover("event_id", event_ids), timeout=30)
    found = {orjson.loads(r.value)["event_id"] for r in records}
    assert event_ids <= found, f"missing on events.interactions: {event_ids - found}"
    return records


@pytest.fixture
async def marking(stack):
    settings = api_settings(stack)
    await create_topics(settings)
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply([
            make_profile("M1", tags=["member"], guides=["zhang"]),
            make_profile("M2", tags=["member"], guides=["li"]),
            make_profile("M3", tags=["member", "repeat_buyer"], guides=["zhang", "li"]),
        ])
    async with running_api(settings) as base, aiohttp.ClientSession(base) as session:
        yield settings, session


async def test_a_guide_marks_their_own_member_and_the_event_is_on_the_members_partition(
        marking):
    settings, api = marking
    before = datetime.now(timezone.utc)
    marks = [("M1", ZHANG, {"tag": "vip_banquet", "op": "added"}),
             ("M1", ZHANG, {"tag": "likes_jiangxiang", "op": "added", "name_zh": "爱喝酱香"}),
             ("M3", LI, {"tag": "prefers_call", "op": "added"}),
             ("M3", ZHANG, {"tag": "gift_buyer", "op": "removed"})]
    accepted = {}
    for member, token, body in marks:
        status, answer = await post_mark(api, member, token, body)
        assert status == 202, answer
        assert set(answer) == {"event_id", "member_id", "tag", "op", "source"}
        assert (answer["member_id"], answer["tag"], answer["op"], answer["source"]) == \
            (member, body["tag"], body["op"], "guide")
        accepted[answer["event_id"]] = (member, token, body)
    assert len(accepted) == len(marks)  # one event id per mark

    records = await interactions(settings, set(accepted))
    assert len(records) == len(marks)  # nothing but the marks on the topic
    guide_of = {ZHANG: "zhang", LI: "li"}
    for record in records:
        event = orjson.loads(record.value)
        member, token, body = accepted[event["event_id"]]
        assert record.key == member.encode()
        assert record.partition == partition_for(member, settings.partitions)
        assert {k: v for k, v in event.items() if k != "occurred_at"} == {
            "event_id": event["event_id"], "event_type": "interaction.tag_marked",
            "member_id": member, "channel": "guide_api", "schema_version": 1,
            "tag": body["tag"], "op": body["op"], "source": "guide",
            "guide_id": guide_of[token], **({"name_zh": body["name_zh"]}
                                            if "name_zh" in body else {})}
        occurred = datetime.fromisoformat(event["occurred_at"])
        assert before <= occurred <= datetime.now(timezone.utc)
        decoded = decode_event(record.value)  # what the worker will decode
        assert isinstance(decoded, TagMarked) and decoded.guide_id == guide_of[token]


async def test_a_guide_may_not_mark_another_guides_member(marking):
    settings, api = marking
    for member, token in (("M2", ZHANG), ("M1", LI), ("NOPE", ZHANG)):
        status, answer = await post_mark(api, member, token,
                                         {"tag": "vip_banquet", "op": "added"})
        # an unknown member is 403 too: a guide learns nothing of members not theirs
        assert (status, answer["error"]) == (403, "forbidden"), (member, answer)
    status, answer = await post_mark(api, "M3", LI, {"tag": "vip_banquet", "op": "added"})
    assert status == 202, answer  # bound to both guides
    records = await interactions(settings, {answer["event_id"]})
    assert [orjson.loads(r.value)["member_id"] for r in records] == ["M3"]


async def test_an_operator_marks_anyone_as_an_import_and_gets_404_for_no_member(marking):
    settings, api = marking
    status, answer = await post_mark(api, "NOPE", OPERATOR, {"tag": "vip_banquet", "op": "added"})
    assert (status, answer["error"]) == (404, "not_found"), answer
    accepted = {}
    for member in ("M1", "M2"):
        status, answer = await post_mark(api, member, OPERATOR,
                                         {"tag": "gift_buyer", "op": "added"})
        assert status == 202, answer
        assert answer["source"] == "import" and answer["member_id"] == member
        accepted[answer["event_id"]] = member
    records = await interactions(settings, set(accepted))
    assert len(records) == 2
    for record in records:
        event = orjson.loads(record.value)
        assert event["member_id"] == accepted[event["event_id"]]
        assert record.partition == partition_for(event["member_id"], settings.partitions)
        assert event["source"] == "import" and "guide_id" not in event
        assert (event["tag"], event["op"]) == ("gift_buyer", "added")


async def test_rule_tags_undeclared_tags_without_a_name_and_bad_bodies_are_refused(marking):
    settings, api = marking
    refused: list[tuple[Any, int, str]] = [
        ({"tag": "high_value", "op": "added"}, 400, "rule_tag"),
        ({"tag": "member", "op": "removed"}, 400, "rule_tag"),
        ({"tag": "tier_gold", "op": "added", "name_zh": "金卡"}, 400, "rule_tag"),
        ({"tag": "likes_jiangxiang", "op": "added"}, 400, "name_required"),
        (b"", 400, "bad_request"),
        (b"not json", 400, "bad_request"),
        (b"[]", 400, "bad_request"),
        (b'{"tag": "vip_banquet"}', 400, "bad_request"),  # no op
        ({"op": "added"}, 400, "bad_request"),  # no tag
        ({"tag": "vip_banquet", "op": "toggled"}, 400, "bad_request"),
        ({"tag": "vip_banquet", "op": "added", "guide_id": "li"}, 400, "bad_request"),
        ({"tag": "vip_banquet", "op": "added", "source": "wecom"}, 400, "bad_request"),
        ({"tag": "bad tag", "op": "added", "name_zh": "x"}, 400, "bad_request"),
        ({"tag": "", "op": "added", "name_zh": "x"}, 400, "bad_request"),
        ({"tag": "new_tag", "op": "added", "name_zh": "名" * 31}, 400, "bad_request"),
        ({"tag": "new_tag", "op": "added", "name_zh": ""}, 400, "bad_request"),
        ({"tag": 5, "op": "added"}, 400, "bad_request"),
    ]
    for body, want_status, want_code in refused:
        status, answer = await post_mark(api, "M1", ZHANG, body)
        assert (status, answer["error"]) == (want_status, want_code), (body, answer)
        assert answer["message"]
    for token in (None, "not-a-configured-token-at-all"):
        status, answer = await post_mark(api, "M1", token, {"tag": "vip_banquet", "op": "added"})
        assert status == 401, answer

    # what is allowed: an undeclared tag taken off needs no name
    status, answer = await post_mark(api, "M1", ZHANG, {"tag": "likes_jiangxiang",
                                                       "op": "removed"})
    assert status == 202, answer
    records = await interactions(settings, {answer["event_id"]})
    assert [orjson.loads(r.value)["event_id"] for r in records] == [answer["event_id"]], \
        "a refused mark wrote an event"


async def test_an_oversize_mark_is_413_with_the_json_error_body(marking):
    settings, api = marking
    body = orjson.dumps({"tag": "new_tag", "op": "added", "name_zh": "x" * 5000})
    async with api.post("/members/M1/tags", data=body,
                        headers={**bearer(ZHANG), "Content-Type": "application/json"}) as response:
        status, text = response.status, await response.text()
    assert status == 413, (status, text)
    assert orjson.loads(text)["error"] == "too_large"


# --- the whole loop: API -> events.interactions -> worker -> members.profiles -> Redis -> API -----


async def served_profile(api: aiohttp.ClientSession, member_id: str, token: str,
                         until: Callable[[dict[str, Any]], bool], worker: Any,
                         timeout: float = 60) -> dict[str, Any]:
    """GET /members/{member_id} until `until(profile)` holds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        async with api.get(f"/members/{member_id}", headers=bearer(token)) as response:
            last = (response.status, await response.json())
        if last[0] == 200 and until(last[1]):
            return last[1]
        assert worker.alive(), worker.log_tail()
        assert time.monotonic() < deadline, f"not served within {timeout} s; last: {last}"
        await asyncio.sleep(0.2)


def tags_of(profile: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {tag["id"]: tag for tag in profile["tags"]}


@pytest.mark.slow
async def test_a_mark_reaches_the_served_profile_and_a_removal_takes_it_away(stack, tmp_path):
    settings = api_settings(stack)
    await create_topics(settings)
    member = "L1"
    with running_worker(settings, tmp_path) as worker, \
            running_worker(settings, tmp_path, name="redis-sink", command=("redis-sink",)) as sink:
        async with EventWriter(settings.broker_bootstrap, settings.partitions,
                               topic_names(settings), kafka_client_kwargs(settings)) as writer:
            await writer.write([
                build_event("interaction.member_joined", member, channel="tmall"),
                build_event("interaction.wecom_friend_added", member, channel="wecom",
                            guide_id="zhang", external_userid="wmL1")])
        async with running_api(settings) as base, aiohttp.ClientSession(base) as api:
            profile = await served_profile(
                api, member, OPERATOR, lambda p: [g["userid"] for g in p["guides"]] == ["zhang"],
                worker, timeout=180)
            assert "vip_banquet" not in tags_of(profile)

            for token, body in ((ZHANG, {"tag": "vip_banquet", "op": "added"}),
                                (ZHANG, {"tag": "likes_jiangxiang", "op": "added",
                                         "name_zh": "爱喝酱香"}),
                                (OPERATOR, {"tag": "gift_buyer", "op": "added"})):
                status, answer = await post_mark(api, member, token, body)
                assert status == 202, answer
            profile = await served_profile(
                api, member, ZHANG,
                lambda p: {"vip_banquet", "likes_jiangxiang", "gift_buyer"} <= set(tags_of(p)),
                worker)
            held = tags_of(profile)
            assert {k: held["vip_banquet"][k] for k in
                    ("name_zh", "family", "source", "share", "evidence")} == {
                "name_zh": "宴席客户", "family": "marked", "source": "guide", "share": "all",
                "evidence": {"by": "guide", "guide": "zhang"}}
            assert {k: held["likes_jiangxiang"][k] for k in
                    ("name_zh", "family", "source", "share", "evidence")} == {
                "name_zh": "爱喝酱香", "family": "marked", "source": "guide", "share": "own",
                "evidence": {"by": "guide", "guide": "zhang", "name_zh": "爱喝酱香"}}
            assert (held["gift_buyer"]["source"], held["gift_buyer"]["share"]) == ("import",
                                                                                 "all")
            assert held["member"]["source"] == "rule"  # rule tags untouched

            status, answer = await post_mark(api, member, ZHANG,
                                             {"tag": "vip_banquet", "op": "removed"})
            assert status == 202, answer
            profile = await served_profile(api, member, ZHANG,
                                           lambda p: "vip_banquet" not in tags_of(p), worker)
            assert {"likes_jiangxiang", "gift_buyer", "member"} <= set(tags_of(profile))
        assert worker.alive() and sink.alive(), sink.log_tail()
