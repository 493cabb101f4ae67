"""The Endpoints pages: every endpoint at a glance, and one endpoint's variants, traffic, latency, errors,
instances, data capture and alarms, with charts over the last hour or day that update as traffic flows.

The list reads each kind once (the endpoint rows, every desired state, every alarm, the last hour's
invocations grouped by series), never once per endpoint; what is live (current weights and counts,
instances) comes from the serving snapshots in memory. Store and metric reads run in a worker thread,
off the event loop that serves invocations. The one action, for deployers, is
UpdateEndpointWeightsAndCapacities on a variant, through ``control.endpoints.Endpoints``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG
from moorage.errors import ApiError
from moorage.metrics.vocabulary import (
    CPU_UTILIZATION,
    ENDPOINT_NAME,
    INVOCATION_4XX,
    INVOCATION_5XX,
    INVOCATION_NAMESPACE,
    INVOCATIONS,
    MODEL_LATENCY,
    OVERHEAD_LATENCY,
    UTILIZATION_NAMESPACE,
    VARIANT_NAME,
    variant_dimensions,
)
from moorage.serving.snapshot import EndpointSnapshot
from moorage.store.endpoint_states import read_endpoint_states
from moorage.store.metadata import DesiredVariant, ListQuery, Resource
from moorage.ui import series
from moorage.ui.context import DEPLOYER, UiContext
from moorage.ui.render import render
from moorage.ui.session import PREFIX, form_of, require, session_of

log = logging.getLogger("moorage.ui")

NAV = ("Endpoints", f"{PREFIX}/endpoints")
WINDOW_COOKIE = "moorage_window"  # set by app.js's hour/day switch, so tables follow the charts
PERCENTILES = ("p50", "p90", "p99")
VARIANT_DIMENSIONS = frozenset({ENDPOINT_NAME, VARIANT_NAME})


# -- what the pages show -------------------------------------------------------------------------------
def alarm_endpoints(alarm: Mapping[str, Any]) -> set[str]:
    """The endpoints an alarm's metric names (its dimensions, or those of its metric-math metrics)."""
    dimension_lists = [alarm.get("Dimensions") or []]
    for metric in alarm.get("Metrics") or []:
        dimension_lists.append(((metric.get("MetricStat") or {}).get("Metric") or {}).get("Dimensions") or [])
    return {d.get("Value") for dims in dimension_lists for d in dims if d.get("Name") == ENDPOINT_NAME}


def rollback_alarms(row: Resource) -> list[str]:
    """The alarms an endpoint's deployment config rolls back on."""
    config = row.body.get("LastDeploymentConfig") or {}
    return [a.get("AlarmName") for a in (config.get("AutoRollbackConfiguration") or {}).get("Alarms") or []
            if a.get("AlarmName")]


@dataclass
class AlarmView:
    name: str
    state: str
    reason: str = ""
    rollback: bool = False  # named by the endpoint's deployment config


def alarms_by_endpoint(alarms: Iterable[Mapping[str, Any]], rows: Iterable[Resource]) -> dict[str, list[AlarmView]]:
    by_name = {a["AlarmName"]: a for a in alarms}
    out: dict[str, list[AlarmView]] = defaultdict(list)
    for alarm in by_name.values():
        for endpoint in alarm_endpoints(alarm):
            out[endpoint].append(AlarmView(alarm["AlarmName"], alarm.get("StateValue", ""),
                                           alarm.get("StateReason", "")))
    for row in rows:
        named = {a.name for a in out.get(row.name, [])}
        for alarm_name in rollback_alarms(row):
            found = by_name.get(alarm_name)
            if alarm_name in named:
                for view in out[row.name]:
                    view.rollback = view.rollback or view.name == alarm_name
            else:
                out[row.name].append(AlarmView(alarm_name, found.get("StateValue", "") if found else "missing",
                                               found.get("StateReason", "") if found else "", rollback=True))
    for views in out.values():
        views.sort(key=lambda v: (v.state != "ALARM", v.name))
    return out


def capture_on(row: Resource) -> bool | None:
    """Data capture on (True), off (False), or not configured (None)."""
    summary = row.body.get("DataCaptureConfig")
    return None if not summary else bool(summary.get("EnableCapture", True))


@dataclass
class VariantRow:
    name: str
    desired_weight: float
    desired_share: float  # of the production variants' desired weights
    current_weight: float | None
    desired_instances: int | None  # None: serverless
    current_instances: int | None
    invocations: float | None = None
    traffic_share: float | None = None
    instance_type: str = ""
    model: str = ""
    shadow: bool = False
    instances: list[dict[str, Any]] = field(default_factory=list)


def variant_rows(desired: Iterable[DesiredVariant] | Iterable[tuple[str, float, int]],
                 snapshot: EndpointSnapshot | None, config: Mapping[str, Any] | None = None,
                 serverless: frozenset[str] = frozenset()) -> list[VariantRow]:
    goals = [d if isinstance(d, DesiredVariant) else DesiredVariant(d[0], d[1], d[2]) for d in desired]
    given = {v["VariantName"]: v for v in [*((config or {}).get("ProductionVariants") or []),
                                          *((config or {}).get("ShadowProductionVariants") or [])]}
    production_total = sum(g.weight for g in goals if not g.shadow) or 0.0
    out = []
    for goal in goals:
        live = snapshot.variants.get(goal.variant) if snapshot is not None else None
        spec = given.get(goal.variant, {})
        is_serverless = goal.variant in serverless or bool(spec.get("ServerlessConfig"))
        out.append(VariantRow(
            goal.variant, goal.weight,
            (goal.weight / production_total if production_total and not goal.shadow else 0.0),
            live.current_weight if live else None,
            None if is_serverless else goal.instance_count,
            live.in_service if live else (None if snapshot is None else 0),
            instance_type=(live.instance_type if live else spec.get("InstanceType", "serverless" if is_serverless
                                                                                   else "")),
            model=spec.get("ModelName", ""), shadow=goal.shadow,
            instances=[i.to_dict() for i in live.instances] if live else []))
    return out


# -- reads (in a worker thread) --------------------------------------------------------------------------
def _read_list(ui: UiContext, since: float) -> tuple[list[Resource], dict[str, Any], list[dict[str, Any]],
                                                     dict[tuple[str, ...], float]]:
    store = ui.ctx.store
    rows = store.list(ENDPOINT, ListQuery(sort_by="name", descending=False))
    states = read_endpoint_states(store)
    alarms = ui.metrics.alarms.list_alarms()
    traffic = series.sums_by_series(ui.metrics.store, INVOCATION_NAMESPACE, INVOCATIONS, since, VARIANT_DIMENSIONS)
    return rows, states, alarms, traffic


@dataclass
class EndpointDetail:
    row: Resource
    config: dict[str, Any]
    desired: list[DesiredVariant]
    alarms: list[AlarmView]
    invocations: dict[str, float]


def _read_endpoint(ui: UiContext, name: str, win: series.Window) -> EndpointDetail | None:
    store = ui.ctx.store
    row = store.get(ENDPOINT, name)
    if row is None:
        return None
    config_row = store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", ""))
    desired = store.desired(name)
    alarms = alarms_by_endpoint(ui.metrics.alarms.list_alarms(), [row]).get(name, [])
    span = int(win.end - win.start) + win.period  # the whole window as one bucket
    invocations = {}
    for goal in desired:
        points = ui.metrics.store.statistics(INVOCATION_NAMESPACE, INVOCATIONS, variant_dimensions(name, goal.variant),
                                             "Sum", win.start, win.end + 1, span)
        invocations[goal.variant] = series.total(points)
    return EndpointDetail(row, config_row.body if config_row else {}, desired, alarms, invocations)


# -- charts ----------------------------------------------------------------------------------------------
def _chart(ui: UiContext, name: str, which: str, win: series.Window, variants: list[str]) -> dict[str, Any]:
    store = ui.metrics.store

    def stat(namespace: str, metric: str, variant: str, statistic: str) -> list[Any]:
        return series.statistic(store, win, namespace, metric, variant_dimensions(name, variant), statistic)

    lines: list[series.Line] = []
    if which == "invocations":
        lines = [series.Line(v, stat(INVOCATION_NAMESPACE, INVOCATIONS, v, "Sum")) for v in variants]
        return series.chart(win, lines, "requests")
    if which in ("model-latency", "overhead-latency"):
        metric = MODEL_LATENCY if which == "model-latency" else OVERHEAD_LATENCY
        for v in variants:
            for p in PERCENTILES:
                label = p if len(variants) == 1 else f"{v} {p}"
                lines.append(series.Line(label, stat(INVOCATION_NAMESPACE, metric, v, p), scale=0.001))
        return series.chart(win, lines, "ms")
    if which == "errors":
        for v in variants:
            for metric, label in ((INVOCATION_4XX, "4xx"), (INVOCATION_5XX, "5xx")):
                lines.append(series.Line(label if len(variants) == 1 else f"{v} {label}",
                                         stat(INVOCATION_NAMESPACE, metric, v, "Average"), scale=100.0))
        return series.chart(win, lines, "%")
    if which == "instances":
        # The sampler takes one CPU sample per running instance per publish period: the samples of one
        # period are the instances running then; a bucket shows their average over the periods sampled.
        period = ui.metrics.publish_period(name)
        for v in variants:
            counts = store.statistics(UTILIZATION_NAMESPACE, CPU_UTILIZATION, variant_dimensions(name, v),
                                      "SampleCount", win.start, win.end + 1, period)
            lines.append(series.Line(v, series.rebucket(counts, win, "average")))
        return series.chart(win, lines, "instances")
    raise HTTPException(404, f"No chart {which!r}.")


CHARTS = (("invocations", "Invocations", "requests per bucket"),
          ("model-latency", "Model latency p50 / p90 / p99", "ms"),
          ("overhead-latency", "Overhead latency p50 / p90 / p99", "ms"),
          ("errors", "Error rate (4xx / 5xx)", "%"),
          ("instances", "Instances", "count"))


# -- routes ----------------------------------------------------------------------------------------------
def _visible(request: Request, name: str) -> bool:
    session = session_of(request)
    return session is not None and session.principal.sees(name)


def routes(ui: UiContext) -> list[BaseRoute]:
    async def list_page(request: Request) -> Response:
        started = time.perf_counter()
        rows, states, alarms, traffic = await asyncio.to_thread(_read_list, ui, time.time() - 3600)
        rows = [r for r in rows if _visible(request, r.name)]
        by_endpoint = alarms_by_endpoint(alarms, rows)
        endpoints = []
        for row in rows:
            state = states.get(row.name)
            variants = variant_rows(state.desired if state else (), ui.ctx.routes.snapshot(row.name))
            for v in variants:
                v.invocations = traffic.get((row.name, v.name), 0.0)
            endpoints.append({
                "row": row, "variants": variants, "capture": capture_on(row),
                "alarms": by_endpoint.get(row.name, []),
                "desired_instances": sum(v.desired_instances or 0 for v in variants),
                "current_instances": sum(v.current_instances or 0 for v in variants),
                "invocations": sum(v.invocations or 0 for v in variants)})
        counts: dict[str, int] = defaultdict(int)
        for e in endpoints:
            counts[e["row"].status or "?"] += 1
        response = render(request, "endpoints.html", endpoints=endpoints, counts=dict(sorted(counts.items())))
        response.headers["server-timing"] = f"page;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    async def endpoint_page(request: Request) -> Response:
        return await _endpoint_page(request, None, 200)

    async def _endpoint_page(request: Request, error: str | None, status: int) -> Response:
        started = time.perf_counter()
        name = request.path_params["name"]
        win = series.window(request.cookies.get(WINDOW_COOKIE))
        detail = await asyncio.to_thread(_read_endpoint, ui, name, win) if _visible(request, name) else None
        if detail is None:
            raise HTTPException(404, f"No endpoint {name!r}.")
        serverless = frozenset(v["VariantName"] for v in detail.row.body.get("ProductionVariants", [])
                               if v.get("DesiredServerlessConfig"))
        variants = variant_rows(detail.desired, ui.ctx.routes.snapshot(name), detail.config, serverless)
        flowed = sum(detail.invocations.get(v.name, 0.0) for v in variants if not v.shadow)
        for v in variants:
            v.invocations = detail.invocations.get(v.name, 0.0)
            v.traffic_share = (v.invocations / flowed) if flowed and not v.shadow else None
        updated = request.query_params.get("updated")
        response = render(
            request, "endpoint.html", status, name=name, row=detail.row, config=detail.config, variants=variants,
            alarms=detail.alarms, capture=capture_on(detail.row), window=win, charts=CHARTS, error=error,
            updated=updated if updated in {v.name for v in variants} else None, flowed=flowed)
        response.headers["server-timing"] = f"page;dur={(time.perf_counter() - started) * 1000:.1f}"
        return response

    async def chart(request: Request) -> Response:
        name, which = request.path_params["name"], request.path_params["chart"]
        if not _visible(request, name):
            raise HTTPException(404, f"No endpoint {name!r}.")
        win = series.window(request.query_params.get("window"))
        variants = [d.variant for d in await asyncio.to_thread(ui.ctx.store.desired, name) if not d.shadow]
        data = await asyncio.to_thread(_chart, ui, name, which, win, variants)
        return JSONResponse(data, headers={"cache-control": "no-store"})

    async def change_variant(request: Request) -> Response:
        name, variant = request.path_params["name"], request.path_params["variant"]
        principal = require(request, DEPLOYER, endpoint=name)
        form = await form_of(request)
        change: dict[str, Any] = {"VariantName": variant}
        try:
            weight_text = str(form.get("weight") or "").strip()
            if weight_text:
                weight = float(weight_text)
                if not math.isfinite(weight) or weight < 0:
                    raise ValueError("the weight must be a number of at least 0")
                change["DesiredWeight"] = weight
            count_text = str(form.get("instance_count") or "").strip()
            if count_text:
                count = int(count_text)
                if count < 0:
                    raise ValueError("the instance count must be a whole number of at least 0")
                change["DesiredInstanceCount"] = count
        except ValueError as exc:
            message = str(exc) if "must" in str(exc) else "the weight must be a number, the count a whole number"
            return await _endpoint_page(request, f"Variant {variant}: {message}.", 400)
        try:
            await ui.endpoints.update_endpoint_weights_and_capacities(
                {"EndpointName": name, "DesiredWeightsAndCapacities": [change]})
        except ApiError as exc:
            return await _endpoint_page(request, f"Variant {variant}: {exc.message}", 400)
        log.info("ui: key %s (%s) asked endpoint %s variant %s for %s", principal.key_id, principal.role, name,
                 variant, {k: v for k, v in change.items() if k != "VariantName"})
        return RedirectResponse(f"{PREFIX}/endpoints/{name}?updated={variant}", status_code=303)

    return [
        Route("/endpoints", list_page),
        Route("/endpoints/{name}", endpoint_page),
        Route("/endpoints/{name}/charts/{chart}", chart),
        Route("/endpoints/{name}/variants/{variant}", change_variant, methods=["POST"]),
    ]
