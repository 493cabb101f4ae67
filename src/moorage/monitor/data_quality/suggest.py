"""Suggest (Deequ's second step): statistics -> SageMaker's ``constraints.json``, by Deequ's rules.

:func:`suggest_baseline` is the baselining job: profile a dataset (:mod:`.profile`), suggest its
constraints, write both files.

Works from the statistics alone (ours or SageMaker's), never from the data:

- ``inferred_type`` is kept (Deequ's RetainTypeRule);
- ``completeness`` is the observed share of present values (what SageMaker writes; the check
  allows for sampling noise, see :mod:`moorage.monitor.data_quality.verify`);
- ``num_constraints.is_non_negative`` is true when the minimum is not negative (NonNegativeNumbersRule);
- ``string_constraints.domains`` lists the values of a low-cardinality String feature, most
  frequent first, by Deequ's CategoricalRangeRule: the feature has a histogram (Deequ keeps one
  for at most 120 distinct values) and at most 10% of its values occur only once;
- ``monitoring_config`` holds SageMaker's defaults.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.monitor.common.datasets import Dataset
from moorage.monitor.common.formats import CONSTRAINTS_FILE, STATISTICS_FILE, Constraints, Statistics, join
from moorage.monitor.data_quality.profile import DatasetProfile, profile_dataset, statistics_of

# Deequ's ColumnProfiler keeps a histogram only for columns with this many distinct values or fewer
LOW_CARDINALITY_HISTOGRAM_THRESHOLD = 120
# CategoricalRangeRule: at most this share of the distinct values may be seen only once
MAX_UNIQUE_VALUE_RATIO = 0.1

DEFAULT_MONITORING_CONFIG: dict[str, Any] = {
    "evaluate_constraints": "Enabled",
    "emit_metrics": "Enabled",
    "datatype_check_threshold": 1.0,
    "domain_content_threshold": 1.0,
    "distribution_constraints": {
        "perform_comparison": "Enabled",
        "comparison_threshold": 0.1,
        "comparison_method": "Robust",
        "categorical_comparison_threshold": 0.1,
        "categorical_drift_method": "LInfinity",
    },
}


def suggest_constraints(statistics: Any, monitoring_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``constraints.json`` body suggested for a baseline's statistics (a dict or a profile)."""
    body = statistics_of(statistics)
    item_count = int(body.get("dataset", {}).get("item_count", 0))
    features = [_feature_constraints(feature, item_count) for feature in body.get("features", [])]
    return {
        "version": 0.0,
        "features": features,
        "monitoring_config": copy.deepcopy(monitoring_config or DEFAULT_MONITORING_CONFIG),
    }


def _feature_constraints(feature: dict[str, Any], item_count: int) -> dict[str, Any]:
    kind = feature.get("inferred_type", "Unknown")
    stats = feature.get("numerical_statistics") or feature.get("string_statistics") or {}
    common = stats.get("common", {})
    present = float(common.get("num_present", 0))
    total = present + float(common.get("num_missing", 0)) or float(item_count)
    constraint: dict[str, Any] = {
        "name": feature["name"],
        "inferred_type": kind,
        "completeness": present / total if total else 0.0,
    }
    if kind in ("Integral", "Fractional") and "min" in stats:
        constraint["num_constraints"] = {"is_non_negative": float(stats["min"]) >= 0.0}
    elif kind == "String":
        domain = suggested_domain(stats)
        if domain is not None:
            constraint["string_constraints"] = {"domains": domain}
    return constraint


def suggested_domain(string_statistics: dict[str, Any]) -> list[str] | None:
    """Deequ's CategoricalRangeRule over a feature's categorical buckets, or None when it does not apply."""
    buckets = string_statistics.get("distribution", {}).get("categorical", {}).get("buckets", [])
    distinct = string_statistics.get("distinct_count", len(buckets))
    if not buckets or len(buckets) > LOW_CARDINALITY_HISTOGRAM_THRESHOLD or len(buckets) < distinct:
        return None  # no complete low-cardinality histogram
    seen_once = sum(1 for bucket in buckets if bucket["count"] == 1)
    if seen_once / len(buckets) > MAX_UNIQUE_VALUE_RATIO:
        return None
    ordered = sorted(buckets, key=lambda bucket: -bucket["count"])
    return [str(bucket["value"]) for bucket in ordered]


# -- the baselining job ---------------------------------------------------------------------------

@dataclass
class Baseline:
    profile: DatasetProfile
    statistics: Statistics
    constraints: Constraints


def suggest_baseline(dataset: str | Path, output: str | Path | None = None, format: str | None = None,
                     header: bool | None = None, monitoring_config: dict[str, Any] | None = None) -> Baseline:
    """Profile ``dataset``, suggest constraints, and (when ``output`` is given) write both files there.

    ``header``: whether a CSV file's first line names the columns; None detects it (:meth:`Dataset.open`).
    """
    profile = profile_dataset(Dataset.open(dataset, format, header))
    statistics = Statistics(profile.to_statistics())
    constraints = Constraints(suggest_constraints(statistics.body_dict, monitoring_config))
    if output is not None:
        statistics.save(join(output, STATISTICS_FILE))
        constraints.save(join(output, CONSTRAINTS_FILE))
    return Baseline(profile, statistics, constraints)
