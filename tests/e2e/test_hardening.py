"""Hardening (issue 19), the defects fixed so far, each with the test that failed before:
the home is its owner's alone, one server per home, client mistakes are ValidationExceptions
rather than 500s, a bring-up that fails unexpectedly ends Failed with the reason, and
InvokeEndpoint's limits on CustomAttributes and InferenceId are enforced.
"""

from __future__ import annotations

import json
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    REGION,
    Deployer,
    MoorageServer,
    ServerError,
    err_code,
    err_message,
    file_url,
    http_request,
    new_name,
    pack_model,
    variant,
    wait_until,
)

pytestmark = pytest.mark.e2e


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_home_is_private_and_served_by_one_server(fresh_server: Callable[..., MoorageServer],
                                                       artifacts: Path, classifier: Any) -> None:
    srv = fresh_server()
    dep = Deployer(srv)
    clf, _ = classifier
    name = dep.deploy("private", file_url(pack_model(artifacts / "private", clf)))
    assert _mode(srv.home) == 0o700
    assert _mode(srv.home / "moorage.db") == 0o600
    logs = [p for p in srv.home.rglob("*.log") if p.name != "server.log"]  # server.log is the test's own file
    assert logs and all(_mode(p) == 0o600 for p in logs), [(p, oct(_mode(p))) for p in logs]

    second = MoorageServer(srv.home)
    with pytest.raises(ServerError):
        second.start(timeout=30)
    assert "another moorage server" in second.log_tail()
    assert srv.rt().invoke_endpoint(EndpointName=name, Body=b"1,2,3,4", ContentType="text/csv")  # still serving
    dep.cleanup()


def test_client_mistakes_are_validation_errors(server: MoorageServer, artifacts: Path, classifier: Any) -> None:
    sm = server.sm()
    for url in ("s3://bucket/model\x00.tar.gz", "ftp://host/model.tar.gz", "zip://model.tar.gz",
                "hdfs://namenode/model.tar.gz", "data:,abc"):
        with pytest.raises(ClientError) as refused:
            sm.create_model(ModelName=new_name("bad-url"), ExecutionRoleArn="arn:aws:iam::000000000000:role/x",
                            PrimaryContainer={"Image": "sklearn", "ModelDataUrl": url})
        assert err_code(refused.value) == "ValidationException", (url, refused.value)
        assert "ModelDataUrl" in err_message(refused.value)

    # InitialVariantWeight: null, as a hand-written JSON request can send it.
    clf, _ = classifier
    dep = Deployer(server)
    model = dep.model(new_name("null-weight"), file_url(pack_model(artifacts / "null-weight", clf)))
    config = new_name("null-weight")
    document = {"EndpointConfigName": config, "ProductionVariants": [
        {"VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 1,
         "InstanceType": "ml.m5.large", "InitialVariantWeight": None}]}
    status, _, body = _json_door(server, "CreateEndpointConfig", document)
    assert status in (200, 400), body
    if status == 200:
        dep.configs.append(config)
        described = sm.describe_endpoint_config(EndpointConfigName=config)
        assert described["ProductionVariants"][0]["InitialVariantWeight"] == 1.0
    else:
        assert json.loads(body)["__type"].endswith("ValidationException")
    dep.cleanup()


def _json_door(server: MoorageServer, operation: str, document: dict[str, Any]) -> tuple[int, Any, bytes]:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = json.dumps(document).encode()
    request = AWSRequest(method="POST", url=server.url + "/", data=body, headers={
        "X-Amz-Target": f"SageMaker.{operation}", "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), "sagemaker", REGION).add_auth(request)
    return http_request("POST", server.url + "/", body=body, headers=dict(request.headers.items()))


def test_a_bring_up_with_a_nul_in_the_environment_never_stays_creating(server: MoorageServer, artifacts: Path,
                                                        classifier: Any) -> None:
    clf, _ = classifier
    dep = Deployer(server)
    model = dep.model(new_name("nul-env"), file_url(pack_model(artifacts / "nul-env", clf)),
                      env={"SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code\x00x"})
    config = dep.config(new_name("nul-env"), [variant("AllTraffic", model)])
    endpoint = dep.endpoint(new_name("nul-env"), config)
    desc = wait_until(lambda: (d := server.sm().describe_endpoint(EndpointName=endpoint))["EndpointStatus"]
                      != "Creating" and d, 60, interval=0.3, what="the endpoint to leave Creating")
    # The probe's trigger: it must never stay Creating (here the NUL does not reach a system call).
    assert desc["EndpointStatus"] == "InService" or (desc["EndpointStatus"] == "Failed" and desc["FailureReason"])
    dep.cleanup()


def test_invoke_endpoint_header_limits(server: MoorageServer, artifacts: Path, classifier: Any) -> None:
    clf, _ = classifier
    dep = Deployer(server)
    name = dep.deploy("limits", file_url(pack_model(artifacts / "limits", clf)))
    loose = server.rt(validate=False)
    for extra, field in (({"CustomAttributes": "a" * 1025}, "customAttributes"), ({"InferenceId": "i" * 65},
                                                                                   "inferenceId")):
        with pytest.raises(ClientError) as refused:
            loose.invoke_endpoint(EndpointName=name, Body=b"1,2,3,4", ContentType="text/csv", **extra)
        assert err_code(refused.value) == "ValidationError" and field in err_message(refused.value)
    answer = loose.invoke_endpoint(EndpointName=name, Body=b"1,2,3,4", ContentType="text/csv",
                                   CustomAttributes="a" * 1024, InferenceId="i" * 64)
    assert answer["Body"].read()
    dep.cleanup()


def test_a_busy_port_is_reported_before_anything_else(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        srv = MoorageServer(tmp_path / "home", port=taken.getsockname()[1])
        with pytest.raises(ServerError):
            srv.start(timeout=30)
        log = srv.log_tail()
    assert "cannot listen on 127.0.0.1" in log and "moorage serving on" not in log


def test_websocket_upgrades_are_refused_quietly(server: MoorageServer) -> None:
    logged_before = server.log_path.stat().st_size  # the shared server's log holds other tests' lines too
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"GET /moorage/v1/endpoints HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        answer = conn.recv(200)
    assert answer.startswith(b"HTTP/1.1 403"), answer
    status, _, body = http_request("GET", server.url + "/moorage/v1/no-such-route")
    assert status == 404 and json.loads(body)["__type"] == "UnknownOperationException"
    time.sleep(0.2)  # the server writes its log lines before it answers; this only lets the file catch up
    with server.log_path.open("rb") as log:
        log.seek(logged_before)
        assert b"ERROR" not in log.read()


def test_instance_counts_are_bounded(server: MoorageServer, artifacts: Path, classifier: Any) -> None:
    clf, _ = classifier
    dep = Deployer(server)
    sm = server.sm()
    model = dep.model(new_name("quota"), file_url(pack_model(artifacts / "quota", clf)))
    with pytest.raises(ClientError) as refused:
        dep.config(new_name("quota"), [variant("AllTraffic", model, count=2**31 - 1)])
    assert err_code(refused.value) == "ValidationException" and "MOORAGE_MAX_INSTANCES_PER_VARIANT" in \
        err_message(refused.value)
    name = dep.deploy("quota", file_url(pack_model(artifacts / "quota", clf)))
    with pytest.raises(ClientError) as refused:
        sm.update_endpoint_weights_and_capacities(EndpointName=name, DesiredWeightsAndCapacities=[
            {"VariantName": "AllTraffic", "DesiredInstanceCount": 1000}])
    assert err_code(refused.value) == "ValidationException"
    autoscaling = server.client("application-autoscaling")
    with pytest.raises(ClientError) as refused:
        autoscaling.register_scalable_target(
            ServiceNamespace="sagemaker", ResourceId=f"endpoint/{name}/variant/AllTraffic",
            ScalableDimension="sagemaker:variant:DesiredInstanceCount", MinCapacity=1, MaxCapacity=10**9)
    assert err_code(refused.value) == "ValidationException" and "MaxCapacity" in err_message(refused.value)
    assert sm.describe_endpoint(EndpointName=name)["ProductionVariants"][0]["DesiredInstanceCount"] == 1
    dep.cleanup()


def test_an_unwritable_capture_destination_is_refused(server: MoorageServer, artifacts: Path, classifier: Any,
                                                      tmp_path: Path) -> None:
    clf, _ = classifier
    dep = Deployer(server)
    model = dep.model(new_name("capture-dest"), file_url(pack_model(artifacts / "capture-dest", clf)))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(ClientError) as refused:
        server.sm().create_endpoint_config(
            EndpointConfigName=new_name("capture-dest"), ProductionVariants=[variant("AllTraffic", model)],
            DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                               "DestinationS3Uri": str(blocker / "captures"),
                               "CaptureOptions": [{"CaptureMode": "Input"}]})
    assert err_code(refused.value) == "ValidationException" and "cannot be written" in err_message(refused.value)
    dep.cleanup()


def test_refused_metric_data_stores_nothing(server: MoorageServer) -> None:
    namespace = f"Shop/{new_name('all-or-nothing')}"
    document = {"Namespace": namespace, "MetricData": [
        {"MetricName": "Orders", "Value": 1}, {"MetricName": "Orders", "Value": 2},
        {"MetricName": "Orders", "Values": [1, "NaN"]}]}
    status, _, body = server.signed_request("POST", "/moorage/v1/metrics", json.dumps(document).encode())
    assert status == 400, body
    status, _, body = server.signed_request("GET", f"/moorage/v1/metrics/list?Namespace={namespace}")
    assert status == 200 and json.loads(body)["Metrics"] == [], body


def test_an_endpoint_whose_model_and_config_were_deleted_survives_a_restart(
        fresh_server: Callable[..., MoorageServer], artifacts: Path, classifier: Any) -> None:
    # SageMaker lets DeleteModel and DeleteEndpointConfig go through while an endpoint serves them; the
    # endpoint keeps running. Here it must also come back after a restart, from what it kept.
    clf, X = classifier
    srv = fresh_server()
    dep = Deployer(srv)
    model = dep.model(new_name("kept"), file_url(pack_model(artifacts / "kept", clf)))
    config = dep.config(new_name("kept"), [variant("AllTraffic", model)])
    endpoint = dep.endpoint(new_name("kept"), config)
    dep.wait_in_service(endpoint)
    body = ",".join(str(v) for v in X[0]).encode()
    before = srv.rt().invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="text/csv")["Body"].read()
    srv.sm().delete_model(ModelName=model)
    srv.sm().delete_endpoint_config(EndpointConfigName=config)
    srv.stop()
    srv.start(timeout=90)
    dep.wait_in_service(endpoint)
    assert srv.sm().describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == config
    assert srv.rt().invoke_endpoint(EndpointName=endpoint, Body=body, ContentType="text/csv")["Body"].read() == before
    srv.sm().delete_endpoint(EndpointName=endpoint)
