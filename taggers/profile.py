"""A member's profile in the DESIGN.md shape: what the API, Redis and the dry run show."""

from __future__ import annotations

from typing import Any

from taggers.clock import LocalCalendar
from taggers.state import MemberState


def render_profile(state: MemberState, calendar: LocalCalendar) -> dict[str, Any]:
    def at(instant: int | None) -> str | None:
        return None if instant is None else calendar.render(instant)

    orders = state.orders
    return {
        "member_id": state.member_id,
        "joined_at": at(state.joined_at),
        "birthday": state.birthday,
        "orders": {"count": orders.count, "distinct_days": orders.distinct_days,
                   "spend_fen": orders.spend_fen, "refund_fen": orders.refund_fen,
                   "first_at": at(orders.first_at), "last_at": at(orders.last_at)},
        "tags": [{"id": tag_id, "since": at(held.since), "rule_version": held.rules_version,
                  "evidence": held.evidence}
                 for tag_id, held in sorted(state.tags.items())],
        "guides": [{"userid": g.userid, "external_userid": g.external_userid}
                   for g in state.guides],
        "rules_version": state.rules_version,
        "next_deadline": at(state.next_deadline),
        "as_of": at(state.watermark),
    }
