"""`tagstream bench-engine`: this checkout's engine against a pinned commit's, side by side.

Both engines run the same event file through `taggers.dryrun.dry_run` with their own tree's
default pack, each in its own Python process (imports of one never leak into the other), in
alternating rounds; the medians are compared in one run, so a noisy machine slows both alike.
Results must be identical: every tag and tier change record and every rendered profile, byte
for byte, except `rules_version` (a pack may be versioned differently between the commits).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Runs inside each tree's own interpreter process: only APIs both commits have.
_RUNNER = r"""
import hashlib, sys, time
from pathlib import Path
import orjson
import taggers
from schemas.changes import encode_change
from schemas.profile import encode_profile
from taggers.dryrun import dry_run
from taggers.engine import Engine
from taggers.profile import render_profile
from taggers.rules import load_rules

root, events_path = Path(sys.argv[1]), sys.argv[2]
pack = load_rules(root / "taggers" / "rules" / "default.yaml")
lines = Path(events_path).read_bytes().splitlines()
started = time.perf_counter()
result = dry_run(Engine(pack), lines)
seconds = time.perf_counter() - started

def canonical(raw):
    record = orjson.loads(raw)
    record.pop("rules_version", None)
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS)

changes = hashlib.sha256()
for change in [*result.changes, *result.tier_changes]:
    changes.update(canonical(encode_change(change)) + b"\n")
profiles = hashlib.sha256()
for member_id in sorted(result.states):
    profiles.update(canonical(encode_profile(render_profile(result.states[member_id], pack)))
                    + b"\n")
print(orjson.dumps({"seconds": seconds, "events": len(lines), "changes": len(result.changes),
                    "tier_changes": len(result.tier_changes), "members": len(result.states),
                    "changes_sha256": changes.hexdigest(),
                    "build": getattr(taggers, "ENGINE_BUILD", "interpreted"),
                    "profiles_sha256": profiles.hexdigest()}).decode())
"""


class EngineCompareError(Exception):
    """The pinned commit cannot be exported, or an engine run failed."""


@dataclass(frozen=True)
class EngineRun:
    seconds: float
    events: int
    changes: int
    tier_changes: int
    members: int
    changes_sha256: str
    profiles_sha256: str
    build: str  # "mypyc" or why interpreted (taggers/compiled.py); a pinned commit's may predate it


def export_commit(repo: Path, commit: str, into: Path) -> Path:
    """The commit's tree, as files (git archive): no worktree, nothing left in the repo."""
    known = subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "--quiet",
                            f"{commit}^{{commit}}"], capture_output=True, text=True)
    if known.returncode != 0:
        raise EngineCompareError(
            f"cannot export {commit!r}: no such commit or tag in {repo}. A clone has none of "
            f"the local tags; README.md (Measured) shows how engine-unoptimised is rebuilt")
    archive = into / "tree.tar"
    done = subprocess.run(["git", "-C", str(repo), "archive", "--format=tar", "-o", str(archive),
                           commit], capture_output=True, text=True)
    if done.returncode != 0:
        raise EngineCompareError(f"cannot export {commit!r}: {done.stderr.strip()}")
    tree = into / "tree"
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    archive.unlink()
    return tree


def run_engine(tree: Path, events: Path) -> EngineRun:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", _RUNNER, str(tree), str(events)], env=env,
                          capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise EngineCompareError(f"the engine of {tree} failed:\n{done.stderr[-3000:]}")
    return EngineRun(**json.loads(done.stdout.strip().splitlines()[-1]))


def compare_engines(repo: Path, commit: str, events: Path, rounds: int) -> dict[str, Any]:
    """Alternate pinned and current `rounds` times; medians, speed-up, identical or not."""
    with tempfile.TemporaryDirectory(prefix="tagstream-engine-") as workdir:
        pinned_tree = export_commit(repo, commit, Path(workdir))
        pinned: list[EngineRun] = []
        current: list[EngineRun] = []
        for _ in range(rounds):
            pinned.append(run_engine(pinned_tree, events))
            current.append(run_engine(repo, events))
    old, new = pinned[0], current[0]
    old_s = statistics.median(r.seconds for r in pinned)
    new_s = statistics.median(r.seconds for r in current)
    return {
        "events": new.events, "members": new.members, "rounds": rounds, "pinned": commit,
        "pinned_seconds": [round(r.seconds, 2) for r in pinned],
        "current_seconds": [round(r.seconds, 2) for r in current],
        "pinned_us_per_event": round(old_s / old.events * 1e6, 1),
        "current_us_per_event": round(new_s / new.events * 1e6, 1),
        "speedup": round(old_s / new_s, 2),
        "pinned_build": old.build, "current_build": new.build,
        "changes": new.changes, "tier_changes": new.tier_changes,
        "identical_changes": old.changes_sha256 == new.changes_sha256
        and all(r.changes_sha256 == new.changes_sha256 for r in current),
        "identical_profiles": old.profiles_sha256 == new.profiles_sha256,
    }
