"""Feature attribution drift as Clarify checks it: NDCG of the live ranking, weighted by baseline attributions.

SageMaker's docs ("Monitor Feature Attribution Drift for Models in Production") define it: with
``F = [f1, ..., fm]`` the features sorted by their attribution in the baseline, ``F' = [f'1, ..., f'm]``
sorted by their attribution in the live data and ``a(f)`` a feature's *baseline* attribution,

    NDCG = DCG / iDCG,   DCG = sum_i a(f'_i) / log2(i + 1),   iDCG = sum_i a(f_i) / log2(i + 1)

so the live data only supplies the order, and a feature that falls counts by its baseline weight.
Their example (SAT score / GPA / class rank: 0.70 / 0.50 / 0.05 in training, 0.10 / 0.20 / 0.70
live, the ranking reversed) gives 0.6876..., "0.69" in the docs. The violations page links
scikit-learn's ``ndcg_score`` as the definition; we follow it where the formula leaves a choice:
features the live data ties are given the average of their baseline attributions over the tied
positions (``ignore_ties=False``), and the attributions are used as they are (``median`` aggregation
can give negative ones; NDCG can then leave [0, 1], as scikit-learn's does). A feature present on
one side only has attribution 0 on the other. When the baseline attributes nothing to any feature
(iDCG is 0) nothing can be ranked: 1.0 if the live attributions are all 0 too, else 0.0
(scikit-learn gives 0.0 for both).

A label (``label0``, or a name of the configuration's ``label_headers``) is a violation when its NDCG
is below the threshold (0.90 unless the job's configuration says otherwise); the violation is
SageMaker's, word for word, ``exceeds`` included: ``{"label": "label0", "metric_name": "shap",
"constraint_check_type": "feature_attribution_drift_check", "description": "Feature attribution
drift 0.7639720923277322 exceeds threshold 0.9"}`` (the numbers as Python's ``repr`` of a float,
which is how SageMaker's example prints them).

The baseline is an ``analysis.json`` (SageMaker's ``ConstraintsResource`` for this monitor is the
baseline job's ``analysis.json``); the values are read from ``explanations.kernel_shap.<label>.
global_shap_values``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

DEFAULT_THRESHOLD = 0.90
METHOD_KEY = "kernel_shap"
METRIC_NAME = "shap"
CHECK_TYPE = "feature_attribution_drift_check"
VIOLATIONS_VERSION = "1.0"
FEATURE_METRIC_PREFIX = "feature_"
EXPECTED_VALUE_METRIC = "expected_value"


def ndcg(baseline: Mapping[str, float], current: Mapping[str, float]) -> float:
    """NDCG of ``current``'s ranking of the features, each weighted by its ``baseline`` attribution.

    ``1.0`` when the order is unchanged; lower the further features with large baseline
    attributions fall. ValueError when either side has no features or a value is not a finite number.
    """
    relevance = _values(baseline, "baseline")
    scores = _values(current, "current")
    names = list(relevance) + [name for name in scores if name not in relevance]
    gain = np.array([relevance.get(name, 0.0) for name in names])
    order_by = np.array([scores.get(name, 0.0) for name in names])
    discount = 1.0 / np.log2(np.arange(len(names)) + 2.0)

    order = np.argsort(-order_by, kind="stable")
    ranked_scores, ranked_gain = order_by[order], gain[order]
    dcg = 0.0
    start = 0
    while start < len(names):
        end = start + 1
        while end < len(names) and ranked_scores[end] == ranked_scores[start]:
            end += 1
        if end - start == 1:
            dcg += ranked_gain[start] * discount[start]
        else:  # tied live attributions: the group's mean gain at each of its positions
            dcg += float(np.mean(ranked_gain[start:end])) * float(np.sum(discount[start:end]))
        start = end
    ideal = 0.0
    for position, value in enumerate(np.sort(gain)[::-1]):
        ideal += value * discount[position]
    if ideal == 0.0:
        return 1.0 if not np.any(order_by) else 0.0
    return float(dcg / ideal)


def drift_scores(current_analysis: Mapping[str, Any], baseline_analysis: Mapping[str, Any]) -> dict[str, float]:
    """``{label: NDCG}`` for each label of the baseline (ValueError when the current analysis lacks one)."""
    baseline = _explanations(baseline_analysis, "the baseline analysis")
    current = _explanations(current_analysis, "the current analysis")
    scores: dict[str, float] = {}
    for label, values in baseline.items():
        if label not in current:
            raise ValueError(f"the current analysis has no global SHAP values for label {label!r} "
                             f"(it has {', '.join(map(repr, current)) or 'none'})")
        scores[label] = ndcg(values, current[label])
    return scores


def check_attribution_drift(current_analysis: Mapping[str, Any], baseline_analysis: Mapping[str, Any],
                            threshold: float = DEFAULT_THRESHOLD) -> list[dict[str, str]]:
    """The violations of ``constraint_violations.json``: one per label whose NDCG is below ``threshold``."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not math.isfinite(threshold):
        raise ValueError(f"the threshold should be a number, not {threshold!r}")
    limit = float(threshold)
    return [
        {
            "label": label,
            "metric_name": METRIC_NAME,
            "constraint_check_type": CHECK_TYPE,
            "description": f"Feature attribution drift {score!r} exceeds threshold {limit!r}",
        }
        for label, score in drift_scores(current_analysis, baseline_analysis).items()
        if score < limit
    ]


def violations_document(violations: list[dict[str, str]]) -> dict[str, Any]:
    """The ``constraint_violations.json`` body, as SageMaker writes it for this monitor."""
    return {"version": VIOLATIONS_VERSION, "violations": list(violations)}


def metric_values(analysis: Mapping[str, Any], label: str | None = None) -> dict[str, float]:
    """The values SageMaker publishes for this monitor: ``feature_<name>`` per feature, and the expected value.

    SageMaker's "CloudWatch Metrics for Feature Drift Analysis" page: each feature's global SHAP value
    as ``feature_<name>`` and the ``ExpectedValue`` (here ``expected_value``, the analysis.json key;
    SageMaker tells the two apart by a ``ValueType`` dimension, ``GlobalShapValues`` /
    ``ExpectedValue``, and the labels by a ``Label`` dimension). One label's values: ``label``, or the
    only label of the analysis (ValueError when there are several and none is named).
    """
    explanations = _explanations(analysis, "the analysis")
    if label is None:
        if len(explanations) != 1:
            raise ValueError(f"the analysis has {len(explanations)} labels ({', '.join(explanations)}): name one")
        label = next(iter(explanations))
    if label not in explanations:
        raise ValueError(f"the analysis has no label {label!r} (it has {', '.join(explanations)})")
    values = {f"{FEATURE_METRIC_PREFIX}{name}": value for name, value in explanations[label].items()}
    body = analysis["explanations"][METHOD_KEY][label]
    expected = body.get("expected_value")
    if _is_number(expected):
        values[EXPECTED_VALUE_METRIC] = float(expected)
    return values


def _explanations(analysis: Mapping[str, Any], what: str) -> dict[str, dict[str, float]]:
    """``{label: {feature: global SHAP value}}`` of an analysis.json (ValueError naming what is missing)."""
    if not isinstance(analysis, Mapping):
        raise ValueError(f"{what} should be a JSON object (analysis.json)")
    explanations = analysis.get("explanations")
    if not isinstance(explanations, Mapping):
        raise ValueError(f"{what} has no explanations")
    method = explanations.get(METHOD_KEY)
    if not isinstance(method, Mapping) or not method:
        raise ValueError(f"{what} has no explanations.{METHOD_KEY} (SHAP values per label)")
    out: dict[str, dict[str, float]] = {}
    for label, body in method.items():
        values = body.get("global_shap_values") if isinstance(body, Mapping) else None
        if not isinstance(values, Mapping):
            raise ValueError(f"{what}: explanations.{METHOD_KEY}.{label} has no global_shap_values")
        out[str(label)] = _values(values, f"{what}'s label {label}")
    return out


def _values(values: Mapping[str, Any], what: str) -> dict[str, float]:
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"{what}: no feature attributions")
    out: dict[str, float] = {}
    for name, value in values.items():
        if not _is_number(value):
            raise ValueError(f"{what}: the attribution of {name} is {value!r}, not a finite number")
        out[str(name)] = float(value)
    return out


def _is_number(value: Any) -> bool:
    # numbers.Real takes numpy's scalars too; a bool is not an attribution
    return isinstance(value, numbers.Real) and not isinstance(value, bool | np.bool_) and math.isfinite(value)
