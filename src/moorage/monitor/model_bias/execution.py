"""One bias-drift execution: captured predictions of a window + ground truth -> Clarify's analysis, drift.

The window's captured records are merged with their labels as for model quality
(``common/ground_truth.py``); each record's features come from its captured input, named by the
analysis configuration's ``headers``; the facets, label values and thresholds are Clarify's
analysis configuration at the job's ``ConfigUri``. ``analysis.json`` goes where SageMaker puts an
execution's files; with a baseline (``ConstraintsResource``: a baseline job's ``analysis.json``),
``constraint_violations.json`` lists the metrics that moved farther from balance than the
baseline allows, and every metric goes to CloudWatch as ``bias_metric_...``.

Runs in the execution's own process (``monitor/common/jobs.py``: ``run_in_subprocess(RUNNER, ...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moorage.monitor.common.jobs import ExecutionWindow, Outcome

RUNNER = "moorage.monitor.model_bias.execution:run_spec"
ANALYSIS_FILE = "analysis.json"


@dataclass
class ExecutionSpec(ExecutionWindow):
    """Everything the child process needs for a bias-drift execution."""

    config_uri: str = ""
    ground_truth_uri: str = ""
    constraints_uri: str | None = None
    preprocessor_uri: str | None = None
    inference_attribute: str | None = None
    probability_attribute: str | None = None
    probability_threshold: float | None = None
    features_attribute: str | None = None


def run_spec(spec_doc: dict[str, Any]) -> dict[str, Any]:
    """The child process's entry (``RUNNER``): the spec as plain data in, the result out."""
    return run_execution(ExecutionSpec(**spec_doc))


def run_execution(spec: ExecutionSpec) -> dict[str, Any]:
    """Run the execution here (in the child process); never raises: failures are a ``Failed`` result."""
    from moorage.monitor.common import formats
    from moorage.monitor.common.features import features_of
    from moorage.monitor.common.labelled_window import JobInputError, input_counts, labelled_window, load_document
    from moorage.monitor.model_bias.analysis import (
        bias_analysis,
        check_bias_drift,
        load_analysis_config,
        metric_values,
        violations_document,
    )

    result = Outcome(spec)
    location, failed = result.location, result.failed
    try:
        config_doc = load_document(spec.config_uri, "the analysis configuration") or {}
        config = load_analysis_config(config_doc)
    except JobInputError as exc:
        return failed(str(exc))
    except ValueError as exc:
        return failed(f"The analysis configuration {spec.config_uri} cannot be used: {exc}")
    try:
        baseline = load_document(spec.constraints_uri, "the baseline")
        window = labelled_window(spec, spec.ground_truth_uri, inference_attribute=spec.inference_attribute,
                                 probability_attribute=spec.probability_attribute,
                                 probability_threshold=spec.probability_threshold)
    except JobInputError as exc:
        result.doc.update(input_counts(exc))
        return failed(str(exc))
    result.doc.update(window.counts())
    merged = window.merged
    try:
        frame, predicted = features_of(merged, config_doc, spec.features_attribute)
    except ValueError as exc:
        return failed(f"The captured data does not fit the analysis configuration: {exc}")
    try:
        analysis = bias_analysis(config, frame, predicted, predicted_probability=merged.probabilities is not None,
                                 probability_threshold=spec.probability_threshold)
        result["AnalysisUri"] = formats.save_json(analysis, formats.join(location, ANALYSIS_FILE))
        violations: list[dict[str, Any]] = []
        if baseline is not None:
            violations = check_bias_drift(analysis, baseline)
            result["ConstraintViolationsUri"] = formats.save_json(
                violations_document(violations), formats.join(location, formats.VIOLATIONS_FILE))
        result["Metrics"] = metric_values(analysis)
        result["Violations"] = len(violations)
        result["ViolatedFeatures"] = sorted({str(v.get("metric_name")) for v in violations})
    except ValueError as exc:
        return failed(f"The bias analysis cannot be computed: {exc}")
    except Exception as exc:
        return failed(f"Writing the results to {location} failed: {type(exc).__name__}: {exc}")
    return result.done(len(violations))
