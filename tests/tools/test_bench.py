"""The bench's pure helpers: profile summaries, the history's length, the broker's name, the
changelog ranges a recovery read (from Faust's log) and the records in them."""

from __future__ import annotations

import pytest

from streams.tools.bench import (broker_name, days_for, format_top, live_order,
                           parse_collapsed, records_in, recovery_rounds, summarize_stacks)
from streams.tools.generate import generate_events

PY_SPY_RAW = [
    "<module> (streams/ops/cli.py:1);run (faust/worker.py:10);apply (taggers/engine.py:60) 30",
    "<module> (streams/ops/cli.py:1);run (faust/worker.py:10);apply (taggers/engine.py:61) 10",
    "<module> (streams/ops/cli.py:1);run (faust/worker.py:10);send (aiokafka/producer.py:5) 40",
    "<module> (streams/ops/cli.py:1);poll (selectors.py:9) 20",
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
    assert total["run (faust/worker.py)"] == 80.0 and total["<module> (streams/ops/cli.py)"] == 100.0
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


def test_the_broker_is_named_with_its_version_and_node_count():
    assert broker_name("4.1.1", 1) == "Apache Kafka 4.1.1, 1 node"
    assert broker_name("4.1.1", 3) == "Apache Kafka 4.1.1, 3 nodes"


CHANGELOG = "app-members-changelog"


def _faust_table(title: str, header: str, rows: list[tuple[str, int, int]]) -> list[str]:
    """A Faust recovery table as it appears in a worker's log (terminal.logtable)."""
    return [f"+{title}---+-----------+-----------+", f"| topic | partition | {header} |",
            "+-------+-----------+-----------+",
            *[f"| {topic} | {partition} | {offset} |" for topic, partition, offset in rows],
            "+-------+-----------+-----------+"]


def _recovery_log(highwaters: list[int], starts: list[int]) -> list[str]:
    return [
        "[2026-12-02 19:40:01,000] [11] [INFO] [^---Recovery]: Highwater for active "
        "changelog partitions:",
        *_faust_table("Highwater - Active", "highwater",
                      [(CHANGELOG if p == 0 else "〃", p, hw) for p, hw in enumerate(highwaters)]),
        "[2026-12-02 19:40:01,010] [11] [INFO] [^---Recovery]: active offsets at start of "
        "reading:",
        *_faust_table("Reading Starts At - Active", "offset",
                      [(CHANGELOG if p == 0 else "〃", p, s) for p, s in enumerate(starts)]),
        "[2026-12-02 19:40:02,000] [11] [INFO] [^---Recovery]: Recovery complete",
    ]


def test_recovery_rounds_give_each_partitions_start_and_highwater():
    # From a store: partition 0 persisted up to its highwater, partition 1 ten records short;
    # an empty partition reads nothing (-1, -1).
    assert recovery_rounds(_recovery_log([99, 49, -1], [99, 39, -1])) == [
        {(CHANGELOG, 0): (99, 99), (CHANGELOG, 1): (39, 49), (CHANGELOG, 2): (-1, -1)}]
    # An empty disk reads from the start (-1); then a second round.
    lines = _recovery_log([99, 49], [-1, -1]) + _recovery_log([99, 59], [99, 49])
    assert recovery_rounds(lines) == [{(CHANGELOG, 0): (-1, 99), (CHANGELOG, 1): (-1, 49)},
                                      {(CHANGELOG, 0): (99, 99), (CHANGELOG, 1): (49, 59)}]


def test_recovery_rounds_are_empty_without_faust_tables():
    assert recovery_rounds(["[2026-12-02 19:40:02,000] [11] [INFO] [^Worker]: Ready"]) == []


def test_records_read_are_the_records_a_compacted_changelog_holds_in_each_range():
    # Offsets 0-99 written, compaction kept every tenth of 0-89 and all of 90-99.
    present = {(CHANGELOG, 0): [*range(0, 90, 10), *range(90, 100)]}
    assert records_in({(CHANGELOG, 0): (-1, 99)}, present) == 9 + 10  # an empty disk
    assert records_in({(CHANGELOG, 0): (94, 99)}, present) == 5  # the store's tail
    assert records_in({(CHANGELOG, 0): (99, 99)}, present) == 0
    assert records_in({(CHANGELOG, 1): (-1, 5)}, present) == 0  # a partition with nothing


def test_the_summary_shows_the_workers_comparison_only_when_it_ran() -> None:
    from streams.tools.bench.report import format_summary

    compare = {"workers": 2, "pipeline_eps": 900, "ratio_to_first_pass": 1.25,
               "one_pass_workers": 1, "cpu_pct_of_one_core": {"pipeline worker 1": 61.0},
               "members_served": 180, "members_expected": 200}
    shown = format_summary({"events": 1000, "workers_compare": compare})
    assert "2 workers" in shown and "900 events/s" in shown and "1.25 of 1 worker(s)" in shown
    assert "pipeline worker 1" in shown and "its Redis sink served 180 of 200 members" in shown
    assert "workers " not in format_summary({"events": 1000}).split("\n", 1)[1]


def test_pauses_between_two_readings_of_a_workers_metrics():
    from prometheus_client import CollectorRegistry, Histogram, generate_latest

    from streams.tools.bench.pauses import (
        GC, LOOP_LAG, describe_pauses, parse_pauses, pauses_between)

    registry = CollectorRegistry()
    buckets = (0.001, 0.01, 0.05, 0.1, 0.25)
    gc_pause = Histogram(GC, "", ["generation"], buckets=buckets, registry=registry)
    loop_lag = Histogram(LOOP_LAG, "", buckets=buckets, registry=registry)
    gc_pause.labels("0").observe(0.0005)
    loop_lag.observe(0.3)  # before the phase: not counted
    before = parse_pauses(generate_latest(registry).decode())
    for seconds in (0.0005, 0.0007):
        gc_pause.labels("0").observe(seconds)
    gc_pause.labels("2").observe(0.07)
    for seconds in (0.0, 0.002, 0.06, 0.12):
        loop_lag.observe(seconds)
    after = parse_pauses(generate_latest(registry).decode())

    assert pauses_between(before, after) == {
        "gc": {"0": {"count": 2, "seconds": 0.001, "over_50ms": 0, "longest_at_most_s": "0.001"},
               "2": {"count": 1, "seconds": 0.07, "over_50ms": 1, "longest_at_most_s": "0.1"}},
        "loop_lag": {"wakes": 4, "over_50ms": 2, "over_100ms": 1, "longest_at_most_s": "0.25"}}
    # a worker that paused nothing in the phase
    assert pauses_between(after, after)["loop_lag"] == {
        "wakes": 0, "over_50ms": 0, "over_100ms": 0, "longest_at_most_s": None}
    assert describe_pauses("worker 1", pauses_between(before, after)) == (
        "worker 1's loop woke over 50 ms late 2 times (over 100 ms 1); "
        "collections: gen 0 x2 (0.001 s), gen 2 x1 (0.07 s)")
    assert describe_pauses("worker 1", pauses_between(after, after)).endswith("collections: none")


def test_the_bench_does_not_collect_garbage_while_it_measures_latency():
    import gc

    from streams.tools.bench.latency import not_collecting

    assert gc.isenabled()
    with not_collecting():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(RuntimeError):  # a failed measure leaves the collector on
        with not_collecting():
            raise RuntimeError("the worker died")
    assert gc.isenabled()


async def test_the_latency_phase_lets_go_of_each_send_once_it_is_confirmed():
    """Not all of a phase's sends held to its end: gathering them there stopped the bench's
    loop as the last orders' tag changes arrived, and stamped them late."""
    import asyncio

    from streams.tools.bench.latency import InFlightSends

    loop = asyncio.get_running_loop()
    sends = [loop.create_future() for _ in range(3)]
    in_flight = InFlightSends()
    for send in sends:
        in_flight.add(send)
    sends[0].set_result(None)
    sends[2].set_result(None)
    in_flight.settle()
    assert len(in_flight) == 2  # in send order: the third waits behind the second
    sends[1].set_result(None)
    in_flight.settle()
    assert len(in_flight) == 0

    failed = loop.create_future()
    in_flight.add(failed)
    failed.set_exception(ConnectionError("broker gone"))
    with pytest.raises(ConnectionError, match="broker gone"):
        in_flight.settle()

    last = loop.create_future()
    in_flight.add(last)
    loop.call_soon(last.set_result, None)
    await in_flight.confirm()
    assert last.done() and len(in_flight) == 0


def test_the_summary_counts_the_latency_seconds_over_the_target_with_the_machine() -> None:
    from streams.tools.bench.report import format_summary

    seconds = {"over_100_ms": [{"second": 6}, {"second": 7}],
               "machine_pct_of_one_core": {"busy": 171.5, "idle": 20.0, "steal": 8.5}}
    shown = format_summary({"events": 1000, "machine": {"nproc": 2},
                            "details": {"latency_seconds": seconds}})
    assert "seconds over 100 ms  2 (the machine over the phase: busy 171.5, stolen 8.5 of 200)" \
        in shown
    assert "seconds over 100 ms  - " in format_summary({"events": 1000})


def test_the_summary_shows_the_warm_up_apart_from_the_measured_window() -> None:
    from streams.tools.bench.report import format_summary

    latency = {"rate_eps": 2900.0, "p50": 33.0, "p99": 81.5, "received": 72500, "sent": 72500,
               "warm_up": {"seconds": 10.0, "rate_eps": 2899.0, "p50": 41.0, "p99": 166.2}}
    shown = format_summary({"events": 1000, "latency_ms": latency})
    assert "latency at 2900.0/s  p50 33.0 ms, p99 81.5 ms (72,500 of 72,500 live orders)" in shown
    assert ("warm-up before it    10.0 s at 2899.0/s: p50 41.0 ms, p99 166.2 ms "
            "(not in the figures above)") in shown


def test_the_summary_shows_the_agents_share_of_a_pipeline_event() -> None:
    from streams.tools.bench.report import format_summary

    share = {"handle": 171.2, "seal": 41.4, "pipeline": 583.4, "rest": 370.8}
    shown = format_summary({"events": 1000, "details": {"pipeline": {"agent_us_per_event": share}}})
    assert "the agent's own code 171.2 + 41.4 µs (handle + seal) of 583.4 µs an event" in shown


def test_the_agents_share_of_a_pipeline_event_is_read_from_each_workers_metrics():
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from streams.tools.bench.pauses import AGENT, parse_agent_seconds
    from streams.tools.bench.pipeline import _agent_share

    registry = CollectorRegistry()
    agent = Counter(AGENT, "", ["part"], registry=registry)
    agent.labels("handle").inc(2.0)
    agent.labels("seal").inc(0.5)
    one = parse_agent_seconds(generate_latest(registry).decode())
    assert one == {"handle": 2.0, "seal": 0.5}
    # 10,000 events at 2,000/s: 500 us each, 200 in handle, 50 in seal, 250 the rest
    assert _agent_share([one], 10_000, 2_000.0) == {
        "handle": 200.0, "seal": 50.0, "pipeline": 500.0, "rest": 250.0}
    # two workers: their agent time adds up; the rest of a wall-clock event is not theirs
    assert _agent_share([one, one], 10_000, 2_000.0) == {
        "handle": 400.0, "seal": 100.0, "pipeline": 500.0}
    assert parse_agent_seconds("") == {}


def test_the_second_pass_writes_its_profiles_to_the_next_redis_database() -> None:
    from streams.tools.bench.scaling import other_database

    assert other_database("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/1"
    assert other_database("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379/1"
    assert other_database("rediss://:secret@cache:6380/15") == "rediss://:secret@cache:6380/0"
