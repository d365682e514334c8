"""Rule files fuzzed: whatever the text, `compile_rules` returns a RulePack or raises
RuleDefinitionError naming the file (and a line within it), never anything else, and never
runs code from the file. A running worker given a broken file keeps its last good rules.

"Never runs code" is checked three ways: YAML tags that construct Python objects, expression
text that would call `__import__`/`open`/`eval` or walk `__class__.__mro__`, and a Python audit
hook that records any exec/eval/compile of code, os.system or subprocess start while a rule
file is being compiled.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.errors import RuleDefinitionError
from streams.platform.settings import DEFAULT_RULES
from streams.platform.rules_watch import RulesWatcher
from taggers.rules import RulePack, compile_rules, load_rules

DEFAULT_TEXT = DEFAULT_RULES.read_text(encoding="utf-8")
DEFAULT_LINES = DEFAULT_TEXT.splitlines()
SOURCE = "fuzz.yaml"
# Counts of generated rule files per test, reported in the README's test section.
TEXT_EXAMPLES = 300
YAMLISH_EXAMPLES = 400
MUTATION_EXAMPLES = 400
NESTING_EXAMPLES = 30

# --- the code-execution tripwire ------------------------------------------------------------

_WATCHED_EVENTS = {"exec", "compile", "os.system", "subprocess.Popen", "os.exec", "os.spawn",
                   "os.posix_spawn", "os.fork", "ctypes.dlopen", "builtins.input"}
_armed = False
_tripped: list[str] = []


def _audit(event: str, args: tuple) -> None:
    if _armed and event in _WATCHED_EVENTS:
        _tripped.append(f"{event}{args!r:.200}")


sys.addaudithook(_audit)  # hooks cannot be removed; it only records while armed


def compile_watched(text: str) -> RulePack | RuleDefinitionError:
    """compile_rules with the tripwire armed; the pack or the RuleDefinitionError."""
    global _armed
    _tripped.clear()
    _armed = True
    try:
        return compile_rules(text, SOURCE)
    except RuleDefinitionError as exc:
        return exc
    finally:
        _armed = False
        assert not _tripped, f"compiling the rule file ran code: {_tripped}"


def check_outcome(text: str) -> RulePack | RuleDefinitionError:
    started = time.monotonic()
    outcome = compile_watched(text)  # any other exception fails the test as it is
    assert time.monotonic() - started < 10, "compiling one rule file took over 10 s"
    if isinstance(outcome, RuleDefinitionError):
        message = str(outcome)
        assert message.startswith(SOURCE), message
        assert outcome.path == SOURCE
        if outcome.line is not None:
            # splitlines: YAML also breaks lines at \r, U+0085, U+2028 and U+2029
            assert 1 <= outcome.line <= len(text.splitlines()) + 2, (outcome.line, message)
    else:
        assert isinstance(outcome, RulePack) and outcome.version
    return outcome


def fuzz(text: str) -> None:
    """check_outcome inside a hypothesis test, tallying outcomes for --hypothesis-show-statistics."""
    outcome = check_outcome(text)
    event("compiled" if isinstance(outcome, RulePack) else "RuleDefinitionError")


# --- hostile fragments ------------------------------------------------------------------------

PWNED = Path("/tmp/tagstream-rule-fuzz-pwned")
CODE_ATTEMPTS = [
    f'!!python/object/apply:os.system ["touch {PWNED}"]',
    f'!!python/object/new:subprocess.Popen [["touch", "{PWNED}"]]',
    "!!python/name:os.system",
    "!!python/module:os",
    f"__import__('os').system('touch {PWNED}')",
    f"open('{PWNED}', 'w')",
    "eval('1+1')",
    "exec('import os')",
    "().__class__.__mro__[1].__subclasses__()",
    "orders.__class__.__init__.__globals__",
    "joined.__dict__",
    "lambda: 1",
    "[x for x in ().__class__.__base__.__subclasses__()]",
    "globals()['__builtins__']",
    "getattr(orders, '__class__')",
    "spend_fen[365d].__class__",
    "f'{1}'",
    "__builtins__",
    "1 if True else 0",
    "import os",
]
NUMBERS = ["9" * 400, "1e308", "1e309", "-1e309", "nan", "inf", "0x" + "f" * 100, "10**10**10",
           "99999999999999999999d", "-1d", "0d", "1_000_000_000_000_000_000_000",
           "100000000000000000000000000000000000000000000000000000000000000000000000000000d"]
STRINGS = ["", " ", "\x00", "\u202e", "\u200f", "\ufeff", "\ud7ff", "😀" * 50, "会员" * 100,
           "a" * 3000, "é\u0301", "\\", "'", '"', "\t", "\r\n", "\u2028", "${HOME}", "%s%n",
           "&anchor", "*alias", "!!binary", "? complex", "|", ">", "---", "...", "#", "@"]
NAMES = ["member", "spend_fen", "paid_orders", "orders.count", "orders.last_at", "joined",
         "days_since", "has_tag", "event.amount_fen", "item.sku", "guides.wecom_count", "now",
         "tier", "points", "not", "and", "or", "true", "false", "null", "~", "365d", "[365d]"]
YAML_TOKENS = (["\n", "  ", "    ", "- ", ": ", ":", ", ", "{", "}", "[", "]", '"', "'", "#",
                "&a ", "*a", "<<: *a", "!!str ", "!!int ", "!!map ", "!!seq ", "? ", "|\n",
                ">\n", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "!local "]
               + ["version", "timezone", "counters", "trackers", "definitions", "tags", "loyalty",
                  "id", "name_zh", "family", "when", "group", "value", "ttl", "on", "sum",
                  "where", "key", "keep", "start_when", "stop_when", "+08:00", "+14:00",
                  "-12:00", "2024-02-30", "order.paid", "collected", "transaction"]
               + CODE_ATTEMPTS + NUMBERS + NAMES + ["a" * 3000, "会员", "😀", "\x00", "\u202e"])

fragments = st.one_of(
    st.sampled_from(YAML_TOKENS),
    st.sampled_from(STRINGS),
    st.text(max_size=20),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


@st.composite
def expressions(draw) -> str:
    """Expression-ish text, including code attempts and attribute chains."""
    parts = draw(st.lists(st.one_of(st.sampled_from(NAMES), st.sampled_from(CODE_ATTEMPTS),
                                    st.sampled_from(NUMBERS), st.text(max_size=8),
                                    st.sampled_from([" >= ", " + ", " and ", " not ", "(", ")",
                                                     ".", ".__class__", "[", "]", ", ", " == ",
                                                     ' "baijiu" ', " / 0 ", " ** ", " % "])),
                         min_size=1, max_size=12))
    return "".join(parts)


@st.composite
def deep_nesting(draw) -> str:
    depth = draw(st.integers(min_value=50, max_value=1500))
    kind = draw(st.sampled_from(["flow_list", "flow_map", "paren", "block"]))
    if kind == "flow_list":
        body = "[" * depth + "]" * depth
    elif kind == "flow_map":
        body = "{a: " * depth + "1" + "}" * depth
    elif kind == "paren":
        body = "'" + "(" * depth + "1" + ")" * depth + " >= 1'"
    else:
        body = "".join(f"\n{'  ' * (i + 1)}k{i}:" for i in range(min(depth, 400))) + " 1"
    return f'version: "x"\ntimezone: "+08:00"\ncounters: {{}}\ntags:\n  - id: t\n' \
           f"    name_zh: t\n    family: collected\n    when: {body}\n"


# --- the properties -------------------------------------------------------------------------


@settings(max_examples=TEXT_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=2000))
def test_random_text_compiles_or_fails_with_a_rule_error(text):
    fuzz(text)


@settings(max_examples=YAMLISH_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(fragments, max_size=120).map("".join))
def test_yaml_shaped_text_compiles_or_fails_with_a_rule_error(text):
    fuzz(text)


@st.composite
def mutated_default_pack(draw) -> str:
    """The default pack with 1-4 edits: lines dropped, repeated, swapped, re-indented, cut,
    values replaced by hostile text, numbers, expressions or deep nesting."""
    lines = list(DEFAULT_LINES)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        at = draw(st.integers(min_value=0, max_value=len(lines) - 1))
        edit = draw(st.sampled_from(["drop", "repeat", "swap", "indent", "dedent", "cut",
                                     "value", "expression", "insert", "truncate_file"]))
        line = lines[at]
        if edit == "drop":
            del lines[at]
        elif edit == "repeat":
            lines.insert(at, line)
        elif edit == "swap":
            other = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines[at], lines[other] = lines[other], lines[at]
        elif edit == "indent":
            lines[at] = "  " + line
        elif edit == "dedent":
            lines[at] = line[2:] if line.startswith("  ") else line.lstrip()
        elif edit == "cut":
            lines[at] = line[:draw(st.integers(min_value=0, max_value=max(0, len(line))))]
        elif edit in ("value", "expression"):
            key, sep, _ = line.partition(": ")
            new = (draw(fragments) if edit == "value"
                   else "'" + draw(expressions()).replace("'", "''") + "'")
            lines[at] = f"{key}{sep or ': '}{new}"
        elif edit == "insert":
            indent = " " * (len(line) - len(line.lstrip()))
            lines.insert(at, indent + draw(st.sampled_from(CODE_ATTEMPTS + YAML_TOKENS)))
        else:
            lines = lines[:at + 1]
        if not lines:
            lines = [""]
    return "\n".join(lines) + "\n"


@settings(max_examples=MUTATION_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(mutated_default_pack())
def test_mutated_default_pack_compiles_or_fails_with_a_rule_error(text):
    fuzz(text)


@settings(max_examples=NESTING_EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(deep_nesting())
def test_deeply_nested_rule_files_fail_cleanly(text):
    fuzz(text)


@pytest.mark.parametrize("attempt", CODE_ATTEMPTS)
@pytest.mark.parametrize("place", ["version", "when", "counter", "document", "definition"])
def test_code_in_a_rule_file_is_never_run(attempt, place):
    PWNED.unlink(missing_ok=True)
    if place == "document":
        text = attempt + "\n"
    else:
        text = DEFAULT_TEXT
        if place == "version":
            text = text.replace('version: "2024-03-01.1"', f"version: {attempt}")
        elif place == "when":
            text = text.replace("    when: joined\n", f"    when: {attempt}\n", 1)
        elif place == "counter":
            text = text.replace("  paid_orders: {on: order.paid}\n",
                                f"  paid_orders: {{on: order.paid, where: {attempt}}}\n", 1)
        else:
            text = text.replace("definitions:\n", f"definitions:\n  pwned: {attempt}\n", 1)
        assert text != DEFAULT_TEXT
    outcome = check_outcome(text)
    assert not PWNED.exists(), "a rule file ran a command"
    if attempt.startswith("!!python") or place == "when":
        assert isinstance(outcome, RuleDefinitionError), f"accepted: {attempt!r} in {place}"


def test_alias_bomb_is_not_expanded_into_a_hang():
    bomb = ["version: \"x\"", "a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 12):
        previous = f"*a{level - 1}"
        bomb.append(f"a{level}: &a{level} [{', '.join([previous] * 10)}]")
    bomb.append("tags: *a11")
    check_outcome("\n".join(bomb) + "\n")


@pytest.mark.parametrize("value", NUMBERS + ["'" + s + "'" for s in STRINGS if "'" not in s]
                         + ["'" + "长" * 200_000 + "'"])
def test_huge_numbers_and_odd_strings_in_thresholds_and_names(value):
    for old, new in (("when: orders.count >= 1", f"when: orders.count >= {value}"),
                     ("keep: 365d", f"keep: {value}"),
                     ("name_zh: 会员", f"name_zh: {value}"),
                     ('timezone: "+08:00"', f"timezone: {value}")):
        assert old in DEFAULT_TEXT, old
        check_outcome(DEFAULT_TEXT.replace(old, new, 1))


def test_the_default_pack_itself_compiles_under_the_tripwire():
    assert isinstance(check_outcome(DEFAULT_TEXT), RulePack)


# --- a running worker keeps its rules -------------------------------------------------------


def _write(path: Path, text: str, tick: int) -> None:
    path.write_text(text, encoding="utf-8")
    # distinct mtimes even within one clock tick, so the watcher always sees the change
    os.utime(path, ns=(tick * 1_000_000_000, tick * 1_000_000_000))


def test_watcher_keeps_the_last_good_rules_through_broken_files(tmp_path):
    path = tmp_path / "rules.yaml"
    good_1 = DEFAULT_TEXT.replace('version: "2024-03-01.1"', 'version: "fuzz-1"')
    good_2 = DEFAULT_TEXT.replace('version: "2024-03-01.1"', 'version: "fuzz-2"')
    broken_line = good_1.splitlines().index("    when: joined") + 1
    broken = [
        (good_1.replace("    when: joined\n", "    when: joinedd\n", 1), broken_line),
        (good_1.replace("    when: joined\n",
                        f'    when: !!python/object/apply:os.system ["touch {PWNED}"]\n', 1),
         broken_line),
        (good_1.replace("    when: joined\n", "    when: __import__('os').system('id')\n", 1),
         broken_line),
        (good_1.replace("tags:\n", "tags:\n  - [unclosed\n", 1), None),
        ("\x00\xff not yaml at all: [", None),
    ]
    _write(path, good_1, 1)
    used: list[str] = []
    watcher = RulesWatcher(path, load_rules(path), lambda pack: used.append(pack.version))
    assert watcher.current.version == "fuzz-1"
    PWNED.unlink(missing_ok=True)
    for tick, (text, line) in enumerate(broken, start=2):
        _write(path, text, tick)
        assert watcher.check() is False
        assert watcher.current.version == "fuzz-1", "a broken file replaced the rules"
        assert watcher.last_error is not None and str(path) in watcher.last_error
        if line is not None:
            assert f"{path}:{line}:" in watcher.last_error, watcher.last_error
        else:
            assert f"{path}:" in watcher.last_error, watcher.last_error
        assert watcher.check() is False  # unchanged file: not retried, rules still kept
    assert not PWNED.exists()
    assert used == []
    _write(path, good_2, 100)
    assert watcher.check() is True
    assert watcher.current.version == "fuzz-2" and used == ["fuzz-2"]
    assert watcher.last_error is None
    path.unlink()  # a deleted file is a broken one too: the rules stay
    assert watcher.check() is False
    assert watcher.current.version == "fuzz-2" and str(path) in (watcher.last_error or "")
