"""What every monitoring job shares: its definition, its data window, and the process it runs in.

A job definition comes from SageMaker's API in one of several shapes (an inline
MonitoringJobDefinition, a DataQualityJobDefinition, a ModelQualityJobDefinition); ``JobDefinition``
is what the scheduler needs of any of them. Each monitor type runs its executions with its own
code (``data_quality/execution.py``, ``model_quality/execution.py``), named to ``run_in_subprocess``
as ``"module:function"`` so this module imports none of them.

The work (reading capture files, profiling, checking, plotting) runs in a child process started
for the execution (``spawn``): it is CPU-bound Python that would otherwise hold the GIL the
server's event loop needs for invocations, a runaway one can be killed at ``MaxRuntimeInSeconds``
or when the server stops, and a crash in it fails one execution, not the server. The parent
waits without blocking its loop and gets back a small JSON-able result.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib
import json
import logging
import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moorage.errors import ValidationException
from moorage.monitor.common.time_offsets import parse_offset, parse_time_or_offset

COMPLETED, WITH_VIOLATIONS, FAILED, STOPPED = "Completed", "CompletedWithViolations", "Failed", "Stopped"
PENDING, IN_PROGRESS = "Pending", "InProgress"
DATA_QUALITY, MODEL_QUALITY = "DataQuality", "ModelQuality"
MODEL_BIAS, MODEL_EXPLAINABILITY = "ModelBias", "ModelExplainability"
MONITORING_TYPES = (DATA_QUALITY, MODEL_QUALITY, MODEL_BIAS, MODEL_EXPLAINABILITY)
PROBLEM_TYPES = ("BinaryClassification", "MulticlassClassification", "Regression")
REPORT_FILE = "report.html"
DEFAULT_WINDOW = dt.timedelta(hours=1)


@dataclass
class JobDefinition:
    """What a monitoring job needs, from an inline MonitoringJobDefinition (data quality), a
    DataQualityJobDefinition or a ModelQualityJobDefinition."""

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
    monitoring_type: str = DATA_QUALITY
    # ModelQuality: the problem, where its labels are, and where the answers are in the captured output.
    problem_type: str | None = None
    ground_truth_uri: str | None = None
    inference_attribute: str | None = None
    probability_attribute: str | None = None
    probability_threshold: float | None = None
    # ModelBias / ModelExplainability: Clarify's analysis configuration, and where the features are.
    config_uri: str | None = None
    features_attribute: str | None = None

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
    def from_model_quality(cls, definition: dict[str, Any]) -> JobDefinition:
        app = definition.get("ModelQualityAppSpecification") or {}
        job_input = definition.get("ModelQualityJobInput") or {}
        built = cls._build(job_input, definition.get("ModelQualityBaselineConfig"),
                           definition.get("ModelQualityJobOutputConfig"), app, app.get("Environment") or {},
                           definition.get("StoppingCondition"))
        problem = app.get("ProblemType")
        if problem not in PROBLEM_TYPES:
            raise ValidationException(f"ModelQualityAppSpecification.ProblemType: {problem!r} is not one of "
                                      f"{', '.join(PROBLEM_TYPES)}.")
        ground_truth = (job_input.get("GroundTruthS3Input") or {}).get("S3Uri")
        if not ground_truth:
            raise ValidationException("ModelQualityJobInput.GroundTruthS3Input.S3Uri: where the ground-truth labels "
                                      "are is required.")
        endpoint_input = job_input["EndpointInput"]
        threshold = endpoint_input.get("ProbabilityThresholdAttribute")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ValidationException("EndpointInput.ProbabilityThresholdAttribute: must be between 0 and 1.")
        if problem != "BinaryClassification" and threshold is not None:
            raise ValidationException(
                "EndpointInput.ProbabilityThresholdAttribute applies to BinaryClassification only.")
        built.monitoring_type = MODEL_QUALITY
        built.problem_type = problem
        built.ground_truth_uri = ground_truth
        built.inference_attribute = endpoint_input.get("InferenceAttribute")
        built.probability_attribute = endpoint_input.get("ProbabilityAttribute")
        built.probability_threshold = float(threshold) if threshold is not None else None
        return built

    @classmethod
    def from_model_bias(cls, definition: dict[str, Any]) -> JobDefinition:
        return cls._from_clarify(definition, "ModelBias", MODEL_BIAS, ground_truth_required=True)

    @classmethod
    def from_model_explainability(cls, definition: dict[str, Any]) -> JobDefinition:
        return cls._from_clarify(definition, "ModelExplainability", MODEL_EXPLAINABILITY, ground_truth_required=False)

    @classmethod
    def _from_clarify(cls, definition: dict[str, Any], prefix: str, kind: str, *,
                      ground_truth_required: bool) -> JobDefinition:
        """A bias or explainability job: Clarify's analysis configuration at the app's ConfigUri."""
        app = definition.get(f"{prefix}AppSpecification") or {}
        job_input = definition.get(f"{prefix}JobInput") or {}
        built = cls._build(job_input, definition.get(f"{prefix}BaselineConfig"),
                           definition.get(f"{prefix}JobOutputConfig"), app, app.get("Environment") or {},
                           definition.get("StoppingCondition"))
        if not app.get("ConfigUri"):
            raise ValidationException(f"{prefix}AppSpecification.ConfigUri: where Clarify's analysis configuration "
                                      f"(analysis_config.json) is, is required.")
        ground_truth = (job_input.get("GroundTruthS3Input") or {}).get("S3Uri")
        if ground_truth_required and not ground_truth:
            raise ValidationException(f"{prefix}JobInput.GroundTruthS3Input.S3Uri: where the ground-truth labels are "
                                      f"is required.")
        endpoint_input = job_input["EndpointInput"]
        threshold = endpoint_input.get("ProbabilityThresholdAttribute")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ValidationException("EndpointInput.ProbabilityThresholdAttribute: must be between 0 and 1.")
        built.monitoring_type = kind
        built.config_uri = app["ConfigUri"]
        built.ground_truth_uri = ground_truth
        built.inference_attribute = endpoint_input.get("InferenceAttribute")
        built.probability_attribute = endpoint_input.get("ProbabilityAttribute")
        built.probability_threshold = float(threshold) if threshold is not None else None
        built.features_attribute = endpoint_input.get("FeaturesAttribute")
        return built

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


# -- what every execution's spec and result have -----------------------------------------------------
def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ExecutionWindow:
    """Which execution, of which endpoint, over which window, writing where: every type's spec starts so
    (plain data, so that it crosses the process boundary)."""

    execution_name: str
    schedule_name: str
    endpoint_name: str
    capture_uri: str | None
    scheduled_time: float
    window_start: float
    window_end: float
    output_uri: str

    def schedule_root(self) -> str:
        return f"{self.output_uri.rstrip('/')}/{self.endpoint_name}/{self.schedule_name}"

    def output_location(self) -> str:
        """Where SageMaker puts an execution's files: ``{S3Uri}/{endpoint}/{schedule}/{yyyy}/{mm}/{dd}/{hh}``
        (the scheduled time's UTC hour)."""
        return f"{self.schedule_root()}/{dt.datetime.fromtimestamp(self.scheduled_time, tz=dt.UTC):%Y/%m/%d/%H}"


class Outcome:
    """The JSON-able result an execution builds as it goes, and hands back: ``failed(why)`` or ``done``."""

    def __init__(self, spec: ExecutionWindow):
        self.started = time.time()
        self.location = spec.output_location()
        self.doc: dict[str, Any] = {"Status": FAILED, "OutputLocation": self.location, "Metrics": {},
                                    "WindowStart": iso(spec.window_start), "WindowEnd": iso(spec.window_end)}

    def __setitem__(self, key: str, value: Any) -> None:
        self.doc[key] = value

    def failed(self, reason: str) -> dict[str, Any]:
        self.doc.update(Status=FAILED, FailureReason=reason[:1024], Seconds=time.time() - self.started)
        return self.doc

    def done(self, violations: int) -> dict[str, Any]:
        self.doc.update(Status=WITH_VIOLATIONS if violations else COMPLETED, Seconds=time.time() - self.started)
        return self.doc


# -- the child process ------------------------------------------------------------------------------
def _log_to(path: str) -> None:
    """Send this process's output (prints, warnings, tracebacks, native libraries' writes) and its Python
    logging, stamped as the model server stamps its lines, to the job's log file: the processing job's
    stream that the Logs API serves."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _child_main(runner: str, spec_doc: dict[str, Any], conn: Any, log_path: str | None = None) -> None:
    job_log = logging.getLogger("moorage.job")
    if log_path:
        try:
            _log_to(log_path)
        except OSError:
            log_path = None  # the job still runs; its output goes where the server's does
        job_log.info("starting %s", runner)
    try:
        module, _, function = runner.partition(":")
        result = getattr(importlib.import_module(module), function)(spec_doc)
    except BaseException as exc:  # a bug in the analysis must still come back as a reason
        result = {"Status": FAILED, "FailureReason": f"Internal error: {type(exc).__name__}: {exc}",
                  "Traceback": traceback.format_exc()[-4000:]}
        if log_path:
            job_log.error("%s", result["Traceback"])
    if log_path:
        reason = result.get("FailureReason") if isinstance(result, dict) else None
        job_log.info("ended: %s%s", result.get("Status") if isinstance(result, dict) else "?",
                     f" ({reason})" if reason else "")
        sys.stdout.flush()
    try:
        conn.send(result)
    finally:
        conn.close()


async def run_in_subprocess(runner: str, spec_doc: dict[str, Any], name: str, max_runtime: float | None = None,
                            poll: float = 0.1, log_path: str | None = None) -> dict[str, Any]:
    """Run ``runner`` (``"module:function"``, taking the spec's dict and returning the result's) on
    ``spec_doc`` in a fresh process without blocking the event loop; killed past ``max_runtime``.
    ``log_path``: a file that takes the process's output and logging (appended to).

    Cancelling the awaiting task kills the process (a server that stops does not wait for it).
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child_main, args=(runner, spec_doc, sender, log_path), daemon=True,
                              name=f"moorage-monitor-{name}")
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
