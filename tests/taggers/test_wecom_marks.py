"""wecom.marks: every pair of a member ends with exactly the member's synced tags, whatever
the order tags and friend-adds came in. Pure: the plan, then the engine and the dry run."""

from __future__ import annotations

import random
from collections import defaultdict

import orjson
import pytest

from streams.platform.settings import DEFAULT_RULES
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
from taggers.wecom import SyncedTag, WecomView, pair_tags, pairs_of, plan_marks
from tests.factories import event, joined, paid, shown_on_pair, state_tags

CAUSE = {"event_id": "e1"}
AT = "2024-03-01T12:00:00+08:00"


def view(tags, pairs, marketing: bool = True) -> WecomView:
    """Rule tags only: every pair shows them all."""
    return WecomView(pair_tags(pairs, [SyncedTag(t) for t in tags], marketing), {}, marketing)


def plan(before: WecomView, after: WecomView):
    return plan_marks("M1", before, after, lambda tag: f"名{tag}", CAUSE, AT)


def edits(record) -> dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]]:
    return {(m.userid, m.external_userid): (m.add, m.remove) for m in record.marks}


def test_a_pair_that_appears_gets_every_synced_tag_and_the_others_the_difference():
    before = view(frozenset({"member", "high_value"}), (("g1", "wm1"),))
    after = view(frozenset({"member", "repeat_buyer"}), (("g1", "wm1"), ("g2", "wm1")))
    record = plan(before, after)
    assert edits(record) == {("g1", "wm1"): (("repeat_buyer",), ("high_value",)),
                             ("g2", "wm1"): (("member", "repeat_buyer"), ())}
    assert record.reasons == ("tags", "pair_added")
    assert record.names == {"repeat_buyer": "名repeat_buyer", "high_value": "名high_value",
                            "member": "名member"}
    assert record.mark_id == plan(before, after).mark_id  # deterministic


def test_nothing_to_mark_gives_no_record():
    tags = frozenset({"member"})
    assert plan(view(tags, ()), view(frozenset({"member", "vip"}), ())) is None
    assert plan(view(tags, (("g1", "wm1"),)), view(tags, (("g1", "wm1"),))) is None
    # a pair that leaves needs nothing; a pair that appears while no tag is held neither
    assert plan(view(tags, (("g1", "wm1"),)), view(tags, ())) is None
    assert plan(view(frozenset(), ()), view(frozenset(), (("g1", "wm1"),))) is None


def test_a_rebound_customer_is_a_new_pair():
    tags = frozenset({"member"})
    record = plan(view(tags, (("g1", "wm-old"),)), view(tags, (("g1", "wm-new"),)))
    assert edits(record) == {("g1", "wm-new"): (("member",), ())}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_rules(DEFAULT_RULES))


def friend(at: str, guide: str, member: str = "M1", op: str = "added"):
    return event(f"interaction.wecom_friend_{op}", at, member, guide_id=guide,
                 external_userid=f"wm{member}", channel="wecom")


def test_tags_held_before_the_friend_add_reach_the_new_guide(engine: Engine):
    """The defect this record exists for: 会员 is added at joining, before any guide; the
    guide who adds the member later must get it (and every other tag held then)."""
    state = None
    records = []
    for e in [joined("2024-01-01T10:00:00+08:00"),
              paid("2024-01-02T10:00:00+08:00", 50_000),
              friend("2024-01-05T10:00:00+08:00", "g1")]:
        outcome = engine.apply(state, e)
        state = outcome.state
        records += outcome.marks
    assert [r.reasons for r in records] == [("pair_added",)]
    [mark] = records[0].marks
    assert (mark.userid, mark.external_userid) == ("g1", "wmM1")
    assert set(mark.add) == set(state.tags) and "member" in mark.add and not mark.remove


def apply_to_wecom(records, wecom: dict) -> None:
    """What WeCom holds after the records are applied in order (as the sync does)."""
    for record in records:
        for mark in record.marks:
            tags = wecom[(mark.userid, mark.external_userid)]
            tags.update(mark.add)
            tags.difference_update(mark.remove)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_every_pair_ends_with_the_members_tags_on_a_generated_history(engine: Engine, seed):
    lines = [orjson.dumps(e) for e in generate_events(members=150, days=300, seed=seed)]
    result = dry_run(engine, lines)
    wecom: dict = defaultdict(set)
    apply_to_wecom(result.marks, wecom)
    pairs = {pair: state for state in result.states.values() for pair in pairs_of(state)}
    assert len(pairs) > 20  # the history has friend-adds
    assert sum("pair_added" in r.reasons for r in result.marks) >= len(pairs)
    for pair, state in pairs.items():
        assert wecom[pair] == shown_on_pair(pair[0], state.marketing,
                                            state_tags(state, engine.pack)), pair


def test_friend_adds_first_or_last_end_the_same(engine: Engine):
    """The same member history with the friend-add moved to each position: every order ends
    with the pair holding the member's tags (what arrives in another topic order)."""
    rng = random.Random(5)
    base = [joined("2024-01-01T10:00:00+08:00"), paid("2024-01-02T10:00:00+08:00", 50_000),
            paid("2024-01-20T10:00:00+08:00", 80_000), paid("2024-02-11T10:00:00+08:00", 900_000)]
    days = ["2024-01-01T09:00:00+08:00", "2024-01-03T10:00:00+08:00",
            "2024-01-25T10:00:00+08:00", "2024-03-01T10:00:00+08:00"]
    for at in days:
        state, records = None, []
        events = sorted(base + [friend(at, rng.choice(["g1", "g2"]))],
                        key=lambda e: e.occurred_at)
        for e in events:
            outcome = engine.apply(state, e)
            state, records = outcome.state, records + outcome.marks
        wecom: dict = defaultdict(set)
        apply_to_wecom(records, wecom)
        [pair] = pairs_of(state)
        assert wecom[pair] == set(state.tags) and "member" in wecom[pair], at


def consent(at: str, marketing: bool, member: str = "M1"):
    return event("interaction.consent_changed", at, member, marketing=marketing)


def test_refused_consent_takes_every_tag_off_the_pairs_and_restoring_puts_them_back(
        engine: Engine):
    state, records = None, []
    for e in [joined("2024-01-01T10:00:00+08:00"), friend("2024-01-02T10:00:00+08:00", "g1"),
              consent("2024-01-03T10:00:00+08:00", False),
              paid("2024-01-04T10:00:00+08:00", 50_000),       # new tags: nothing to WeCom
              friend("2024-01-05T10:00:00+08:00", "g2"),       # a new pair: nothing either
              consent("2024-01-06T10:00:00+08:00", True)]:
        outcome = engine.apply(state, e)
        state = outcome.state
        records.append(outcome.marks)
    joined_, befriended, refused, bought, second, restored = records
    assert joined_ == [] and [r.reasons for r in befriended] == [("pair_added",)]
    assert [r.reasons for r in refused] == [("consent",)]
    held_then = befriended[0].marks[0].add
    assert "member" in held_then
    assert edits(refused[0]) == {("g1", "wmM1"): ((), held_then)}
    assert bought == [] and second == []
    assert [r.reasons for r in restored] == [("consent",)]
    assert edits(restored[0]) == {pair: (tuple(sorted(state.tags)), ())
                                  for pair in (("g1", "wmM1"), ("g2", "wmM1"))}
    assert "first_purchase" in state.tags  # tagstream kept the tags while consent was refused


def test_the_profile_shows_consent_and_rules_can_read_it(tmp_path):
    from taggers.profile import render_profile

    rules = tmp_path / "rules.yaml"
    rules.write_text("version: t1\ntimezone: \"+08:00\"\ntags:\n"
                     "  - id: refuses_marketing\n    name_zh: 拒绝营销\n    family: service\n"
                     "    when: not consent.marketing\n", encoding="utf-8")
    pack = load_rules(rules)
    own = Engine(pack)
    state = own.apply(None, joined("2024-01-01T10:00:00+08:00")).state
    assert "refuses_marketing" not in state.tags
    assert render_profile(state, pack).consent.marketing is True
    outcome = own.apply(state, consent("2024-01-02T10:00:00+08:00", False))
    assert [(c.tag, c.op, c.source) for c in outcome.changes] == [
        ("refuses_marketing", "added", "rule")]
    profile = render_profile(outcome.state, pack)
    assert profile.consent.marketing is False
    assert [(t.id, t.source) for t in profile.tags] == [("refuses_marketing", "rule")]
