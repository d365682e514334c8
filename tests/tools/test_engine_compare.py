"""`tagstream bench-engine`: this checkout's engine against a pinned commit's, in one run.

Speed is reported, never asserted; what is checked is that both engines ran on the same file
and that their changes and profiles are compared."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

import taggers
from streams.tools.bench.engine_compare import EngineCompareError, compare_engines
from streams.tools.generate import generate_events

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def events(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("engine") / "events.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(e) for e in generate_events(members=60, days=200,
                                                                          seed=3)))
    return path


def test_the_checkout_against_its_own_head_is_identical(events: Path) -> None:
    report = compare_engines(REPO, "HEAD", events, rounds=1)
    assert report["events"] == len(events.read_bytes().splitlines())
    assert report["members"] == 60 and report["changes"] > 0
    assert report["identical_changes"] and report["identical_profiles"]
    assert report["pinned_us_per_event"] > 0 and report["speedup"] > 0
    # an exported tree has no build: under ./dev this compares the compiled engine with the
    # interpreted one of the same sources
    assert report["pinned_build"].startswith("interpreted")
    assert report["current_build"] == taggers.ENGINE_BUILD


def test_an_unknown_commit_is_a_clear_error(events: Path) -> None:
    with pytest.raises(EngineCompareError,
                       match="cannot export 'no-such-commit': no such commit or tag") as raised:
        compare_engines(REPO, "no-such-commit", events, rounds=1)
    # the baseline tag is local, so a fresh clone lacks it: the error says where it comes from
    assert "engine-unoptimised is rebuilt" in str(raised.value)


def test_a_commit_whose_engine_decides_differently_is_reported(events: Path) -> None:
    # d2c91bd is the last commit before guide tasks: its members' next deadlines know no task
    # expiry, so their profiles differ from today's while their tag changes do not.
    report = compare_engines(REPO, "d2c91bd", events, rounds=1)
    assert report["identical_changes"] and not report["identical_profiles"]
