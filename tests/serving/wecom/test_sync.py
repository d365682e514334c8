"""The WeCom sync logic without HTTP or Kafka: mapping, coalescing, last-write-wins, offsets.

`MemoryWeCom` stands in for the client: it keeps corp tags and pair state in memory, can be told
to fail calls, and records every value a (pair, tag) took so tests can check that no older
state ever landed after a newer one.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import defaultdict
from typing import Any, Iterable

import pytest

from schemas.changes import Guide, TagChange
from schemas.wecom import PairMark, WecomMarks
from streams.serving.wecom.client import WeComError, WeComUnavailable
from streams.serving.wecom.sync import (GROUP_NAME, OffsetTracker, Pair, PairPending, TagMapper,
                                WeComSync, coalesce, corp_tag_name, group_tag_ids, pair_edits)
from tests.factories import marks_for_change

# --- helpers -----------------------------------------------------------------------------------

_seq = itertools.count()


def change(tag: str, op: str, *guides: tuple[str, str | None], member: str = "M1",
           name_zh: str | None = None) -> WecomMarks:
    """The wecom.marks record of one tag change to each of `guides`' pairs."""
    n = next(_seq)
    return marks_for_change(TagChange(
        change_id=f"c{n}", member_id=member, tag=tag, op=op,  # type: ignore[arg-type]
        rule_id=tag, rules_version="t", cause={"event_id": f"e{n}"}, evidence={},
        at="2024-03-01T12:00:00+08:00",
        guides=tuple(Guide(userid=u, external_userid=e) for u, e in guides),
        name_zh=name_zh if name_zh is not None else f"标签{tag}"))


def collapse(values: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for value in values:
        if not out or out[-1] != value:
            out.append(value)
    return out


def is_subsequence(small: list[Any], big: list[Any]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


class MemoryWeCom:
    """In-memory corp tags and pair tags; scripted failures; per-pair concurrency check."""

    def __init__(self, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.groups: dict[str, dict[str, Any]] = {}
        self.state: dict[Pair, set[str]] = defaultdict(set)
        self.history: dict[tuple[Pair, str], list[bool]] = defaultdict(list)
        self.mark_calls: list[tuple[Pair, list[str], list[str]]] = []
        self.fail_marks: list[Exception] = []  # raised by the next mark_tag calls, in order
        self.fail_rate = 0.0
        self.rng = random.Random(0)
        self.open_pairs: set[Pair] = set()
        self.overlaps = 0
        self.list_calls = 0
        self.add_calls = 0
        self._ids = itertools.count(1)

    async def get_corp_tag_list(self) -> list[dict[str, Any]]:
        self.list_calls += 1
        return [{"group_id": gid, "group_name": g["name"], "deleted": False,
                 "tag": [{"id": tid, "name": name, "deleted": False}
                         for tid, name in g["tags"].items()]}
                for gid, g in self.groups.items()]

    async def add_corp_tag(self, *, names: Iterable[str], group_name: str,
                           group_id: str | None = None) -> dict[str, Any]:
        self.add_calls += 1
        names = list(names)
        if group_id is None:
            group_id = next((gid for gid, g in self.groups.items() if g["name"] == group_name),
                            None) or f"g{next(self._ids)}"
            self.groups.setdefault(group_id, {"name": group_name, "tags": {}})
        if group_id not in self.groups:
            raise WeComError("add_corp_tag", 40068, "invalid group id")
        group = self.groups[group_id]
        if set(names) & set(group["tags"].values()):
            raise WeComError("add_corp_tag", 40071, "tag name already exists")
        created = []
        for name in names:
            tid = f"t{next(self._ids)}"
            group["tags"][tid] = name
            created.append({"id": tid, "name": name})
        return {"group_id": group_id, "group_name": group["name"], "tag": created}

    def delete_all_tags(self) -> None:
        """What an admin deleting our group in the console does: tags vanish everywhere."""
        self.groups.clear()
        for tags in self.state.values():
            tags.clear()

    def tag_name(self, tid: str) -> str:
        return next(g["tags"][tid] for g in self.groups.values() if tid in g["tags"])

    async def mark_tag(self, userid: str, external_userid: str, *, add: Iterable[str] = (),
                       remove: Iterable[str] = ()) -> None:
        pair = Pair(userid, external_userid)
        add, remove = list(add), list(remove)
        if pair in self.open_pairs:
            self.overlaps += 1
        self.open_pairs.add(pair)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.fail_marks:
                raise self.fail_marks.pop(0)
            if self.fail_rate and self.rng.random() < self.fail_rate:
                raise WeComUnavailable("mark_tag", "45009", 5)
            known = {tid for g in self.groups.values() for tid in g["tags"]}
            if any(tid not in known for tid in add + remove):
                raise WeComError("mark_tag", 40068, "invalid tagid")
            self.mark_calls.append((pair, add, remove))
            for tid in remove:
                self.state[pair].discard(tid)
                self.history[(pair, self.tag_name(tid))].append(False)
            for tid in add:
                self.state[pair].add(tid)
                self.history[(pair, self.tag_name(tid))].append(True)
        finally:
            self.open_pairs.discard(pair)

    def names(self) -> dict[Pair, set[str]]:
        return {pair: {self.tag_name(t) for t in tags} for pair, tags in self.state.items()
                if tags}


def expected_names(changes: list[WecomMarks]) -> dict[Pair, set[str]]:
    names = {tag: corp_tag_name(tag, name) for c in changes for tag, name in c.names.items()}
    out = {pair: {names[tag] for tag, op in ops.items() if op == "added"}
           for pair, ops in coalesce(changes).items()}
    return {pair: tags for pair, tags in out.items() if tags}


class Harness:
    def __init__(self, api: MemoryWeCom, **kwargs: Any) -> None:
        self.api = api
        self.done: list[Any] = []
        self.mapper = TagMapper(api)
        kwargs.setdefault("coalesce_s", 0.02)
        kwargs.setdefault("retry_base_s", 0.01)
        kwargs.setdefault("retry_cap_s", 0.05)
        self.sync = WeComSync(api, self.mapper, on_done=self.done.append, **kwargs)

    async def __aenter__(self) -> "Harness":
        await self.sync.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sync.stop()

    async def settle(self, timeout: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.sync.idle():
            assert asyncio.get_running_loop().time() < deadline, "sync did not settle"
            await asyncio.sleep(0.01)


# --- pure parts --------------------------------------------------------------------------------


@pytest.mark.parametrize("tag, name_zh, expected", [
    ("high_value", "高价值客户", "高价值客户"),
    ("high_value", "", "high_value"),
    ("high_value", "   ", "high_value"),
    ("x", "三" * 30, "三" * 30),
])
def test_corp_tag_name_keeps_short_names(tag: str, name_zh: str, expected: str) -> None:
    assert corp_tag_name(tag, name_zh) == expected


def test_corp_tag_name_cuts_long_names_to_30_and_keeps_them_apart() -> None:
    long = "近三百六十五天内累计消费金额超过一万元且复购次数不少于五次的高价值白酒会员"
    a, b = corp_tag_name("tag_a", long), corp_tag_name("tag_b", long)
    assert len(a) == 30 and len(b) == 30
    assert a != b
    assert a == corp_tag_name("tag_a", long)  # deterministic across restarts
    assert a.startswith(long[:20])


def test_pair_edits_skip_marks_without_external_userid_and_merge_a_pair_named_twice() -> None:
    c = change("t", "added", ("g1", "wmA"), ("g2", None), ("g3", ""), ("g1", "wmA"), ("g4", "wmA"))
    assert pair_edits(c) == {Pair("g1", "wmA"): [("t", "added"), ("t", "added")],
                             Pair("g4", "wmA"): [("t", "added")]}


def test_pair_edits_give_adds_then_removes_of_each_pair() -> None:
    record = WecomMarks(mark_id="m", member_id="M1", reasons=("tags", "pair_added"), marks=(
        PairMark(userid="g1", external_userid="wm", add=("a", "b"), remove=("c",)),
        PairMark(userid="g2", external_userid="wm", add=("a", "b", "d"))),
        names={t: t for t in "abcd"}, cause={"event_id": "e"}, at="2024-03-01T12:00:00+08:00")
    assert pair_edits(record) == {
        Pair("g1", "wm"): [("a", "added"), ("b", "added"), ("c", "removed")],
        Pair("g2", "wm"): [("a", "added"), ("b", "added"), ("d", "added")]}


@pytest.mark.parametrize("ops, expected", [
    ([("a", "added")], {"a": "added"}),
    ([("a", "added"), ("a", "removed")], {"a": "removed"}),
    ([("a", "removed"), ("a", "added")], {"a": "added"}),
    ([("a", "added"), ("b", "added"), ("a", "removed"), ("a", "added")],
     {"a": "added", "b": "added"}),
    ([("a", "added"), ("a", "added")], {"a": "added"}),
])
def test_coalesce_keeps_the_last_op_per_pair_and_tag(ops: list[tuple[str, str]],
                                                     expected: dict[str, str]) -> None:
    changes = [change(tag, op, ("g", "wm")) for tag, op in ops]
    assert coalesce(changes) == {Pair("g", "wm"): expected}


def test_pair_pending_put_back_batch_loses_to_newer_ops() -> None:
    older = PairPending(since=1.0)
    older.apply("a", "added", "A")
    older.apply("b", "added", "B")
    older.tickets += ["t1", "t2"]
    newer = PairPending(since=2.0)
    newer.apply("a", "removed", "A")
    newer.tickets.append("t3")
    newer.absorb_older(older)
    assert newer.ops == {"a": "removed", "b": "added"}
    assert newer.tickets == ["t1", "t2", "t3"]
    assert newer.since == 1.0 and newer.edits == 3
    assert sorted(newer.added()) == ["b"] and newer.removed() == ["a"]


@pytest.mark.parametrize("added, done, point", [
    ([], [], None),
    ([5], [], 5),
    ([5], [5], 6),
    ([5, 6, 7], [6, 7], 5),
    ([5, 6, 7], [5, 7], 6),
    ([5, 6, 7], [7, 6, 5], 8),
    ([10, 11, 14], [10, 11], 14),  # gaps (compacted or skipped offsets) are fine
])
def test_offset_tracker_commits_only_behind_the_first_change_not_done(
        added: list[int], done: list[int], point: int | None) -> None:
    tracker = OffsetTracker()
    for offset in added:
        tracker.add(offset)
    for offset in done:
        tracker.done(offset)
    assert tracker.commit_point() == point


def test_group_tag_ids_reads_only_our_live_group() -> None:
    groups = [
        {"group_id": "g0", "group_name": "其他", "tag": [{"id": "x", "name": "高价值"}]},
        {"group_id": "g1", "group_name": GROUP_NAME, "deleted": False,
         "tag": [{"id": "t1", "name": "高价值"}, {"id": "t2", "name": "沉睡", "deleted": True}]},
        {"group_id": "g2", "group_name": GROUP_NAME, "deleted": True,
         "tag": [{"id": "t3", "name": "流失"}]},
    ]
    assert group_tag_ids(groups, GROUP_NAME) == ("g1", {"高价值": "t1"})
    assert group_tag_ids([], GROUP_NAME) == (None, {})


# --- tag mapper --------------------------------------------------------------------------------


async def test_mapper_creates_missing_tags_in_one_call_and_caches_them() -> None:
    api = MemoryWeCom()
    mapper = TagMapper(api)
    ids = await mapper.resolve({"high_value": "高价值", "dormant": "沉睡"})
    assert {api.tag_name(i) for i in ids.values()} == {"高价值", "沉睡"}
    assert api.add_calls == 1 and api.list_calls == 1
    assert await mapper.resolve({"dormant": "沉睡"}) == {"dormant": ids["dormant"]}
    assert api.add_calls == 1 and api.list_calls == 1


async def test_mapper_uses_tags_that_already_exist_and_adds_to_our_group() -> None:
    api = MemoryWeCom()
    existing = await api.add_corp_tag(names=["高价值"], group_name=GROUP_NAME)
    mapper = TagMapper(api)
    ids = await mapper.resolve({"high_value": "高价值", "new": "新客"})
    assert ids["high_value"] == existing["tag"][0]["id"]
    assert len(api.groups) == 1  # "新客" went into the same group
    assert api.add_calls == 2


async def test_mapper_recovers_when_another_process_created_the_tag_first() -> None:
    api = MemoryWeCom()
    mapper = TagMapper(api)
    await mapper.refresh()  # sees nothing
    other = await api.add_corp_tag(names=["高价值"], group_name=GROUP_NAME)  # a second instance
    ids = await mapper.resolve({"high_value": "高价值"})  # add_corp_tag -> 40071 -> re-read
    assert ids == {"high_value": other["tag"][0]["id"]}


async def test_mapper_rereads_the_list_after_invalidate() -> None:
    api = MemoryWeCom()
    mapper = TagMapper(api)
    await mapper.resolve({"a": "甲"})
    api.groups.clear()  # an admin deleted the group in the console
    mapper.invalidate()
    ids = await mapper.resolve({"a": "甲"})
    assert api.tag_name(ids["a"]) == "甲"


# --- the sync ----------------------------------------------------------------------------------


async def test_changes_close_together_go_out_as_one_call_with_the_last_op_per_tag() -> None:
    api = MemoryWeCom()
    changes = [change("a", "added", ("g", "wm")), change("b", "added", ("g", "wm")),
               change("a", "removed", ("g", "wm")), change("c", "removed", ("g", "wm"))]
    async with Harness(api, coalesce_s=0.05) as h:
        for i, c in enumerate(changes):
            h.sync.submit(c, i)
        await h.settle()
    assert len(api.mark_calls) == 1
    pair, add, remove = api.mark_calls[0]
    assert {api.tag_name(t) for t in add} == {"标签b"}
    assert {api.tag_name(t) for t in remove} == {"标签a", "标签c"}
    assert sorted(h.done) == [0, 1, 2, 3]
    assert h.sync.stats.coalesced == 1


async def test_each_guide_pair_gets_its_own_call_and_a_change_is_done_after_all() -> None:
    api = MemoryWeCom()
    async with Harness(api) as h:
        h.sync.submit(change("a", "added", ("g1", "wm"), ("g2", "wm"), ("g3", None)), "c1")
        await h.settle()
    assert sorted(p for p, _, _ in api.mark_calls) == [Pair("g1", "wm"), Pair("g2", "wm")]
    assert h.done == ["c1"]


async def test_a_change_without_wecom_contacts_is_done_at_once() -> None:
    api = MemoryWeCom()
    async with Harness(api) as h:
        h.sync.submit(change("a", "added", ("g1", None)), "c1")
        h.sync.submit(change("a", "added"), "c2")
        assert h.done == ["c1", "c2"]
    assert api.mark_calls == [] and h.sync.stats.without_pairs == 2


async def test_changes_arriving_during_a_call_wait_for_it_and_never_overlap() -> None:
    api = MemoryWeCom(delay=0.05)
    async with Harness(api, coalesce_s=0.0) as h:
        h.sync.submit(change("a", "added", ("g", "wm")), 1)
        await asyncio.sleep(0.02)  # the first call is open now
        h.sync.submit(change("a", "removed", ("g", "wm")), 2)
        h.sync.submit(change("b", "added", ("g", "wm")), 3)
        await h.settle()
    assert api.overlaps == 0
    assert len(api.mark_calls) == 2
    assert api.names() == {Pair("g", "wm"): {"标签b"}}
    assert api.history[(Pair("g", "wm"), "标签a")] == [True, False]


async def test_a_failed_call_is_retried_with_newer_ops_winning() -> None:
    api = MemoryWeCom(delay=0.02)
    api.fail_marks = [WeComUnavailable("mark_tag", "45009", 5),
                      WeComUnavailable("mark_tag", "connection", 5)]
    async with Harness(api, coalesce_s=0.0) as h:
        h.sync.submit(change("a", "added", ("g", "wm")), 1)
        h.sync.submit(change("b", "added", ("g", "wm")), 2)
        await asyncio.sleep(0.01)
        h.sync.submit(change("a", "removed", ("g", "wm")), 3)  # arrives while the call fails
        await h.settle()
    assert sorted(h.done) == [1, 2, 3]
    assert api.names() == {Pair("g", "wm"): {"标签b"}}
    assert api.history[(Pair("g", "wm"), "标签a")] == [False]  # the stale "added" never landed
    assert h.sync.stats.failed_marks == 2


async def test_a_pair_wecom_does_not_know_is_counted_and_done() -> None:
    api = MemoryWeCom()
    api.fail_marks = [WeComError("mark_tag", 84061, "not external contact")]
    async with Harness(api) as h:
        h.sync.submit(change("a", "added", ("g", "gone"), ("g", "wm")), 1)
        await h.settle()
    assert h.done == [1]
    assert h.sync.stats.unreachable == 1
    assert len(api.mark_calls) == 1  # the other pair still got its tag


async def test_an_unknown_tag_id_refreshes_the_mapping_and_retries() -> None:
    api = MemoryWeCom()
    async with Harness(api) as h:
        h.sync.submit(change("a", "added", ("g", "wm")), 1)
        await h.settle()
        api.delete_all_tags()  # in the admin console: the cached id is now unknown
        h.sync.submit(change("a", "added", ("g", "wm")), 2)
        await h.settle()
        h.sync.submit(change("b", "added", ("g", "wm")), 3)
        await h.settle()
    assert sorted(h.done) == [1, 2, 3]
    assert h.sync.stats.errors == {"40068": 1}
    assert api.names() == {Pair("g", "wm"): {"标签a", "标签b"}}
    assert api.list_calls == 2


async def test_non_retryable_errors_are_retried_too_until_they_clear() -> None:
    api = MemoryWeCom()
    api.fail_marks = [WeComError("mark_tag", 48002, "api forbidden")] * 3
    async with Harness(api) as h:
        h.sync.submit(change("a", "added", ("g", "wm")), 1)
        await h.settle()
    assert h.done == [1] and h.sync.stats.failed_marks == 3


async def test_reset_forgets_pending_changes_without_finishing_them() -> None:
    api = MemoryWeCom(delay=0.2)
    async with Harness(api, coalesce_s=0.0) as h:
        h.sync.submit(change("a", "added", ("g", "wm")), 1)
        h.sync.submit(change("a", "added", ("g2", "wm")), 2)
        await asyncio.sleep(0.05)
        await h.sync.reset()
        assert h.sync.idle() and h.done == []
        h.sync.submit(change("b", "added", ("g", "wm")), 3)
        await h.settle()
    assert h.done == [3]


async def test_a_success_wakes_pairs_that_are_backing_off() -> None:
    api = MemoryWeCom()
    api.fail_marks = [WeComUnavailable("mark_tag", "connection", 5)] * 3
    async with Harness(api, coalesce_s=0.0, retry_base_s=5.0, retry_cap_s=5.0, workers=1) as h:
        for i in range(4):
            h.sync.submit(change("a", "added", (f"g{i}", "wm")), i)
        started = asyncio.get_running_loop().time()
        await h.settle(timeout=20)
        took = asyncio.get_running_loop().time() - started
    assert sorted(h.done) == [0, 1, 2, 3]
    # without the wake-up the three failed pairs would wait their 2.5-5 s backoff
    assert took < 2.5


@pytest.mark.parametrize("seed", range(12))
async def test_random_changes_and_failures_end_in_the_last_op_of_every_pair_and_tag(
        seed: int) -> None:
    rng = random.Random(seed)
    api = MemoryWeCom(delay=0.002)
    api.fail_rate = 0.3
    api.rng = random.Random(seed + 100)
    pairs = [(f"g{i}", f"wm{j}") for i in range(3) for j in range(4)]
    changes = [change(rng.choice("abcde"), rng.choice(["added", "removed"]),
                      *rng.sample(pairs, rng.randint(0, 2)))
               for _ in range(300)]
    async with Harness(api, coalesce_s=0.005, workers=3) as h:
        for i, c in enumerate(changes):
            h.sync.submit(c, i)
            if rng.random() < 0.2:
                await asyncio.sleep(rng.random() * 0.01)
        await h.settle(timeout=30)
    assert sorted(h.done) == list(range(len(changes)))  # every change done, exactly once
    assert api.overlaps == 0
    assert api.names() == expected_names(changes)
    ops: dict[tuple[Pair, str], list[bool]] = defaultdict(list)
    for c in changes:
        for pair, edits in pair_edits(c).items():
            for tag, op in edits:
                ops[(pair, corp_tag_name(tag, c.names[tag]))].append(op == "added")
    for key, applied in api.history.items():
        assert is_subsequence(collapse(applied), collapse(ops[key])), key
