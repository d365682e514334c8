"""`tagstream bench --json` at a tiny size: it runs, and the JSON has every field.

Speed is reported, never asserted: a shared 2-core machine is too noisy for thresholds, so
nothing here depends on how long a phase took. The bench starts its own private Kafka node and
Redis on free ports and stops them, and every worker and sink it started, before it returns.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import taggers
from streams.tools.kafka_server import kafka_version

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MEMBERS = 200
EVENTS = 2_000
TOP_LEVEL = ("events", "members", "partitions", "workers", "raw_passthrough_eps",
             "faust_floor_eps", "faust_direct_floor_eps", "ratio_ceiling", "pipeline_eps",
             "ratio", "of_faust_floor", "matches_dry_run",
             "latency_ms", "rss_mb", "state_bytes_per_member", "restart", "broker", "engine_build",
             "machine", "versions", "command", "workdir", "details", "elapsed_s")
RESTART = ("with_store_s", "with_store_records", "fresh_disk_s", "fresh_disk_records",
           "changelog_records")


def test_bench_runs_and_its_json_has_every_field(tmp_path):
    workdir = tmp_path / "bench"
    run = subprocess.run(
        [sys.executable, "-m", "streams.ops.cli", "bench", "--members", str(MEMBERS), "--events",
         str(EVENTS), "--partitions", "2", "--latency-seconds", "2", "--latency-rate", "40",
         "--latency-warm-up-seconds", "1",
         "--compare-workers", "2",
         "--json",
         "--workdir", str(workdir)],
        env={**os.environ, "TAGSTREAM_DATA_DIR": str(tmp_path / "data")},
        capture_output=True, timeout=600, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    result = json.loads(run.stdout)

    assert "error" not in result, result["error"]
    missing = [key for key in TOP_LEVEL if key not in result]
    assert not missing, missing
    assert result["members"] == MEMBERS and result["partitions"] == 2 and result["workers"] == 1
    assert result["broker"] == f"Apache Kafka {kafka_version()}, 1 node"
    assert result["engine_build"] == taggers.ENGINE_BUILD
    assert isinstance(result["matches_dry_run"], bool)
    assert result["details"]["pipeline"]["matches_dry_run"] == result["matches_dry_run"]
    for name in ("raw_passthrough_eps", "faust_floor_eps", "faust_direct_floor_eps",
                 "pipeline_eps", "rss_mb",
                 "state_bytes_per_member"):
        assert isinstance(result[name], (int, float)), name
    # the measure, next to the ratio against raw passthrough
    assert result["of_faust_floor"] == pytest.approx(
        result["pipeline_eps"] / result["faust_floor_eps"], abs=0.002)
    for name in RESTART:
        assert isinstance(result["restart"][name], (int, float)), name
    for case in ("with_store", "fresh_disk"):
        assert result["details"]["restart"][case]["ready_s"] == result["restart"][f"{case}_s"]
    for name in ("p50", "p99", "sent", "received", "floor"):
        assert name in result["latency_ms"], name
    assert result["latency_ms"]["target_rate_eps"] == 40
    # the live orders are produced as an upstream system's client batches them (Kafka 4's
    # default linger), not one produce request per order
    assert result["latency_ms"]["producer_linger_ms"] == 5
    assert re.fullmatch(r"librdkafka [\d.]+ \(confluent-kafka [\d.]+\)",
                        result["latency_ms"]["reader"])
    assert result["latency_ms"]["reader_transient_errors"] == 0
    # the warm-up at the same rate, reported on its own; its orders are not in the window's
    warm_up = result["latency_ms"]["warm_up"]
    assert warm_up["sent"] == warm_up["received"] > 0 and warm_up["p99"] is not None
    assert warm_up["per_order"] != result["latency_ms"]["per_order"]
    assert len(Path(warm_up["per_order"]).read_text().splitlines()) - 1 == warm_up["received"]
    # each order's latency, for finding when the slow ones were sent
    per_order = Path(result["latency_ms"]["per_order"]).read_text().splitlines()
    assert per_order[0] == "sent_ms,latency_ms,partition"
    assert len(per_order) - 1 == result["latency_ms"]["received"] > 0
    # the worker's pauses over the latency phase, read from its /metrics before and after
    [pauses] = result["details"]["latency_pauses"]
    assert pauses["loop_lag"]["wakes"] > 0
    # and the bench's own, which stamps every send and receipt
    own = result["details"]["latency_bench_pauses"]
    assert own["loop_lag"]["wakes"] > 0 and own["loop_lag"]["over_50ms"] >= 0
    assert own["gc"] == {}  # it does not collect while it stamps sends and receipts
    # the latency phase second by second: each watched process and the machine (steal too),
    # and the seconds that missed the p99 target with what ran in them
    seconds = result["details"]["latency_seconds"]
    timeline = Path(seconds["cpu_per_second"]).read_text().splitlines()
    assert timeline[0].split(",")[:3] == ["at", "seconds", "fresh-disk worker 1"]
    assert timeline[0].endswith("machine_busy,machine_idle,machine_steal")
    assert len(timeline) >= 3  # a 2-second phase sampled each second, and its last part
    assert set(seconds["machine_pct_of_one_core"]) == {"busy", "idle", "steal"}
    assert isinstance(seconds["over_100_ms"], list)
    for slow in seconds["over_100_ms"]:  # the private broker's side of each slow second
        assert set(slow["brokers"]) == {"gc_pauses", "gc_pause_ms", "log"}
    # its collection pauses over the phase, read from its gc.log (none in a short phase is
    # an empty summary; a broker with pauses has all three figures)
    assert set(seconds["broker_gc"]) <= {"broker-1"}
    for summary in seconds["broker_gc"].values():
        assert summary["pauses"] >= 1 and summary["ms"] >= summary["longest_ms"] >= 0
    # its log cleaner's passes over the phase, read from its own log
    assert set(seconds["broker_cleaner"]) <= {"broker-1"}
    for cleaner in seconds["broker_cleaner"].values():
        assert cleaner["passes"] >= 1 and cleaner["mb"] > 0
    # of the pipeline's time per event, the member agent's own code, read from /metrics
    share = result["details"]["pipeline"]["agent_us_per_event"]
    assert share["handle"] > 0 and share["seal"] > 0
    assert share["rest"] == pytest.approx(share["pipeline"] - share["handle"] - share["seal"],
                                          abs=0.2)
    # and each pipeline worker's collections and loop lag over the phase, from /metrics
    [pipeline_pauses] = result["details"]["pipeline"]["pauses"]
    assert pipeline_pauses["loop_lag"]["wakes"] > 0
    assert set(pipeline_pauses["gc"]) <= {"0", "1", "2"}
    # the floor's fetch path alone, each message handed to a handler as the agent's are
    assert result["details"]["faust_direct_floor"]["messages"] == result["details"][
        "faust_floor"]["messages"]
    for phase in ("pipeline", "faust_floor", "faust_direct_floor"):
        machine = result["details"][phase]["machine_pct_of_one_core"]
        assert set(machine) == {"busy", "idle", "steal"} and machine["busy"] > 0, phase
    # the second pass, two workers, against the first in the same run
    compare = result["workers_compare"]
    assert compare["workers"] == 2 and compare["one_pass_workers"] == 1
    assert compare["one_pass_eps"] == result["pipeline_eps"] and compare["pipeline_eps"] > 0
    assert compare["matches_dry_run"] is True
    # served by a sink of its own, following the second pass's changelog (the first pass's
    # sink follows only its own app's: the second pass's profiles would go unrendered)
    assert compare["members_served"] == compare["members_expected"] == result["details"][
        "state_bytes"]["members"] > 0
    assert {"pipeline worker 1", "pipeline worker 2", "redis sink"} <= set(
        compare["cpu_pct_of_one_core"])
    assert set(compare["first_pass_cpu_pct_of_one_core"]) == set(
        result["details"]["pipeline"]["cpu_pct_of_one_core"])
    assert result["details"]["pipeline"]["rss_mb_per_worker"] == [result["rss_mb"]]
    assert result["command"].startswith(f"tagstream bench --members {MEMBERS}")
    assert result["profile"] is None
    # The event file and the private Kafka's data are removed (large; the seed regenerates
    # the events); the logs stay.
    assert not (workdir / "events.jsonl").exists()
    assert not (workdir / "stack" / "kafka").exists()
    for log in ("pipeline-worker1.log", "restart-worker1.log", "fresh-disk-worker1.log"):
        assert (workdir / log).exists(), log
    # Everything it started is stopped: no process is left with the bench's directory in its
    # command line (Kafka, Redis) or environment (workers, sink).
    assert not _processes_mentioning(str(workdir))


def test_ctrl_c_again_while_the_bench_stops_does_not_leave_its_broker_running(tmp_path):
    # Regression: a second Ctrl-C while the bench stopped its children and its private stack
    # cut the stopping short ("Aborted!"), leaving Kafka and Redis running.
    workdir = tmp_path / "bench"
    err_path = tmp_path / "bench.err"
    with err_path.open("wb") as err:
        bench = subprocess.Popen(
            [sys.executable, "-m", "streams.ops.cli", "bench", "--members", str(MEMBERS),
             "--events", str(EVENTS), "--partitions", "2", "--json", "--workdir", str(workdir)],
            env={**os.environ, "TAGSTREAM_DATA_DIR": str(tmp_path / "data")},
            stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
            # Ctrl-C as at a terminal: run as a shell's background job (a CI runner may be
            # one), the suite and so the bench would inherit SIGINT ignored.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 300
        while "pipeline: worker(s) ready" not in err_path.read_text("utf-8"):
            assert bench.poll() is None, err_path.read_text("utf-8")[-3000:]
            assert time.monotonic() < deadline, err_path.read_text("utf-8")[-3000:]
            time.sleep(0.1)
        assert len(_processes_mentioning(str(workdir))) >= 3  # Kafka, Redis, the worker
        # Ctrl-C, then again and again, as an operator does who finds the stopping slow.
        while bench.poll() is None and time.monotonic() < deadline:
            bench.send_signal(signal.SIGINT)
            time.sleep(0.3)
        assert bench.poll() is not None, "the bench did not stop within the test's time"
    finally:
        if bench.poll() is None:
            bench.kill()
            bench.wait()
    stderr = err_path.read_text("utf-8")
    assert bench.returncode != 0, stderr[-3000:]  # interrupted, not run to its end
    assert "still stopping what the bench started" in stderr, stderr[-3000:]
    assert not _processes_mentioning(str(workdir)), stderr[-3000:]


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for part in ("cmdline", "environ"):  # Kafka and Redis have the dir in argv, workers in env
            try:
                with open(f"/proc/{entry}/{part}", "rb") as f:
                    if text.encode() in f.read():
                        found.append(int(entry))
                        break
            except OSError:
                continue
    return found
