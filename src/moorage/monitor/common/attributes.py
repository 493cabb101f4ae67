"""One value out of a captured output or a ground-truth record: SageMaker's ``InferenceAttribute``,
``ProbabilityAttribute`` and ``GroundTruthAttribute``.

An attribute is read by the format of the data it points into:

- CSV (``encoding`` ``CSV``, or a ``text/csv`` body): a 0-based column index (``"0"``, ``"1"``); the
  value is the field's text, stripped;
- JSON (``encoding`` ``JSON``, or a JSON body): a path in the subset of JMESPath/JSONPath that
  SageMaker's examples use: keys joined by dots, ``[n]`` list indexes (negative from the end),
  ``['key']`` for keys with odd characters, ``[*]`` (and ``.*``) over every item, and an optional
  leading ``$``: ``score``, ``predictions[0].score``, ``$.predictions[0]['predicted label']``,
  ``predictions[*].score``. A bare index (``"0"``) picks from a list (or the key ``"0"`` of an object);
- ``BASE64``: decoded, then read as its ``observedContentType`` says (CSV or JSON).

No attribute means "the whole output is the value": a single CSV field, a JSON scalar, or a JSON
document wrapping exactly one scalar (``{"predictions": [0.7]}``).

Beyond SageMaker, a path that does not fit a JSON document wrapping a single row
(``{"predictions": [{"score": 0.9}]}``, ``[{...}]``) is tried again on that row, so ``score`` works
where SageMaker needs ``predictions[0].score``; a path that fits is never reinterpreted.

One captured record is one prediction here: an output of several CSV lines or JSON lines, or a path
that ends in a list, is an error (``batched``/``not_a_value``) unless the path has ``[*]``, which asks
for a list on purpose (the bias monitors read batches that way). Every failure is an
:class:`AttributeExtractionError` (a ``ValueError``) whose ``reason`` is a short word, so a caller
counts failures by kind instead of stopping at the first.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from moorage.capture.config import media_type

# Keys under which a JSON document commonly wraps its rows; used only by the one-row retry and by
# "no attribute" unwrapping, never to reinterpret a path that already fits.
_ROW_WRAPPERS = ("predictions", "instances", "outputs", "features", "inputs", "data", "results")
_WILDCARD = object()


class AttributeExtractionError(ValueError):
    """An attribute that cannot be read from one record; ``reason`` says why, in one word."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class InvalidAttribute(AttributeExtractionError):
    """An attribute that is not an index or a path at all: wrong for every record, so a setup error."""

    def __init__(self, message: str):
        super().__init__("bad_attribute", message)


@dataclass(frozen=True)
class Extractor:
    """A parsed attribute, applied to many records (parsing once keeps per-record work small)."""

    attribute: str | None
    steps: tuple[Any, ...] | None  # None: the whole value
    column: int | None  # the CSV column, when the attribute is a bare index
    wildcard: bool

    def __call__(self, side: Mapping[str, Any]) -> Any:
        """The value in one side of a capture record (``endpointOutput``) or a ``groundTruthData``."""
        kind, text = decode_side(side)
        return self.from_text(text, kind)

    def from_text(self, text: str, kind: str) -> Any:
        """The value in ``text`` read as ``kind`` (``csv`` or ``json``)."""
        if kind == "csv":
            return self._from_csv(text)
        return self._from_json(text)

    def _from_csv(self, text: str) -> str:
        if self.steps is not None and self.column is None:
            raise AttributeExtractionError(
                "bad_attribute", f"the data is CSV: the attribute must be a column index, not {self.attribute!r}")
        fields = csv_fields(text)
        if self.column is None:
            if len(fields) != 1:
                raise AttributeExtractionError(
                    "not_a_value", f"the CSV data has {len(fields)} columns; name one with a column index")
            value = fields[0]
        else:
            if not -len(fields) <= self.column < len(fields):
                raise AttributeExtractionError(
                    "out_of_range", f"column {self.column} asked of CSV data with {len(fields)} column(s)")
            value = fields[self.column]
        value = value.strip()
        if not value:
            raise AttributeExtractionError("empty", "the CSV value is empty")
        return value

    def _from_json(self, text: str) -> Any:
        document = parse_json(text)
        if self.steps is None:
            return single_value(document)
        try:
            value = _walk(document, self.steps, self.attribute)
        except AttributeExtractionError as first:
            row = _single_row(document)
            if row is None:
                raise
            try:
                value = _walk(row, self.steps, self.attribute)
            except AttributeExtractionError:
                raise first from None
        if isinstance(value, dict) or (isinstance(value, list) and not self.wildcard):
            raise AttributeExtractionError(
                "not_a_value", f"{self.attribute!r} points at {'an object' if isinstance(value, dict) else 'a list'}, "
                               "not a value")
        if value is None:
            raise AttributeExtractionError("empty", f"{self.attribute!r} is null")
        return value


def extract(output_side: Mapping[str, Any], attribute: str | None) -> Any:
    """``attribute`` (or, with None, the whole single value) out of a captured ``endpointOutput``."""
    return extractor(attribute)(output_side)


def extract_ground_truth(ground_truth_data: Mapping[str, Any], attribute: str | None = None) -> Any:
    """The label out of a ground-truth record's ``groundTruthData`` (``data`` + ``encoding``)."""
    return extractor(attribute)(ground_truth_data)


@lru_cache(maxsize=64)
def extractor(attribute: str | None) -> Extractor:
    """The parsed ``attribute``; raises :class:`InvalidAttribute` when it is neither index nor path."""
    if attribute is None or not str(attribute).strip():
        return Extractor(None, None, None, False)
    text = str(attribute).strip()
    if re.fullmatch(r"-?\d+", text):
        return Extractor(text, (int(text),), int(text), False)
    steps = _parse_path(text)
    return Extractor(text, steps, None, any(step is _WILDCARD for step in steps))


# -- decoding ----------------------------------------------------------------------------------------
def decode_side(side: Mapping[str, Any]) -> tuple[str, str]:
    """(``csv`` or ``json``, text) of a capture side or a ``groundTruthData``."""
    if not isinstance(side, dict) and not isinstance(side, Mapping):  # dict first: the ABC check is slower
        raise AttributeExtractionError("missing", "no data to read (the record has no such side)")
    data = side.get("data")
    if data is None:
        raise AttributeExtractionError("missing", "the record has no data")
    if not isinstance(data, str):
        # a hand-written record with "data": 1: read as the CSV text it stands for
        return "csv", label_text(data) if isinstance(data, bool | int | float) else str(data)
    encoding = side.get("encoding")
    if encoding == "CSV":
        return "csv", data
    if encoding == "JSON":
        return "json", data
    encoding = str(encoding or "").upper()
    if encoding in ("CSV", "JSON"):
        return encoding.lower(), data
    kind = media_type(side.get("observedContentType"))
    if encoding == "BASE64":
        try:
            data = base64.b64decode(data, validate=False).decode("utf-8")
        except (binascii.Error, ValueError) as exc:
            raise AttributeExtractionError("undecodable", f"the BASE64 data cannot be read as text: {exc}") from exc
    elif encoding:
        raise AttributeExtractionError("unknown_encoding", f"unknown encoding {encoding!r}")
    if "csv" in kind:
        return "csv", data
    if "json" in kind:
        return "json", data
    if not encoding:
        return "csv", data  # ground truth names no content type; SageMaker's labels are CSV
    raise AttributeExtractionError("undecodable", f"cannot read a value from content type {kind or 'unknown'!r}")


def csv_fields(text: str) -> list[str]:
    """The fields of CSV text holding exactly one row."""
    if '"' not in text:
        # the usual case (a number, or a few): no quoting, so split instead of a csv.reader per record
        stripped = text.strip("\r\n")
        if "\n" in stripped or "\r" in stripped:
            rows = [line for line in stripped.splitlines() if line.strip()]
            if len(rows) > 1:
                raise AttributeExtractionError("batched", f"the CSV data has {len(rows)} rows, not one")
            stripped = rows[0] if rows else ""
        return stripped.split(",")
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    if len(rows) > 1:
        raise AttributeExtractionError("batched", f"the CSV data has {len(rows)} rows, not one")
    return rows[0] if rows else [""]


def parse_json(text: str) -> Any:
    """One JSON document; JSON Lines with one line is that line, with several a batch (an error)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        lines = [line for line in text.splitlines() if line.strip()]
        if len(lines) > 1:
            try:
                for line in lines:
                    orjson.loads(line)
            except orjson.JSONDecodeError:
                pass
            else:
                raise AttributeExtractionError("batched", f"the JSON Lines data has {len(lines)} lines, not one") \
                    from None
        raise AttributeExtractionError("undecodable", f"the data is not JSON: {exc}") from None


def single_value(document: Any) -> Any:
    """The one scalar a document holds, through single-entry objects and single-item lists."""
    value = document
    while True:
        if isinstance(value, dict) and len(value) == 1:
            value = next(iter(value.values()))
        elif isinstance(value, list) and len(value) == 1:
            value = value[0]
        else:
            break
    if isinstance(value, dict | list):
        raise AttributeExtractionError(
            "not_a_value", "the data is not a single value; name the value with an attribute (index or path)")
    if value is None:
        raise AttributeExtractionError("empty", "the value is null")
    return value


def label_text(value: Any) -> str:
    """A label as the text of a CSV-encoded ground-truth record; bools as 1/0 (a binary classifier's labels)."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"a label must be a finite number, not {value}")
        return repr(value)
    if isinstance(value, str):
        if any(c in value for c in ',"\r\n'):
            # quoted, so that reading it back as CSV gives one field, the text itself
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow([value])
            return out.getvalue()
        return value
    raise TypeError(f"a label must be a str, int, float or bool, not {type(value).__name__}")


# -- paths -------------------------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""\.?(?P<key>[^.\[\]'"\s]+)"""  # name or .name
    r"""|\[(?P<index>-?\d+)\]"""
    r"""|\[\s*(?P<star>\*)\s*\]"""
    r"""|\[\s*'(?P<sq>(?:[^'\\]|\\.)*)'\s*\]"""
    r"""|\[\s*"(?P<dq>(?:[^"\\]|\\.)*)"\s*\]""")


def _parse_path(text: str) -> tuple[Any, ...]:
    body = text[1:] if text.startswith("$") else text
    steps: list[Any] = []
    position = 0
    while position < len(body):
        match = _TOKEN.match(body, position)
        if match is None or match.end() == position:
            raise InvalidAttribute(f"cannot read the attribute {text!r} as a column index or a JSON path "
                                   f"(at {body[position:]!r})")
        if match.group("key") is not None:
            key = match.group("key")
            steps.append(_WILDCARD if key == "*" else key)
        elif match.group("index") is not None:
            steps.append(int(match.group("index")))
        elif match.group("star") is not None:
            steps.append(_WILDCARD)
        else:
            quoted = match.group("sq") if match.group("sq") is not None else match.group("dq")
            steps.append(re.sub(r"\\(.)", r"\1", quoted))
        position = match.end()
    if not steps:
        raise InvalidAttribute(f"the attribute {text!r} names nothing")
    return tuple(steps)


def _walk(value: Any, steps: tuple[Any, ...], attribute: str | None) -> Any:
    for number, step in enumerate(steps):
        if step is _WILDCARD:
            items = value if isinstance(value, list) else list(value.values()) if isinstance(value, dict) else None
            if items is None:
                raise AttributeExtractionError("missing", f"{attribute!r}: [*] over a {type(value).__name__}")
            rest = steps[number + 1:]
            return [_walk(item, rest, attribute) for item in items] if rest else items
        if isinstance(step, int):
            if isinstance(value, list):
                if not -len(value) <= step < len(value):
                    raise AttributeExtractionError(
                        "out_of_range", f"{attribute!r}: index {step} of a list of {len(value)}")
                value = value[step]
                continue
            if isinstance(value, dict) and str(step) in value:
                value = value[str(step)]
                continue
            raise AttributeExtractionError("missing", f"{attribute!r}: index {step} of a {_kind(value)}")
        if not isinstance(value, dict) or step not in value:
            raise AttributeExtractionError("missing", f"{attribute!r}: no key {step!r} in the {_kind(value)}")
        value = value[step]
    return value


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return f"object with keys {sorted(value)[:5]}"
    return "list" if isinstance(value, list) else type(value).__name__


def _single_row(document: Any) -> Any:
    """The row of a document that wraps exactly one (``{"predictions": [row]}``, ``[row]``), else None."""
    if isinstance(document, dict) and len(document) == 1:
        key, inner = next(iter(document.items()))
        if key in _ROW_WRAPPERS:
            document = inner
    if isinstance(document, list) and len(document) == 1 and isinstance(document[0], dict | list):
        return document[0]
    return None

