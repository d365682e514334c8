"""`tagstream dryrun --tasks-out FILE`: each guide task's final record, one JSON line each."""

from __future__ import annotations

import orjson
from click.testing import CliRunner

from streams.ops.cli import main
from streams.platform.settings import DEFAULT_RULES
from taggers.dryrun import dry_run, final_tasks
from taggers.engine import Engine
from taggers.rules import load_rules
from tests.factories import raw_event

EVENTS = [
    raw_event("interaction.member_joined", "2024-01-01T10:00:00+08:00", event_id="e1"),
    raw_event("interaction.wecom_friend_added", "2024-01-01T10:05:00+08:00", event_id="e2",
              guide_id="g1", external_userid="wm1"),
    raw_event("interaction.wecom_friend_added", "2024-01-01T10:06:00+08:00", event_id="e3",
              guide_id="g2", external_userid="wm2"),
    # day 31 opens invite_first_order for both guides; this order lapses them
    raw_event("order.paid", "2024-02-02T12:00:00+08:00", event_id="e4", order_id="o1",
              amount_fen=10_000, items=[]),
]
FIELDS = {"task_id", "member_id", "guide", "kind", "opened_at", "due_at", "status", "closed_at",
          "closed_by"}


def test_tasks_out_writes_each_tasks_final_state(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(orjson.dumps(e) for e in EVENTS) + b"\n")
    out = tmp_path / "tasks.jsonl"

    done = CliRunner().invoke(main, ["dryrun", "--events", str(events), "--rules",
                                     str(DEFAULT_RULES), "--tasks-out", str(out)])

    assert done.exit_code == 0, done.output
    assert "2 tasks" in done.output
    written = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert all(FIELDS <= set(task) for task in written)
    assert sorted((t["guide"], t["kind"], t["status"], t["closed_by"], t["version"])
                  for t in written) == [("g1", "invite_first_order", "lapsed", "rule", 2),
                                        ("g2", "invite_first_order", "lapsed", "rule", 2)]
    expected = final_tasks(dry_run(Engine(load_rules(DEFAULT_RULES)),
                                   [orjson.dumps(e) for e in EVENTS]).tasks)
    assert [t["task_id"] for t in written] == [t.task_id for t in expected]
