"""End to end: wecom.marks on the real broker -> the WeCom sync -> the fake WeCom server.

Tag changes for a few hundred members (with their guides) are produced straight onto
`wecom.marks`, one record per change naming its pairs, keyed and partitioned by member as the
worker does; the sync runs with the
production defaults for retries and backoff against `FakeWeCom`, which injects 45009 storms,
token expiry and a 60-second outage. Every test checks:

- the fake's final tag state equals the last op of every (pair, tag) in produce order;
- no stale value ever landed: the values each (pair, tag) took, in order, are a subsequence of
  its ops (so once the last change is applied nothing older follows), and nothing moves after
  the sync reports everything done;
- offsets were committed up to the end of every partition only once everything was applied;
- no window of 1, 10 or 60 s saw more calls per API than the configured rate allows, and the
  server never saw more than 5 calls open at once.

Measured figures are printed as `WECOM-FIGURES {...}` lines (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from schemas.changes import Guide, TagChange, change_id_for
from schemas.wecom import encode_marks
from streams.platform.partitioning import partition_for
from streams.platform.settings import Settings
from streams.platform.topics import topic_names
from streams.serving.wecom.consumer import WeComSyncService
from streams.serving.wecom.sync import corp_tag_name
from tests.factories import marks_for_change
from tests.support.kafka import WorkerProcess, create_topics
from tests.support.wecom_fake import FAKE_SECRET, FakeWeCom
from tests.support.wecom_fake import wecom_fake  # noqa: F401 - the fixture
from tests.support.wecom_sync import committed_offsets, figures, start_service, sync_settings

pytestmark = pytest.mark.e2e

TAGS = [
    ("high_value", "高价值客户"), ("dormant_90d", "90天沉睡"), ("new_member", "新会员"),
    ("baijiu_lover", "白酒偏好"), ("wine_lover", "葡萄酒偏好"), ("gift_buyer", "节礼采购"),
    ("coupon_hunter", "券敏感"), ("scan_active", "扫码活跃"), ("churn_risk", "流失风险"),
    ("birthday_month", "本月生日"), ("vip_gold", "金卡会员"), ("vip_platinum", "铂金会员"),
    ("trial_buyer", "试用装购买"), ("repeat_3", "三次复购"), ("big_ticket", "大额订单"),
    ("oil_family", "粮油家庭"), ("event_goer", "活动参与"), ("reviewer", "好评用户"),
    ("long_name", "近三百六十五天内累计消费金额超过一万元且复购次数不少于五次的高价值白酒会员"),
    ("no_display_name", ""),
]
NAMES = dict(TAGS)
Pair = tuple[str, str]


# --- workload ----------------------------------------------------------------------------------


def workload(seed: int, *, members: int = 300, changes: int = 1200) -> list[TagChange]:
    """Tag changes in the order they happen. Members have 0-3 guides; one binding in ten has
    no external_userid (the customer is not a WeCom contact of that guide)."""
    rng = random.Random(seed)
    guides = [f"guide{g:02d}" for g in range(25)]
    bound: dict[str, tuple[Guide, ...]] = {}
    for m in range(members):
        member = f"M{seed:02d}{m:05d}"
        bound[member] = tuple(
            Guide(userid=g, external_userid=None if rng.random() < 0.1 else f"wm{member}")
            for g in rng.sample(guides, rng.choice([0, 1, 1, 2, 2, 3])))
    out = []
    for n in range(changes):
        member = rng.choice(list(bound))
        tag, name_zh = rng.choice(TAGS)
        op = "added" if rng.random() < 0.6 else "removed"
        cause = {"event_id": f"ev-{seed}-{n}"}
        out.append(TagChange(
            change_id=change_id_for(member, tag, op, cause), member_id=member, tag=tag, op=op,
            rule_id=tag, rules_version="2024-03-01.1", cause=cause, evidence={"n": n},
            at="2024-03-01T12:00:00+08:00", guides=bound[member], name_zh=name_zh,
            family="test"))
    return out


def op_sequences(changes: list[TagChange]) -> dict[tuple[str, str, str], list[bool]]:
    """(userid, external_userid, corp tag name) -> the ops in produce order (True = added)."""
    ops: dict[tuple[str, str, str], list[bool]] = defaultdict(list)
    for change in changes:
        name = corp_tag_name(change.tag, change.name_zh)
        for guide in change.guides:
            if guide.external_userid:
                ops[(guide.userid, guide.external_userid, name)].append(change.op == "added")
    return ops


def expected_state(changes: list[TagChange]) -> dict[Pair, set[str]]:
    state: dict[Pair, set[str]] = defaultdict(set)
    for (userid, external, name), ops in op_sequences(changes).items():
        if ops[-1]:
            state[(userid, external)].add(name)
    return {pair: names for pair, names in state.items() if names}


async def produce(settings: Settings, changes: list[TagChange], *, per_burst: int = 100,
                  pause_s: float = 0.15) -> None:
    """Keyed by member, on the member's partition, in bursts: a live flow, not one batch."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.broker_bootstrap, acks="all",
                                linger_ms=5)
    await producer.start()
    topic = topic_names(settings).wecom_marks
    try:
        for start in range(0, len(changes), per_burst):
            for change in changes[start:start + per_burst]:
                await producer.send(
                    topic, encode_marks(marks_for_change(change)), key=change.member_id.encode(),
                    partition=partition_for(change.member_id, settings.partitions))
            await producer.flush()
            await asyncio.sleep(pause_s)
    finally:
        await producer.stop()


def end_offsets(settings: Settings, changes: list[TagChange]) -> dict[int, int]:
    ends: dict[int, int] = defaultdict(int)
    for change in changes:
        ends[partition_for(change.member_id, settings.partitions)] += 1
    return dict(ends)


# --- running and checking ----------------------------------------------------------------------


async def converged(service: WeComSyncService, fake: FakeWeCom, expected: dict[Pair, set[str]],
                    ends: dict[int, int], *, timeout: float) -> float:
    """Wait until the fake holds the expected state and every offset is committed; when."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fake.state_by_name() == expected:
            at = time.monotonic()
            if await committed_offsets(service) == ends:
                return at
        await asyncio.sleep(0.1)
    state = fake.state_by_name()
    wrong = {p for p in set(state) | set(expected) if state.get(p) != expected.get(p)}
    raise AssertionError(f"not converged after {timeout} s: committed "
                         f"{await committed_offsets(service)} of {ends}; {len(wrong)} pairs "
                         f"differ; {service.report()}")


def applied_history(fake: FakeWeCom) -> dict[tuple[str, str, str], list[bool]]:
    return {(userid, external, fake.tag_name(tid) or tid): [value for _, value in values]
            for (userid, external, tid), values in fake.history.items()}


def collapse(values: list[bool]) -> list[bool]:
    return [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]


def is_subsequence(small: list[bool], big: list[bool]) -> bool:
    it = iter(big)
    return all(any(x == y for y in it) for x in small)


def assert_never_stale(fake: FakeWeCom, changes: list[TagChange], *,
                       replayed: bool = False) -> None:
    """Every value a (pair, tag) took is from its ops, in their order. After a crash the
    unfinished tail is consumed again, so then the ops may run twice."""
    ops = op_sequences(changes)
    history = applied_history(fake)
    assert set(history) <= set(ops)
    for key, applied in history.items():
        allowed = collapse(ops[key] * 2 if replayed else ops[key])
        assert is_subsequence(collapse(applied), allowed), (key, applied, ops[key])


async def assert_stable(fake: FakeWeCom, expected: dict[Pair, set[str]],
                        seconds: float = 2.0) -> None:
    calls = len([c for c in fake.calls if c.api == "mark_tag"])
    await asyncio.sleep(seconds)
    assert fake.state_by_name() == expected
    assert len([c for c in fake.calls if c.api == "mark_tag"]) == calls


# --- scenarios ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_45009_storms_end_in_the_exact_final_state(stack: Settings,
                                                        wecom_fake: FakeWeCom) -> None:
    await create_topics(stack)
    changes = workload(1)
    expected, ends = expected_state(changes), end_offsets(stack, changes)
    started = time.monotonic()
    wecom_fake.fail_next(25, errcode=45009, api="mark_tag")  # a storm as the sync starts
    service = await start_service(sync_settings(stack, wecom_fake))
    try:
        producing = asyncio.ensure_future(produce(stack, changes))
        while service.sync.stats.done < len(changes) * 0.4:
            await asyncio.sleep(0.05)
        wecom_fake.fail_next(25, errcode=45009)  # a second storm, on every API
        wecom_fake.fail_next(10, errcode=45033)
        wecom_fake.fail_next(10, errcode=-1)
        wecom_fake.fail_next(5, status=502)
        await producing
        done_at = await converged(service, wecom_fake, expected, ends, timeout=240)
        await assert_stable(wecom_fake, expected)
    finally:
        await service.stop()
    assert wecom_fake.forced_remaining() == 0
    assert_never_stale(wecom_fake, changes)
    counts = wecom_fake.counts()
    assert counts[("mark_tag", "45009")] >= 25
    result = figures("45009_storms", wecom_fake, service, started, done_at)
    assert result["retries"] + result["failed_marks"] >= 75  # every injected error was met


async def test_token_expiry_mid_run_is_recovered(stack: Settings,
                                                 wecom_fake: FakeWeCom) -> None:
    await create_topics(stack)
    changes = workload(2)
    expected, ends = expected_state(changes), end_offsets(stack, changes)
    started = time.monotonic()
    service = await start_service(sync_settings(stack, wecom_fake))
    try:
        producing = asyncio.ensure_future(produce(stack, changes))
        while service.sync.stats.done < len(changes) * 0.3:
            await asyncio.sleep(0.05)
        wecom_fake.expire_tokens()  # every token expires now: 42001
        while service.sync.stats.done < len(changes) * 0.6:
            await asyncio.sleep(0.05)
        wecom_fake.revoke_tokens()  # WeCom invalidates tokens early: 40014
        await producing
        done_at = await converged(service, wecom_fake, expected, ends, timeout=240)
        await assert_stable(wecom_fake, expected)
    finally:
        await service.stop()
    assert_never_stale(wecom_fake, changes)
    counts = wecom_fake.counts()
    assert counts[("gettoken", "ok")] == 3
    assert sum(n for (api, r), n in counts.items() if r == "42001") >= 1
    assert sum(n for (api, r), n in counts.items() if r == "40014") >= 1
    figures("token_expiry", wecom_fake, service, started, done_at)


@pytest.mark.slow
async def test_a_60_second_outage_only_delays(stack: Settings, wecom_fake: FakeWeCom) -> None:
    await create_topics(stack)
    changes = workload(3)
    expected, ends = expected_state(changes), end_offsets(stack, changes)
    started = time.monotonic()
    service = await start_service(sync_settings(stack, wecom_fake))
    try:
        await produce(stack, changes[:400])
        while service.sync.stats.done < 200:
            await asyncio.sleep(0.05)
        outage = wecom_fake.outage_for(60.0, "refuse")
        await asyncio.sleep(1.0)
        committed_in_outage = await committed_offsets(service)
        await produce(stack, changes[400:])  # the flow goes on while WeCom is down
        await asyncio.sleep(5.0)
        assert wecom_fake.state_by_name() != expected
        # nothing can be applied, so no commit moves
        assert await committed_offsets(service) == committed_in_outage
        pending_in_outage = service.sync.pending
        await outage
        done_at = await converged(service, wecom_fake, expected, ends, timeout=240)
        await assert_stable(wecom_fake, expected)
    finally:
        await service.stop()
    assert wecom_fake.outage_ended_at is not None
    assert pending_in_outage > 500
    assert_never_stale(wecom_fake, changes)
    figures("outage_60s", wecom_fake, service, started, done_at,
            converge_after_outage_s=round(done_at - wecom_fake.outage_ended_at, 2),
            pending_during_outage=pending_in_outage, connections_cut=wecom_fake.dropped)


@pytest.mark.slow
async def test_a_killed_cli_process_loses_nothing(stack: Settings, wecom_fake: FakeWeCom,
                                                  tmp_path: Path) -> None:
    """`tagstream wecom-sync` is SIGKILLed mid-run (no goodbye commit); a new member of the
    group resumes from the committed offsets and the final state is still exact."""
    await create_topics(stack)
    changes = workload(4)
    expected, ends = expected_state(changes), end_offsets(stack, changes)
    started = time.monotonic()
    settings = sync_settings(stack, wecom_fake, log_level="debug")
    log_path = tmp_path / "wecom-sync.log"
    process = WorkerProcess(settings, log_path, ("wecom-sync",)).start()
    try:
        await produce(stack, changes)
        deadline = time.monotonic() + 120
        while wecom_fake.counts()[("mark_tag", "ok")] < 150:
            assert process.alive(), process.log_tail(60)
            assert time.monotonic() < deadline, process.log_tail(60)
            await asyncio.sleep(0.1)
    finally:
        process.kill()  # SIGKILL: no goodbye commit
    marks_before = wecom_fake.counts()[("mark_tag", "ok")]
    service = await start_service(settings)
    try:
        done_at = await converged(service, wecom_fake, expected, ends, timeout=240)
        await assert_stable(wecom_fake, expected)
    finally:
        await service.stop()
    assert_never_stale(wecom_fake, changes, replayed=True)
    log_text = log_path.read_text(errors="replace")
    assert "WeCom sync started" in log_text
    assert FAKE_SECRET not in log_text
    assert not any(token in log_text for token in wecom_fake.tokens_issued)
    assert service.sync.stats.changes < len(changes)  # resumed, did not start over
    figures("killed_and_resumed", wecom_fake, service, started, done_at,
            marks_by_killed_process=marks_before,
            changes_redelivered=service.sync.stats.changes)


async def test_cli_refuses_to_start_without_a_secret(stack: Settings) -> None:
    settings = dataclasses.replace(stack, wecom_corp_id="ww1", wecom_secret="")
    env = {**os.environ, **settings.to_env()}
    result = subprocess.run([sys.executable, "-m", "streams.ops.cli", "wecom-sync"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "TAGSTREAM_WECOM_SECRET" in result.stderr
