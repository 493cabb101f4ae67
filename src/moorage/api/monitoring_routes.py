"""Native monitoring routes: on-demand executions and their results (what SageMaker's API cannot say).

- ``POST /moorage/v1/monitoring-schedules/{name}/executions``: run the schedule now (SageMaker's
  StartMonitoringSchedule only resumes a schedule). The JSON body may give ``StartTime``/``EndTime``
  (ISO-8601 times, or offsets from now such as ``-PT1H``); by default the job's own window
  (its offsets, else the hour before now). Answers 202 with the execution.
- ``GET /moorage/v1/monitoring-executions/{name}``: an execution with its results (status, reason,
  window, where statistics.json, constraint_violations.json and report.html are, violated features).
- ``GET /moorage/v1/monitoring-executions/{name}/report``: the report page itself (text/html).

``{name}`` of an execution is its processing-job name (the last part of ``ProcessingJobArn``).
SigV4-authenticated like every native route.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moorage.api.sigv4 import AuthError, SigV4Verifier
from moorage.control.context import Context
from moorage.control.monitoring_scheduler import EXECUTION, SCHEDULE, MonitoringScheduler
from moorage.control.times import timestamp
from moorage.errors import ValidationException
from moorage.store.locations import open_url
from moorage.store.metadata import Resource


def _error(code: str, message: str, status: int) -> Response:
    return JSONResponse({"__type": code, "message": message}, status_code=status,
                        headers={"x-amzn-errortype": code})


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
                "Violations", "ViolatedFeatures", "Capture", "Seconds", "MonitoringJobDefinitionName"):
        if body.get(key) is not None:
            doc[key] = body[key]
    return doc


def monitoring_routes(ctx: Context, verifier: SigV4Verifier, scheduler: MonitoringScheduler) -> list[Route]:
    async def authorized(request: Request) -> Response | None:
        try:
            verifier.verify(request.method, request.scope.get("raw_path") or request.url.path.encode(),
                            request.scope.get("query_string", b""), request.scope["headers"], await request.body())
        except AuthError as exc:
            return _error(exc.code, exc.message, exc.status)
        return None

    async def run_now(request: Request) -> Response:
        if (denied := await authorized(request)) is not None:
            return denied
        name = request.path_params["name"]
        raw = await request.body()
        try:
            options = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            return _error("SerializationException", f"Request body is not valid JSON: {exc}", 400)
        if not isinstance(options, dict):
            return _error("SerializationException", "Request body must be a JSON object.", 400)
        if ctx.store.get(SCHEDULE, name) is None:
            return _error("ResourceNotFound", f'Could not find monitoring schedule "{ctx.arn(SCHEDULE, name)}".', 404)
        try:
            row = scheduler.submit(name, dt.datetime.now(dt.UTC), start=options.get("StartTime"),
                                   end=options.get("EndTime"))
        except ValidationException as exc:
            return _error(exc.code, exc.message, exc.status)
        return JSONResponse(execution_document(row), status_code=202)

    def execution(request: Request) -> Resource | Response:
        """The execution the path names, or the 404 to answer."""
        name = request.path_params["name"]
        row = ctx.store.get(EXECUTION, name.rsplit("/", 1)[-1])
        if row is None:
            return _error("ResourceNotFound", f"Could not find monitoring execution {name}.", 404)
        return row

    async def get_execution(request: Request) -> Response:
        if (denied := await authorized(request)) is not None:
            return denied
        row = execution(request)
        if isinstance(row, Response):
            return row
        return JSONResponse(execution_document(row))

    async def get_report(request: Request) -> Response:
        if (denied := await authorized(request)) is not None:
            return denied
        row = execution(request)
        if isinstance(row, Response):
            return row
        location = row.body.get("ReportUri")
        if not location:
            return _error("ResourceNotFound", f"Monitoring execution {row.name} has no report "
                          f"({row.status}{': ' + row.body['FailureReason'] if row.body.get('FailureReason') else ''}).",
                          404)

        def read() -> bytes:
            with open_url(location) as handle:
                return handle.read()

        try:
            page = await asyncio.to_thread(read)
        except OSError as exc:
            return _error("ResourceNotFound", f"The report {location} cannot be read: {exc}", 404)
        return Response(page, media_type="text/html; charset=utf-8")

    return [
        Route("/moorage/v1/monitoring-schedules/{name}/executions", run_now, methods=["POST"]),
        Route("/moorage/v1/monitoring-executions/{name}", get_execution, methods=["GET"]),
        Route("/moorage/v1/monitoring-executions/{name}/report", get_report, methods=["GET"]),
    ]
