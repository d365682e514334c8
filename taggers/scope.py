"""The names and functions a tag condition may use, declared from the member state model.

Anything not declared here is an unknown name at load time, with a "did you mean".
"""

from __future__ import annotations

from datetime import date
from typing import Any, Callable

from taggers.clock import DAY
from taggers.context import EvalContext
from taggers.counters import pending_field
from taggers.expr import ANY_EVENT, BOOL, NUM, STR, TIME, Compiled, Days, ExprError, Field, Name
from taggers.marked import TAG_MARKED
from taggers.yamlsrc import suggest


def _event_attr(attr: str) -> Callable[[EvalContext], Any]:
    def read(ctx: EvalContext) -> Any:
        event = ctx.event
        return getattr(event, attr, None) if event is not None else None

    return read


_JOIN = frozenset({"interaction.member_joined"})
_PROFILE = frozenset({"interaction.profile_updated"})
_PAID = frozenset({"order.paid"})
_REFUNDED = frozenset({"order.refunded"})
_GUIDES = frozenset({"interaction.wecom_friend_added", "interaction.wecom_friend_removed",
                     "order.paid"})
_CONSENT = frozenset({"interaction.consent_changed"})
_ANY = frozenset({ANY_EVENT})


def _orders_attr(attr: str) -> Callable[[EvalContext], Any]:
    def read(ctx: EvalContext) -> Any:
        return getattr(ctx.state.orders, attr)

    return read


def state_fields() -> dict[str, Field]:
    orders = _orders_attr
    fields = {
        "joined": Field(BOOL, lambda ctx: ctx.state.joined_at is not None, inputs=_JOIN),
        "joined_at": Field(TIME, lambda ctx: ctx.state.joined_at, nullable=True, inputs=_JOIN),
        "birthday": Field(STR, lambda ctx: ctx.state.birthday, nullable=True, inputs=_PROFILE),
        "birthday_month": Field(
            NUM, lambda ctx: int(ctx.state.birthday[:2]) if ctx.state.birthday else None,
            nullable=True, inputs=_PROFILE),
        "orders.count": Field(NUM, orders("count"), inputs=_PAID),
        "orders.distinct_days": Field(NUM, orders("distinct_days"), inputs=_PAID),
        "orders.spend_fen": Field(NUM, orders("spend_fen"), inputs=_PAID),
        "orders.refund_fen": Field(NUM, orders("refund_fen"), inputs=_REFUNDED),
        "orders.net_spend_fen": Field(
            NUM, lambda ctx: ctx.state.orders.spend_fen - ctx.state.orders.refund_fen,
            inputs=_PAID | _REFUNDED),
        "orders.first_at": Field(TIME, orders("first_at"), nullable=True, inputs=_PAID),
        "orders.last_at": Field(TIME, orders("last_at"), nullable=True, inputs=_PAID),
        "guides.count": Field(NUM, lambda ctx: len(ctx.state.guides), inputs=_GUIDES),
        "guides.wecom_count": Field(
            NUM, lambda ctx: sum(1 for g in ctx.state.guides if g.external_userid),
            inputs=_GUIDES),
        "consent.marketing": Field(BOOL, lambda ctx: ctx.state.marketing, inputs=_CONSENT),
        "event.type": Field(
            STR, lambda ctx: ctx.event.event_type if ctx.event is not None else None,
            nullable=True, inputs=_ANY),
        "now": Field(TIME, lambda ctx: ctx.now),
    }
    for attr, kind in (("channel", STR), ("amount_fen", NUM), ("category", STR), ("sku", STR),
                       ("store_id", STR), ("campaign_id", STR), ("province", STR),
                       ("city", STR)):
        fields[f"event.{attr}"] = Field(kind, _event_attr(attr), nullable=True, inputs=_ANY)
    return fields


# Fields that read the current event: true only at that event, so a tag built on them needs
# a ttl to mean anything after it.
EVENT_FIELDS = frozenset(name for name in state_fields() if name.startswith("event."))


# --- functions ---------------------------------------------------------------------------------


def _elapsed(unit_s: int, name: str) -> Callable[..., Compiled]:
    def factory(compiler: Any, *args: Any) -> Compiled:
        if len(args) != 1:
            raise ExprError(f"{name} takes one time value, e.g. {name}(orders.last_at)")
        anchor = compiler.compile(args[0])
        if anchor.kind != TIME:
            raise ExprError(f"{name} needs a time value, got a {anchor.kind}")
        get = anchor.eval

        def value(ctx: EvalContext) -> int | None:
            at = get(ctx)
            return None if at is None else (ctx.now - at) // unit_s

        def next_change(ctx: EvalContext) -> int | None:
            at = get(ctx)
            return None if at is None else at + ((ctx.now - at) // unit_s + 1) * unit_s

        def reaches(ctx: EvalContext, units: int) -> int | None:
            at = get(ctx)
            return None if at is None else at + units * unit_s

        label = f"{name}({args[0].path if isinstance(args[0], Name) else '…'})"
        return Compiled(NUM, value, True, next_change, +1, reaches,
                        leaves=((label, value, NUM),) + anchor.leaves, inputs=anchor.inputs)

    return factory


def _this_month(compiler: Any, *args: Any) -> Compiled:
    if args:
        raise ExprError("this_month() takes no arguments")

    def value(ctx: EvalContext) -> int:
        return date.fromordinal(ctx.today + 719163).month

    def next_change(ctx: EvalContext) -> int:
        today = date.fromordinal(ctx.today + 719163)
        first = date(today.year + (today.month == 12), today.month % 12 + 1, 1)
        return ctx.calendar.day_start(first.toordinal() - 719163)

    return Compiled(NUM, value, False, next_change, leaves=(("this_month()", value, NUM),))


def tag_functions(tag_ids: list[str], dependencies: list[str],
                  marked_ids: frozenset[str] = frozenset()) -> dict[str, Callable[..., Compiled]]:
    """has_tag(x): x is held now (decided earlier in this same evaluation);
    had_tag(x): x has been held at some time (now included).

    A rule tag read this way orders evaluation (`dependencies`); a marked tag (set by a
    person) changes only on `interaction.tag_marked` events and at its expiry, so reading one
    makes the rule an input of that event type instead."""
    known = [*tag_ids, *sorted(marked_ids)]

    def tag_arg(name: str, args: tuple[Any, ...]) -> tuple[str, frozenset[str]]:
        if len(args) != 1 or not isinstance(args[0], Name):
            raise ExprError(f"{name} takes one tag id, e.g. {name}(high_value)")
        tag_id = args[0].path
        if tag_id in marked_ids:
            return tag_id, frozenset({TAG_MARKED})
        if tag_id not in tag_ids:
            raise ExprError(f"unknown tag {tag_id!r} in {name}", hint=suggest(tag_id, known))
        dependencies.append(tag_id)
        return tag_id, frozenset()

    def has_tag(compiler: Any, *args: Any) -> Compiled:
        tag_id, inputs = tag_arg("has_tag", args)

        def held(ctx: EvalContext) -> bool:
            # decided earlier in this evaluation, or (not re-evaluated) as it stands
            decided = ctx.held.get(tag_id)
            return decided if decided is not None else tag_id in ctx.state.tags

        return Compiled(BOOL, held, leaves=((f"has_tag({tag_id})", held, BOOL),),
                        inputs=inputs)

    def had_tag(compiler: Any, *args: Any) -> Compiled:
        tag_id, inputs = tag_arg("had_tag", args)

        def ever(ctx: EvalContext) -> bool:
            return bool(ctx.held.get(tag_id)) or tag_id in ctx.state.ever

        return Compiled(BOOL, ever, leaves=((f"had_tag({tag_id})", ever, BOOL),),
                        inputs=inputs)

    return {"has_tag": has_tag, "had_tag": had_tag}


def pending_function(trackers: dict[str, tuple[int, frozenset[str]]]) -> Callable[..., Compiled]:
    """pending(tracker, Nd): how many tracked keys started N days ago or more, still open."""

    def pending(compiler: Any, *args: Any) -> Compiled:
        if len(args) != 2 or not isinstance(args[0], Name) or not isinstance(args[1], Days):
            raise ExprError("pending takes a tracker and an age, e.g. pending(trials, 30d)")
        name = args[0].path
        if name not in trackers:
            raise ExprError(f"unknown tracker {name!r}", hint=suggest(name, list(trackers)))
        keep_s, event_types = trackers[name]
        count, keys = pending_field(name, args[1].days * DAY, keep_s)
        label = f"pending({name}, {args[1].days}d)"
        return Compiled(NUM, count.get, False, count.next_change,
                        leaves=((label, count.get, NUM), (f"{name}.keys", keys.get, STR)),
                        inputs=event_types)

    return pending


def base_functions() -> dict[str, Callable[..., Compiled]]:
    return {"days_since": _elapsed(DAY, "days_since"),
            "seconds_since": _elapsed(1, "seconds_since"),
            "this_month": _this_month}
