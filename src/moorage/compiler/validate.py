"""The validation sample (a CSV file) and the comparison of the compiled model with the original on it.

The sample: one record a line, numeric feature columns (an empty cell is a missing value), optionally a
label column (``label_column``: a 0-based index, negative from the end, or a header name). A first line
with a cell that is not a number is a header.

Classification compares predicted labels: the agreement rate of compiled and original, and with a label
column the accuracy of each; the drop is the accuracy lost (with labels) or the share of records whose
label changed (without). Regression compares values: the largest absolute error and that error relative to
the original predictions' mean magnitude (a relative error per record explodes near zero); the drop is
that relative error. Either way the drop is refused above the tolerance.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from moorage.compiler.export import CLASSIFICATION, Exported, Outputs
from moorage.compiler.source import CompileError
from moorage.store.locations import StorageError, open_url


@dataclass
class Sample:
    features: np.ndarray  # float32 [records, features]
    labels: np.ndarray | None
    header: list[str] | None
    location: str


class ValidationFailed(CompileError):
    """The compiled model's drop against the original exceeds the tolerance; ``report`` holds the measures."""

    def __init__(self, message: str, report: dict[str, Any]):
        super().__init__(message)
        self.report = report


def _number(cell: str) -> float | None:
    if cell.strip() == "":
        return math.nan
    try:
        return float(cell)
    except ValueError:
        return None


def read_sample(location: str, label_column: str | int | None = None) -> Sample:
    try:
        with open_url(location, "rb") as handle:
            text = handle.read().decode("utf-8-sig")
    except FileNotFoundError as exc:
        raise CompileError(f"Could not find the validation sample at {location}.") from exc
    except (OSError, StorageError, UnicodeDecodeError) as exc:
        raise CompileError(f"Could not read the validation sample at {location}: {exc}") from exc
    rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
    if not rows:
        raise CompileError(f"The validation sample {location} has no records.")
    header = None
    if any(_number(cell) is None for cell in rows[0]):
        header, rows = [cell.strip() for cell in rows[0]], rows[1:]
    if not rows:
        raise CompileError(f"The validation sample {location} has a header and no records.")
    width = len(rows[0])
    for number, row in enumerate(rows, start=2 if header else 1):
        if len(row) != width:
            raise CompileError(f"The validation sample {location}: line {number} has {len(row)} columns, the first "
                               f"record {width}.")
    label_index = _label_index(label_column, header, width, location)
    labels = None
    if label_index is not None:
        raw = [row[label_index].strip() for row in rows]
        numeric = [_number(v) for v in raw]
        numeric_labels = all(v is not None for v in numeric)
        labels = np.array(numeric, dtype=np.float64) if numeric_labels else np.array(raw, dtype=object)
        rows = [row[:label_index] + row[label_index + 1:] for row in rows]
    values = []
    for number, row in enumerate(rows, start=2 if header else 1):
        cells = [_number(cell) for cell in row]
        if any(v is None for v in cells):
            bad = next(cell for cell, v in zip(row, cells, strict=True) if v is None)
            raise CompileError(f"The validation sample {location}: line {number} has a non-numeric feature {bad!r} "
                               "(name the label column with --label-column if it is one).")
        values.append(cells)
    features = np.array(values, dtype=np.float64).astype(np.float32)
    return Sample(features, labels, header, location)


def _label_index(label_column: str | int | None, header: list[str] | None, width: int, location: str) -> int | None:
    if label_column is None or label_column == "":
        return None
    text = str(label_column).strip()
    try:
        index = int(text)
    except ValueError:
        if header is None or text not in header:
            raise CompileError(f"The validation sample {location} has no column named {text!r}"
                               + (f" (columns: {', '.join(header)})" if header else " (it has no header)")) from None
        return header.index(text)
    if not -width <= index < width:
        raise CompileError(f"--label-column {index}: the validation sample has {width} columns.")
    return index % width


def _same(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise equality of two label arrays, numbers compared as numbers (1 == 1.0), else as text."""
    try:
        return np.asarray(a, dtype=np.float64) == np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(a).astype(str) == np.asarray(b).astype(str)


def _float_outputs(original: Outputs, compiled: Outputs) -> list[str]:
    names = []
    for name, value in original.items():
        other = compiled.get(name)
        if other is None:
            continue
        a, b = np.asarray(value), np.asarray(other)
        if a.dtype.kind == "f" and b.dtype.kind in "fiu" and a.size == b.size:
            names.append(name)
    return names


def compare(exported: Exported, original: Outputs, compiled: Outputs, labels: np.ndarray | None,
            tolerance: float) -> dict[str, Any]:
    """The validation report (what the manifest records); ``passed`` says whether the drop is within tolerance."""
    records = len(next(iter(original.values())))
    report: dict[str, Any] = {"records": records, "task": exported.task, "tolerance": tolerance}
    errors = {}
    for name in _float_outputs(original, compiled):
        a = np.asarray(original[name], dtype=np.float64).reshape(records, -1)
        b = np.asarray(compiled[name], dtype=np.float64).reshape(records, -1)
        errors[name] = float(np.nanmax(np.abs(a - b))) if a.size else 0.0
    if errors:
        report["max_abs_error"] = max(errors.values())
        report["max_abs_error_by_output"] = errors
    if exported.task == CLASSIFICATION:
        want, got = exported.labels(original), exported.labels(compiled)
        if want is None or got is None:
            raise CompileError("The classifier's labels cannot be read from its outputs; pass --task regression "
                               "to compare its raw outputs.")
        report["agreement"] = float(_same(want, got).mean())
        if labels is not None:
            report["accuracy_original"] = float(_same(want, labels).mean())
            report["accuracy_compiled"] = float(_same(got, labels).mean())
            report["metric"] = "accuracy"
            report["drop"] = max(0.0, report["accuracy_original"] - report["accuracy_compiled"])
        else:
            report["metric"] = "agreement"
            report["drop"] = 1.0 - report["agreement"]
    else:
        if not errors:
            raise CompileError("The model has no numeric output to compare.")
        relative = {}
        for name in errors:
            a = np.asarray(original[name], dtype=np.float64)
            scale = float(np.nanmean(np.abs(a))) if a.size else 0.0
            relative[name] = errors[name] / scale if scale > 0 else errors[name]
        report["relative_error"] = max(relative.values())
        report["metric"] = "relative_error"
        report["drop"] = report["relative_error"]
        if labels is not None and labels.dtype.kind == "f":
            first = next(iter(errors))
            for which, outputs in (("original", original), ("compiled", compiled)):
                predicted = np.asarray(outputs[first], dtype=np.float64).reshape(records, -1)[:, 0]
                report[f"rmse_{which}"] = float(np.sqrt(np.nanmean((predicted - labels) ** 2)))
    report["passed"] = bool(report["drop"] <= tolerance)
    return report


def describe_drop(report: dict[str, Any]) -> str:
    """One line for people: what was measured, against what tolerance."""
    tolerance = report["tolerance"]
    if report["metric"] == "accuracy":
        return (f"accuracy {report['accuracy_compiled']:.4f} compiled vs {report['accuracy_original']:.4f} original: "
                f"a drop of {report['drop']:.4f} (tolerance {tolerance:g}; label agreement {report['agreement']:.4f}, "
                f"{report['records']} records)")
    if report["metric"] == "agreement":
        return (f"labels agree on {report['agreement']:.4f} of {report['records']} records: a drop of "
                f"{report['drop']:.4f} (tolerance {tolerance:g})")
    return (f"relative error {report['relative_error']:.6g} (max absolute error {report['max_abs_error']:.6g}, "
            f"{report['records']} records; tolerance {tolerance:g})")
