"""Data-quality monitoring: profiling, constraint suggestion and verification (Deequ's three steps).

The three steps work over the same metrics and SageMaker's file formats, so a baseline made by
SageMaker Model Monitor can be used here and ours can be taken to SageMaker.

1. **Profile** (:mod:`.statistics`): record batches -> mergeable per-feature metrics -> ``statistics.json``::

       from moorage.monitor import Dataset, profile_dataset, profile_batches
       profile = profile_dataset(Dataset.open("train.csv", header=True))     # a file, read in batches
       profile = profile_batches(frames)   # any iterable of pandas DataFrames / Arrow tables or batches
       statistics = profile.to_statistics()                                  # the statistics.json body
       profile.merge(other_profile)                                          # sketches merge

2. **Suggest** (:mod:`.constraints`): statistics -> ``constraints.json`` by Deequ's rules::

       constraints = suggest_constraints(statistics)

   :func:`suggest_baseline` (:mod:`.baseline`) does 1 and 2 for a dataset file and writes both
   files; ``moorage monitor baseline`` and ``moorage.sdk.monitor.DefaultModelMonitor`` call it.

3. **Verify** (:mod:`.checks`): current statistics (or a profile) against the baseline's statistics and
   constraints -> ``constraint_violations.json`` and the values to emit as metrics::

       violations = check(current_profile, baseline_statistics, constraints)   # the violations body
       report = evaluate(current_profile, baseline_statistics, constraints)
       report.violations, report.metrics()   # {"feature_baseline_drift_age": 0.31, "feature_non_null_age": 1.0, ...}

Beyond SageMaker, :mod:`.drift_tests` runs a statistical test per feature (KS, chi-squared, PSI,
Wasserstein, Jensen-Shannon) with effect-size thresholds, and gives a dataset-level verdict::

       verdict = run_drift_tests(current_profile, baseline_statistics, DriftTestConfig(tests={"age": "ks"}))

:mod:`.formats` loads and saves the files (paths, ``file://``, ``s3://``) and checks their shape
(:func:`shape_errors`).

Importing this package is cheap: the names below load their modules (and pyarrow, datasketches)
on first use, so the CLI and the server start fast and work without the ``monitor`` extra until a
monitoring feature is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Baseline": "baseline", "suggest_baseline": "baseline",
    "CheckReport": "checks", "check": "checks", "evaluate": "checks",
    "DEFAULT_MONITORING_CONFIG": "constraints", "suggest_constraints": "constraints",
    "Dataset": "datasets", "DatasetError": "datasets",
    "DriftTestConfig": "drift_tests", "DriftVerdict": "drift_tests", "run_drift_tests": "drift_tests",
    "Constraints": "formats", "ConstraintViolations": "formats", "Statistics": "formats", "load_json": "formats",
    "save_json": "formats", "shape_errors": "formats",
    "DatasetProfile": "statistics", "profile_batches": "statistics", "profile_dataset": "statistics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
