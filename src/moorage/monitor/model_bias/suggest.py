"""A bias baseline: a data set (features and label) and the model's predictions -> Clarify's analysis.json.

As Clarify's baseline job: pre-training metrics of the data set and post-training metrics of the
model's predictions on it, per the analysis configuration's facets and label values. The
predictions are a column of the data set (``predicted_column``) or come from ``predict`` (rows of
features in the configuration's header order -> one score or label a row: an endpoint, for the
command line and the SDK). The file is what a bias-drift schedule's ``ConstraintsResource`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moorage.monitor.common import formats
from moorage.monitor.common.datasets import DatasetError
from moorage.monitor.common.features import feature_names, read_dataset
from moorage.monitor.model_bias.analysis import bias_analysis

ANALYSIS_FILE = "analysis.json"


def suggest_baseline(dataset: str | Path, config: Mapping[str, Any], output: str | Path, *,
                     predicted_column: str | None = None, predict: Callable[[np.ndarray], np.ndarray] | None = None,
                     fmt: str | None = None, header: bool | None = None) -> str:
    """Write ``analysis.json`` to ``output``; returns where it is."""
    frame = read_dataset(dataset, config, fmt, header)
    predicted = None
    if predicted_column is not None:
        if predicted_column not in frame.columns:
            raise DatasetError(f"The predicted column {predicted_column!r} is not in the dataset.")
        predicted = frame.pop(predicted_column).to_numpy()
    elif predict is not None:
        features = frame[feature_names(config)].to_numpy(dtype=float)
        predicted = np.asarray(predict(features))
    analysis = bias_analysis(config, frame, predicted)
    return formats.save_json(analysis, formats.join(str(output).rstrip("/"), ANALYSIS_FILE))
