"""The alarm test: a model that starts failing drives Invocation5XXErrors over a threshold, and the
alarm fires its webhook (a tiny HTTP receiver started here); when the model recovers, the alarm goes
back to OK and fires its OK webhook. Real server (1-second metric periods), real boto3 traffic."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import Deployer, MoorageServer, pack_model, wait_until

# predict_fn fails (HTTP 500) while the flag file named by FAIL_FLAG exists.
INFERENCE_PY = """
import json
import os


def model_fn(model_dir):
    return os.environ["FAIL_FLAG"]


def input_fn(body, content_type):
    return json.loads(body)


def predict_fn(data, flag):
    if os.path.exists(flag):
        raise RuntimeError("the model's backing store is gone")
    return data


def output_fn(prediction, accept):
    return json.dumps(prediction)
"""


class WebhookReceiver:
    """Loopback HTTP server that keeps every JSON body POSTed to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    receiver.bodies.append({"path": self.path, **json.loads(body)})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def received(self, path: str, new_state: str) -> list[dict[str, Any]]:
        with self.lock:
            return [b for b in self.bodies if b["path"] == path and b["NewStateValue"] == new_state]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class Traffic:
    """Invokes an endpoint continuously from a thread, counting successes and model errors."""

    def __init__(self, server: MoorageServer, endpoint: str) -> None:
        self.runtime = server.rt()
        self.endpoint = endpoint
        self.ok = 0
        self.failed = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                self.runtime.invoke_endpoint(EndpointName=self.endpoint, Body=b'{"x": 1}',
                                             ContentType="application/json")
                self.ok += 1
            except ClientError as exc:
                assert exc.response["Error"]["Code"] == "ModelError"
                self.failed += 1
            time.sleep(0.01)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    rec = WebhookReceiver()
    try:
        yield rec
    finally:
        rec.close()


def test_failing_model_fires_the_alarm_webhook(tmp_path: Path, receiver: WebhookReceiver) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOORAGE_METRICS_PERIOD", "1")
        server = MoorageServer(tmp_path / "home").start(timeout=90)
    deployer = Deployer(server)
    traffic: Traffic | None = None
    try:
        flag = tmp_path / "fail-now"
        tarball = pack_model(tmp_path / "model", None, inference_py=INFERENCE_PY)
        endpoint = deployer.deploy("alarmed", tarball.as_uri(), env={"FAIL_FLAG": str(flag)})
        alarm = {
            "Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors",
            "Dimensions": [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}],
            "Statistic": "Sum", "Period": 1, "EvaluationPeriods": 3, "DatapointsToAlarm": 2, "Threshold": 3,
            "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "notBreaching",
            "AlarmActions": [receiver.base + "/alarm"], "OKActions": [receiver.base + "/ok"],
            "AlarmDescription": "the model fails",
        }
        status, _, body = server.signed_request("PUT", "/moorage/v1/alarms/model-failing", json.dumps(alarm).encode())
        assert status == 200, body
        assert json.loads(body)["StateValue"] == "INSUFFICIENT_DATA"

        def state() -> str:
            status, _, body = server.signed_request("GET", "/moorage/v1/alarms/model-failing")
            assert status == 200, body
            return json.loads(body)["StateValue"]

        traffic = Traffic(server, endpoint)
        wait_until(lambda: state() == "OK" and traffic.ok > 20, timeout=30, what="healthy traffic, alarm OK")
        assert receiver.received("/ok", "OK"), "the INSUFFICIENT_DATA -> OK change runs the OK actions"
        assert receiver.received("/alarm", "ALARM") == []

        flag.touch()  # the model starts failing
        fired = wait_until(lambda: receiver.received("/alarm", "ALARM"), timeout=45, what="ALARM webhook")
        assert traffic.failed > 3
        [notification] = fired
        assert notification["AlarmName"] == "model-failing"
        assert notification["OldStateValue"] == "OK" and notification["NewStateValue"] == "ALARM"
        assert notification["AlarmDescription"] == "the model fails"
        assert notification["Trigger"]["MetricName"] == "Invocation5XXErrors"
        assert notification["Trigger"]["Threshold"] == 3
        assert "greater than the threshold (3)" in notification["NewStateReason"]
        assert state() == "ALARM"

        flag.unlink()  # it recovers
        wait_until(lambda: [b for b in receiver.received("/ok", "OK") if b["OldStateValue"] == "ALARM"],
                   timeout=45, what="OK webhook after recovery")
        traffic.close()

        status, _, body = server.signed_request("GET", "/moorage/v1/alarms/model-failing?HistoryMaxRecords=50")
        history = json.loads(body)["AlarmHistoryItems"]
        changes = [item["HistorySummary"] for item in reversed(history) if item["HistoryItemType"] == "StateUpdate"]
        assert changes == ["Alarm updated from INSUFFICIENT_DATA to OK", "Alarm updated from OK to ALARM",
                           "Alarm updated from ALARM to OK"]
        assert sum(1 for item in history if item["HistoryItemType"] == "Action") == 3
        log = server.log_path.read_text()
        assert "alarm model-failing: OK -> ALARM" in log
    finally:
        if traffic is not None:
            traffic.close()
        deployer.cleanup()
        server.stop()
