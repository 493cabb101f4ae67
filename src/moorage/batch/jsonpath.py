"""SageMaker's JSONPath subset for a transform job's InputFilter and OutputFilter: parse once, apply per record.

It supports only these operators: ``$``, ``.name``, ``*``, ``['name'(,'name')]``, ``[n(,n)]``
(negative from the end) and ``[start:end]`` (either end open), chained, e.g. ``$[1:]``,
``$[0,5:]``, ``$.features``, ``$['id','SageMakerOutput']``. Results keep the shape of a
projection, not of a list of matches: ``$['id','x']`` is an object with those two keys, ``$[0,-1]``
an array of two cells. General JSONPath libraries (jsonpath-ng) return lists of matches instead,
hence this small evaluator.

Its own module so that :mod:`.spec` can refuse a bad filter when the job is created and
:mod:`.filters` can apply it, each importing this one way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any


class JsonPathError(ValueError):
    """An expression outside the subset; the message says where."""


class RecordError(ValueError):
    """A record the filters or the join cannot handle; the message says which and why."""


@dataclass(frozen=True)
class _Slice:
    start: int | None
    stop: int | None


_Selector = str | int | _Slice  # a name, an index, a slice
_WILDCARD = "*"


@dataclass(frozen=True)
class _Step:
    selectors: tuple[_Selector, ...]
    bracket: bool  # ['a','b'] keeps the names as an object; .a selects the value


_TOKEN = re.compile(r"""\s*(?:'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)"|(-?\d*\s*:\s*-?\d*)|(-?\d+)|(\*))\s*""")
_NAME = re.compile(r"[A-Za-z_][\w-]*|\*")


@lru_cache(maxsize=64)
def parse_jsonpath(expression: str) -> tuple[_Step, ...]:
    text = expression.strip()
    if not text.startswith("$"):
        raise JsonPathError("it must start with $")
    steps: list[_Step] = []
    i = 1
    while i < len(text):
        if text.startswith(".[", i):
            i += 1  # SageMaker's docs write $.field.['a','b'] for $.field['a','b']
        if text[i] == ".":
            match = _NAME.match(text, i + 1)
            if match is None:
                raise JsonPathError(f"expected a field name after '.' at position {i + 1}")
            name = match.group(0)
            steps.append(_Step((_WILDCARD if name == "*" else name,), bracket=False))
            i = match.end()
        elif text[i] == "[":
            end = _closing_bracket(text, i)
            steps.append(_Step(_selectors(text[i + 1:end], i + 1), bracket=True))
            i = end + 1
        else:
            raise JsonPathError(f"unexpected {text[i]!r} at position {i}")
    return tuple(steps)


def _closing_bracket(text: str, start: int) -> int:
    quote = None
    for j in range(start + 1, len(text)):
        ch = text[j]
        if quote:
            if ch == quote and text[j - 1] != "\\":
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "]":
            return j
    raise JsonPathError(f"'[' at position {start} is never closed")


def _selectors(body: str, offset: int) -> tuple[_Selector, ...]:
    out: list[_Selector] = []
    pos = 0
    while True:
        match = _TOKEN.match(body, pos)
        if match is None or match.end() == pos:
            raise JsonPathError(f"cannot read a selector at position {offset + pos}")
        single, double, slice_, index, _star = match.groups()
        if single is not None or double is not None:
            out.append((single if single is not None else double).replace("\\'", "'").replace('\\"', '"'))
        elif slice_ is not None:
            start, _, stop = slice_.partition(":")
            out.append(_Slice(int(start) if start.strip() else None, int(stop) if stop.strip() else None))
        elif index is not None:
            out.append(int(index))
        else:
            out.append(_WILDCARD)
        pos = match.end()
        if pos == len(body):
            break
        if body[pos] != ",":
            raise JsonPathError(f"expected ',' or ']' at position {offset + pos}")
        pos += 1
    if len(out) > 1 and any(isinstance(s, str) for s in out) and not all(isinstance(s, str) for s in out):
        raise JsonPathError("a bracket mixes field names with indexes")
    return tuple(out)


def apply_jsonpath(steps: Sequence[_Step], value: Any) -> Any:
    for step in steps:
        value = _apply_step(step, value)
    return value


def _apply_step(step: _Step, value: Any) -> Any:
    selectors = step.selectors
    if selectors == (_WILDCARD,):
        if isinstance(value, dict):
            return list(value.values())
        if isinstance(value, list):
            return value
        raise RecordError(f"'*' needs an object or an array, not {_kind(value)}")
    if isinstance(selectors[0], str):
        if not isinstance(value, dict):
            raise RecordError(f"field {selectors[0]!r} needs an object, not {_kind(value)}")
        for name in selectors:
            if name not in value:
                raise RecordError(f"the record has no field {name!r}")
        if len(selectors) == 1 and isinstance(selectors[0], str):
            return value[selectors[0]]
        return {name: value[name] for name in selectors if isinstance(name, str)}
    if not isinstance(value, list):
        raise RecordError(f"an index or slice needs an array, not {_kind(value)}")
    if len(selectors) == 1 and isinstance(selectors[0], int):
        return value[_index(selectors[0], len(value))]
    picked: list[Any] = []
    for selector in selectors:
        if isinstance(selector, _Slice):
            picked.extend(value[selector.start:selector.stop])
        elif isinstance(selector, int):
            picked.append(value[_index(selector, len(value))])
    return picked


def _index(index: int, length: int) -> int:
    if not -length <= index < length:
        raise RecordError(f"index {index} is outside the record's {length} element(s)")
    return index


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), type(value).__name__)
