"""Ground-truth labels: where they lie, reading and writing them, and merging them with captured predictions.

A label is a JSON Lines record in SageMaker's shape::

    {"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMetadata": {"eventId": "<id>"}, "eventVersion": "0"}

under ``<prefix>/yyyy/mm/dd/hh/*.jsonl``, the UTC hour in which the label was *collected* (not the
hour of the prediction). ``eventId`` holds the captured record's ``inferenceId`` when it has one,
else its ``eventId``, which is how :func:`merge` matches them, as SageMaker's merge job does.

Reading (:func:`ground_truth_files` + :func:`read_labels`) takes every hour folder collected before
the execution's time, as SageMaker does: a label may arrive days after its prediction, so the
capture window says nothing about where its label is. A label given twice keeps its last record, in
the order hour folder, then file name, then line (:func:`write_labels` names files by the minute,
second and millisecond they were written, so within an hour the name order is the write order);
the replaced ones are counted. A line that is not a label record (cut short by a crash, another
``eventVersion``, no ``eventId``...) is counted by reason, with a few examples, and skipped: one bad
line must not cost a whole execution its labels.

Merging (:func:`merge`) streams the captured records once and keeps columns, not records: the ids,
predictions, probabilities and labels as arrays, for a million predictions within a few hundred MB.
The merged records in SageMaker's shape (the capture record with ``groundTruthData`` added,
``examples_merged-capture-plus-groundtruth-record.json``) go to a temporary file as they are made,
for :meth:`MergeResult.write` (the execution's ``merge/`` output) and :meth:`MergeResult.merged_records`.

This module imports neither pyarrow nor the capture reader, so the SDK's ``send_ground_truth`` (which
calls :func:`write_labels`) works without the ``monitor`` extra.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from moorage.monitor.common.attributes import (
    AttributeExtractionError,
    Extractor,
    extract_ground_truth,
    extractor,
    label_text,
)
from moorage.store import locations
from moorage.store.locations import filesystem, is_local

EVENT_VERSION = "0"
ENCODINGS = ("CSV", "JSON")  # SageMaker documents CSV ("only CSV supported at launch"); its examples use JSON too
BINARY, MULTICLASS, REGRESSION = "BinaryClassification", "MulticlassClassification", "Regression"
PROBLEM_TYPES = (BINARY, MULTICLASS, REGRESSION)
DEFAULT_THRESHOLD = 0.5
MERGED_FILE = "merged.jsonl"
EXAMPLES = 3  # examples kept per kind of failure: enough to see the pattern, small in the execution's record
RESIDUAL_SAMPLE = 10_000


# -- where labels lie ----------------------------------------------------------------------------------
def ground_truth_files(uri: str, until: dt.datetime, since: dt.datetime | None = None) -> list[tuple[Any, str]]:
    """``(filesystem or None for local, path)`` of every label file collected before ``until``.

    An hour folder counts when its hour starts before ``until``: labels collected during the hour
    ``until`` falls in are read with it. ``since`` also leaves out the hour folders that end at or
    before it. SageMaker reads them all; a label cannot be collected before its prediction was made,
    so the capture window's start is a safe ``since`` when the labellers' clocks are right, and
    saves listing years of folders. Order: hour, then file name; only ``*.jsonl`` files count (as
    SageMaker requires), which also leaves out a file :func:`write_labels` has not finished.
    A prefix that does not exist yet has no labels: ``[]``.
    """
    fs, root = _root(uri)
    until = _utc(until)
    since = _utc(since) if since is not None else None
    if fs is None:
        return _local_files(root, since, until)
    return _remote_files(fs, root, since, until)


def _root(uri: str) -> tuple[Any, str]:
    fs, path = filesystem(uri)
    if is_local(fs):
        return None, os.path.abspath(path).rstrip("/") or "/"
    return fs, path.rstrip("/")


def _utc(moment: dt.datetime) -> dt.datetime:
    return moment.astimezone(dt.UTC) if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _overlaps(start: dt.datetime, end: dt.datetime, since: dt.datetime | None, until: dt.datetime) -> bool:
    return start < until and (since is None or end > since)


def _days(names_of: Any, root: str, since: dt.datetime | None, until: dt.datetime) -> Iterator[tuple[dt.datetime, str]]:
    """(day, folder) of the ``yyyy/mm/dd`` folders that may hold hours of ``[since, until)``."""
    for year, year_name in _numbered(names_of(root), 4):
        if year < 1 or not _overlaps(_at(year), _at(year + 1), since, until):
            continue
        for month, month_name in _numbered(names_of(f"{root}/{year_name}"), 2):
            if not 1 <= month <= 12:
                continue
            first = _at(year, month)
            following = _at(year + 1) if month == 12 else _at(year, month + 1)
            if not _overlaps(first, following, since, until):
                continue
            for day, day_name in _numbered(names_of(f"{root}/{year_name}/{month_name}"), 2):
                try:
                    start = _at(year, month, day)
                except ValueError:
                    continue  # 02/30: not a day SageMaker's layout could name
                if _overlaps(start, start + dt.timedelta(days=1), since, until):
                    yield start, f"{root}/{year_name}/{month_name}/{day_name}"


def _hour_kept(day: dt.datetime, hour: int, since: dt.datetime | None, until: dt.datetime) -> bool:
    if not 0 <= hour <= 23:
        return False
    start = day + dt.timedelta(hours=hour)
    return _overlaps(start, start + dt.timedelta(hours=1), since, until)


def _local_files(root: str, since: dt.datetime | None, until: dt.datetime) -> list[tuple[Any, str]]:
    def subfolders(path: str) -> list[str]:
        try:
            return [entry.name for entry in os.scandir(path) if entry.is_dir()]
        except (FileNotFoundError, NotADirectoryError):
            return []

    files: list[tuple[Any, str]] = []
    for day, folder in _days(subfolders, root, since, until):
        for hour, hour_name in _numbered(subfolders(folder), 2):
            if not _hour_kept(day, hour, since, until):
                continue
            path = f"{folder}/{hour_name}"
            try:
                names = sorted(entry.name for entry in os.scandir(path) if entry.is_file())
            except FileNotFoundError:
                continue
            files.extend((None, f"{path}/{name}") for name in names if _is_label_file(name))
    return files


def _remote_files(fs: Any, root: str, since: dt.datetime | None, until: dt.datetime) -> list[tuple[Any, str]]:
    def subfolders(path: str) -> list[str]:
        try:
            return [entry["name"].rstrip("/").rsplit("/", 1)[-1]
                    for entry in fs.ls(path, detail=True) if entry.get("type") == "directory"]
        except FileNotFoundError:
            return []

    files: list[tuple[Any, str]] = []
    for day, folder in _days(subfolders, root, since, until):
        # one recursive listing per day rather than one per hour: 24 times fewer object-store calls
        try:
            found = fs.find(folder)
        except FileNotFoundError:
            continue
        by_hour: dict[int, list[str]] = {}
        for path in found:
            relative = path[len(folder):].strip("/") if path.startswith(folder) else ""
            parts = relative.split("/")
            if len(parts) != 2 or len(parts[0]) != 2 or not parts[0].isdigit() or not _is_label_file(parts[1]):
                continue
            hour = int(parts[0])
            if _hour_kept(day, hour, since, until):
                by_hour.setdefault(hour, []).append(f"{folder}/{parts[0]}/{parts[1]}")
        for hour in sorted(by_hour):
            files.extend((fs, path) for path in sorted(by_hour[hour]))
    return files


def _numbered(names: Iterable[str], width: int) -> list[tuple[int, str]]:
    return sorted((int(name), name) for name in names if len(name) == width and name.isdigit())


def _at(year: int, month: int = 1, day: int = 1) -> dt.datetime:
    return dt.datetime(year, month, day, tzinfo=dt.UTC)


def _is_label_file(name: str) -> bool:
    return name.endswith(".jsonl") and not name.startswith(".")


# -- reading -------------------------------------------------------------------------------------------
@dataclass
class LabelScan:
    """The labels read, by event id, and what the read went through.

    ``labels`` maps an event id to its ``groundTruthData.data`` exactly as given (``"1"``); the
    label itself is :meth:`value` (the CSV field, or the JSON value a ``GroundTruthAttribute``
    names). ``encodings`` holds only the ids whose encoding is not CSV, which keeps a million CSV
    labels to one dict.
    """

    labels: dict[str, str] = field(default_factory=dict)
    encodings: dict[str, str] = field(default_factory=dict)
    files: int = 0
    records: int = 0  # well-formed label records, replaced ones included
    duplicates: int = 0  # records that replaced an earlier label of the same id
    malformed: dict[str, int] = field(default_factory=dict)  # reason -> lines
    examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> a few "path:line: why"

    @property
    def count(self) -> int:
        """Distinct ids with a label."""
        return len(self.labels)

    @property
    def malformed_lines(self) -> int:
        return sum(self.malformed.values())

    def ground_truth_data(self, event_id: str) -> dict[str, str] | None:
        """The record's ``groundTruthData`` (``data`` + ``encoding``), or None without a label."""
        data = self.labels.get(event_id)
        if data is None:
            return None
        return {"data": data, "encoding": self.encodings.get(event_id, "CSV")}

    def value(self, event_id: str, attribute: str | None = None) -> Any:
        """The label of ``event_id`` (raises ``KeyError`` without one, ``AttributeExtractionError`` when unreadable)."""
        data = self.ground_truth_data(event_id)
        if data is None:
            raise KeyError(event_id)
        return extract_ground_truth(data, attribute)

    def counts(self) -> dict[str, Any]:
        return {"Files": self.files, "Records": self.records, "Labels": self.count, "Duplicates": self.duplicates,
                "MalformedLines": self.malformed_lines, "Malformed": dict(self.malformed),
                "Examples": {reason: list(found) for reason, found in self.examples.items()}}

    @classmethod
    def from_mapping(cls, labels: Mapping[str, Any]) -> LabelScan:
        """Labels given in memory: id -> a label (str, int, float, bool) or a ``groundTruthData`` dict."""
        scan = cls()
        for event_id, label in labels.items():
            if isinstance(label, Mapping):
                encoding = str(label.get("encoding") or "CSV").upper()
                data = label.get("data")
                scan.labels[str(event_id)] = data if isinstance(data, str) else label_text(data)
                if encoding != "CSV":
                    scan.encodings[str(event_id)] = encoding
            else:
                scan.labels[str(event_id)] = label_text(label)
        scan.records = len(scan.labels)
        return scan

    def _count(self, reason: str, where: str) -> None:
        self.malformed[reason] = self.malformed.get(reason, 0) + 1
        found = self.examples.setdefault(reason, [])
        if len(found) < EXAMPLES:
            found.append(where[:300])


class _Malformed(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


def read_labels(files: Sequence[tuple[Any, str]]) -> LabelScan:
    """Every label in ``files`` (as :func:`ground_truth_files` lists them); never raises for bad data.

    A file that vanished between listing and reading is counted (``unreadable_file``) like a bad line.
    """
    scan = LabelScan()
    labels, encodings = scan.labels, scan.encodings
    for fs, path in files:
        scan.files += 1
        try:
            handle = open(path, "rb") if fs is None else fs.open(path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            scan._count("unreadable_file", f"{path}: {exc}")
            continue
        with handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    event_id, data, encoding = _label_record(line)
                except _Malformed as exc:
                    scan._count(exc.reason, f"{path}:{number}: {exc}")
                    continue
                scan.records += 1
                if event_id in labels:
                    scan.duplicates += 1
                labels[event_id] = data
                if encoding != "CSV":
                    encodings[event_id] = encoding
                elif encodings:
                    encodings.pop(event_id, None)  # a later CSV label replaces an earlier JSON one
    return scan


def _label_record(line: bytes) -> tuple[str, str, str]:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise _Malformed("bad_json", f"not JSON ({exc})") from None
    if not isinstance(record, dict):
        raise _Malformed("not_an_object", f"a JSON {type(record).__name__}, not a record")
    version = record.get("eventVersion")
    if version is None:
        raise _Malformed("missing_field", "no eventVersion")
    if version != EVENT_VERSION:
        raise _Malformed("wrong_event_version", f"eventVersion {version!r}, not {EVENT_VERSION!r}")
    truth = record.get("groundTruthData")
    metadata = record.get("eventMetadata")
    if not isinstance(truth, dict) or "data" not in truth:
        raise _Malformed("missing_field", "no groundTruthData.data")
    if not isinstance(metadata, dict) or metadata.get("eventId") in (None, ""):
        raise _Malformed("missing_field", "no eventMetadata.eventId")
    event_id = metadata["eventId"]
    if isinstance(event_id, int) and not isinstance(event_id, bool):
        event_id = str(event_id)  # a number written by hand for a numeric inferenceId
    elif not isinstance(event_id, str):
        raise _Malformed("bad_field", f"eventMetadata.eventId is a {type(event_id).__name__}")
    data = truth["data"]
    if not isinstance(data, str):
        if isinstance(data, bool | int | float) and data is not None:
            data = label_text(data)  # "data": 1 written by hand: the CSV text it stands for
        else:
            raise _Malformed("bad_field", f"groundTruthData.data is a {type(data).__name__}, not text")
    encoding = truth.get("encoding")
    encoding = "CSV" if encoding is None else str(encoding).upper()
    if encoding not in ENCODINGS:
        raise _Malformed("unknown_encoding", f"encoding {truth.get('encoding')!r} (CSV or JSON)")
    return event_id, data, encoding


# -- writing -------------------------------------------------------------------------------------------
def write_labels(uri: str, items: Iterable[tuple[str, Any]], when: dt.datetime | None = None) -> str:
    """Write ``(event id, label)`` pairs as one SageMaker label file for the collection hour ``when``.

    The file is ``<uri>/yyyy/mm/dd/hh/MM-SS-mmm-<uuid>.jsonl`` (``when`` defaults to now, UTC), each
    label CSV-encoded text (:func:`~moorage.monitor.common.attributes.label_text`: bools as 1/0).
    Readers never see half a file: locally it is written under a hidden name and renamed; remotely it
    is one put. Every pair is checked before anything is written. Returns the file's URL.
    """
    moment = _utc(when) if when is not None else dt.datetime.now(dt.UTC)
    lines = []
    for event_id, label in items:
        if not isinstance(event_id, str) or not event_id:
            raise ValueError(f"a label's event id must be a non-empty string, not {event_id!r}")
        lines.append(orjson.dumps({"groundTruthData": {"data": label_text(label), "encoding": "CSV"},
                                   "eventMetadata": {"eventId": event_id}, "eventVersion": EVENT_VERSION}))
    if not lines:
        raise ValueError("no labels to write")
    body = b"\n".join(lines) + b"\n"
    hour = f"{moment:%Y/%m/%d/%H}"
    name = f"{moment:%M-%S}-{moment.microsecond // 1000:03d}-{uuid.uuid4()}.jsonl"
    fs, root = _root(uri)
    if fs is None:
        folder = os.path.join(root, *hour.split("/"))
        os.makedirs(folder, exist_ok=True)
        partial = os.path.join(folder, f".{name}.partial")
        try:
            with open(partial, "wb") as out:
                out.write(body)
            os.replace(partial, os.path.join(folder, name))
        except BaseException:
            try:
                os.unlink(partial)
            except OSError:
                pass
            raise
    else:
        fs.pipe_file(f"{root}/{hour}/{name}", body)
    return locations.join(uri, f"{hour}/{name}")


# -- merging -------------------------------------------------------------------------------------------
@dataclass(eq=False)  # arrays and a temporary file: equality would mean nothing
class MergeResult:
    """Captured predictions joined with their labels: counts, columns, and the merged records.

    Row ``i`` of ``ids``, ``predictions``, ``labels`` (and ``probabilities``) is one usable matched
    prediction, in capture order. Columns are float64 when every value is a number (``"1"`` included)
    and strings otherwise; a regression's are always float64. ``all_scores`` holds the probability
    of every captured prediction of the window, labelled or not (label-free estimates need them).
    """

    captured: int = 0
    matched: int = 0  # captured records with a label (a record left out as unusable included)
    missing_label: int = 0  # captured records without a label: left out
    unknown_labels: int = 0  # labels whose id no captured record of the window has: not an error
    without_id: int = 0  # captured records with neither inferenceId nor eventId
    duplicate_ids: int = 0  # matched records whose id an earlier matched record had (both kept)
    unusable: int = 0  # matched records whose prediction, probability or label cannot be read
    labels_read: int = 0
    errors: dict[str, int] = field(default_factory=dict)  # "prediction.missing" -> records
    error_examples: dict[str, list[str]] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    predictions: np.ndarray = field(default_factory=lambda: np.empty(0))
    labels: np.ndarray = field(default_factory=lambda: np.empty(0))
    probabilities: np.ndarray | None = None
    all_scores: np.ndarray | None = None
    _spool: Any = field(default=None, repr=False)

    @property
    def rows(self) -> int:
        return len(self.ids)

    def pairs(self) -> list[tuple[Any, Any]]:
        """(prediction, label) of every row."""
        return list(zip(self.predictions.tolist(), self.labels.tolist(), strict=True))

    def counts(self) -> dict[str, Any]:
        return {"Captured": self.captured, "Matched": self.matched, "MissingLabel": self.missing_label,
                "UnknownLabels": self.unknown_labels, "WithoutId": self.without_id,
                "DuplicateIds": self.duplicate_ids, "Unusable": self.unusable, "Rows": self.rows,
                "LabelsRead": self.labels_read, "Errors": dict(self.errors),
                "ErrorExamples": {kind: list(found) for kind, found in self.error_examples.items()}}

    def merged_lines(self) -> Iterator[bytes]:
        """The merged records as JSON lines (with the newline), in capture order."""
        if self._spool is None:
            raise RuntimeError("merge(..., keep_merged=False) kept no merged records")
        self._spool.flush()
        with open(self._spool.name, "rb") as handle:
            yield from handle

    def merged_records(self) -> Iterator[dict[str, Any]]:
        """The merged records as SageMaker's merge job writes them (see :func:`merged_line`)."""
        for line in self.merged_lines():
            yield orjson.loads(line)

    def write(self, folder_uri: str, name: str = MERGED_FILE) -> str:
        """The merged records as ``<folder_uri>/<name>`` (JSON Lines); returns its URL."""
        if self._spool is None:
            raise RuntimeError("merge(..., keep_merged=False) kept no merged records")
        self._spool.flush()
        fs, root = _root(folder_uri)
        if fs is None:
            os.makedirs(root, exist_ok=True)
            partial = os.path.join(root, f".{name}.partial")
            shutil.copyfile(self._spool.name, partial)
            os.replace(partial, os.path.join(root, name))
        else:
            fs.put_file(self._spool.name, f"{root}/{name}")
        return locations.join(folder_uri, name)

    def residual_sample(self, limit: int = RESIDUAL_SAMPLE, seed: int = 0) -> np.ndarray | None:
        """``label - prediction`` of up to ``limit`` rows (a fixed sample), when both are numbers."""
        if self.predictions.dtype.kind != "f" or self.labels.dtype.kind != "f" or not self.rows:
            return None
        residuals = self.labels - self.predictions
        if len(residuals) > limit:
            chosen = np.sort(np.random.default_rng(seed).choice(len(residuals), size=limit, replace=False))
            residuals = residuals[chosen]
        return residuals

    def close(self) -> None:
        """Remove the temporary file of merged records (also done when the result is collected)."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None

    def _fail(self, which: str, exc: Exception, event_id: str) -> None:
        kind = f"{which}.{getattr(exc, 'reason', 'not_a_number')}"
        self.errors[kind] = self.errors.get(kind, 0) + 1
        found = self.error_examples.setdefault(kind, [])
        if len(found) < EXAMPLES:
            found.append(f"{event_id}: {exc}"[:300])


def merge(captured: Iterable[dict[str, Any]], labels: LabelScan | Mapping[str, Any], *,
          inference_attribute: str | None = None, probability_attribute: str | None = None,
          ground_truth_attribute: str | None = None, probability_threshold: float | None = None,
          problem_type: str | None = None, keep_merged: bool = True) -> MergeResult:
    """Join captured records (``capture_reader.read_records``) with their labels, in one pass.

    A record's key is its ``eventMetadata.inferenceId``, else its ``eventId``. The prediction is
    ``inference_attribute`` of ``captureData.endpointOutput``; without one, a binary classifier's
    (or, with no ``problem_type``, any model's) prediction with a ``probability_attribute`` is
    ``1 if probability >= probability_threshold (0.5) else 0``, and otherwise the whole output is
    the prediction. A matched record whose values cannot be read is counted in ``errors`` by kind
    and left out of the columns (but not of the merged records: SageMaker's merge does not read
    values). ``keep_merged=False`` skips writing the merged records when only metrics are wanted.
    An attribute that is no index or path raises :class:`~.attributes.InvalidAttribute` before any
    record is read.
    """
    if problem_type is not None and problem_type not in PROBLEM_TYPES:
        raise ValueError(f"unknown problem type {problem_type!r}: one of {', '.join(PROBLEM_TYPES)}")
    scan = labels if isinstance(labels, LabelScan) else LabelScan.from_mapping(labels)
    predict = extractor(inference_attribute)
    score_of = extractor(probability_attribute) if probability_attribute else None
    truth = extractor(ground_truth_attribute)
    threshold = DEFAULT_THRESHOLD if probability_threshold is None else float(probability_threshold)
    derive = (inference_attribute is None or not str(inference_attribute).strip()) and score_of is not None \
        and problem_type in (None, BINARY)
    numeric = problem_type == REGRESSION

    result = MergeResult(labels_read=scan.count)
    spool = tempfile.NamedTemporaryFile(prefix="moorage-merged-", suffix=".jsonl") if keep_merged else None  # noqa: SIM115 - owned by the result
    result._spool = spool
    label_of = scan.labels.get
    encodings = scan.encodings
    seen: set[str] = set()
    ids: list[str] = []
    predictions: list[Any] = []
    probabilities: list[float] = []
    truths: list[Any] = []
    all_scores: list[float] = []
    for record in captured:
        result.captured += 1
        try:
            metadata = record["eventMetadata"]
            key = metadata.get("inferenceId") or metadata.get("eventId")
        except (KeyError, TypeError, AttributeError):
            key = None
        if not isinstance(key, str) or not key:
            result.without_id += 1
            continue
        data = label_of(key)
        score: float | None = None
        score_error: Exception | None = None
        if score_of is not None:
            # every record's score, labelled or not: label-free estimates use the whole window
            try:
                score = _number(score_of(_output(record)))
                if not 0.0 <= score <= 1.0:  # not a probability: counted, never a failed execution
                    raise AttributeExtractionError("out_of_range", f"the probability {score} is outside [0, 1]")
                all_scores.append(score)
            except (AttributeExtractionError, TypeError, ValueError) as exc:
                score_error = exc
        if data is None:
            result.missing_label += 1
            continue
        result.matched += 1
        if key in seen:
            result.duplicate_ids += 1
        else:
            seen.add(key)
        encoding = encodings.get(key, "CSV") if encodings else "CSV"
        if spool is not None:
            spool.write(merged_line(record, data, encoding))

        if score_error is not None:
            result.unusable += 1
            result._fail("probability", score_error, key)
            continue
        which = "prediction"
        try:
            if derive:
                prediction: Any = 1.0 if score is not None and score >= threshold else 0.0
            else:
                prediction = predict(_output(record))
                if isinstance(prediction, list):
                    raise AttributeExtractionError("batched", "the prediction is a list of several")
                if numeric:
                    prediction = _number(prediction)
            which = "label"
            label = _label(truth, data, encoding)
            if isinstance(label, list):
                raise AttributeExtractionError("batched", "the label is a list of several")
            if numeric:
                label = _number(label)
        except (AttributeExtractionError, TypeError, ValueError) as exc:
            result.unusable += 1
            result._fail(which, exc, key)
            continue
        ids.append(key)
        predictions.append(prediction)
        truths.append(label)
        if score is not None:
            probabilities.append(score)

    if spool is not None:
        spool.flush()
    result.unknown_labels = scan.count - len(seen)
    result.ids = ids
    result.predictions, result.labels = _columns(predictions, truths)
    if score_of is not None:
        result.probabilities = np.asarray(probabilities, dtype=np.float64)
        result.all_scores = np.asarray(all_scores, dtype=np.float64)
    return result


def _output(record: dict[str, Any]) -> Any:
    try:
        return record["captureData"]["endpointOutput"]
    except (KeyError, TypeError):
        return None  # the extractor says "missing": an endpoint capturing its input only


def _label(truth: Extractor, data: str, encoding: str) -> Any:
    if truth.steps is None and encoding == "CSV" and not _needs_csv(data):
        # the usual label, "1": no parsing at all
        value = data.strip()
        if not value:
            raise AttributeExtractionError("empty", "the label is empty")
        return value
    return truth.from_text(data, "json" if encoding == "JSON" else "csv")


def _needs_csv(text: str) -> bool:
    return "," in text or '"' in text or "\n" in text or "\r" in text


def _number(value: Any) -> float:
    if isinstance(value, str | int | float):  # bool is an int: true is 1
        number = float(value)
    else:
        raise AttributeExtractionError("not_a_number", f"{type(value).__name__} is not a number")
    if number != number:
        raise AttributeExtractionError("not_a_number", "NaN")
    return number


def _columns(predictions: list[Any], labels: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    """Both columns as float64 when every value is a number, else both as text (so they compare)."""
    try:
        return np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    except (TypeError, ValueError):
        pass
    as_text = np.empty(len(predictions), dtype=object), np.empty(len(labels), dtype=object)
    as_text[0][:] = [_text(v) for v in predictions]
    as_text[1][:] = [_text(v) for v in labels]
    return as_text


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))  # 1.0 from JSON and "1" from CSV are the same class
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else str(value)


_SORTED = orjson.OPT_SORT_KEYS
_TOP = ("eventVersion", "groundTruthData", "captureData", "eventMetadata")


def merged_line(record: Mapping[str, Any], data: str, encoding: str = "CSV") -> bytes:
    """One merged record as a JSON line, in the shape of SageMaker's merge output.

    That output (``examples_merged-capture-plus-groundtruth-record.json``) is ``eventVersion``,
    ``groundTruthData`` (``data``, ``encoding``), ``captureData``, ``eventMetadata`` in that order,
    with every nested object's keys sorted (Spark's JSON schema sorts them). Built from pieces so
    that a million records cost one small ``orjson.dumps`` each, not a rebuilt dict.
    """
    parts = [b'{"eventVersion":', orjson.dumps(record.get("eventVersion", EVENT_VERSION)),
             b',"groundTruthData":{"data":', orjson.dumps(data), b',"encoding":', orjson.dumps(encoding),
             b'},"captureData":', orjson.dumps(record.get("captureData", {}), option=_SORTED),
             b',"eventMetadata":', orjson.dumps(record.get("eventMetadata", {}), option=_SORTED)]
    if len(record) != 3 or "eventVersion" not in record:
        for key in sorted(k for k in record if k not in _TOP):
            parts += [b",", orjson.dumps(key), b":", orjson.dumps(record[key], option=_SORTED)]
    parts.append(b"}\n")
    return b"".join(parts)


def merged_record(record: Mapping[str, Any], ground_truth_data: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`merged_line` as a dict (key order kept)."""
    return orjson.loads(merged_line(record, str(ground_truth_data.get("data", "")),
                                    str(ground_truth_data.get("encoding") or "CSV")))
