"""The brokers' side of a slow second: their JVM collection pauses and their own log lines."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from streams.tools.bench.broker_activity import (
    BrokerActivity, BrokerPause, read_gc_pauses, read_log_lines, stack_activity,
)
from streams.tools.bench.cpu_timeline import slow_seconds
from streams.tools.stack import LocalStack

# As a JDK 17 writes them with -Xlog:gc:file=...:time,uptime (captured from a real JVM).
GC_LOG = """\
[2026-12-05T17:34:16.831+0000][0.005s] Using G1
[2026-12-05T17:34:17.277+0000][0.450s] GC(0) Pause Young (Normal) (G1 Evacuation Pause) 6M->3M(64M) 2.967ms
[2026-12-05T17:34:17.492+0000][0.666s] GC(4) To-space exhausted
[2026-12-05T17:34:17.496+0000][0.669s] GC(7) Concurrent Mark Cycle
[2026-12-05T17:34:17.520+0000][0.690s] GC(7) Pause Remark 40M->40M(64M) 1.204ms
[2026-12-05T17:34:18.100+0000][1.270s] GC(8) Pause Full (System.gc()) 40M->5M(64M) 210.500ms
[2026-12-05T17:34:18.200+0000][1.370s] GC(7) Concurrent Mark Cycle 31.2ms
"""
T0 = datetime.fromisoformat("2026-12-05T17:34:17+00:00").timestamp()


def test_each_pause_is_read_with_when_it_ended_and_how_long_it_took():
    pauses = read_gc_pauses("broker-1", GC_LOG.splitlines())
    assert [(p.kind, p.seconds) for p in pauses] == [
        ("Pause Young (Normal) (G1 Evacuation Pause)", 0.002967),
        ("Pause Remark", 0.001204),
        ("Pause Full (System.gc())", 0.2105)]
    assert pauses[0].ended_at == T0 + 0.277
    assert abs(pauses[2].started_at - (T0 + 1.1 - 0.2105)) < 1e-6
    assert {p.broker for p in pauses} == {"broker-1"}


def test_log_lines_are_read_with_their_offset_and_their_continuations():
    lines = read_log_lines([
        # the cleaner's summary, as Kafka 4.1.1 logs it
        "[2026-12-05 17:34:17,500 +0000] INFO [kafka-log-cleaner-thread-0]: ",
        "\tLog cleaner thread 0 cleaned log c-0 (dirty section = [0, 800])",
        "\t0.1 MB of log processed in 0.1 seconds (1.6 MB/sec).",
        " (org.apache.kafka.storage.internals.log.LogCleaner$CleanerThread)",
        "[2026-12-05 19:34:18,000 +0200] WARN two hours east, the same instant plus 1 s (x)",
        "\tat org.apache.kafka.Something(Something.java:1)" + "x" * 1000,
    ])
    assert lines[0] == (T0 + 0.5, "INFO [kafka-log-cleaner-thread-0]: Log cleaner thread 0 "
                        "cleaned log c-0 (dirty section = [0, 800]) 0.1 MB of log processed "
                        "in 0.1 seconds (1.6 MB/sec). "
                        "(org.apache.kafka.storage.internals.log.LogCleaner$CleanerThread)")
    assert lines[1][0] == T0 + 1.0
    assert lines[1][1].startswith("WARN two hours east, the same instant plus 1 s (x) at org")
    assert len(lines[1][1]) == 600 and len(lines) == 2


def test_a_window_holds_the_pauses_that_overlap_it_and_the_lines_inside_it():
    activity = BrokerActivity(
        [BrokerPause("broker-1", T0 + 0.05, 0.1, "Pause Young"),  # began before, ended inside
         BrokerPause("broker-2", T0 + 0.5, 0.02, "Pause Remark"),
         BrokerPause("broker-1", T0 + 2.0, 0.5, "Pause Full")],  # began at the window's end
        {"broker-1": [(T0 - 0.1, "before"), (T0 + 0.3, "inside")], "broker-2": [(T0 + 3, "x")]})
    window = activity.between(T0, T0 + 1.5)
    assert [(p["broker"], p["ms"], p["ended_s"]) for p in window["gc_pauses"]] == [
        ("broker-1", 100.0, 0.05), ("broker-2", 20.0, 0.5)]
    assert window["gc_pause_ms"] == 120.0
    assert window["log"] == {"broker-1": ["inside"]}
    assert activity.between(T0 + 5, T0 + 6) == {"gc_pauses": [], "gc_pause_ms": 0.0, "log": {}}


def test_a_slow_second_looks_at_the_brokers_until_its_slowest_order_arrived():
    windows = []

    def brokers(start: float, end: float) -> dict:
        windows.append((start, end))
        return {"gc_pause_ms": 0.0}

    orders = [(1000.0 + i, 20.0) for i in range(10)] + [(1500.0, 400.0)]
    [slow] = slow_seconds(orders, started_at=T0, timeline=[], brokers=brokers)
    assert slow["second"] == 1 and slow["brokers"] == {"gc_pause_ms": 0.0}
    assert windows == [(T0 + 1, T0 + 1 + 1.0 + 0.4)]


def test_missing_logs_read_as_no_activity(tmp_path: Path):
    activity = BrokerActivity.read({"broker-1": (tmp_path / "gc.log", tmp_path / "b.log")})
    assert activity.between(0, 10 ** 10) == {"gc_pauses": [], "gc_pause_ms": 0.0, "log": {}}


def test_the_shared_brokers_logs_are_read_as_the_bench_reads_them(shared_kafka: LocalStack):
    activity = stack_activity(shared_kafka)
    assert activity is not None
    # The node logs its start at INFO in the pattern of log4j2.properties: stamped, so readable.
    started = [text for _, text in activity.lines["broker-1"] if "Kafka Server started" in text]
    assert started, activity.lines["broker-1"][:5]
    layout = shared_kafka.layout()
    assert layout is not None and layout.nodes[0].gc_log_path.exists()
    # The JVM's collection log: its first line names the collector, whatever has run since.
    assert "Using G1" in layout.nodes[0].gc_log_path.read_text()


def test_the_phase_sums_each_brokers_pauses():
    activity = BrokerActivity(
        [BrokerPause("broker-1", T0 + 1, 0.02, "Pause Young"),
         BrokerPause("broker-1", T0 + 2, 0.05, "Pause Young"),
         BrokerPause("broker-2", T0 + 3, 0.01, "Pause Remark"),
         BrokerPause("broker-2", T0 + 30, 0.5, "Pause Full")],  # after the phase
        {})
    assert activity.gc_summary(T0, T0 + 25) == {
        "broker-1": {"pauses": 2, "ms": 70.0, "longest_ms": 50.0},
        "broker-2": {"pauses": 1, "ms": 10.0, "longest_ms": 10.0}}


def test_the_phase_sums_each_brokers_cleaner_passes_that_overlap_it():
    def summary(at: float, log: str, mb: str, seconds: str) -> tuple[float, str]:
        return at, (f"INFO [kafka-log-cleaner-thread-0]: Log cleaner thread 0 cleaned log {log} "
                    f"(dirty section = [0, 800]) {mb} MB of log processed in {seconds} seconds "
                    "(1.6 MB/sec). Indexed 32.0 MB in 0.0 seconds")

    activity = BrokerActivity([], {
        "broker-1": [summary(T0 - 1, "a-0", "50.0", "0.5"),  # ended before the phase
                     summary(T0 + 2, "b-0", "105.0", "6.8"),  # began before, ended inside
                     (T0 + 3, "INFO Cleaner 0: Beginning cleaning of log c-0"),
                     summary(T0 + 9, "c-0", "1,040.3", "0.1")],
        "broker-2": [summary(T0 + 40, "d-0", "7.0", "10.0")],  # began after the phase ended
    })
    assert activity.cleaner_summary(T0, T0 + 25) == {
        "broker-1": {"passes": 2, "mb": 1145.3, "seconds": 6.9}}
