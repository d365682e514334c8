"""Rule files fail at load with file, line and a suggestion; good ones compile once."""

from __future__ import annotations

import textwrap

import pytest

from schemas.errors import RuleDefinitionError
from streams.platform.settings import DEFAULT_RULES
from taggers.rules import compile_rules, load_rules

HEADER = """\
version: "t.1"
counters:
  paid_orders: {on: order.paid}
  spend_fen: {on: order.paid, sum: event.amount_fen}
tags:
"""


def pack_with(tag_yaml: str):
    return compile_rules(HEADER + textwrap.indent(textwrap.dedent(tag_yaml), "  "), "r.yaml")


BAD = [
    ("unknown name", """
     - id: a
       name_zh: 甲
       family: transaction
       when: order.count == 1
     """, 10, "did you mean 'orders.count'"),
    ("unknown counter", """
     - id: a
       name_zh: 甲
       family: transaction
       when: paid_order[30d] >= 1
     """, 10, "did you mean 'paid_orders'"),
    ("counter without window", """
     - id: a
       name_zh: 甲
       family: transaction
       when: paid_orders >= 1
     """, 10, "paid_orders[30d]"),
    ("type error", """
     - id: a
       name_zh: 甲
       family: transaction
       when: orders.count == "one"
     """, 10, "cannot compare"),
    ("not a condition", """
     - id: a
       name_zh: 甲
       family: transaction
       when: orders.count + 1
     """, 10, "must be true/false"),
    ("bad window", """
     - id: a
       name_zh: 甲
       family: transaction
       when: paid_orders[0d] >= 1
     """, 10, "between 1 and 3660"),
    ("duplicate id", """
     - id: a
       name_zh: 甲
       family: transaction
       when: joined
     - id: a
       name_zh: 乙
       family: transaction
       when: joined
     """, 11, "duplicate tag id"),
    ("cycle", """
     - id: a
       name_zh: 甲
       family: model
       when: has_tag(b)
     - id: b
       name_zh: 乙
       family: model
       when: has_tag(a)
     """, None, "cycle"),
    ("unknown family", """
     - id: a
       name_zh: 甲
       family: transactoin
       when: joined
     """, 9, "did you mean 'transaction'"),
    ("unknown key", """
     - id: a
       name_zh: 甲
       family: transaction
       wehn: joined
     """, 10, "did you mean 'when'"),
    ("name too long for WeCom", """
     - id: a
       name_zh: 一二三四五六七八九十一二三四五六七八九十一二三四五六七八九十一
       family: transaction
       when: joined
     """, 8, "WeCom allows 30"),
    ("syntax error", """
     - id: a
       name_zh: 甲
       family: transaction
       when: orders.count >=
     """, 10, "end of condition"),
    ("eval is not a function", """
     - id: a
       name_zh: 甲
       family: transaction
       when: __import__("os") == 1
     """, 10, "unknown function"),
]


@pytest.mark.parametrize("yaml_text,line,message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_rule_files_fail_with_line_and_hint(yaml_text: str, line: int | None,
                                                message: str) -> None:
    with pytest.raises(RuleDefinitionError) as info:
        pack_with(yaml_text)
    text = str(info.value)
    assert text.startswith("r.yaml")
    assert message in text
    if line is not None:
        assert info.value.line == line, text


def test_yaml_1_1_booleans_do_not_eat_the_on_key() -> None:
    pack = pack_with("""
     - id: a
       name_zh: 甲
       family: transaction
       when: paid_orders[30d] >= 1
     """)
    assert next(c for c in pack.counters if c.name == "paid_orders").event_types == {"order.paid"}


def test_unreadable_file_and_non_mapping_fail_cleanly(tmp_path) -> None:
    with pytest.raises(RuleDefinitionError, match="cannot read rule file"):
        load_rules(tmp_path / "missing.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(RuleDefinitionError, match="is a mapping"):
        load_rules(bad)
    python_tag = tmp_path / "obj.yaml"
    python_tag.write_text('version: !!python/object/apply:os.system ["true"]\n')
    with pytest.raises(RuleDefinitionError, match="not valid YAML"):
        load_rules(python_tag)


def test_default_pack_loads_with_windows_sized_by_rules() -> None:
    pack = load_rules(DEFAULT_RULES)
    assert {t.id for t in pack.tags} >= {"member", "first_purchase", "repeat_buyer", "high_value"}
    assert {c.name: c.retention_days for c in pack.counters}["paid_orders"] == 365


# A tag reading a definition that reads another tag (has_tag/had_tag) reads that tag too.
TAG_THROUGH_DEFINITION = """\
version: "t.2"
timezone: "+08:00"
definitions:
  big_spender: has_tag(high_value)
tags:
  - {id: follow_up, name_zh: 跟进, family: model, when: big_spender}
  - {id: high_value, name_zh: 高价值, family: transaction, when: orders.spend_fen >= 100}
"""


def test_a_tag_read_through_a_definition_orders_and_reevaluates_its_reader() -> None:
    # Regression: the definition's has_tag was recorded for no tag, so follow_up ran before
    # high_value and no order re-evaluated it (it has no event input of its own).
    from taggers.engine import Engine
    from tests.factories import paid

    pack = compile_rules(TAG_THROUGH_DEFINITION, "r.yaml")
    assert [unit[0].id for unit in pack.units] == ["high_value", "follow_up"]
    assert pack.tag("follow_up").depends_on == ("high_value",)
    engine = Engine(pack)
    state = engine.apply(None, paid("2024-01-02T10:00:00+08:00", 50)).state
    outcome = engine.apply(state, paid("2024-01-03T10:00:00+08:00", 60))
    assert [(c.tag, c.op) for c in outcome.changes] == [("high_value", "added"),
                                                        ("follow_up", "added")]
