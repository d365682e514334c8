"""A new member's first evaluation runs only the units the event can change, plus any unit
that holds or has a deadline for a member with no state. Its results must equal evaluating
every unit, which is what the engine did before (the oracle below)."""

from __future__ import annotations

import orjson
import pytest

from streams.platform.settings import DEFAULT_RULES
from streams.tools.generate import generate_events
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import RulePack, compile_rules, load_rules
from taggers.state import encode_state
from tests.factories import event, joined

PACK = """
version: "first-1"
timezone: "+08:00"
tags:
  - id: not_joined
    name_zh: 未入会
    family: lifecycle
    when: not joined
  - id: december
    name_zh: 十二月
    family: operational
    when: this_month() == 12
  - id: joined_tag
    name_zh: 已入会
    family: lifecycle
    when: joined
  - id: reads_not_joined
    name_zh: 未入会读者
    family: lifecycle
    when: has_tag(not_joined)
"""


def every_unit_engine(pack: RulePack) -> Engine:
    """The oracle: a new member's first evaluation runs every unit."""
    return Engine(pack, skip_inert_units=False)


def held(outcome) -> set[str]:
    return set(outcome.state.tags)


def test_a_unit_holding_for_a_member_with_no_state_runs_on_an_event_it_does_not_read() -> None:
    engine = Engine(compile_rules(PACK))
    outcome = engine.apply(None, event("interaction.browse", "2026-11-20T10:00:00+08:00"))
    # not_joined reads only member_joined, yet it holds for a new member; has_tag follows it
    assert held(outcome) == {"not_joined", "reads_not_joined"}


def test_a_unit_with_a_deadline_for_a_member_with_no_state_is_scheduled() -> None:
    engine = Engine(compile_rules(PACK))
    first = engine.apply(None, event("interaction.browse", "2026-11-20T10:00:00+08:00"))
    assert "december" not in held(first)
    later = engine.apply(first.state, event("interaction.browse", "2026-12-01T09:00:00+08:00"))
    added = [(c.tag, c.op, c.at, c.cause) for c in later.changes]
    assert ("december", "added", "2026-12-01T00:00:00+08:00",
            {"timer": "december@2026-12-01T00:00:00+08:00"}) in added


def test_the_first_evaluation_finds_what_evaluating_every_unit_finds() -> None:
    pack = compile_rules(PACK)
    events = [event("interaction.browse", "2026-12-03T10:00:00+08:00", member="A"),
              joined("2026-11-03T10:00:00+08:00", member="B"),
              event("interaction.share", "2026-10-03T10:00:00+08:00", member="C")]
    for one in events:
        fast, full = Engine(pack).apply(None, one), every_unit_engine(pack).apply(None, one)
        assert [c.change_id for c in fast.changes] == [c.change_id for c in full.changes]
        assert encode_state(fast.state) == encode_state(full.state)


@pytest.mark.slow
def test_the_default_pack_over_a_generated_history_equals_the_every_unit_oracle() -> None:
    lines = [orjson.dumps(e) for e in generate_events(members=400, days=60, seed=11)]
    pack = load_rules(DEFAULT_RULES)
    fast, full = dry_run(Engine(pack), lines), dry_run(every_unit_engine(pack), lines)
    assert len(fast.changes) > 400
    assert [c.change_id for c in fast.changes] == [c.change_id for c in full.changes]
    assert {m: encode_state(s) for m, s in fast.states.items()} == \
        {m: encode_state(s) for m, s in full.states.items()}
