"""One feature-attribution-drift execution: captured inputs of a window -> global SHAP values, drift.

The window's captured inputs (named by the analysis configuration's ``headers``) are explained with
Clarify's SHAP settings from the job's ``ConfigUri`` (its ``baseline`` rows, ``num_samples``,
``agg_method``) by calling the endpoint's model on an instance of its own that the scheduler started
for this execution (``common/model_client.py``; Clarify's shadow endpoint). ``analysis.json`` goes
where SageMaker puts an execution's files; with a baseline (``ConstraintsResource``: a baseline
job's ``analysis.json``), the NDCG of the current ranking weighted by the baseline's attributions
is checked against the threshold, and each feature's attribution goes to CloudWatch.

Runs in the execution's own process (``monitor/common/jobs.py``: ``run_in_subprocess(RUNNER, ...)``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from moorage.monitor.common.jobs import REPORT_FILE, ExecutionWindow, Outcome, iso

RUNNER = "moorage.monitor.model_explainability.execution:run_spec"
ANALYSIS_FILE = "analysis.json"
MAX_ROWS = 2000  # captured rows explained per execution (a sample beyond it: KernelSHAP calls the model a lot)


@dataclass
class ExecutionSpec(ExecutionWindow):
    """Everything the child process needs for a feature-attribution execution."""

    config_uri: str = ""
    constraints_uri: str | None = None
    preprocessor_uri: str | None = None
    inference_attribute: str | None = None
    probability_attribute: str | None = None
    probability_threshold: float | None = None
    features_attribute: str | None = None
    model_address: dict[str, Any] = field(default_factory=dict)  # the instance explained: socket or port


def run_spec(spec_doc: dict[str, Any]) -> dict[str, Any]:
    """The child process's entry (``RUNNER``): the spec as plain data in, the result out."""
    return run_execution(ExecutionSpec(**spec_doc))


def run_execution(spec: ExecutionSpec) -> dict[str, Any]:
    """Run the execution here (in the child process); never raises: failures are a ``Failed`` result."""
    import numpy as np

    from moorage.monitor.common import formats
    from moorage.monitor.common.capture_reader import CaptureReadError, CaptureScan, capture_files, read_records
    from moorage.monitor.common.features import input_rows
    from moorage.monitor.common.labelled_window import JobInputError, load_document
    from moorage.monitor.common.model_client import ModelCallError, ModelClient
    from moorage.monitor.model_explainability.attributions import (
        compute_attributions,
        explainability_analysis,
        load_shap_config,
    )
    from moorage.monitor.model_explainability.drift import (
        check_attribution_drift,
        drift_scores,
        metric_values,
        violations_document,
    )
    from moorage.monitor.model_explainability.report import write_report

    result = Outcome(spec)
    location, failed = result.location, result.failed
    if not spec.capture_uri:
        return failed(f"Endpoint {spec.endpoint_name} has no data capture configured (DataCaptureConfig "
                      "with EnableCapture): there are no captured inputs to explain.")
    try:
        config = load_shap_config(load_document(spec.config_uri, "the analysis configuration") or {})
        if config.baseline is None and config.baseline_uri:
            config = config.with_baseline(_csv_rows(config.baseline_uri))
        baseline = load_document(spec.constraints_uri, "the baseline")
    except JobInputError as exc:
        return failed(str(exc))
    except ValueError as exc:
        return failed(f"The analysis configuration {spec.config_uri} cannot be used: {exc}")
    except Exception as exc:
        return failed(f"Could not read the baseline rows of {spec.config_uri}: {type(exc).__name__}: {exc}")
    start = dt.datetime.fromtimestamp(spec.window_start, tz=dt.UTC)
    end = dt.datetime.fromtimestamp(spec.window_end, tz=dt.UTC)
    try:
        files = capture_files(spec.capture_uri, spec.endpoint_name, start, end)
        scan = CaptureScan(files=len(files))
        rows = input_rows(read_records(files, start, end, scan), spec.features_attribute)
    except CaptureReadError as exc:
        return failed(str(exc))
    except ValueError as exc:
        return failed(f"The captured inputs cannot be read as feature rows: {exc}")
    result["Capture"] = scan.as_dict()
    if len(rows) == 0:
        return failed(f"Job inputs had no data: no captured inputs of endpoint {spec.endpoint_name} between "
                      f"{iso(spec.window_start)} and {iso(spec.window_end)}.")
    if len(rows) > MAX_ROWS:
        rows = rows[np.random.default_rng(0).choice(len(rows), MAX_ROWS, replace=False)]
    client = ModelClient.for_instance(spec.model_address, spec.probability_attribute or spec.inference_attribute)
    try:
        attributions = compute_attributions(config, rows, client.predict)
        analysis = explainability_analysis(config, attributions.global_values,
                                           expected_value=attributions.expected_value)
    except (ModelCallError, ValueError, RuntimeError) as exc:
        return failed(f"Explaining the model failed: {exc}")
    try:
        result["AnalysisUri"] = formats.save_json(analysis, formats.join(location, ANALYSIS_FILE))
        violations: list[dict[str, Any]] = []
        if baseline is not None:
            violations = check_attribution_drift(analysis, baseline)
            result["ConstraintViolationsUri"] = formats.save_json(
                violations_document(violations), formats.join(location, formats.VIOLATIONS_FILE))
        result["Metrics"] = metric_values(analysis)
        result["Violations"] = len(violations)
        result["Explained"] = {"Rows": len(rows), "ModelCalls": client.calls, "Method": attributions.method}
        scores = drift_scores(analysis, baseline) if baseline is not None else {}
        result["ReportUri"] = write_report(
            location, REPORT_FILE, analysis=analysis, baseline=baseline, violations=violations,
            ndcg=min(scores.values()) if scores else None,
            meta={"execution": spec.execution_name, "schedule": spec.schedule_name, "endpoint": spec.endpoint_name,
                  "window_start": iso(spec.window_start), "window_end": iso(spec.window_end),
                  "rows explained": len(rows), "method": attributions.method,
                  "baseline": spec.constraints_uri or "none"})
    except Exception as exc:
        return failed(f"Writing the results to {location} failed: {type(exc).__name__}: {exc}")
    return result.done(len(violations))


def _csv_rows(uri: str) -> list[list[float]]:
    """A baseline given by URI (Clarify's ``baseline`` as an S3 URI): CSV rows of features, no header."""
    import csv
    import io

    from moorage.store.locations import open_url

    with open_url(uri) as handle:
        text = handle.read().decode("utf-8")
    return [[float(v) for v in row] for row in csv.reader(io.StringIO(text)) if row]
