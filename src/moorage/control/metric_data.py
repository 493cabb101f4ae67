"""CloudWatch's GetMetricData: metric queries and metric math over the store, paged as CloudWatch pages.

Each ``MetricStat`` query is one store read (any statistic, percentiles included, period-aligned
buckets of ``[StartTime, EndTime)``); each ``Expression`` is parsed by ``metrics/metric_math.py``
and evaluated once the queries it names are known (expressions may name expressions; a circle is
refused). The queries with ``ReturnData`` (the default) are returned in request order, values
newest first unless ``ScanBy`` says ``TimestampAscending``. An expression that comes to a number
(``SUM(m1)``) is returned at every timestamp its request's metrics have; one that comes to several
series (``METRICS()*2``) gives one result per series, each with the expression's id.

Paging: the results' datapoints, in order, are cut into pages of ``MaxDatapoints``; a result cut
short says ``PartialData`` and ``NextToken`` leads on, and every page lists every result (those
already done, with no values and ``Complete``), as in CloudWatch.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import Any

from moorage.control.paging import offset_token, token_offset
from moorage.control.times import epoch
from moorage.errors import InvalidNextToken, InvalidParameterCombination, InvalidParameterValue, MissingParameter
from moorage.metrics.metric_math import MetricMathError, Node, Scope, Series, Value, evaluate, parse, references
from moorage.metrics.service import MetricsService
from moorage.metrics.vocabulary import dimensions_from_pairs, percentile_of

DEFAULT_MAX_DATAPOINTS = 100_800


@dataclass
class _Query:
    id: str
    field: str  # MetricDataQueries.member.N, for messages
    label: str | None
    return_data: bool
    stat: dict[str, Any] | None = None
    expression: Node | None = None
    names: frozenset[str] = frozenset()  # ids an expression needs
    every_metric: bool = False  # it calls METRICS()


def _plan(queries: list[dict[str, Any]]) -> list[_Query]:
    plan: list[_Query] = []
    seen: set[str] = set()
    for index, q in enumerate(queries, 1):
        field = f"MetricDataQueries.member.{index}"
        if q["Id"] in seen:
            raise InvalidParameterValue(f"The value {q['Id']} for parameter {field}.Id is invalid: ids must be "
                                        "unique in a request.")
        seen.add(q["Id"])
        stat, text = q.get("MetricStat"), q.get("Expression")
        if (stat is None) == (text is None):
            raise InvalidParameterCombination(f"Exactly one of {field}.MetricStat and {field}.Expression must be "
                                              "specified.")
        query = _Query(q["Id"], field, q.get("Label"), q.get("ReturnData", True) is not False)
        if stat is not None:
            metric = stat["Metric"]
            for key in ("Namespace", "MetricName"):
                if not metric.get(key):
                    raise MissingParameter(f"The parameter {field}.MetricStat.Metric.{key} is required.")
            try:
                percentile_of(stat["Stat"])
            except ValueError as exc:
                raise InvalidParameterValue(f"The value {stat['Stat']} for parameter {field}.MetricStat.Stat is "
                                            f"invalid: {exc}.") from exc
            query.stat = stat
        else:
            assert text is not None
            try:
                query.expression = parse(text)
            except MetricMathError as exc:
                raise InvalidParameterValue(f"The value {text} for parameter {field}.Expression is invalid: "
                                            f"{exc}.") from exc
            names, query.every_metric = references(query.expression)
            query.names = frozenset(names)
        plan.append(query)
    by_id = {q.id: q for q in plan}
    for query in plan:
        for name in query.names - by_id.keys():
            raise InvalidParameterValue(f"The value {name} in parameter {query.field}.Expression is not the id of "
                                        "a query in this request.")
    return plan


def _order(plan: list[_Query]) -> list[_Query]:
    """Expressions after what they name (METRICS() names every metric query); a circle is refused."""
    by_id = {q.id: q for q in plan}
    done: set[str] = {q.id for q in plan if q.stat is not None}
    ordered: list[_Query] = []
    visiting: set[str] = set()

    def visit(query: _Query) -> None:
        if query.id in done:
            return
        if query.id in visiting:
            raise InvalidParameterValue(f"The parameter {query.field}.Expression refers to itself through other "
                                        "expressions (a circular reference).")
        visiting.add(query.id)
        for name in sorted(query.names):
            visit(by_id[name])
        visiting.discard(query.id)
        done.add(query.id)
        ordered.append(query)

    for query in plan:
        visit(query)
    return ordered


def _read(metrics: MetricsService, query: _Query, start: float, end: float) -> Series:
    stat = query.stat
    assert stat is not None
    metric, period = stat["Metric"], int(stat["Period"])
    first = math.floor(start / period) * period
    points = metrics.statistics(metric["Namespace"], metric["MetricName"],
                                dimensions_from_pairs(metric.get("Dimensions")), stat["Stat"], first, end, period)
    unit = stat.get("Unit")
    return Series(query.label or metric["MetricName"], period,
                  {p.timestamp: p.value for p in points if unit is None or p.unit == unit}, query.id)


def _results(plan: list[_Query], metrics: MetricsService, start: float, end: float) -> list[tuple[str, Series]]:
    values: dict[str, Value] = {}
    metric_series: list[Series] = []
    for query in plan:
        if query.stat is not None:
            series = _read(metrics, query, start, end)
            values[query.id] = series
            metric_series.append(series)
    scope = Scope(values, metric_series, start, end)
    for query in _order(plan):
        assert query.expression is not None
        try:
            values[query.id] = evaluate(query.expression, scope)
        except MetricMathError as exc:
            raise InvalidParameterValue(f"The expression in parameter {query.field}.Expression cannot be "
                                        f"evaluated: {exc}.") from exc
    every_time = sorted({t for s in metric_series for t in s.points})
    out: list[tuple[str, Series]] = []
    for query in plan:
        if not query.return_data:
            continue
        value = values[query.id]
        # A metric's label defaults to its name (set by _read), an expression's to its id; the series
        # of an array keep their own labels.
        label = query.label or query.id
        if isinstance(value, float):
            value = Series(label, 1, dict.fromkeys(every_time, value))
        if isinstance(value, list):
            labelled = [(s.label or label, s) for s in value]
        else:
            labelled = [(value.label if query.stat is not None else label, value)]
        for name, series in labelled:
            finite = {t: v for t, v in series.points.items() if math.isfinite(v)}
            out.append((query.id, Series(name, series.period, finite, query.id)))
    return out


async def get_metric_data(metrics: MetricsService, req: dict[str, Any]) -> dict[str, Any]:
    start, end = epoch(req["StartTime"]), epoch(req["EndTime"])
    assert start is not None and end is not None
    if end <= start:
        raise InvalidParameterValue("The parameter StartTime must be less than the parameter EndTime.")
    plan = _plan(req["MetricDataQueries"])
    _order(plan)  # refuse circles before reading anything
    offset = token_offset(req.get("NextToken"), InvalidNextToken)
    size = req.get("MaxDatapoints") or DEFAULT_MAX_DATAPOINTS
    if size < 1:
        raise InvalidParameterValue(f"The value {size} for parameter MaxDatapoints is invalid: at least 1.")
    ascending = req.get("ScanBy") == "TimestampAscending"
    results = await asyncio.to_thread(_results, plan, metrics, start, end)
    out = []
    position = 0  # where each result's datapoints start among all of them
    for query_id, series in results:
        times = sorted(series.points, reverse=not ascending)
        first, last = max(offset, position), min(offset + size, position + len(times))
        page = times[first - position:last - position] if first < last else []
        more = position + len(times) > offset + size
        out.append({"Id": query_id, "Label": series.label, "Timestamps": page,
                    "Values": [series.points[t] for t in page], "StatusCode": "PartialData" if more else "Complete"})
        position += len(times)
    token = offset_token(offset + size) if position > offset + size else None
    return {"MetricDataResults": out, "NextToken": token, "Messages": []}
