"""The expression language: precedence, null handling, and time dependence."""

from __future__ import annotations

import pytest

from taggers.expr import BOOL, NUM, STR, TIME, ExprError, Field, Scope, compile_expression


class Ctx:
    def __init__(self, **values):
        self.__dict__.update(values)


def scope() -> Scope:
    def grows(ctx):
        return ctx.t

    return Scope(fields={
        "a": Field(NUM, lambda c: c.a),
        "b": Field(NUM, lambda c: c.b, nullable=True),
        "s": Field(STR, lambda c: c.s),
        "flag": Field(BOOL, lambda c: c.flag),
        "t": Field(NUM, grows, next_change=lambda c: c.t_next, monotone=+1,
                   reaches=lambda c, v: 1000 + v),
        "when": Field(TIME, lambda c: 5, nullable=True),
    })


CASES = [
    ("1 + 2 * 3 == 7", {}, True),
    ("(1 + 2) * 3 == 9", {}, True),
    ("not flag or a > 1", {"flag": True, "a": 2}, True),
    ("not flag and a > 1", {"flag": True, "a": 2}, False),
    ("a >= 2 and a < 3", {"a": 2}, True),
    ("-a < 0", {"a": 2}, True),
    ("s in ['x', 'y']", {"s": "y"}, True),
    ("s in ['x', 'y']", {"s": "z"}, False),
    ("b > 1", {"b": None}, False),  # null never satisfies a comparison
    ("b == null", {"b": None}, True),
    ("b + 1 > 0", {"b": None}, False),
    ("a / 0 > 0", {"a": 1}, False),  # division by zero is null, not a crash
    ("0.5 < a", {"a": 1}, True),
]


@pytest.mark.parametrize("source,values,expected", CASES, ids=[c[0] + str(c[1]) for c in CASES])
def test_evaluation(source: str, values: dict, expected: bool) -> None:
    base = {"a": 0, "b": 0, "s": "", "flag": False, "t": 0, "t_next": None}
    compiled = compile_expression(source, scope())
    assert compiled.eval(Ctx(**{**base, **values})) is expected


@pytest.mark.parametrize("source,message", [
    ("a ==", "end of condition"),
    ("a == 'x'", "cannot compare"),
    ("flag > true", "does not apply"),
    ("a and flag", "needs a bool"),
    ("s in [a]", "constants"),
    ("a @ 1", "unexpected character"),
    ("zz > 1", "unknown name"),
    ("30d > 1", "inside a window"),
])
def test_errors(source: str, message: str) -> None:
    with pytest.raises(ExprError, match=message):
        compile_expression(source, scope())


def test_growing_value_jumps_to_threshold_and_stops_once_true() -> None:
    compiled = compile_expression("t >= 90", scope())
    assert compiled.next_change(Ctx(t=10, t_next=11)) == 1090  # exact instant, not t_next
    assert compiled.next_change(Ctx(t=95, t_next=96)) is None  # stays true with time


def test_unrelated_to_time_has_no_deadline() -> None:
    assert compile_expression("a > 1 and flag", scope()).next_change is None
