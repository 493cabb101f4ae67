"""Request and response bodies on the agent's ``/invocations``: CSV, JSON, JSON Lines and NPY.

The same conventions as moorage's instance servers and SageMaker's containers (``runtimes/codecs.py``,
which the agent cannot import: it pulls in the server's dependencies): a CSV body is rows of numbers
(one row is a 2-D array of one row); a JSON body is a list of rows, or an object with the rows under
``instances`` (TF-Serving) or ``inputs`` (KServe v1), or, for a graph with several inputs, one entry
per input name; NPY is one array. A missing or ``*/*`` Accept answers JSON. Errors carry the HTTP
status the container contract gives them: 400 for a body that does not parse, 415 for a content type
no codec reads, 406 for an Accept none writes; the text says what was wrong.

Only the standard library and numpy: ``json`` instead of orjson keeps the extra small, and the
single-record cases that dominate on a device take fast paths (one CSV row by ``map(float)``, one
number a line out).
"""

from __future__ import annotations

import csv
import io
import json
from functools import lru_cache
from typing import Any

import numpy as np

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
ANY = "*/*"
SUPPORTED = (CSV, JSON, JSONLINES, NPY)
_CANONICAL = frozenset(SUPPORTED)
_ALIASES = {"application/x-jsonlines": JSONLINES, "application/jsonl": JSONLINES}
_ROW_KEYS = ("instances", "inputs")


class CodecError(ValueError):
    """A request the codecs refuse; ``status`` is the HTTP status to answer with."""

    status = 400


class PayloadError(CodecError):
    """A body that does not parse as its declared content type (400)."""


class UnsupportedContentType(CodecError):
    """A Content-Type (415) or an Accept (406) no codec handles."""

    def __init__(self, content_type: str | None, *, accept: bool = False) -> None:
        self.status = 406 if accept else 415
        shown = f"'{content_type}'" if content_type else "(missing)"
        super().__init__(f"{'Accept' if accept else 'Content type'} {shown} is not supported; "
                         f"supported: {', '.join(SUPPORTED)}")


def normalize(content_type: str | None) -> str | None:
    """The media type without parameters, lower-cased, aliases mapped to one name."""
    if content_type is None or content_type in _CANONICAL:
        return content_type
    media_type = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(media_type, media_type) or None


# -------------------------------------------------------------------------------------------- decode


def decode(body: bytes, content_type: str | None) -> Any:
    """A request body as rows (a numpy array), or a dict of named inputs for a multi-input graph."""
    media_type = normalize(content_type)
    if media_type == CSV:
        return _decode_csv(body)
    if media_type == JSON:
        return _decode_json(body)
    if media_type == JSONLINES:
        return _decode_jsonlines(body)
    if media_type == NPY:
        return _decode_npy(body)
    raise UnsupportedContentType(content_type)


def _text(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} body is not valid UTF-8: {exc}") from None


def _decode_csv(body: bytes) -> np.ndarray:
    text = _text(body, "CSV").strip()
    if not text:
        raise PayloadError("CSV body is empty")
    if "\n" not in text and '"' not in text:
        try:  # one row of numbers: the usual device request
            return np.array([list(map(float, text.split(",")))], dtype=np.float64)
        except ValueError:
            pass
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
    width = len(rows[0])
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise PayloadError(f"CSV row {number} has {len(row)} columns but row 1 has {width}")
    try:
        return np.array([[float(cell) if cell.strip() else np.nan for cell in row] for row in rows],
                        dtype=np.float64)
    except ValueError:
        out = np.empty((len(rows), width), dtype=object)  # text features, for a graph with string inputs
        out[:] = rows
        return out


def _decode_json(body: bytes) -> Any:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError(f"JSON body does not parse: {exc}") from None
    if isinstance(value, dict):
        if len(value) == 1:
            key, inner = next(iter(value.items()))
            if key in _ROW_KEYS:
                return inner if isinstance(inner, dict) else rows(inner, f"JSON '{key}'")
        return value  # named inputs
    return rows(value, "JSON body")


def _decode_jsonlines(body: bytes) -> Any:
    records = []
    for number, line in enumerate(body.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except (ValueError, UnicodeDecodeError) as exc:
                raise PayloadError(f"JSON Lines line {number} does not parse: {exc}") from None
    if not records:
        raise PayloadError("JSON Lines body is empty")
    if isinstance(records[0], dict):  # one key per input
        names = list(records[0])
        try:
            return {name: [record[name] for record in records] for name in names}
        except (KeyError, TypeError):
            raise PayloadError(f"every JSON Lines record must have the keys {', '.join(names)}") from None
    return rows(records, "JSON Lines body")


def rows(value: Any, what: str = "input") -> np.ndarray:
    """A list (of rows) as an array; a flat list is one row. JSON null among numbers is NaN."""
    if not isinstance(value, list | tuple | np.ndarray):
        raise PayloadError(f"{what} must be a list of rows")
    if len(value) == 0:
        raise PayloadError(f"{what} is an empty list; there is nothing to predict")
    try:
        array = np.asarray(value)
    except ValueError:
        raise PayloadError(f"{what} rows have different lengths; expected a rectangular list") from None
    if array.dtype == object and not any(isinstance(item, str) for item in array.flat):
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    return array


def _decode_npy(body: bytes) -> np.ndarray:
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"NPY body does not parse: {exc}") from None
    if not isinstance(array, np.ndarray):
        raise PayloadError("NPY body must hold a single array (.npy), not an .npz archive")
    return array


# -------------------------------------------------------------------------------------------- encode


def encode(prediction: Any, media_type: str) -> bytes:
    """``prediction`` (an array, or a dict of named outputs) as ``media_type`` (one of SUPPORTED)."""
    if isinstance(prediction, dict) and media_type in (CSV, NPY):
        media_type = JSON  # several outputs: only JSON holds them (the runtimes answer the same)
    if media_type == CSV:
        return _encode_csv(prediction)
    if media_type == JSON:
        return json.dumps(_jsonable(prediction), separators=(",", ":")).encode("utf-8")
    if media_type == JSONLINES:
        return _encode_jsonlines(prediction)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(prediction), allow_pickle=False)
    return buffer.getvalue()


def encoded_type(prediction: Any, media_type: str) -> str:
    """The content type ``encode`` writes ``prediction`` as (JSON for several outputs)."""
    return JSON if isinstance(prediction, dict) and media_type in (CSV, NPY) else media_type


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {str(name): _jsonable(inner) for name, inner in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(inner) for inner in value]
    return value


def _encode_csv(prediction: Any) -> bytes:
    array = np.asarray(prediction)
    if array.ndim > 2:
        raise ValueError(f"a {array.ndim}-D prediction cannot be written as text/csv")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim <= 1 and array.dtype.kind in "fiub":
        return ("\n".join(map(str, array.reshape(-1).tolist())) + "\n").encode("utf-8")
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in array.tolist() if array.ndim else [array.item()]:
        writer.writerow(row if isinstance(row, list) else [row])
    return buffer.getvalue().encode("utf-8")


def _encode_jsonlines(prediction: Any) -> bytes:
    if isinstance(prediction, dict):
        values = _jsonable(prediction)
        lengths = {len(v) if isinstance(v, list) else -1 for v in values.values()}
        if len(lengths) == 1 and -1 not in lengths:
            (count,) = lengths
            records = [{name: value[i] for name, value in values.items()} for i in range(count)]
        else:
            records = [values]
    else:
        array = np.asarray(prediction)
        records = array.tolist() if array.ndim else [array.item()]
    return b"".join(json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n" for record in records)


# -------------------------------------------------------------------------------------------- accept


def choose_accept(accept: str | None, default: str = JSON) -> str:
    """The supported response type an Accept header prefers; missing or ``*/*`` means ``default``."""
    if not accept or accept == ANY:
        return default
    if accept in _CANONICAL:
        return accept
    return _negotiate(accept, default)


@lru_cache(maxsize=64)
def _negotiate(accept: str, default: str) -> str:
    ranges = []
    for position, part in enumerate(accept.split(",")):
        media_type, *params = part.split(";")
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0:
            ranges.append((-quality, position, normalize(media_type) or ""))
    for _, _, media_type in sorted(ranges):
        if media_type == ANY:
            return default
        if media_type in _CANONICAL:
            return media_type
        if media_type.endswith("/*"):
            prefix = media_type[:-1]
            found = next((c for c in (default, *SUPPORTED) if c.startswith(prefix)), None)
            if found is not None:
                return found
    raise UnsupportedContentType(accept, accept=True)
