"""s3:// end to end against an S3-compatible server (moto's standalone server on loopback): model
data read from a bucket, and data capture written to one, through the same location layer."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from batch_support import S3Server
from e2e_support import Deployer, MoorageServer, csv_body, invoke, pack_model, variant

pytestmark = pytest.mark.e2e


@pytest.fixture
def s3(tmp_path: Path) -> Any:
    try:
        server = S3Server(tmp_path).start()
    except (FileNotFoundError, RuntimeError, TimeoutError) as exc:
        pytest.skip(f"no S3-compatible server: {exc}")
    try:
        yield server
    finally:
        server.stop()


def test_model_from_s3_and_capture_to_s3(s3: S3Server, fresh_server: Callable[..., MoorageServer], tmp_path: Path,
                                         classifier: tuple[Any, Any]) -> None:
    client = s3.client()
    client.create_bucket(Bucket="models")
    client.create_bucket(Bucket="capture")
    client.put_object(Bucket="models", Key="clf/model.tar.gz",
                      Body=pack_model(tmp_path / "clf", classifier[0]).read_bytes())
    srv = fresh_server(env=s3.environment())
    deployer = Deployer(srv, srv.sm())
    name = "s3-capture"
    deployer.model(name, "s3://models/clf/model.tar.gz")
    srv.sm().create_endpoint_config(
        EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", name)],
        DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                           "DestinationS3Uri": "s3://capture/datacapture",
                           "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]})
    deployer.configs.append(name)
    deployer.endpoint(name, name)
    deployer.wait_in_service(name)
    rows = classifier[1][:5]
    answers = [invoke(srv.rt(), name, csv_body(row))["Body"] for row in rows]
    srv.stop()  # a clean stop flushes every captured record

    keys = [o["Key"] for o in client.list_objects_v2(Bucket="capture", Prefix="datacapture/")["Contents"]]
    assert keys and all(k.startswith(f"datacapture/{name}/AllTraffic/") and k.endswith(".jsonl") for k in keys)
    assert all(len(k.split("/")) == 8 for k in keys), keys  # prefix/endpoint/variant/yyyy/mm/dd/hh/file
    records = []
    for key in sorted(keys):
        text = client.get_object(Bucket="capture", Key=key)["Body"].read().decode()
        records += [json.loads(line) for line in io.StringIO(text) if line.strip()]
    assert [r["captureData"]["endpointInput"]["data"] for r in records] == [csv_body(r).decode() for r in rows]
    assert [r["captureData"]["endpointOutput"]["data"].encode() for r in records] == answers
