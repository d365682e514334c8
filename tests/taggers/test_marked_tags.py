"""Marked tags (`interaction.tag_marked`): set by people, never added or removed by rules, kept
through re-evaluations and new rules versions, removed by a mark or at `expires_at`, synced to
the WeCom pairs by their `share`, and decoded with their cross-field checks.
The invariants are the ones of taggers/marked.py and taggers/wecom.py."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import msgspec
import orjson
import pytest

from schemas.decode import decode_event
from schemas.errors import EventRejected, RuleDefinitionError
from schemas.events import TagMarked
from streams.platform.settings import DEFAULT_RULES
from taggers.clock import to_epoch
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import compile_rules, load_rules
from taggers.state import encode_state
from tests.factories import event, joined, paid, raw_event

PACK = """
version: {version}
timezone: "+08:00"
marked_tags:
  - {{id: vip_banquet, name_zh: 宴席客户, share: all}}
  - {{id: prefers_call, name_zh: 偏好电话联系, share: own}}
  - {{id: gift_buyer, name_zh: 送礼客户, share: all}}
  - {{id: wine_lover, name_zh: 爱酒人士, share: all}}
tags:
  - {{id: member, name_zh: 会员, family: lifecycle, when: joined}}
  - {{id: banquet_buyer, name_zh: 宴席买家, family: operational, when: has_tag(vip_banquet)}}
  - {{id: buyer, name_zh: 买家, family: transaction, when: orders.count >= 1}}
"""

# Only rule tags a marked tag cannot touch: for the WeCom marks, where every synced tag counts.
SYNC_PACK = """
version: s1
timezone: "+08:00"
marked_tags:
  - {id: prefers_call, name_zh: 偏好电话联系, share: own}
  - {id: gift_buyer, name_zh: 送礼客户, share: all}
  - {id: wine_lover, name_zh: 爱酒人士, share: all}
tags:
  - {id: member, name_zh: 会员, family: lifecycle, when: joined}
"""


def at(day: int, hour: int = 10, month: int = 1) -> str:
    return f"2024-{month:02d}-{day:02d}T{hour:02d}:00:00+08:00"


def epoch(text: str) -> int:
    return to_epoch(datetime.fromisoformat(text))


def mark(when: str, tag: str, op: str = "added", source: str = "guide",
         guide: str | None = "g1", member: str = "M1", **fields):
    if guide is not None:
        fields["guide_id"] = guide
    return event("interaction.tag_marked", when, member, tag=tag, op=op, source=source,
                 channel="wecom", **fields)


def friend(when: str, guide: str, external: str, member: str = "M1", op: str = "added"):
    return event(f"interaction.wecom_friend_{op}", when, member, guide_id=guide,
                 external_userid=external, channel="wecom")


def consent(when: str, marketing: bool, member: str = "M1"):
    return event("interaction.consent_changed", when, member, marketing=marketing)


def summary(changes) -> list[tuple]:
    return [(c.tag, c.op, c.source, c.family, c.name_zh, c.cause, c.at) for c in changes]


def edits(outcome) -> list[tuple]:
    """Every pair edit of an outcome's wecom marks, in order, with its record's reasons."""
    return [(record.reasons, mark_.userid, mark_.external_userid, mark_.add, mark_.remove)
            for record in outcome.marks for mark_ in record.marks]


@pytest.fixture(scope="module")
def pack():
    return compile_rules(PACK.format(version="v1"))


@pytest.fixture(scope="module")
def engine(pack) -> Engine:
    return Engine(pack)


@pytest.fixture(scope="module")
def sync_engine() -> Engine:
    return Engine(compile_rules(SYNC_PACK))


def start(engine: Engine, member: str = "M1"):
    return engine.apply(None, joined(at(1), member)).state


# --- 1. a guide's mark -------------------------------------------------------------------------


def test_a_guide_mark_is_added_with_its_declared_name_and_the_guide_as_evidence(engine):
    state = start(engine)
    e = mark(at(2), "prefers_call", guide="g1")
    outcome = engine.apply(state, e)
    assert summary(outcome.changes) == [
        ("prefers_call", "added", "guide", "marked", "偏好电话联系", {"event_id": e.event_id},
         at(2))]
    [change] = outcome.changes
    assert change.evidence == {"by": "guide", "guide": "g1"}
    assert change.rule_id == "prefers_call" and change.rules_version == "v1"
    held = outcome.state.tags["prefers_call"]
    assert (held.source, held.since, held.until, held.evidence) == (
        "guide", epoch(at(2)), None, {"by": "guide", "guide": "g1"})
    assert "prefers_call" in outcome.state.ever


def test_rules_orders_and_reevaluations_never_remove_a_marked_tag(engine):
    state = start(engine)
    state = engine.apply(state, mark(at(2), "prefers_call")).state
    held_before = msgspec.to_builtins(state.tags["prefers_call"])

    bought = engine.apply(state, paid(at(3), 10_000))
    assert [(c.tag, c.op) for c in bought.changes] == [("buyer", "added")]
    assert msgspec.to_builtins(bought.state.tags["prefers_call"]) == held_before

    again = engine.reevaluate(bought.state, epoch(at(20)))
    assert again.changes == []
    assert sorted(again.state.tags) == ["buyer", "member", "prefers_call"]

    # a new rules version re-evaluates everything, on the next event and on a backfill
    v2 = Engine(compile_rules(PACK.format(version="v2")))
    state_v2 = msgspec.msgpack.decode(encode_state(again.state), type=type(again.state))
    upgraded = v2.apply(state_v2, paid(at(21), 5_000))
    assert upgraded.state.rules_version == "v2"
    assert [c.tag for c in upgraded.changes] == []
    assert msgspec.to_builtins(upgraded.state.tags["prefers_call"]) == held_before
    backfill = v2.reevaluate(msgspec.msgpack.decode(encode_state(again.state),
                                                    type=type(again.state)), epoch(at(22)))
    assert backfill.changes == [] and "prefers_call" in backfill.state.tags
    assert backfill.state.rules_version == "v2"

    # a version that no longer declares the tag keeps it too (only a mark or expiry removes it)
    bare = Engine(compile_rules("version: v3\ntimezone: \"+08:00\"\ntags:\n"
                                "  - {id: member, name_zh: 会员, family: lifecycle, "
                                "when: joined}\n"))
    dropped = bare.reevaluate(upgraded.state, epoch(at(23)))
    assert [(c.tag, c.op) for c in dropped.changes] == [("buyer", "removed")]
    assert sorted(dropped.state.tags) == ["member", "prefers_call"]


def test_marking_a_held_tag_again_emits_nothing_and_a_removed_mark_takes_it_off(engine):
    state = start(engine)
    state = engine.apply(state, mark(at(2), "prefers_call", guide="g1")).state
    again = engine.apply(state, mark(at(3), "prefers_call", guide="g1"))
    assert again.changes == [] and again.marks == [] and not again.duplicate
    assert again.state.tags["prefers_call"].since == epoch(at(2))

    e = mark(at(4), "prefers_call", op="removed", guide="g1")
    removed = engine.apply(again.state, e)
    assert summary(removed.changes) == [
        ("prefers_call", "removed", "guide", "marked", "偏好电话联系", {"event_id": e.event_id},
         at(4))]
    assert removed.changes[0].evidence == {"by": "guide"}
    assert sorted(removed.state.tags) == ["member"]
    # removing a tag not held changes nothing
    assert engine.apply(removed.state, mark(at(5), "prefers_call", op="removed")).changes == []


# --- 2. undeclared tags ------------------------------------------------------------------------


def test_an_undeclared_tag_without_name_zh_is_rejected_and_leaves_the_state_as_it_was(engine):
    state = start(engine)
    before = encode_state(state)
    with pytest.raises(EventRejected, match="'likes_baijiu' is not declared under marked_tags"):
        engine.apply(state, mark(at(2), "likes_baijiu"))
    assert encode_state(state) == before
    with pytest.raises(EventRejected, match="name_zh"):
        engine.apply(state, mark(at(2), "spring_2024", source="import", guide=None))
    assert encode_state(state) == before


def test_an_undeclared_tag_with_name_zh_is_accepted_and_the_profile_shows_its_name(engine,
                                                                                     pack):
    state = start(engine)
    outcome = engine.apply(state, mark(at(2), "likes_baijiu", guide="g7", name_zh="爱白酒"))
    assert [(c.tag, c.op, c.source, c.family, c.name_zh, c.evidence) for c in outcome.changes] \
        == [("likes_baijiu", "added", "guide", "marked", "爱白酒",
             {"by": "guide", "guide": "g7", "name_zh": "爱白酒"})]
    profile = render_profile(outcome.state, pack)
    shown = {t.id: t for t in profile.tags}
    assert sorted(shown) == ["likes_baijiu", "member"]
    tag = shown["likes_baijiu"]
    assert (tag.name_zh, tag.family, tag.source, tag.share, tag.expires_at, tag.since) == (
        "爱白酒", "marked", "guide", "own", None, at(2))
    assert (shown["member"].source, shown["member"].family) == ("rule", "lifecycle")
    # an undeclared import is shared with every guide
    imported = engine.apply(outcome.state, mark(at(3), "spring_2024", source="import",
                                                guide=None, name_zh="春节活动"))
    tag = {t.id: t for t in render_profile(imported.state, pack).tags}["spring_2024"]
    assert (tag.name_zh, tag.source, tag.share, tag.evidence) == (
        "春节活动", "import", "all", {"by": "import", "name_zh": "春节活动"})


def test_an_expired_undeclared_tag_marked_again_without_name_zh_is_rejected(engine):
    """The tag is no longer held once its expiry has passed, so the new mark needs a name_zh
    (marked.py: 'a tag the pack does not declare under marked_tags needs a name_zh')."""
    state = start(engine)
    state = engine.apply(state, mark(at(2), "spring_2024", source="import", guide=None,
                                     name_zh="春节活动", expires_at=at(5))).state
    before = encode_state(state)
    with pytest.raises(EventRejected, match="name_zh"):
        engine.apply(state, mark(at(6), "spring_2024", source="import", guide=None))
    assert encode_state(state) == before


# --- 3. rule tags cannot be marked -------------------------------------------------------------


@pytest.mark.parametrize("op", ["added", "removed"])
def test_marking_a_rule_tag_is_rejected_naming_the_tag(engine, op):
    state = start(engine)
    before = encode_state(state)
    with pytest.raises(EventRejected) as raised:
        engine.apply(state, mark(at(2), "buyer", op=op, name_zh="买家"))
    assert "'buyer'" in raised.value.reason and "rule pack" in raised.value.reason
    with pytest.raises(EventRejected, match="'member'"):
        engine.apply(state, mark(at(2), "member", op=op))
    assert encode_state(state) == before


def test_marking_a_tier_tag_of_the_default_pack_is_rejected():
    default = Engine(load_rules(DEFAULT_RULES))
    state = default.apply(None, joined(at(1))).state
    assert "tier_normal" in state.tags
    before = encode_state(state)
    for tag in ("tier_gold", "tier_normal"):
        with pytest.raises(EventRejected, match=f"'{tag}' is set by the rule pack"):
            default.apply(state, mark(at(2), tag, name_zh="金卡"))
    assert encode_state(state) == before
    # the default pack's declared marked tags are accepted
    added = default.apply(state, mark(at(2), "vip_banquet"))
    assert [(c.tag, c.name_zh, c.source) for c in added.changes] == [
        ("vip_banquet", "宴席客户", "guide")]


def test_a_marked_tag_cannot_take_the_id_of_a_tier_tag():
    """marked.py: 'a marked tag cannot share its id with another tag' (tier tags included)."""
    text = Path(DEFAULT_RULES).read_text(encoding="utf-8")
    clashing = text.replace("- {id: gift_buyer, name_zh: 送礼客户,",
                            "- {id: tier_gold, name_zh: 送礼客户,")
    assert clashing != text
    with pytest.raises(RuleDefinitionError, match="tier_gold"):
        compile_rules(clashing)


def test_a_new_rule_with_the_id_of_a_held_marked_tag_does_not_remove_it(engine):
    """marked.py: 'rules never add or remove a marked tag; only another mark or its
    expires_at removes it' — also when a later rules version defines a rule of that id."""
    state = start(engine)
    state = engine.apply(state, mark(at(2), "spring_2024", source="import", guide=None,
                                     name_zh="春节活动")).state
    v2 = Engine(compile_rules(PACK.format(version="v2") +
                              "  - {id: spring_2024, name_zh: 春季, family: operational, "
                              "when: 'false'}\n"))
    outcome = v2.apply(state, paid(at(3), 10_000))
    assert [(c.tag, c.op, c.source) for c in outcome.changes] == [("buyer", "added", "rule")]
    assert outcome.state.tags["spring_2024"].source == "import"


def test_a_mark_of_a_tag_a_new_version_moved_from_rules_to_marked_tags_is_kept():
    """v1 sets gift_buyer by rule; v2 declares it under marked_tags. A guide's mark applied by
    v2 to a state still holding v1's rule tag must leave the member holding the marked tag."""
    v1 = Engine(compile_rules("version: a1\ntimezone: \"+08:00\"\ntags:\n"
                              "  - {id: gift_buyer, name_zh: 送礼, family: transaction, "
                              "when: orders.count >= 1}\n"))
    v2 = Engine(compile_rules("version: a2\ntimezone: \"+08:00\"\nmarked_tags:\n"
                              "  - {id: gift_buyer, name_zh: 送礼客户, share: all}\ntags:\n"
                              "  - {id: member, name_zh: 会员, family: lifecycle, "
                              "when: joined}\n"))
    state = v1.apply(None, paid(at(1), 10_000)).state
    assert state.tags["gift_buyer"].source == "rule"
    outcome = v2.apply(state, mark(at(2), "gift_buyer", guide="g1"))
    assert "gift_buyer" in outcome.state.tags
    assert outcome.state.tags["gift_buyer"].source == "guide"
    assert ("gift_buyer", "removed") not in [(c.tag, c.op) for c in outcome.changes]


# --- 4. rules reading a marked tag, and expiry -------------------------------------------------


def test_a_rule_reading_a_marked_tag_follows_the_mark_and_its_removal(engine):
    state = start(engine)
    e = mark(at(2), "vip_banquet")
    added = engine.apply(state, e)
    assert [(c.tag, c.op, c.source, c.cause) for c in added.changes] == [
        ("vip_banquet", "added", "guide", {"event_id": e.event_id}),
        ("banquet_buyer", "added", "rule", {"event_id": e.event_id})]
    assert added.changes[1].evidence == {"has_tag(vip_banquet)": True}
    r = mark(at(3), "vip_banquet", op="removed", guide="g2")
    removed = engine.apply(added.state, r)
    assert [(c.tag, c.op, c.source, c.cause) for c in removed.changes] == [
        ("vip_banquet", "removed", "guide", {"event_id": r.event_id}),
        ("banquet_buyer", "removed", "rule", {"event_id": r.event_id})]
    assert removed.changes[1].evidence == {"has_tag(vip_banquet)": False}
    assert sorted(removed.state.tags) == ["member"]


def test_an_import_with_expires_at_expires_through_advance_with_its_dependent_rule(engine, pack):
    state = start(engine)
    expires = at(5)
    added = engine.apply(state, mark(at(2), "vip_banquet", source="import", guide=None,
                                     expires_at=expires))
    assert [(c.tag, c.op, c.source) for c in added.changes] == [
        ("vip_banquet", "added", "import"), ("banquet_buyer", "added", "rule")]
    state = added.state
    assert state.tags["vip_banquet"].until == epoch(expires)
    assert state.next_deadline == epoch(expires)
    tag = {t.id: t for t in render_profile(state, pack).tags}["vip_banquet"]
    assert (tag.expires_at, tag.share, tag.source) == (expires, "all", "import")

    early = engine.advance(state, epoch(expires) - 1)
    assert early.changes == [] and "vip_banquet" in state.tags

    due = engine.advance(state, epoch(expires))
    assert summary(due.changes) == [
        ("vip_banquet", "removed", "import", "marked", "宴席客户",
         {"timer": f"vip_banquet@{expires}"}, expires),
        ("banquet_buyer", "removed", "rule", "operational", "宴席买家",
         {"timer": f"banquet_buyer@{expires}"}, expires)]
    assert due.changes[0].evidence == {"expired_at": expires}
    assert sorted(due.state.tags) == ["member"]
    assert due.state.next_deadline is None
    assert engine.advance(due.state, epoch(at(9))).changes == []


def test_advance_after_expires_at_removes_the_tag_as_of_expires_at(engine):
    state = start(engine)
    state = engine.apply(state, mark(at(2), "vip_banquet", source="import", guide=None,
                                     expires_at=at(5))).state
    late = engine.advance(state, epoch(at(20)))
    assert [(c.tag, c.op, c.at, c.cause) for c in late.changes] == [
        ("vip_banquet", "removed", at(5), {"timer": f"vip_banquet@{at(5)}"}),
        ("banquet_buyer", "removed", at(5), {"timer": f"banquet_buyer@{at(5)}"})]


def test_expiry_fires_before_a_later_event_is_applied(engine):
    state = start(engine)
    state = engine.apply(state, mark(at(2), "vip_banquet", source="import", guide=None,
                                     expires_at=at(5))).state
    order = paid(at(7), 10_000)
    outcome = engine.apply(state, order)
    assert [(c.tag, c.op, c.cause, c.at) for c in outcome.changes] == [
        ("vip_banquet", "removed", {"timer": f"vip_banquet@{at(5)}"}, at(5)),
        ("banquet_buyer", "removed", {"timer": f"banquet_buyer@{at(5)}"}, at(5)),
        ("buyer", "added", {"event_id": order.event_id}, at(7))]
    assert sorted(outcome.state.tags) == ["buyer", "member"]


def test_an_event_before_expires_at_keeps_the_mark(engine):
    state = start(engine)
    state = engine.apply(state, mark(at(2), "vip_banquet", source="import", guide=None,
                                     expires_at=at(5))).state
    outcome = engine.apply(state, paid(at(4), 10_000))
    assert [(c.tag, c.op) for c in outcome.changes] == [("buyer", "added")]
    assert outcome.state.next_deadline == epoch(at(5))
    assert sorted(outcome.state.tags) == ["banquet_buyer", "buyer", "member", "vip_banquet"]


# --- 5. WeCom marks ----------------------------------------------------------------------------


def test_marked_tags_reach_the_pairs_their_share_and_source_allow(sync_engine):
    eng = sync_engine
    state = eng.apply(None, joined(at(1))).state
    first = eng.apply(state, friend(at(2), "g1", "wm-a"))
    assert edits(first) == [(("pair_added",), "g1", "wm-a", ("member",), ())]
    second = eng.apply(first.state, friend(at(2, 11), "g2", "wm-b"))
    assert edits(second) == [(("pair_added",), "g2", "wm-b", ("member",), ())]
    state = second.state

    own = eng.apply(state, mark(at(3), "prefers_call", guide="g1"))
    assert edits(own) == [(("tags",), "g1", "wm-a", ("prefers_call",), ())]
    assert own.marks[0].names == {"prefers_call": "偏好电话联系"}

    shared = eng.apply(own.state, mark(at(4), "wine_lover", guide="g2"))
    assert edits(shared) == [(("tags",), "g1", "wm-a", ("wine_lover",), ()),
                             (("tags",), "g2", "wm-b", ("wine_lover",), ())]
    assert shared.marks[0].names == {"wine_lover": "爱酒人士"}

    imported = eng.apply(shared.state, mark(at(5), "spring_2024", source="import", guide=None,
                                            name_zh="春节活动"))
    assert edits(imported) == [(("tags",), "g1", "wm-a", ("spring_2024",), ()),
                               (("tags",), "g2", "wm-b", ("spring_2024",), ())]
    assert imported.marks[0].names == {"spring_2024": "春节活动"}

    from_wecom = eng.apply(imported.state, mark(at(6), "gift_buyer", source="wecom",
                                                guide="g1"))
    assert [(c.tag, c.op, c.source) for c in from_wecom.changes] == [
        ("gift_buyer", "added", "wecom")]
    assert edits(from_wecom) == [(("tags",), "g2", "wm-b", ("gift_buyer",), ())]
    assert from_wecom.marks[0].names == {"gift_buyer": "送礼客户"}
    state = from_wecom.state

    g1_tags = ("member", "prefers_call", "spring_2024", "wine_lover")
    g2_tags = ("gift_buyer", "member", "spring_2024", "wine_lover")
    refused = eng.apply(state, consent(at(7), False))
    assert refused.changes == []
    assert edits(refused) == [(("consent",), "g1", "wm-a", (), g1_tags),
                              (("consent",), "g2", "wm-b", (), g2_tags)]
    assert refused.marks[0].names == {
        "member": "会员", "prefers_call": "偏好电话联系", "spring_2024": "春节活动",
        "wine_lover": "爱酒人士", "gift_buyer": "送礼客户"}
    assert sorted(refused.state.tags) == sorted(set(g1_tags) | set(g2_tags))  # kept

    restored = eng.apply(refused.state, consent(at(8), True))
    assert edits(restored) == [(("consent",), "g1", "wm-a", g1_tags, ()),
                               (("consent",), "g2", "wm-b", g2_tags, ())]

    # a guide's own tag marked before they add the customer, and the shared ones, reach them
    noted = eng.apply(restored.state, mark(at(9), "likes_baijiu", guide="g3",
                                           name_zh="爱白酒"))
    assert [(c.tag, c.op) for c in noted.changes] == [("likes_baijiu", "added")]
    assert noted.marks == []  # g3 has no pair yet; it is no one else's tag
    third = eng.apply(noted.state, friend(at(10), "g3", "wm-c"))
    assert edits(third) == [(("pair_added",), "g3", "wm-c",
                             ("gift_buyer", "likes_baijiu", "member", "spring_2024",
                              "wine_lover"), ())]
    assert third.marks[0].names == {
        "gift_buyer": "送礼客户", "likes_baijiu": "爱白酒", "member": "会员",
        "spring_2024": "春节活动", "wine_lover": "爱酒人士"}


def test_a_wecom_tag_removed_in_wecom_comes_off_the_other_guides_only(sync_engine):
    eng = sync_engine
    state = eng.apply(None, joined(at(1))).state
    for e in (friend(at(2), "g1", "wm-a"), friend(at(2, 11), "g2", "wm-b"),
              mark(at(3), "gift_buyer", source="wecom", guide="g1")):
        state = eng.apply(state, e).state
    removed = eng.apply(state, mark(at(4), "gift_buyer", op="removed", source="wecom",
                                    guide="g1"))
    assert [(c.tag, c.op, c.source) for c in removed.changes] == [
        ("gift_buyer", "removed", "wecom")]
    assert edits(removed) == [(("tags",), "g2", "wm-b", (), ("gift_buyer",))]


def test_an_own_tag_marked_by_two_guides_shows_on_both_until_each_takes_theirs_off(sync_engine):
    """Regression: a second guide's mark of an `own` tag reached no customer, and that
    guide's removal took the first guide's note away."""
    eng = sync_engine
    state = eng.apply(None, joined(at(1))).state
    for e in (friend(at(2), "g1", "wm-a"), friend(at(2, 11), "g2", "wm-b"),
              mark(at(3), "prefers_call", guide="g1")):
        state = eng.apply(state, e).state
    second = eng.apply(state, mark(at(4), "prefers_call", guide="g2"))
    assert second.changes == []  # the member held it already
    assert edits(second) == [(("tags",), "g2", "wm-b", ("prefers_call",), ())]
    first_off = eng.apply(second.state, mark(at(5), "prefers_call", op="removed", guide="g1"))
    assert first_off.changes == [] and "prefers_call" in first_off.state.tags
    assert edits(first_off) == [(("tags",), "g1", "wm-a", (), ("prefers_call",))]
    last_off = eng.apply(first_off.state, mark(at(6), "prefers_call", op="removed", guide="g2"))
    assert [(c.tag, c.op) for c in last_off.changes] == [("prefers_call", "removed")]
    assert edits(last_off) == [(("tags",), "g2", "wm-b", (), ("prefers_call",))]


def test_consent_refused_then_a_mark_sends_nothing_until_consent_returns(sync_engine):
    eng = sync_engine
    state = eng.apply(None, joined(at(1))).state
    for e in (friend(at(2), "g1", "wm-a"), consent(at(3), False)):
        state = eng.apply(state, e).state
    marked = eng.apply(state, mark(at(4), "wine_lover", guide="g1"))
    assert [(c.tag, c.op) for c in marked.changes] == [("wine_lover", "added")]
    assert marked.marks == []
    back = eng.apply(marked.state, consent(at(5), True))
    assert edits(back) == [(("consent",), "g1", "wm-a", ("member", "wine_lover"), ())]


def test_an_expiring_import_comes_off_every_pair_at_its_expiry(sync_engine):
    eng = sync_engine
    state = eng.apply(None, joined(at(1))).state
    for e in (friend(at(2), "g1", "wm-a"), friend(at(2, 11), "g2", "wm-b"),
              mark(at(3), "spring_2024", source="import", guide=None, name_zh="春节活动",
                   expires_at=at(5))):
        state = eng.apply(state, e).state
    due = eng.advance(state, epoch(at(5)))
    assert edits(due) == [(("tags",), "g1", "wm-a", (), ("spring_2024",)),
                          (("tags",), "g2", "wm-b", (), ("spring_2024",))]
    assert due.marks[0].names == {"spring_2024": "春节活动"}
    assert due.marks[0].cause == {"timer": f"spring_2024@{at(5)}"}


# --- 6. determinism and redelivery -------------------------------------------------------------


def history_lines() -> list[bytes]:
    def tag(when, tag_id, **fields):
        return raw_event("interaction.tag_marked", when, "M1", tag=tag_id, channel="wecom",
                         event_id=f"mk-{tag_id}-{fields.get('op', 'added')}",
                         **{"op": "added", **fields})

    events = [
        raw_event("interaction.member_joined", at(1), "M1", event_id="j1"),
        raw_event("interaction.wecom_friend_added", at(2), "M1", event_id="f1",
                  guide_id="g1", external_userid="wm-a", channel="wecom"),
        raw_event("interaction.wecom_friend_added", at(2, 11), "M1", event_id="f2",
                  guide_id="g2", external_userid="wm-b", channel="wecom"),
        tag(at(3), "vip_banquet", source="import", expires_at=at(6)),
        tag(at(3, 12), "prefers_call", source="guide", guide_id="g1"),
        tag(at(4), "likes_baijiu", source="guide", guide_id="g2", name_zh="爱白酒"),
        raw_event("order.paid", at(5), "M1", event_id="o1", amount_fen=20_000),
        tag(at(7), "prefers_call", source="guide", guide_id="g1", op="removed"),
        raw_event("order.paid", at(8), "M1", event_id="o2", amount_fen=20_000),
    ]
    return [orjson.dumps(e) for e in events]


def test_a_dry_run_twice_gives_the_same_change_ids_and_marks(engine):
    first = dry_run(engine, history_lines())
    second = dry_run(engine, history_lines())
    assert first.rejected == [] and second.rejected == []
    assert [(c.tag, c.op) for c in first.changes] == [
        ("member", "added"), ("vip_banquet", "added"), ("banquet_buyer", "added"),
        ("prefers_call", "added"), ("likes_baijiu", "added"), ("buyer", "added"),
        ("vip_banquet", "removed"), ("banquet_buyer", "removed"), ("prefers_call", "removed")]
    assert [c.change_id for c in first.changes] == [c.change_id for c in second.changes]
    assert len({c.change_id for c in first.changes}) == len(first.changes)
    assert msgspec.to_builtins(first.marks) == msgspec.to_builtins(second.marks)
    assert [(r.reasons, r.cause, [(m.userid, m.external_userid, m.add, m.remove)
                                  for m in r.marks]) for r in first.marks] == [
        (("pair_added",), {"event_id": "f1"}, [("g1", "wm-a", ("member",), ())]),
        (("pair_added",), {"event_id": "f2"}, [("g2", "wm-b", ("member",), ())]),
        (("tags",), {"event_id": "mk-vip_banquet-added"},
         [("g1", "wm-a", ("banquet_buyer", "vip_banquet"), ()),
          ("g2", "wm-b", ("banquet_buyer", "vip_banquet"), ())]),
        (("tags",), {"event_id": "mk-prefers_call-added"},
         [("g1", "wm-a", ("prefers_call",), ())]),
        (("tags",), {"event_id": "mk-likes_baijiu-added"},
         [("g2", "wm-b", ("likes_baijiu",), ())]),
        (("tags",), {"event_id": "o1"}, [("g1", "wm-a", ("buyer",), ()),
                                         ("g2", "wm-b", ("buyer",), ())]),
        # the import expired (day 6) before the day-7 removal was applied: one record for both
        (("tags",), {"event_id": "mk-prefers_call-removed"},
         [("g1", "wm-a", (), ("banquet_buyer", "prefers_call", "vip_banquet")),
          ("g2", "wm-b", (), ("banquet_buyer", "vip_banquet"))])]
    assert len({r.mark_id for r in first.marks}) == len(first.marks)
    assert encode_state(first.states["M1"]) == encode_state(second.states["M1"])
    assert sorted(first.states["M1"].tags) == ["buyer", "likes_baijiu", "member"]


def test_a_redelivered_mark_is_a_duplicate(engine):
    state = start(engine)
    e = mark(at(2), "vip_banquet")
    state = engine.apply(state, e).state
    redelivered = engine.apply(state, e)
    assert redelivered.duplicate is True
    assert (redelivered.changes, redelivered.marks) == ([], [])
    # still a duplicate after the tag was taken off: the old mark does not put it back
    state = engine.apply(state, mark(at(3), "vip_banquet", op="removed")).state
    before = encode_state(state)
    again = engine.apply(state, e)
    assert again.duplicate is True and again.changes == []
    assert encode_state(again.state) == before and "vip_banquet" not in again.state.tags


def test_a_redelivered_mark_in_the_dry_run_is_counted_once(engine):
    lines = history_lines()
    result = dry_run(engine, [*lines, lines[4]])  # prefers_call marked again, same event id
    assert result.duplicates == 1
    assert [c.change_id for c in result.changes] == \
        [c.change_id for c in dry_run(engine, lines).changes]


# --- 7. decoding -------------------------------------------------------------------------------


def raw(**fields) -> bytes:
    body = {"tag": "vip_banquet", "op": "added", "source": "guide", "guide_id": "g1",
            "event_id": "m-1", **fields}
    body = {k: v for k, v in body.items() if v is not None}
    return orjson.dumps(raw_event("interaction.tag_marked", at(2), "M1", **body))


@pytest.mark.parametrize("source", ["guide", "wecom"])
def test_a_mark_by_a_guide_or_in_wecom_without_guide_id_is_rejected(source):
    with pytest.raises(EventRejected, match="guide_id"):
        decode_event(raw(source=source, guide_id=None), "events.interactions")


@pytest.mark.parametrize("expires_at", [at(2), at(1), "2024-01-02T02:00:00+00:00"])
def test_expires_at_not_after_occurred_at_is_rejected(expires_at):
    with pytest.raises(EventRejected, match="expires_at must be later than occurred_at"):
        decode_event(raw(source="import", guide_id=None, expires_at=expires_at),
                     "events.interactions")


def test_a_valid_mark_decodes_to_tag_marked():
    decoded = decode_event(raw(name_zh="宴席", expires_at="2024-01-02T02:00:01+00:00"),
                           "events.interactions")
    assert isinstance(decoded, TagMarked)
    assert decoded.event_type == "interaction.tag_marked"
    assert (decoded.tag, decoded.op, decoded.source, decoded.guide_id, decoded.name_zh,
            decoded.event_id, decoded.member_id) == (
        "vip_banquet", "added", "guide", "g1", "宴席", "m-1", "M1")
    assert epoch(decoded.expires_at.isoformat()) == epoch(at(2)) + 1
    imported = decode_event(raw(source="import", guide_id=None), "events.interactions")
    assert isinstance(imported, TagMarked)
    assert (imported.source, imported.guide_id, imported.expires_at) == ("import", None, None)


def test_a_mark_on_another_topic_or_with_bad_fields_is_rejected():
    with pytest.raises(EventRejected, match="belongs on topic 'events.interactions'"):
        decode_event(raw(), "events.orders")
    with pytest.raises(EventRejected, match="op"):
        decode_event(raw(op="toggled"), "events.interactions")
    with pytest.raises(EventRejected, match="name_zh"):
        decode_event(raw(name_zh="名" * 31), "events.interactions")


@pytest.mark.parametrize("tag_id", ["vipBanquet", "vip-banquet", "宴席", "_vip", "a" * 41])
def test_a_marked_tag_id_follows_the_rule_tag_id_pattern(tag_id):
    """Regression: the check accepted upper case and non-ASCII letters after the first."""
    with pytest.raises(RuleDefinitionError, match="lower_snake_case"):
        compile_rules(f"version: m1\nmarked_tags:\n  - {{id: {tag_id}, name_zh: 甲}}\n")
