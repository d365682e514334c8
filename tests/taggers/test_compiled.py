"""The compiled engine is used only while its build matches the sources, and changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

import taggers
import taggers.engine
from schemas.changes import encode_change
from streams.platform.settings import DEFAULT_RULES
from streams.tools.generate import generate_events
from taggers.compiled import (COMPILED, DIGEST_FILE, FORCE_INTERPRETED, FORCED, GROUP, NO_BUILD,
                              STALE_BUILD, build_status, source_digest, use_compiled_build)
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def sources(tmp_path: Path) -> Path:
    """A package folder and its sibling schemas folder, as the digest reads them."""
    package = tmp_path / "src" / "taggers"
    package.mkdir(parents=True)
    (package / "engine.py").write_text("X = 1\n")
    (tmp_path / "src" / "schemas").mkdir()
    (tmp_path / "src" / "schemas" / "events.py").write_text("Y = 2\n")
    return package


def built(build_dir: Path, digest: str) -> Path:
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / f"{GROUP}__mypyc.cpython-311-x86_64-linux-gnu.so").write_bytes(b"")
    (build_dir / DIGEST_FILE).write_text(digest + "\n")
    return build_dir


@pytest.fixture(autouse=True)
def not_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FORCE_INTERPRETED, raising=False)


def test_the_digest_follows_every_byte_of_the_engine_and_the_schemas(sources: Path) -> None:
    first = source_digest(sources)
    (sources / "engine.py").write_text("X = 2\n")
    second = source_digest(sources)
    (sources.parent / "schemas" / "events.py").write_text("Y = 3\n")
    assert len({first, second, source_digest(sources)}) == 3


def test_a_build_of_the_current_sources_is_used(sources: Path, tmp_path: Path) -> None:
    build_dir = built(tmp_path / "build", source_digest(sources))
    assert build_status(build_dir, sources) == COMPILED


def test_a_build_older_than_the_sources_is_not_used(sources: Path, tmp_path: Path) -> None:
    build_dir = built(tmp_path / "build", source_digest(sources))
    (sources / "engine.py").write_text("X = 'edited'\n")
    path = [str(sources)]
    assert use_compiled_build(path, build_dir, sources) == STALE_BUILD
    assert path == [str(sources)]


def test_no_build_or_a_build_without_its_library_is_no_build(sources: Path,
                                                              tmp_path: Path) -> None:
    assert build_status(tmp_path / "nothing", sources) == NO_BUILD
    half = tmp_path / "half"
    half.mkdir()
    (half / DIGEST_FILE).write_text(source_digest(sources))
    assert build_status(half, sources) == NO_BUILD


def test_the_environment_can_keep_the_engine_interpreted(
        sources: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    build_dir = built(tmp_path / "build", source_digest(sources))
    monkeypatch.setenv(FORCE_INTERPRETED, "1")
    assert build_status(build_dir, sources) == FORCED


def test_the_checkout_runs_what_its_build_status_says() -> None:
    """Under ./dev the build is current, so this process runs the compiled modules."""
    assert taggers.ENGINE_BUILD == build_status()
    loaded = Path(taggers.engine.__file__)
    if taggers.ENGINE_BUILD == COMPILED:
        assert loaded.suffix == ".so" and loaded.parent.parent.name == "_build"
    else:
        assert loaded.suffix == ".py"


def test_the_compiled_and_the_interpreted_engine_make_the_same_changes(tmp_path: Path) -> None:
    lines = [orjson.dumps(e) for e in generate_events(members=300, days=120, seed=5)]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    here = dry_run(Engine(load_rules(DEFAULT_RULES)), lines)
    ours = [encode_change(c) for c in [*here.changes, *here.tier_changes]]
    assert len(here.changes) > 300
    script = """
import sys, taggers
from pathlib import Path
from schemas.changes import encode_change
from streams.platform.settings import DEFAULT_RULES
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.rules import load_rules
assert taggers.ENGINE_BUILD.startswith("interpreted"), taggers.ENGINE_BUILD
result = dry_run(Engine(load_rules(DEFAULT_RULES)), Path(sys.argv[1]).read_bytes().splitlines())
for change in [*result.changes, *result.tier_changes]:
    sys.stdout.buffer.write(encode_change(change) + b"\\n")
"""
    done = subprocess.run([sys.executable, "-c", script, str(events)], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", FORCE_INTERPRETED: "1"},
                          capture_output=True, check=True)
    assert done.stdout.splitlines() == ours


def test_a_build_without_its_library_is_built_again(tmp_path: Path) -> None:
    """A digest beside no library (a build cut short) is not current, so ./dev rebuilds."""
    from streams.tools.engine_build import is_current

    half = tmp_path / "half"
    half.mkdir()
    (half / DIGEST_FILE).write_text(source_digest() + "\n")
    assert not is_current(half)
    assert is_current(built(half, source_digest()))
