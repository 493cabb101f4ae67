"""Native monitoring routes: on-demand executions and their results (what SageMaker's API cannot say).

- ``POST /moorage/v1/monitoring-schedules/{name}/executions``: run the schedule now (SageMaker's
  StartMonitoringSchedule only resumes a schedule). The JSON body may give ``StartTime``/``EndTime``
  (ISO-8601 times, or offsets from now such as ``-PT1H``); by default the job's own window
  (its offsets, else the hour before now). Answers 202 with the execution.
- ``GET /moorage/v1/monitoring-executions/{name}``: an execution with its results (status, reason,
  window, where statistics.json, constraint_violations.json and report.html are, violated features).
- ``GET /moorage/v1/monitoring-executions/{name}/report``: the report page itself (text/html).
- ``POST /moorage/v1/endpoints/{name}/ground-truth`` ``{"GroundTruth": [{"InferenceId": "...", "Label": 1},
  ...], "S3Uri": "..."}`` (up to 10,000 labels a call): writes them as SageMaker's ground-truth
  records into the hour folder of now under ``S3Uri``, or, without it, under the
  ``GroundTruthS3Input`` of the endpoint's model-quality job definition (with none, under the
  server's home: ``ground-truth/{endpoint}``); answers where they went
  (and, for a routing experiment rewarded by ground truth, the rewards credited).

``{name}`` of an execution is its processing-job name (the last part of ``ProcessingJobArn``).
Through the native API's signed seam like every native route (``moorage.api.signed``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from moorage.api.signed import json_reply, signed_route
from moorage.control.context import ENDPOINT, Context
from moorage.control.monitoring_scheduler import (
    EXECUTION,
    MODEL_QUALITY_JOB_DEFINITION,
    SCHEDULE,
    MonitoringScheduler,
)
from moorage.control.routing_experiments import RoutingExperiments
from moorage.control.times import timestamp
from moorage.errors import ResourceNotFound, SerializationException, ValidationException
from moorage.monitor.common.ground_truth import write_labels
from moorage.store.locations import open_url
from moorage.store.metadata import Resource


def _iso(epoch: Any) -> str | None:
    moment = timestamp(epoch) if isinstance(epoch, int | float) else None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def execution_document(row: Resource) -> dict[str, Any]:
    body = row.body
    doc: dict[str, Any] = {
        "ExecutionName": row.name, "ProcessingJobArn": row.arn, "MonitoringExecutionStatus": row.status,
        "MonitoringScheduleName": body.get("MonitoringScheduleName"), "EndpointName": body.get("EndpointName"),
        "ScheduledTime": _iso(body.get("ScheduledTime")), "CreationTime": _iso(row.created_at),
        "LastModifiedTime": _iso(row.modified_at), "WindowStart": _iso(body.get("WindowStart")),
        "WindowEnd": _iso(body.get("WindowEnd"))}
    for key in ("FailureReason", "OutputLocation", "StatisticsUri", "ConstraintViolationsUri", "ReportUri",
                "Violations", "ViolatedFeatures", "Capture", "Seconds", "MonitoringJobDefinitionName",
                "MonitoringType", "Merge", "GroundTruth", "Estimated", "ConceptDrift", "AnalysisUri", "Explained"):
        if body.get(key) is not None:
            doc[key] = body[key]
    return doc


def monitoring_routes(ctx: Context, scheduler: MonitoringScheduler,
                      experiments: RoutingExperiments | None = None) -> list[Route]:
    async def run_now(request: Request, raw: bytes) -> Response:
        name = request.path_params["name"]
        try:
            options = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(options, dict):
            raise SerializationException("Request body must be a JSON object.")
        if ctx.store.get(SCHEDULE, name) is None:
            raise ResourceNotFound(f'Could not find monitoring schedule "{ctx.arn(SCHEDULE, name)}".')
        row = scheduler.submit(name, dt.datetime.now(dt.UTC), start=options.get("StartTime"),
                               end=options.get("EndTime"))
        return json_reply(execution_document(row), 202)

    def execution(request: Request) -> Resource:
        name = request.path_params["name"]
        row = ctx.store.get(EXECUTION, name.rsplit("/", 1)[-1])
        if row is None:
            raise ResourceNotFound(f"Could not find monitoring execution {name}.")
        return row

    async def get_execution(request: Request, body: bytes) -> dict[str, Any]:
        return execution_document(execution(request))

    async def get_report(request: Request, body: bytes) -> Response:
        row = execution(request)
        location = row.body.get("ReportUri")
        if not location:
            reason = f": {row.body['FailureReason']}" if row.body.get("FailureReason") else ""
            raise ResourceNotFound(f"Monitoring execution {row.name} has no report ({row.status}{reason}).")

        def read() -> bytes:
            with open_url(location) as handle:
                return handle.read()

        try:
            page = await asyncio.to_thread(read)
        except OSError as exc:
            raise ResourceNotFound(f"The report {location} cannot be read: {exc}") from exc
        return Response(page, media_type="text/html; charset=utf-8")

    async def ground_truth(request: Request, raw: bytes) -> dict[str, Any]:
        endpoint = request.path_params["name"]
        try:
            document = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
        labels = _labels(document)
        if ctx.store.get(ENDPOINT, endpoint) is None:
            raise ResourceNotFound(f'Could not find endpoint "{ctx.arn(ENDPOINT, endpoint)}".')
        uri = document.get("S3Uri") or _ground_truth_uri(ctx, endpoint)
        location = await asyncio.to_thread(write_labels, uri, labels)
        out: dict[str, Any] = {"Written": len(labels), "Location": location}
        # An experiment rewarded by ground truth learns from the same labels.
        rewards = await experiments.credit_ground_truth(endpoint, labels) if experiments is not None else None
        if rewards is not None:
            out["Rewards"] = rewards
        return out

    return [
        signed_route("/moorage/v1/endpoints/{name}/ground-truth", ground_truth, ["POST"]),
        signed_route("/moorage/v1/monitoring-schedules/{name}/executions", run_now, ["POST"]),
        signed_route("/moorage/v1/monitoring-executions/{name}", get_execution, ["GET"]),
        signed_route("/moorage/v1/monitoring-executions/{name}/report", get_report, ["GET"]),
    ]


MAX_LABELS = 10_000


def _labels(document: Any) -> list[tuple[str, Any]]:
    """(InferenceId, Label) pairs of a ground-truth document; ValidationException names the bad item."""
    items = document.get("GroundTruth") if isinstance(document, dict) else None
    if not isinstance(items, list) or not items:
        raise ValidationException('The body must be {"GroundTruth": [{"InferenceId": "...", "Label": ...}, ...]}.')
    if len(items) > MAX_LABELS:
        raise ValidationException(f"GroundTruth: at most {MAX_LABELS} labels a call ({len(items)} given).")
    out = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValidationException(f"GroundTruth[{index}]: must be an object with InferenceId and Label.")
        inference_id, label = item.get("InferenceId"), item.get("Label")
        if not isinstance(inference_id, str) or not inference_id:
            raise ValidationException(f"GroundTruth[{index}].InferenceId: must be a non-empty string.")
        if not isinstance(label, str | int | float | bool):
            raise ValidationException(f"GroundTruth[{index}].Label: must be a string, a number or a boolean.")
        out.append((inference_id, label))
    return out


def _ground_truth_uri(ctx: Context, endpoint: str) -> str:
    """Where the endpoint's model-quality job reads its labels, when exactly one place is named; with
    none named, the server's own folder for them (``{home}/ground-truth/{endpoint}``)."""
    places = sorted({(r.body.get("ModelQualityJobInput") or {}).get("GroundTruthS3Input", {}).get("S3Uri")
                     for r in ctx.store.list(MODEL_QUALITY_JOB_DEFINITION) if r.body.get("EndpointName") == endpoint}
                    - {None})
    if len(places) > 1:
        raise ValidationException(f"Say where the labels of endpoint {endpoint} go (S3Uri): its model-quality "
                                  f"job definitions name {', '.join(places)}.")
    return places[0] if places else str(ctx.settings.home / "ground-truth" / endpoint)
