"""YAML rule source: safe loading that keeps line numbers, and the checks every section uses.

Every mapping gets `__line__` (its own line) and `__lines__` (the line of each key), so any
part of the rule compiler can say exactly where a problem is.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

import yaml

from schemas.errors import RuleDefinitionError


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping (never constructs Python objects).

    Booleans are YAML 1.2 style (only true/false): under YAML 1.1 the counter key `on:` and
    values like `no` would silently turn into booleans."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML's own constructors raise bare ValueError/IndexError for an explicitly tagged
        # value they cannot read (`!!int ---`, `!!int` with nothing, `!!binary é`).
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, IndexError, TypeError, OverflowError) as exc:
            raise RuleDefinitionError(f"cannot read {node.tag} value {str(node.value)[:40]!r}: "
                                      f"{exc}", line=node.start_mark.line + 1) from None


# Dates stay text too: the rule compiler parses them itself and can then say which line holds
# an impossible date like 2024-02-30 (PyYAML would raise a bare ValueError).
_NOT_IMPLICIT = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp"}
_LineLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _NOT_IMPLICIT]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_LineLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"))


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict[str, Any]:
    mapping = loader.construct_mapping(node, deep=True)
    keys = [loader.construct_object(key, deep=True) for key, _ in node.value]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise RuleDefinitionError(f"duplicate key {sorted(map(str, duplicates))[0]!r}",
                                  line=node.start_mark.line + 1)
    mapping["__line__"] = node.start_mark.line + 1
    mapping["__lines__"] = {loader.construct_object(key): value.start_mark.line + 1
                            for key, value in node.value}
    return mapping


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(text: str, source: str) -> Any:
    """Parse rule-file text; every error names the source and line."""
    try:
        return yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except RuleDefinitionError as exc:
        raise RuleDefinitionError(str(exc).split(": ", 1)[-1], path=source, line=exc.line) from None
    except RecursionError:
        raise RuleDefinitionError("not valid YAML: nested too deeply", path=source) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise RuleDefinitionError(f"not valid YAML: {getattr(exc, 'problem', exc)}",
                                  path=source, line=mark.line + 1 if mark else None) from None


def line(mapping: dict[str, Any], key: str | None = None) -> int | None:
    """The line of `key` in `mapping` (or of the mapping itself)."""
    if key is not None and key in mapping.get("__lines__", {}):
        return mapping["__lines__"][key]
    return mapping.get("__line__")


def suggest(word: str, options: list[str] | tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else None


def check_keys(spec: dict[str, Any], allowed: set[str], what: str, source: str) -> None:
    """Unknown keys fail with the line and the closest allowed key."""
    for key in spec:
        if isinstance(key, str) and key.startswith("__"):
            continue
        if key not in allowed:
            raise RuleDefinitionError(f"{what}: unknown key {key!r}", path=source,
                                      line=line(spec, key),
                                      hint=suggest(str(key), sorted(allowed)) or
                                      f"allowed: {', '.join(sorted(allowed))}")
