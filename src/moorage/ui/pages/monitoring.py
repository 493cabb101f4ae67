"""The monitoring page: schedules and their executions with status, an execution's violations and each
feature's distribution baseline vs current (the drifted ones first and marked), the monitors' metrics over
time, and each execution's report files, served read-only from its own output location.
"""

from __future__ import annotations

import asyncio
import mimetypes

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from moorage.control.monitoring_scheduler import EXECUTION, METRICS_NAMESPACES, SCHEDULE
from moorage.errors import ValidationException
from moorage.monitor.common.jobs import DATA_QUALITY
from moorage.store.locations import open_url
from moorage.store.metadata import Resource
from moorage.ui import series
from moorage.ui.context import UiContext
from moorage.ui.render import render
from moorage.ui.session import PREFIX, sees
from moorage.ui.views.monitoring import (
    baseline_statistics_uri,
    drifted_features,
    execution_rows,
    execution_summary,
    feature_distributions,
    read_document,
    report_location,
    schedule_rows,
    violation_rows,
)

NAV = ("Monitoring", f"{PREFIX}/monitoring")
MAX_LINES = 12
MAX_FILE_BYTES = 32 * 1024 * 1024
# A chart group: which of a monitor's metric names it draws.
GROUPS = {"drift": "feature_baseline_drift_", "completeness": "feature_non_null_", "quality": ""}


def routes(ui: UiContext) -> list[BaseRoute]:
    ctx = ui.ctx

    def visible(request: Request, endpoint: str | None) -> bool:
        return endpoint is None or sees(request, endpoint)

    def schedule_row(request: Request) -> Resource:
        name = request.path_params["name"]
        row = ctx.store.get(SCHEDULE, name)
        if row is None:
            raise HTTPException(404, f"Monitoring schedule {name} not found.")
        last = ctx.store.get(EXECUTION, row.body.get("LastExecutionName") or "")
        if last is not None and not visible(request, last.body.get("EndpointName")):
            raise HTTPException(404, f"Monitoring schedule {name} not found.")
        return row

    def execution_row(request: Request) -> Resource:
        name = request.path_params["name"]
        row = ctx.store.get(EXECUTION, name)
        if row is None or not visible(request, row.body.get("EndpointName")):
            raise HTTPException(404, f"Monitoring execution {name} not found.")
        return row

    async def listing(request: Request) -> Response:
        rows = await asyncio.to_thread(schedule_rows, ctx)
        return render(request, "pages/monitoring.html", schedules=[r for r in rows if visible(request, r["endpoint"])])

    async def schedule(request: Request) -> Response:
        row = schedule_row(request)
        executions = await asyncio.to_thread(execution_rows, ctx, row.name)
        kind = (row.body.get("MonitoringScheduleConfig") or {}).get("MonitoringType") or DATA_QUALITY
        groups = ["drift", "completeness"] if kind == DATA_QUALITY else ["quality"]
        return render(request, "pages/monitoring_schedule.html", name=row.name, schedule_status=row.status, kind=kind,
                      executions=executions, groups=groups)

    async def metrics(request: Request) -> Response:
        row = schedule_row(request)
        kind = (row.body.get("MonitoringScheduleConfig") or {}).get("MonitoringType") or DATA_QUALITY
        namespace = METRICS_NAMESPACES.get(kind, METRICS_NAMESPACES[DATA_QUALITY])
        prefix = GROUPS.get(request.query_params.get("group") or "", "")
        win = series.window(request.query_params.get("window"))

        def read() -> dict[str, object]:
            found = [s for s in ui.metrics.list_metrics(namespace, dimensions={"MonitoringSchedule": row.name},
                                                        since=win.start)
                     if s.metric_name.startswith(prefix)][:MAX_LINES]
            lines = [series.Line(s.metric_name[len(prefix):] or s.metric_name,
                                 series.statistic(ui.metrics.store, win, namespace, s.metric_name, dict(s.dimensions),
                                                  "Average"))
                     for s in found]
            return series.chart(win, lines)

        return JSONResponse(await asyncio.to_thread(read), headers={"cache-control": "no-store"})

    async def execution(request: Request) -> Response:
        row = execution_row(request)
        schedule_resource = ctx.store.get(SCHEDULE, row.body.get("MonitoringScheduleName") or "")

        def gather() -> dict[str, object]:
            violations = read_document(row.body.get("ConstraintViolationsUri"))
            current = read_document(row.body.get("StatisticsUri"))
            baseline_uri = baseline_statistics_uri(ui.monitoring, schedule_resource)
            baseline = read_document(baseline_uri)
            drifted = drifted_features(violations) | set(row.body.get("ViolatedFeatures") or [])
            return {"violations": violation_rows(violations),
                    "features": feature_distributions(baseline, current, drifted),
                    "baseline_uri": baseline_uri, "has_baseline": baseline is not None,
                    "has_current": current is not None}

        values = await asyncio.to_thread(gather)
        return render(request, "pages/monitoring_execution.html", execution=execution_summary(row), **values)

    async def report_file(request: Request) -> Response:
        row = execution_row(request)
        try:
            location = report_location(row, request.path_params["path"])
        except ValidationException as exc:
            raise HTTPException(404, exc.message) from exc

        def read() -> bytes:
            with open_url(location) as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
            if len(data) > MAX_FILE_BYTES:
                raise ValueError("too large")
            return bytes(data)

        try:
            data = await asyncio.to_thread(read)
        except (OSError, ValueError) as exc:
            raise HTTPException(404, f"{request.path_params['path']} cannot be read from the execution's "
                                     f"output.") from exc
        media = mimetypes.guess_type(location)[0] or "application/octet-stream"
        if media.startswith("text/"):
            media += "; charset=utf-8"
        # The report is the monitor's own HTML: it runs no script of the dashboard's origin.
        return Response(data, media_type=media, headers={"cache-control": "no-store",
                                                         "content-security-policy": "sandbox",
                                                         "x-content-type-options": "nosniff"})

    return [Route("/monitoring", listing), Route("/monitoring/schedules/{name}", schedule),
            Route("/monitoring/schedules/{name}/metrics.json", metrics),
            Route("/monitoring/executions/{name}", execution),
            Route("/monitoring/executions/{name}/files/{path:path}", report_file)]
