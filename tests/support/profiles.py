"""Member profiles in the DESIGN.md shape, built with the worker's own model, for sink and
API tests."""

from __future__ import annotations

from typing import Any

import msgspec

from schemas.changes import Guide
from schemas.profile import Consent, HeldTag, OrderTotals, Profile

EVIDENCE = {
    "member": {"joined": True},
    "first_purchase": {"orders.count": 1},
    "repeat_buyer": {"paid_orders[365d]": 3},
    "high_value": {"spend_fen[365d]": 612000, "refund_fen[365d]": 0},
}


def make_profile(member_id: str, *, tags: list[str] = (), guides: list[str] = (),  # type: ignore[assignment]
                 as_of: str = "2024-03-01T12:00:00+08:00", spend_fen: int = 0) -> dict[str, Any]:
    """The profile as JSON-ready builtins, the way the Redis sink receives it."""
    return msgspec.to_builtins(Profile(
        member_id=member_id,
        joined_at="2024-01-01T10:00:00+08:00",
        lifecycle=None,
        orders=OrderTotals(count=1, distinct_days=1, spend_fen=spend_fen, refund_fen=0,
                           first_at="2024-02-01T10:00:00+08:00", last_at=as_of),
        rfm=None,
        tags=[HeldTag(id=tag, name_zh=tag, family="behaviour", since="2024-02-01T10:00:00+08:00",
                      rule_version="2024-03-01.1", evidence=EVIDENCE.get(tag, {"value": 1}))
              for tag in sorted(tags)],
        guides=[Guide(userid=g, external_userid=f"wm{g}") for g in guides],
        birthday=None,
        rules_version="2024-03-01.1",
        next_deadline=None,
        as_of=as_of,
        consent=Consent(marketing=True),
    ))
