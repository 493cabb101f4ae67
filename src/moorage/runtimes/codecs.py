"""Request and response (de)serialisation: the default ``input_fn`` / ``output_fn``.

This follows SageMaker's scikit-learn container (CSV, JSON, NPY, plus JSON Lines) but is friendlier:
a single CSV row is always a 2-D array, text CSV keeps its quoted commas, and every parse failure is a
``PayloadError`` that says what was wrong and where, so the instance server can answer 400 instead of 500.

Everything here runs once per request, so the common cases (a short numeric CSV row, a small JSON list,
an exact ``Accept`` header) take fast paths that avoid the general machinery.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import orjson

CSV = "text/csv"
JSON = "application/json"
JSONLINES = "application/jsonlines"
NPY = "application/x-npy"
ANY = "*/*"

SUPPORTED_CONTENT_TYPES = (CSV, JSON, JSONLINES, NPY)
_CANONICAL = frozenset(SUPPORTED_CONTENT_TYPES)

# Several spellings of JSON Lines are in the wild (SageMaker's own built-in algorithms use the x- one).
_ALIASES = {
    "application/x-jsonlines": JSONLINES,
    "application/jsonl": JSONLINES,
}

DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"

_SUPPORTED_LIST = ", ".join(SUPPORTED_CONTENT_TYPES)
_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


class UnsupportedContentType(Exception):
    """A Content-Type (415) or an Accept (406) that no codec handles."""

    def __init__(self, content_type: str | None, *, accept: bool = False) -> None:
        self.content_type = content_type
        self.status = 406 if accept else 415
        what = "Accept" if accept else "Content type"
        shown = f"'{content_type}'" if content_type else "(missing)"
        super().__init__(f"{what} {shown} is not supported; supported: {_SUPPORTED_LIST}")


class PayloadError(ValueError):
    """A request body that does not parse as its declared content type."""

    status = 400


def normalize(content_type: str | None) -> str | None:
    """Lower-cased media type without parameters (``; charset=...``), aliases mapped to one name."""
    if content_type is None:
        return None
    if content_type in _CANONICAL:  # the usual case: an exact, already canonical header
        return content_type
    media_type = content_type.split(";", 1)[0].strip().lower()
    return _ALIASES.get(media_type, media_type) or None


def default_accept(env: Mapping[str, str]) -> str:
    """The response type used when a request has no Accept (or ``*/*``), as SageMaker's containers do."""
    return env.get(DEFAULT_ACCEPT_ENV, "").strip() or JSON


# ---------------------------------------------------------------------------------------------- decode


def decode(body: bytes, content_type: str) -> Any:
    """Parse a request body into what ``predict`` expects (usually a numpy array)."""
    media_type = normalize(content_type)
    decoder = _DECODERS.get(media_type) if media_type else None
    if decoder is None:
        raise UnsupportedContentType(content_type)
    return decoder(body)


def _text(body: bytes | str, what: str) -> str:
    if isinstance(body, str):  # a caller following the toolkit convention may already have decoded it
        return body
    try:
        return bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError(f"{what} body is not valid UTF-8: {exc}") from None


def _decode_csv(body: bytes | str) -> np.ndarray:
    text = _text(body, "CSV")
    stripped = text.strip()
    if not stripped:
        raise PayloadError("CSV body is empty")
    # Only a large body can hold a wide row (MAX_CSV_COLUMNS cells need twice as many characters):
    # small ones, the common real-time request, skip the count.
    large = len(body) >= _BULK_CSV_BYTES
    width = _first_row_width(stripped) if large else 0
    if width > MAX_CSV_COLUMNS:
        raise PayloadError(f"CSV row has {width} columns; at most {MAX_CSV_COLUMNS} are accepted")
    if '"' not in text:
        # pandas makes a column object per cell: wide rows cost it seconds and hundreds of MB (a 6 MB
        # row of 750,000 cells: 14 s, 1.1 GB), while the plain parsers take them in a fraction of that.
        numeric = _bulk_numeric_csv(body) if large and width <= _BULK_CSV_MAX_COLUMNS else None
        if numeric is None:
            numeric = _fast_numeric_csv(stripped)
        if numeric is None:
            numeric = _numeric_csv(text)
        if numeric is not None:
            return numeric
    return _text_csv(text)


# Batch transform's mini-batches are megabytes of numbers; pandas' C tokenizer parses them about 8x
# faster than np.loadtxt, with the same (correctly rounded) values.
_BULK_CSV_BYTES = 64 * 1024
_BULK_CSV_MAX_COLUMNS = 2048
# Past this a row is not features but an attack or a mistake (a 6 MB body of one line); the bound
# keeps a request's parse time and memory bounded.
MAX_CSV_COLUMNS = 100_000
assert 2 * MAX_CSV_COLUMNS > _BULK_CSV_BYTES  # the check above relies on it


def _first_row_width(stripped: str) -> int:
    end = stripped.find("\n")
    return stripped.count(",", 0, end if end >= 0 else len(stripped)) + 1


def _bulk_numeric_csv(body: bytes | str) -> np.ndarray | None:
    try:
        import pandas as pd
    except ImportError:
        return None
    data = body.encode() if isinstance(body, str) else body
    try:
        # No NA parsing: an empty cell or "NA" is not a float here, and the careful path decides.
        frame = pd.read_csv(io.BytesIO(data), header=None, dtype=np.float64, na_filter=False, comment=None)
    except (ValueError, UnicodeDecodeError):  # text, empty cells, ragged rows (pandas' ParserError)
        return None
    return frame.to_numpy(dtype=np.float64)


def _fast_numeric_csv(stripped: str) -> np.ndarray | None:
    """The common all-numbers body via the quickest parser for its size; None to take the careful path."""
    try:
        if "\n" not in stripped and "\r" not in stripped:
            # One row is the typical real-time request: map(float) beats any numpy parser here.
            return np.array([list(map(float, stripped.split(",")))], dtype=np.float64)
        # numpy's C parser is ~2x faster than Python for the large bodies of batch transform.
        return np.loadtxt(io.StringIO(stripped), delimiter=",", ndmin=2, dtype=np.float64, comments=None)
    except ValueError:
        return None  # empty cells, text or ragged rows: the careful path says exactly what was wrong


def _numeric_csv(text: str) -> np.ndarray | None:
    """Rows of floats, or None when some cell is not a number (the caller then keeps strings)."""
    rows: list[list[float]] = []
    line_numbers: list[int] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = line.split(",")
        try:
            rows.append(list(map(float, cells)))
        except ValueError:
            row = _float_cells(cells)
            if row is None:
                return None
            rows.append(row)
        line_numbers.append(number)
    _check_rectangular([len(row) for row in rows], line_numbers)
    return np.array(rows, dtype=np.float64)


def _float_cells(cells: list[str]) -> list[float] | None:
    # An empty cell is a missing value, as np.genfromtxt (SageMaker's CSV decoder) reads it.
    try:
        return [float(cell) if cell.strip() else np.nan for cell in cells]
    except ValueError:
        return None


def _text_csv(text: str) -> np.ndarray:
    reader = csv.reader(io.StringIO(text))
    rows: list[list[str]] = []
    line_numbers: list[int] = []
    try:
        for row in reader:
            if row:  # csv yields [] for a blank line
                rows.append(row)
                line_numbers.append(reader.line_num)
    except csv.Error as exc:
        raise PayloadError(f"CSV body does not parse at line {reader.line_num}: {exc}") from None
    _check_rectangular([len(row) for row in rows], line_numbers)
    out = np.empty((len(rows), len(rows[0])), dtype=object)
    out[:] = rows
    return out


def _check_rectangular(lengths: list[int], line_numbers: list[int]) -> None:
    if not lengths:
        raise PayloadError("CSV body has no rows")
    width = lengths[0]
    for length, number in zip(lengths, line_numbers, strict=True):
        if length != width:
            raise PayloadError(f"CSV line {number} has {length} columns but line {line_numbers[0]} has {width}")


def _decode_json(body: bytes | str) -> Any:
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"JSON body does not parse: {exc}") from None
    if isinstance(value, dict):
        # TF-Serving ("instances") and KServe v1 ("inputs") request shapes carry the rows under a key.
        for key in ("instances", "inputs"):
            if key in value:
                return _to_array(value[key], f"JSON '{key}'")
        return value  # any other object is for a user predict_fn to interpret
    return _to_array(value, "JSON body")


def _decode_jsonlines(body: bytes | str) -> Any:
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    records = []
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            raise PayloadError(f"JSON Lines line {number} does not parse: {exc}") from None
    if not records:
        raise PayloadError("JSON Lines body is empty")
    return _to_array(records, "JSON Lines body")


def _to_array(value: Any, what: str) -> Any:
    if not isinstance(value, list):
        return value  # a scalar: nothing to stack, leave it to predict_fn
    if not value:
        raise PayloadError(f"{what} is an empty list; there is nothing to predict")
    if isinstance(value[0], dict):
        return value  # records: an array of dicts would only hide them from a user predict_fn
    try:
        array = np.asarray(value)
    except ValueError:
        raise PayloadError(f"{what} rows have different lengths; expected a rectangular list") from None
    if array.dtype == object and not any(isinstance(item, str) for item in array.flat):
        # JSON null among numbers is a missing value: make it NaN so estimators that handle NaN can.
        try:
            return np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            pass
    return array


def _decode_npy(body: bytes | str) -> np.ndarray:
    if isinstance(body, str):
        raise PayloadError("NPY body must be bytes")
    try:
        array = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise PayloadError(f"NPY body does not parse: {exc}") from None
    if not isinstance(array, np.ndarray):  # np.load also opens .npz archives
        raise PayloadError("NPY body must hold a single array (.npy), not an .npz archive")
    return array


_DECODERS = {CSV: _decode_csv, JSON: _decode_json, JSONLINES: _decode_jsonlines, NPY: _decode_npy}


# ---------------------------------------------------------------------------------------------- encode


def encode(prediction: Any, accept: str) -> tuple[bytes, str]:
    """Serialise a prediction as ``accept``; returns the body and its content type."""
    media_type = normalize(accept)
    encoder = _ENCODERS.get(media_type) if media_type else None
    if encoder is None:
        raise UnsupportedContentType(accept, accept=True)
    return encoder(prediction), media_type  # type: ignore[return-value]


def _json_default(value: Any) -> Any:
    # orjson serialises only C-contiguous numeric arrays natively; str/object or sliced arrays land here.
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _encode_json(prediction: Any) -> bytes:
    return orjson.dumps(prediction, default=_json_default, option=_JSON_OPTIONS)


def _rows(prediction: Any) -> list[Any]:
    """The prediction's first axis as Python values (a scalar is one row)."""
    if isinstance(prediction, np.ndarray):
        return [prediction.item()] if prediction.ndim == 0 else prediction.tolist()
    if isinstance(prediction, np.generic):
        return [prediction.item()]
    if isinstance(prediction, list | tuple):
        return list(prediction)
    return [prediction]


def _encode_csv(prediction: Any) -> bytes:
    if isinstance(prediction, dict):
        raise TypeError("a dict prediction cannot be written as text/csv; ask for application/json")
    if isinstance(prediction, np.ndarray) and prediction.ndim > 2:
        raise ValueError(f"a {prediction.ndim}-D prediction cannot be written as text/csv")
    rows = _rows(prediction)
    if all(isinstance(row, float | int) for row in rows):
        return ("\n".join(map(str, rows)) + "\n").encode("utf-8")  # one number a line: no quoting needed
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    for row in rows:
        if isinstance(row, np.ndarray):
            row = row.tolist()
        writer.writerow(row if isinstance(row, list | tuple) else [row])
    return buffer.getvalue().encode("utf-8")


def _encode_jsonlines(prediction: Any) -> bytes:
    rows = [prediction] if isinstance(prediction, dict) else _rows(prediction)
    return b"".join(_encode_json(row) + b"\n" for row in rows)


def _encode_npy(prediction: Any) -> bytes:
    buffer = io.BytesIO()
    try:
        np.save(buffer, np.asarray(prediction), allow_pickle=False)
    except ValueError as exc:
        raise ValueError(f"prediction cannot be written as application/x-npy: {exc}") from None
    return buffer.getvalue()


_ENCODERS = {CSV: _encode_csv, JSON: _encode_json, JSONLINES: _encode_jsonlines, NPY: _encode_npy}


# ---------------------------------------------------------------------------------------------- accept


def choose_accept(accept: str | None, default: str) -> str:
    """The supported response type an Accept header prefers; missing or ``*/*`` means ``default``."""
    if not accept or accept == ANY:
        return default
    if accept in _CANONICAL:
        return accept
    return _negotiate(accept, default)


@lru_cache(maxsize=256)  # clients repeat the same few headers; parsing q-values each time is waste
def _negotiate(accept: str, default: str) -> str:
    ranges = []
    for position, part in enumerate(accept.split(",")):
        media_type, quality = _media_range(part)
        if media_type and quality > 0:
            ranges.append((-quality, position, media_type))
    for _, _, media_type in sorted(ranges):
        chosen = _match(media_type, default)
        if chosen is not None:
            return chosen
    raise UnsupportedContentType(accept, accept=True)


def _media_range(part: str) -> tuple[str, float]:
    media_type, *params = part.split(";")
    quality = 1.0
    for param in params:
        name, _, value = param.partition("=")
        if name.strip().lower() == "q":
            try:
                quality = float(value)
            except ValueError:
                quality = 0.0  # a malformed q is treated as "not acceptable" rather than guessed
    return normalize(media_type) or "", quality


def _match(media_type: str, default: str) -> str | None:
    if media_type == ANY:
        return default
    if media_type in _CANONICAL:
        return media_type
    if media_type.endswith("/*"):  # e.g. text/* -> text/csv; prefer the default when it fits
        prefix = media_type[:-1]
        candidates = [default, *SUPPORTED_CONTENT_TYPES]
        return next((c for c in candidates if c.startswith(prefix)), None)
    return None
