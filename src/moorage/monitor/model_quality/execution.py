"""One model-quality execution: captured predictions of a window + ground truth -> metrics, violations, report.

The predictions captured in the window are merged with the labels collected up to the execution's
time (every hour folder of the ground-truth prefix until then, as SageMaker reads them:
``common/ground_truth.py``), matched by the record's ``inferenceId`` else its ``eventId``. The
metrics of the problem type (``metrics.py``) go to ``statistics.json`` in SageMaker's shape; with
a baseline's constraints, ``constraints.py`` writes ``constraint_violations.json`` in SageMaker's
words; the merged records go to ``merge/``; ``report.html`` plots the metrics over this schedule's
executions and the confusion matrix (or the residuals of a regression).

Beyond SageMaker, where the baseline folder holds a CBPE calibration (``cbpe.json`` beside its
constraints, written by ``moorage monitor baseline``), the classifier's metrics are also estimated
without labels on every prediction of the window (``cbpe.py``) and emitted as ``estimated_*``;
with labels present the gap between estimate and realised value is reported: a realised value
far below a confident estimate is the concept-drift signal.

Runs in the execution's own process (``monitor/common/jobs.py``: ``run_in_subprocess(RUNNER, ...)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moorage.monitor.common.jobs import REPORT_FILE, ExecutionWindow, Outcome, iso

RUNNER = "moorage.monitor.model_quality.execution:run_spec"
MERGE_FOLDER = "merge"
HISTORY = 48  # earlier executions of the schedule plotted in the report


@dataclass
class ExecutionSpec(ExecutionWindow):
    """Everything the child process needs for a model-quality execution."""

    problem_type: str = ""
    ground_truth_uri: str = ""
    constraints_uri: str | None = None
    preprocessor_uri: str | None = None
    inference_attribute: str | None = None
    probability_attribute: str | None = None
    probability_threshold: float | None = None


def run_spec(spec_doc: dict[str, Any]) -> dict[str, Any]:
    """The child process's entry (``RUNNER``): the spec as plain data in, the result out."""
    return run_execution(ExecutionSpec(**spec_doc))


def run_execution(spec: ExecutionSpec) -> dict[str, Any]:
    """Run the execution here (in the child process); never raises: failures are a ``Failed`` result."""
    from moorage.monitor.common import formats
    from moorage.monitor.common.labelled_window import JobInputError, input_counts, labelled_window, load_document
    from moorage.monitor.model_quality.cbpe import CBPE, concept_drift_signal
    from moorage.monitor.model_quality.constraints import check_constraints, constraint_violations_document
    from moorage.monitor.model_quality.metrics import metric_values, model_quality_statistics
    from moorage.monitor.model_quality.report import write_report
    from moorage.monitor.model_quality.suggest import CBPE_FILE

    result = Outcome(spec)
    location, failed = result.location, result.failed
    try:
        constraints = load_document(spec.constraints_uri, "the baseline constraints")
        window = labelled_window(spec, spec.ground_truth_uri, inference_attribute=spec.inference_attribute,
                                 probability_attribute=spec.probability_attribute,
                                 probability_threshold=spec.probability_threshold, problem_type=spec.problem_type)
    except JobInputError as exc:
        result.doc.update(input_counts(exc))
        return failed(str(exc))
    result.doc.update(window.counts())
    merged = window.merged
    cbpe = None
    if spec.constraints_uri and spec.problem_type == "BinaryClassification":
        try:
            cbpe = CBPE.from_dict(formats.load_json(formats.join(spec.constraints_uri.rsplit("/", 1)[0], CBPE_FILE)))
        except Exception:
            cbpe = None  # a SageMaker baseline has none: no label-free estimate, nothing wrong

    try:
        statistics = model_quality_statistics(spec.problem_type, merged.labels, merged.predictions,
                                              merged.probabilities, seed=0)
        formats.save_json(statistics, formats.join(location, formats.STATISTICS_FILE))
        result["StatisticsUri"] = formats.join(location, formats.STATISTICS_FILE)
        merged.write(formats.join(location, MERGE_FOLDER))
        metrics = metric_values(statistics)
        violations: list[dict[str, Any]] = []
        if constraints is not None:
            violations = check_constraints(statistics, constraints)
            formats.save_json(constraint_violations_document(violations), formats.join(location,
                                                                                       formats.VIOLATIONS_FILE))
            result["ConstraintViolationsUri"] = formats.join(location, formats.VIOLATIONS_FILE)
        estimates: dict[str, Any] = {}
        if cbpe is not None and merged.all_scores is not None and len(merged.all_scores):
            estimated = cbpe.estimate(merged.all_scores)
            estimates = {name: {"value": e.value, "low": e.low, "high": e.high} for name, e in estimated.items()}
            for name, e in estimated.items():
                metrics[f"estimated_{name}"] = e.value
            realised = {name: metrics[name] for name in estimated if name in metrics}
            result["ConceptDrift"] = concept_drift_signal(estimated, realised)
            result["Estimated"] = estimates
        result["Metrics"] = metrics
        result["Violations"] = len(violations)
        result["ViolatedFeatures"] = sorted({v["metric_name"] for v in violations})
        result["ReportUri"] = write_report(
            location, REPORT_FILE, statistics=statistics, violations=violations, estimates=estimates,
            history_root=spec.schedule_root(), history_limit=HISTORY, residuals=merged.residual_sample(),
            meta={"execution": spec.execution_name, "schedule": spec.schedule_name,
                  "endpoint": spec.endpoint_name, "problem type": spec.problem_type,
                  "window_start": iso(spec.window_start), "window_end": iso(spec.window_end),
                  "scheduled_time": iso(spec.scheduled_time), "captured": merged.captured,
                  "with ground truth": merged.matched, "ground truth": spec.ground_truth_uri,
                  "baseline_constraints": spec.constraints_uri})
    except ValueError as exc:
        return failed(f"The merged data cannot be evaluated as {spec.problem_type}: {exc}")
    except Exception as exc:
        return failed(f"Writing the results to {location} failed: {type(exc).__name__}: {exc}")
    return result.done(len(violations))
