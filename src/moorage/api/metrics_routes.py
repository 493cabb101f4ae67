"""Native REST API for metrics and alarms (``/moorage/v1/metrics``, ``/moorage/v1/alarms``).

Field names are CloudWatch's (PutMetricData, GetMetricStatistics, ListMetrics, PutMetricAlarm,
DescribeAlarms, DescribeAlarmHistory, SetAlarmState), so a CloudWatch user reads them as usual:

- ``POST /moorage/v1/metrics`` ``{"Namespace": .., "MetricData": [{"MetricName", "Dimensions",
  "Value" | "Values" (+ "Counts"), "Timestamp", "Unit"}]}``: business metrics;
- ``GET /moorage/v1/metrics?Namespace=&MetricName=&Dimension=Name=Value&Statistic=&StartTime=&EndTime=&Period=``
  (``Dimension`` repeats; times are epoch seconds or ISO 8601): statistics per period;
- ``GET /moorage/v1/metrics/list?Namespace=&MetricName=&Dimension=...``: series that have data;
- ``GET /moorage/v1/alarms[?StateValue=&AlarmNamePrefix=]``, ``PUT|GET|DELETE /moorage/v1/alarms/{name}``
  (``GET`` adds the history, ``?HistoryMaxRecords=N``), ``POST /moorage/v1/alarms/{name}/state``.

Every route goes through the native API's signed seam (``moorage.api.signed``). Database work runs
in worker threads, off the event loop that serves invocations.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from moorage.api.signed import signed_route
from moorage.control.context import Context
from moorage.control.times import epoch
from moorage.errors import ApiError, ValidationException
from moorage.metrics.alarms import iso
from moorage.metrics.service import MetricsService
from moorage.metrics.store import MetricStore
from moorage.metrics.vocabulary import (
    INVOCATION_NAMESPACE,
    check_statistic,
    check_unit,
    dimension_pairs,
    dimensions_from_pairs,
)

MAX_METRIC_DATA = 1000  # PutMetricData's limit per request
DEFAULT_WINDOW_S = 3 * 3600


def metrics_routes(ctx: Context) -> list[Route]:
    def service() -> MetricsService:
        if ctx.metrics is None:
            raise ApiError("metrics are not set up on this server")
        return ctx.metrics

    def handler(func: Callable[[Request, MetricsService, bytes], Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Gives the handler the metrics service; CloudWatch's vocabulary checks raise ValueError for bad input."""

        @functools.wraps(func)
        async def bound(request: Request, body: bytes) -> Any:
            try:
                return await func(request, service(), body)
            except ValueError as exc:
                raise ValidationException(str(exc)) from exc

        return bound

    async def put_metric_data(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        doc = _json_body(body)
        namespace = doc.get("Namespace")
        data = doc.get("MetricData")
        if not isinstance(namespace, str) or not namespace:
            raise ValidationException("Namespace is required")
        if namespace.startswith("AWS/"):
            raise ValidationException("Namespaces starting with AWS/ are reserved for the platform's own metrics")
        if not isinstance(data, list) or not data or len(data) > MAX_METRIC_DATA:
            raise ValidationException(f"MetricData must be a list of 1 to {MAX_METRIC_DATA} items")
        items = [_metric_datum(item) for item in data]
        # Every datum checked before any is stored: the request is stored whole or not at all.
        sets = [MetricStore.statistic_set(namespace, name, dims, values, timestamp, unit, counts)
                for name, dims, values, counts, timestamp, unit in items]
        await asyncio.to_thread(metrics.put_statistic_sets, sets)
        return {"Accepted": len(items)}

    async def get_metric_statistics(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        query = request.query_params
        name = query.get("MetricName")
        if not name:
            raise ValidationException("MetricName is required")
        namespace = query.get("Namespace") or INVOCATION_NAMESPACE
        dims = _query_dimensions(query.getlist("Dimension"))
        statistic = check_statistic(query.get("Statistic") or "Average")
        now = time.time()
        end = _time(query.get("EndTime")) or now
        start = _time(query.get("StartTime")) or end - DEFAULT_WINDOW_S
        period = int(query.get("Period") or metrics.period)
        if period < 1:
            raise ValidationException("Period must be at least 1")
        if (end - start) / period > 100_000:
            raise ValidationException("too many datapoints requested: use a longer Period or a shorter range")
        points = await asyncio.to_thread(metrics.statistics, namespace, name, dims, statistic, start, end, period)
        return {"Namespace": namespace, "MetricName": name, "Dimensions": dimension_pairs(dims),
                "Statistic": statistic, "Period": period, "StartTime": iso(start), "EndTime": iso(end),
                "Datapoints": [{"Timestamp": iso(p.timestamp), "Value": p.value, "SampleCount": p.sample_count,
                                "Unit": p.unit} for p in points]}

    async def list_metrics(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        query = request.query_params
        series = await asyncio.to_thread(metrics.list_metrics, query.get("Namespace"), query.get("MetricName"),
                                         _query_dimensions(query.getlist("Dimension")))
        return {"Metrics": [{"Namespace": s.namespace, "MetricName": s.metric_name,
                             "Dimensions": dimension_pairs(s.dimensions)} for s in series]}

    async def list_alarms(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        query = request.query_params
        alarms = await asyncio.to_thread(metrics.alarms.list_alarms, query.get("StateValue"),
                                         query.get("AlarmNamePrefix"))
        return {"MetricAlarms": alarms}

    async def put_alarm(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        doc = _json_body(body)
        name = request.path_params["name"]
        if doc.get("AlarmName", name) != name:
            raise ValidationException(f"AlarmName {doc['AlarmName']!r} differs from the path's {name!r}")
        return await asyncio.to_thread(metrics.alarms.put_alarm, name, doc)

    async def describe_alarm(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        name = request.path_params["name"]
        limit = int(request.query_params.get("HistoryMaxRecords") or 100)
        alarm = await asyncio.to_thread(metrics.alarms.describe_alarm, name)
        alarm["AlarmHistoryItems"] = await asyncio.to_thread(metrics.alarms.history, name, limit)
        return alarm

    async def delete_alarm(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        await asyncio.to_thread(metrics.alarms.delete_alarm, request.path_params["name"])
        return {}

    async def set_alarm_state(request: Request, metrics: MetricsService, body: bytes) -> dict[str, Any]:
        doc = _json_body(body)
        name = request.path_params["name"]
        await metrics.alarms.set_alarm_state(name, str(doc.get("StateValue", "")),
                                             str(doc.get("StateReason") or "set by SetAlarmState"))
        return await asyncio.to_thread(metrics.alarms.describe_alarm, name)

    return [
        signed_route("/moorage/v1/metrics", handler(put_metric_data), ["POST"]),
        signed_route("/moorage/v1/metrics", handler(get_metric_statistics), ["GET"]),
        signed_route("/moorage/v1/metrics/list", handler(list_metrics), ["GET"]),
        signed_route("/moorage/v1/alarms", handler(list_alarms), ["GET"]),
        signed_route("/moorage/v1/alarms/{name}", handler(put_alarm), ["PUT"]),
        signed_route("/moorage/v1/alarms/{name}", handler(describe_alarm), ["GET"]),
        signed_route("/moorage/v1/alarms/{name}", handler(delete_alarm), ["DELETE"]),
        signed_route("/moorage/v1/alarms/{name}/state", handler(set_alarm_state), ["POST"]),
    ]


def _json_body(body: bytes) -> dict[str, Any]:
    try:
        doc = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise ValidationException(f"the body is not JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ValidationException("the body must be a JSON object")
    return doc


def _time(value: str | None) -> float | None:
    """Epoch seconds or an ISO 8601 timestamp (as CloudWatch's APIs take either)."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        return epoch(value)


def _query_dimensions(values: list[str]) -> dict[str, str]:
    dims = {}
    for item in values:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ValidationException(f"Dimension {item!r} is not Name=Value")
        dims[name] = value
    return dims


def _metric_datum(item: Any) -> tuple[str, dict[str, str], list[float], list[float] | None, float | None, str]:
    if not isinstance(item, dict) or not item.get("MetricName"):
        raise ValidationException("each MetricData item needs a MetricName")
    if "Value" in item and "Values" in item:
        raise ValidationException("give Value or Values, not both")
    if "Value" in item:
        values = [item["Value"]]
    elif isinstance(item.get("Values"), list) and item["Values"]:
        values = item["Values"]
    else:
        raise ValidationException(f"metric {item['MetricName']}: Value or Values is required")
    try:
        numbers = [float(v) for v in values]
        counts = [float(c) for c in item["Counts"]] if item.get("Counts") is not None else None
        dims = dimensions_from_pairs(item.get("Dimensions"))
        unit = check_unit(item.get("Unit"))
    except (TypeError, ValueError) as exc:
        raise ValidationException(f"metric {item['MetricName']}: {exc}") from exc
    stamp = item.get("Timestamp")
    when = _time(stamp) if isinstance(stamp, str) else epoch(stamp)
    return str(item["MetricName"]), dims, numbers, counts, when, unit
