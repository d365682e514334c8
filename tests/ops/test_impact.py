"""`tagstream impact`: "what happens if I change 90 days to 60", answered before deploying.

The preview must equal a diff of two full dry runs exactly, per tag; the expected diff here is
computed from two independent `dry_run` calls (each decoding the file itself), not by the
module under test. Then the human table, and a rule file that does not load (exit 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from streams.ops.cli import main
from streams.platform.settings import DEFAULT_RULES
from streams.tools.generate import generate_events, write_jsonl
from taggers.dryrun import DryRunResult, dry_run
from taggers.engine import Engine
from taggers.rules import load_rules

NINETY = "days_since_order >= 90"
SIXTY = "days_since_order >= 60"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("impact")
    events = folder / "events.jsonl"
    with events.open("wb") as out:
        write_jsonl(generate_events(members=300, days=150, seed=11), out)
    default = Path(DEFAULT_RULES).read_text("utf-8")
    dormant = default.index("- id: dormant_90d")
    # Only dormant_90d's rule changes: the same condition elsewhere (lifecycle) keeps 90 days.
    end = default.index("- id:", dormant + 1)
    assert default[dormant:end].count(NINETY) == 1
    sixty = default[:dormant] + default[dormant:end].replace(NINETY, SIXTY) + default[end:]
    new = folder / "sixty.yaml"
    new.write_text(sixty, "utf-8")
    broken = folder / "broken.yaml"
    broken.write_text(sixty.replace(SIXTY, "days_since_ordr >= 60"), "utf-8")
    return {"events": events, "old": Path(DEFAULT_RULES), "new": new, "broken": broken}


def run_cli(*args: str | Path) -> tuple[int, str, str]:
    done = CliRunner().invoke(main, ["impact", *map(str, args)])
    return done.exit_code, done.stdout, done.stderr


def held_by_tag(result: DryRunResult) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for member_id, state in result.states.items():
        for tag in state.tags:
            out.setdefault(tag, set()).add(member_id)
    return out


def wecom_calls(result: DryRunResult) -> int:
    """One mark_tag per distinct (guide, customer) pair a record names (DESIGN.md: each pair
    needs its own call), counted here without the sync's code."""
    return sum(len({(m.userid, m.external_userid) for m in record.marks
                    if m.userid and m.external_userid}) for record in result.marks)


def opened_by_kind(result: DryRunResult) -> dict[str, int]:
    """Distinct task ids per task kind (a task has a record per state)."""
    kinds: dict[str, set[str]] = {}
    for task in result.tasks:
        kinds.setdefault(task.kind, set()).add(task.task_id)
    return {kind: len(ids) for kind, ids in kinds.items()}


@pytest.mark.slow  # four dry runs of ~5,400 events: the preview's two and the two it must equal
def test_sixty_days_instead_of_ninety_equals_the_diff_of_two_full_dry_runs(files) -> None:
    with files["events"].open("rb") as lines:
        before = dry_run(Engine(load_rules(files["old"])), lines)
    with files["events"].open("rb") as lines:
        after = dry_run(Engine(load_rules(files["new"])), lines)
    held_before, held_after = held_by_tag(before), held_by_tag(after)
    expected = {tag: {"before": len(held_before.get(tag, ())), "after": len(held_after.get(tag, ())),
                      "gained": len(held_after.get(tag, set()) - held_before.get(tag, set())),
                      "lost": len(held_before.get(tag, set()) - held_after.get(tag, set()))}
                for tag in held_before.keys() | held_after.keys()}

    code, out, err = run_cli("--events", files["events"], "--old", files["old"],
                             "--new", files["new"], "--json")

    assert code == 0, err
    report = json.loads(out)
    assert {t["tag"]: {k: t[k] for k in ("before", "after", "gained", "lost")}
            for t in report["tags"]} == expected
    # The change did something, and what a shorter window must do: more dormant, none fewer.
    dormant = expected["dormant_90d"]
    assert dormant["gained"] > 0 and dormant["lost"] == 0
    assert {t["tag"]: t["name_zh"] for t in report["tags"]}["dormant_90d"] == "沉睡"
    assert report["members"] == len(before.states) == 300
    assert report["wecom"] == {
        "mark_tag_calls_before": wecom_calls(before), "mark_tag_calls_after": wecom_calls(after),
        "mark_tag_calls_difference": wecom_calls(after) - wecom_calls(before)}
    assert report["wecom"]["mark_tag_calls_difference"] > 0  # newly dormant members' tags
    opened_before, opened_after = opened_by_kind(before), opened_by_kind(after)
    assert {t["kind"]: (t["opened_before"], t["opened_after"]) for t in report["tasks"]} == {
        kind: (opened_before.get(kind, 0), opened_after.get(kind, 0))
        for kind in opened_before.keys() | opened_after.keys()}
    # dormant_90d opens 唤醒关怀 for each of the member's guides: more dormant, more tasks
    assert opened_after["wake_dormant"] > opened_before["wake_dormant"]


@pytest.fixture(scope="module")
def small_events(tmp_path_factory: pytest.TempPathFactory) -> Path:
    events = tmp_path_factory.mktemp("impact-small") / "events.jsonl"
    with events.open("wb") as out:
        write_jsonl(generate_events(members=40, days=200, seed=5), out)
    return events


def test_the_table_names_each_changed_tag_in_chinese_and_counts_the_calls(
        files, small_events) -> None:
    code, out, err = run_cli("--events", small_events, "--old", files["old"],
                             "--new", files["new"])

    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("tag "))
    assert lines[header].split() == ["tag", "名称", "before", "after", "change", "gained", "lost"]
    dormant = next(line for line in lines if line.startswith("dormant_90d "))
    _, name, before, after, change, gained, lost = dormant.split()
    assert name == "沉睡" and int(gained) > 0 and lost == "-0"
    assert int(after) - int(before) == int(change) == int(gained)
    assert "more tags keep exactly the same members" in out
    assert "唤醒关怀" in out and "opened before" in out
    assert "WeCom mark_tag calls:" in out


def test_the_same_pack_twice_changes_nothing(files, small_events) -> None:
    code, out, err = run_cli("--events", small_events, "--old", files["old"],
                             "--new", files["old"], "--json")

    assert code == 0, err
    report = json.loads(out)
    assert report["tags"] and all(t["gained"] == t["lost"] == 0 and t["before"] == t["after"]
                                  for t in report["tags"])
    assert report["wecom"]["mark_tag_calls_difference"] == 0
    assert report["wecom"]["mark_tag_calls_before"] > 0


def test_a_rule_file_that_does_not_load_is_named_with_its_line_and_exits_2(
        files, small_events) -> None:
    code, out, err = run_cli("--events", small_events, "--old", files["old"],
                             "--new", files["broken"])

    assert code == 2
    assert out == ""
    lines = files["broken"].read_text("utf-8").splitlines()
    line = next(n for n, text in enumerate(lines, start=1) if "days_since_ordr" in text)
    assert f"{files['broken']}:{line}:" in err
    assert "days_since_ordr" in err and "did you mean" in err
