"""Captured traffic of an endpoint in a time window, as record batches with the baseline's feature names.

Files are found the way SageMaker lays them out (``{destination}/{endpoint}/{variant}/yyyy/mm/dd/hh/
*.jsonl``, by the UTC hour of the invocation): only the hour folders the window touches are listed,
and only records whose ``inferenceTime`` lies in ``[start, end)`` are kept.

Each record's ``endpointInput`` (and ``endpointOutput`` when the job asks, SageMaker's
``dataset_format`` ``captureIndexNames``) is decoded by its ``encoding`` and content type:

- CSV: every line is a row; fields stay text (the profiler infers their types as Deequ does from a
  CSV file, so they compare with a baseline made from one); an empty field is missing;
- JSON and JSON Lines: ``{"instances": [...]}``, ``{"features": [...]}``, a list of rows, one row
  (a list or an object), one row per line;
- BASE64: decoded, then read by its content type (CSV, JSON, ``application/x-npy``).

A positional row's values are named after the baseline's features in order (``_c{i}`` past them,
as Spark names CSV columns); an object's keys are its feature names. With the output side too,
the output's values follow the input's in the same row.

A record preprocessor (SageMaker's ``RecordPreprocessorSourceUri``) is a Python file defining
``preprocess_handler(inference_record)``; it gets each record (``inference_record.endpoint_input.
data``, ``.endpoint_output``, ``.event_metadata``) and returns a dict (one row: feature -> value;
zero-padded number keys, as SageMaker's examples write them, are positions), a list of dicts (many
rows), a list of values (one positional row), or None / ``[]`` to leave the record out.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import importlib.util
import io
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
import pyarrow as pa

from moorage.capture.config import Destination, media_type
from moorage.monitor.common.datasets import records_to_batch
from moorage.store.locations import open_url

INPUT, OUTPUT = "endpointInput", "endpointOutput"
BATCH_ROWS = 20_000


class CaptureReadError(ValueError):
    """Captured data that cannot be read at all (a destination that cannot be listed, a broken preprocessor)."""


@dataclass
class CaptureScan:
    """What a read went through, for the execution's record and its failure messages."""

    files: int = 0
    records: int = 0  # in the window
    rows: int = 0
    outside_window: int = 0
    malformed_lines: int = 0
    undecodable: int = 0  # records whose data could not be turned into rows
    dropped_by_preprocessor: int = 0
    folders: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"Files": self.files, "Records": self.records, "Rows": self.rows,
                "OutsideWindow": self.outside_window, "MalformedLines": self.malformed_lines,
                "Undecodable": self.undecodable, "DroppedByPreprocessor": self.dropped_by_preprocessor}


def hours(start: dt.datetime, end: dt.datetime) -> list[dt.datetime]:
    """The UTC hours whose folders may hold records of ``[start, end)``."""
    first = start.astimezone(dt.UTC).replace(minute=0, second=0, microsecond=0)
    last = (end.astimezone(dt.UTC) - dt.timedelta(microseconds=1)).replace(minute=0, second=0, microsecond=0)
    out = []
    while first <= last:
        out.append(first)
        first += dt.timedelta(hours=1)
    return out


def capture_files(destination_uri: str, endpoint: str, start: dt.datetime, end: dt.datetime,
                  scan: CaptureScan | None = None) -> list[tuple[Any, str]]:
    """``(filesystem or None, path)`` of every capture file in the window's hour folders, all variants."""
    destination = Destination.parse(destination_uri)
    scan = scan if scan is not None else CaptureScan()
    base = f"{destination.root}/{endpoint}"
    fs = None if destination.local else destination.fs
    try:
        variants = _list_dirs(fs, base)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CaptureReadError(f"cannot list captured data under {base}: {exc}") from exc
    files: list[tuple[Any, str]] = []
    for variant in sorted(variants):
        for hour in hours(start, end):
            folder = f"{base}/{variant}/{hour:%Y/%m/%d/%H}"
            scan.folders.append(folder)
            try:
                names = _list_files(fs, folder)
            except FileNotFoundError:
                continue
            files.extend((fs, f"{folder}/{name}") for name in sorted(names) if name.endswith(".jsonl"))
    scan.files = len(files)
    return files


def _list_dirs(fs: Any, path: str) -> list[str]:
    if fs is None:
        return [e.name for e in os.scandir(path) if e.is_dir()]
    if not fs.exists(path):
        raise FileNotFoundError(path)
    return [p["name"].rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=True) if p["type"] == "directory"]


def _list_files(fs: Any, path: str) -> list[str]:
    if fs is None:
        return [e.name for e in os.scandir(path) if e.is_file()]
    if not fs.exists(path):
        raise FileNotFoundError(path)
    return [p["name"].rsplit("/", 1)[-1] for p in fs.ls(path, detail=True) if p["type"] == "file"]


def read_records(files: Sequence[tuple[Any, str]], start: dt.datetime, end: dt.datetime,
                 scan: CaptureScan) -> Iterator[dict[str, Any]]:
    """The capture records of ``[start, end)``, file by file; a broken line is counted and skipped."""
    for fs, path in files:
        opener = open(path, "rb") if fs is None else fs.open(path, "rb")  # noqa: SIM115 - closed below
        with opener as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                    moment = _inference_time(record)
                except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError):
                    # a line cut short by a kill in the middle of a write, or not a capture record
                    scan.malformed_lines += 1
                    continue
                if not start <= moment < end:
                    scan.outside_window += 1
                    continue
                scan.records += 1
                yield record


def _inference_time(record: dict[str, Any]) -> dt.datetime:
    text = record["eventMetadata"]["inferenceTime"]
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


# -- decoding ---------------------------------------------------------------------------------------
def side_bytes_and_type(side: dict[str, Any]) -> tuple[bytes | str, str]:
    """(data, media type) of one side; text stays text, base64 becomes bytes."""
    kind = media_type(side.get("observedContentType"))
    data = side.get("data") or ""
    encoding = str(side.get("encoding", "")).upper()
    if encoding == "BASE64":
        return base64.b64decode(data), kind
    if encoding == "CSV" and not kind:
        kind = "text/csv"
    if encoding == "JSON" and not kind:
        kind = "application/json"
    return data, kind


def decode_rows(side: dict[str, Any]) -> list[list[Any] | dict[str, Any]]:
    """One side of a record as rows: lists (positional) or dicts (named)."""
    data, kind = side_bytes_and_type(side)
    if kind == "application/x-npy" and isinstance(data, bytes):
        import numpy as np

        array = np.load(io.BytesIO(data), allow_pickle=False)
        array = array.reshape(1, -1) if array.ndim <= 1 else array.reshape(array.shape[0], -1)
        return [list(row) for row in array.tolist()]
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    if "json" in kind:
        return _json_rows(text)
    if "csv" in kind or str(side.get("encoding", "")).upper() == "CSV":
        return _csv_rows(text)
    raise ValueError(f"cannot read captured data of content type {kind or 'unknown'!r}")


def _csv_rows(text: str) -> list[list[Any]]:
    rows = []
    for fields in csv.reader(io.StringIO(text)):
        if fields:
            rows.append([value if value != "" else None for value in fields])
    return rows


def _json_rows(text: str) -> list[list[Any] | dict[str, Any]]:
    try:
        documents = [orjson.loads(text)]
    except orjson.JSONDecodeError:
        documents = [orjson.loads(line) for line in text.splitlines() if line.strip()]  # JSON Lines
    rows: list[list[Any] | dict[str, Any]] = []
    for document in documents:
        rows.extend(_rows_of(document))
    return rows


def _rows_of(document: Any) -> list[list[Any] | dict[str, Any]]:
    if isinstance(document, dict):
        for key in ("instances", "predictions"):
            if key in document:
                return _rows_of(document[key])
        if len(document) == 1:
            key, inner = next(iter(document.items()))
            if key in ("features", "inputs", "data") and isinstance(inner, list):
                return _rows_of(inner)
        return [{k: _scalar(v) for k, v in document.items()}]
    if isinstance(document, list):
        if document and all(isinstance(item, list | dict) for item in document):
            return [row for item in document for row in _rows_of(item)]
        return [[_scalar(v) for v in document]]
    return [[_scalar(document)]]


def _scalar(value: Any) -> Any:
    if isinstance(value, dict | list):
        return orjson.dumps(value).decode()
    return value


# -- the record preprocessor ----------------------------------------------------------------------------
def load_preprocessor(uri: str) -> Callable[[Any], Any]:
    """``preprocess_handler`` from a Python file at a path, ``file://`` or ``s3://`` URL."""
    local = uri.removeprefix("file://") if "://" not in uri or uri.startswith("file://") else None
    try:
        if local is None:
            with open_url(uri) as handle:
                source = handle.read()
            folder = tempfile.mkdtemp(prefix="moorage-preprocessor-")
            local = os.path.join(folder, "preprocessor.py")
            with open(local, "wb") as out:
                out.write(source)
        spec = importlib.util.spec_from_file_location("moorage_record_preprocessor", local)
        if spec is None or spec.loader is None:
            raise CaptureReadError(f"record preprocessor {uri} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    except CaptureReadError:
        raise
    except Exception as exc:
        raise CaptureReadError(f"cannot load the record preprocessor {uri}: {type(exc).__name__}: {exc}") from exc
    handler = getattr(module, "preprocess_handler", None)
    if not callable(handler):
        raise CaptureReadError(f"the record preprocessor {uri} defines no preprocess_handler(inference_record)")
    return handler


def inference_record(record: dict[str, Any]) -> SimpleNamespace:
    """A record as SageMaker hands it to ``preprocess_handler``."""
    capture = record.get("captureData", {})
    metadata = record.get("eventMetadata", {})

    def side(doc: dict[str, Any] | None) -> SimpleNamespace | None:
        if doc is None:
            return None
        return SimpleNamespace(observed_content_type=doc.get("observedContentType"), mode=doc.get("mode"),
                               data=doc.get("data"), encoding=doc.get("encoding"))

    custom = metadata.get("customAttributes")
    return SimpleNamespace(
        endpoint_input=side(capture.get(INPUT)), endpoint_output=side(capture.get(OUTPUT)),
        event_metadata=SimpleNamespace(event_id=metadata.get("eventId"), inference_id=metadata.get("inferenceId"),
                                       inference_time=metadata.get("inferenceTime"),
                                       custom_attribute=custom[0] if isinstance(custom, list) and custom else custom),
        event_version=record.get("eventVersion"))


def _preprocessed_rows(result: Any) -> list[list[Any] | dict[str, Any]]:
    if result is None:
        return []
    if isinstance(result, dict):
        if result and all(str(k).isdigit() for k in result):
            return [[_scalar(result[k]) for k in sorted(result, key=lambda k: int(k))]]
        return [{str(k): _scalar(v) for k, v in result.items()}]
    if isinstance(result, str):
        return _csv_rows(result)
    if isinstance(result, list | tuple):
        if not result:
            return []
        if all(isinstance(r, dict | list | tuple) for r in result):
            return [r for item in result for r in _preprocessed_rows(item if isinstance(item, dict) else list(item))]
        return [[_scalar(v) for v in result]]
    return [[_scalar(result)]]


# -- the whole read ------------------------------------------------------------------------------------
@dataclass
class CaptureReader:
    destination_uri: str
    endpoint: str
    start: dt.datetime
    end: dt.datetime
    feature_names: Sequence[str] = ()
    sides: Sequence[str] = (INPUT,)
    preprocessor: Callable[[Any], Any] | None = None
    batch_rows: int = BATCH_ROWS
    scan: CaptureScan = field(default_factory=CaptureScan)

    def batches(self) -> Iterator[pa.RecordBatch]:
        files = capture_files(self.destination_uri, self.endpoint, self.start, self.end, self.scan)
        pending: list[dict[str, Any]] = []
        for record in read_records(files, self.start, self.end, self.scan):
            rows = self._rows(record)
            if rows is None:
                continue
            pending.extend(rows)
            if len(pending) >= self.batch_rows:
                self.scan.rows += len(pending)
                yield records_to_batch(pending)
                pending = []
        if pending:
            self.scan.rows += len(pending)
            yield records_to_batch(pending)

    def _rows(self, record: dict[str, Any]) -> list[dict[str, Any]] | None:
        if self.preprocessor is not None:
            try:
                result = self.preprocessor(inference_record(record))
            except Exception as exc:
                raise CaptureReadError(
                    f"the record preprocessor failed on event {record.get('eventMetadata', {}).get('eventId')}: "
                    f"{type(exc).__name__}: {exc}") from exc
            rows = _preprocessed_rows(result)
            if not rows:
                self.scan.dropped_by_preprocessor += 1
                return None
            return [self._named(row) for row in rows]
        capture = record.get("captureData", {})
        try:
            parts = [decode_rows(capture[side]) for side in self.sides if capture.get(side)]
        except (ValueError, UnicodeDecodeError, TypeError) as exc:
            del exc
            self.scan.undecodable += 1
            return None
        if not parts or not parts[0]:
            self.scan.undecodable += 1
            return None
        return [self._named(row) for row in _joined(parts)]

    def _named(self, row: list[Any] | dict[str, Any]) -> dict[str, Any]:
        if isinstance(row, dict):
            return row
        names = self.feature_names
        return {(names[i] if i < len(names) else f"_c{i}"): value for i, value in enumerate(row)}


def _joined(parts: list[list[list[Any] | dict[str, Any]]]) -> list[list[Any] | dict[str, Any]]:
    """Input rows with the output's values after them (one output row per input row)."""
    rows = parts[0]
    for extra in parts[1:]:
        if len(extra) == 1 and len(rows) > 1 and isinstance(extra[0], list) and len(extra[0]) == len(rows):
            extra = [[value] for value in extra[0]]  # {"predictions": [a, b]} for two input rows
        if len(extra) != len(rows):
            continue  # cannot pair them: keep the input alone
        joined: list[list[Any] | dict[str, Any]] = []
        for row, more in zip(rows, extra, strict=True):
            if isinstance(row, list) and isinstance(more, list):
                joined.append([*row, *more])
            else:
                left = row if isinstance(row, dict) else {f"_c{i}": v for i, v in enumerate(row)}
                right = more if isinstance(more, dict) else {f"_c{len(left) + i}": v for i, v in enumerate(more)}
                joined.append({**left, **right})
        rows = joined
    return rows
