"""The CloudWatch API (``monitoring``) over moorage's metric store and alarms.

boto3's ``cloudwatch`` client reaches it on the server's port in any protocol it may speak: AWS
JSON 1.0 (``X-Amz-Target: GraniteServiceVersion20100801.PutMetricAlarm``, the JSON door), the
query protocol (``Action=PutMetricAlarm``, ``api/query_protocol.py``) or Smithy RPC v2 CBOR
(``api/rpcv2_cbor.py``); each validates against botocore's model and calls the handlers here,
named after the operations. Errors are CloudWatch's
own codes (``InvalidParameterValue``, ``MissingParameter``, ``InvalidParameterCombination``,
``InvalidNextToken``, ``ResourceNotFound``, ``ValidationError`` for what the model's constraints
refuse).

Endpoint metrics keep SageMaker's names (``AWS/SageMaker``, ``ModelLatency``, ``EndpointName`` /
``VariantName``: ``metrics/vocabulary.py``), so an alarm or dashboard query written for SageMaker
works unchanged. What differs from AWS, and why:

- alarms watch one metric (no ``Metrics`` math alarms, no composite alarms: ``DescribeAlarms`` for
  composite ones is empty); their actions are webhooks, AWS ARNs are kept but inert;
- ``Period`` is any whole number of seconds that is a multiple of the server's metrics period
  (moorage's periods can be 1 s), not only 60 s multiples and 1/5/10/30;
- percentiles (``p99``, ``p99.9``) are the extended statistics there are (the store keeps KLL
  sketches); trimmed means and the like are refused as invalid values;
- ``Unit`` and ``Tags`` on an alarm, ``StorageResolution`` and entities on data are accepted and not kept.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import numpy as np
import orjson

from moorage.control.context import Context
from moorage.control.metric_data import get_metric_data
from moorage.control.paging import offset_token, token_offset
from moorage.control.times import epoch
from moorage.errors import (
    ApiError,
    InvalidFormat,
    InvalidNextToken,
    InvalidParameterCombination,
    InvalidParameterValue,
    MissingParameter,
    NotImplementedOperation,
    ResourceNotFound,
)
from moorage.metrics.alarms import AlarmService
from moorage.metrics.service import MetricsService
from moorage.metrics.store import StatisticSet
from moorage.metrics.vocabulary import dimension_key, dimension_pairs, dimensions_from_pairs, percentile_of

# CloudWatch's limits, as its documentation states them.
MAX_STATISTICS_DATAPOINTS = 1440  # GetMetricStatistics
MAX_VALUES = 150  # distinct values in one MetricDatum's Values
PAST_LIMIT_S = 14 * 86400  # PutMetricData: no older than two weeks,
FUTURE_LIMIT_S = 2 * 3600  # and no more than two hours ahead
LIST_METRICS_PAGE = 500
DESCRIBE_ALARMS_DEFAULT = 50
HISTORY_DEFAULT = 100
RECENTLY_ACTIVE_S = 3 * 3600  # ListMetrics' RecentlyActive=PT3H


def _page(items: list[Any], req: dict[str, Any], size: int) -> tuple[list[Any], str | None]:
    offset = token_offset(req.get("NextToken"), InvalidNextToken)
    chunk = items[offset:offset + size]
    return chunk, offset_token(offset + size) if offset + size < len(items) else None


def _finite(value: float, field: str) -> float:
    if not math.isfinite(value):
        raise InvalidParameterValue(f"The value {value} for parameter {field} is invalid.")
    return value


def _dimensions(pairs: list[dict[str, str]] | None, field: str) -> dict[str, str]:
    dims = dimensions_from_pairs(pairs)
    if len(dims) != len(pairs or []):
        raise InvalidParameterValue(f"The parameter {field} must not name a dimension twice.")
    return dims


class CloudWatch:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    @property
    def metrics(self) -> MetricsService:
        if self.ctx.metrics is None:
            raise ApiError("metrics are not set up on this server")
        return self.ctx.metrics

    @property
    def alarms(self) -> AlarmService:
        return self.metrics.alarms

    # -- metrics -----------------------------------------------------------------------------------
    async def put_metric_data(self, req: dict[str, Any]) -> dict[str, Any]:
        namespace = req["Namespace"]
        if namespace.startswith("AWS/"):
            raise InvalidParameterValue(f"The value {namespace} for parameter Namespace is invalid: namespaces "
                                        "starting with AWS/ are reserved for AWS's (here: the platform's) metrics.")
        data = [(f"MetricData.member.{i}", d) for i, d in enumerate(req.get("MetricData") or [], 1)]
        for e, entity in enumerate(req.get("EntityMetricData") or [], 1):
            data += [(f"EntityMetricData.member.{e}.MetricData.member.{i}", d)
                     for i, d in enumerate(entity.get("MetricData") or [], 1)]
        if not data:
            raise MissingParameter("The parameter MetricData is required.")
        now = time.time()
        # Every datum is checked before anything is written: the request is stored whole or not at all.
        sets = [self._statistic_set(namespace, field, datum, now) for field, datum in data]
        await asyncio.to_thread(self.metrics.put_statistic_sets, sets)
        return {}

    @staticmethod
    def _statistic_set(namespace: str, field: str, datum: dict[str, Any], now: float) -> StatisticSet:
        given = [k for k in ("Value", "Values", "StatisticValues") if datum.get(k) is not None]
        if not given:
            raise MissingParameter(f"The parameter {field}.Value, {field}.Values or {field}.StatisticValues is "
                                   "required.")
        if len(given) > 1:
            raise InvalidParameterCombination(f"The parameters {field}.{given[0]} and {field}.{given[1]} are "
                                              "mutually exclusive.")
        if datum.get("Counts") is not None and given[0] != "Values":
            raise InvalidParameterCombination(f"The parameter {field}.Counts needs {field}.Values.")
        if datum.get("StorageResolution") not in (None, 1, 60):
            raise InvalidParameterValue(f"The value {datum['StorageResolution']} for parameter "
                                        f"{field}.StorageResolution is invalid: 1 or 60.")
        stamp = epoch(datum.get("Timestamp"))
        when = now if stamp is None else stamp
        if not now - PAST_LIMIT_S <= when <= now + FUTURE_LIMIT_S:
            raise InvalidParameterValue(f"The parameter {field}.Timestamp must specify a time no more than two "
                                        "weeks in the past and no more than two hours in the future.")
        dims = _dimensions(datum.get("Dimensions"), f"{field}.Dimensions")
        name, unit = datum["MetricName"], datum.get("Unit") or "None"
        if given[0] == "StatisticValues":
            sv = datum["StatisticValues"]
            count, total = (_finite(sv[k], f"{field}.StatisticValues.{k}") for k in ("SampleCount", "Sum"))
            low, high = (_finite(sv[k], f"{field}.StatisticValues.{k}") for k in ("Minimum", "Maximum"))
            if count <= 0 or low > high:
                raise InvalidParameterValue(f"The parameter {field}.StatisticValues must have SampleCount > 0 "
                                            "and Minimum <= Maximum.")
            return StatisticSet(namespace, name, dims, when, unit, count, total, low, high)
        values = [datum["Value"]] if given[0] == "Value" else list(datum["Values"])
        if not values:
            raise InvalidParameterValue(f"The parameter {field}.Values must not be empty.")
        for value in values:
            _finite(value, f"{field}.{given[0]}")
        if len(set(values)) > MAX_VALUES:
            raise InvalidParameterValue(f"The parameter {field}.Values may hold at most {MAX_VALUES} distinct "
                                        "values.")
        counts = datum.get("Counts")
        if counts is not None:
            if len(counts) != len(values):
                raise InvalidParameterValue(f"The parameters {field}.Values and {field}.Counts must be of the "
                                            "same size.")
            if any(not math.isfinite(c) or c < 0 or c != math.floor(c) for c in counts) or sum(counts) <= 0:
                raise InvalidParameterValue(f"The parameter {field}.Counts must be whole numbers >= 0, not all 0.")
        samples = np.repeat(np.asarray(values, dtype=np.float64),
                            np.asarray(counts, dtype=np.int64) if counts is not None else 1)
        return StatisticSet.of_samples(namespace, name, dims, when, unit, samples)

    async def get_metric_statistics(self, req: dict[str, Any]) -> dict[str, Any]:
        start, end, period = epoch(req["StartTime"]), epoch(req["EndTime"]), int(req["Period"])
        assert start is not None and end is not None
        if end <= start:
            raise InvalidParameterValue("The parameter StartTime must be less than the parameter EndTime.")
        simple, extended = req.get("Statistics") or [], req.get("ExtendedStatistics") or []
        if not simple and not extended:
            raise MissingParameter("The parameter Statistics or ExtendedStatistics is required.")
        if simple and extended:
            raise InvalidParameterCombination("The parameters Statistics and ExtendedStatistics are mutually "
                                              "exclusive.")
        for statistic in extended:
            try:
                valid = percentile_of(statistic) is not None
            except ValueError:
                valid = False
            if not valid:
                raise InvalidParameterValue(f"The value {statistic} for parameter ExtendedStatistics is invalid: "
                                            "percentiles pNN or pNN.NN are supported.")
        first = math.floor(start / period) * period  # datapoints sit on period boundaries, as in CloudWatch
        requested = math.ceil((end - first) / period)
        if requested > MAX_STATISTICS_DATAPOINTS:
            raise InvalidParameterCombination(
                f"You have requested up to {requested:,} datapoints, which exceeds the limit of "
                f"{MAX_STATISTICS_DATAPOINTS:,}. You may reduce the datapoints requested by increasing Period, or "
                "decreasing the time range.")
        namespace, name = req["Namespace"], req["MetricName"]
        dims = _dimensions(req.get("Dimensions"), "Dimensions")
        unit = req.get("Unit")
        metrics = self.metrics

        def read() -> list[dict[str, Any]]:
            points: dict[float, dict[str, Any]] = {}
            for statistic in [*simple, *extended]:
                for p in metrics.statistics(namespace, name, dims, statistic, first, end, period):
                    if unit is not None and p.unit != unit:
                        continue
                    point = points.setdefault(p.timestamp, {"Timestamp": p.timestamp, "Unit": p.unit})
                    if statistic in simple:
                        point[statistic] = p.value
                    else:
                        point.setdefault("ExtendedStatistics", {})[statistic] = p.value
            return [points[t] for t in sorted(points)]

        return {"Label": name, "Datapoints": await asyncio.to_thread(read)}

    async def get_metric_data(self, req: dict[str, Any]) -> dict[str, Any]:
        return await get_metric_data(self.metrics, req)

    async def list_metrics(self, req: dict[str, Any]) -> dict[str, Any]:
        filters = [(f["Name"], f.get("Value")) for f in req.get("Dimensions") or []]
        since = time.time() - RECENTLY_ACTIVE_S if req.get("RecentlyActive") == "PT3H" else None
        series = await asyncio.to_thread(self.metrics.list_metrics, req.get("Namespace"), req.get("MetricName"),
                                         None, since)
        matching = [s for s in series
                    if all(key in s.dimensions and (value is None or s.dimensions[key] == value)
                           for key, value in filters)]
        chunk, token = _page(matching, req, LIST_METRICS_PAGE)
        out: dict[str, Any] = {"Metrics": [{"Namespace": s.namespace, "MetricName": s.metric_name,
                                            "Dimensions": dimension_pairs(s.dimensions)} for s in chunk],
                               "NextToken": token}
        if req.get("IncludeLinkedAccounts"):
            out["OwningAccounts"] = [self.ctx.settings.account_id] * len(chunk)
        return out

    # -- alarms ------------------------------------------------------------------------------------
    async def put_metric_alarm(self, req: dict[str, Any]) -> dict[str, Any]:
        unsupported = [k for k in ("Metrics", "ThresholdMetricId", "EvaluationCriteria", "EvaluationInterval")
                       if req.get(k) is not None]
        if unsupported:
            raise NotImplementedOperation(f"moorage's alarms watch one metric: {', '.join(unsupported)} "
                                          "(metric math and query alarms) are not supported.")
        for key in ("Namespace", "MetricName", "Period", "EvaluationPeriods", "Threshold", "ComparisonOperator"):
            if req.get(key) is None:
                raise MissingParameter(f"The parameter {key} is required.")
        if req.get("Statistic") is None and req.get("ExtendedStatistic") is None:
            raise MissingParameter("The parameter Statistic or ExtendedStatistic is required.")
        if req.get("Statistic") is not None and req.get("ExtendedStatistic") is not None:
            raise InvalidParameterCombination("The parameters Statistic and ExtendedStatistic are mutually "
                                              "exclusive.")
        _dimensions(req.get("Dimensions"), "Dimensions")
        await asyncio.to_thread(self.alarms.put_alarm, req["AlarmName"], req)
        return {}

    async def describe_alarms(self, req: dict[str, Any]) -> dict[str, Any]:
        names, prefix = req.get("AlarmNames"), req.get("AlarmNamePrefix")
        if names and prefix:
            raise InvalidParameterCombination("The parameters AlarmNames and AlarmNamePrefix are mutually "
                                              "exclusive.")
        metric_alarms = "MetricAlarm" in (req.get("AlarmTypes") or ["MetricAlarm"])
        # Composite alarms' relations name composite alarms only, and there are none here.
        composite_only = req.get("ChildrenOfAlarmName") or req.get("ParentsOfAlarmName")
        alarms: list[dict[str, Any]] = []
        if metric_alarms and not composite_only:
            alarms = await asyncio.to_thread(self.alarms.list_alarms, req.get("StateValue"), prefix)
        if names:
            wanted = set(names)
            alarms = [a for a in alarms if a["AlarmName"] in wanted]
        if action_prefix := req.get("ActionPrefix"):
            alarms = [a for a in alarms if any(
                action.startswith(action_prefix)
                for key in ("AlarmActions", "OKActions", "InsufficientDataActions") for action in a.get(key) or ())]
        chunk, token = _page(alarms, req, req.get("MaxRecords") or DESCRIBE_ALARMS_DEFAULT)
        return {"MetricAlarms": [metric_alarm(a) for a in chunk], "CompositeAlarms": [], "NextToken": token}

    async def describe_alarms_for_metric(self, req: dict[str, Any]) -> dict[str, Any]:
        alarms = await asyncio.to_thread(self.alarms.list_alarms)
        wanted = {"Namespace": req["Namespace"], "MetricName": req["MetricName"]}
        for key in ("Statistic", "ExtendedStatistic", "Period"):
            if req.get(key) is not None:
                wanted[key] = req[key]
        dims = None if req.get("Dimensions") is None else dimension_key(_dimensions(req["Dimensions"], "Dimensions"))
        found = [a for a in alarms if all(a.get(k) == v for k, v in wanted.items())
                 and (dims is None or dimension_key(dimensions_from_pairs(a.get("Dimensions"))) == dims)]
        return {"MetricAlarms": [metric_alarm(a) for a in found]}

    async def describe_alarm_history(self, req: dict[str, Any]) -> dict[str, Any]:
        # As in CloudWatch, the history of an alarm that is not there is empty, not an error.
        if "MetricAlarm" not in (req.get("AlarmTypes") or ["MetricAlarm"]):
            return {"AlarmHistoryItems": []}
        size = req.get("MaxRecords") or HISTORY_DEFAULT
        offset = token_offset(req.get("NextToken"), InvalidNextToken)
        items = await asyncio.to_thread(
            self.alarms.history, req.get("AlarmName"), size + 1, req.get("HistoryItemType"),
            start=epoch(req.get("StartDate")), end=epoch(req.get("EndDate")),
            oldest_first=req.get("ScanBy") == "TimestampAscending", offset=offset)
        token = offset_token(offset + size) if len(items) > size else None
        return {"AlarmHistoryItems": [{**item, "AlarmType": "MetricAlarm"} for item in items[:size]],
                "NextToken": token}

    async def delete_alarms(self, req: dict[str, Any]) -> dict[str, Any]:
        names = list(dict.fromkeys(req["AlarmNames"]))
        alarms = self.alarms

        def delete() -> None:
            # As in CloudWatch: one name that is not an alarm, and none is deleted.
            missing = [name for name in names if alarms.state(name) is None]
            if missing:
                raise ResourceNotFound(f"Could not find the alarm(s): {', '.join(missing)}. No alarm was deleted.")
            for name in names:
                alarms.delete_alarm(name)

        await asyncio.to_thread(delete)
        return {}

    async def set_alarm_state(self, req: dict[str, Any]) -> dict[str, Any]:
        data: dict[str, Any] | None = None
        if req.get("StateReasonData"):
            try:
                data = orjson.loads(req["StateReasonData"])
            except orjson.JSONDecodeError as exc:
                raise InvalidFormat(f"Unable to parse StateReasonData as JSON: {exc}") from exc
            if not isinstance(data, dict):
                raise InvalidFormat("StateReasonData must be a JSON object.")
        await self.alarms.set_alarm_state(req["AlarmName"], req["StateValue"], req["StateReason"], data)
        return {}

    async def enable_alarm_actions(self, req: dict[str, Any]) -> dict[str, Any]:
        await asyncio.to_thread(self.alarms.set_actions_enabled, req["AlarmNames"], True)
        return {}

    async def disable_alarm_actions(self, req: dict[str, Any]) -> dict[str, Any]:
        await asyncio.to_thread(self.alarms.set_actions_enabled, req["AlarmNames"], False)
        return {}


def metric_alarm(body: dict[str, Any]) -> dict[str, Any]:
    """An alarm's row as CloudWatch's ``MetricAlarm`` (its reason data is a JSON string there)."""
    alarm = dict(body)
    data = alarm.pop("StateReasonData", None)
    if data:
        alarm["StateReasonData"] = orjson.dumps(data).decode()
    alarm["StateTransitionedTimestamp"] = alarm.get("StateUpdatedTimestamp")
    return alarm
