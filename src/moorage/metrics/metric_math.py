"""CloudWatch metric math, the part of it GetMetricData answers here.

An expression is parsed into a small tree by a recursive-descent parser and evaluated over time
series; nothing is ever handed to Python's ``eval``. What is understood:

- numbers, query ids (``m1``, ``errors``), ``+ - * /``, ``^`` (power), unary minus, parentheses,
  and arrays ``[m1, m2]``;
- ``METRICS()`` (every metric query of the request) and ``METRICS("text")`` (those whose id
  contains the text);
- ``SUM``, ``AVG``, ``MIN``, ``MAX``, ``STDDEV``: over an array, one series of the aggregate per
  timestamp (of the values present there); over one series, a number (as CloudWatch);
- ``ABS``, ``CEIL``, ``FLOOR`` per value; ``FILL(x, number)`` fills the periods x has no value in;
  ``DIFF(x)`` and ``RATE(x)`` (difference to the previous value, and that per second);
  ``PERIOD(x)`` the period of x in seconds.

Arithmetic between two series keeps the timestamps both have (CloudWatch's rule); with a number,
every value. A value that is not finite (a division by zero) is left out of the result. Not here:
``SEARCH``, Metrics Insights queries, ``IF``, anomaly-detection bands, ``FILL`` with ``REPEAT`` or
``LINEAR``, time functions; they are refused with a message naming the function.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MetricMathError", "Scope", "Series", "evaluate", "parse", "references"]

# Past this many periods FILL would make a series larger than any GetMetricData page.
MAX_FILL_POINTS = 100_800


class MetricMathError(ValueError):
    pass


@dataclass
class Series:
    """One time series: values by period-start timestamp (epoch seconds)."""

    label: str
    period: int
    points: dict[float, float] = field(default_factory=dict)
    id: str = ""


Value = float | Series | list[Series]
Node = tuple[Any, ...]

_TOKEN = re.compile(r"""\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"""
                    r"""|(?P<string>"[^"]*"|'[^']*')|(?P<op>[-+*/^(),\[\]]))""")


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise MetricMathError(f"unexpected character {text[position:].lstrip()[:1]!r} at position "
                                  f"{position + 1}")
        kind = match.lastgroup
        assert kind is not None
        out.append((kind, match.group(kind)))
        position = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.at = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, op: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise MetricMathError("the expression ends too early" + (f": expected {op!r}" if op else ""))
        if op is not None and token != ("op", op):
            raise MetricMathError(f"expected {op!r}, found {token[1]!r}")
        self.at += 1
        return token

    def accept(self, op: str) -> bool:
        if self.peek() == ("op", op):
            self.at += 1
            return True
        return False

    def expression(self) -> Node:
        node = self.term()
        while (token := self.peek()) in (("op", "+"), ("op", "-")):
            self.at += 1
            node = ("bin", token[1], node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while (token := self.peek()) in (("op", "*"), ("op", "/")):
            self.at += 1
            node = ("bin", token[1], node, self.unary())
        return node

    def unary(self) -> Node:
        if self.accept("-"):
            return ("neg", self.unary())
        if self.accept("+"):
            return self.unary()
        node = self.atom()
        if self.accept("^"):
            return ("bin", "^", node, self.unary())  # right-associative, above unary minus on its left
        return node

    def atom(self) -> Node:
        kind, text = self.take()
        if kind == "number":
            return ("num", float(text))
        if kind == "string":
            return ("str", text[1:-1])
        if kind == "name":
            if self.accept("("):
                args: list[Node] = []
                if not self.accept(")"):
                    args.append(self.expression())
                    while self.accept(","):
                        args.append(self.expression())
                    self.take(")")
                return ("call", text.upper(), args)
            return ("ref", text)
        if text == "(":
            node = self.expression()
            self.take(")")
            return node
        if text == "[":
            items = [self.expression()]
            while self.accept(","):
                items.append(self.expression())
            self.take("]")
            return ("array", items)
        raise MetricMathError(f"unexpected {text!r}")


def parse(text: str) -> Node:
    parser = _Parser(text)
    if not parser.tokens:
        raise MetricMathError("the expression is empty")
    node = parser.expression()
    if parser.peek() is not None:
        raise MetricMathError(f"unexpected {parser.peek()[1]!r} after the expression")  # type: ignore[index]
    return node


def references(node: Node) -> tuple[set[str], bool]:
    """The ids an expression names, and whether it calls METRICS() (which means every metric query)."""
    ids: set[str] = set()
    every = False
    stack = [node]
    while stack:
        item = stack.pop()
        if item[0] == "ref":
            ids.add(item[1])
        elif item[0] == "call":
            every = every or item[1] == "METRICS"
            stack.extend(item[2])
        elif item[0] == "bin":
            stack.extend(item[2:])
        elif item[0] == "neg":
            stack.append(item[1])
        elif item[0] == "array":
            stack.extend(item[1])
    return ids, every


@dataclass
class Scope:
    """What an expression can see: the values of other queries by id, the metric queries in request
    order (for METRICS()), and the time range (for FILL)."""

    values: dict[str, Value]
    metrics: list[Series]
    start: float
    end: float


def evaluate(node: Node, scope: Scope) -> Value:
    kind = node[0]
    if kind == "num":
        return float(node[1])
    if kind == "ref":
        if node[1] not in scope.values:
            raise MetricMathError(f"unknown id {node[1]!r}")
        return scope.values[node[1]]
    if kind == "str":
        raise MetricMathError(f"a string ({node[1]!r}) is only an argument of METRICS()")
    if kind == "neg":
        return _apply(evaluate(node[1], scope), lambda v: -v)
    if kind == "bin":
        return _binary(node[1], evaluate(node[2], scope), evaluate(node[3], scope))
    if kind == "array":
        items: list[Series] = []
        for item in node[1]:
            value = evaluate(item, scope)
            if isinstance(value, float):
                raise MetricMathError("an array holds time series, not numbers")
            items.extend(value if isinstance(value, list) else [value])
        return items
    return _call(node[1], node[2], scope)


# -- operators -----------------------------------------------------------------------------------


def _div(a: float, b: float) -> float:
    return a / b if b else math.nan


def _pow(a: float, b: float) -> float:
    try:
        result = a**b
    except (OverflowError, ZeroDivisionError):
        return math.nan
    return result if isinstance(result, float | int) else math.nan  # a negative base's fraction is complex


_OPERATORS: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": _div, "^": _pow}


def _binary(op: str, left: Value, right: Value) -> Value:
    fn = _OPERATORS[op]
    if isinstance(left, list) and isinstance(right, list):
        raise MetricMathError(f"'{op}' between two arrays of time series")
    if isinstance(left, list):
        return [_binary_one(fn, op, item, right) for item in left]  # type: ignore[misc]
    if isinstance(right, list):
        return [_binary_one(fn, op, left, item) for item in right]
    return _binary_one(fn, op, left, right)


def _binary_one(fn: Callable[[float, float], float], op: str, left: float | Series,
                right: float | Series) -> float | Series:
    if isinstance(left, Series) and isinstance(right, Series):
        points = {t: fn(v, right.points[t]) for t, v in left.points.items() if t in right.points}
        return Series(f"{left.label} {op} {right.label}", max(left.period, right.period), points)
    if isinstance(left, Series):
        number = float(right)  # type: ignore[arg-type]
        return Series(left.label, left.period, {t: fn(v, number) for t, v in left.points.items()}, left.id)
    if isinstance(right, Series):
        return Series(right.label, right.period, {t: fn(left, v) for t, v in right.points.items()}, right.id)
    return fn(left, right)


def _apply(value: Value, fn: Callable[[float], float]) -> Value:
    if isinstance(value, list):
        return [_apply_one(item, fn) for item in value]
    return _apply_one(value, fn)


def _apply_one(value: float | Series, fn: Callable[[float], float]) -> float | Series:
    if isinstance(value, Series):
        return Series(value.label, value.period, {t: fn(v) for t, v in value.points.items()}, value.id)
    return fn(value)


# -- functions -----------------------------------------------------------------------------------


def _stddev(values: Sequence[float]) -> float:
    return statistics.pstdev(values) if values else math.nan


_AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "SUM": lambda v: math.fsum(v) if v else math.nan,
    "AVG": lambda v: math.fsum(v) / len(v) if v else math.nan,
    "MIN": lambda v: min(v) if v else math.nan,
    "MAX": lambda v: max(v) if v else math.nan,
    "STDDEV": _stddev,
}
_ELEMENTWISE: dict[str, Callable[[float], float]] = {
    "ABS": abs,
    "CEIL": lambda v: float(math.ceil(v)) if math.isfinite(v) else v,
    "FLOOR": lambda v: float(math.floor(v)) if math.isfinite(v) else v,
}
_KNOWN = ("METRICS", *_AGGREGATES, *_ELEMENTWISE, "FILL", "DIFF", "RATE", "PERIOD")


def _arity(name: str, args: list[Node], *counts: int) -> None:
    if len(args) not in counts:
        wanted = " or ".join(str(c) for c in counts)
        raise MetricMathError(f"{name}() takes {wanted} argument(s), not {len(args)}")


def _call(name: str, args: list[Node], scope: Scope) -> Value:
    if name == "METRICS":
        _arity(name, args, 0, 1)
        if not args:
            return list(scope.metrics)
        if args[0][0] != "str":
            raise MetricMathError("METRICS() takes a string, e.g. METRICS(\"errors\")")
        return [s for s in scope.metrics if args[0][1] in s.id]
    if name in _AGGREGATES:
        _arity(name, args, 1)
        return _aggregate(name, evaluate(args[0], scope))
    if name in _ELEMENTWISE:
        _arity(name, args, 1)
        return _apply(evaluate(args[0], scope), _ELEMENTWISE[name])
    if name == "FILL":
        _arity(name, args, 2)
        filler = evaluate(args[1], scope)
        if not isinstance(filler, float):
            raise MetricMathError("FILL()'s second argument must be a number here (REPEAT and LINEAR are not "
                                  "supported)")
        return _per_series(name, evaluate(args[0], scope), lambda s: _fill(s, filler, scope))
    if name in ("DIFF", "RATE"):
        _arity(name, args, 1)
        return _per_series(name, evaluate(args[0], scope), lambda s: _diff(s, per_second=name == "RATE"))
    if name == "PERIOD":
        _arity(name, args, 1)
        value = evaluate(args[0], scope)
        if not isinstance(value, Series):
            raise MetricMathError("PERIOD() takes one time series")
        return float(value.period)
    known = ", ".join(_KNOWN)
    raise MetricMathError(f"the function {name}() is not supported here (supported: {known})")


def _aggregate(name: str, value: Value) -> Value:
    fn = _AGGREGATES[name]
    if isinstance(value, float):
        return value
    if isinstance(value, Series):
        return fn(list(value.points.values()))
    by_time: dict[float, list[float]] = {}
    for series in value:
        for t, v in series.points.items():
            by_time.setdefault(t, []).append(v)
    period = max((s.period for s in value), default=1)
    return Series(name, period, {t: fn(vs) for t, vs in sorted(by_time.items())})


def _per_series(name: str, value: Value, fn: Callable[[Series], Series]) -> Value:
    if isinstance(value, float):
        raise MetricMathError(f"{name}() takes a time series, not a number")
    if isinstance(value, list):
        return [fn(s) for s in value]
    return fn(value)


def _fill(series: Series, filler: float, scope: Scope) -> Series:
    period = max(1, series.period)
    first = math.floor(scope.start / period) * period
    count = max(0, math.ceil((scope.end - first) / period))
    if count > MAX_FILL_POINTS:
        raise MetricMathError(f"FILL() over {count} periods: use a longer period or a shorter time range")
    points = {first + i * period: series.points.get(first + i * period, filler) for i in range(count)}
    for t, v in series.points.items():  # values off the grid (business metrics at any time) stay
        points.setdefault(t, v)
    return Series(series.label, series.period, dict(sorted(points.items())), series.id)


def _diff(series: Series, per_second: bool) -> Series:
    times = sorted(series.points)
    points = {}
    for before, now in itertools.pairwise(times):
        change = series.points[now] - series.points[before]
        points[now] = change / (now - before) if per_second else change
    return Series(series.label, series.period, points, series.id)
