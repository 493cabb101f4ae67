"""Metric alarms, as CloudWatch defines them, on any series in the metric store.

An alarm watches one statistic of one series per period. Each evaluation looks at the last
``EvaluationPeriods`` complete periods; a period is breaching, not breaching, or missing. With
``DatapointsToAlarm`` M of N breaching the alarm is ALARM. Missing periods are treated as the
alarm's ``TreatMissingData`` says (CloudWatch's semantics):

- ``breaching`` / ``notBreaching``: a missing period counts as breaching / as within the threshold;
- ``missing``: only the periods with data count; with none at all the alarm goes INSUFFICIENT_DATA,
  and when fewer than M periods have data but all of them breach, the alarm goes ALARM;
- ``ignore``: as ``missing``, except that where ``missing`` would go INSUFFICIENT_DATA or ALARM
  for lack of data, the current state is kept.

A state change is written to the alarm's row (``resources`` kind ``alarm``) and its history, logged,
and acted on: each URL in the new state's actions (``AlarmActions``, ``OKActions``,
``InsufficientDataActions``) receives a JSON POST (the fields of CloudWatch's alarm notification)
from a worker thread, with a bounded timeout and retries. AWS ARNs are accepted and kept, so an
alarm written for AWS is taken unchanged; an Application Auto Scaling step policy's ARN is acted on
by the autoscaler (``autoscale/controller.py`` runs the policy while the alarm is in ALARM), other
ARNs (an SNS topic) are inert. Python code that needs the transitions has them from ``evaluate_all``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
import operator
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from moorage.errors import ResourceNotFound, ValidationException
from moorage.metrics.store import MetricStore, alarm_history
from moorage.metrics.vocabulary import (
    ALARM_STATES,
    COMPARISON_WORDS,
    MISSING_DATA_TREATMENTS,
    SIMPLE_STATISTICS,
    check_statistic,
    dimension_pairs,
    dimensions_from_pairs,
)
from moorage.store.metadata import AlreadyExists, ListQuery, MetadataStore, Resource

log = logging.getLogger("moorage.alarms")

ALARM_KIND = "alarm"
OK, ALARM, INSUFFICIENT_DATA = ALARM_STATES
STATES = ALARM_STATES
_OPERATORS = {"GreaterThanOrEqualToThreshold": operator.ge, "GreaterThanThreshold": operator.gt,
              "LessThanThreshold": operator.lt, "LessThanOrEqualToThreshold": operator.le}
COMPARISONS: dict[str, tuple[Callable[[float, float], bool], str]] = {
    name: (_OPERATORS[name], words) for name, words in COMPARISON_WORDS.items()}
TREATMENTS = MISSING_DATA_TREATMENTS
_NAME = re.compile(r"^[A-Za-z0-9_.:@+=-]{1,255}$")
_ACTIONS = {OK: "OKActions", ALARM: "AlarmActions", INSUFFICIENT_DATA: "InsufficientDataActions"}

WEBHOOK_TIMEOUT_S = 5.0
WEBHOOK_ATTEMPTS = 3
WEBHOOK_BACKOFF_S = 1.0


def iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True)
class AlarmDefinition:
    name: str
    namespace: str
    metric_name: str
    dimensions: dict[str, str]
    statistic: str
    period: int
    evaluation_periods: int
    datapoints_to_alarm: int
    threshold: float
    comparison: str
    treat_missing_data: str = "missing"
    description: str = ""
    actions_enabled: bool = True
    alarm_actions: tuple[str, ...] = ()
    ok_actions: tuple[str, ...] = ()
    insufficient_data_actions: tuple[str, ...] = ()

    @classmethod
    def from_request(cls, name: str, req: Mapping[str, Any]) -> AlarmDefinition:
        """Validate a PutMetricAlarm-shaped request (CloudWatch's field names)."""
        try:
            return cls._parse(name, req)
        except (KeyError, TypeError, ValueError) as exc:
            message = f"missing field {exc.args[0]}" if isinstance(exc, KeyError) else str(exc)
            raise ValidationException(f"Invalid alarm {name!r}: {message}") from exc

    @classmethod
    def _parse(cls, name: str, req: Mapping[str, Any]) -> AlarmDefinition:
        if not _NAME.match(name or ""):
            raise ValueError("AlarmName must be 1-255 characters of letters, digits and -_.:@+=")
        statistic = req.get("ExtendedStatistic") or req.get("Statistic") or ""
        if req.get("ExtendedStatistic") and req.get("Statistic"):
            raise ValueError("give Statistic or ExtendedStatistic, not both")
        check_statistic(statistic)
        period = int(req["Period"])
        evaluation_periods = int(req["EvaluationPeriods"])
        datapoints = int(req.get("DatapointsToAlarm") or evaluation_periods)
        if period < 1:
            raise ValueError("Period must be at least 1 second")
        if evaluation_periods < 1:
            raise ValueError("EvaluationPeriods must be at least 1")
        if not 1 <= datapoints <= evaluation_periods:
            raise ValueError("DatapointsToAlarm must be between 1 and EvaluationPeriods")
        comparison = req["ComparisonOperator"]
        if comparison not in COMPARISONS:
            raise ValueError(f"ComparisonOperator must be one of {', '.join(COMPARISONS)}")
        treatment = req.get("TreatMissingData") or "missing"
        if treatment not in TREATMENTS:
            raise ValueError(f"TreatMissingData must be one of {', '.join(TREATMENTS)}")
        threshold = float(req["Threshold"])
        if not math.isfinite(threshold):
            raise ValueError("Threshold must be a finite number")
        actions: dict[str, tuple[str, ...]] = {}
        for key in _ACTIONS.values():
            urls = tuple(req.get(key) or ())
            for url in urls:
                if not isinstance(url, str) or not url.startswith(("http://", "https://", "arn:")):
                    raise ValueError(f"{key}: {url!r} is not a webhook URL (http:// or https://) or an ARN")
            actions[key] = urls
        namespace, metric_name = str(req["Namespace"]), str(req["MetricName"])
        if not namespace or not metric_name:
            raise ValueError("Namespace and MetricName must not be empty")
        return cls(name=name, namespace=namespace, metric_name=metric_name,
                   dimensions=dimensions_from_pairs(req.get("Dimensions")), statistic=statistic, period=period,
                   evaluation_periods=evaluation_periods, datapoints_to_alarm=datapoints, threshold=threshold,
                   comparison=comparison, treat_missing_data=treatment,
                   description=str(req.get("AlarmDescription") or ""),
                   actions_enabled=bool(req.get("ActionsEnabled", True)), alarm_actions=actions["AlarmActions"],
                   ok_actions=actions["OKActions"], insufficient_data_actions=actions["InsufficientDataActions"])

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> AlarmDefinition:
        return cls._parse(body["AlarmName"], body)

    def config(self) -> dict[str, Any]:
        statistic_field = "Statistic" if self.statistic in SIMPLE_STATISTICS else "ExtendedStatistic"
        return {
            "AlarmName": self.name, "AlarmDescription": self.description, "ActionsEnabled": self.actions_enabled,
            "OKActions": list(self.ok_actions), "AlarmActions": list(self.alarm_actions),
            "InsufficientDataActions": list(self.insufficient_data_actions), "Namespace": self.namespace,
            "MetricName": self.metric_name, "Dimensions": dimension_pairs(self.dimensions),
            statistic_field: self.statistic, "Period": self.period, "EvaluationPeriods": self.evaluation_periods,
            "DatapointsToAlarm": self.datapoints_to_alarm, "Threshold": self.threshold,
            "ComparisonOperator": self.comparison, "TreatMissingData": self.treat_missing_data,
        }

    def actions_for(self, state: str) -> tuple[str, ...]:
        """The webhooks to call on entering ``state`` (ARNs are inert here)."""
        if not self.actions_enabled:
            return ()
        actions = {OK: self.ok_actions, ALARM: self.alarm_actions,
                   INSUFFICIENT_DATA: self.insufficient_data_actions}[state]
        return tuple(a for a in actions if not a.startswith("arn:"))


@dataclass(frozen=True)
class Evaluation:
    state: str
    reason: str
    data: dict[str, Any]


def evaluate(alarm: AlarmDefinition, values: list[float | None], current: str, start: float) -> Evaluation:
    """The state ``values`` (oldest first, one per period from ``start``, None = missing) put the alarm in."""
    compare, words = COMPARISONS[alarm.comparison]
    verdicts: list[bool | None] = [None if v is None else compare(v, alarm.threshold) for v in values]
    if alarm.treat_missing_data == "breaching":
        verdicts = [True if b is None else b for b in verdicts]
    elif alarm.treat_missing_data == "notBreaching":
        verdicts = [False if b is None else b for b in verdicts]
    present = [b for b in verdicts if b is not None]
    breaching = sum(1 for b in present if b)
    periods = len(values)
    recent = [{"timestamp": iso(start + i * alarm.period), "value": v} for i, v in enumerate(values) if v is not None]
    data = {"version": "1.0", "queryDate": iso(time.time()), "startDate": iso(start),
            "statistic": alarm.statistic, "period": alarm.period, "threshold": alarm.threshold,
            "recentDatapoints": [p["value"] for p in recent], "evaluatedDatapoints": recent}
    shown = ", ".join(f"{p['value']:g} ({p['timestamp']})" for p in recent[-5:])
    if breaching >= alarm.datapoints_to_alarm:
        return Evaluation(ALARM, f"Threshold Crossed: {breaching} out of the last {periods} datapoints "
                                 f"[{shown}] {'was' if breaching == 1 else 'were'} {words} the threshold "
                                 f"({alarm.threshold:g}) (minimum {alarm.datapoints_to_alarm} datapoint(s) for "
                                 f"ALARM).", data)
    if not present:
        if alarm.treat_missing_data == "ignore":
            return Evaluation(current, "no datapoints; missing data is ignored, so the state is kept", data)
        return Evaluation(INSUFFICIENT_DATA, f"Insufficient Data: no datapoints were received for {periods} "
                                             f"period(s) of {alarm.period} s.", data)
    if len(present) < alarm.datapoints_to_alarm and all(present):
        if alarm.treat_missing_data == "ignore":
            return Evaluation(current, "too few datapoints to decide; missing data is ignored, so the state is "
                                       "kept", data)
        return Evaluation(ALARM, f"Threshold Crossed: all {len(present)} datapoint(s) received in the last "
                                 f"{periods} period(s) [{shown}] were {words} the threshold "
                                 f"({alarm.threshold:g}); the rest are missing.", data)
    return Evaluation(OK, f"Threshold Crossed: {breaching} out of the last {periods} datapoints [{shown}] "
                          f"{'was' if breaching == 1 else 'were'} {words} the threshold ({alarm.threshold:g}), "
                          f"fewer than the {alarm.datapoints_to_alarm} needed for ALARM.", data)


@dataclass(frozen=True)
class AlarmTransition:
    name: str
    old_state: str
    new_state: str
    reason: str
    timestamp: float
    definition: AlarmDefinition


class AlarmService:
    """Alarm definitions and states in the store; evaluation; actions on state change."""

    def __init__(self, store: MetadataStore, metrics: MetricStore, region: str, account_id: str,
                 webhook_timeout: float = WEBHOOK_TIMEOUT_S, webhook_attempts: int = WEBHOOK_ATTEMPTS,
                 data_period: int = 1):
        self.store = store
        # The period of the platform's own datapoints: an alarm period must be a multiple of it, or
        # most of its periods would hold no datapoint at all.
        self.data_period = data_period
        self.metrics = metrics
        self.region = region
        self.account_id = account_id
        self.webhook_timeout = webhook_timeout
        self.webhook_attempts = webhook_attempts
        self._deliveries: set[asyncio.Task[None]] = set()
        # Alarm rows are read-modify-written by the API and by the evaluator (each in worker threads).
        self._lock = threading.RLock()
        self._evaluated_end: dict[str, float] = {}

    def arn(self, name: str) -> str:
        return f"arn:aws:cloudwatch:{self.region}:{self.account_id}:alarm:{name}"

    def state(self, name: str) -> str | None:
        row = self.store.get(ALARM_KIND, name)
        return row.status if row else None

    # -- definitions -------------------------------------------------------------------------------
    def put_alarm(self, name: str, req: Mapping[str, Any]) -> dict[str, Any]:
        """Create or replace an alarm (PutMetricAlarm); a new alarm starts INSUFFICIENT_DATA."""
        alarm = AlarmDefinition.from_request(name, req)
        if alarm.period % self.data_period:
            raise ValidationException(f"Invalid alarm {name!r}: Period must be a multiple of this server's metrics "
                                      f"period ({self.data_period} s)")
        now = time.time()
        with self._lock:
            row = self.store.get(ALARM_KIND, name)
            if row is None:
                body = {**alarm.config(), "AlarmArn": self.arn(name), "AlarmConfigurationUpdatedTimestamp": iso(now),
                        "StateValue": INSUFFICIENT_DATA, "StateReason": "Unchecked: Initial alarm creation",
                        "StateReasonData": {}, "StateUpdatedTimestamp": iso(now)}
                try:
                    self.store.create(ALARM_KIND, name, self.arn(name), body, status=INSUFFICIENT_DATA)
                except AlreadyExists:  # created meanwhile by another server on the same database
                    return self.put_alarm(name, req)
                summary = f"Alarm \"{name}\" created"
            else:
                body = {**row.body, **alarm.config(), "AlarmConfigurationUpdatedTimestamp": iso(now)}
                if "ExtendedStatistic" in alarm.config():
                    body.pop("Statistic", None)
                else:
                    body.pop("ExtendedStatistic", None)
                self.store.update(ALARM_KIND, name, body=body)
                summary = f"Alarm \"{name}\" updated"
            self._evaluated_end.pop(name, None)
            self._history(name, now, "ConfigurationUpdate", summary, {"type": "Update", "updatedAlarm": alarm.config()})
        return self.describe_alarm(name)

    def delete_alarm(self, name: str) -> None:
        with self._lock:
            if not self.store.delete(ALARM_KIND, name):
                raise ResourceNotFound(f"Could not find alarm {name!r}.")
            self._evaluated_end.pop(name, None)
            with self.metrics.engine.begin() as conn:
                conn.execute(delete(alarm_history).where(alarm_history.c.alarm_name == name))

    def describe_alarm(self, name: str) -> dict[str, Any]:
        row = self.store.get(ALARM_KIND, name)
        if row is None:
            raise ResourceNotFound(f"Could not find alarm {name!r}.")
        return dict(row.body)

    def list_alarms(self, state: str | None = None, prefix: str | None = None) -> list[dict[str, Any]]:
        if state is not None and state not in STATES:
            raise ValidationException(f"StateValue must be one of {', '.join(STATES)}")
        rows = self.store.list(ALARM_KIND, ListQuery(status=state, sort_by="name", descending=False))
        return [dict(r.body) for r in rows if not prefix or r.name.startswith(prefix)]

    def history(self, name: str | None, limit: int = 100, item_type: str | None = None, *,
                start: float | None = None, end: float | None = None, oldest_first: bool = False,
                offset: int = 0) -> list[dict[str, Any]]:
        """Newest first (unless ``oldest_first``), as DescribeAlarmHistory; every alarm's when ``name`` is None."""
        stmt = select(alarm_history)
        if name is not None:
            stmt = stmt.where(alarm_history.c.alarm_name == name)
        if item_type:
            stmt = stmt.where(alarm_history.c.item_type == item_type)
        if start is not None:
            stmt = stmt.where(alarm_history.c.timestamp >= start)
        if end is not None:
            stmt = stmt.where(alarm_history.c.timestamp <= end)
        order = (alarm_history.c.timestamp.asc(), alarm_history.c.id.asc()) if oldest_first else (
            alarm_history.c.timestamp.desc(), alarm_history.c.id.desc())
        stmt = stmt.order_by(*order).offset(max(0, offset)).limit(max(1, limit))
        with self.metrics.engine.connect() as conn:
            return [{"AlarmName": r.alarm_name, "Timestamp": iso(r.timestamp), "HistoryItemType": r.item_type,
                     "HistorySummary": r.summary, "HistoryData": orjson.dumps(r.data).decode()}
                    for r in conn.execute(stmt)]

    def _history(self, name: str, when: float, item_type: str, summary: str, data: dict[str, Any]) -> None:
        with self.metrics.engine.begin() as conn:
            conn.execute(insert(alarm_history).values(alarm_name=name, timestamp=when, item_type=item_type,
                                                      summary=summary[:1024], data=data))

    def set_actions_enabled(self, names: list[str], enabled: bool) -> None:
        """EnableAlarmActions / DisableAlarmActions: names of no alarm are passed over, as in CloudWatch."""
        with self._lock:
            for name in names:
                row = self.store.get(ALARM_KIND, name)
                if row is not None and row.body.get("ActionsEnabled", True) != enabled:
                    self.store.update(ALARM_KIND, name, body={**row.body, "ActionsEnabled": enabled}, touch=False)

    # -- state -------------------------------------------------------------------------------------
    def _transition(self, row: Resource, new_state: str, reason: str, data: dict[str, Any],
                    now: float) -> AlarmTransition | None:
        """Write a state change (caller holds the lock); None when the state is unchanged."""
        old_state = row.status or INSUFFICIENT_DATA
        if new_state == old_state:
            return None
        body = {**row.body, "StateValue": new_state, "StateReason": reason, "StateReasonData": data,
                "StateUpdatedTimestamp": iso(now)}
        self.store.update(ALARM_KIND, row.name, status=new_state, body=body, touch=False)
        self._history(row.name, now, "StateUpdate", f"Alarm updated from {old_state} to {new_state}",
                      {"version": "1.0", "oldState": {"stateValue": old_state, "stateReason": row.body.get(
                          "StateReason", "")}, "newState": {"stateValue": new_state, "stateReason": reason,
                                                           "stateReasonData": data}})
        return AlarmTransition(row.name, old_state, new_state, reason, now, AlarmDefinition.from_body(body))

    async def set_alarm_state(self, name: str, state: str, reason: str, data: dict[str, Any] | None = None) -> None:
        """SetAlarmState: force a state (to test actions); the next evaluation sets it back if the data disagree."""
        if state not in STATES:
            raise ValidationException(f"StateValue must be one of {', '.join(STATES)}")

        def write() -> AlarmTransition | None:
            with self._lock:
                row = self.store.get(ALARM_KIND, name)
                if row is None:
                    raise ResourceNotFound(f"Could not find alarm {name!r}.")
                self._evaluated_end.pop(name, None)
                return self._transition(row, state, reason, data or {"setBy": "SetAlarmState"}, time.time())

        transition = await asyncio.to_thread(write)
        if transition is not None:
            self._announce(transition)

    async def evaluate_all(self, now: float | None = None) -> list[AlarmTransition]:
        """Evaluate every alarm whose last period has completed since its previous evaluation."""
        transitions = await asyncio.to_thread(self._evaluate_all, time.time() if now is None else now)
        for transition in transitions:
            self._announce(transition)
        return transitions

    def _evaluate_all(self, now: float) -> list[AlarmTransition]:
        out = []
        for row in self.store.list(ALARM_KIND, ListQuery(sort_by="name", descending=False)):
            try:
                transition = self._evaluate_one(row, now)
            except Exception:
                log.exception("evaluating alarm %s failed", row.name)
                continue
            if transition is not None:
                out.append(transition)
        return out

    def _evaluate_one(self, row: Resource, now: float) -> AlarmTransition | None:
        alarm = AlarmDefinition.from_body(row.body)
        end = math.floor(now / alarm.period) * alarm.period  # the last complete period ends here
        if self._evaluated_end.get(row.name) == end:
            return None
        start = end - alarm.evaluation_periods * alarm.period
        points = self.metrics.statistics(alarm.namespace, alarm.metric_name, alarm.dimensions, alarm.statistic,
                                         start, end, alarm.period)
        by_slot = {round((p.timestamp - start) / alarm.period): p.value for p in points}
        values = [by_slot.get(i) for i in range(alarm.evaluation_periods)]
        with self._lock:
            current = self.store.get(ALARM_KIND, row.name)
            if current is None or current.body.get("AlarmConfigurationUpdatedTimestamp") != row.body.get(
                    "AlarmConfigurationUpdatedTimestamp"):
                return None  # deleted or changed meanwhile: the next round evaluates the new definition
            self._evaluated_end[row.name] = end
            result = evaluate(alarm, values, current.status or INSUFFICIENT_DATA, start)
            return self._transition(current, result.state, result.reason, result.data, now)

    # -- actions -----------------------------------------------------------------------------------
    def _announce(self, transition: AlarmTransition) -> None:
        level = logging.WARNING if transition.new_state == ALARM else logging.INFO
        log.log(level, "alarm %s: %s -> %s: %s", transition.name, transition.old_state, transition.new_state,
                transition.reason)
        loop = asyncio.get_running_loop()
        payload = self._notification(transition)
        for url in transition.definition.actions_for(transition.new_state):
            task = loop.create_task(self._deliver(transition.name, url, payload))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    def _notification(self, t: AlarmTransition) -> dict[str, Any]:
        alarm = t.definition
        return {"AlarmName": t.name, "AlarmDescription": alarm.description, "AlarmArn": self.arn(t.name),
                "AWSAccountId": self.account_id, "Region": self.region, "OldStateValue": t.old_state,
                "NewStateValue": t.new_state, "NewStateReason": t.reason, "StateChangeTime": iso(t.timestamp),
                "Trigger": {"MetricName": alarm.metric_name, "Namespace": alarm.namespace,
                            "Statistic": alarm.statistic, "Dimensions": dimension_pairs(alarm.dimensions),
                            "Period": alarm.period, "EvaluationPeriods": alarm.evaluation_periods,
                            "DatapointsToAlarm": alarm.datapoints_to_alarm,
                            "ComparisonOperator": alarm.comparison, "Threshold": alarm.threshold,
                            "TreatMissingData": alarm.treat_missing_data}}

    async def _deliver(self, name: str, url: str, payload: dict[str, Any]) -> None:
        body = orjson.dumps(payload)
        error = ""
        for attempt in range(self.webhook_attempts):
            try:
                status = await asyncio.to_thread(_post_json, url, body, self.webhook_timeout)
            except Exception as exc:  # network errors, HTTP errors: retried
                error = f"{type(exc).__name__}: {exc}"
            else:
                log.info("alarm %s: webhook %s answered %d", name, url, status)
                await asyncio.to_thread(self._history, name, time.time(), "Action",
                                        f"Successfully executed action {url}", {"url": url, "status": status,
                                                                                 "attempts": attempt + 1})
                return
            if attempt + 1 < self.webhook_attempts:
                await asyncio.sleep(WEBHOOK_BACKOFF_S * 2**attempt)
        log.error("alarm %s: webhook %s failed after %d attempt(s): %s", name, url, self.webhook_attempts, error)
        await asyncio.to_thread(self._history, name, time.time(), "Action", f"Failed to execute action {url}",
                                {"url": url, "error": error, "attempts": self.webhook_attempts})

    async def close(self, timeout: float = 10.0) -> None:
        """Let webhooks in flight finish (bounded), then cancel what is left."""
        pending = list(self._deliveries)
        if pending:
            _, still = await asyncio.wait(pending, timeout=timeout)
            for task in still:
                task.cancel()


def _post_json(url: str, body: bytes, timeout: float) -> int:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "User-Agent": "moorage-alarms"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        response.read()
        return int(response.status)
