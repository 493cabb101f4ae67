"""Serverless endpoints through boto3 (ServerlessConfig): SageMaker's checks at CreateEndpointConfig, no
instance until the first request (a cold start, reported as ModelSetupTime), throttling beyond
MaxConcurrency, the idle instance stopped, ProvisionedConcurrency kept warm, and a restart.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import Deployer, MoorageServer, err_code, err_message, new_name, pack_model, wait_until

pytestmark = pytest.mark.e2e

# Answers at once, or once the file a "gate:" body names exists (bounded).
MODEL = '''
import json, os, time


def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    if text.startswith("gate:"):
        deadline = time.time() + 120
        while not os.path.exists(text[5:].strip()) and time.time() < deadline:
            time.sleep(0.02)
    return json.dumps({"echo": text}), "application/json"
'''


def _serverless(name: str, model: str, **config: int) -> dict[str, Any]:
    return {"VariantName": name, "ModelName": model,
            "ServerlessConfig": {"MemorySizeInMB": 2048, "MaxConcurrency": 1, **config}}


def test_serverless_configs_are_checked_as_sagemaker_does(server: MoorageServer, deployer: Deployer,
                                                          tmp_path: Path) -> None:
    model = deployer.model(new_name("sl"), pack_model(tmp_path / "m", None, inference_py=MODEL).as_uri())

    def refused(variant: dict[str, Any], **extra: Any) -> str:
        with pytest.raises(ClientError) as info:
            deployer.sm.create_endpoint_config(EndpointConfigName=new_name("sl"), ProductionVariants=[variant],
                                               **extra)
        assert err_code(info.value) == "ValidationException"
        return err_message(info.value)

    assert "InstanceType" in refused({**_serverless("v", model), "InstanceType": "ml.m5.large"})
    assert "InitialInstanceCount" in refused({**_serverless("v", model), "InitialInstanceCount": 1})
    assert "MemorySizeInMB" in refused(_serverless("v", model, MemorySizeInMB=1500))
    assert "ProvisionedConcurrency" in refused(_serverless("v", model, MaxConcurrency=2, ProvisionedConcurrency=3))
    assert "AsyncInferenceConfig" in refused(_serverless("v", model), AsyncInferenceConfig={
        "OutputConfig": {"S3OutputPath": (tmp_path / "out").as_uri()}})

    # A serverless variant has no instance count for Application Auto Scaling to set.
    deployer.config(config := new_name("sl"), [_serverless("AllTraffic", model)])
    endpoint = deployer.endpoint(new_name("sl"), config)
    deployer.wait_in_service(endpoint)
    with pytest.raises(ClientError) as info:
        server.client("application-autoscaling").register_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=f"endpoint/{endpoint}/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1, MaxCapacity=2)
    assert "serverless" in err_message(info.value)


def _metric(cloudwatch: Any, endpoint: str, name: str, since: dt.datetime) -> list[dict[str, Any]]:
    return cloudwatch.get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName=name, Statistics=["Maximum", "SampleCount"], Period=60,
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}],
        StartTime=since, EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))["Datapoints"]


def test_cold_start_throttling_idle_stop_and_restart(fresh_server: Callable[..., MoorageServer],
                                                     tmp_path: Path) -> None:
    srv = fresh_server(env={"MOORAGE_METRICS_PERIOD": "1", "MOORAGE_SERVERLESS_IDLE_TIMEOUT": "2"})
    dep = Deployer(srv)
    rt, cloudwatch = srv.rt(), srv.client("cloudwatch")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    model = dep.model(new_name("sl"), pack_model(tmp_path / "m", None, inference_py=MODEL).as_uri())
    dep.config(config := new_name("sl"), [_serverless("AllTraffic", model, MaxConcurrency=1)])
    endpoint = dep.endpoint(new_name("sl"), config)
    desc = dep.wait_in_service(endpoint)
    (summary,) = desc["ProductionVariants"]
    expected = {"MemorySizeInMB": 2048, "MaxConcurrency": 1}
    assert summary["CurrentServerlessConfig"] == expected and summary["DesiredServerlessConfig"] == expected
    assert "CurrentInstanceCount" not in summary and "DesiredInstanceCount" not in summary
    assert srv.instances(endpoint) == []  # in service with nothing running until a request comes

    # The first request waits for its instance (a cold start) and is answered.
    reply = rt.invoke_endpoint(EndpointName=endpoint, Body=b"first", ContentType="text/plain")
    assert json.loads(reply["Body"].read()) == {"echo": "first"}
    assert len(srv.instances(endpoint)) == 1
    wait_until(lambda: _metric(cloudwatch, endpoint, "ModelSetupTime", since), 30, what="ModelSetupTime")
    assert _metric(cloudwatch, endpoint, "ModelSetupTime", since)[0]["Maximum"] > 0
    wait_until(lambda: _metric(cloudwatch, endpoint, "OverheadLatency", since), 30, what="OverheadLatency")

    # MaxConcurrency 1: while one request is in flight, the next is throttled as SageMaker throttles.
    gate = tmp_path / "gate"
    answers: list[Any] = []
    blocked = threading.Thread(target=lambda: answers.append(rt.invoke_endpoint(
        EndpointName=endpoint, Body=f"gate:{gate}".encode(), ContentType="text/plain")["Body"].read()))
    blocked.start()
    try:
        wait_until(lambda: srv.instances(endpoint)[0]["Outstanding"] == 1, 30, what="the gated request in flight")
        with pytest.raises(ClientError) as info:
            rt.invoke_endpoint(EndpointName=endpoint, Body=b"second", ContentType="text/plain")
        assert err_code(info.value) == "ThrottlingException"
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "MaxConcurrency" in err_message(info.value)
    finally:
        gate.touch()
        blocked.join(60)
    assert [json.loads(a) for a in answers] == [{"echo": f"gate:{gate}"}]

    # Idle for the idle time: the instance is stopped; the next request starts another.
    wait_until(lambda: srv.instances(endpoint) == [], 30, what="the idle instance to stop")
    assert json.loads(rt.invoke_endpoint(EndpointName=endpoint, Body=b"again", ContentType="text/plain")[
        "Body"].read()) == {"echo": "again"}

    # A restart brings the endpoint back as it was: serverless, nothing running, answering on demand.
    srv.stop()
    srv.start(timeout=90)
    desc = dep.wait_in_service(endpoint)
    assert desc["ProductionVariants"][0]["CurrentServerlessConfig"] == expected
    assert srv.instances(endpoint) == []
    assert json.loads(srv.rt().invoke_endpoint(EndpointName=endpoint, Body=b"after", ContentType="text/plain")[
        "Body"].read()) == {"echo": "after"}


def test_provisioned_concurrency_stays_warm(fresh_server: Callable[..., MoorageServer], tmp_path: Path) -> None:
    srv = fresh_server(env={"MOORAGE_SERVERLESS_IDLE_TIMEOUT": "1"})
    dep = Deployer(srv)
    model = dep.model(new_name("sl"), pack_model(tmp_path / "m", None, inference_py=MODEL).as_uri())
    dep.config(config := new_name("sl"), [_serverless("AllTraffic", model, MaxConcurrency=4,
                                                      ProvisionedConcurrency=2)])
    endpoint = dep.endpoint(new_name("sl"), config)
    dep.wait_in_service(endpoint)
    (warm,) = srv.instances(endpoint)  # up before any request
    assert json.loads(srv.rt().invoke_endpoint(EndpointName=endpoint, Body=b"x", ContentType="text/plain")[
        "Body"].read()) == {"echo": "x"}
    # Three idle times later (an absence can only be waited for), the provisioned instance still serves.
    time.sleep(3)
    assert [i["InstanceId"] for i in srv.instances(endpoint)] == [warm["InstanceId"]]
    assert "idle for" not in srv.log_path.read_text()
