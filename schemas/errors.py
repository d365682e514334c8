"""The one error hierarchy, split by when it fails (STYLE.md rule 5).

- `RuleDefinitionError`: at load time; the rule file is wrong and must not be used.
- `EventRejected`: per event; the event goes to the dead-letter topic with `reason`.
"""

from __future__ import annotations


class TagstreamError(Exception):
    """Base of every error tagstream raises on purpose."""


class EventRejected(TagstreamError):
    """An inbound event that cannot be processed; `reason` is written for its producer."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RuleDefinitionError(TagstreamError):
    """A rule file that cannot be loaded: names the file, the line and what to do about it."""

    def __init__(self, message: str, *, path: str = "<rules>", line: int | None = None,
                 hint: str | None = None) -> None:
        where = f"{path}:{line}" if line is not None else path
        text = f"{where}: {message}"
        if hint:
            text += f" ({hint})"
        super().__init__(text)
        self.path = path
        self.line = line
        self.hint = hint
