"""Compile the engine's hot modules with mypyc (`python -m streams.tools.engine_build`).

./dev runs this after installing the Python packages; it does nothing while the build matches
the sources, and otherwise takes about a minute on two cores. taggers loads the build only
while it matches (taggers/compiled.py), so an edit without a rebuild is slower, never wrong.
Needs gcc and the interpreter's headers (Python.h).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from taggers.compiled import (BUILD_DIR, COMPILED_MODULES, DIGEST_FILE, GROUP, PACKAGE_DIR,
                              built_from, source_digest)

# mypy checks the compiled modules strictly enough for mypyc; schemas' msgspec Structs are
# read as dataclasses by mypy, which misjudges their frozen inheritance, so it only reads them.
_MYPY_CONFIG = """\
[mypy]
ignore_missing_imports = True
[mypy-schemas.*]
ignore_errors = True
"""

# Runs in an empty directory: setuptools would otherwise read the checkout's pyproject.toml.
_SETUP = """\
import sys
from setuptools import setup
from mypyc.build import mypycify
config, out, temp, group, *paths = sys.argv[1:]
setup(name="tagstream-engine",
      ext_modules=mypycify(["--config-file", config, *paths], opt_level="3", group_name=group),
      script_args=["build_ext", "--build-lib", out, "--build-temp", temp, "--parallel", "2"])
"""


class EngineBuildError(Exception):
    """mypy rejected a module, or the C compiler failed."""


def is_current(build_dir: Path = BUILD_DIR) -> bool:
    return built_from(build_dir) == source_digest()


def build_engine(build_dir: Path = BUILD_DIR, force: bool = False) -> bool:
    """Compile into `build_dir` unless it is current; True if it compiled. The old build is
    replaced only by a complete new one, its digest written last."""
    if not force and is_current(build_dir):
        return False
    digest = source_digest()  # of the sources as they are when the compiler reads them
    paths = [str(PACKAGE_DIR / f"{name}.py") for name in COMPILED_MODULES]
    with tempfile.TemporaryDirectory(prefix="tagstream-engine-build-") as work:
        workdir = Path(work)
        config = workdir / "mypy.ini"
        config.write_text(_MYPY_CONFIG)
        out = workdir / "out"
        done = subprocess.run(
            [sys.executable, "-c", _SETUP, str(config), str(out), str(workdir / "temp"), GROUP,
             *paths], cwd=workdir, capture_output=True, text=True)
        if done.returncode != 0:
            raise EngineBuildError(f"mypyc failed:\n{(done.stdout + done.stderr)[-4000:]}")
        (out / DIGEST_FILE).write_text(digest + "\n")
        staged = build_dir.with_name(build_dir.name + ".new")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(out, staged)
    shutil.rmtree(build_dir, ignore_errors=True)
    staged.rename(build_dir)
    return True


def main() -> None:
    force = "--force" in sys.argv[1:]
    if not force and is_current():
        return
    print("==> compiling the engine with mypyc (about a minute)", file=sys.stderr)
    try:
        build_engine(force=True)  # found not current just above
    except EngineBuildError as exc:
        sys.exit(str(exc))


if __name__ == "__main__":
    main()
