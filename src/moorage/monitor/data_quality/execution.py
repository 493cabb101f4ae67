"""One monitoring execution: captured traffic of a window -> statistics, violations, report, metric values.

The work (reading capture files, profiling, checking, plotting) runs in a child process started
for the execution (``spawn``): it is CPU-bound Python that would otherwise hold the GIL the
server's event loop needs for invocations, a runaway one can be killed at ``MaxRuntimeInSeconds``
or when the server stops, and a crash in it fails one execution, not the server. The parent
waits without blocking its loop and gets back a small JSON-able result.

Outputs go where SageMaker puts them: ``{S3Uri}/{endpoint}/{schedule}/{yyyy}/{mm}/{dd}/{hh}/``
(the scheduled time's UTC hour): ``statistics.json``, ``constraint_violations.json`` (when there are
constraints to check) and moorage's ``report.html``. ``S3Uri`` may be ``s3://``, ``file://`` or a path.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import time
import traceback
from dataclasses import asdict, dataclass, field
from typing import Any

from moorage.errors import ValidationException
from moorage.monitor.common.time_offsets import parse_offset, parse_time_or_offset

COMPLETED, WITH_VIOLATIONS, FAILED, STOPPED = "Completed", "CompletedWithViolations", "Failed", "Stopped"
PENDING, IN_PROGRESS = "Pending", "InProgress"
DATA_QUALITY = "DataQuality"
REPORT_FILE = "report.html"
DEFAULT_WINDOW = dt.timedelta(hours=1)


@dataclass
class JobDefinition:
    """What a data-quality job needs, from an inline MonitoringJobDefinition or a DataQualityJobDefinition."""

    endpoint_name: str
    output_uri: str
    constraints_uri: str | None = None
    statistics_uri: str | None = None
    start_offset: str | None = None
    end_offset: str | None = None
    preprocessor_uri: str | None = None
    environment: dict[str, str] = field(default_factory=dict)
    max_runtime: float | None = None
    exclude_features: str | None = None

    @classmethod
    def from_inline(cls, definition: dict[str, Any]) -> JobDefinition:
        inputs = definition.get("MonitoringInputs") or []
        if len(inputs) != 1:
            raise ValidationException("MonitoringJobDefinition.MonitoringInputs must hold exactly one input.")
        app = definition.get("MonitoringAppSpecification") or {}
        return cls._build(inputs[0], definition.get("BaselineConfig"), definition.get("MonitoringOutputConfig"),
                          app, definition.get("Environment") or {}, definition.get("StoppingCondition"))

    @classmethod
    def from_data_quality(cls, definition: dict[str, Any]) -> JobDefinition:
        app = definition.get("DataQualityAppSpecification") or {}
        return cls._build(definition.get("DataQualityJobInput") or {}, definition.get("DataQualityBaselineConfig"),
                          definition.get("DataQualityJobOutputConfig"), app, app.get("Environment") or {},
                          definition.get("StoppingCondition"))

    @classmethod
    def _build(cls, job_input: dict[str, Any], baseline: dict[str, Any] | None, output: dict[str, Any] | None,
               app: dict[str, Any], environment: dict[str, str], stopping: dict[str, Any] | None) -> JobDefinition:
        if job_input.get("BatchTransformInput"):
            raise ValidationException("moorage monitors endpoints: BatchTransformInput is not supported yet; "
                                      "use EndpointInput.")
        endpoint_input = job_input.get("EndpointInput")
        if not endpoint_input:
            raise ValidationException("The monitoring job needs an EndpointInput.")
        outputs = (output or {}).get("MonitoringOutputs") or []
        if len(outputs) != 1:
            raise ValidationException("MonitoringOutputConfig.MonitoringOutputs must hold exactly one S3Output.")
        for key in ("StartTimeOffset", "EndTimeOffset"):
            if endpoint_input.get(key):
                parse_offset(endpoint_input[key])  # refuse a bad offset at create time, not at 3 a.m.
        baseline = baseline or {}
        max_runtime = (stopping or {}).get("MaxRuntimeInSeconds")
        return cls(
            endpoint_name=endpoint_input["EndpointName"],
            output_uri=outputs[0]["S3Output"]["S3Uri"],
            constraints_uri=(baseline.get("ConstraintsResource") or {}).get("S3Uri"),
            statistics_uri=(baseline.get("StatisticsResource") or {}).get("S3Uri"),
            start_offset=endpoint_input.get("StartTimeOffset"),
            end_offset=endpoint_input.get("EndTimeOffset"),
            preprocessor_uri=app.get("RecordPreprocessorSourceUri"),
            environment=dict(environment),
            max_runtime=float(max_runtime) if max_runtime else None,
            exclude_features=endpoint_input.get("ExcludeFeaturesAttribute"),
        )

    def capture_sides(self) -> list[str]:
        """SageMaker's ``dataset_format`` environment: ``{"sagemakerCaptureJson": {"captureIndexNames": [...]}}``."""
        raw = self.environment.get("dataset_format")
        if raw:
            try:
                names = json.loads(raw).get("sagemakerCaptureJson", {}).get("captureIndexNames")
            except (ValueError, AttributeError):
                names = None
            if names:
                return [n for n in names if n in ("endpointInput", "endpointOutput")] or ["endpointInput"]
        return ["endpointInput"]

    def publishes_metrics(self) -> bool:
        return self.environment.get("publish_cloudwatch_metrics", "Enabled").lower() != "disabled"

    def window(self, scheduled: dt.datetime, period: dt.timedelta = DEFAULT_WINDOW) -> tuple[dt.datetime, dt.datetime]:
        """The data window of an execution scheduled at ``scheduled``: offsets, else the period before it."""
        end = scheduled + parse_offset(self.end_offset) if self.end_offset else scheduled
        start = scheduled + parse_offset(self.start_offset) if self.start_offset else end - period
        return start, end


@dataclass
class ExecutionSpec:
    """Everything the child process needs; plain data so that it crosses the process boundary."""

    execution_name: str
    schedule_name: str
    endpoint_name: str
    capture_uri: str | None
    scheduled_time: float
    window_start: float
    window_end: float
    output_uri: str
    constraints_uri: str | None = None
    statistics_uri: str | None = None
    preprocessor_uri: str | None = None
    capture_sides: list[str] = field(default_factory=lambda: ["endpointInput"])
    exclude_features: list[str] = field(default_factory=list)

    def output_location(self) -> str:
        hour = dt.datetime.fromtimestamp(self.scheduled_time, tz=dt.UTC)
        return (f"{self.output_uri.rstrip('/')}/{self.endpoint_name}/{self.schedule_name}/"
                f"{hour:%Y/%m/%d/%H}")


def window_of(definition: JobDefinition, scheduled: dt.datetime, *, period: dt.timedelta = DEFAULT_WINDOW,
              start: str | None = None, end: str | None = None) -> tuple[dt.datetime, dt.datetime]:
    """The window, with an explicit start/end (time or offset from ``scheduled``) taking precedence."""
    default_start, default_end = definition.window(scheduled, period)
    window_end = parse_time_or_offset(end, scheduled) if end else default_end
    if start:
        window_start = parse_time_or_offset(start, scheduled)
    elif end:
        window_start = window_end - (default_end - default_start)
    else:
        window_start = default_start
    if window_start >= window_end:
        raise ValidationException(f"The data window is empty: it starts at {window_start:%Y-%m-%dT%H:%M:%SZ} and "
                                  f"ends at {window_end:%Y-%m-%dT%H:%M:%SZ}.")
    return window_start, window_end


# -- the child process ------------------------------------------------------------------------------
def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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

    started = time.time()
    location = spec.output_location()
    result: dict[str, Any] = {"Status": FAILED, "OutputLocation": location, "Metrics": {},
                              "WindowStart": _iso(spec.window_start), "WindowEnd": _iso(spec.window_end)}

    def failed(reason: str) -> dict[str, Any]:
        result.update(Status=FAILED, FailureReason=reason[:1024], Seconds=time.time() - started)
        return result

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
        detail = (f"no captured records of endpoint {spec.endpoint_name} between {_iso(spec.window_start)} and "
                  f"{_iso(spec.window_end)} ({scan.files} capture file(s) in the window's hour folders under "
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
                  "endpoint": spec.endpoint_name, "window_start": _iso(spec.window_start),
                  "window_end": _iso(spec.window_end), "scheduled_time": _iso(spec.scheduled_time),
                  "records": scan.records, "rows": scan.rows, "baseline_statistics": spec.statistics_uri,
                  "baseline_constraints": spec.constraints_uri})
    except Exception as exc:
        return failed(f"Writing the results to {location} failed: {type(exc).__name__}: {exc}")
    result.update(Status=WITH_VIOLATIONS if violations else COMPLETED, Seconds=time.time() - started)
    return result


def _non_null(feature: dict[str, Any]) -> float:
    stats = feature.get("numerical_statistics") or feature.get("string_statistics") or {}
    common = stats.get("common", {})
    total = common.get("num_present", 0) + common.get("num_missing", 0)
    return float(common.get("num_present", 0)) / total if total else 0.0


def _child_main(spec_doc: dict[str, Any], conn: Any) -> None:
    try:
        result = run_execution(ExecutionSpec(**spec_doc))
    except BaseException as exc:  # a bug in the analysis must still come back as a reason
        result = {"Status": FAILED, "FailureReason": f"Internal error: {type(exc).__name__}: {exc}",
                  "Traceback": traceback.format_exc()[-4000:]}
    try:
        conn.send(result)
    finally:
        conn.close()


async def run_in_subprocess(spec: ExecutionSpec, max_runtime: float | None = None,
                            poll: float = 0.1) -> dict[str, Any]:
    """Run ``spec`` in a fresh process without blocking the event loop; killed past ``max_runtime``.

    Cancelling the awaiting task kills the process (a server that stops does not wait for it).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(asdict(spec), sender), daemon=True,
                              name=f"moorage-monitor-{spec.execution_name}")
    process.start()
    sender.close()
    deadline = time.monotonic() + max_runtime if max_runtime else None
    try:
        while True:
            if receiver.poll():
                try:
                    result: dict[str, Any] = receiver.recv()
                except EOFError:
                    result = {}
                break
            if not process.is_alive():
                # it may have sent its result just before exiting
                if receiver.poll():
                    continue
                result = {}
                break
            if deadline is not None and time.monotonic() > deadline:
                _kill(process)
                return {"Status": FAILED, "FailureReason": f"The monitoring job ran longer than its "
                        f"MaxRuntimeInSeconds ({max_runtime:g} s) and was stopped."}
            await asyncio.sleep(poll)
    except BaseException:
        _kill(process)
        raise
    finally:
        receiver.close()
    await asyncio.to_thread(process.join, 10)
    if not result:
        return {"Status": FAILED, "FailureReason": f"The monitoring job's process exited with code "
                f"{process.exitcode} before it reported a result."}
    return result


def _kill(process: Any) -> None:
    with contextlib.suppress(Exception):
        process.kill()
        process.join(5)
