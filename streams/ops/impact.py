"""`tagstream impact`: what replacing one rule pack by another would do, before deploying it.

The events are decoded once and run through the production engine under each pack
(taggers.dryrun, as `tagstream dryrun` does); taggers/impact.py compares the two results.

WeCom calls are counted as `tagstream wecom-sync` makes them: one mark_tag per
(guide, customer) pair named in a `wecom.marks` record, with that record's adds and removes
for the pair in the one call (`pair_edits`, the sync's own split). The sync also folds
records of one pair that arrive within TAGSTREAM_WECOM_COALESCE_MS of each other into one
call; live, a member's records are rarely that close, so this is the count of a live stream
(a backfill that floods the topic coalesces more and calls less).
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Any, Iterable

from schemas.wecom import WecomMarks
from streams.serving.wecom.sync import pair_edits
from taggers.dryrun import DryRunResult, decode_lines, run_decoded
from taggers.engine import Engine
from taggers.impact import Impact, compare
from taggers.rules import RulePack, load_rules


def mark_tag_calls(record: WecomMarks) -> int:
    """The mark_tag calls the WeCom sync makes for one record: one per pair it names."""
    return len(pair_edits(record))


def preview(events_path: Path, old_rules: Path, new_rules: Path, *, as_of: int | None,
            allowed_lateness_s: int) -> tuple[Impact, RulePack, int]:
    """Both dry runs over `events_path` (decoded once) and their comparison, the new pack,
    and how many lines were rejected. Raises RuleDefinitionError for a rule file that does
    not load (before any event is read)."""
    old_pack, new_pack = load_rules(old_rules), load_rules(new_rules)
    decoded = DryRunResult()
    with events_path.open("rb") as lines:
        rows = decode_lines(lines, decoded)
    runs = [run_decoded(Engine(pack, allowed_lateness_s), rows,
                        DryRunResult(rejected=list(decoded.rejected)), as_of)
            for pack in (old_pack, new_pack)]
    impact = compare(runs[0], runs[1], old_pack, new_pack, mark_tag_calls)
    return impact, new_pack, len(runs[1].rejected)


def impact_json(impact: Impact, pack: RulePack, *, events: Path, old_rules: Path,
                new_rules: Path, rejected: int) -> dict[str, Any]:
    return {
        "events": str(events),
        "members": impact.members,
        "rejected": rejected,
        "as_of": pack.calendar.render(impact.as_of) if impact.as_of is not None else None,
        "old": {"rules": str(old_rules), "version": impact.old_version},
        "new": {"rules": str(new_rules), "version": impact.new_version},
        "tags": [{"tag": t.tag, "name_zh": t.name_zh, "before": t.before, "after": t.after,
                  "gained": t.gained, "lost": t.lost} for t in impact.tags],
        "tasks": [{"kind": t.kind, "name_zh": t.name_zh, "opened_before": t.before,
                   "opened_after": t.after} for t in impact.tasks],
        "wecom": {"mark_tag_calls_before": impact.mark_tag_calls_before,
                  "mark_tag_calls_after": impact.mark_tag_calls_after,
                  "mark_tag_calls_difference": impact.mark_tag_calls_difference},
    }


def impact_text(impact: Impact, pack: RulePack, *, events: Path, old_rules: Path,
                new_rules: Path, rejected: int, show_all: bool = False) -> str:
    as_of = pack.calendar.render(impact.as_of) if impact.as_of is not None else "-"
    lines = [f"{new_rules} ({impact.new_version}) instead of {old_rules} ({impact.old_version}),"
             f" over {events}: {impact.members} members, as of {as_of}"
             + (f", {rejected} lines rejected" if rejected else ""), ""]
    shown = [t for t in impact.tags if show_all or t.changed]
    rows = [[t.tag, t.name_zh, t.before, t.after, _signed(t.after - t.before), f"+{t.gained}",
             f"-{t.lost}"] for t in shown]
    lines += _table(["tag", "名称", "before", "after", "change", "gained", "lost"], rows)
    unchanged = len(impact.tags) - sum(t.changed for t in impact.tags)
    if not shown:
        lines.append("no tag changes holders")
    if unchanged and not show_all:
        lines.append(f"{unchanged} more tags keep exactly the same members (--all lists them)")
    lines.append("")
    if not impact.tasks:
        lines.append("tasks: neither pack opens any")
    else:
        lines += _table(["task", "名称", "opened before", "opened after", "change"],
                        [[t.kind, t.name_zh, t.before, t.after, _signed(t.after - t.before)]
                         for t in impact.tasks])
    lines += ["", f"WeCom mark_tag calls: {impact.mark_tag_calls_before:,} before, "
                  f"{impact.mark_tag_calls_after:,} after "
                  f"({_signed(impact.mark_tag_calls_difference)})"]
    return "\n".join(lines)


def _signed(number: int) -> str:
    return f"{number:+,}" if number else "0"


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _table(header: list[str], rows: Iterable[list[Any]]) -> list[str]:
    """Columns padded to their widest cell; the first two left-aligned, numbers right."""
    cells = [header, *([f"{c:,}" if isinstance(c, int) else str(c) for c in row]
                       for row in rows)]
    widths = [max(_width(row[i]) for row in cells) for i in range(len(header))]

    def line(row: list[str]) -> str:
        padded = [cell + " " * (width - _width(cell)) if i < 2
                  else " " * (width - _width(cell)) + cell
                  for i, (cell, width) in enumerate(zip(row, widths))]
        return "  ".join(padded).rstrip()

    return [line(row) for row in cells]
