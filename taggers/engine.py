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

from hashlib import blake2b
from typing import Any, cast

import msgspec

from schemas.changes import Guide, TagChange, TierChange, change_id_for
from schemas.errors import EventRejected
from schemas.events import Event, MemberJoined, OrderPaid, OrderRefunded, ProfileUpdated
from schemas.erasure import Erasure, erasure_id_for, member_hash
from schemas.events import (ConsentChanged, ErasureRequested, TagMarked, WecomFriendAdded,
                            WecomFriendRemoved)
from taggers.clock import DAY, to_epoch
from taggers.expr import TIME
from taggers.loyalty import LoyaltyProgram
from taggers.outcome import Outcome
from taggers.marked import (MARKED_FAMILY, TAG_MARKED, expired, is_marked, marked_guides,
                            marked_name, next_expiry)
from taggers.rules import EvalContext, RulePack, TagRule
from taggers.series import prune_buckets, prune_keys
from taggers.state import (SEEN_CAPACITY, GuideLink, HeldTag, MemberState, decode_state,
                            encode_state)
from taggers.tasks import TaskBook, next_task_expiry
from taggers.wecom import WecomView, plan_marks, view_of

REMOVED_FROM_PACK = "__rule_removed__"
# Events that change what a member's WeCom customers must show without changing a tag.
_MARKED_EVENTS = frozenset({WecomFriendAdded, WecomFriendRemoved, ConsentChanged, TagMarked})
# Event classes are checked by their exact type (`type(event) is OrderPaid`), not isinstance:
# no event class is subclassed (tests/schemas check), and a compiled isinstance against a
# msgspec class that does not match asks the metaclass (about 900 instructions; 6% of a
# dry run's instructions went there).


def event_hash(event_id: str) -> int:
    return int.from_bytes(blake2b(event_id.encode(), digest_size=8).digest(), "big")


class Engine:
    """Applies one compiled `RulePack`. Stateless between calls: all memory is MemberState."""

    def __init__(self, pack: RulePack, allowed_lateness_s: int = 7 * DAY,
                 skip_inert_units: bool = True) -> None:
        self.pack = pack
        # False: a new member's first evaluation runs every unit (the oracle the tests
        # compare the skipping with; see _first_units).
        self.skip_inert_units = skip_inert_units
        self.allowed_lateness_s = allowed_lateness_s
        self.calendar = pack.calendar
        self.loyalty: LoyaltyProgram | None = pack.loyalty
        self._retention = {c.name: c.retention_days for c in pack.counters}
        # Units that can change by time alone (a timer or a ttl); the others have no deadline.
        self._timed_units = frozenset(
            i for i, unit in enumerate(pack.units)
            if any(rule.condition.next_change is not None or rule.ttl_s is not None
                   for rule in unit))
        self._unit_views: dict[Any, tuple[frozenset[int], tuple[int, ...]]] = {}
        # Per unit, the earliest instant seen from which it holds nothing and has no deadline
        # for a member with no state (`_inert_for_new_member`); per event type, from when that
        # is so for every unit the event cannot change.
        self._inert_since: list[int | None] = [None] * len(pack.units)
        self._others_inert_since: dict[str, int] = {}
        self._no_state = MemberState(member_id="")  # read by probes, never written
        self.tasks = TaskBook(pack.tasks, pack.calendar, pack.version)

    # --- public API ---------------------------------------------------------------------------

    @staticmethod
    def has_applied(state: MemberState | None, event: Event) -> bool:
        """The event's id is among the member's remembered ones: a redelivery."""
        return state is not None and _seen(state, event_hash(event.event_id))

    def apply(self, state: MemberState | None, event: Event,
              occurred: int | None = None) -> Outcome:
        """`occurred`: the event's occurred_at in epoch seconds, when the caller has it."""
        if type(event) is ErasureRequested:
            return self.erase(state, event)
        if state is None:
            state = MemberState(member_id=event.member_id)
        if occurred is None:
            occurred = to_epoch(event.occurred_at)
        digest = event_hash(event.event_id)
        if _seen(state, digest):
            return Outcome(state, duplicate=True)
        self._reject_if_late(state, occurred)
        if type(event) is TagMarked:
            self._check_mark(state, event)
        self.tasks.check(state, event, self._state_at)

        outcome = Outcome(state)
        before = self._view(state)
        self._fire_due(state, occurred, outcome)
        self.tasks.follow(state, outcome, occurred)  # before the event: its guides, consent
        now = occurred if state.watermark is None else max(occurred, state.watermark)
        cause = {"event_id": event.event_id}
        self._remember(state, digest, occurred)
        self._record(state, event, occurred)
        level_moved = True
        if self.loyalty is not None:
            level = state.loyalty.level if state.loyalty is not None else None
            loyalty, tier_changes = self.loyalty.apply(
                state.loyalty, event, occurred, state.member_id, cause)
            state.loyalty = loyalty
            level_moved = loyalty.level != level  # a first level (None before) moved too
            outcome.tier_changes.extend(_guided(state, tier_changes))
        if type(event) is TagMarked:
            self._apply_mark(state, event, now, cause, outcome.changes)
        self._evaluate(state, event, now, cause, outcome.changes, level_moved=level_moved)
        if outcome.changes or type(event) in _MARKED_EVENTS:
            self._mark(before, outcome, cause)
        self.tasks.after_event(state, event, now, outcome)
        return outcome

    def erase(self, state: MemberState | None, event: ErasureRequested) -> Outcome:
        """Forget the member: the caller deletes the state; every tag of theirs comes off
        their WeCom customers; the erasure record names no one. A later event of the same
        member id starts a new member."""
        member_id = event.member_id
        cause = {"event_id": event.event_id}
        found = state is not None
        state = state or MemberState(member_id=member_id)
        before = self._view(state)
        outcome = Outcome(state)
        self.tasks.erase(state, to_epoch(event.occurred_at), outcome.tasks)
        cleared = WecomView({pair: frozenset() for pair in before.pairs}, before.names,
                            before.marketing)
        marks = plan_marks(member_id, before, cleared, self._name_of,
                           cause, self.calendar.render(to_epoch(event.occurred_at)),
                           reason="erasure")
        if marks is not None:
            outcome.marks.append(marks)
        outcome.erasure = Erasure(
            erasure_id=erasure_id_for(event.event_id), member_hash=member_hash(member_id),
            request_event_id=event.event_id, request_id=event.request_id,
            requested_at=self.calendar.render(to_epoch(event.occurred_at)), state_found=found,
            tags_cleared=len(state.tags),
            wecom_pairs_cleared=len(marks.marks) if marks is not None else 0)
        return outcome

    def reevaluate(self, state: MemberState, now: int) -> Outcome:
        """Fire due deadlines, then evaluate every rule at `now` (a backfill after new rules)."""
        before = self._view(state)
        outcome = self._advance(state, now)
        at = now if state.watermark is None else max(now, state.watermark)
        self._evaluate(state, None, at, None, outcome.changes)
        self.tasks.follow(state, outcome, at)
        if outcome.changes:
            self._mark(before, outcome, outcome.changes[-1].cause)
        return outcome

    def advance(self, state: MemberState, now: int) -> Outcome:
        """Fire every deadline of this member due at or before `now`."""
        before = self._view(state) if state.next_deadline is not None else None
        outcome = self._advance(state, now)
        if before is not None and outcome.changes:
            self._mark(before, outcome, outcome.changes[-1].cause)
        return outcome

    def _advance(self, state: MemberState, now: int) -> Outcome:
        outcome = Outcome(state)
        self._fire_due(state, now, outcome)
        self.tasks.follow(state, outcome, now)
        return outcome

    def _state_at(self, state: MemberState, until: int) -> MemberState:
        """A copy of the member's state with its deadlines up to `until` fired."""
        copy = decode_state(encode_state(state))
        self._advance(copy, until)
        return copy

    def _mark(self, before: WecomView, outcome: Outcome, cause: dict[str, str]) -> None:
        """The WeCom marks that take the member's pairs from `before` to now."""
        state = outcome.state
        if not _has_pairs(state):
            return  # plan_marks marks only the pairs the member has now
        marks = plan_marks(state.member_id, before, self._view(state), self._name_of, cause,
                           self.calendar.render(state.watermark or 0))
        if marks is not None:
            outcome.marks.append(marks)

    def _view(self, state: MemberState) -> WecomView:
        """What the member's WeCom pairs show. With no pair nothing shows, and plan_marks
        reads the names of a view only for tags it marks on a pair, so none are gathered."""
        if not _has_pairs(state):
            return WecomView({}, {}, state.marketing)
        return view_of(state, self.pack.marked)

    def _name_of(self, tag_id: str, held: HeldTag | None = None) -> str:
        rule = self.pack.tag(tag_id)
        if rule is not None:
            return rule.name_zh or tag_id
        return marked_name(tag_id, held, self.pack.marked.get(tag_id))

    # --- steps --------------------------------------------------------------------------------

    def _reject_if_late(self, state: MemberState, occurred: int) -> None:
        if state.watermark is None:
            return
        render = self.calendar.render
        if occurred < state.watermark - self.allowed_lateness_s:
            raise EventRejected(
                f"late event: occurred_at {render(occurred)} is more than "
                f"{self.allowed_lateness_s} s before this member's newest state "
                f"({render(state.watermark)}), so it is not applied (an old event delivered "
                f"again lands here too); raise TAGSTREAM_ALLOWED_LATENESS_S or backfill")
        seen = state.seen
        if len(seen) >= 2 * SEEN_CAPACITY and occurred < seen[1]:
            raise EventRejected(
                f"late event: occurred_at {render(occurred)} is older than the "
                f"{SEEN_CAPACITY} most recent events remembered for this member (from "
                f"{render(seen[1])}), so a redelivery cannot be ruled out; not applied")

    def _fire_due(self, state: MemberState, until: int, outcome: Outcome) -> None:
        pack = self.pack
        while state.next_deadline is not None and state.next_deadline <= until:
            deadline = state.next_deadline
            series = state.unit_deadlines
            due = {series[i] for i in range(0, len(series), 2) if series[i + 1] <= deadline}
            if self._expire_marks(state, deadline, outcome.changes):
                due.update(pack.units_affected_by(TAG_MARKED))
            if self.loyalty is not None and state.loyalty is not None \
                    and (self.loyalty.next_deadline(state.loyalty) or until + 1) <= deadline:
                outcome.tier_changes.extend(_guided(state, self.loyalty.advance(
                    state.loyalty, deadline, state.member_id)))
                if pack.tier_unit is not None:
                    due.add(pack.tier_unit)
            self._evaluate(state, None, deadline, None, outcome.changes,
                           pack.with_dependents(due))
            # tasks opened at this deadline make their expiry a deadline of this same loop
            self.tasks.follow(state, outcome, deadline)

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
        if type(event) is OrderPaid:
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
        elif type(event) is OrderRefunded:
            state.orders.refund_fen += event.amount_fen
        elif type(event) is MemberJoined:
            if state.joined_at is None or occurred < state.joined_at:
                state.joined_at = occurred
        elif type(event) is ProfileUpdated:
            if event.birthday is not None:
                state.birthday = event.birthday
        elif type(event) is WecomFriendAdded:
            self._bind_guide(state, event.guide_id, event.external_userid)
        elif type(event) is ConsentChanged:
            state.marketing = event.marketing
        elif type(event) is WecomFriendRemoved:
            state.guides = [g for g in state.guides if not (
                g.userid == event.guide_id and g.external_userid in (event.external_userid, None))]

        for recorder in self.pack.recorders_for(event.event_type):
            recorder.record(state, event, occurred if recorder.by_instant else day)

    @staticmethod
    def _bind_guide(state: MemberState, userid: str, external_userid: str | None) -> None:
        for i, link in enumerate(state.guides):
            if link.userid == userid:
                if external_userid is not None and link.external_userid != external_userid:
                    state.guides[i] = GuideLink(userid, external_userid)
                return
        state.guides.append(GuideLink(userid, external_userid))

    def _evaluate(self, state: MemberState, event: Event | None, now: int,
                  cause: dict[str, str] | None, changes: list[TagChange],
                  due: tuple[int, ...] | None = None, level_moved: bool = True) -> None:
        """Evaluate rules at `now`: after an event, the units reading what that event type
        writes (and the tier tags if it moved the loyalty level); at a deadline, the units
        due then (`due`); everything for a backfill or a new rules version. Units left out
        cannot have changed: every deadline up to `now` has fired, and nothing they read was
        written. A None cause means a deadline."""
        if state.watermark is None or self.calendar.day_of(now) != \
                self.calendar.day_of(state.watermark):
            self._prune(state, now)  # windows only lose days when the day changes
        ctx = EvalContext(state, event, now, self.calendar)
        pack = self.pack
        full = state.rules_version != pack.version or (event is None and due is None)
        if full and event is not None and self.skip_inert_units and _never_evaluated(state):
            indexes: Any = self._first_units(event.event_type, now)
        elif full:
            indexes = range(len(pack.units))
        elif event is not None:
            indexes = pack.units_affected_by(event.event_type, level_moved)
        else:
            indexes = due
        held = state.tags
        settled = ctx.held
        units = pack.units
        for index in indexes:
            unit: tuple[TagRule, ...] = units[index]
            if unit[0].group is None:
                rule = unit[0]
                holds = self._holds(rule, ctx, held.get(rule.id))
                if holds == (rule.id in held):
                    settled[rule.id] = holds  # unchanged (what _settle would find first)
                else:
                    self._settle(state, ctx, rule, holds, cause, changes)
                continue
            # An exclusive group: the first tag (in file order) whose condition holds wins;
            # leaving the old tag is published before entering the new one.
            winner = None
            for rule in unit:
                if rule.condition.eval(ctx):
                    winner = rule
                    break
            for rule in unit:
                if rule is not winner:
                    if rule.id in held:
                        self._settle(state, ctx, rule, False, cause, changes)
                    else:
                        settled[rule.id] = False
            if winner is not None:
                self._settle(state, ctx, winner, True, cause, changes)
        if full:
            for tag_id in [t for t, h in held.items() if pack.tag(t) is None and not is_marked(h)]:
                del held[tag_id]
                changes.append(self._change(state, tag_id, None, "removed", cause, now,
                                            {"rule": "no longer in rule pack " + pack.version}))
        state.watermark = now if state.watermark is None else max(state.watermark, now)
        state.rules_version = pack.version
        self._schedule(state, ctx, indexes, full)

    def _schedule(self, state: MemberState, ctx: EvalContext, indexes: Any,
                  full: bool) -> None:
        """Recompute the deadlines of the evaluated units; the others keep theirs."""
        # Each deadline is compared unboxed but kept as the int object it already is: as a
        # mypyc int it was boxed again (a new int object) to be kept, on every event.
        series: list[Any] = state.unit_deadlines
        now = ctx.now
        evaluated, timed = self._units_of(indexes)
        kept: list[Any] = []
        best = 0  # the earliest of kept's deadlines (best_at as an int), once there is one
        best_at: Any = None
        if not full:
            # a loop, not a comprehension over (unit, at) tuples: this runs on every event
            for i in range(0, len(series), 2):
                unit_at: Any = series[i + 1]
                until: int = unit_at
                if until > now and series[i] not in evaluated:
                    kept.append(series[i])
                    kept.append(unit_at)
                    if best_at is None or until < best:
                        best, best_at = until, unit_at
        for index in timed:
            found = self._unit_deadline(ctx, index)
            if found is not None:
                kept.append(index)
                kept.append(found)
                if best_at is None or found < best:
                    best, best_at = found, found
        state.unit_deadlines = kept
        # the earliest of the units', the marked tags' and the tasks' expiries, and loyalty's
        loyalty_due = (self.loyalty.next_deadline(state.loyalty)
                       if self.loyalty is not None else None)
        for at in (next_expiry(state), next_task_expiry(state, now) if state.tasks else None,
                   loyalty_due if loyalty_due is not None and loyalty_due > now else None):
            if at is not None and (best_at is None or at < best):
                best, best_at = at, at
        state.next_deadline = best_at

    def _unit_deadline(self, ctx: EvalContext, index: int) -> int | None:
        best = None
        now = ctx.now
        for rule in self.pack.units[index]:
            next_change = rule.condition.next_change
            if next_change is not None:
                at = next_change(ctx)
                if at is not None and at > now and (best is None or at < best):
                    best = at
            if rule.ttl_s is not None:
                held = ctx.state.tags.get(rule.id)
                at = held.until if held is not None else None
                if at is not None and at > now and (best is None or at < best):
                    best = at
        return best

    def _first_units(self, event_type: str, now: int) -> tuple[int, ...]:
        """The units a new member's first evaluation must run: those the event can change,
        and any other that holds or has a deadline for a member with no state at `now`
        (with the units reading its tag). The rest, left out, find nothing, as they would
        for a member with no state at all: they read nothing the event wrote."""
        # a new member's level has just been set
        affected = self.pack.units_affected_by(event_type, level_moved=True)
        since = self._others_inert_since.get(event_type)
        if since is not None and now >= since:
            return affected
        others = [i for i in range(len(self.pack.units)) if i not in affected]
        active = [i for i in others if not self._inert_for_new_member(i, now)]
        if active:
            return self.pack.with_dependents({*affected, *active})
        # every other unit is inert here, so each has the instant it became so
        self._others_inert_since[event_type] = max(
            (since for i in others if (since := self._inert_since[i]) is not None), default=now)
        return affected

    def _inert_for_new_member(self, index: int, now: int) -> bool:
        """The unit holds nothing and has no deadline for a member with no state at `now`.

        Then it does so at every later instant too: a unit with no deadline is, by the
        contract of `next_change`, unchanged until an event it reads. So one probe at t
        answers for all instants from t on; a probe finding it inert at an earlier instant
        moves that bound back."""
        since = self._inert_since[index]
        if since is not None and now >= since:
            return True
        ctx = EvalContext(self._no_state, None, now, self.calendar)
        if any(rule.condition.eval(ctx) for rule in self.pack.units[index]) \
                or self._unit_deadline(ctx, index) is not None:
            return False
        self._inert_since[index] = now
        return True

    def _units_of(self, indexes: Any) -> tuple[frozenset[int], tuple[int, ...]]:
        """The units of one evaluation as a set, and those of them that can change by time
        alone, in order; made once per index tuple (the pack's few, and the deadline
        combinations, which are few too: the memo is bounded anyway)."""
        found = self._unit_views.get(indexes)
        if found is None:
            if len(self._unit_views) >= 4096:
                self._unit_views.clear()
            timed = self._timed_units
            found = self._unit_views[indexes] = (
                frozenset(indexes), tuple(i for i in indexes if i in timed))
        return found

    @staticmethod
    def _holds(rule: TagRule, ctx: EvalContext, current: HeldTag | None) -> bool:
        """A tag with a ttl holds while its condition does, and for `ttl` after it stops.

        A condition is evaluated at every instant it can change (events and its deadlines),
        so the first evaluation that finds it false is when it stopped; a condition on the
        current event stops right after that event."""
        if rule.condition.eval(ctx):
            if rule.ttl_s is not None and current is not None:
                current.until = ctx.now + rule.ttl_s if rule.instant else None
            return True
        if rule.ttl_s is None or current is None:
            return False
        if current.until is None:
            current.until = ctx.now + rule.ttl_s
        return ctx.now < current.until

    def _settle(self, state: MemberState, ctx: EvalContext, rule: TagRule, holds: bool,
                cause: dict[str, str] | None, changes: list[TagChange]) -> None:
        held = state.tags
        if holds == (rule.id in held):
            ctx.held[rule.id] = holds
            return
        current = held.get(rule.id)
        if current is not None and is_marked(current):
            ctx.held[rule.id] = True  # a person set it: a rule of the same id never takes it
            return
        ctx.held[rule.id] = holds
        evidence = self._evidence(rule, ctx)
        if holds:
            until = ctx.now + rule.ttl_s if rule.ttl_s is not None and rule.instant else None
            held[rule.id] = HeldTag(ctx.now, self.pack.version, evidence, until)
            if rule.id not in state.ever:
                state.ever.append(rule.id)
        else:
            del held[rule.id]
        changes.append(self._change(state, rule.id, rule, "added" if holds else "removed",
                                    cause, ctx.now, evidence))

    def _check_mark(self, state: MemberState, event: TagMarked) -> None:
        """Reject, before anything changes, a mark the member's state must not take."""
        rule = self.pack.tag(event.tag)
        if rule is not None:
            raise EventRejected(
                f"tag {event.tag!r} is set by the rule pack ({rule.family}); a person can mark "
                f"only tags under marked_tags or campaign tags of their own id")
        declared = self.pack.marked.get(event.tag)
        held = state.tags.get(event.tag)
        # a held tag whose expiry comes before this event is gone by the time it applies
        named_before = held is not None and (held.until is None
                                             or held.until > to_epoch(event.occurred_at))
        if declared is None and event.op == "added" and event.name_zh is None \
                and not named_before:
            raise EventRejected(
                f"tag {event.tag!r} is not declared under marked_tags, so the event needs a "
                f"name_zh for guides and WeCom to show")

    def _apply_mark(self, state: MemberState, event: TagMarked, now: int,
                    cause: dict[str, str], changes: list[TagChange]) -> None:
        held = state.tags.get(event.tag)
        until = to_epoch(event.expires_at) if event.expires_at is not None else None
        if event.op == "removed":
            guides = marked_guides(held.evidence) if held is not None else ()
            if held is not None and is_marked(held) and event.guide_id in guides \
                    and len(guides) > 1:
                # another guide still holds it: only this guide's mark comes off
                held.evidence = {**held.evidence,
                                 "guides": [g for g in guides if g != event.guide_id]}
            elif held is not None:
                del state.tags[event.tag]
                changes.append(self._marked_change(state, event.tag, held, "removed", cause,
                                                   now, event.source, {"by": event.source}))
            return
        if until is not None and until <= now:
            return  # expired before this member's state reached it: nothing to hold
        evidence: dict[str, Any] = {"by": event.source}
        if event.guide_id is not None:
            evidence["guide"] = event.guide_id
        if event.name_zh is not None:
            evidence["name_zh"] = event.name_zh
        if held is not None:
            if not is_marked(held):
                # held by a rule the pack no longer has: from now on a person holds it
                state.tags[event.tag] = HeldTag(held.since, self.pack.version, evidence,
                                                until, event.source)
            else:
                held.until = until  # marked again: the newest mark's expiry stands
                guides = marked_guides(held.evidence)
                if event.guide_id is not None and event.guide_id not in guides:
                    held.evidence = {**held.evidence, "guides": [*guides, event.guide_id]}
            return
        held = HeldTag(now, self.pack.version, evidence, until, event.source)
        state.tags[event.tag] = held
        if event.tag not in state.ever:
            state.ever.append(event.tag)
        changes.append(self._marked_change(state, event.tag, held, "added", cause, now,
                                           event.source, evidence))

    def _expire_marks(self, state: MemberState, deadline: int,
                      changes: list[TagChange]) -> bool:
        """Remove the marked tags whose expiry has come; True if any did."""
        due = expired(state, deadline)
        for tag_id, held in due:
            del state.tags[tag_id]
            at = self.calendar.render(held.until or deadline)
            changes.append(self._marked_change(
                state, tag_id, held, "removed", {"timer": f"{tag_id}@{at}"}, held.until or
                deadline, held.source, {"expired_at": at}))
        return bool(due)

    def _marked_change(self, state: MemberState, tag_id: str, held: HeldTag, op: str,
                       cause: dict[str, str], now: int, source: str,
                       evidence: dict[str, Any]) -> TagChange:
        change = self._change(state, tag_id, None, op, cause, now, evidence)
        return msgspec.structs.replace(change, name_zh=self._name_of(tag_id, held),
                                       family=MARKED_FAMILY, source=source)

    def _prune(self, state: MemberState, now: int) -> None:
        """Forget what no window can read any more: bounded state whatever the history."""
        today = self.calendar.day_of(now)
        retention = self._retention
        counters = state.counters
        for name, series in list(counters.items()):
            low = today - retention.get(name, 0) + 1
            if series and series[0] >= low:
                continue  # days ascend: the oldest bucket is still read, so all are
            prune_buckets(series, low)
            if not series:
                del counters[name]
        distinct = state.distinct
        for name, series in list(distinct.items()):
            prune_keys(series, today - retention.get(name, 0) + 1)
            if not series:
                del distinct[name]
        if not state.pending:
            return
        for tracker in self.pack.trackers:
            keys = state.pending.get(tracker.name)
            if keys:
                horizon = now - tracker.keep_s
                # pending is [key, time, ...]: every odd item is an epoch second
                keys[:] = [v for i in range(0, len(keys), 2) if cast(int, keys[i + 1]) > horizon
                           for v in (keys[i], keys[i + 1])]
                if not keys:
                    del state.pending[tracker.name]

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
            guides=_guides_of(state),
            name_zh=rule.name_zh if rule else "",
            family=rule.family if rule else "",
        )


def _never_evaluated(state: MemberState) -> bool:
    """A new member: no rule has run on the state yet, and it holds no tag."""
    return not state.rules_version and not state.tags and not state.unit_deadlines


def _has_pairs(state: MemberState) -> bool:
    for guide in state.guides:  # a loop, not any(): most members have no guide at all
        if guide.external_userid:
            return True
    return False


def _seen(state: MemberState, digest: int) -> bool:
    """The digest is among the member's remembered event ids (`seen` is [hash, time, ...])."""
    return digest in state.seen[0::2]


def _guides_of(state: MemberState) -> tuple[Guide, ...]:
    links = state.guides
    if not links:
        return ()
    key = tuple(links)
    found = _GUIDES.get(key)
    if found is None:
        if len(_GUIDES) >= 65_536:  # members share few guide sets; bound the memo anyway
            _GUIDES.clear()
        found = _GUIDES[key] = tuple(
            Guide(userid=g.userid, external_userid=g.external_userid) for g in links)
    return found


# Guide links -> their Guide records; both are frozen, so one tuple serves every change.
_GUIDES: dict[tuple[GuideLink, ...], tuple[Guide, ...]] = {}


def _guided(state: MemberState, changes: list[TierChange]) -> list[TierChange]:
    """Tier and points changes naming the member's guides (the loyalty program knows none)."""
    if not changes or not state.guides:
        return changes
    guides = _guides_of(state)
    return [msgspec.structs.replace(change, guides=guides) for change in changes]
