"""One data-quality execution: captured traffic of a window -> statistics, violations, report, metric values.

Runs in the execution's own process (``monitor/common/jobs.py``: ``run_in_subprocess(RUNNER, ...)``).
Outputs go where SageMaker puts them: ``{S3Uri}/{endpoint}/{schedule}/{yyyy}/{mm}/{dd}/{hh}/``
(the scheduled time's UTC hour): ``statistics.json``, ``constraint_violations.json`` (when there are
constraints to check) and moorage's ``report.html``. ``S3Uri`` may be ``s3://``, ``file://`` or a path.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from moorage.monitor.common.jobs import REPORT_FILE, ExecutionWindow, Outcome, iso

RUNNER = "moorage.monitor.data_quality.execution:run_spec"


@dataclass
class ExecutionSpec(ExecutionWindow):
    """Everything the child process needs for a data-quality execution."""

    constraints_uri: str | None = None
    statistics_uri: str | None = None
    preprocessor_uri: str | None = None
    capture_sides: list[str] = field(default_factory=lambda: ["endpointInput"])
    exclude_features: list[str] = field(default_factory=list)


def _feature_names(statistics: dict[str, Any] | None, constraints: dict[str, Any] | None) -> list[str]:
    for body in (statistics, constraints):
        if body and body.get("features"):
            return [f["name"] for f in body["features"]]
    return []


def run_execution(spec: ExecutionSpec) -> dict[str, Any]:
    """Run the execution here (in the child process); never raises: failures are a ``Failed`` result."""
    from moorage.monitor.common import formats
    from moorage.monitor.common.capture_reader import CaptureReader, CaptureReadError, load_preprocessor
    from moorage.monitor.common.report import write_report
    from moorage.monitor.data_quality.profile import profile_batches
    from moorage.monitor.data_quality.verify import evaluate

    result = Outcome(spec)
    location, failed = result.location, result.failed
    if not spec.capture_uri:
        return failed(f"Endpoint {spec.endpoint_name} has no data capture configured (DataCaptureConfig "
                      "with EnableCapture): there is no captured data to analyse.")
    try:
        baseline_statistics = formats.load_json(spec.statistics_uri) if spec.statistics_uri else None
    except Exception as exc:
        return failed(f"Could not read the baseline statistics {spec.statistics_uri}: {type(exc).__name__}: {exc}")
    try:
        constraints = formats.load_json(spec.constraints_uri) if spec.constraints_uri else None
    except Exception as exc:
        return failed(f"Could not read the baseline constraints {spec.constraints_uri}: {type(exc).__name__}: {exc}")
    for kind, body in (("statistics", baseline_statistics), ("constraints", constraints)):
        if body is not None:
            problems = formats.shape_errors(body, kind)
            if problems:
                return failed(f"The baseline {kind} file is not a SageMaker {kind} document: {'; '.join(problems[:3])}")

    start = dt.datetime.fromtimestamp(spec.window_start, tz=dt.UTC)
    end = dt.datetime.fromtimestamp(spec.window_end, tz=dt.UTC)
    try:
        preprocessor = load_preprocessor(spec.preprocessor_uri) if spec.preprocessor_uri else None
        reader = CaptureReader(spec.capture_uri, spec.endpoint_name, start, end,
                               feature_names=_feature_names(baseline_statistics, constraints),
                               sides=spec.capture_sides, preprocessor=preprocessor)
        excluded = set(spec.exclude_features)
        batches = reader.batches()
        if excluded:
            batches = (b.drop_columns([n for n in b.schema.names if n in excluded]) for b in batches)
        profile = profile_batches(batches)
    except CaptureReadError as exc:
        return failed(str(exc))
    except Exception as exc:
        return failed(f"Analysing the captured data failed: {type(exc).__name__}: {exc}")
    scan = reader.scan
    result["Capture"] = scan.as_dict()
    if scan.records == 0 or profile.item_count == 0:
        detail = (f"no captured records of endpoint {spec.endpoint_name} between {iso(spec.window_start)} and "
                  f"{iso(spec.window_end)} ({scan.files} capture file(s) in the window's hour folders under "
                  f"{spec.capture_uri}")
        if scan.records:
            detail += f"; {scan.records} record(s) but none could be read as rows"
        return failed(f"Job inputs had no data: {detail}).")

    try:
        statistics = profile.to_statistics()
        formats.save_json(statistics, formats.join(location, formats.STATISTICS_FILE))
        result["StatisticsUri"] = formats.join(location, formats.STATISTICS_FILE)
        violations: list[dict[str, Any]] = []
        if constraints is not None:
            report = evaluate(profile, baseline_statistics, constraints)
            violations = report.to_dict()["violations"]
            formats.save_json(report.to_dict(), formats.join(location, formats.VIOLATIONS_FILE))
            result["ConstraintViolationsUri"] = formats.join(location, formats.VIOLATIONS_FILE)
            result["Metrics"] = report.metrics()
        else:
            result["Metrics"] = {f"feature_non_null_{f['name']}": _non_null(f) for f in statistics["features"]}
        result["Violations"] = len(violations)
        result["ViolatedFeatures"] = sorted({v["feature_name"] for v in violations})
        result["ReportUri"] = write_report(
            location, REPORT_FILE, statistics=statistics, baseline=baseline_statistics, violations=violations,
            meta={"execution": spec.execution_name, "schedule": spec.schedule_name,
                  "endpoint": spec.endpoint_name, "window_start": iso(spec.window_start),
                  "window_end": iso(spec.window_end), "scheduled_time": iso(spec.scheduled_time),
                  "records": scan.records, "rows": scan.rows, "baseline_statistics": spec.statistics_uri,
                  "baseline_constraints": spec.constraints_uri})
    except Exception as exc:
        return failed(f"Writing the results to {location} failed: {type(exc).__name__}: {exc}")
    return result.done(len(violations))


def _non_null(feature: dict[str, Any]) -> float:
    stats = feature.get("numerical_statistics") or feature.get("string_statistics") or {}
    common = stats.get("common", {})
    total = common.get("num_present", 0) + common.get("num_missing", 0)
    return float(common.get("num_present", 0)) / total if total else 0.0


def run_spec(spec_doc: dict[str, Any]) -> dict[str, Any]:
    """The child process's entry (``RUNNER``): the spec as plain data in, the result out."""
    return run_execution(ExecutionSpec(**spec_doc))
