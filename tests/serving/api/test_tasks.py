"""Guide tasks (客户SOP) through the API on the real broker and Redis: the to-do list and its
pages, marking a task done (the interaction.task_done event on the member's partition; refused
requests write nothing), the task insights, the `task` events of the feed, who may see what,
and every JSON body against the OpenAPI document."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import aiohttp
import orjson
import pytest
from jsonschema import Draft202012Validator

from schemas.decode import decode_event
from schemas.events import TaskDone
from streams.platform.event_writer import EventWriter, build_event
from streams.platform.kafka_clients import kafka_producer
from streams.platform.partitioning import partition_for
from streams.platform.security import kafka_client_kwargs
from streams.platform.topics import topic_names
from streams.serving.redis_store import RedisProfileStore
from tests.serving.api.test_openapi_conformance import DOCUMENT, REGISTRY, URI
from tests.support.api import LI, OPERATOR, ZHANG, api_settings, bearer, open_feed, running_api
from tests.support.kafka import create_topics, read_topic, running_worker, values_cover
from tests.support.task_records import closed, make_task

pytestmark = pytest.mark.e2e

CST = timezone(timedelta(hours=8))
NOW = datetime(2024, 3, 10, 12, tzinfo=CST)


def conforms(method: str, template: str, status: int, body: Any) -> None:
    schema = DOCUMENT["paths"][template][method]["responses"][str(status)]["content"][
        "application/json"]["schema"]
    validator = Draft202012Validator({"$ref": f"{URI}{schema['$ref']}"}, registry=REGISTRY,
                                     format_checker=Draft202012Validator.FORMAT_CHECKER)
    errors = [e.message for e in validator.iter_errors(body)]
    assert not errors, f"{method.upper()} {template} {status}: {errors[:3]}"


def opened(n: int, guide: str, days_ago: float, due_days: float) -> dict[str, Any]:
    return make_task(f"M{n}", guide, change_id=f"c{n}", due_days=due_days,
                     opened_at=(NOW - timedelta(days=days_ago)).isoformat())


# zhang: six open tasks (two due at the same moment), three closed; li: one open task.
ZHANG_OPEN = [opened(n, "zhang", 2, due) for n, due in enumerate([3, 1, 5, 1, 4, 2.5])]
ZHANG_CLOSED = [closed(opened(10, "zhang", 6, 3), "done", after_days=2,
                       converted_at=(NOW - timedelta(days=1)).isoformat()),
                closed(opened(11, "zhang", 6, 3), "lapsed", after_days=1),
                closed(opened(12, "zhang", 9, 3), "done", after_days=5)]
LI_OPEN = [opened(20, "li", 1, 2)]


@pytest.fixture
async def tasks_api(stack):
    settings = api_settings(stack)
    await create_topics(settings)
    async with RedisProfileStore(settings.redis_url) as store:
        await store.write_batch((), tasks=ZHANG_OPEN + ZHANG_CLOSED + LI_OPEN)
    async with running_api(settings, clock=NOW.timestamp) as base, \
            aiohttp.ClientSession(base) as session:
        yield settings, session


async def get(session: aiohttp.ClientSession, path: str, token: str | None) -> tuple[int, Any]:
    async with session.get(path, headers=bearer(token) if token else {}) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


async def post_done(session: aiohttp.ClientSession, guide: str, task_id: str,
                    token: str | None, body: Any = None) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else b"" if body is None else orjson.dumps(body)
    headers = {**(bearer(token) if token else {}), "Content-Type": "application/json"}
    async with session.post(f"/guides/{guide}/tasks/{task_id}/done", data=data,
                            headers=headers) as response:
        assert response.content_type == "application/json", await response.text()
        return response.status, await response.json()


def due_order(tasks: list[dict[str, Any]]) -> list[str]:
    return [t["task_id"] for t in sorted(tasks, key=lambda t: (t["due_at"], t["task_id"]))]


async def test_the_to_do_list_runs_due_first_a_page_at_a_time(tasks_api):
    _, api = tasks_api
    ids, cursor, pages = [], None, 0
    while True:
        query = "?limit=4" + (f"&cursor={cursor}" if cursor else "")
        status, body = await get(api, f"/guides/zhang/tasks{query}", ZHANG)
        assert status == 200, body
        conforms("get", "/guides/{guide}/tasks", 200, body)
        assert body["guide"] == "zhang" and body["status"] == "open"
        ids += [t["task_id"] for t in body["tasks"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert (ids, pages) == (due_order(ZHANG_OPEN), 2)
    status, body = await get(api, "/guides/zhang/tasks?status=closed", ZHANG)
    assert [t["task_id"] for t in body["tasks"]] == [
        t["task_id"] for t in sorted(ZHANG_CLOSED, key=lambda t: t["closed_at"], reverse=True)]
    status, body = await get(api, "/guides/zhang/tasks?status=done", ZHANG)
    assert {t["status"] for t in body["tasks"]} == {"done"} and len(body["tasks"]) == 2
    first = body["tasks"][0]
    assert first["name_zh"] == "邀请首单" and first["evidence"] and first["script_zh"]
    # An operator sees any guide's list; li's list holds only li's task.
    status, body = await get(api, "/guides/li/tasks", OPERATOR)
    assert status == 200 and [t["task_id"] for t in body["tasks"]] == [LI_OPEN[0]["task_id"]]


REFUSED_READS = [
    ("/guides/li/tasks", ZHANG, 403, "forbidden"),
    ("/guides/zhang/tasks", None, 401, "unauthorized"),
    ("/guides/zhang/tasks?status=pending", ZHANG, 400, "bad_request"),
    ("/guides/zhang/tasks?limit=0", ZHANG, 400, "bad_request"),
    ("/guides/zhang/tasks?limit=many", ZHANG, 400, "bad_request"),
    ("/guides/zhang/tasks?cursor=not-a-cursor", ZHANG, 400, "bad_request"),
    ("/insights/tasks?guide=li", ZHANG, 403, "forbidden"),
    ("/insights/tasks?at=yesterday", OPERATOR, 400, "bad_request"),
    ("/insights/tasks?at=2024-03-10T12:00:00", OPERATOR, 400, "bad_request"),
]


async def test_refused_reads_say_why(tasks_api):
    _, api = tasks_api
    for path, token, status, error in REFUSED_READS:
        got, body = await get(api, path, token)
        assert (got, body["error"]) == (status, error), (path, body)
        template = path.split("?")[0].replace("/li/", "/{guide}/").replace("/zhang/", "/{guide}/")
        conforms("get", template, status, body)


async def test_marking_done_writes_one_event_on_the_members_partition(tasks_api):
    settings, api = tasks_api
    task = ZHANG_OPEN[2]
    status, body = await post_done(api, "zhang", task["task_id"], ZHANG,
                                   {"note": "已电话联系，周末到店"})
    assert status == 202, body
    conforms("post", "/guides/{guide}/tasks/{task_id}/done", 202, body)
    # An empty body is no note; an operator marks on the guide's behalf.
    status, quiet = await post_done(api, "zhang", ZHANG_OPEN[0]["task_id"], OPERATOR)
    assert status == 202, quiet
    accepted = {body["event_id"]: (task, "已电话联系，周末到店"),
                quiet["event_id"]: (ZHANG_OPEN[0], None)}
    refused = [
        (("zhang", "f" * 32, ZHANG, {}), 404, "not_found"),
        (("li", LI_OPEN[0]["task_id"], ZHANG, {}), 403, "forbidden"),
        (("zhang", LI_OPEN[0]["task_id"], ZHANG, {}), 403, "forbidden"),
        (("zhang", ZHANG_CLOSED[0]["task_id"], ZHANG, {}), 409, "not_open"),
        (("zhang", task["task_id"], ZHANG, {"note": "长" * 501}), 400, "bad_request"),
        (("zhang", task["task_id"], ZHANG, {"memo": "x"}), 400, "bad_request"),
        (("zhang", task["task_id"], ZHANG, b"{not json"), 400, "bad_request"),
        (("zhang", task["task_id"], ZHANG, b" " * 5000), 413, "too_large"),
        (("zhang", task["task_id"], None, {}), 401, "unauthorized"),
    ]
    for args, status, error in refused:
        got, refusal = await post_done(api, *args)
        assert (got, refusal["error"]) == (status, error), (args[:2], refusal)
        conforms("post", "/guides/{guide}/tasks/{task_id}/done", status, refusal)

    names = topic_names(settings)
    records = await read_topic(settings.broker_bootstrap, names.interactions,
                               until=values_cover("event_id", set(accepted)), timeout=30,
                               idle_s=3)
    assert len(records) == 2, "a refused request must write nothing"
    for record in records:
        event = decode_event(record.value)
        expected_task, note = accepted[event.event_id]
        assert isinstance(event, TaskDone)
        assert (event.member_id, event.task_id, event.guide_id, event.note) == (
            expected_task["member_id"], expected_task["task_id"], "zhang", note)
        assert record.key == event.member_id.encode()
        assert record.partition == partition_for(event.member_id, settings.partitions)


async def test_insights_give_completion_and_conversion_per_guide(tasks_api):
    _, api = tasks_api
    at = "2024-03-10T12:00:00%2B08:00"
    status, mine = await get(api, f"/insights/tasks?at={at}", ZHANG)
    assert status == 200, mine
    conforms("get", "/insights/tasks", 200, mine)
    assert mine["at"] == "2024-03-10T12:00:00+08:00"
    [zhang] = mine["guides"]
    week, month = zhang["windows"]
    # Week (03-03 12:00, 03-10 12:00]: opened the six open ones, 10 and 11; 10 done (and
    # converted), 11 lapsed, 12 done on 03-06; open and past due: the two due on 03-09.
    assert (week["days"], week["opened"], week["done"], week["lapsed"], week["expired"],
            week["open_past_due"], week["converted"]) == (7, 8, 2, 1, 0, 2, 1)
    assert week["completion_rate"] == round(2 / 5, 4) and week["conversion_rate"] == 0.5
    assert (month["days"], month["opened"]) == (30, 9)
    status, every = await get(api, "/insights/tasks?at=2024-03-10T12:00:00+08:00", OPERATOR)
    assert [g["guide"] for g in every["guides"]] == ["li", "zhang"]
    assert every["guides"][1] == zhang
    status, one = await get(api, f"/insights/tasks?guide=li&at={at}", OPERATOR)
    assert [g["guide"] for g in one["guides"]] == ["li"]
    assert one["guides"][0]["windows"][0]["completion_rate"] is None  # nothing due yet
    # No `at`: the windows end now, by the API's clock.
    assert await get(api, "/insights/tasks", ZHANG) == (200, mine)


async def test_task_changes_reach_their_guides_feed_as_task_events(tasks_api):
    settings, api = tasks_api
    names = topic_names(settings)
    producer = kafka_producer(settings.broker_bootstrap)
    await producer.start()
    try:
        async with open_feed(api, "/feed", ZHANG) as zhang_feed, \
                open_feed(api, "/feed", LI) as li_feed:
            new = opened(30, "zhang", 0, 3)
            theirs = opened(31, "li", 0, 3)
            for record in (theirs, new, closed(new, "lapsed")):
                await producer.send_and_wait(names.task_changes,
                                             key=record["member_id"].encode(),
                                             value=orjson.dumps(record))
            first, second = await zhang_feed.events(2, timeout=15)
            assert (first.type, first.data) == ("task", new)
            assert (second.type, second.data["status"]) == ("task", "lapsed")
            assert "k" in (zhang_feed.last_id or "")
            only = await li_feed.next_event(timeout=15)
            assert (only.type, only.data["task_id"]) == ("task", theirs["task_id"])
    finally:
        await producer.stop()


# --- the whole loop: worker -> tasks.changes -> sink -> API -> done -> worker -> API ---------


async def listed(api: aiohttp.ClientSession, status: str, worker: Any,
                 until: Any, timeout: float = 120) -> list[dict[str, Any]]:
    """GET /guides/zhang/tasks?status= until `until(tasks)` holds."""
    deadline = time.monotonic() + timeout
    while True:
        code, body = await get(api, f"/guides/zhang/tasks?status={status}", ZHANG)
        if code == 200 and until(body["tasks"]):
            return body["tasks"]
        assert worker.alive(), worker.log_tail()
        assert time.monotonic() < deadline, f"not listed within {timeout} s: {body}"
        await asyncio.sleep(0.2)


@pytest.mark.slow
async def test_a_task_the_worker_opens_is_listed_and_marking_it_done_closes_it(stack, tmp_path):
    settings = api_settings(stack)
    await create_topics(settings)
    member, now = "T1", datetime.now(timezone.utc)
    with running_worker(settings, tmp_path) as worker, \
            running_worker(settings, tmp_path, name="redis-sink", command=("redis-sink",)):
        async with EventWriter(settings.broker_bootstrap, settings.partitions,
                               topic_names(settings), kafka_client_kwargs(settings)) as writer:
            # Zhang's WeCom contact, then a member for 33 days who never ordered: on the wall
            # clock the 31-day timer fires at once, new_member_no_order_31d opens 邀请首单.
            await writer.write([
                build_event("interaction.wecom_friend_added", member, channel="wecom",
                            guide_id="zhang", external_userid="wmT1",
                            occurred_at=now - timedelta(days=33, hours=1)),
                build_event("interaction.member_joined", member, channel="tmall",
                            occurred_at=now - timedelta(days=33))])
        async with running_api(settings) as base, aiohttp.ClientSession(base) as api:
            [task] = await listed(api, "open", worker, lambda tasks: tasks)
            assert (task["member_id"], task["kind"], task["name_zh"]) == (
                member, "invite_first_order", "邀请首单")
            status, body = await post_done(api, "zhang", task["task_id"], ZHANG,
                                           {"note": "已发新人券"})
            assert status == 202, body
            [done] = await listed(api, "done", worker, lambda tasks: tasks)
            assert (done["task_id"], done["closed_by"], done["note"]) == (
                task["task_id"], "zhang", "已发新人券")
            assert await listed(api, "open", worker, lambda tasks: not tasks) == []
            status, insights = await get(api, "/insights/tasks", ZHANG)
            week = insights["guides"][0]["windows"][0]
            assert (week["opened"], week["done"], week["completion_rate"]) == (1, 1, 1.0)
            # Done again: the task is no longer open.
            status, body = await post_done(api, "zhang", task["task_id"], ZHANG)
            assert (status, body["error"]) == (409, "not_open")
