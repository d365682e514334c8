"""The safe expression language of rule conditions: tokenise, parse, type-check, compile.

A condition such as ``spend_fen[365d] - refund_fen[365d] >= 500_000`` is parsed once into an
AST, checked against the names a `Scope` declares (unknown names fail with "did you mean"),
and compiled into nested closures. Nothing is ever passed to eval/exec. Each compiled node
also knows when its value can next change *by the passage of time alone*, which is how
absence rules get a timer deadline without any event.
"""

from __future__ import annotations

import difflib
import operator
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable


Getter = Callable[[Any], Any]
NextChange = Callable[[Any], "int | None"]

# Value kinds the type checker knows. A leaf may also be nullable (value None): comparisons
# with None are false and arithmetic with None yields None, so "no order yet" never matches.
NUM, BOOL, STR, TIME = "number", "bool", "text", "time"

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<num>\d[\d_]*(?:\.\d+)?)(?P<unit>d\b)?
    | (?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
    | (?P<op>==|!=|<=|>=|<|>|\+|-|\*|/|%|\(|\)|\[|\]|,)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    )""",
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false", "null"}


@dataclass(frozen=True)
class Token:
    kind: str  # num, days, str, op, name, kw, end
    text: str
    pos: int


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    source = source.rstrip()
    while pos < len(source):
        match = _TOKEN.match(source, pos)
        if not match or match.end() == pos:
            while source[pos].isspace():
                pos += 1
            raise ExprError(f"unexpected character {source[pos]!r} at column {pos + 1}")
        start = match.start(match.lastgroup or 0)
        if match.group("num") is not None:
            kind = "days" if match.group("unit") else "num"
            tokens.append(Token(kind, match.group("num").replace("_", ""), start))
        elif match.group("str") is not None:
            tokens.append(Token("str", match.group("str")[1:-1], start))
        elif match.group("op") is not None:
            tokens.append(Token("op", match.group("op"), start))
        else:
            text = match.group("name")
            tokens.append(Token("kw" if text in _KEYWORDS else "name", text, start))
        pos = match.end()
    tokens.append(Token("end", "", len(source)))
    return tokens


class ExprError(ValueError):
    """A condition that does not parse or type-check; the rule loader adds file and line."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


# --- AST -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lit:
    value: Any


@dataclass(frozen=True)
class Days:
    """A day count such as `30d`: only a window or a function argument may take one."""

    days: int


@dataclass(frozen=True)
class Name:
    path: str


@dataclass(frozen=True)
class Window:
    counter: str
    days: int


@dataclass(frozen=True)
class Call:
    func: str
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Unary:
    op: str
    operand: Any


@dataclass(frozen=True)
class Binary:
    op: str
    left: Any
    right: Any


@dataclass(frozen=True)
class InList:
    needle: Any
    options: tuple[Any, ...]


class Parser:
    """Recursive descent over the grammar in docs/rules.md; precedence low → high:
    or, and, not, comparison / in, + -, * / %, unary minus, primary."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.tokens = tokenize(source)
        self.i = 0

    def parse(self) -> Any:
        node = self._or()
        if self._peek().kind != "end":
            self._fail(f"unexpected {self._peek().text!r}")
        return node

    def _peek(self) -> Token:
        return self.tokens[self.i]

    def _take(self) -> Token:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def _accept(self, kind: str, text: str) -> bool:
        token = self._peek()
        if token.kind == kind and token.text == text:
            self.i += 1
            return True
        return False

    def _expect(self, kind: str, text: str) -> None:
        if not self._accept(kind, text):
            self._fail(f"expected {text!r}, found {self._peek().text or 'end of condition'!r}")

    def _fail(self, message: str) -> None:
        raise ExprError(f"{message} at column {self._peek().pos + 1} of {self.source!r}")

    def _or(self) -> Any:
        node = self._and()
        while self._accept("kw", "or"):
            node = Binary("or", node, self._and())
        return node

    def _and(self) -> Any:
        node = self._not()
        while self._accept("kw", "and"):
            node = Binary("and", node, self._not())
        return node

    def _not(self) -> Any:
        if self._accept("kw", "not"):
            return Unary("not", self._not())
        return self._comparison()

    def _comparison(self) -> Any:
        node = self._sum()
        token = self._peek()
        if token.kind == "op" and token.text in ("==", "!=", "<", "<=", ">", ">="):
            self._take()
            return Binary(token.text, node, self._sum())
        if self._accept("kw", "in"):
            self._expect("op", "[")
            options = [self._sum()]
            while self._accept("op", ","):
                options.append(self._sum())
            self._expect("op", "]")
            return InList(node, tuple(options))
        return node

    def _sum(self) -> Any:
        node = self._product()
        while self._peek().kind == "op" and self._peek().text in ("+", "-"):
            node = Binary(self._take().text, node, self._product())
        return node

    def _product(self) -> Any:
        node = self._unary()
        while self._peek().kind == "op" and self._peek().text in ("*", "/", "%"):
            node = Binary(self._take().text, node, self._unary())
        return node

    def _unary(self) -> Any:
        if self._accept("op", "-"):
            return Unary("-", self._unary())
        return self._primary()

    def _primary(self) -> Any:
        token = self._take()
        if token.kind == "num":
            return Lit(float(token.text) if "." in token.text else int(token.text))
        if token.kind == "days":
            return Days(int(token.text))
        if token.kind == "str":
            return Lit(token.text)
        if token.kind == "kw" and token.text in ("true", "false"):
            return Lit(token.text == "true")
        if token.kind == "kw" and token.text == "null":
            return Lit(None)
        if token.kind == "op" and token.text == "(":
            node = self._or()
            self._expect("op", ")")
            return node
        if token.kind == "name":
            if self._accept("op", "("):
                args: list[Any] = []
                if not self._accept("op", ")"):
                    args.append(self._or())
                    while self._accept("op", ","):
                        args.append(self._or())
                    self._expect("op", ")")
                return Call(token.text, tuple(args))
            if self._accept("op", "["):
                days = self._take()
                if days.kind != "days":
                    self.i -= 1
                    self._fail("a window is a whole number of days, e.g. [30d] or [365d]")
                self._expect("op", "]")
                count = int(days.text)
                if count < 1 or count > 3660:
                    raise ExprError(f"window [{count}d] must be between 1 and 3660 days")
                return Window(token.text, count)
            return Name(token.text)
        self.i -= 1
        self._fail(f"unexpected {token.text or 'end of condition'!r}")


# --- scope: the names a condition may use ----------------------------------------------------


@dataclass(frozen=True)
class Field:
    """A name a condition may read: its kind, how to read it and how it moves with time."""

    kind: str
    get: Getter
    nullable: bool = False
    next_change: NextChange | None = None
    # +1: never decreases as time passes with no event; -1: never increases; 0: unknown.
    monotone: int = 0
    # For a leaf that grows with time: the instant it reaches a given value.
    reaches: Callable[[Any, int], "int | None"] | None = None
    # What evidence shows for it; default: the name and its value. A named definition shows
    # the values it is made of instead.
    leaves: tuple[tuple[str, Getter, str], ...] | None = None
    # Event types that can change this value ("*": any event). Rules untouched by an event
    # type need no evaluation for it: the engine skips them.
    inputs: frozenset[str] = frozenset()
    # The rule tags a named definition reads through has_tag/had_tag: a condition using the
    # definition reads them too (evaluation order, and re-evaluation when they change).
    reads_tags: tuple[str, ...] = ()


ANY_EVENT = "*"
# Not an event type: the member's loyalty level moved (the tier tags read only that).
LEVEL_MOVED = "loyalty.level_moved"


@dataclass
class Scope:
    fields: dict[str, Field]
    windows: Callable[[str, int], Field] | None = None  # counter[Nd] resolver
    window_names: Iterable[str] = ()
    functions: dict[str, Callable[..., "Compiled"]] = field(default_factory=dict)
    # Where the rule tags a condition reads are collected (has_tag/had_tag append to it too).
    tag_reads: list[str] = field(default_factory=list)

    def suggest(self, name: str) -> str | None:
        candidates = list(self.fields) + list(self.window_names) + list(self.functions)
        close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
        return f"did you mean {close[0]!r}?" if close else None


@dataclass(frozen=True)
class Compiled:
    """A compiled node: how to evaluate it and when it may next change by time alone."""

    kind: str
    eval: Getter
    nullable: bool = False
    next_change: NextChange | None = None
    monotone: int = 0
    reaches: Callable[[Any, int], "int | None"] | None = None
    const: Any = None
    is_const: bool = False
    leaves: tuple[tuple[str, Getter, str], ...] = ()
    inputs: frozenset[str] = frozenset()


# Deeper brackets are no real rule, and evaluating them would recurse as deep in the worker.
MAX_NESTING = 64


def compile_expression(source: str, scope: Scope) -> Compiled:
    depth = _bracket_depth(source)
    if depth > MAX_NESTING:
        raise ExprError(f"brackets nested {depth} deep; the limit is {MAX_NESTING}")
    try:
        return _Compiler(scope).compile(Parser(source).parse())
    except RecursionError:  # e.g. a long chain of unary operators
        raise ExprError("expression nested too deeply") from None


def _bracket_depth(source: str) -> int:
    """The deepest nesting of ( and [ outside string literals."""
    depth = deepest = 0
    quote = None
    for char in source:
        if quote:
            quote = None if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "([":
            depth += 1
            deepest = max(deepest, depth)
        elif char in ")]":
            depth -= 1
    return deepest


def _earliest(*fns: NextChange | None) -> NextChange | None:
    live = [fn for fn in fns if fn is not None]
    if not live:
        return None
    if len(live) == 1:
        return live[0]

    def earliest(ctx: Any) -> int | None:
        best = None
        for fn in live:
            at = fn(ctx)
            if at is not None and (best is None or at < best):
                best = at
        return best

    return earliest


def _leaves(*nodes: Compiled) -> tuple[tuple[str, Getter, str], ...]:
    """The named values under these nodes, once each: what a tag change shows as evidence."""
    seen: dict[str, tuple[str, Getter, str]] = {}
    for node in nodes:
        for leaf in node.leaves:
            seen.setdefault(leaf[0], leaf)
    return tuple(seen.values())


_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "!=": operator.ne, "<": operator.lt, "<=": operator.le,
    ">": operator.gt, ">=": operator.ge,
}
_MIRRORED = {"==": "==", "!=": "!=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_ARITH: dict[str, Callable[[Any, Any], Any]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b if b else None,
    "%": lambda a, b: a % b if b else None,
}


class _Compiler:
    def __init__(self, scope: Scope) -> None:
        self.scope = scope

    def compile(self, node: Any) -> Compiled:
        method = getattr(self, f"_{type(node).__name__.lower()}")
        return method(node)

    def _days(self, node: Days) -> Compiled:
        raise ExprError(f"a day count like '{node.days}d' only goes inside a window, e.g. "
                        f"paid_orders[{node.days}d], or as a function argument")

    def _lit(self, node: Lit) -> Compiled:
        value = node.value
        if value is None:
            kind = NUM
        elif isinstance(value, bool):
            kind = BOOL
        elif isinstance(value, (int, float)):
            kind = NUM
        else:
            kind = STR
        return Compiled(kind, lambda ctx: value, nullable=value is None, const=value, is_const=True)

    def _name(self, node: Name) -> Compiled:
        spec = self.scope.fields.get(node.path)
        if spec is None:
            if node.path in set(self.scope.window_names):
                raise ExprError(f"counter {node.path!r} needs a window",
                                hint=f"write {node.path}[30d] or {node.path}[365d]")
            raise ExprError(f"unknown name {node.path!r}", hint=self.scope.suggest(node.path))
        leaves = spec.leaves if spec.leaves is not None else ((node.path, spec.get, spec.kind),)
        self.scope.tag_reads.extend(spec.reads_tags)
        return Compiled(spec.kind, spec.get, spec.nullable, spec.next_change, spec.monotone,
                        spec.reaches, leaves=leaves, inputs=spec.inputs)

    def _window(self, node: Window) -> Compiled:
        if self.scope.windows is None or node.counter not in set(self.scope.window_names):
            raise ExprError(f"unknown counter {node.counter!r}",
                            hint=self.scope.suggest(node.counter))
        spec = self.scope.windows(node.counter, node.days)
        label = f"{node.counter}[{node.days}d]"
        return Compiled(spec.kind, spec.get, False, spec.next_change, spec.monotone,
                        leaves=((label, spec.get, spec.kind),), inputs=spec.inputs)

    def _call(self, node: Call) -> Compiled:
        factory = self.scope.functions.get(node.func)
        if factory is None:
            raise ExprError(f"unknown function {node.func!r}", hint=self.scope.suggest(node.func))
        return factory(self, *node.args)

    def _unary(self, node: Unary) -> Compiled:
        inner = self.compile(node.operand)
        get = inner.eval
        if node.op == "not":
            self._want(inner, BOOL, "not")
            return Compiled(BOOL, lambda ctx: not get(ctx), False, inner.next_change,
                            -inner.monotone, leaves=inner.leaves, inputs=inner.inputs)
        self._want(inner, NUM, "unary -")

        def negate(ctx: Any) -> Any:
            value = get(ctx)
            return None if value is None else -value

        return Compiled(NUM, negate, inner.nullable, inner.next_change, -inner.monotone,
                        leaves=inner.leaves, inputs=inner.inputs)

    def _inlist(self, node: InList) -> Compiled:
        needle = self.compile(node.needle)
        options = [self.compile(option) for option in node.options]
        for option in options:
            if not option.is_const:
                raise ExprError("the list after 'in' must hold constants")
            if option.kind != needle.kind:
                raise ExprError(f"'in' compares {needle.kind} with {option.kind}")
        values = frozenset(option.const for option in options)
        get = needle.eval
        return Compiled(BOOL, lambda ctx: get(ctx) in values, False, needle.next_change,
                        leaves=needle.leaves, inputs=needle.inputs)

    def _binary(self, node: Binary) -> Compiled:
        left, right = self.compile(node.left), self.compile(node.right)
        op = node.op
        leaves = _leaves(left, right)
        inputs = left.inputs | right.inputs
        lget, rget = left.eval, right.eval
        if op in ("and", "or"):
            self._want(left, BOOL, op)
            self._want(right, BOOL, op)
            if op == "and":
                fn = lambda ctx: bool(lget(ctx)) and bool(rget(ctx))  # noqa: E731
            else:
                fn = lambda ctx: bool(lget(ctx)) or bool(rget(ctx))  # noqa: E731
            return Compiled(BOOL, fn, False, self._logic_next_change(op, left, right),
                            leaves=leaves, inputs=inputs)
        if op in _COMPARE:
            return self._compare(op, left, right, leaves, inputs)
        self._want(left, NUM, op)
        self._want(right, NUM, op)
        arith = _ARITH[op]

        def compute(ctx: Any) -> Any:
            a, b = lget(ctx), rget(ctx)
            if a is None or b is None:
                return None
            return arith(a, b)

        monotone = 0
        if op == "+" and left.monotone == right.monotone:
            monotone = left.monotone
        elif op == "-" and right.is_const:
            monotone = left.monotone
        return Compiled(NUM, compute, left.nullable or right.nullable or op in "/%",
                        _earliest(left.next_change, right.next_change), monotone,
                        leaves=leaves, inputs=inputs)

    def _compare(self, op: str, left: Compiled, right: Compiled,
                 leaves: tuple[tuple[str, Getter, str], ...], inputs: frozenset[str]) -> Compiled:
        if left.is_const and not right.is_const:
            # `31 <= days_since(x)` is `days_since(x) >= 31`: one form for the timer analysis
            left, right, op = right, left, _MIRRORED[op]
        if left.kind != right.kind and not (left.is_const and left.const is None) \
                and not (right.is_const and right.const is None):
            raise ExprError(f"cannot compare {left.kind} with {right.kind} using {op!r}")
        if op not in ("==", "!=") and BOOL in (left.kind, right.kind):
            raise ExprError(f"{op!r} does not apply to true/false values")
        compare = _COMPARE[op]
        lget, rget = left.eval, right.eval

        if right.is_const and right.const is not None:
            # The common `x >= 3`, the same results with one call fewer: a constant side
            # needs no call, and None (x missing) equals no constant and orders with none.
            const = right.const
            if op in ("==", "!="):
                def fn(ctx: Any) -> bool:
                    return compare(lget(ctx), const)
            else:
                def fn(ctx: Any) -> bool:
                    a = lget(ctx)
                    return a is not None and compare(a, const)
        else:
            def fn(ctx: Any) -> bool:
                a, b = lget(ctx), rget(ctx)
                if a is None or b is None:
                    return (a is None and b is None) if op == "==" else (
                        (a is None) != (b is None) if op == "!=" else False)
                return compare(a, b)

        return Compiled(BOOL, fn, False,
                        self._compare_next_change(op, left, right, fn), leaves=leaves,
                        inputs=inputs)

    @staticmethod
    def _logic_next_change(op: str, left: Compiled, right: Compiled) -> NextChange | None:
        """`a and b` with a timeless `a` that is false stays false whatever b does with time
        (and `or` with a timeless true side stays true): no timer for it. This keeps members
        without a birthday, say, from waking up every month."""
        general = _earliest(left.next_change, right.next_change)
        if general is None:
            return None
        settles = False if op == "and" else True
        timeless = [side.eval for side in (left, right) if side.next_change is None]
        if not timeless:
            return general

        def next_change(ctx: Any) -> int | None:
            for get in timeless:
                if bool(get(ctx)) == settles:
                    return None
            return general(ctx)

        return next_change

    @staticmethod
    def _compare_next_change(op: str, left: Compiled, right: Compiled,
                             fn: Getter) -> NextChange | None:
        """Skip timers that cannot flip the result: `x >= K` with x never decreasing in time
        stays true once true, so only while false does it need x's next change."""
        general = _earliest(left.next_change, right.next_change)
        if general is None or not right.is_const or left.monotone == 0:
            return general
        reaches, const, get = left.reaches, right.const, left.eval
        if op in ("==", "!=") and reaches is not None and left.monotone > 0 \
                and isinstance(const, int):
            reach = reaches  # narrowed to not None, which a closure does not see

            # a growing value equals K from the instant it reaches K until it reaches K + 1
            def equality_change(ctx: Any) -> int | None:
                value = get(ctx)
                if value is None or value > const:
                    return None
                return reach(ctx, const if value < const else const + 1)

            return equality_change
        if op in (">", ">="):
            flips_when = False if left.monotone > 0 else True
        elif op in ("<", "<="):
            flips_when = True if left.monotone > 0 else False
        else:
            return general
        inner = left.next_change or general
        reaches = left.reaches
        if reaches is not None and left.monotone > 0 and isinstance(right.const, int):
            # x never decreases: jump straight to the instant it reaches the value that flips
            # the result, instead of waking up at every intermediate step.
            target = {">=": right.const, ">": right.const + 1,
                      "<": right.const, "<=": right.const + 1}[op]

            def when_target_reached(ctx: Any) -> int | None:
                return reaches(ctx, target) if fn(ctx) == flips_when else None

            return when_target_reached

        def when_inner_changes(ctx: Any) -> int | None:
            return inner(ctx) if fn(ctx) == flips_when else None

        return when_inner_changes

    @staticmethod
    def _want(node: Compiled, kind: str, what: str) -> None:
        if node.kind != kind:
            raise ExprError(f"{what} needs a {kind} value, got a {node.kind}")
