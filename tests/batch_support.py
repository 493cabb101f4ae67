"""Helpers for the transform-job tests: inputs written from a model's data, jobs through boto3, an S3 server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from e2e_support import HOST, REGION, ROLE_ARN, file_url, pack_model

WAIT = {"Delay": 1, "MaxAttempts": 120}
SLOW_INFERENCE = """
import time

def predict_fn(data, model):
    time.sleep(0.3)
    return model.predict(data)
"""


def csv_rows(X: np.ndarray) -> list[str]:
    return [",".join(repr(float(v)) for v in row) for row in X]


def expected_lines(model: Any, X: np.ndarray) -> str:
    return "".join(f"{p}\n" for p in model.predict(X).tolist())


def create_model(sm: Any, name: str, tarball: Path, env: dict[str, str] | None = None, image: str = "sklearn") -> str:
    container: dict[str, Any] = {"Image": image, "ModelDataUrl": file_url(tarball)}
    if env:
        container["Environment"] = env
    sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=ROLE_ARN)
    return name


def slow_model(workdir: Path, model: Any) -> tuple[Path, dict[str, str]]:
    tarball = pack_model(workdir, model, inference_py=SLOW_INFERENCE)
    return tarball, {"SAGEMAKER_PROGRAM": "inference.py", "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code"}


def job_request(name: str, model: str, input_uri: str, output_path: str, *, content_type: str = "text/csv",
                split: str = "Line", strategy: str | None = "MultiRecord", instances: int = 1,
                data_type: str = "S3Prefix", **extra: Any) -> dict[str, Any]:
    tin: dict[str, Any] = {"DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": input_uri}},
                           "ContentType": content_type, "SplitType": split}
    tin.update(extra.pop("input", {}))
    tout: dict[str, Any] = {"S3OutputPath": output_path}
    tout.update(extra.pop("output", {}))
    req: dict[str, Any] = {"TransformJobName": name, "ModelName": model, "TransformInput": tin,
                           "TransformOutput": tout,
                           "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": instances}}
    if strategy:
        req["BatchStrategy"] = strategy
    req.update(extra)
    return req


def run_job(sm: Any, **kw: Any) -> dict[str, Any]:
    """create_transform_job, the boto3 waiter, then DescribeTransformJob."""
    req = job_request(**kw)
    sm.create_transform_job(**req)
    with contextlib.suppress(Exception):  # a Failed job makes the waiter raise; the caller checks the status
        sm.get_waiter("transform_job_completed_or_stopped").wait(TransformJobName=req["TransformJobName"],
                                                                  WaiterConfig=WAIT)
    return sm.describe_transform_job(TransformJobName=req["TransformJobName"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class S3Server:
    """moto's standalone S3-compatible server on 127.0.0.1, as a subprocess."""

    def __init__(self, workdir: Path):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> S3Server:
        exe = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or shutil.which("moto_server")
        if exe is None:
            raise FileNotFoundError("moto_server is not installed (pip install 'moto[server]')")
        log = open(self.workdir / "moto.log", "wb")  # noqa: SIM115 - the process owns it
        self.proc = subprocess.Popen([exe, "-H", HOST, "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited: {(self.workdir / 'moto.log').read_text()[-2000:]}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("moto_server did not listen in time")

    def client(self) -> Any:
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.url, region_name=REGION,
                                              aws_access_key_id="testing", aws_secret_access_key="testing")

    def environment(self) -> dict[str, str]:
        """What a moorage server needs to reach it (through s3fs or pyarrow alike)."""
        credentials = self.workdir / "s3-credentials"
        credentials.write_text("[default]\naws_access_key_id = testing\naws_secret_access_key = testing\n")
        return {"AWS_ENDPOINT_URL_S3": self.url, "AWS_SHARED_CREDENTIALS_FILE": str(credentials),
                "AWS_DEFAULT_REGION": REGION, "MOORAGE_OBJECT_STORE": "external"}

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
