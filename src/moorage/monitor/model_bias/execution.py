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

import datetime as dt
from dataclasses import dataclass
from typing import Any

from moorage.monitor.common.jobs import ExecutionWindow, Outcome, iso

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
    from moorage.monitor.common.capture_reader import CaptureReadError, CaptureScan, capture_files, read_records
    from moorage.monitor.common.features import features_of
    from moorage.monitor.common.ground_truth import ground_truth_files, merge, read_labels
    from moorage.monitor.model_bias.analysis import (
        bias_analysis,
        check_bias_drift,
        load_analysis_config,
        metric_values,
        violations_document,
    )

    result = Outcome(spec)
    location, failed = result.location, result.failed
    if not spec.capture_uri:
        return failed(f"Endpoint {spec.endpoint_name} has no data capture configured (DataCaptureConfig "
                      "with EnableCapture): there are no captured predictions to analyse.")
    try:
        config_doc = formats.load_json(spec.config_uri)
        config = load_analysis_config(config_doc)
    except ValueError as exc:
        return failed(f"The analysis configuration {spec.config_uri} cannot be used: {exc}")
    except Exception as exc:
        return failed(f"Could not read the analysis configuration {spec.config_uri}: {type(exc).__name__}: {exc}")
    try:
        baseline = formats.load_json(spec.constraints_uri) if spec.constraints_uri else None
    except Exception as exc:
        return failed(f"Could not read the baseline {spec.constraints_uri}: {type(exc).__name__}: {exc}")
    start = dt.datetime.fromtimestamp(spec.window_start, tz=dt.UTC)
    end = dt.datetime.fromtimestamp(spec.window_end, tz=dt.UTC)
    until = dt.datetime.fromtimestamp(max(spec.scheduled_time, spec.window_end), tz=dt.UTC)
    try:
        files = capture_files(spec.capture_uri, spec.endpoint_name, start, end)
        scan = CaptureScan(files=len(files))
        labels = read_labels(ground_truth_files(spec.ground_truth_uri, until, since=start))
        merged = merge(read_records(files, start, end, scan), labels, inference_attribute=spec.inference_attribute,
                       probability_attribute=spec.probability_attribute,
                       probability_threshold=spec.probability_threshold)
        frame, predicted = features_of(merged, config_doc, spec.features_attribute)
    except CaptureReadError as exc:
        return failed(str(exc))
    except ValueError as exc:
        return failed(f"The captured data does not fit the analysis configuration: {exc}")
    except Exception as exc:
        return failed(f"Merging the captured predictions with the ground truth failed: {type(exc).__name__}: {exc}")
    result["Merge"] = merged.counts()
    result["Capture"] = scan.as_dict()
    if merged.captured == 0:
        return failed(f"Job inputs had no data: no captured predictions of endpoint {spec.endpoint_name} between "
                      f"{iso(spec.window_start)} and {iso(spec.window_end)}.")
    if merged.matched == 0:
        return failed(f"No ground truth for the {merged.captured} captured prediction(s) of the window under "
                      f"{spec.ground_truth_uri}.")
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
