"""wecom-reconcile: drift repaired both ways within tagstream's group, nothing else touched.

Pure parts first; then the real Redis (profiles as the sink serves them) and the fake WeCom
with drift injected behind tagstream's back into 200 pairs.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys

import pytest

from streams.serving.redis_store import RedisProfileStore
from streams.serving.wecom.client import WeComClient
from streams.serving.wecom.reconcile import WeComReconciler, expected_tags, repairs
from streams.serving.wecom.sync import GROUP_NAME, Pair, TagMapper, corp_tag_name
from tests.support import REPO_ROOT
from tests.support.profiles import make_profile
from tests.support.wecom_fake import FAKE_CORP_ID, FAKE_SECRET, FakeWeCom
from tests.support.wecom_fake import wecom_fake  # noqa: F401 - the fixture
from tests.support.wecom_sync import sync_settings


def test_repairs_add_the_missing_remove_the_extra_and_skip_other_groups():
    expected = {"会员": ("member", "会员"), "高价值": ("high_value", "高价值")}
    shown = [{"group_name": GROUP_NAME, "tag_name": "会员", "tag_id": "t1", "type": 1},
             {"group_name": GROUP_NAME, "tag_name": "沉睡", "tag_id": "t2", "type": 1},
             {"group_name": "门店活动", "tag_name": "试饮会", "tag_id": "x1", "type": 1},
             {"group_name": GROUP_NAME, "tag_name": "老朋友", "type": 2}]  # personal tag
    add, remove, foreign = repairs(expected, shown)
    assert add == {"high_value": "高价值"} and remove == ["t2"] and foreign == 2


def test_expected_tags_are_per_pair_and_empty_without_marketing_consent():
    profile = make_profile("M1", tags=["member", "vip"], guides=["zhang", "li"])
    pairs = expected_tags(profile)
    assert set(pairs) == {Pair("zhang", "wmzhang"), Pair("li", "wmli")}
    assert pairs[Pair("zhang", "wmzhang")] == {corp_tag_name("member", "member"): ("member", "member"),
                                               corp_tag_name("vip", "vip"): ("vip", "vip")}
    refused = {**profile, "consent": {"marketing": False}}
    assert all(tags == {} for tags in expected_tags(refused).values())


TAGS = ["member", "high_value", "repeat_buyer", "dormant_90d", "vip", "trial", "gift", "scan"]


def profiles(rng: random.Random, count: int) -> list[dict]:
    out = []
    for m in range(count):
        member = f"R{m:04d}"
        profile = make_profile(member, tags=rng.sample(TAGS, rng.randint(1, 4)))
        profile["guides"] = [{"userid": f"guide{g}", "external_userid": f"wm{member}"}
                             for g in rng.sample(range(30), rng.randint(1, 2))]
        out.append(profile)
    out[0]["consent"] = {"marketing": False}
    return out


def ours(fake: FakeWeCom) -> dict[tuple[str, str], set[str]]:
    group = next(g for g in fake.groups.values() if g.name == GROUP_NAME)
    return {pair: {group.tags[t] for t in tags if t in group.tags}
            for pair, tags in fake.state.items()}


def wanted(served: list[dict]) -> dict[tuple[str, str], set[str]]:
    return {tuple(pair): set(names) for p in served for pair, names in expected_tags(p).items()}


@pytest.mark.e2e
@pytest.mark.slow  # 300 members' pairs read and repaired one call at a time
async def test_drift_in_200_pairs_is_repaired_and_other_groups_are_untouched(
        stack, wecom_fake: FakeWeCom):
    rng = random.Random(3)
    served = profiles(rng, 300)
    settings = sync_settings(stack, wecom_fake)
    wecom_fake.set_latency(0.005)  # one call at a time: keep the round trip short
    wecom_fake.contacts |= set(wanted(served))
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply(served)
        async with WeComClient(wecom_fake.base_url, FAKE_CORP_ID, FAKE_SECRET,
                               calls_per_minute=settings.wecom_calls_per_minute) as client:
            first = await WeComReconciler(client, TagMapper(client), store).run()
            assert first.pairs_repaired == sum(1 for p in served[1:] for _ in p["guides"])
            assert {p: t for p, t in ours(wecom_fake).items() if t} == \
                {p: t for p, t in wanted(served).items() if t}

            # drift behind tagstream's back: tags of ours removed and added by hand, and
            # tags of another group on the same pairs
            group = next(g for g in wecom_fake.groups.values() if g.name == GROUP_NAME)
            pairs = sorted(wanted(served))
            drifted = rng.sample(pairs, 200)
            foreign = {}
            for pair in drifted:
                held = wecom_fake.state[pair]
                mine = [t for t in held if t in group.tags]
                if mine and rng.random() < 0.5:
                    held.discard(rng.choice(mine))
                else:
                    held.add(rng.choice(list(group.tags)))
                foreign[pair] = wecom_fake.add_foreign_tag(pair, "门店活动", "试饮会")
            assert sum(ours(wecom_fake)[p] != wanted(served)[p] for p in pairs) > 100

            calls_before = len(wecom_fake.calls)
            stats = await WeComReconciler(client, TagMapper(client), store).run()
            calls = len(wecom_fake.calls) - calls_before
    assert {p: t for p, t in ours(wecom_fake).items() if t} == \
        {p: t for p, t in wanted(served).items() if t}
    assert all(tid in wecom_fake.state[pair] for pair, tid in foreign.items())
    assert stats.foreign_seen == len(drifted) and stats.errors == {}
    print("RECONCILE " + json.dumps({**stats.__dict__, "server_calls": calls,
                                     "pairs": len(pairs), "drifted": len(drifted)}))


@pytest.mark.e2e
async def test_the_command_repairs_one_member(stack, wecom_fake: FakeWeCom):
    settings = sync_settings(stack, wecom_fake)
    profile = make_profile("C1", tags=["member", "vip"], guides=["zhang"])
    wecom_fake.contacts |= {("zhang", "wmzhang"), ("li", "wmli")}
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply([profile, make_profile("C2", tags=["member"], guides=["li"])])
    done = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "streams.ops.cli", "wecom-reconcile",
                         "--member", "C1"], cwd=REPO_ROOT, capture_output=True, text=True,
        env={**os.environ, **settings.to_env()}, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["members"] == 1 and report["pairs_repaired"] == 1 and report["calls"] >= 3
    assert wecom_fake.state_by_name() == {("zhang", "wmzhang"): {"member", "vip"}}


def test_marked_tags_go_to_the_pairs_their_share_names():
    """The reconciler expects what the worker marks: `own` tags only on the marking guide's
    customer, `all` on every one, and a tag a guide set in WeCom never again on theirs."""
    profile = make_profile("M1", tags=["member"], guides=["zhang", "li"])
    marked = [("prefers_call", "guide", "zhang", "own"), ("vip_banquet", "wecom", "zhang", "all"),
              ("spring_fair", "import", None, "all")]
    for tag_id, source, guide, share in marked:
        profile["tags"].append({"id": tag_id, "name_zh": tag_id, "family": "marked",
                                "since": None, "rule_version": "v", "source": source,
                                "share": share, "evidence": {"guide": guide} if guide else {}})
    names = {pair: {tag for tag, _ in expected.values()}
             for pair, expected in expected_tags(profile).items()}
    assert names == {Pair("zhang", "wmzhang"): {"member", "prefers_call", "spring_fair"},
                     Pair("li", "wmli"): {"member", "vip_banquet", "spring_fair"}}


@pytest.mark.e2e
async def test_wecom_sync_reconciles_its_own_partitions_periodically(stack, wecom_fake):
    """TAGSTREAM_WECOM_RECONCILE_S: a tag removed by hand in WeCom comes back on its own."""
    from tests.support.wecom_sync import start_service
    from tests.support.kafka import create_topics

    settings = sync_settings(stack, wecom_fake, wecom_reconcile_s=1.0)
    await create_topics(settings)
    profile = make_profile("P1", tags=["member", "vip"], guides=["zhang"])
    wecom_fake.contacts |= {("zhang", "wmzhang")}
    async with RedisProfileStore(settings.redis_url) as store:
        await store.apply([profile])
    service = await start_service(settings)
    try:
        for _ in range(100):  # the first round marks the pair; then drift is repaired
            if service.reconciles and wecom_fake.state_by_name().get(("zhang", "wmzhang")):
                break
            await asyncio.sleep(0.2)
        assert wecom_fake.state_by_name() == {("zhang", "wmzhang"): {"member", "vip"}}
        group = next(g for g in wecom_fake.groups.values() if g.name == GROUP_NAME)
        vip = next(t for t, name in group.tags.items() if name == "vip")
        wecom_fake.state[("zhang", "wmzhang")].discard(vip)  # a guide removes it by hand
        rounds = len(service.reconciles)
        for _ in range(100):
            if len(service.reconciles) > rounds + 1:
                break
            await asyncio.sleep(0.2)
        assert wecom_fake.state_by_name() == {("zhang", "wmzhang"): {"member", "vip"}}
        assert service.reconciles[-1]["errors"] == {}
    finally:
        await service.stop()
