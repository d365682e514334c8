"""The bench's pure helpers: profile summaries and choosing the history's length."""

from __future__ import annotations

import pytest

from streams.bench import days_for, format_top, live_order, parse_collapsed, summarize_stacks
from streams.generate import generate_events

PY_SPY_RAW = [
    "<module> (streams/cli.py:1);run (faust/worker.py:10);apply (taggers/engine.py:60) 30",
    "<module> (streams/cli.py:1);run (faust/worker.py:10);apply (taggers/engine.py:61) 10",
    "<module> (streams/cli.py:1);run (faust/worker.py:10);send (aiokafka/producer.py:5) 40",
    "<module> (streams/cli.py:1);poll (selectors.py:9) 20",
    "not a stack line",
]


def test_collapsed_stacks_give_self_and_total_shares_per_function():
    summary = summarize_stacks(parse_collapsed(PY_SPY_RAW))
    assert summary["samples"] == 100
    own = {row["function"]: row["pct"] for row in summary["top_self"]}
    total = {row["function"]: row["pct"] for row in summary["top_total"]}
    # Lines of one function are merged: 30 + 10 samples of apply.
    assert own == {"send (aiokafka/producer.py)": 40.0, "apply (taggers/engine.py)": 40.0,
                   "poll (selectors.py)": 20.0}
    assert total["run (faust/worker.py)"] == 80.0 and total["<module> (streams/cli.py)"] == 100.0
    text = format_top({"tool": "py-spy", **summary})
    assert "40.0  send (aiokafka/producer.py)" in text


def test_a_recursive_function_counts_once_in_its_total():
    stacks = parse_collapsed(["f (a.py:1);f (a.py:1);g (a.py:2) 10"])
    total = {row["function"]: row["pct"] for row in summarize_stacks(stacks)["top_total"]}
    assert total["f (a.py)"] == 100.0


@pytest.mark.parametrize("members, events", [(200, 2_000), (200, 6_000)])
def test_days_are_chosen_to_give_about_the_requested_events(members, events):
    days = days_for(members, events, seed=3)
    made = sum(1 for _ in generate_events(members, days, 3))
    assert 0.75 * events <= made <= 1.25 * events


def test_live_orders_are_first_orders_of_distinct_new_members():
    first, second = live_order(0), live_order(1)
    assert first[0] != second[0] and first[0].startswith("LIVE-")
    assert b'"event_type":"order.paid"' in first[1]
