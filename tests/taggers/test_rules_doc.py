"""docs/rules.md cannot drift from the engine: every rule file, excerpt, condition and error
message it shows is checked here, and so are the claims it makes about time.

Code blocks of the doc, by their info string:
- ```yaml          a complete rule file (starts with `version:`): it must compile;
- ```yaml excerpt  lines of the default pack: they must appear in it, in order, contiguous;
- ```yaml broken   a file that must fail to load, saved as brand.yaml; the ```text block
                   right after it is the exact message;
- ```condition     one condition per line: true/false in the default pack's scope;
- ```expression    one expression per line: compiles in the default pack's scope.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import NamedTuple

import pytest

from schemas.errors import RuleDefinitionError
from streams.platform.settings import DEFAULT_RULES
from taggers.clock import to_epoch
from taggers.engine import Engine
from taggers.rules import compile_rules, load_rules
from tests.factories import event, joined, paid
from tests.support import REPO_ROOT

DOC = REPO_ROOT / "docs" / "rules.md"
DEFAULT_TEXT = DEFAULT_RULES.read_text(encoding="utf-8")


class Block(NamedTuple):
    info: str
    body: str
    line: int  # of the opening fence


def blocks() -> list[Block]:
    found, lines = [], DOC.read_text(encoding="utf-8").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].startswith("```") and lines[i].strip() != "```":
            start, body = i, []
            i += 1
            while not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            found.append(Block(lines[start][3:].strip(), "\n".join(body) + "\n", start + 1))
        elif lines[i].strip() == "```":  # an unlabelled block (shell commands): skip it
            i += 1
            while lines[i].strip() != "```":
                i += 1
        i += 1
    return found


BLOCKS = blocks()


def of_kind(info: str) -> list[Block]:
    return [b for b in BLOCKS if b.info == info]


def block_id(block: Block) -> str:
    return f"docs/rules.md:{block.line}"


def first_code_line(body: str) -> str:
    return next(line for line in body.splitlines() if line.strip() and
                not line.lstrip().startswith("#"))


def test_the_doc_has_examples_of_every_kind() -> None:
    assert len(of_kind("yaml")) >= 6
    assert len(of_kind("yaml broken")) >= 10
    assert len(of_kind("yaml excerpt")) >= 8
    assert of_kind("condition") and of_kind("expression")
    unchecked = [block_id(b) for b in BLOCKS if b.info.startswith("yaml") and
                 b.info not in ("yaml", "yaml excerpt", "yaml broken")]
    assert unchecked == []


# --- complete rule files ---------------------------------------------------------------------


@pytest.mark.parametrize("block", of_kind("yaml"), ids=block_id)
def test_rule_file_in_the_doc_compiles(block: Block) -> None:
    assert first_code_line(block.body).startswith("version:"), \
        "a ```yaml block is a complete rule file; mark fragments 'yaml excerpt'"
    pack = compile_rules(block.body, source=block_id(block))
    assert pack.tags


@pytest.mark.parametrize("block", of_kind("yaml excerpt"), ids=block_id)
def test_excerpt_is_the_default_pack_word_for_word(block: Block) -> None:
    wanted = [line.rstrip() for line in block.body.splitlines() if line.strip()]
    pack_lines = [line.rstrip() for line in DEFAULT_TEXT.splitlines()]
    starts = [i for i, line in enumerate(pack_lines) if line == wanted[0]]
    assert any(pack_lines[i:i + len(wanted)] == wanted for i in starts), \
        "this excerpt no longer matches taggers/rules/default.yaml"


def broken_examples() -> list[pytest.param]:
    params = []
    for i, block in enumerate(BLOCKS):
        if block.info == "yaml broken":
            message = BLOCKS[i + 1]
            assert message.info == "text", f"{block_id(block)}: the message must follow"
            params.append(pytest.param(block.body, message.body.strip(), id=block_id(block)))
    return params


@pytest.mark.parametrize("text,message", broken_examples())
def test_error_shown_in_the_doc_is_the_error_you_get(text: str, message: str) -> None:
    with pytest.raises(RuleDefinitionError) as failure:
        compile_rules(text, source="brand.yaml")
    assert str(failure.value) == message


# --- conditions in the default pack's scope --------------------------------------------------


def compile_in_default_scope(condition: str) -> None:
    """Add a probe tag to the default pack: it sees its counters, trackers, definitions and
    tags. The ttl lets a condition read the current event."""
    probe = ("  - id: doc_probe\n    name_zh: 文档\n    family: model\n    ttl: 1d\n"
             f"    when: {json.dumps(condition, ensure_ascii=False)}\n")
    head, tags, rest = DEFAULT_TEXT.partition("\ntags:\n")
    assert tags, "the default pack has a top-level 'tags:' list"
    compile_rules(head + tags + probe + rest, source="default.yaml + docs/rules.md")


def snippets(info: str) -> list[pytest.param]:
    return [pytest.param(line.strip(), id=f"{block_id(b)}: {line.strip()}")
            for b in of_kind(info) for line in b.body.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("condition", snippets("condition"))
def test_condition_in_the_doc_compiles_in_the_default_scope(condition: str) -> None:
    compile_in_default_scope(condition)


@pytest.mark.parametrize("expression", snippets("expression"))
def test_expression_in_the_doc_compiles_in_the_default_scope(expression: str) -> None:
    compile_in_default_scope(f"({expression}) != null")


# Inline code in the prose: conditions (a comparison) and windows (`name[Nd]`) are checked too,
# except templates written with placeholders (x, t, K, a, b, c, …) and the one shown as wrong.
PLACEHOLDERS = {"x", "t", "K", "N", "a", "b", "c"}
SHOWN_AS_WRONG = {'orders.count == "one"'}


def inline_snippets() -> list[str]:
    prose = re.sub(r"^```.*?^```", "", DOC.read_text(encoding="utf-8"), flags=re.S | re.M)
    found = []
    for span in dict.fromkeys(re.findall(r"`([^`\n]+)`", prose)):
        words = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", span))
        if not words or words & PLACEHOLDERS or "…" in span \
                or span.startswith(("{", "-", ">", "<")):
            continue
        if re.search(r"(==|!=|<=|>=|<|>)", span) or re.fullmatch(r"[a-z_]+\[\d+d\]", span):
            found.append(span)
    return found


def test_the_prose_has_inline_conditions() -> None:
    assert len(inline_snippets()) >= 8


@pytest.mark.parametrize("snippet", inline_snippets())
def test_inline_snippet_in_the_prose_compiles_in_the_default_scope(snippet: str) -> None:
    if snippet in SHOWN_AS_WRONG:
        with pytest.raises(RuleDefinitionError):
            compile_in_default_scope(snippet)
    else:
        compile_in_default_scope(f"({snippet}) != null")


def test_inline_conditions_of_the_first_example_compile() -> None:
    # the one-line form recommended in §2
    compile_rules('version: "x"\ncounters:\n  cap_scans: {on: scan.cap_opened}\ntags:\n'
                  "  - {id: a, name_zh: 甲, family: scan, when: 'cap_scans[90d] >= 3'}\n")


# --- claims the doc makes about time ---------------------------------------------------------


def epoch(text: str) -> int:
    return to_epoch(datetime.fromisoformat(text))


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_rules(DEFAULT_RULES))


def window_value(engine: Engine, events, counter: str, days: int, at: str) -> int:
    state = None
    for ev in events:
        state = engine.apply(state, ev).state
    engine.advance(state, epoch(at))
    series = state.counters.get(counter, [])
    today = engine.calendar.day_of(epoch(at))
    return sum(series[i + 1] for i in range(0, len(series), 2) if series[i] > today - days)


@pytest.mark.parametrize("events,counter,days,held_until,leaves_at", [
    pytest.param([event("interaction.share", "2024-03-01T15:00:00+08:00")], "shares", 30,
                 "2024-03-30T23:59:59+08:00", "2024-03-31T00:00:00+08:00", id="share 30d"),
    pytest.param([paid("2024-01-02T10:00:00+08:00", 100)], "paid_orders", 365,
                 "2024-12-31T23:59:59+08:00", "2025-01-01T00:00:00+08:00", id="order 365d"),
    pytest.param([event("order.refunded", "2024-01-01T10:00:00+08:00", amount_fen=100)],
                 "refunds", 90, "2024-03-30T23:59:59+08:00", "2024-03-31T00:00:00+08:00",
                 id="refund 90d"),
])
def test_window_table_of_the_doc(engine: Engine, events, counter: str, days: int,
                                 held_until: str, leaves_at: str) -> None:
    assert window_value(engine, events, counter, days, held_until) == 1
    assert window_value(engine, events, counter, days, leaves_at) == 0


def test_days_since_example_of_the_doc(engine: Engine) -> None:
    state = engine.apply(None, joined("2024-03-02T09:00:00+08:00")).state
    assert engine.calendar.render(state.next_deadline) == "2024-04-02T09:00:00+08:00"


def deadlines_after_join(condition: str, days: int = 100) -> int:
    pack = compile_rules('version: "x"\ntags:\n  - {id: a, name_zh: 甲, family: operational, '
                         f"when: '{condition}'}}\n")
    engine = Engine(pack)
    state = engine.apply(None, joined("2024-01-01T10:00:00+08:00")).state
    until, stops = epoch("2024-01-01T10:00:00+08:00") + days * 86_400, 0
    while state.next_deadline is not None and state.next_deadline <= until:
        stops += 1
        engine.advance(state, state.next_deadline)
    return stops


def test_days_since_jumps_straight_to_the_threshold() -> None:
    assert deadlines_after_join("joined and days_since(joined_at) >= 31") == 1


def test_number_first_comparison_also_jumps_straight_to_the_threshold() -> None:
    """Regression: 'K <= x' used to wake the member every day for ever."""
    # §7 asks authors to write the number on the right; the other form means the same and
    # should cost the same, not a wake-up every day for ever (100 timers in 100 days)
    assert deadlines_after_join("joined and 31 <= days_since(joined_at)") == 1


def test_ttl_keeps_a_tag_for_ttl_after_its_condition_stops() -> None:
    """Regression: a ttl over a window used to end up to ttl early."""
    # §6: "A ttl on any other tag keeps it for ttl after its condition stops holding".
    # An order on 03-01 leaves paid_orders[30d] at 03-31 00:00: held until 04-07 00:00.
    pack = compile_rules('version: "x"\ncounters:\n  paid_orders: {on: order.paid}\ntags:\n'
                         "  - {id: recent_buyer, name_zh: 近期购买, family: transaction, "
                         "ttl: 7d, when: 'paid_orders[30d] >= 1'}\n")
    engine = Engine(pack)
    state = engine.apply(None, paid("2024-03-01T10:00:00+08:00", 100)).state
    changes = engine.advance(state, epoch("2024-05-01T00:00:00+08:00")).changes
    assert [(c.op, c.at) for c in changes] == [("removed", "2024-04-07T00:00:00+08:00")]


def test_ttl_of_an_event_tag_runs_from_the_event() -> None:
    pack = compile_rules(
        'version: "x"\ntags:\n  - {id: attended, name_zh: 到场, family: interaction, ttl: 7d, '
        "when: 'event.type == \"interaction.event_attended\"'}\n")
    engine = Engine(pack)
    state = engine.apply(None, event("interaction.event_attended",
                                     "2024-03-01T10:00:00+08:00")).state
    state = engine.apply(state, event("interaction.sign_in", "2024-03-05T10:00:00+08:00")).state
    assert "attended" in state.tags
    changes = engine.advance(state, epoch("2024-04-01T00:00:00+08:00")).changes
    assert [(c.op, c.at) for c in changes] == [("removed", "2024-03-08T10:00:00+08:00")]


# --- claims the doc makes about errors -------------------------------------------------------


def test_a_definition_error_names_its_line() -> None:
    """Regression: errors in definitions used to carry no line."""
    # §10: every error names the file and the line
    text = ('version: "x"\ndefinitions:\n  recent: days_since(orders.last_at) <= 30\n'
            "  big: orders.spend_fen >= 1_000_000 and recnet\ntags: []\n")
    with pytest.raises(RuleDefinitionError) as failure:
        compile_rules(text, source="brand.yaml")
    assert str(failure.value).startswith("brand.yaml:4: definition 'big'")
    assert "did you mean 'recent'" in str(failure.value)


def test_an_unreadable_character_is_named_with_its_column() -> None:
    """Regression: the column of the space before the character was reported."""
    text = ('version: "x"\ntags:\n  - id: a\n    name_zh: 甲\n    family: collected\n'
            "    when: orders.count >= 1 && joined\n")
    with pytest.raises(RuleDefinitionError) as failure:
        compile_rules(text, source="brand.yaml")
    assert "'&'" in str(failure.value) and "column 19" in str(failure.value)
