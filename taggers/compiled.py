"""The engine's hot modules compiled with mypyc, used only while the build matches the sources.

`python -m streams.tools.engine_build` (which ./dev runs) compiles COMPILED_MODULES into
BUILD_DIR and writes there the digest of the sources it compiled. When taggers is imported,
the build goes first on the package's path only if that digest equals the digest of the
sources now: an edited module, or an edited type the compiled code was built against, runs
interpreted until the next build, never stale. TAGSTREAM_INTERPRETED_ENGINE=1 keeps every
module interpreted (for a debugger, or a profiler that wants Python frames).

The compiled modules make the same changes and profiles as the interpreted ones (the suite
runs on the build ./dev makes; `tagstream bench-engine` checks them against a pinned commit).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
from pathlib import Path

# Pure modules on the engine's path. state.py (msgspec Structs, which mypyc cannot compile)
# and the pack's compilers, run once at load, stay interpreted.
COMPILED_MODULES = ("clock", "context", "counters", "dryrun", "engine", "expr", "loyalty",
                    "marked", "outcome", "profile", "rules", "scope", "series", "tasks", "wecom")
PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_DIR = PACKAGE_DIR / "_build"
DIGEST_FILE = "SOURCES.sha256"
# mypyc puts the compiled code of all the modules in one library, GROUP__mypyc; each module is
# a small library that imports it.
GROUP = "tagstream_engine"
FORCE_INTERPRETED = "TAGSTREAM_INTERPRETED_ENGINE"

COMPILED = "mypyc"
NO_BUILD = "interpreted (no build: python -m streams.tools.engine_build)"
STALE_BUILD = "interpreted (the build predates the sources: python -m streams.tools.engine_build)"
FORCED = f"interpreted ({FORCE_INTERPRETED}=1)"


def source_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """Every source the build type-checked (taggers' and schemas' modules) and the
    interpreter it was built for."""
    digest = hashlib.sha256(sys.implementation.cache_tag.encode())
    for folder in (package_dir, package_dir.parent / "schemas"):
        for path in sorted(folder.glob("*.py")):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def built_from(build_dir: Path = BUILD_DIR) -> str | None:
    """The digest of the sources a complete build in `build_dir` was made from; None when
    there is no build, or its library is missing."""
    try:
        digest = (build_dir / DIGEST_FILE).read_text().strip()
    except FileNotFoundError:
        return None
    return digest if any(build_dir.glob(f"{GROUP}__mypyc.*")) else None


def build_status(build_dir: Path = BUILD_DIR, package_dir: Path = PACKAGE_DIR) -> str:
    """What `use_compiled_build` would run: COMPILED, or why the modules stay interpreted."""
    if os.environ.get(FORCE_INTERPRETED, "") not in ("", "0"):
        return FORCED
    digest = built_from(build_dir)
    if digest is None:
        return NO_BUILD
    return COMPILED if digest == source_digest(package_dir) else STALE_BUILD


def use_compiled_build(package_path: list[str], build_dir: Path = BUILD_DIR,
                       package_dir: Path = PACKAGE_DIR) -> str:
    """Put a current build first on the package's path (taggers' __path__); returns
    `build_status`. Called before any module of the package is imported."""
    status = build_status(build_dir, package_dir)
    if status != COMPILED:
        return status
    group = f"{GROUP}__mypyc"
    if group not in sys.modules:
        library = next(build_dir.glob(f"{group}.*"))
        spec = importlib.util.spec_from_file_location(group, library)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[group] = module  # the modules' libraries import it by this name
        spec.loader.exec_module(module)
    package_path.insert(0, str(build_dir / "taggers"))
    return status
