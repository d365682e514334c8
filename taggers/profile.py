"""Render a member's state as the profile (`schemas.profile.Profile`): what the API, Redis
and the dry run show."""

from __future__ import annotations

from typing import Any, Callable

from schemas.changes import Guide
from schemas.profile import Consent, HeldTag, OrderTotals, Profile, Rfm
from taggers.marked import MARKED_FAMILY, is_marked, marked_name, share_of
from taggers.rules import RulePack
from taggers.state import MemberState

# The classic eight RFM segments as (R, F, M) high/low.
RFM_LETTERS = {
    "important_value": "HHH", "important_develop": "HLH", "important_keep": "LHH",
    "important_retain": "LLH", "general_value": "HHL", "general_develop": "HLL",
    "general_keep": "LHL", "general_retain": "LLL",
}


def render_profile(state: MemberState, pack: RulePack) -> Profile:
    calendar = pack.calendar

    def at(instant: int | None) -> str | None:
        return None if instant is None else calendar.render(instant)

    orders = state.orders
    loyalty: dict[str, Any] = {}
    if pack.loyalty is not None and state.watermark is not None:
        loyalty = pack.loyalty.profile(state.loyalty, state.watermark)
    return Profile(
        member_id=state.member_id,
        joined_at=at(state.joined_at),
        lifecycle=pack.group_value("lifecycle", state.tags),
        orders=OrderTotals(count=orders.count, distinct_days=orders.distinct_days,
                           spend_fen=orders.spend_fen, refund_fen=orders.refund_fen,
                           first_at=at(orders.first_at), last_at=at(orders.last_at)),
        rfm=_rfm(pack.group_value("rfm", state.tags)),
        tags=[_tag(tag_id, held, pack, at) for tag_id, held in sorted(state.tags.items())],
        guides=[Guide(userid=g.userid, external_userid=g.external_userid) for g in state.guides],
        birthday=state.birthday,
        rules_version=state.rules_version,
        next_deadline=at(state.next_deadline),
        as_of=at(state.watermark),
        consent=Consent(marketing=state.marketing),
        **loyalty,
    )


def _rfm(segment: str | None) -> Rfm | None:
    if segment is None:
        return None
    letters = RFM_LETTERS.get(segment, "???")
    return Rfm(r=_level(letters[0]), f=_level(letters[1]), m=_level(letters[2]), segment=segment)


def _tag(tag_id: str, held: Any, pack: RulePack,
         at: Callable[[int | None], str | None]) -> HeldTag:
    if is_marked(held):
        declared = pack.marked.get(tag_id)
        return HeldTag(id=tag_id, name_zh=marked_name(tag_id, held, declared),
                       family=MARKED_FAMILY, since=at(held.since),
                       rule_version=held.rules_version, evidence=held.evidence,
                       source=held.source, share=share_of(tag_id, held, declared),
                       expires_at=at(held.until))
    rule = pack.tag(tag_id)
    return HeldTag(id=tag_id, name_zh=rule.name_zh if rule else tag_id,
                   family=rule.family if rule else None, since=at(held.since),
                   rule_version=held.rules_version, evidence=held.evidence)


def _level(letter: str) -> Any:
    return {"H": "high", "L": "low"}.get(letter)
