"""RedisProfileStore against a real redis-server: profiles, index upkeep, versions, paging."""

from __future__ import annotations

from typing import AsyncIterator

import msgspec
import pytest

from streams.platform.settings import Settings
from streams.serving.insight_counts import InsightCounts
from streams.serving.redis_store import (APPLY_CHUNK, RedisProfileStore, ServedProfile,
                                          profile_version)
from tests.support.profiles import make_profile

pytestmark = pytest.mark.e2e

T1 = "2024-03-01T12:00:00+08:00"
T2 = "2024-03-02T12:00:00+08:00"


@pytest.fixture
async def store(stack: Settings) -> AsyncIterator[RedisProfileStore]:
    async with RedisProfileStore(stack.redis_url) as store:
        yield store


async def all_index_keys(store: RedisProfileStore, kind: str = "") -> dict[str, list[str]]:
    """Every index key (tag, guide, audience; or only `kind`, e.g. "contact") and members."""
    out = {}
    async for key in store.redis.scan_iter(match=f"ts:{kind}*"):
        name = key.decode()
        if name.startswith(("ts:tag:", "ts:guide:", "ts:aud:") if not kind else f"ts:{kind}"):
            out[name] = sorted(m.decode() for m in await store.redis.zrange(name, 0, -1))
    return out


async def test_profile_round_trips_and_indexes_every_tag_guide_and_pair(store):
    await store.apply([make_profile("M1", tags=["high_value", "member"], guides=["zhang", "li"])])

    assert (await store.get_profile("M1"))["tags"][0]["id"] == "high_value"
    assert await store.get_profile("M404") is None
    assert await all_index_keys(store) == {
        "ts:tag:high_value": ["M1"], "ts:tag:member": ["M1"],
        "ts:guide:zhang": ["M1"], "ts:guide:li": ["M1"],
        "ts:aud:high_value:zhang": ["M1"], "ts:aud:high_value:li": ["M1"],
        "ts:aud:member:zhang": ["M1"], "ts:aud:member:li": ["M1"],
    }


async def test_contacts_find_their_members_and_leave_with_them(store):
    """The WeCom callback names a customer by external_userid: the index finds the member."""
    await store.apply([make_profile("M1", tags=["member"], guides=["zhang", "li"]),
                       make_profile("M2", tags=["member"], guides=["li"])])
    assert await store.members_of_contact("wmzhang") == ["M1"]
    assert await store.members_of_contact("wmli") == ["M1", "M2"]
    await store.apply([make_profile("M1", tags=["member"], guides=["zhang"], as_of=T2)])
    assert await store.members_of_contact("wmli") == ["M2"]
    await store.forget(["M1", "M2"])
    assert await all_index_keys(store, "contact:") == {}
    assert await store.members_of_contact("wmzhang") == []


async def test_removed_tags_and_guides_leave_every_index(store):
    await store.apply([make_profile("M1", tags=["high_value", "member"], guides=["zhang", "li"]),
                       make_profile("M2", tags=["member"], guides=["zhang"])])
    await store.apply([make_profile("M1", tags=["member", "repeat_buyer"], guides=["li"],
                                    as_of=T2)])

    assert await all_index_keys(store) == {
        "ts:tag:member": ["M1", "M2"], "ts:tag:repeat_buyer": ["M1"],
        "ts:guide:zhang": ["M2"], "ts:guide:li": ["M1"],
        "ts:aud:member:zhang": ["M2"], "ts:aud:member:li": ["M1"],
        "ts:aud:repeat_buyer:li": ["M1"],
    }
    assert (await store.members_for("zhang", "high_value")).member_ids == []
    assert (await store.members_for("li", "repeat_buyer")).member_ids == ["M1"]


async def test_member_losing_everything_leaves_no_index_entry(store):
    await store.apply([make_profile("M1", tags=["member"], guides=["zhang"])])
    await store.apply([make_profile("M1", tags=[], guides=[], as_of=T2)])
    assert await all_index_keys(store) == {}
    assert (await store.get_profile("M1"))["tags"] == []


async def test_older_profile_is_ignored_and_replay_changes_nothing(store):
    newer = make_profile("M1", tags=["high_value"], guides=["zhang"], as_of=T2)
    older = make_profile("M1", tags=["member"], guides=["li"], as_of=T1)
    assert (await store.apply([newer])).applied == 1

    result = await store.apply([older, newer])
    assert (result.applied, result.stale) == (1, 1)  # the replayed newer one is re-applied as-is
    assert await store.get_profile("M1") == newer
    assert await all_index_keys(store) == {
        "ts:tag:high_value": ["M1"], "ts:guide:zhang": ["M1"], "ts:aud:high_value:zhang": ["M1"]}


async def test_a_rewrite_keeping_tags_guides_and_contacts_replaces_only_the_profile(store):
    """Most writes change a profile's figures but not its tags, guides or contacts: the script
    then only stores the profile and its version, and every index and count stays right."""
    counts = InsightCounts(store.redis, store.prefix)
    first = make_profile("M1", tags=["member", "high_value"], guides=["zhang"], spend_fen=100)
    await store.apply([first, make_profile("M2", tags=["member"], guides=["zhang"])])
    indexes, before = await all_index_keys(store), await counts.counts("zhang")

    later = make_profile("M1", tags=["member", "high_value"], guides=["zhang"], as_of=T2,
                         spend_fen=900)
    assert (await store.apply([later])).applied == 1
    assert await store.get_profile("M1") == later
    assert (await store.apply([first])).stale == 1  # an older version is still refused
    assert await store.get_profile("M1") == later
    assert await all_index_keys(store) == indexes
    assert await counts.counts("zhang") == before
    assert before.members == 2 and before.tags == {"member": 2, "high_value": 1}
    assert await store.members_of_contact("wmzhang") == ["M1", "M2"]


async def test_same_as_of_is_ordered_by_sequence(store):
    first = make_profile("M1", tags=["member"], guides=["zhang"])
    second = make_profile("M1", tags=["member", "first_purchase"], guides=["zhang"])
    await store.apply([second], seqs=[11])
    assert (await store.apply([first], seqs=[10])).stale == 1
    assert await store.get_profile("M1") == second
    assert (await store.apply([first], seqs=[12])).applied == 1  # a later record wins
    assert await store.get_profile("M1") == first


async def test_pages_cover_the_audience_once_in_member_order(store):
    ids = [f"M{i:04d}" for i in range(23)]
    await store.apply([make_profile(m, tags=["member"] + (["high_value"] if i % 2 else []),
                                    guides=["zhang"]) for i, m in enumerate(ids)])
    await store.apply([make_profile("X0001", tags=["high_value"], guides=["li"])])

    seen, cursor, pages = [], None, 0
    while True:
        page = await store.members_for("zhang", "high_value", cursor, limit=5)
        seen += page.member_ids
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [m for i, m in enumerate(ids) if i % 2]
    assert pages == 3  # 11 members in pages of 5: no empty last page

    everyone = await store.members_for("zhang", None, limit=500)
    assert everyone.member_ids == ids and everyone.next_cursor is None
    assert (await store.members_for(None, "high_value", limit=500)).member_ids[-1] == "X0001"


async def test_page_cursor_survives_members_joining_and_leaving(store):
    await store.apply([make_profile(f"M{i}", tags=["member"], guides=["zhang"]) for i in range(6)])
    page = await store.members_for("zhang", "member", limit=3)
    assert page.member_ids == ["M0", "M1", "M2"]
    await store.apply([make_profile("M1", tags=[], guides=["zhang"], as_of=T2),
                       make_profile("M4", tags=[], guides=["zhang"], as_of=T2),
                       make_profile("M35", tags=["member"], guides=["zhang"])])
    rest = await store.members_for("zhang", "member", page.next_cursor, limit=10)
    assert rest.member_ids == ["M3", "M35", "M5"]


async def test_forget_removes_profile_and_index_entries(store):
    await store.apply([make_profile("M1", tags=["member"], guides=["zhang"]),
                       make_profile("M2", tags=["member"], guides=["zhang"])])
    assert await store.forget(["M1", "M404"]) == 1
    assert await store.get_profile("M1") is None
    assert await all_index_keys(store) == {
        "ts:tag:member": ["M2"], "ts:guide:zhang": ["M2"], "ts:aud:member:zhang": ["M2"]}


async def test_guides_of_and_is_bound(store):
    await store.apply([make_profile("M1", tags=["member"], guides=["zhang", "li"])])
    assert await store.guides_of(["M1", "M2"]) == {"M1": ["li", "zhang"]}
    assert await store.is_bound("M1", "li") and not await store.is_bound("M1", "wang")


async def test_store_survives_a_script_cache_flush(store):
    await store.apply([make_profile("M1", tags=["member"], guides=["zhang"])])
    await store.redis.script_flush()  # as after a Redis restart
    assert (await store.apply([make_profile("M1", tags=[], guides=[], as_of=T2)])).applied == 1
    assert await all_index_keys(store) == {}


async def test_a_batch_over_several_script_calls_applies_in_order_and_counts_each(store):
    """Profiles go APPLY_CHUNK to a script call: across the chunk boundaries each profile is
    still applied or refused on its own, in the batch's order."""
    count = 2 * APPLY_CHUNK + 7
    ids = [f"M{i:04d}" for i in range(count)]
    batch = [make_profile(m, tags=["member"], guides=["zhang"], as_of=T2) for m in ids]
    # the same member again, older, at the far end of the batch: refused, counted stale
    batch.append(make_profile(ids[0], tags=["high_value"], guides=["li"], as_of=T1))
    # and newer, in the last chunk: applied after the first
    batch.append(make_profile(ids[1], tags=["high_value"], guides=["zhang"],
                              as_of="2024-03-03T12:00:00+08:00"))
    result = await store.apply(batch)

    assert (result.applied, result.stale) == (count + 1, 1)
    assert (await store.get_profile(ids[0]))["tags"][0]["id"] == "member"
    assert (await store.get_profile(ids[1]))["tags"][0]["id"] == "high_value"
    assert (await store.members_for("zhang", "member", limit=500)).member_ids == \
        [ids[0]] + ids[2:]
    assert (await store.members_for(None, "high_value", limit=500)).member_ids == [ids[1]]


def test_a_profile_record_is_served_as_written_and_indexed_by_its_ids():
    profile = make_profile("M1", tags=["member", "high_value"], guides=["zhang", "li"], as_of=T2)
    raw = msgspec.json.encode(profile)
    served = ServedProfile.from_json(raw)
    assert served.json == raw  # the worker's bytes, not a re-encoding
    assert served == ServedProfile.of(profile)._replace(json=raw)
    assert (served.member_id, served.tags, served.guides, served.contacts) == (
        "M1", "high_value\x1fmember", "li\x1fzhang", "wmli\x1fwmzhang")
    assert served.version == profile_version(profile)


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"tags": []}', b'{"member_id": 7}',
                                 b'{"member_id": "M1", "tags": {}}',
                                 b'{"member_id": "M1", "as_of": "yesterday"}',
                                 b'{"member_id": "M1", "tags": [{"id": "a\\u001fb"}]}'])
def test_a_record_that_is_not_a_profile_is_refused_with_a_value_error(raw):
    with pytest.raises(ValueError):
        ServedProfile.from_json(raw)
