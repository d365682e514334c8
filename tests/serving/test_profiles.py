"""Profiles rendered by the Redis sink from the member changelog, without Kafka or Redis: the
same profile the engine's own rendering gives, one render per member per batch, tombstones,
bad records, and the rule file followed."""

from __future__ import annotations

import asyncio
from typing import NamedTuple

import msgspec
import orjson
import pytest
from aiokafka import TopicPartition

from schemas.errors import RuleDefinitionError
from streams.platform.rules_watch import RulesWatcher
from streams.platform.settings import DEFAULT_RULES, Settings
from streams.serving.profiles import ProfileRenderer
from streams.serving.redis_sink import collect, run_redis_sink
from streams.serving.redis_store import ServedProfile
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import load_rules
from taggers.state import MemberState, encode_state


class Message(NamedTuple):
    offset: int
    key: bytes | None
    value: bytes | None


@pytest.fixture(scope="module")
def states() -> dict[str, MemberState]:
    lines = [orjson.dumps(e) for e in generate_events(members=40, days=200, seed=3)]
    return dry_run(Engine(load_rules(DEFAULT_RULES)), lines).states


def test_the_served_profile_is_the_rendered_state_with_its_index_entries(states):
    pack = load_rules(DEFAULT_RULES)
    renderer = ProfileRenderer(pack)
    with_guides = [s for s in states.values() if s.guides and s.tags]
    assert with_guides
    for state in states.values():
        served = renderer.served(encode_state(state))
        profile = msgspec.to_builtins(render_profile(state, pack))
        assert orjson.loads(served.json) == profile
        # the same entries the sink once read back from the profile's JSON
        assert served == ServedProfile.from_json(served.json)
        assert served.version == state.watermark * 1000  # as_of, in ms


@pytest.mark.parametrize("raw", [b"", b"{not msgpack", msgspec.msgpack.encode({"member_id": "M1"}),
                                 msgspec.msgpack.encode(["M1", "not a time"])])
def test_a_record_that_is_not_a_member_state_is_a_value_error(raw):
    with pytest.raises(ValueError):
        ProfileRenderer(load_rules(DEFAULT_RULES)).served(raw)


def test_a_batch_renders_each_members_newest_state_once_and_a_tombstone_wins_over_older(states):
    pack = load_rules(DEFAULT_RULES)
    rendered: list[str] = []
    renderer = ProfileRenderer(pack)

    def render(raw: bytes) -> ServedProfile:
        served = renderer.served(raw)
        rendered.append(served.member_id)
        return served

    a, b, c = (states[m] for m in sorted(states)[:3])
    older_a = msgspec.structs.replace(a, watermark=a.watermark - 86_400)
    changelog, tasks = TopicPartition("app-members-changelog", 0), TopicPartition("tasks", 0)
    batch = collect({changelog: [
        Message(10, a.member_id.encode(), encode_state(older_a)),
        Message(11, b.member_id.encode(), encode_state(b)),
        Message(12, a.member_id.encode(), encode_state(a)),
        Message(13, b.member_id.encode(), None),  # b erased after its state
        Message(14, c.member_id.encode(), None),
        Message(15, c.member_id.encode(), encode_state(c)),  # c back after its erasure
        Message(16, None, encode_state(c)),  # no key: skipped
        Message(17, b"M-bad", b"\xc1"),  # not a state: skipped
    ]}, render, tasks_topic=tasks.topic)
    assert rendered == [a.member_id, c.member_id]  # a's older state never rendered
    assert {m: offset for m, (_, offset) in batch.profiles.items()} == {
        a.member_id: 12, c.member_id: 15}
    assert batch.profiles[a.member_id][0].version == a.watermark * 1000
    assert batch.deletes == {b.member_id: 13}
    assert batch.skipped == 2 and batch.ends == {changelog: 18}


def test_the_sink_follows_the_rule_file_as_the_worker_does(states, tmp_path):
    """run_redis_sink hands each pack RulesWatcher loads to the renderer: a renamed tag
    shows under its new name in the next profile rendered."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(DEFAULT_RULES.read_text())
    state = next(s for s in states.values() if "member" in s.tags)
    renderer = ProfileRenderer(load_rules(rules))
    watcher = RulesWatcher(rules, renderer.pack, renderer.use_rules)

    def name_of_member() -> str:
        profile = orjson.loads(renderer.served(encode_state(state)).json)
        return {t["id"]: t["name_zh"] for t in profile["tags"]}["member"]

    assert name_of_member() == "会员" and not watcher.check()
    rules.write_text(DEFAULT_RULES.read_text().replace("name_zh: 会员\n", "name_zh: 品牌会员\n", 1))
    assert watcher.check() and name_of_member() == "品牌会员"


def test_a_rule_file_that_does_not_load_stops_the_sink_before_it_connects(tmp_path):
    broken = tmp_path / "rules.yaml"
    broken.write_text("version: x\ntags: [\n")
    settings = Settings(rules_path=broken, broker="kafka://127.0.0.1:9",
                        redis_url="redis://127.0.0.1:9/0")
    with pytest.raises(RuleDefinitionError):
        asyncio.run(run_redis_sink(settings, asyncio.Event()))
