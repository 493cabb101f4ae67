"""A model-quality baseline: a validation dataset with predictions and labels -> statistics and constraints.

As SageMaker's ``ModelQualityMonitor.suggest_baseline``: the dataset (CSV, JSON Lines or Parquet)
holds the model's prediction (``inference_attribute``), its probability where it has one
(``probability_attribute``) and the truth (``ground_truth_attribute``), named by column (or by
0-based position for a CSV without a header). ``statistics.json`` has the problem type's metrics,
``constraints.json`` their thresholds (each the baseline's value). For a binary classifier with a
probability, ``cbpe.json`` beside them calibrates the label-free estimate the monitor makes while
labels are late (``cbpe.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moorage.monitor.common import formats
from moorage.monitor.common.datasets import Dataset, DatasetError

CBPE_FILE = "cbpe.json"  # beside the constraints: the execution looks for it there


@dataclass
class ModelQualityBaseline:
    statistics: dict[str, Any]
    constraints: dict[str, Any]
    cbpe: dict[str, Any] | None
    statistics_uri: str
    constraints_uri: str
    cbpe_uri: str | None


def _column(table: Any, attribute: str, role: str) -> np.ndarray:
    names = table.column_names
    if attribute in names:
        return np.asarray(table.column(attribute).to_pylist(), dtype=object)
    if attribute.isdigit() and int(attribute) < len(names):
        return np.asarray(table.column(int(attribute)).to_pylist(), dtype=object)
    raise DatasetError(f"The {role} {attribute!r} is not a column of the dataset ({', '.join(names[:20])}).")


def predictions_from(probabilities: np.ndarray | None, predictions: np.ndarray | None,
                     threshold: float | None) -> np.ndarray:
    """A binary classifier's predicted labels: given, or its probability against the threshold (0.5)."""
    if predictions is not None:
        return predictions
    if probabilities is None:
        raise DatasetError("Give the prediction (inference attribute) or the probability (probability attribute).")
    return (probabilities >= (0.5 if threshold is None else threshold)).astype(int)


def suggest_baseline(dataset: str | Path, output: str | Path, problem_type: str, *, ground_truth_attribute: str,
                     inference_attribute: str | None = None, probability_attribute: str | None = None,
                     probability_threshold: float | None = None, fmt: str | None = None,
                     header: bool | None = None) -> ModelQualityBaseline:
    import pyarrow as pa

    from moorage.monitor.model_quality.cbpe import CBPE
    from moorage.monitor.model_quality.constraints import suggest_constraints
    from moorage.monitor.model_quality.metrics import model_quality_statistics

    batches = list(Dataset.open(dataset, fmt, header))
    if not batches:
        raise DatasetError(f"The dataset {dataset} has no rows.")
    table = pa.Table.from_batches(batches)
    labels = _column(table, ground_truth_attribute, "ground-truth attribute")
    predictions = _column(table, inference_attribute, "inference attribute") if inference_attribute else None
    probabilities = None
    if probability_attribute:
        probabilities = np.asarray(_column(table, probability_attribute, "probability attribute"), dtype=float)
    if problem_type == "BinaryClassification":
        predictions = predictions_from(probabilities, predictions, probability_threshold)
    elif predictions is None:
        raise DatasetError(f"A {problem_type} baseline needs the inference attribute (the model's prediction).")
    statistics = model_quality_statistics(problem_type, labels, predictions, probabilities)
    constraints = suggest_constraints(statistics)
    base = str(output).rstrip("/")
    statistics_uri = formats.save_json(statistics, formats.join(base, formats.STATISTICS_FILE))
    constraints_uri = formats.save_json(constraints, formats.join(base, formats.CONSTRAINTS_FILE))
    cbpe_doc = cbpe_uri = None
    if problem_type == "BinaryClassification" and probabilities is not None:
        positive = _positive(labels)
        cbpe_doc = CBPE.fit(probabilities, np.asarray([str(v) == positive for v in labels], dtype=int),
                            threshold=0.5 if probability_threshold is None else probability_threshold).to_dict()
        cbpe_uri = formats.save_json(cbpe_doc, formats.join(base, CBPE_FILE))
    return ModelQualityBaseline(statistics, constraints, cbpe_doc, statistics_uri, constraints_uri, cbpe_uri)


def _positive(labels: np.ndarray) -> str:
    """The positive class as text: 1 / true when present, else the larger label."""
    seen = {str(v) for v in labels}
    for candidate in ("1", "1.0", "True", "true"):
        if candidate in seen:
            return candidate
    return max(seen)
