"""DataProcessing: InputFilter, JoinSource and OutputFilter, as SageMaker's batch transform applies them.

SageMaker's filters are JSONPath expressions over one record: a CSV line is a JSON array of its
cells, a JSON (Lines) record is the JSON value itself. It supports only these operators: ``$``,
``.name``, ``*``, ``['name'(,'name')]``, ``[n(,n)]`` (negative from the end) and ``[start:end]``
(either end open), chained, e.g. ``$[1:]``, ``$[0,5:]``, ``$.features``, ``$['id','SageMakerOutput']``.
Their results keep the shape of a projection, not of a list of matches: ``$['id','x']`` is an object
with those two keys, ``$[0,-1]`` an array of two cells. General JSONPath libraries (jsonpath-ng)
return lists of matches instead, hence this small evaluator.

Joining (JoinSource=Input) pairs every input record, before its InputFilter, with the model's
output for it: for CSV the output cells are appended to the input cells; for JSON an object input
gets a ``SageMakerOutput`` key, and any other input becomes
``{"SageMakerInput": input, "SageMakerOutput": output}``. The OutputFilter then selects from the
joined record (or from the output alone without a join).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from moorage.batch.spec import TransformSpec, media_type

SAGEMAKER_OUTPUT = "SageMakerOutput"
SAGEMAKER_INPUT = "SageMakerInput"


class JsonPathError(ValueError):
    pass


class RecordError(ValueError):
    """A record the filters or the join cannot handle; the message says which and why."""


# -- JSONPath -------------------------------------------------------------------------------------
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


# -- records --------------------------------------------------------------------------------------
def _csv_cells(line: bytes) -> list[str]:
    text = line.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) != 1:
        raise RecordError(f"a CSV record must be one row, found {len(rows)}")
    return rows[0]


def _csv_line(cells: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(_cell_text(c) for c in cells)
    return buffer.getvalue().encode("utf-8")


def _cell_text(cell: Any) -> str:
    if isinstance(cell, str):
        return cell
    return orjson.dumps(cell).decode()


def _json_value(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON: {exc}") from None


def _scalar(text: str) -> Any:
    """A CSV output cell as a JSON value: numbers stay numbers."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class DataProcessor:
    """Applies one job's DataProcessing to its mini-batches: ``prepare`` before, ``finish`` after the model."""

    def __init__(self, spec: TransformSpec):
        self.spec = spec
        self.csv = spec.record_format == "csv"
        self.input_steps = parse_jsonpath(spec.input_filter)
        self.output_steps = parse_jsonpath(spec.output_filter)
        self.join = spec.join_source == "Input"
        self.output_kind = media_type(spec.accept) or None

    def parse(self, record: bytes) -> Any:
        return _csv_cells(record) if self.csv else _json_value(record)

    def filter_input(self, record: bytes) -> bytes:
        """One record as the model should see it."""
        if not self.input_steps:
            return record
        selected = apply_jsonpath(self.input_steps, self.parse(record))
        if self.csv:
            return _csv_line(selected if isinstance(selected, list) else [selected])
        return orjson.dumps(selected)

    def split_output(self, body: bytes, content_type: str, count: int) -> tuple[list[Any], bool]:
        """The model's answer to ``count`` records, one value per record in order, and whether it was CSV
        (a CSV output is a list of cells per record)."""
        kind = self.output_kind or media_type(content_type)
        if kind == "application/json":
            value = _json_value(body)
            if isinstance(value, list) and len(value) == count:
                return value, False
            if count == 1:
                return [value], False
            raise RecordError(f"the model answered a JSON document that is not an array of {count} outputs")
        lines = [line for line in body.splitlines() if line.strip()]
        if len(lines) != count:
            raise RecordError(f"the model answered {len(lines)} line(s) for {count} record(s); joining and "
                              "output filters need one output line per input record")
        if kind == "text/csv":
            return [_csv_cells(line) for line in lines], True
        return [_json_value(line) for line in lines], False

    def join_record(self, record: bytes, output: Any, csv_output: bool) -> Any:
        if self.csv:
            cells = output if csv_output else (output if isinstance(output, list) else [output])
            return [*_csv_cells(record), *cells] if self.join else cells
        if csv_output:
            values = [_scalar(cell) for cell in output]
            output = values[0] if len(values) == 1 else values
        if not self.join:
            return output
        source = _json_value(record)
        if isinstance(source, dict):
            return {**source, SAGEMAKER_OUTPUT: output}
        return {SAGEMAKER_INPUT: source, SAGEMAKER_OUTPUT: output}

    def render(self, value: Any) -> bytes:
        selected = apply_jsonpath(self.output_steps, value)
        if self.csv:
            return _csv_line(selected if isinstance(selected, list) else [selected])
        return orjson.dumps(selected)

    def finish(self, records: list[bytes], body: bytes, content_type: str) -> bytes:
        """The output lines of a mini-batch: each record joined (if asked) and output-filtered."""
        outputs, csv_output = self.split_output(body, content_type, len(records))
        lines = [self.render(self.join_record(r, o, csv_output)) for r, o in zip(records, outputs, strict=True)]
        return b"\n".join(lines) + b"\n"
