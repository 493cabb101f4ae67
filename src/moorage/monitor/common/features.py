"""The features of captured requests, as Clarify's analysis configuration names them.

A bias or explainability job reads each record's captured input as its feature row: the CSV row
(or, with ``FeaturesAttribute``, the list at that JSON path) in the order of the configuration's
``headers`` less its ``label``; a column of whole numbers is read as integers, as the facet and
label values of a configuration name them. For bias, the rows of the merged records (those with a label) are
joined with their label and the model's prediction (its probability where the job reads one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moorage.monitor.common.attributes import extract
from moorage.monitor.common.capture_reader import decode_rows
from moorage.monitor.common.datasets import Dataset, DatasetError


def read_dataset(dataset: str | Path, config: Mapping[str, Any], fmt: str | None = None,
                 header: bool | None = None) -> Any:
    """The data set as a DataFrame whose columns are the configuration's headers (a CSV without a header
    is named by them, in order)."""
    import pyarrow as pa

    batches = list(Dataset.open(dataset, fmt, header))
    if not batches:
        raise DatasetError(f"The dataset {dataset} has no rows.")
    frame = pa.Table.from_batches(batches).to_pandas()
    headers = [str(h) for h in config.get("headers") or []]
    if headers and list(frame.columns) != headers and len(frame.columns) == len(headers):
        frame.columns = headers
    return numeric_columns(frame)


def numeric_columns(frame: Any) -> Any:
    """Columns read as text that are all numbers become numbers (whole numbers integers), as a data set
    read with its types has them."""
    import pandas as pd

    for column in frame.columns:
        numeric = pd.to_numeric(frame[column], errors="coerce")
        if numeric.notna().all():
            frame[column] = _integral(numeric)
    return frame


def feature_names(config: Mapping[str, Any]) -> list[str]:
    """The configuration's headers less its label (a name, or an index into the headers)."""
    headers = [str(h) for h in config.get("headers") or []]
    label = config.get("label")
    if isinstance(label, int) and 0 <= label < len(headers):
        return headers[:label] + headers[label + 1:]
    return [h for h in headers if h != label]


def record_rows(record: Mapping[str, Any], features_attribute: str | None) -> list[list[Any]]:
    """The feature rows of one captured record (usually one)."""
    side = (record.get("captureData") or {}).get("endpointInput")
    if side is None:
        raise ValueError("a captured record has no endpointInput: capture the input (CaptureMode Input)")
    if features_attribute:
        value = extract(side, features_attribute)
        return [list(value)] if isinstance(value, list | tuple) else [[value]]
    rows = decode_rows(side)
    return [list(row.values()) if isinstance(row, dict) else list(row) for row in rows]


def input_rows(records: Iterable[Mapping[str, Any]], features_attribute: str | None = None) -> np.ndarray:
    """Every captured feature row, as floats (explainability calls the model on them)."""
    rows = [row for record in records for row in record_rows(record, features_attribute)]
    if not rows:
        return np.empty((0, 0))
    widths = {len(row) for row in rows}
    if len(widths) != 1:
        raise ValueError(f"the captured rows have different numbers of features ({sorted(widths)})")
    try:
        return np.asarray(rows, dtype=float)
    except ValueError as exc:
        raise ValueError(f"a captured feature is not a number: {exc}") from exc


def features_of(merged: Any, config: Mapping[str, Any], features_attribute: str | None = None) -> tuple[Any, Any]:
    """(a DataFrame of the labelled records' features and label, the model's predictions for them)."""
    import pandas as pd

    names = feature_names(config)
    by_id: dict[str, list[Any]] = {}
    for record in merged.merged_records():
        metadata = record.get("eventMetadata") or {}
        key = metadata.get("inferenceId") or metadata.get("eventId")
        rows = record_rows(record, features_attribute)
        if key is not None and rows:
            by_id[str(key)] = rows[0]
    rows = [by_id[str(key)] for key in merged.ids]
    if rows and names and len(rows[0]) != len(names):
        raise ValueError(f"the captured rows have {len(rows[0])} features but the analysis configuration's headers "
                         f"name {len(names)} ({', '.join(names)})")
    # CSV fields arrive as text: numbers where the whole column is numeric, as the data set had them.
    frame = numeric_columns(pd.DataFrame(rows, columns=names or None))
    label = config.get("label")
    headers = [str(h) for h in config.get("headers") or []]
    if isinstance(label, int) and 0 <= label < len(headers):
        label = headers[label]  # the label by position: the column keeps its header's name
    frame[str(label) if label is not None else "label"] = list(_integral(np.asarray(merged.labels)))
    predicted = merged.probabilities if merged.probabilities is not None else merged.predictions
    return frame, np.asarray(predicted)


def _integral(values: Any) -> Any:
    """Whole numbers read as floats ("1.0", "1.000000") as integers: the configuration's facet and label
    values (``[1]``) name them so, and Clarify matches them by value."""
    array = np.asarray(values)
    if array.dtype.kind == "f" and array.size and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        return array.astype(np.int64)
    return values
