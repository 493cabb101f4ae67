"""An attribution baseline: a data set explained with Clarify's SHAP settings -> analysis.json.

As Clarify's explainability baseline job: global SHAP values of the data set's feature rows (the
configuration's headers less its label) under ``predict`` (rows -> one score a row: an endpoint,
for the command line and the SDK). The file is what an attribution-drift schedule's
``ConstraintsResource`` names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from moorage.monitor.common import formats
from moorage.monitor.common.features import feature_names, read_dataset
from moorage.monitor.model_explainability.attributions import (
    compute_attributions,
    explainability_analysis,
    load_shap_config,
)

ANALYSIS_FILE = "analysis.json"


def suggest_baseline(dataset: str | Path, config: Mapping[str, Any], output: str | Path,
                     predict: Callable[[np.ndarray], np.ndarray], *, fmt: str | None = None,
                     header: bool | None = None) -> str:
    """Write ``analysis.json`` to ``output``; returns where it is."""
    shap_config = load_shap_config(config)
    frame = read_dataset(dataset, config, fmt, header)
    rows = frame[feature_names(config)].to_numpy(dtype=float)
    explained = compute_attributions(shap_config, rows, predict)
    analysis = explainability_analysis(shap_config, explained.global_values, expected_value=explained.expected_value)
    return formats.save_json(analysis, formats.join(str(output).rstrip("/"), ANALYSIS_FILE))
