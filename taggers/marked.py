"""Marked tags: tags a person sets, not a rule (导购打标, campaign lists, a guide's WeCom tag).

They arrive as `interaction.tag_marked` events, so replay and dry run reproduce them exactly.
Invariants:
- rules never add or remove a marked tag; only another mark or its `expires_at` removes it;
- a rule tag (declared under `tags`, or a tier tag) cannot be marked: the event is rejected;
- a tag the pack does not declare under `marked_tags` needs a `name_zh` on the event (it is
  what guides and WeCom show), and syncs like an `own` tag unless it comes from an import.

Sharing (`share` in the rule file) says which of the member's WeCom customers show the tag:
`all` their every guide's customer, `own` only the customer of the guide who marked it. A
tag read from WeCom (`source: wecom`) is already on its guide's customer, in a group that is
not tagstream's, so tagstream never marks it there again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from schemas.errors import RuleDefinitionError
from taggers.counters import NAME
from taggers.loyalty import WECOM_TAG_NAME_LIMIT
from taggers.state import HeldTag, MemberState
from taggers.yamlsrc import check_keys, line

Share = Literal["all", "own"]
MARKED_FAMILY = "marked"
MARKED_TAG_KEYS = {"id", "name_zh", "share", "description"}
TAG_MARKED = "interaction.tag_marked"


@dataclass(frozen=True)
class MarkedTag:
    id: str
    name_zh: str
    share: Share = "own"
    description: str = ""


def compile_marked_tags(specs: Any, source: str, taken: list[str]) -> dict[str, MarkedTag]:
    """The `marked_tags` section: a list of {id, name_zh, share, description}."""
    if specs is None:
        return {}
    if not isinstance(specs, list):
        raise RuleDefinitionError("'marked_tags' must be a list of {id, name_zh, share}",
                                  path=source)
    marked: dict[str, MarkedTag] = {}
    for spec in specs:
        if not isinstance(spec, dict):
            raise RuleDefinitionError("each marked tag is a mapping with id and name_zh",
                                      path=source)
        check_keys(spec, MARKED_TAG_KEYS, "marked tag", source)
        tag_id, name_zh, share = spec.get("id"), spec.get("name_zh"), spec.get("share", "own")
        at = line(spec, "id")
        if not isinstance(tag_id, str) or not NAME.match(tag_id):
            raise RuleDefinitionError(f"marked tag id {tag_id!r} must be lower_snake_case",
                                      path=source, line=at)
        if tag_id in taken or tag_id in marked:
            raise RuleDefinitionError(f"duplicate tag id {tag_id!r}: a marked tag cannot "
                                      "share its id with another tag", path=source, line=at)
        if not isinstance(name_zh, str) or not name_zh.strip() \
                or len(name_zh) > WECOM_TAG_NAME_LIMIT:
            raise RuleDefinitionError(f"marked tag {tag_id!r} needs a name_zh of 1 to "
                                      f"{WECOM_TAG_NAME_LIMIT} characters", path=source,
                                      line=line(spec, "name_zh") or at)
        if share not in ("all", "own"):
            raise RuleDefinitionError(f"marked tag {tag_id!r}: share is 'all' (every guide "
                                      f"of the member) or 'own' (the marking guide), not "
                                      f"{share!r}", path=source, line=line(spec, "share") or at)
        marked[tag_id] = MarkedTag(tag_id, name_zh.strip(), share,
                                   str(spec.get("description") or ""))
    return marked


def is_marked(held: HeldTag) -> bool:
    return held.source != "rule"


def marked_name(tag_id: str, held: HeldTag | None, declared: MarkedTag | None) -> str:
    if declared is not None:
        return declared.name_zh
    name = held.evidence.get("name_zh") if held is not None else None
    return name if isinstance(name, str) and name else tag_id


def marked_guides(evidence: Mapping[str, Any]) -> tuple[str, ...]:
    """The guides who marked a tag, first marker first: `guides` once a second guide marked
    it too, else the one `guide`."""
    guides = evidence.get("guides")
    if isinstance(guides, list):
        return tuple(g for g in guides if isinstance(g, str))
    guide = evidence.get("guide")
    return (guide,) if isinstance(guide, str) else ()


def share_of(tag_id: str, held: HeldTag, declared: MarkedTag | None) -> Share:
    if declared is not None:
        return declared.share
    return "all" if held.source == "import" else "own"


def next_expiry(state: MemberState) -> int | None:
    """The earliest instant a marked tag of this member expires."""
    best = None
    for held in state.tags.values():
        until = held.until
        if until is not None and (best is None or until < best) and is_marked(held):
            best = until
    return best


def expired(state: MemberState, until: int) -> list[tuple[str, HeldTag]]:
    """The marked tags due to expire at or before `until`, earliest first."""
    due = [(tag_id, held) for tag_id, held in state.tags.items()
           if is_marked(held) and held.until is not None and held.until <= until]
    return sorted(due, key=lambda item: (item[1].until, item[0]))
