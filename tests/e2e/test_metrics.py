"""Metrics end to end: boto3 traffic against a real `moorage serve` (1-second periods) becomes
SageMaker's metrics in the store, queryable through the native API, the SDK and the CLI; business
metrics put through the SDK live beside them, in queries and in /metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from botocore.exceptions import ClientError as BotoClientError

from e2e_support import Deployer, MoorageServer, http_request, pack_model, wait_until
from moorage.connection import ClientError
from moorage.sdk import Session

# Requests choose their fate: {"sleep": s} answers after s seconds, {"status": 400} is the model's
# client error, {"status": 500} its crash.
INFERENCE_PY = """
import json
import time


class Refused(Exception):
    def __init__(self, status):
        super().__init__(f"refused with {status}")
        self.status_code = status


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return json.loads(body)


def predict_fn(data, model):
    time.sleep(data.get("sleep", 0))
    if data.get("status"):
        raise Refused(data["status"])
    return {"ok": True}


def output_fn(prediction, accept):
    return json.dumps(prediction)
"""

GOOD, CLIENT_ERRORS, SERVER_ERRORS = 30, 4, 3
SLEEP_S = 0.005


@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    home = tmp_path_factory.mktemp("metrics-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOORAGE_METRICS_PERIOD", "1")
        server = MoorageServer(home)
        server.start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def endpoint(metrics_server: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    deployer = Deployer(metrics_server)
    tarball = pack_model(tmp_path_factory.mktemp("metrics-model"), None, inference_py=INFERENCE_PY)
    try:
        name = deployer.deploy("metrics", tarball.as_uri())
        runtime = metrics_server.rt()
        for body in [{"sleep": SLEEP_S}] * GOOD + [{"status": 400}] * CLIENT_ERRORS + [{"status": 500}] * SERVER_ERRORS:
            try:
                runtime.invoke_endpoint(EndpointName=name, Body=json.dumps(body), ContentType="application/json")
            except BotoClientError as exc:
                assert exc.response["Error"]["Code"] == "ModelError"
        yield name
    finally:
        deployer.cleanup()


def query(server: MoorageServer, metric: str, dims: dict[str, str], statistic: str, period: int = 300,
          namespace: str = "AWS/SageMaker", since: float = 300) -> list[dict[str, Any]]:
    now = time.time()
    params = [("Namespace", namespace), ("MetricName", metric), ("Statistic", statistic),
              ("StartTime", str(now - since)), ("EndTime", str(now + 5)), ("Period", str(period))]
    params += [("Dimension", f"{k}={v}") for k, v in dims.items()]
    status, _, body = server.signed_request("GET", "/moorage/v1/metrics?" + urlencode(params))
    assert status == 200, body
    return json.loads(body)["Datapoints"]


def total(server: MoorageServer, metric: str, dims: dict[str, str], statistic: str = "Sum", **kw: Any) -> float:
    return sum(p["Value"] for p in query(server, metric, dims, statistic, **kw))


def variant(endpoint: str) -> dict[str, str]:
    return {"EndpointName": endpoint, "VariantName": "AllTraffic"}


def test_boto3_traffic_becomes_sagemaker_metrics(metrics_server: MoorageServer, endpoint: str) -> None:
    dims = variant(endpoint)
    calls = GOOD + CLIENT_ERRORS + SERVER_ERRORS
    wait_until(lambda: total(metrics_server, "Invocations", dims) == calls, timeout=20, what="Invocations flushed")
    assert total(metrics_server, "Invocation4XXErrors", dims) == CLIENT_ERRORS
    assert total(metrics_server, "Invocation5XXErrors", dims) == SERVER_ERRORS
    [instance] = metrics_server.instances(endpoint)
    instance_dims = {**dims, "InstanceId": instance["InstanceId"]}
    assert total(metrics_server, "Invocations", instance_dims) == calls
    assert total(metrics_server, "InvocationsPerInstance", dims) == calls  # one instance
    [latency] = query(metrics_server, "ModelLatency", dims, "SampleCount")
    assert latency["Value"] == calls and latency["Unit"] == "Microseconds"
    # The successful requests slept in the model: their instance hop took at least that long.
    [p90] = query(metrics_server, "ModelLatency", dims, "p90")
    assert p90["Value"] >= SLEEP_S * 1e6
    [maximum] = query(metrics_server, "ModelLatency", dims, "Maximum")
    [minimum] = query(metrics_server, "ModelLatency", dims, "Minimum")
    assert minimum["Value"] <= p90["Value"] <= maximum["Value"]
    assert total(metrics_server, "OverheadLatency", dims, "SampleCount") == calls
    # Average of the error metric is the error rate, as in SageMaker.
    [rate] = query(metrics_server, "Invocation5XXErrors", dims, "Average")
    assert rate["Value"] == pytest.approx(SERVER_ERRORS / calls)


def test_instances_are_sampled(metrics_server: MoorageServer, endpoint: str) -> None:
    dims = variant(endpoint)
    util = "/aws/sagemaker/Endpoints"
    wait_until(lambda: query(metrics_server, "CPUUtilization", dims, "Average", period=1, namespace=util),
               timeout=20, what="CPUUtilization datapoints")
    cpu = query(metrics_server, "CPUUtilization", dims, "Maximum", namespace=util)[0]["Value"]
    memory = query(metrics_server, "MemoryUtilization", dims, "Average", namespace=util)[0]["Value"]
    disk = query(metrics_server, "DiskUtilization", dims, "Average", namespace=util)[0]["Value"]
    assert cpu >= 0 and 0 < memory < 100 and 0 < disk <= 100
    assert [p["Unit"] for p in query(metrics_server, "MemoryUtilization", dims, "Average", namespace=util)] == [
        "Percent"]
    [instance] = metrics_server.instances(endpoint)
    [setup] = query(metrics_server, "ModelSetupTime", dims, "SampleCount")
    assert setup["Value"] == 1  # published once per instance
    [setup_us] = query(metrics_server, "ModelSetupTime", dims, "Maximum")
    assert setup_us["Value"] == pytest.approx(instance["ModelSetupSeconds"] * 1e6, rel=1e-3)


def test_business_metrics_beside_system_metrics(metrics_server: MoorageServer, endpoint: str) -> None:
    session = Session(url=metrics_server.url, access_key_id=metrics_server.access_key_id,
                      secret_access_key=metrics_server.secret_access_key)
    dims = variant(endpoint)
    session.put_metric("CouponsRedeemed", [1, 2, 3], dimensions=dims, unit="Count", namespace="Shop")
    session.put_metric("CouponsRedeemed", 4, dimensions=dims, unit="Count", namespace="Shop")
    points = session.get_metric_statistics("CouponsRedeemed", dims, statistic="Sum", start=time.time() - 60,
                                           period=300, namespace="Shop")
    assert [p["Value"] for p in points] == [10] and points[0]["SampleCount"] == 4
    maximum = session.get_metric_statistics("CouponsRedeemed", dims, statistic="Maximum", period=300,
                                            namespace="Shop")
    assert maximum[0]["Value"] == 4
    status, headers, body = http_request("GET", metrics_server.url + "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    labels = f'endpoint="{endpoint}",namespace="Shop",variant="AllTraffic"'
    assert f"moorage_business_coupons_redeemed_sum{{{labels}}} 10.0" in text
    assert f"moorage_business_coupons_redeemed_count{{{labels}}} 4.0" in text
    assert f'moorage_invocations_total{{endpoint="{endpoint}"' in text
    with pytest.raises(ClientError, match="reserved"):
        session.put_metric("Invocations", 1, namespace="AWS/SageMaker")
    with pytest.raises(ClientError, match="unit"):
        session.put_metric("CouponsRedeemed", 1, unit="Coupons", namespace="Shop")


def test_sdk_alarms_with_punctuated_names(metrics_server: MoorageServer, endpoint: str) -> None:
    session = Session(url=metrics_server.url, access_key_id=metrics_server.access_key_id,
                      secret_access_key=metrics_server.secret_access_key)
    name = f"p99:latency@{endpoint}+v=1"
    created = session.put_alarm(name, Namespace="AWS/SageMaker", MetricName="ModelLatency",
                                Dimensions=[{"Name": "EndpointName", "Value": endpoint}], ExtendedStatistic="p99",
                                Period=60, EvaluationPeriods=1, Threshold=1e6,
                                ComparisonOperator="GreaterThanThreshold")
    assert created["AlarmName"] == name and created["ExtendedStatistic"] == "p99"
    assert session.describe_alarm(name)["AlarmHistoryItems"][0]["HistoryItemType"] == "ConfigurationUpdate"
    with pytest.raises(ClientError, match="ComparisonOperator"):
        session.put_alarm(name, Namespace="AWS/SageMaker", MetricName="ModelLatency", Statistic="Average",
                          Period=60, EvaluationPeriods=1, Threshold=1, ComparisonOperator="Above")
    session.delete_alarm(name)
    with pytest.raises(ClientError, match="404"):
        session.describe_alarm(name)


def test_native_metrics_api_needs_a_signature(metrics_server: MoorageServer) -> None:
    status, _, _ = http_request("GET", metrics_server.url + "/moorage/v1/metrics?MetricName=Invocations")
    assert status == 403
    status, _, body = metrics_server.signed_request("GET", "/moorage/v1/metrics?MetricName=Invocations&Statistic=p1000")
    assert status == 400 and json.loads(body)["__type"] == "ValidationException"


def _cli(server: MoorageServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MOORAGE_HOME", "AWS_PROFILE")}
    return subprocess.run([sys.executable, "-m", "moorage", *args, "--home", str(server.home)], capture_output=True,
                          text=True, timeout=60, env=env)


def test_cli_metrics_table_and_plot(metrics_server: MoorageServer, endpoint: str, tmp_path: Path) -> None:
    calls = GOOD + CLIENT_ERRORS + SERVER_ERRORS
    wait_until(lambda: total(metrics_server, "Invocations", variant(endpoint)) == calls, timeout=20,
               what="Invocations flushed")
    chart = tmp_path / "charts" / "invocations.png"
    result = _cli(metrics_server, "metrics", endpoint, "--metric", "Invocations", "--stat", "Sum", "--since", "10m",
                  "--period", "600", "--plot", str(chart))
    assert result.returncode == 0, result.stderr
    assert "Invocations Sum" in result.stdout and "AllTraffic" in result.stdout
    assert f" {calls} " in result.stdout  # one 600 s period holds every call
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 5000
    latency = _cli(metrics_server, "metrics", endpoint, "--metric", "ModelLatency", "--stat", "p99", "--since", "15m")
    assert latency.returncode == 0 and "ModelLatency p99 (Microseconds)" in latency.stdout, latency.stderr
    missing = _cli(metrics_server, "metrics", "no-such-endpoint", "--metric", "Invocations")
    assert missing.returncode == 1 and "no AWS/SageMaker Invocations data" in missing.stderr
    bad = _cli(metrics_server, "metrics", endpoint, "--stat", "median")
    assert bad.returncode == 2


def test_cli_alarms_lifecycle(metrics_server: MoorageServer, endpoint: str) -> None:
    name = f"{endpoint}-latency"
    put = _cli(metrics_server, "alarms", "put", name, "--metric", "ModelLatency", "--endpoint", endpoint,
               "--variant", "AllTraffic", "--stat", "p99", "--period", "1", "--threshold", "60000000",
               "--comparison", ">", "--evaluation-periods", "3", "--datapoints-to-alarm", "2",
               "--treat-missing-data", "notBreaching", "--webhook", "http://127.0.0.1:9/hook")
    assert put.returncode == 0, put.stderr
    assert "INSUFFICIENT_DATA" in put.stdout
    # No breach in 60 s p99 and missing data counts as good: the evaluator moves it to OK.
    wait_until(lambda: "OK" in _cli(metrics_server, "alarms", "list", "--state", "OK").stdout.split(name)[-1][:40],
               timeout=20, what="alarm evaluated to OK")
    described = _cli(metrics_server, "alarms", "describe", name)
    assert described.returncode == 0, described.stderr
    assert "ExtendedStatistic" not in described.stdout and "p99 greater than 6e+07" in described.stdout
    assert "StateUpdate" in described.stdout and "ConfigurationUpdate" in described.stdout
    assert _cli(metrics_server, "alarms", "delete", name).returncode == 0
    gone = _cli(metrics_server, "alarms", "describe", name)
    assert gone.returncode == 1 and "Could not find alarm" in gone.stderr


def test_last_period_is_flushed_on_shutdown_and_kept(fresh_server: Any, tmp_path: Path) -> None:
    """With the default 60 s period nothing is written while the test runs: the stop writes it, and a
    server restarted on the same home answers from the store."""
    server = fresh_server(tmp_path / "home")
    deployer = Deployer(server)
    name = deployer.deploy("flushed", pack_model(tmp_path / "model", None, inference_py=INFERENCE_PY).as_uri())
    runtime = server.rt()
    for _ in range(7):
        runtime.invoke_endpoint(EndpointName=name, Body=b"{}", ContentType="application/json")
    assert total(server, "Invocations", variant(name)) == 0  # still in the open period
    assert server.stop() == 0
    restarted = fresh_server(tmp_path / "home")
    assert total(restarted, "Invocations", variant(name)) == 7
    assert total(restarted, "ModelLatency", variant(name), "SampleCount") == 7
    deployer.server, deployer.sm = restarted, restarted.sm()
    deployer.cleanup()
