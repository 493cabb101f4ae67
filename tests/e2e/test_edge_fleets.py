"""Edge fleets and the device door against a real `moorage serve`.

The SageMaker side (CreateDeviceFleet ... ListDevices, GetDeviceFleetReport) through boto3's
``sagemaker`` client; the device side as an agent speaks it: boto3's own ``sagemaker-edge`` client for
SendHeartbeat/GetDeployments/GetDeviceRegistration (botocore's model on both ends), and requests signed
with botocore's SigV4Auth and the DEVICE's key for the package download and the capture upload. The
data-quality monitor then reads the synced segments as it reads an endpoint's capture.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import hashlib
import http.client
import io
import json
import stat
import tarfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from e2e_support import REGION, MoorageServer, err_code, err_status, http_request, new_name
from moorage.edge.package import generate_key, load_or_create_private_key, package_bytes

pytestmark = pytest.mark.e2e


# -- helpers ------------------------------------------------------------------------------------------------


def _package(home: Path, name: str, version: str, *, key: Any = None, model: bytes = b"onnx graph bytes") -> bytes:
    """A package signed with the server home's key (the one `moorage edge compile` signs with), or ``key``."""
    signer = key or load_or_create_private_key(home / "edge" / "signing-key.pem")
    manifest = {"name": name, "version": version,
                "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 3]}],
                              "outputs": [{"name": "label", "dtype": "int64", "shape": [None]}]}}
    return package_bytes(manifest, {"model.onnx": model}, signer)


def _tampered(package: bytes) -> bytes:
    """The same signed manifest and signature over another model.onnx."""
    members = {}
    with tarfile.open(fileobj=io.BytesIO(package), mode="r:gz") as archive:
        for member in archive:
            extracted = archive.extractfile(member)
            assert extracted is not None
            members[member.name] = extracted.read()
    members["model.onnx"] = b"a different graph"
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb") as zipped, tarfile.open(fileobj=zipped, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _publish(server: MoorageServer, fleet: str, package: bytes) -> tuple[int, dict[str, Any]]:
    status, _, body = server.signed_request(
        "POST", f"/moorage/v1/edge/fleets/{fleet}/deployments", body=package,
        headers={"Content-Type": "application/gzip", "X-Amz-Content-SHA256": _sha256(package)})
    return status, json.loads(body)


def _issue_key(server: MoorageServer, fleet: str, device: str) -> tuple[str, str]:
    status, _, body = server.signed_request("POST", f"/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys")
    assert status == 200, body
    doc = json.loads(body)
    assert doc["DeviceName"] == device and doc["DeviceFleetName"] == fleet and doc["Region"] == REGION
    return doc["AccessKeyId"], doc["SecretAccessKey"]


def _edge(server: MoorageServer, key: tuple[str, str]) -> Any:
    """boto3's own SageMaker Edge Manager client, signing with the device's key."""
    return boto3.session.Session().client(
        "sagemaker-edge", endpoint_url=server.url, region_name=REGION, aws_access_key_id=key[0],
        aws_secret_access_key=key[1], config=botocore.config.Config(retries={"max_attempts": 1}))


def _device_request(server: MoorageServer, key: tuple[str, str], method: str, path: str,
                    body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """A request signed as the agent signs: service sagemaker, the device's key, the body's hash declared."""
    url = server.url + path
    request = AWSRequest(method=method, url=url, data=body, headers={"X-Amz-Content-SHA256": _sha256(body)})
    SigV4Auth(Credentials(*key), "sagemaker", REGION).add_auth(request)
    return http_request(method, url, body=body or None, headers=dict(request.headers.items()))


def _refused_upload(server: MoorageServer, key: tuple[str, str], path: str, body: bytes) -> tuple[int, str]:
    """(status, error type) of a PUT the server answers before reading all of it (it may close mid-body)."""
    request = AWSRequest(method="PUT", url=server.url + path, data=b"",
                         headers={"X-Amz-Content-SHA256": _sha256(body)})
    SigV4Auth(Credentials(*key), "sagemaker", REGION).add_auth(request)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("PUT", path, body=body, headers={**dict(request.headers.items()),
                                                                 "Content-Length": str(len(body))})
        response = connection.getresponse()
        response.read()
        return response.status, response.getheader("x-amzn-errortype") or ""
    finally:
        connection.close()


def _record(values: list[float], moment: dt.datetime, label: str = "1") -> bytes:
    """One SageMaker capture record, as an endpoint's capture (and the agent's spool) writes it."""
    line = {"captureData": {
        "endpointInput": {"observedContentType": "text/csv", "mode": "INPUT",
                          "data": ",".join(str(v) for v in values), "encoding": "CSV"},
        "endpointOutput": {"observedContentType": "text/csv", "mode": "OUTPUT", "data": label, "encoding": "CSV"}},
        "eventMetadata": {"eventId": str(uuid.uuid4()), "inferenceTime": moment.strftime("%Y-%m-%dT%H:%M:%SZ")},
        "eventVersion": "0"}
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


def _segment_path(fleet: str, device: str, segment: str) -> str:
    return f"/moorage/v1/edge/fleets/{fleet}/devices/{device}/capture/{segment}"


def _heartbeat(edge: Any, fleet: str, device: str, **extra: Any) -> None:
    edge.send_heartbeat(AgentVersion="0.9.1", DeviceName=device, DeviceFleetName=fleet, **extra)


@pytest.fixture
def fleet(server: MoorageServer) -> Iterator[Callable[..., str]]:
    """fleet(devices...) -> a new fleet writing capture to a new bucket, with those devices registered."""
    made: list[str] = []
    sm = server.sm()

    def make(*devices: str, bucket: str | None = None) -> str:
        name = new_name("fleet")
        bucket = bucket or new_name("edge-capture")
        server.client("s3").create_bucket(Bucket=bucket)
        sm.create_device_fleet(DeviceFleetName=name, OutputConfig={"S3OutputLocation": f"s3://{bucket}/synced"},
                               Description="edge test fleet")
        if devices:
            sm.register_devices(DeviceFleetName=name, Devices=[{"DeviceName": d} for d in devices])
        made.append(name)
        return name

    yield make
    for name in made:
        names = [d["DeviceName"] for d in sm.list_devices(DeviceFleetName=name, MaxResults=100)["DeviceSummaries"]]
        if names:
            sm.deregister_devices(DeviceFleetName=name, DeviceNames=names)
        sm.delete_device_fleet(DeviceFleetName=name)


# -- the SageMaker API -----------------------------------------------------------------------------------------


def test_fleets_and_devices_in_sagemakers_shapes(server: MoorageServer, fleet: Callable[..., str]) -> None:
    sm = server.sm()
    name = fleet()
    described = sm.describe_device_fleet(DeviceFleetName=name)
    assert described["DeviceFleetName"] == name
    assert described["DeviceFleetArn"] == f"arn:aws:sagemaker:{REGION}:{described['DeviceFleetArn'].split(':')[4]}:" \
                                          f"device-fleet/{name.lower()}"
    assert described["OutputConfig"]["S3OutputLocation"].endswith("/synced")
    assert described["Description"] == "edge test fleet"
    with pytest.raises(ClientError) as again:
        sm.create_device_fleet(DeviceFleetName=name, OutputConfig={"S3OutputLocation": "s3://x/y"})
    assert err_code(again.value) == "ResourceInUse"
    with pytest.raises(ClientError) as ftp:
        sm.create_device_fleet(DeviceFleetName=new_name("fleet"), OutputConfig={"S3OutputLocation": "https://x/y"})
    assert err_code(ftp.value) == "ValidationException" and "https" in str(ftp.value)
    with pytest.raises(ClientError) as missing:
        sm.describe_device_fleet(DeviceFleetName="no-such-fleet-anywhere")
    assert err_code(missing.value) == "ResourceNotFound" and err_status(missing.value) == 400

    sm.update_device_fleet(DeviceFleetName=name, OutputConfig={"S3OutputLocation": "s3://elsewhere/edge"},
                           Description="moved")
    updated = sm.describe_device_fleet(DeviceFleetName=name)
    assert updated["OutputConfig"]["S3OutputLocation"] == "s3://elsewhere/edge" and updated["Description"] == "moved"
    assert updated["LastModifiedTime"] >= described["LastModifiedTime"]

    other = fleet()
    by_name = sm.list_device_fleets(NameContains=name, SortBy="NAME")["DeviceFleetSummaries"]
    assert [f["DeviceFleetName"] for f in by_name] == [name]
    first = sm.list_device_fleets(MaxResults=1, SortBy="CREATION_TIME", SortOrder="Descending")
    assert first["DeviceFleetSummaries"][0]["DeviceFleetName"] == other and first.get("NextToken")
    second = sm.list_device_fleets(MaxResults=1, SortBy="CREATION_TIME", SortOrder="Descending",
                                   NextToken=first["NextToken"])
    assert second["DeviceFleetSummaries"][0]["DeviceFleetName"] == name

    sm.register_devices(DeviceFleetName=name, Devices=[{"DeviceName": "cam-1", "Description": "dock 1"},
                                                       {"DeviceName": "cam-2"}, {"DeviceName": "cam-3"}])
    with pytest.raises(ClientError) as twice:
        sm.register_devices(DeviceFleetName=name, Devices=[{"DeviceName": "cam-2"}])
    assert err_code(twice.value) == "ValidationException" and "cam-2" in str(twice.value)
    device = sm.describe_device(DeviceFleetName=name, DeviceName="cam-1")
    assert device["DeviceName"] == "cam-1" and device["DeviceFleetName"] == name
    assert device["Description"] == "dock 1" and device["RegistrationTime"] and "LatestHeartbeat" not in device
    assert device["DeviceArn"].endswith(f":device-fleet/{name.lower()}/device/cam-1")
    with pytest.raises(ClientError) as unknown:
        sm.describe_device(DeviceFleetName=name, DeviceName="cam-9")
    assert err_code(unknown.value) == "ResourceNotFound"
    sm.update_devices(DeviceFleetName=name, Devices=[{"DeviceName": "cam-2", "Description": "dock 2"}])
    assert sm.describe_device(DeviceFleetName=name, DeviceName="cam-2")["Description"] == "dock 2"

    page1 = sm.list_devices(DeviceFleetName=name, MaxResults=2)
    page2 = sm.list_devices(DeviceFleetName=name, MaxResults=2, NextToken=page1["NextToken"])
    assert [d["DeviceName"] for d in page1["DeviceSummaries"] + page2["DeviceSummaries"]] == ["cam-1", "cam-2", "cam-3"]
    assert "NextToken" not in page2
    assert all(d["DeviceFleetName"] == name for d in page1["DeviceSummaries"])

    with pytest.raises(ClientError) as in_use:
        sm.delete_device_fleet(DeviceFleetName=name)
    assert err_code(in_use.value) == "ResourceInUse" and "cam-1" in str(in_use.value)
    sm.deregister_devices(DeviceFleetName=name, DeviceNames=["cam-1", "cam-2", "cam-3"])
    assert sm.list_devices(DeviceFleetName=name)["DeviceSummaries"] == []
    sm.delete_device_fleet(DeviceFleetName=name)
    assert name not in [f["DeviceFleetName"] for f in sm.list_device_fleets(MaxResults=100)["DeviceFleetSummaries"]]


# -- the device door ----------------------------------------------------------------------------------------------


def test_heartbeats_deployments_and_packages_through_the_device_door(server: MoorageServer,
                                                                       fleet: Callable[..., str]) -> None:
    sm = server.sm()
    name = fleet("gate-1", "gate-2")
    key = _issue_key(server, name, "gate-1")
    edge = _edge(server, key)
    registration = edge.get_device_registration(DeviceName="gate-1", DeviceFleetName=name)
    assert registration["DeviceRegistration"] == "REGISTERED" and int(registration["CacheTTL"]) > 0
    assert edge.get_deployments(DeviceName="gate-1", DeviceFleetName=name)["Deployments"] == []

    # Publishing: verified against the home's key, stored, the fleet's current deployment.
    package = _package(server.home, "gate-model", "1.0")
    status, published = _publish(server, name, package)
    assert status == 200, published
    assert published["ModelHandle"] == "gate-model-1.0"
    assert published["Checksum"] == {"Type": "SHA1", "Sum": hashlib.sha1(package).hexdigest()}
    deployments = edge.get_deployments(DeviceName="gate-1", DeviceFleetName=name)["Deployments"]
    assert len(deployments) == 1 and deployments[0]["FailureHandlingPolicy"] == "ROLLBACK_ON_FAILURE"
    definition = deployments[0]["Definitions"][0]
    assert definition["ModelHandle"] == "gate-model-1.0" and definition["State"] == "DEPLOY"
    assert definition["Checksum"] == {"Type": "SHA1", "Sum": hashlib.sha1(package).hexdigest()}
    status, headers, downloaded = _device_request(
        server, key, "GET", f"/moorage/v1/edge/fleets/{name}/packages/gate-model-1.0")
    assert status == 200 and downloaded == package
    assert headers["content-type"] == "application/gzip"
    status, headers, _ = _device_request(server, key, "GET", f"/moorage/v1/edge/fleets/{name}/packages/nope-1")
    assert status == 404 and headers["x-amzn-errortype"] == "ResourceNotFound"

    # A heartbeat: one row, read back by DescribeDevice, ListDevices' filters and the native listing.
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=5)
    now = dt.datetime.now(dt.UTC)
    _heartbeat(edge, name, "gate-1",
               AgentMetrics=[{"MetricName": "SpoolBacklogRecords", "Value": 12.0, "Timestamp": now},
                             {"MetricName": "SpoolBacklogBytes", "Value": 3456.0, "Timestamp": now},
                             {"MetricName": "SpoolDroppedRecords", "Value": 2.0, "Timestamp": now},
                             {"MetricName": "LastSyncTime", "Value": now.timestamp() - 30, "Timestamp": now},
                             {"MetricName": "Errors", "Value": 1.0, "Timestamp": now}],
               Models=[{"ModelName": "gate-model", "ModelVersion": "1.0", "LatestInference": now,
                        "LatestSampleTime": now}],
               DeploymentResult={"DeploymentName": "gate-model-1.0", "DeploymentStatus": "SUCCESS",
                                 "DeploymentStatusMessage": "self-test passed", "DeploymentStartTime": now,
                                 "DeploymentEndTime": now,
                                 "DeploymentModels": [{"ModelHandle": "gate-model-1.0", "ModelName": "gate-model",
                                                       "ModelVersion": "1.0", "DesiredState": "DEPLOY",
                                                       "State": "DEPLOY", "Status": "SUCCESS"}]})
    device = sm.describe_device(DeviceFleetName=name, DeviceName="gate-1")
    assert device["AgentVersion"] == "0.9.1" and device["LatestHeartbeat"] >= before
    assert device["Models"][0]["ModelName"] == "gate-model" and device["Models"][0]["ModelVersion"] == "1.0"
    assert abs(device["Models"][0]["LatestInference"].timestamp() - now.timestamp()) < 1
    seen = sm.list_devices(DeviceFleetName=name, LatestHeartbeatAfter=before)["DeviceSummaries"]
    assert [d["DeviceName"] for d in seen] == ["gate-1"]
    assert [d["DeviceName"] for d in sm.list_devices(ModelName="gate-model", DeviceFleetName=name)["DeviceSummaries"]] \
        == ["gate-1"]
    status, _, body = server.signed_request("GET", f"/moorage/v1/edge/devices?DeviceFleetName={name}")
    assert status == 200
    listed = {d["DeviceName"]: d for d in json.loads(body)["Devices"]}
    gate = listed["gate-1"]
    assert gate["SpoolBacklogRecords"] == 12 and gate["SpoolBacklogBytes"] == 3456
    assert gate["SpoolDroppedRecords"] == 2 and gate["Errors"] == 1 and gate["LastSyncTime"]
    assert gate["Connected"] is True and gate["AccessKeyId"] == key[0] and "SecretAccessKey" not in gate
    assert gate["DeploymentResult"]["DeploymentStatus"] == "SUCCESS"
    assert listed["gate-2"]["Connected"] is False and listed["gate-2"]["AccessKeyId"] is None
    report = sm.get_device_fleet_report(DeviceFleetName=name)
    assert report["DeviceStats"] == {"ConnectedDeviceCount": 1, "RegisteredDeviceCount": 2}
    assert report["AgentVersions"] == [{"Version": "0.9.1", "AgentCount": 1}]
    assert report["ModelStats"][0]["ModelName"] == "gate-model" and report["ModelStats"][0]["ActiveDeviceCount"] == 1

    # botocore's sagemaker-edge model validates what devices send.
    raw = _device_request(server, key, "POST", "/SendHeartbeat",
                          json.dumps({"DeviceName": "gate-1", "DeviceFleetName": name}).encode())
    assert raw[0] == 400 and raw[1]["x-amzn-errortype"] == "ValidationException" and b"agentVersion" in raw[2]

    # A newer package becomes the deployment; the older stays downloadable; republishing it rolls back.
    newer = _package(server.home, "gate-model", "2")
    assert _publish(server, name, newer)[0] == 200
    definition = edge.get_deployments(DeviceName="gate-1", DeviceFleetName=name)["Deployments"][0]["Definitions"][0]
    assert definition["ModelHandle"] == "gate-model-2"
    assert _device_request(server, key, "GET", f"/moorage/v1/edge/fleets/{name}/packages/gate-model-1.0")[2] == package
    assert _publish(server, name, package)[0] == 200
    definition = edge.get_deployments(DeviceName="gate-1", DeviceFleetName=name)["Deployments"][0]["Definitions"][0]
    assert definition["ModelHandle"] == "gate-model-1.0"
    status, _, body = server.signed_request("GET", f"/moorage/v1/edge/fleets/{name}/deployments")
    summary = json.loads(body)
    assert summary["CurrentDeployment"]["ModelHandle"] == "gate-model-1.0"
    assert [h["ModelHandle"] for h in summary["History"]] == ["gate-model-1.0", "gate-model-2", "gate-model-1.0"]


def test_publishing_refuses_what_an_agent_would_refuse(server: MoorageServer, fleet: Callable[..., str]) -> None:
    name = fleet()
    good = _package(server.home, "refusal-model", "1")
    for bad, words in ((_tampered(good), "sha256"), (_package(server.home, "refusal-model", "1", key=generate_key()),
                                                      "not trusted"),
                       (b"not a tar archive", "gzip")):
        status, doc = _publish(server, name, bad)
        assert status == 400 and doc["__type"] == "ValidationException" and words in doc["message"], doc
    status, doc = _publish(server, name, _package(server.home, "abc", "1"))
    assert status == 400 and "abc" in doc["message"]  # SageMaker's edge model names have 4 characters at least
    status, doc = _publish(server, name, _package(server.home, "refusal-model", "1 0"))
    assert status == 400 and "version" in doc["message"]
    status, _, body = server.signed_request("GET", f"/moorage/v1/edge/fleets/{name}/deployments")
    assert json.loads(body)["CurrentDeployment"] is None  # nothing refused became the deployment

    assert _publish(server, name, good)[0] == 200
    status, doc = _publish(server, name, _package(server.home, "refusal-model", "1", model=b"retrained"))
    assert status == 400 and doc["__type"] == "ResourceInUse"
    status, doc = _publish(server, "no-such-fleet", good)
    assert status == 404 and doc["__type"] == "ResourceNotFound"
    # Declared hash and body must agree (the signature covers the hash only).
    status, headers, _ = server.signed_request(
        "POST", f"/moorage/v1/edge/fleets/{name}/deployments", body=good,
        headers={"Content-Type": "application/gzip", "X-Amz-Content-SHA256": _sha256(b"other")})
    assert status == 403 and headers["x-amzn-errortype"] == "InvalidSignatureException"

    # From the object store, as a packaging job leaves it: S3Url says where it came from.
    bucket = new_name("edge-packages")
    s3 = server.client("s3")
    s3.create_bucket(Bucket=bucket)
    second = _package(server.home, "refusal-model", "2")
    s3.put_object(Bucket=bucket, Key="out/refusal-model-2.tar.gz", Body=second)
    document = json.dumps({"PackageUrl": f"s3://{bucket}/out/refusal-model-2.tar.gz"}).encode()
    status, _, body = server.signed_request(
        "POST", f"/moorage/v1/edge/fleets/{name}/deployments", body=document,
        headers={"Content-Type": "application/json", "X-Amz-Content-SHA256": _sha256(document)})
    assert status == 200, body
    server.sm().register_devices(DeviceFleetName=name, Devices=[{"DeviceName": "probe-1"}])
    edge = _edge(server, _issue_key(server, name, "probe-1"))
    definition = edge.get_deployments(DeviceName="probe-1", DeviceFleetName=name)["Deployments"][0]["Definitions"][0]
    assert definition["S3Url"] == f"s3://{bucket}/out/refusal-model-2.tar.gz"
    assert definition["Checksum"]["Sum"] == hashlib.sha1(second).hexdigest()
    document = json.dumps({"PackageUrl": f"s3://{bucket}/out/missing.tar.gz"}).encode()
    status, _, body = server.signed_request(
        "POST", f"/moorage/v1/edge/fleets/{name}/deployments", body=document,
        headers={"Content-Type": "application/json", "X-Amz-Content-SHA256": _sha256(document)})
    assert status == 400 and b"missing.tar.gz" in body


def test_capture_segments_land_once_where_capture_lands(server: MoorageServer, fleet: Callable[..., str]) -> None:
    bucket = new_name("edge-capture")
    name = fleet("line-1", bucket=bucket)
    key = _issue_key(server, name, "line-1")
    moment = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    segment = b"".join(_record([0.1 * i, 0.2, 0.3], moment + dt.timedelta(minutes=i)) for i in range(3))
    path = _segment_path(name, "line-1", "line-1-000000000007")
    status, _, body = _device_request(server, key, "PUT", path, segment)
    assert status == 200, body
    stored = json.loads(body)
    expected_key = f"s3://{bucket}/synced/{name}/line-1/2026/03/04/05/line-1-000000000007.jsonl"
    assert stored["Key"] == expected_key and stored["Records"] == 3 and stored["Created"] is True
    # The agent was killed before it heard the answer: it sends the same segment again.
    status, _, body = _device_request(server, key, "PUT", path, segment)
    assert status == 200 and json.loads(body)["Key"] == expected_key and json.loads(body)["Created"] is False
    s3 = server.client("s3")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"synced/{name}/")["Contents"]
    assert [o["Key"] for o in listed] == [f"synced/{name}/line-1/2026/03/04/05/line-1-000000000007.jsonl"]
    assert s3.get_object(Bucket=bucket, Key=listed[0]["Key"])["Body"].read() == segment

    # Stored data is never replaced by other bytes under the same name.
    status, headers, _ = _device_request(server, key, "PUT", path, segment + _record([1, 2, 3], moment))
    assert status == 409 and headers["x-amzn-errortype"] == "ConflictException"
    assert s3.get_object(Bucket=bucket, Key=listed[0]["Key"])["Body"].read() == segment

    # Checked whole before a byte is written.
    bad = _record([1, 2, 3], moment) + b'{"captureData": {}}\n'
    status, headers, body = _device_request(server, key, "PUT", _segment_path(name, "line-1", "line-1-000000000008"),
                                            bad)
    assert status == 400 and headers["x-amzn-errortype"] == "ValidationException" and b"line 2" in body
    status, _, body = _device_request(server, key, "PUT", _segment_path(name, "line-1", "line-1-000000000009"),
                                      _record([1, 2, 3], moment) + _record([1, 2, 3], moment)[:-9])
    assert status == 400 and b"line 2 is not JSON" in body
    status, _, body = _device_request(server, key, "PUT", _segment_path(name, "line-1", "../../etc"), segment)
    assert status in (400, 404)
    status, _, body = _device_request(server, key, "PUT", _segment_path(name, "line-1", "line-2-000000000001"),
                                      segment)
    assert status == 400 and b"line-1-NNNNNNNNNNNN" in body
    oversize = _record([1, 2, 3], moment) * (16 * 1024 * 1024 // len(_record([1, 2, 3], moment)) + 1)
    status, code = _refused_upload(server, key, _segment_path(name, "line-1", "line-1-000000000010"), oversize)
    assert status == 413 and code == "ValidationException"
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"synced/{name}/")["Contents"]]
    assert keys == [f"synced/{name}/line-1/2026/03/04/05/line-1-000000000007.jsonl"]


def test_a_device_key_opens_its_own_device_on_the_device_door_only(server: MoorageServer,
                                                                   fleet: Callable[..., str]) -> None:
    name = fleet("door-1", "door-2")
    other = fleet("door-9")
    key = _issue_key(server, name, "door-1")
    edge = _edge(server, key)
    _heartbeat(edge, name, "door-1")
    moment = dt.datetime.now(dt.UTC)
    segment = _record([1, 2, 3], moment)

    for call in (lambda: _heartbeat(edge, name, "door-2"),
                 lambda: edge.get_deployments(DeviceName="door-9", DeviceFleetName=other),
                 lambda: edge.get_device_registration(DeviceName="door-2", DeviceFleetName=name)):
        with pytest.raises(ClientError) as denied:
            call()
        assert err_code(denied.value) == "AccessDeniedException" and err_status(denied.value) == 403
        assert key[0] in str(denied.value)
    status, headers, _ = _device_request(server, key, "PUT", _segment_path(name, "door-2", "door-2-000000000001"),
                                         segment)
    assert status == 403 and headers["x-amzn-errortype"] == "AccessDeniedException"
    status, headers, _ = _device_request(server, key, "GET", f"/moorage/v1/edge/fleets/{other}/packages/any-1")
    assert status == 403 and headers["x-amzn-errortype"] == "AccessDeniedException"

    # Every other door keeps the admin key alone.
    for call in (lambda: server.sm(access_key_id=key[0], secret_access_key=key[1]).list_device_fleets(),
                 lambda: server.rt(access_key_id=key[0], secret_access_key=key[1]).invoke_endpoint(
                     EndpointName="any", Body=b"1", ContentType="text/csv"),
                 lambda: server.client("s3", access_key_id=key[0], secret_access_key=key[1]).list_buckets()):
        with pytest.raises(ClientError) as refused:
            call()
        assert err_status(refused.value) == 403, refused.value
        assert err_code(refused.value) in ("UnrecognizedClientException", "InvalidAccessKeyId"), refused.value
    status, headers, _ = _device_request(server, key, "GET", "/moorage/v1/edge/devices")
    assert status == 403 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    status, headers, _ = _device_request(server, key, "POST", f"/moorage/v1/edge/fleets/{name}/devices/door-1/keys")
    assert status == 403  # a device cannot give itself a new key either

    # The admin key opens the device door for any device.
    admin_edge = _edge(server, (server.access_key_id, server.secret_access_key))
    _heartbeat(admin_edge, name, "door-2")

    # Rotating replaces the key; deregistering revokes it.
    rotated = _issue_key(server, name, "door-1")
    with pytest.raises(ClientError) as old:
        _heartbeat(edge, name, "door-1")
    assert err_code(old.value) == "UnrecognizedClientException"
    _heartbeat(_edge(server, rotated), name, "door-1")
    server.sm().deregister_devices(DeviceFleetName=name, DeviceNames=["door-1"])
    status, headers, _ = _device_request(server, rotated, "PUT", _segment_path(name, "door-1", "door-1-000000000001"),
                                         segment)
    assert status == 403 and headers["x-amzn-errortype"] == "UnrecognizedClientException"
    status, _, _ = server.signed_request("POST", f"/moorage/v1/edge/fleets/{name}/devices/door-1/keys")
    assert status == 404  # no key for a device that is not registered


def test_the_data_quality_monitor_reads_synced_edge_traffic(server: MoorageServer, fleet: Callable[..., str],
                                                           tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moorage.monitor.data_quality.execution import ExecutionSpec, run_execution
    from moorage.monitor.data_quality.suggest import suggest_baseline

    bucket = new_name("edge-capture")
    name = fleet("field-1", "field-2", bucket=bucket)
    baseline_csv = tmp_path / "baseline.csv"
    baseline_csv.write_text("f0,f1,f2\n" + "".join(f"{i % 10 / 10},{(i * 7) % 10 / 10},{i % 3}\n" for i in range(200)))
    suggest_baseline(baseline_csv, output=tmp_path / "baseline")

    start = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=5)
    sent = 0
    for device, f1_scale in (("field-1", 1.0), ("field-2", 100.0)):  # field-2's f1 has drifted far away
        key = _issue_key(server, name, device)
        for sequence in range(2):
            lines = [_record([i % 10 / 10, (i * 7) % 10 / 10 * f1_scale, i % 3], start + dt.timedelta(seconds=i))
                     for i in range(sequence * 50, sequence * 50 + 50)]
            sent += len(lines)
            status, _, body = _device_request(server, key, "PUT",
                                              _segment_path(name, device, f"{device}-{sequence:012d}"), b"".join(lines))
            assert status == 200, body

    # The execution reads the fleet's capture location as an endpoint's: the fleet is the "endpoint".
    monkeypatch.setenv("MOORAGE_OBJECT_STORE", "local")
    monkeypatch.setenv("MOORAGE_OBJECT_STORE_ROOT", str(server.home / "objects"))
    output = tmp_path / "monitoring"
    result = run_execution(ExecutionSpec(
        execution_name="edge-execution", schedule_name="edge-schedule", endpoint_name=name,
        capture_uri=f"s3://{bucket}/synced", scheduled_time=start.timestamp() + 3600,
        window_start=start.timestamp() - 60, window_end=start.timestamp() + 3600, output_uri=str(output),
        statistics_uri=str(tmp_path / "baseline" / "statistics.json"),
        constraints_uri=str(tmp_path / "baseline" / "constraints.json")))
    assert result["Status"] == "CompletedWithViolations", json.dumps(result, default=str)
    assert result["Capture"]["Records"] == sent and result["Capture"]["Files"] == 4
    assert result["Capture"]["MalformedLines"] == 0
    assert "f1" in result["ViolatedFeatures"] and "f0" not in result["ViolatedFeatures"]
    statistics = json.loads(Path(result["StatisticsUri"]).read_text())
    assert statistics["dataset"]["item_count"] == sent


def test_fleets_devices_keys_and_deployments_survive_a_restart(fresh_server: Callable[..., MoorageServer]) -> None:
    server = fresh_server()
    sm = server.sm()
    server.client("s3").create_bucket(Bucket="restart-capture")
    sm.create_device_fleet(DeviceFleetName="restart-fleet", OutputConfig={"S3OutputLocation": "s3://restart-capture/e"})
    sm.register_devices(DeviceFleetName="restart-fleet", Devices=[{"DeviceName": "kiosk-1"}])
    key = _issue_key(server, "restart-fleet", "kiosk-1")
    package = _package(server.home, "kiosk-model", "3")
    assert _publish(server, "restart-fleet", package)[0] == 200
    _heartbeat(_edge(server, key), "restart-fleet", "kiosk-1",
               Models=[{"ModelName": "kiosk-model", "ModelVersion": "3"}])
    segment = _record([1, 2, 3], dt.datetime.now(dt.UTC))
    path = _segment_path("restart-fleet", "kiosk-1", "kiosk-1-000000000001")
    status, _, body = _device_request(server, key, "PUT", path, segment)
    assert status == 200
    stored = json.loads(body)["Key"]
    seen = sm.describe_device(DeviceFleetName="restart-fleet", DeviceName="kiosk-1")["LatestHeartbeat"]

    # Device secrets are in the metadata database (SigV4 needs them whole): the home's alone.
    assert stat.S_IMODE(server.home.stat().st_mode) & 0o077 == 0
    databases = list(server.home.glob("*.db"))
    assert databases and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in databases)
    assert key[1].encode() not in (server.home / "server.log").read_bytes()

    server.stop()
    server.start(timeout=90)
    sm = server.sm()
    assert sm.describe_device_fleet(DeviceFleetName="restart-fleet")["OutputConfig"]["S3OutputLocation"] \
        == "s3://restart-capture/e"
    device = sm.describe_device(DeviceFleetName="restart-fleet", DeviceName="kiosk-1")
    assert device["LatestHeartbeat"] == seen and device["Models"][0]["ModelVersion"] == "3"
    edge = _edge(server, key)  # the device's key still opens its door
    definition = edge.get_deployments(DeviceName="kiosk-1", DeviceFleetName="restart-fleet")[
        "Deployments"][0]["Definitions"][0]
    assert definition["ModelHandle"] == "kiosk-model-3"
    assert definition["Checksum"]["Sum"] == hashlib.sha1(package).hexdigest()
    assert _device_request(server, key, "GET", "/moorage/v1/edge/fleets/restart-fleet/packages/kiosk-model-3")[2] \
        == package
    status, _, body = _device_request(server, key, "PUT", path, segment)
    assert status == 200 and json.loads(body) == {**json.loads(body), "Key": stored, "Created": False}
    with pytest.raises(ClientError) as in_use:
        sm.delete_device_fleet(DeviceFleetName="restart-fleet")
    assert err_code(in_use.value) == "ResourceInUse"


def test_the_cli_registers_publishes_and_lists_devices(server: MoorageServer, fleet: Callable[..., str],
                                                       tmp_path: Path) -> None:
    import configparser

    from click.testing import CliRunner

    from moorage.cli.main import cli

    runner = CliRunner()
    where = ["--home", str(server.home), "--url", server.url]
    name = fleet()
    credentials = tmp_path / "device" / "edge-credentials"
    ran = runner.invoke(cli, ["edge", "register", "--fleet", name, "cli-1", "--description", "bench 4",
                              "--credentials-out", str(credentials), *where])
    assert ran.exit_code == 0, ran.output
    assert credentials.stat().st_mode & 0o777 == 0o600
    parser = configparser.RawConfigParser()
    parser.read(credentials)
    key = (parser["default"]["aws_access_key_id"], parser["default"]["aws_secret_access_key"])
    assert parser["default"]["region"] == REGION
    assert key[0] in ran.output and key[1] not in ran.output
    _heartbeat(_edge(server, key), name, "cli-1", Models=[{"ModelName": "cli-model", "ModelVersion": "1"}],
               AgentMetrics=[{"MetricName": "SpoolBacklogRecords", "Value": 4321.0},
                             {"MetricName": "SpoolDroppedRecords", "Value": 17.0}])
    assert server.sm().describe_device(DeviceFleetName=name, DeviceName="cli-1")["Description"] == "bench 4"

    # Registering again: a new key, shown once; the old one stops working.
    again = runner.invoke(cli, ["edge", "register", "--fleet", name, "cli-1", *where])
    assert again.exit_code == 0, again.output
    assert "already registered" in again.output and "secret access key:" in again.output
    with pytest.raises(ClientError) as old:
        _heartbeat(_edge(server, key), name, "cli-1")
    assert err_code(old.value) == "UnrecognizedClientException"

    package = tmp_path / "cli-model-2.tar.gz"
    package.write_bytes(_package(server.home, "cli-model", "2"))
    published = runner.invoke(cli, ["edge", "publish", "--fleet", name, str(package), *where])
    assert published.exit_code == 0, published.output
    assert "cli-model-2" in published.output and hashlib.sha1(package.read_bytes()).hexdigest() in published.output
    missing = runner.invoke(cli, ["edge", "publish", "--fleet", "no-such-fleet", str(package), *where])
    assert missing.exit_code == 1 and "ResourceNotFound" in missing.output

    listed = runner.invoke(cli, ["edge", "devices", "--fleet", name, *where])
    assert listed.exit_code == 0, listed.output
    assert "cli-1" in listed.output and "cli-model 1" in listed.output and "4,321" in listed.output
    assert "17" in listed.output
    as_json = runner.invoke(cli, ["edge", "devices", "--fleet", name, "--json", *where])
    assert json.loads(as_json.output)["Devices"][0]["SpoolDroppedRecords"] == 17


def test_every_device_door_route_refuses_unsigned_and_wrongly_signed_requests(
        server: MoorageServer, fleet: Callable[..., str], tmp_path: Path) -> None:
    from starlette.routing import Route

    from moorage.api.app import MoorageApp
    from moorage.config import Credentials as AdminKey
    from moorage.config import Settings

    name = fleet("walk-1")
    key = _issue_key(server, name, "walk-1")
    app = MoorageApp(Settings.load(home=tmp_path / "home"), [AdminKey(server.access_key_id, server.secret_access_key)])
    try:
        routes = [r for r in app.edge_door.app.routes if isinstance(r, Route)]
    finally:
        app.store.close()
    assert len(routes) == len(app.edge_door.app.routes) == 5  # every route of the door is probed
    samples = {"fleet": name, "device": "walk-1", "segment": "walk-1-000000000001", "handle": "none-1"}
    for route in routes:
        path = route.path_format.format(**{p: samples[p] for p in route.param_convertors})
        for method in sorted((route.methods or set()) - {"HEAD"}):
            body = b"" if method == "GET" else json.dumps({"DeviceName": "walk-1", "DeviceFleetName": name}).encode()
            where = f"{method} {path}"
            status, headers, _ = http_request(method, server.url + path, body=body or None)
            assert (status, headers.get("x-amzn-errortype")) == (403, "MissingAuthenticationTokenException"), where
            status, headers, _ = _device_request(server, (key[0], "not-the-secret"), method, path, body)
            assert (status, headers.get("x-amzn-errortype")) == (403, "InvalidSignatureException"), where
            status, headers, _ = _device_request(server, ("MRGEUNKNOWNKEY000000", key[1]), method, path, body)
            assert (status, headers.get("x-amzn-errortype")) == (403, "UnrecognizedClientException"), where
            status, _, reply = _device_request(server, key, method, path, body)
            assert status not in (401, 403), (where, status, reply[:300])
