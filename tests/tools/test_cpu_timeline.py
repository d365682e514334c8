"""The bench's CPU timeline: /proc/stat read right, intervals as % of one core, and the
latency phase's slow seconds matched with the interval they overlap most. Driven with fake
readers and clocks: nothing here reads /proc or waits."""

from __future__ import annotations

import asyncio

import pytest

from streams.tools.bench.cpu_timeline import (
    CpuTimeline, MachineTimes, Second, machine_pct, parse_machine_times, slow_seconds,
    write_timeline,
)

PROC_STAT = """cpu  1000 10 200 5000 40 5 15 30 0 0
cpu0 500 5 100 2500 20 2 7 15 0 0
cpu1 500 5 100 2500 20 3 8 15 0 0
intr 12345
"""


def test_the_aggregate_line_divides_into_busy_idle_and_steal():
    times = parse_machine_times(PROC_STAT, ticks_per_second=100)
    # busy: user + nice + system + irq + softirq; idle: idle + iowait
    assert times == MachineTimes(busy=12.3, idle=50.4, steal=0.3)


def test_a_proc_stat_without_the_aggregate_line_is_an_error():
    with pytest.raises(ValueError, match="no aggregate cpu line"):
        parse_machine_times("cpu0 1 2 3 4 5 6 7 8\n", ticks_per_second=100)


def test_machine_time_over_a_wall_interval_is_a_share_of_one_core():
    before = MachineTimes(busy=10.0, idle=20.0, steal=1.0)
    after = MachineTimes(busy=13.0, idle=20.5, steal=1.5)
    assert machine_pct(before, after, wall_s=2.0) == {"busy": 150.0, "idle": 25.0, "steal": 25.0}
    assert machine_pct(before, after, wall_s=0.0) == {"busy": 0.0, "idle": 0.0, "steal": 0.0}


class FakeMachine:
    def __init__(self) -> None:
        self.wall = 1000.0
        self.process = {11: 0.0, 22: 0.0}
        self.machine = MachineTimes(0.0, 0.0, 0.0)

    def advance(self, seconds: float, worker: float, broker: float, steal: float) -> None:
        self.wall += seconds
        self.process[11] += worker
        self.process[22] += broker
        busy, idle, stolen = self.machine
        self.machine = MachineTimes(busy + worker + broker, idle + 2 * seconds - worker - broker
                                    - steal, stolen + steal)


async def never(_: float) -> None:
    await asyncio.Event().wait()  # the test calls sample() itself


async def test_each_interval_records_every_process_and_the_machine():
    fake = FakeMachine()
    timeline = CpuTimeline({"worker": 11, "broker": 22}, read_process=fake.process.__getitem__,
                           read_machine=lambda: fake.machine, wall_clock=lambda: fake.wall,
                           sleep=never)
    assert timeline.whole() is None  # not started
    timeline.start()
    fake.advance(1.0, worker=0.9, broker=0.4, steal=0.2)
    timeline.sample()
    fake.advance(0.5, worker=0.1, broker=0.05, steal=0.0)  # the last, partial interval
    assert timeline.whole() == Second(1000.0, 1.0, {"worker": 90.0, "broker": 40.0},
                                      {"busy": 130.0, "idle": 50.0, "steal": 20.0})
    seconds = await timeline.stop()
    # the phase as one interval, from start to the reading stop took
    assert timeline.whole() == Second(
        at=1000.0, seconds=1.5, processes={"worker": 66.7, "broker": 30.0},
        machine={"busy": 96.7, "idle": 90.0, "steal": 13.3})
    assert seconds == [
        Second(at=1000.0, seconds=1.0, processes={"worker": 90.0, "broker": 40.0},
               machine={"busy": 130.0, "idle": 50.0, "steal": 20.0}),
        Second(at=1001.0, seconds=0.5, processes={"worker": 20.0, "broker": 10.0},
               machine={"busy": 30.0, "idle": 170.0, "steal": 0.0}),
    ]


def test_the_timeline_file_has_a_column_per_process_then_the_machine(tmp_path):
    path = tmp_path / "cpu.csv"
    write_timeline([Second(1000.0, 1.0, {"worker": 90.0, "broker": 40.0},
                           {"busy": 130.0, "idle": 50.0, "steal": 20.0})],
                   ["worker", "broker"], path)
    assert path.read_text().splitlines() == [
        "at,seconds,worker,broker,machine_busy,machine_idle,machine_steal",
        "1000.000,1.0,90.0,40.0,130.0,50.0,20.0"]


def test_only_seconds_whose_p99_missed_the_target_are_reported_with_their_interval():
    timeline = [Second(999.8, 1.0, {"worker": 70.0}, {"busy": 120.0, "idle": 80.0, "steal": 0.0}),
                Second(1000.8, 1.0, {"worker": 95.0}, {"busy": 190.0, "idle": 0.0, "steal": 10.0}),
                Second(1001.8, 1.0, {"worker": 60.0}, {"busy": 100.0, "idle": 100.0, "steal": 0.0})]
    orders = ([(100.0 + i, 40.0) for i in range(50)]  # second 0: fast
              + [(1100.0 + i, 40.0) for i in range(49)] + [(1200.0, 650.0)]  # second 1: a tail
              + [(2100.0, 100.0)])  # second 2: exactly at the target is not over it
    [slow] = slow_seconds(orders, started_at=1000.0, timeline=timeline)
    # second 1 is [1001.0, 1002.0): the second interval covers 0.8 s of it, the third 0.2 s
    assert slow == {"second": 1, "orders": 50, "p50_ms": 40.0, "p99_ms": 650.0,
                    "cpu_pct_of_one_core": {"worker": 95.0},
                    "machine_pct_of_one_core": {"busy": 190.0, "idle": 0.0, "steal": 10.0}}


def test_without_a_timeline_a_slow_second_is_still_reported():
    [slow] = slow_seconds([(10.0, 500.0)], started_at=1000.0, timeline=[])
    assert slow["p99_ms"] == 500.0 and slow["cpu_pct_of_one_core"] is None
