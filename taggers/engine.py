"""The pure tagging engine: `(member state, event or deadline, rules) -> (new state, changes)`.

No Kafka, no clock of its own: time comes from the event (`occurred_at`) or from the caller
(`advance(state, now)` fires deadlines the caller's clock has passed). The Faust agents, the
dry run and the replay tests all call these two functions, so they cannot disagree.

Order of work for an event of member X at time t (DESIGN.md "Time"):
  1. a redelivered event (same event_id) changes nothing;
  2. X's deadlines due at or before t fire first, in deadline order;
  3. the event is applied to X's state;
  4. every tag rule is evaluated at t; differences become tag changes with evidence;
  5. X's next deadline is computed from the rules' time dependence.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from schemas.changes import Guide, TagChange, change_id_for
from schemas.errors import EventRejected
from schemas.events import Event, MemberJoined, OrderPaid, OrderRefunded, ProfileUpdated
from schemas.events import WecomFriendAdded, WecomFriendRemoved
from taggers.clock import DAY, to_epoch
from taggers.expr import TIME
from taggers.rules import EvalContext, RulePack, TagRule
from taggers.state import SEEN_CAPACITY, GuideLink, HeldTag, MemberState

REMOVED_FROM_PACK = "__rule_removed__"


@dataclass
class Outcome:
    state: MemberState
    changes: list[TagChange] = field(default_factory=list)
    duplicate: bool = False


def event_hash(event_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(event_id.encode(), digest_size=8).digest(), "big")


class Engine:
    """Applies one compiled `RulePack`. Stateless between calls: all memory is MemberState."""

    def __init__(self, pack: RulePack, allowed_lateness_s: int = 7 * DAY) -> None:
        self.pack = pack
        self.allowed_lateness_s = allowed_lateness_s
        self.calendar = pack.calendar
        self._retention = {c.name: c.retention_days for c in pack.counters}

    # --- public API ---------------------------------------------------------------------------

    def apply(self, state: MemberState | None, event: Event) -> Outcome:
        if state is None:
            state = MemberState(member_id=event.member_id)
        occurred = to_epoch(event.occurred_at)
        digest = event_hash(event.event_id)
        seen = state.seen
        for i in range(0, len(seen), 2):
            if seen[i] == digest:
                return Outcome(state, duplicate=True)
        self._reject_if_late(state, occurred)

        outcome = Outcome(state)
        self._fire_due(state, occurred, outcome.changes)
        now = occurred if state.watermark is None else max(occurred, state.watermark)
        self._remember(state, digest, occurred)
        self._record(state, event, occurred)
        self._evaluate(state, event, now, {"event_id": event.event_id}, outcome.changes)
        return outcome

    def advance(self, state: MemberState, now: int) -> Outcome:
        """Fire every deadline of this member due at or before `now`."""
        outcome = Outcome(state)
        self._fire_due(state, now, outcome.changes)
        return outcome

    # --- steps --------------------------------------------------------------------------------

    def _reject_if_late(self, state: MemberState, occurred: int) -> None:
        if state.watermark is None:
            return
        render = self.calendar.render
        if occurred < state.watermark - self.allowed_lateness_s:
            raise EventRejected(
                f"late event: occurred_at {render(occurred)} is more than "
                f"{self.allowed_lateness_s} s before this member's newest state "
                f"({render(state.watermark)}); raise TAGSTREAM_ALLOWED_LATENESS_S or backfill")
        seen = state.seen
        if len(seen) >= 2 * SEEN_CAPACITY and occurred < seen[1]:
            raise EventRejected(
                f"late event: occurred_at {render(occurred)} is older than the "
                f"{SEEN_CAPACITY} most recent events remembered for this member (from "
                f"{render(seen[1])}), so a redelivery cannot be ruled out; not applied")

    def _fire_due(self, state: MemberState, until: int, changes: list[TagChange]) -> None:
        while state.next_deadline is not None and state.next_deadline <= until:
            deadline = state.next_deadline
            self._evaluate(state, None, deadline, None, changes)

    def _remember(self, state: MemberState, digest: int, occurred: int) -> None:
        seen = state.seen
        # keep oldest-first by time so the lateness check can read the horizon at seen[1]
        i = len(seen)
        while i > 0 and seen[i - 1] > occurred:
            i -= 2
        seen[i:i] = [digest, occurred]
        if len(seen) > 2 * SEEN_CAPACITY:
            del seen[:2]

    def _record(self, state: MemberState, event: Event, occurred: int) -> None:
        """Fold the event into the member's aggregates (built-in fields, then counters)."""
        day = self.calendar.day_of(occurred)
        if isinstance(event, OrderPaid):
            orders = state.orders
            orders.count += 1
            orders.spend_fen += event.amount_fen
            if day > orders.last_day:
                orders.distinct_days += 1
                orders.last_day = day
            if orders.first_at is None or occurred < orders.first_at:
                orders.first_at = occurred
            if orders.last_at is None or occurred > orders.last_at:
                orders.last_at = occurred
            if event.guide_id:
                self._bind_guide(state, event.guide_id, None)
        elif isinstance(event, OrderRefunded):
            state.orders.refund_fen += event.amount_fen
        elif isinstance(event, MemberJoined):
            if state.joined_at is None or occurred < state.joined_at:
                state.joined_at = occurred
        elif isinstance(event, ProfileUpdated):
            if event.birthday is not None:
                state.birthday = event.birthday
        elif isinstance(event, WecomFriendAdded):
            self._bind_guide(state, event.guide_id, event.external_userid)
        elif isinstance(event, WecomFriendRemoved):
            state.guides = [g for g in state.guides if not (
                g.userid == event.guide_id and g.external_userid in (event.external_userid, None))]

        for counter in self.pack.counters_for(event.event_type):
            amount = counter.measure(event)
            if amount and counter.retention_days:
                _add_to_bucket(state.counters.setdefault(counter.name, []), day, amount)

    @staticmethod
    def _bind_guide(state: MemberState, userid: str, external_userid: str | None) -> None:
        for i, link in enumerate(state.guides):
            if link.userid == userid:
                if external_userid is not None and link.external_userid != external_userid:
                    state.guides[i] = GuideLink(userid, external_userid)
                return
        state.guides.append(GuideLink(userid, external_userid))

    def _evaluate(self, state: MemberState, event: Event | None, now: int,
                  cause: dict[str, str] | None, changes: list[TagChange]) -> None:
        """Evaluate every rule at `now`; a None cause means a deadline fired at `now`."""
        self._prune(state, now)
        ctx = EvalContext(state, event, now, self.calendar)
        held = state.tags
        version = self.pack.version
        for rule in self.pack.tags:
            holds = bool(rule.condition.eval(ctx))
            ctx.held[rule.id] = holds
            if holds == (rule.id in held):
                continue
            evidence = self._evidence(rule, ctx)
            op = "added" if holds else "removed"
            if holds:
                held[rule.id] = HeldTag(now, version, evidence)
            else:
                del held[rule.id]
            changes.append(self._change(state, rule.id, rule, op, cause, now, evidence))
        for tag_id in [t for t in held if t not in ctx.held]:
            del held[tag_id]
            changes.append(self._change(state, tag_id, None, "removed", cause, now,
                                        {"rule": "no longer in rule pack " + version}))
        state.watermark = now if state.watermark is None else max(state.watermark, now)
        state.rules_version = version
        state.next_deadline = self._next_deadline(ctx)

    def _next_deadline(self, ctx: EvalContext) -> int | None:
        best = None
        for rule in self.pack.tags:
            next_change = rule.condition.next_change
            if next_change is None:
                continue
            at = next_change(ctx)
            if at is not None and at > ctx.now and (best is None or at < best):
                best = at
        return best

    def _prune(self, state: MemberState, now: int) -> None:
        today = self.calendar.day_of(now)
        for name, series in list(state.counters.items()):
            keep = self._retention.get(name, 0)
            low = today - keep + 1
            cut = 0
            while cut < len(series) and series[cut] < low:
                cut += 2
            if cut == len(series):
                del state.counters[name]
            elif cut:
                del series[:cut]

    def _evidence(self, rule: TagRule, ctx: EvalContext) -> dict[str, Any]:
        evidence: dict[str, Any] = {}
        for label, get, kind in rule.condition.leaves:
            value = get(ctx)
            if kind == TIME and value is not None:
                value = self.calendar.render(value)
            evidence[label] = value
        return evidence

    def _change(self, state: MemberState, tag_id: str, rule: TagRule | None, op: str,
                cause: dict[str, str] | None, now: int, evidence: dict[str, Any]) -> TagChange:
        at = self.calendar.render(now)
        if cause is None:
            cause = {"timer": f"{tag_id}@{at}"}
        return TagChange(
            change_id=change_id_for(state.member_id, tag_id, op, cause),
            member_id=state.member_id,
            tag=tag_id,
            op=op,  # type: ignore[arg-type]
            rule_id=tag_id,
            rules_version=self.pack.version,
            cause=cause,
            evidence=evidence,
            at=at,
            guides=tuple(Guide(userid=g.userid, external_userid=g.external_userid)
                         for g in state.guides),
            name_zh=rule.name_zh if rule else "",
            family=rule.family if rule else "",
        )


def _add_to_bucket(series: list[int], day: int, amount: int) -> None:
    """Add to the day's bucket in a flat ascending [day, value, ...] list."""
    i = len(series) - 2
    if i >= 0 and series[i] == day:
        series[i + 1] += amount
        return
    if i < 0 or series[i] < day:
        series.extend((day, amount))
        return
    while i >= 0 and series[i] > day:
        i -= 2
    if i >= 0 and series[i] == day:
        series[i + 1] += amount
    else:
        series[i + 2:i + 2] = [day, amount]

