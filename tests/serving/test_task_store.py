"""Guide tasks in Redis (streams/serving/task_store.py) against a real redis-server: records and
their indexes, versions, paging in due and closed order, erasure, the insight counts."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import AsyncIterator

import pytest

from streams.platform.settings import Settings
from streams.serving.api.tasks import guide_insights, windows_ending
from streams.serving.redis_store import RedisProfileStore
from streams.serving.task_store import CursorInvalid, WindowCounts, epoch
from tests.support.profiles import make_profile
from tests.support.task_records import closed, make_task

pytestmark = pytest.mark.e2e

CST = timezone(timedelta(hours=8))


@pytest.fixture
async def store(stack: Settings) -> AsyncIterator[RedisProfileStore]:
    async with RedisProfileStore(stack.redis_url) as store:
        yield store


async def zset(store: RedisProfileStore, key: str) -> dict[str, float]:
    return {m.decode(): s for m, s in await store.redis.zrange(key, 0, -1, withscores=True)}


async def task_keys(store: RedisProfileStore) -> list[str]:
    """Every key of the task layout except the set of guides."""
    keys = []
    for pattern in ("ts:task:*", "ts:guide_tasks:*", "ts:member_tasks:*"):
        keys += [k.decode() async for k in store.redis.scan_iter(match=pattern)]
    return sorted(keys)


async def test_an_open_task_is_due_first_and_a_closed_one_leaves_the_open_set(store):
    task = make_task("M1", "zhang")
    result = await store.write_batch((), tasks=[task])
    assert result.tasks_applied == 1
    assert await store.tasks.get(task["task_id"]) == task
    due = epoch(task["due_at"])
    assert await zset(store, "ts:guide_tasks:zhang:open") == {task["task_id"]: due}
    assert await zset(store, "ts:guide_tasks:zhang:opened") == {
        task["task_id"]: epoch(task["opened_at"])}
    assert await store.tasks.member_task_ids("M1") == {task["task_id"]}
    assert await store.tasks.guides() == ["zhang"]

    done = closed(task, "done", note="已发券", converted_at="2024-03-05T10:00:00+08:00")
    await store.write_batch((), tasks=[done])
    closed_at = epoch(done["closed_at"])
    assert await zset(store, "ts:guide_tasks:zhang:open") == {}
    for kind in ("closed", "done", "converted"):
        assert await zset(store, f"ts:guide_tasks:zhang:{kind}") == {task["task_id"]: closed_at}
    assert await zset(store, "ts:guide_tasks:zhang:lapsed") == {}
    assert (await store.tasks.get(task["task_id"]))["note"] == "已发券"


async def test_only_a_higher_version_replaces_a_task(store):
    task = make_task("M1", "zhang")
    lapsed = closed(task, "lapsed")
    result = await store.write_batch((), tasks=[lapsed, task, lapsed])
    assert (result.tasks_applied, result.tasks_stale) == (1, 2)
    assert (await store.tasks.get(task["task_id"]))["status"] == "lapsed"
    assert await zset(store, "ts:guide_tasks:zhang:open") == {}
    assert list(await zset(store, "ts:guide_tasks:zhang:lapsed")) == [task["task_id"]]


async def page_ids(store, guide, status, limit):
    """Every task id of the list, a page at a time, and how many pages that took."""
    ids, cursor, pages = [], None, 0
    while True:
        page = await store.tasks.page(guide, status, cursor, limit)
        ids += [t["task_id"] for t in page.tasks]
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            return ids, pages


async def test_pages_run_due_first_for_open_and_newest_first_for_closed_ties_included(store):
    # Five tasks share one due time (birthday tasks are all due the 7th): ties go by task id.
    tasks = [make_task(f"M{i}", "zhang", due_days=1 + (i % 3 if i < 7 else 5))
             for i in range(12)]
    others = [make_task("M99", "li")]
    await store.write_batch((), tasks=tasks + others)
    expected = [t["task_id"] for t in sorted(tasks, key=lambda t: (epoch(t["due_at"]),
                                                                  t["task_id"]))]
    assert await page_ids(store, "zhang", "open", 5) == (expected, 3)
    assert await page_ids(store, "zhang", "open", 500) == (expected, 1)

    # A task closed between two pages moves nothing else: no repeat, no gap.
    first = await store.tasks.page("zhang", "open", None, 4)
    gone = first.tasks[-1]
    await store.write_batch((), tasks=[closed(gone, "done", after_days=2)])
    rest = await store.tasks.page("zhang", "open", first.next_cursor, 100)
    assert [t["task_id"] for t in rest.tasks] == expected[4:]

    still_open = [t for t in tasks if t["task_id"] != gone["task_id"]]
    closes = [closed(t, s, after_days=d) for t, s, d in zip(
        still_open[-5:], ["lapsed", "expired", "done", "lapsed", "cancelled"], [1, 3, 2, 2, 5])]
    await store.write_batch((), tasks=closes)
    every_closed = closes + [closed(gone, "done", after_days=2)]
    newest = [t["task_id"] for t in sorted(every_closed, key=lambda t: (epoch(t["closed_at"]),
                                                                       t["task_id"]),
                                           reverse=True)]
    assert await page_ids(store, "zhang", "closed", 2) == (newest, 3)
    lapsed = [t for t in newest if any(c["task_id"] == t and c["status"] == "lapsed"
                                       for c in closes)]
    assert (await page_ids(store, "zhang", "lapsed", 1))[0] == lapsed
    assert await page_ids(store, "li", "closed", 10) == ([], 1)


async def test_a_cursor_that_is_not_one_is_refused(store):
    for cursor in ("abc", "12:", ":abc", "x" * 400):
        with pytest.raises(CursorInvalid):
            await store.tasks.page("zhang", "open", cursor, 10)


async def test_erasure_deletes_the_members_tasks_whichever_record_comes_first(store):
    mine = [make_task("M1", "zhang", change_id="c1"), make_task("M1", "li", change_id="c1"),
            make_task("M1", "zhang", change_id="c2")]
    kept = make_task("M2", "zhang")
    await store.write_batch((), tasks=[*mine, closed(mine[2], "done"), kept])
    await store.apply([make_profile("M1", guides=["zhang", "li"])])

    # The profile tombstone first: every task of the member goes, open or closed.
    assert await store.forget(["M1"]) == 1
    assert await store.tasks.get_many([t["task_id"] for t in mine]) == [None, None, None]
    assert [k for k in await task_keys(store) if "M1" in k or any(
        t["task_id"] in k for t in mine)] == []
    assert await zset(store, "ts:guide_tasks:zhang:open") == {kept["task_id"]: epoch(
        kept["due_at"])}

    # The erasure's cancel records after it bring nothing back, nor before it.
    result = await store.write_batch((), tasks=[closed(t, "cancelled", closed_by="erasure")
                                                for t in mine[:2]])
    assert result.tasks_deleted == 2 and result.tasks_applied == 0
    assert await store.tasks.get(mine[0]["task_id"]) is None
    await store.write_batch((), tasks=mine[:1])
    await store.write_batch((), tasks=[closed(mine[0], "cancelled", closed_by="erasure")])
    assert await store.tasks.get(mine[0]["task_id"]) is None

    # A tombstone on tasks.changes deletes the member's tasks (before the batch's records).
    again = make_task("M1", "zhang", change_id="c3")
    await store.write_batch((), tasks=[make_task("M1", "zhang", change_id="c4")])
    await store.write_batch((), tasks=[again], forget_tasks_of=["M1"])
    assert await store.tasks.member_task_ids("M1") == {again["task_id"]}
    await store.write_batch((), forget_tasks_of=["M1"])
    assert [k for k in await task_keys(store) if "M1" in k] == []
    assert [t["task_id"] for t in (await store.tasks.page("zhang", "open")).tasks] == [
        kept["task_id"]]


async def test_window_counts_and_rates_per_guide(store):
    at = datetime(2024, 3, 31, 12, tzinfo=CST)
    day = timedelta(days=1)

    def task(n: int, days_ago: float, due_days: float = 3) -> dict:
        return make_task(f"M{n}", "zhang", opened_at=(at - days_ago * day).isoformat(),
                         due_days=due_days)

    records = [
        closed(task(1, 3), "done", converted_at=(at - day).isoformat()),  # both windows
        closed(task(2, 5), "done"),                                        # both, no conversion
        closed(task(3, 20), "done", converted_at=(at - 10 * day).isoformat()),  # 30 d only
        closed(task(4, 4), "lapsed"),
        closed(task(5, 25), "expired", after_days=10),
        closed(task(6, 6), "cancelled"),
        task(7, 5, due_days=2),   # open, due 3 days ago: past due in both windows
        task(8, 1),               # open, due in 2 days: not yet past due
        closed(task(9, 40), "done", after_days=2),  # outside both windows
    ]
    await store.write_batch((), tasks=records)
    counts = await store.tasks.window_counts(["zhang", "nobody"], windows_ending(at))
    week, month = counts["zhang"]
    assert week == WindowCounts(opened=6, done=2, lapsed=1, expired=0, cancelled=1,
                                open_past_due=1, converted=1)
    assert month == WindowCounts(opened=8, done=3, lapsed=1, expired=1, cancelled=1,
                                 open_past_due=1, converted=2)
    insights = guide_insights("zhang", at, counts["zhang"], CST)
    assert [(w.days, w.completion_rate, w.conversion_rate) for w in insights.windows] == [
        (7, round(2 / 4, 4), 0.5), (30, round(3 / 6, 4), round(2 / 3, 4))]
    assert insights.windows[0].start == "2024-03-24T12:00:00+08:00"
    nobody = guide_insights("nobody", at, counts["nobody"], CST)
    assert [(w.opened, w.completion_rate, w.conversion_rate) for w in nobody.windows] == [
        (0, None, None), (0, None, None)]
