"""Hot reload of the rule file: a new version is used at once; a broken one never is.

The worker and the Redis sink (which renders profiles with the rules) each watch the file.
Each keeps running on its current rules when the file on disk does not load (typo, bad
window, cycle...): the error is logged with file, line and hint, and the watcher tries again
when the file changes next.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from schemas.errors import RuleDefinitionError
from taggers.rules import RulePack, load_rules

log = logging.getLogger(__name__)


class RulesWatcher:
    def __init__(self, path: Path, current: RulePack, on_new: Callable[[RulePack], None]) -> None:
        self.path = path
        self.current = current
        self.on_new = on_new
        self.last_error: str | None = None
        self._seen = self._signature()

    def _signature(self) -> tuple[int, int] | None:
        try:
            stat = self.path.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    def check(self) -> bool:
        """Load the file if it changed since the last look; True if new rules took effect."""
        signature = self._signature()
        if signature == self._seen:
            return False
        self._seen = signature
        try:
            pack = load_rules(self.path)
        except RuleDefinitionError as exc:
            self.last_error = str(exc)
            log.error("rule file not loaded, keeping rules %s: %s", self.current.version, exc)
            return False
        self.last_error = None
        if pack.version == self.current.version:
            log.warning("rule file %s changed but its version is still %s: loaded anyway; "
                        "give each change a new version so changes can be traced",
                        self.path, pack.version)
        log.info("rules %s loaded from %s (was %s)", pack.version, self.path,
                 self.current.version)
        self.current = pack
        self.on_new(pack)
        return True
