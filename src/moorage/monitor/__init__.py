"""Model monitoring as a library: profile data, suggest constraints, verify new data against them.

No server, scheduler or command line in here (those import this, never the other way round, as
the import-linter contract in pyproject.toml enforces): a schedule's state machine is
:mod:`moorage.control.monitoring_scheduler`, the commands are :mod:`moorage.cli.monitoring`.

Layout, one folder per SageMaker monitor type beside the parts they share::

    monitor/
      common/          what every monitor type reads and writes: the monitoring files (formats),
                       datasets, captured traffic (capture_reader), Deequ's type inference,
                       distributions kept in statistics.json, time offsets, the report page
      data_quality/    DataQuality: profile -> suggest -> verify (+ drift_tests), and execution
                       (one scheduled job over captured traffic, in a child process)
      model_quality/   ModelQuality: captured predictions merged with ground truth (common/ground_truth,
                       common/attributes) -> metrics (statistics.json), constraints and violations in
                       SageMaker's shape, a label-free estimate while labels are late (cbpe), the
                       baseline (suggest) and the execution with its report
      model_bias/      ModelBias: Clarify's bias metrics, analysis.json, drift checks, baselines
      model_explainability/  ModelExplainability: SHAP attributions, NDCG drift, baselines, report

A new type is a sibling of ``data_quality/`` with the same three steps where they apply (Deequ's
split: **profile** the data into mergeable metrics, **suggest** a baseline's constraints from
them, **verify** new metrics against the baseline) and imports only ``common/``; the siblings do
not import each other.

Data quality, the three steps over the same metrics and SageMaker's file formats, so a baseline
made by SageMaker Model Monitor can be used here and ours can be taken to SageMaker:

1. **Profile** (:mod:`.data_quality.profile`): record batches -> mergeable per-feature metrics ->
   ``statistics.json``::

       from moorage.monitor import Dataset, profile_dataset, profile_batches
       profile = profile_dataset(Dataset.open("train.csv", header=True))     # a file, read in batches
       profile = profile_batches(frames)   # any iterable of pandas DataFrames / Arrow tables or batches
       statistics = profile.to_statistics()                                  # the statistics.json body
       profile.merge(other_profile)                                          # sketches merge

2. **Suggest** (:mod:`.data_quality.suggest`): statistics -> ``constraints.json`` by Deequ's rules::

       constraints = suggest_constraints(statistics)

   :func:`suggest_baseline` does 1 and 2 for a dataset file and writes both files;
   ``moorage monitor baseline`` and ``moorage.sdk.monitor.DefaultModelMonitor`` call it.

3. **Verify** (:mod:`.data_quality.verify`): current statistics (or a profile) against the baseline's
   statistics and constraints -> ``constraint_violations.json`` and the values to emit as metrics::

       violations = check(current_profile, baseline_statistics, constraints)   # the violations body
       report = evaluate(current_profile, baseline_statistics, constraints)
       report.violations, report.metrics()   # {"feature_baseline_drift_age": 0.31, "feature_non_null_age": 1.0, ...}

   Beyond SageMaker, :mod:`.data_quality.drift_tests` runs a statistical test per feature (KS,
   chi-squared, PSI, Wasserstein, Jensen-Shannon) with effect-size thresholds, and gives a
   dataset-level verdict::

       verdict = run_drift_tests(current_profile, baseline_statistics, DriftTestConfig(tests={"age": "ks"}))

:mod:`.common.formats` loads and saves the files (paths, ``file://``, ``s3://``) and checks their
shape (:func:`shape_errors`).

Importing this package is cheap: the names below load their modules (and pyarrow, datasketches)
on first use, so the CLI and the server start fast and work without the ``monitor`` extra until a
monitoring feature is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Dataset": "common.datasets", "DatasetError": "common.datasets",
    "Constraints": "common.formats", "ConstraintViolations": "common.formats", "Statistics": "common.formats",
    "load_json": "common.formats", "save_json": "common.formats", "shape_errors": "common.formats",
    "DatasetProfile": "data_quality.profile", "profile_batches": "data_quality.profile",
    "profile_dataset": "data_quality.profile",
    "Baseline": "data_quality.suggest", "suggest_baseline": "data_quality.suggest",
    "DEFAULT_MONITORING_CONFIG": "data_quality.suggest", "suggest_constraints": "data_quality.suggest",
    "CheckReport": "data_quality.verify", "check": "data_quality.verify", "evaluate": "data_quality.verify",
    "DriftTestConfig": "data_quality.drift_tests", "DriftVerdict": "data_quality.drift_tests",
    "run_drift_tests": "data_quality.drift_tests",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value
