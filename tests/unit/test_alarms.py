"""Alarm evaluation (CloudWatch's M-of-N and missing-data rules) and the alarm service over a real
SQLite store, with its webhooks received by a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from moorage.errors import ResourceNotFound, ValidationException
from moorage.metrics.alarms import (
    ALARM,
    INSUFFICIENT_DATA,
    OK,
    AlarmDefinition,
    AlarmService,
    AlarmTransition,
    evaluate,
)
from moorage.metrics.store import MetricStore
from moorage.store.metadata import MetadataStore

T0 = 1_700_000_000.0  # a multiple of 10
DIMS = [{"Name": "EndpointName", "Value": "ep"}, {"Name": "VariantName", "Value": "AllTraffic"}]


def definition(**overrides: Any) -> AlarmDefinition:
    req = {"Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors", "Dimensions": DIMS,
           "Statistic": "Sum", "Period": 10, "EvaluationPeriods": 3, "DatapointsToAlarm": 3, "Threshold": 5,
           "ComparisonOperator": "GreaterThanThreshold", **overrides}
    return AlarmDefinition.from_request("errors", req)


X, G, _ = 10.0, 1.0, None  # breaching, good (not breaching), missing


@pytest.mark.parametrize(("values", "expected"), [
    # CloudWatch's documented examples for 3 of 3: columns missing, ignore, breaching, notBreaching
    ([G, _, X], {"missing": OK, "ignore": OK, "breaching": OK, "notBreaching": OK}),
    ([_, _, _], {"missing": INSUFFICIENT_DATA, "ignore": "KEEP", "breaching": ALARM, "notBreaching": OK}),
    ([X, X, X], {"missing": ALARM, "ignore": ALARM, "breaching": ALARM, "notBreaching": ALARM}),
    ([_, X, _], {"missing": ALARM, "ignore": "KEEP", "breaching": ALARM, "notBreaching": OK}),
    ([_, _, G], {"missing": OK, "ignore": OK, "breaching": OK, "notBreaching": OK}),
    ([X, _, X], {"missing": ALARM, "ignore": "KEEP", "breaching": ALARM, "notBreaching": OK}),
])
def test_missing_data_treatments(values: list[float | None], expected: dict[str, str]) -> None:
    for treatment, state in expected.items():
        for current in (OK, ALARM):
            result = evaluate(definition(TreatMissingData=treatment), values, current, T0)
            assert result.state == (current if state == "KEEP" else state), (treatment, values, current)


def test_m_of_n_and_comparisons() -> None:
    two_of_three = definition(DatapointsToAlarm=2)
    assert evaluate(two_of_three, [X, G, X], OK, T0).state == ALARM
    assert evaluate(two_of_three, [G, G, X], ALARM, T0).state == OK
    at_least = definition(ComparisonOperator="GreaterThanOrEqualToThreshold", EvaluationPeriods=1,
                          DatapointsToAlarm=1)
    assert evaluate(at_least, [5.0], OK, T0).state == ALARM
    assert evaluate(definition(EvaluationPeriods=1, DatapointsToAlarm=1), [5.0], ALARM, T0).state == OK
    low = definition(ComparisonOperator="LessThanThreshold", Threshold=2, EvaluationPeriods=1, DatapointsToAlarm=1)
    assert evaluate(low, [1.0], OK, T0).state == ALARM
    result = evaluate(two_of_three, [X, G, X], OK, T0)
    assert "2 out of the last 3" in result.reason
    assert result.data["recentDatapoints"] == [X, G, X]


@pytest.mark.parametrize("bad", [
    {"ComparisonOperator": "Bigger"}, {"TreatMissingData": "sometimes"}, {"Period": 0},
    {"DatapointsToAlarm": 4}, {"Statistic": "Median"}, {"AlarmActions": ["sns:topic"]}, {"Threshold": "x"},
])
def test_invalid_definitions_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationException):
        definition(**bad)


class Receiver:
    """A tiny webhook receiver on loopback: records every JSON POST; can fail the first N."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.fail_first = fail_first
        self.received = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.fail_first > 0:
                    receiver.fail_first -= 1
                    self.send_response(503)
                else:
                    receiver.bodies.append(json.loads(body))
                    receiver.received.set()
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver(fail_first=1)
    try:
        yield rec
    finally:
        rec.close()


@pytest.fixture
def service(tmp_path: Path) -> AlarmService:
    meta = MetadataStore(f"sqlite:///{tmp_path / 'moorage.db'}")
    return AlarmService(meta, MetricStore(meta.engine), "us-east-1", "000000000000", webhook_timeout=2)


def test_service_evaluates_stores_history_and_fires_webhooks(service: AlarmService, receiver: Receiver) -> None:
    import moorage.metrics.alarms as alarms_module

    alarms_module.WEBHOOK_BACKOFF_S = 0.05  # the receiver fails the first POST: exercise a retry, quickly
    transitions: list[AlarmTransition] = []
    created = service.put_alarm("errors", {
        "Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors", "Dimensions": DIMS, "Statistic": "Sum",
        "Period": 10, "EvaluationPeriods": 2, "DatapointsToAlarm": 1, "Threshold": 5,
        "ComparisonOperator": "GreaterThanThreshold", "AlarmActions": [receiver.url], "OKActions": [receiver.url]})
    assert created["StateValue"] == INSUFFICIENT_DATA
    dims = {d["Name"]: d["Value"] for d in DIMS}
    metrics = service.metrics

    async def scenario() -> None:
        metrics.put("AWS/SageMaker", "Invocation5XXErrors", dims, [1.0, 1.0], timestamp=T0 + 5)
        transitions.extend(await service.evaluate_all(T0 + 20))  # [T0, T0+10): 2 errors; [T0+10, T0+20): missing
        assert service.state("errors") == OK
        metrics.put("AWS/SageMaker", "Invocation5XXErrors", dims, [1.0] * 9, timestamp=T0 + 25)
        transitions.extend(await service.evaluate_all(T0 + 30))
        assert service.state("errors") == ALARM
        transitions.extend(await service.evaluate_all(T0 + 31))  # same periods: not evaluated again
        await service.close(timeout=10)

    asyncio.run(scenario())
    assert [(t.old_state, t.new_state) for t in transitions] == [(INSUFFICIENT_DATA, OK), (OK, ALARM)]
    assert receiver.received.wait(5)
    # Both transitions have actions (OKActions, AlarmActions); the receiver refused the first POST once.
    assert sorted((b["OldStateValue"], b["NewStateValue"]) for b in receiver.bodies) == [
        (INSUFFICIENT_DATA, OK), (OK, ALARM)]
    alarm_body = next(b for b in receiver.bodies if b["NewStateValue"] == ALARM)
    assert alarm_body["AlarmName"] == "errors" and alarm_body["Trigger"]["MetricName"] == "Invocation5XXErrors"
    assert "9" in alarm_body["NewStateReason"]
    history = service.history("errors")
    kinds = [h["HistoryItemType"] for h in history]
    assert kinds.count("StateUpdate") == 2 and kinds.count("ConfigurationUpdate") == 1
    actions = [json.loads(h["HistoryData"]) for h in history if h["HistoryItemType"] == "Action"]
    assert sorted(a["attempts"] for a in actions) == [1, 2] and all(a["status"] == 200 for a in actions)
    described = service.describe_alarm("errors")
    assert described["StateValue"] == ALARM and described["StateReasonData"]["recentDatapoints"] == [9.0]
    assert [a["AlarmName"] for a in service.list_alarms(state=ALARM)] == ["errors"]
    assert service.list_alarms(state=OK) == []


def test_alarm_period_is_a_multiple_of_the_data_period(tmp_path: Path) -> None:
    meta = MetadataStore(f"sqlite:///{tmp_path / 'moorage.db'}")
    service = AlarmService(meta, MetricStore(meta.engine), "us-east-1", "000000000000", data_period=60)
    req = {"Namespace": "App", "MetricName": "Latency", "Statistic": "Average", "EvaluationPeriods": 1,
           "Threshold": 1, "ComparisonOperator": "GreaterThanThreshold"}
    with pytest.raises(ValidationException, match="multiple"):
        service.put_alarm("fast", {**req, "Period": 30})
    assert service.put_alarm("fast", {**req, "Period": 120})["Period"] == 120


def test_update_keeps_state_and_delete_removes(service: AlarmService) -> None:
    req = {"Namespace": "App", "MetricName": "Latency", "ExtendedStatistic": "p99", "Period": 60,
           "EvaluationPeriods": 1, "Threshold": 1000, "ComparisonOperator": "GreaterThanThreshold"}
    service.put_alarm("slow", req)
    asyncio.run(service.set_alarm_state("slow", ALARM, "testing"))
    updated = service.put_alarm("slow", {**req, "Threshold": 2000, "ExtendedStatistic": None, "Statistic": "Average"})
    assert updated["StateValue"] == ALARM and updated["Threshold"] == 2000
    assert updated["Statistic"] == "Average" and "ExtendedStatistic" not in updated
    service.delete_alarm("slow")
    assert service.state("slow") is None
    with pytest.raises(ResourceNotFound):
        service.describe_alarm("slow")
    with pytest.raises(ResourceNotFound):
        service.delete_alarm("slow")
