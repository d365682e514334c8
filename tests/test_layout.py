"""The layout's two import rules (README "Layout"), read from the source as grep would."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support import REPO_ROOT

STREAMS = REPO_ROOT / "streams"
IMPORT = re.compile(r"^\s*(?:from|import)\s+([\w.]+)", re.MULTILINE)
# bench's Faust floor (an agent that only acknowledges) is a measuring tool, not the worker
FAUST_ALLOWED_OUTSIDE_WORKER = {STREAMS / "tools" / "bench_floor.py"}


def imports_of(path: Path) -> set[str]:
    return set(IMPORT.findall(path.read_text("utf-8")))


def modules_under(folder: Path) -> list[Path]:
    return sorted(folder.rglob("*.py"))


def test_only_the_worker_imports_faust() -> None:
    offenders = [str(path.relative_to(STREAMS)) for path in modules_under(STREAMS)
                 if STREAMS / "worker" not in path.parents
                 and path not in FAUST_ALLOWED_OUTSIDE_WORKER
                 and any(name == "faust" or name.startswith("faust.")
                         for name in imports_of(path))]
    assert offenders == []


def test_serving_never_imports_the_worker() -> None:
    offenders = [str(path.relative_to(STREAMS)) for path in modules_under(STREAMS / "serving")
                 if any(name.startswith("streams.worker") for name in imports_of(path))]
    assert offenders == []


def test_the_rules_would_catch_an_offender(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from __future__ import annotations\n\n    from faust.types import TP\n"
                      "import streams.worker.members\n")
    assert {"faust.types", "streams.worker.members"} <= imports_of(module)


def test_every_role_folder_is_a_package_and_nothing_is_left_at_the_top() -> None:
    roles = {"worker", "serving", "ops", "platform", "tools"}
    assert {p.name for p in STREAMS.iterdir() if p.is_dir() and p.name != "__pycache__"} == roles
    assert [p.name for p in STREAMS.glob("*.py")] == ["__init__.py"]
    assert all((STREAMS / role / "__init__.py").is_file() for role in roles)
