"""Guides answering their tasks in a generated history: `interaction.task_done` events.

A task's id comes from the engine (the member, the task kind, the guide and the change that
opened it), so the generator cannot write these; a dry run of the history finds the tasks, and
every `every`-th of them is marked done by its guide a while after it opened, while it is still
open. A done event changes no tag, so the history's tasks stay the same; they end done, and
those whose member orders within `convert_within` are converted.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import orjson

from taggers.dryrun import dry_run, final_tasks
from taggers.engine import Engine

# How long after opening the guide answers: within the shortest due time of the default pack.
ANSWER_AFTER = timedelta(hours=20)


def with_tasks_done(engine: Engine, lines: list[bytes], every: int = 3) -> list[bytes]:
    """`lines` (time-ordered JSON events) with a done event for every `every`-th task that is
    still open `ANSWER_AFTER` its opening, in time order."""
    tasks = final_tasks(dry_run(engine, lines).tasks)
    done_events = []
    for index, task in enumerate(tasks):
        if index % every:
            continue
        answered = datetime.fromisoformat(task.opened_at) + ANSWER_AFTER
        if task.closed_at is not None and datetime.fromisoformat(task.closed_at) <= answered:
            continue  # closed before the guide came to it
        done_events.append((answered, orjson.dumps({
            "event_id": f"done-{task.task_id}", "event_type": "interaction.task_done",
            "member_id": task.member_id, "occurred_at": answered.isoformat(),
            "channel": "wecom", "schema_version": 1, "task_id": task.task_id,
            "guide_id": task.guide, "note": "已联系客户"})))
    history = [(datetime.fromisoformat(orjson.loads(line)["occurred_at"]), line)
               for line in lines]
    merged = sorted([*history, *done_events], key=lambda row: row[0])  # stable: events first
    return [line for _, line in merged]
