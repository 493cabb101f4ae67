"""Helpers for the end-to-end suite: a real `moorage serve` process, boto3 clients, small models.

Nothing here is a mock: the server is started as a subprocess, spoken to over loopback HTTP with
unmodified boto3 clients, and stopped with SIGTERM (then SIGKILL if it does not go in time).
Every wait in this module is bounded.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import numpy as np
import psutil
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError, WaiterError

HOST = "127.0.0.1"
REGION = "us-east-1"
ACCESS_KEY_ID = "AKIAMOORAGEE2ETEST01"
SECRET_ACCESS_KEY = "moorage-e2e-secret-key-0123456789abcdefXYZ"
SKLEARN_IMAGE = "sklearn"
SM_SKLEARN_IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE_ARN = "arn:aws:iam::123456789012:role/MoorageE2ERole"
INSTANCE_TYPE = "ml.m5.large"
MAX_PAYLOAD = 6 * 1024 * 1024  # 6,291,456 bytes: SageMaker's InvokeEndpoint limit
WAITER = {"Delay": 1, "MaxAttempts": 60}


# --------------------------------------------------------------------------------------------------
# names, ports
# --------------------------------------------------------------------------------------------------
_counter = itertools.count(1)
_RUN = uuid.uuid4().hex[:5]


def new_name(prefix: str = "e2e") -> str:
    """A resource name that is unique per test run and matches SageMaker's name pattern."""
    return f"{prefix}-{_RUN}-{next(_counter)}"[:63]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------------
# the server process
# --------------------------------------------------------------------------------------------------
class ServerError(RuntimeError):
    pass


class MoorageServer:
    """One `python -m moorage serve` subprocess on 127.0.0.1 with its own home folder."""

    def __init__(
        self,
        home: Path,
        port: int | None = None,
        access_key_id: str = ACCESS_KEY_ID,
        secret_access_key: str = SECRET_ACCESS_KEY,
        env: dict[str, str] | None = None,
    ) -> None:
        self.home = Path(home)
        self.extra_env = dict(env or {})  # e.g. MOORAGE_METRICS_PERIOD=1 for a server under test
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.access_key_id = access_key_id
        self.secret_access_key = secret_access_key
        self.log_path = self.home / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: io.BufferedWriter | None = None
        self._descendants: list[psutil.Process] = []
        self.leftover_descendants: list[int] = []

    # -- lifecycle ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "moorage", "serve",
            "--host", HOST, "--port", str(self.port), "--home", str(self.home),
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> MoorageServer:
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("server already running")
        env = dict(os.environ)
        for key in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                    # A MoorageApp built in this test process exports where its s3:// store is; a server
                    # finds its own under its home unless a test says otherwise.
                    "MOORAGE_OBJECT_STORE", "MOORAGE_OBJECT_STORE_ROOT"):
            env.pop(key, None)
        env.update(
            MOORAGE_ACCESS_KEY_ID=self.access_key_id,
            MOORAGE_SECRET_ACCESS_KEY=self.secret_access_key,
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        self._log_file = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log_file.write(f"\n===== start {time.strftime('%H:%M:%S')} port {self.port} =====\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            self.command(),
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(self.home),
            env=env,
            start_new_session=True,  # its own process group: a test's ^C does not hit it twice
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = self.proc.returncode if self.proc else None
                raise ServerError(f"moorage serve exited with {code} before ready\n{self.log_tail()}")
            try:
                status, _, _ = http_request("GET", self.url + "/healthz", timeout=2)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.1)
        raise ServerError(f"/healthz not 200 after {timeout}s ({last})\n{self.log_tail()}")

    def _snapshot_descendants(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(psutil.Error):
            self._descendants = psutil.Process(self.proc.pid).children(recursive=True)

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, wait bounded, then SIGKILL. Also kills instance processes it left behind."""
        if self.proc is None:
            return None
        proc, code = self.proc, None
        self._snapshot_descendants()
        try:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    code = proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    code = proc.wait(10)
            else:
                code = proc.returncode
        finally:
            self.leftover_descendants = self._reap_descendants()
            if self._log_file is not None:
                self._log_file.close()
                self._log_file = None
            self.proc = None
        return code

    def _reap_descendants(self, grace: float = 5.0) -> list[int]:
        """Processes the server started that are still alive `grace` seconds after it exited."""
        alive = [p for p in self._descendants if _alive(p)]
        if alive:
            _, alive = psutil.wait_procs(alive, timeout=grace)
        leftover = [p.pid for p in alive]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if alive:
            psutil.wait_procs(alive, timeout=5)
        self._descendants = []
        return leftover

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no server log)"
        tail = "\n".join(text.splitlines()[-lines:])
        return f"----- tail of {self.log_path} -----\n{tail}\n-----"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- clients -----------------------------------------------------------------------------------
    def client(
        self,
        service: str,
        *,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        read_timeout: float = 60,
        validate: bool = True,
    ) -> Any:
        config = botocore.config.Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=read_timeout,
            parameter_validation=validate,
            max_pool_connections=32,
        )
        return boto3.session.Session().client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=config,
        )

    def sm(self, **kw: Any) -> Any:
        return self.client("sagemaker", **kw)

    def rt(self, **kw: Any) -> Any:
        return self.client("sagemaker-runtime", **kw)

    def healthz(self) -> int:
        status, _, _ = http_request("GET", self.url + "/healthz", timeout=5)
        return status

    def signed_request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        """A SigV4-signed request (service `sagemaker`) to the native REST API."""
        url = self.url + path
        request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
        creds = Credentials(self.access_key_id, self.secret_access_key)
        SigV4Auth(creds, "sagemaker", REGION).add_auth(request)
        return http_request(method, url, body=body or None, headers=dict(request.headers.items()))

    def native_endpoint(self, name: str) -> dict[str, Any]:
        status, _, body = self.signed_request("GET", f"/moorage/v1/endpoints/{name}")
        if status != 200:
            raise AssertionError(f"GET /moorage/v1/endpoints/{name} -> {status}: {body[:500]!r}")
        return json.loads(body)

    def instances(self, name: str, variant: str | None = None) -> list[dict[str, Any]]:
        doc = self.native_endpoint(name)
        out = []
        for v in (*doc["Variants"], *doc.get("ShadowVariants", [])):
            if variant is None or v["VariantName"] == variant:
                out.extend(v["Instances"])
        return out


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pid_alive(pid: int) -> bool:
    try:
        return _alive(psutil.Process(pid))
    except psutil.Error:
        return False


def wait_pids_gone(pids: Iterable[int], timeout: float = 15.0) -> list[int]:
    """Wait for processes to exit; returns those still alive after `timeout`."""
    deadline = time.monotonic() + timeout
    remaining = list(pids)
    while remaining and time.monotonic() < deadline:
        remaining = [p for p in remaining if pid_alive(p)]
        if remaining:
            time.sleep(0.1)
    return remaining


def http_request(
    method: str,
    url: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 30,
) -> tuple[int, dict[str, str], bytes]:
    """Plain stdlib HTTP: (status, lower-cased headers, body); HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def error_code_of(headers: dict[str, str], body: bytes) -> str:
    """The AWS error code of a raw HTTP error reply (x-amzn-ErrorType header or __type/code)."""
    code = headers.get("x-amzn-errortype", "")
    if not code:
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            doc = {}
        code = str(doc.get("__type") or doc.get("code") or doc.get("Code") or "")
    # AWS may send "ns#Code" or "Code:http://..."
    return code.split(":")[0].split("#")[-1]


# --------------------------------------------------------------------------------------------------
# ClientError helpers
# --------------------------------------------------------------------------------------------------
def err_code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def err_message(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Message", "") or ""


def err_status(exc: ClientError) -> int:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def err_field(exc: ClientError, field: str) -> Any:
    if field in exc.response:
        return exc.response[field]
    return exc.response.get("Error", {}).get(field)


# --------------------------------------------------------------------------------------------------
# models: train, pack
# --------------------------------------------------------------------------------------------------
def train_classifier() -> tuple[Any, np.ndarray]:
    from sklearn.datasets import make_classification
    from sklearn.linear_model import LogisticRegression

    X, y = make_classification(n_samples=300, n_features=4, n_informative=3, n_redundant=0, random_state=0)
    model = LogisticRegression(random_state=0, max_iter=1000).fit(X, y)
    return model, X


def train_regressor() -> tuple[Any, np.ndarray]:
    from sklearn.datasets import make_regression
    from sklearn.linear_model import Ridge

    X, y = make_regression(n_samples=300, n_features=4, noise=0.5, random_state=1)
    model = Ridge(alpha=1.0).fit(X, y)
    return model, X


TEXT_CORPUS = [
    ("great product, works perfectly", "pos"),
    ("absolutely love it, five stars", "pos"),
    ("excellent quality and fast delivery", "pos"),
    ("very happy with this purchase", "pos"),
    ("works great, would buy again", "pos"),
    ("fantastic value, highly recommend", "pos"),
    ("terrible, broke after one day", "neg"),
    ("awful quality, do not buy", "neg"),
    ("very disappointed, waste of money", "neg"),
    ("stopped working, poor product", "neg"),
    ("horrible experience, returned it", "neg"),
    ("bad value and slow delivery", "neg"),
]


def train_text_pipeline() -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    texts = [t for t, _ in TEXT_CORPUS]
    labels = [y for _, y in TEXT_CORPUS]
    pipe = Pipeline([("tfidf", TfidfVectorizer()), ("clf", LogisticRegression(random_state=0, max_iter=1000))])
    return pipe.fit(texts, labels)


def save_model(model: Any, path: Path) -> Path:
    """Save by file suffix: .joblib (joblib), .pkl (pickle), .skops (skops)."""
    if path.suffix == ".joblib":
        import joblib

        joblib.dump(model, path)
    elif path.suffix == ".pkl":
        with open(path, "wb") as f:
            pickle.dump(model, f)
    elif path.suffix == ".skops":
        import skops.io

        skops.io.dump(model, path)
    else:
        raise ValueError(f"unknown model file type {path}")
    return path


def model_dir(
    dest: Path,
    model: Any | None,
    *,
    filename: str = "model.joblib",
    inference_py: str | None = None,
    extra_files: dict[str, bytes | str] | None = None,
) -> Path:
    """A SageMaker model directory: <filename> at the root, optional code/inference.py."""
    dest.mkdir(parents=True, exist_ok=True)
    if model is not None:
        save_model(model, dest / filename)
    if inference_py is not None:
        (dest / "code").mkdir(exist_ok=True)
        (dest / "code" / "inference.py").write_text(inference_py)
    for rel, content in (extra_files or {}).items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        else:
            target.write_bytes(content)
    return dest


def tar_dir(src: Path, tar_path: Path) -> Path:
    """A tar.gz of the folder's contents at its root, as the SageMaker SDK writes model.tar.gz."""
    with tarfile.open(tar_path, "w:gz") as tar:
        for child in sorted(src.iterdir()):
            tar.add(child, arcname=child.name)
    return tar_path


def pack_model(
    workdir: Path,
    model: Any | None,
    *,
    filename: str = "model.joblib",
    inference_py: str | None = None,
    extra_files: dict[str, bytes | str] | None = None,
) -> Path:
    """Build <workdir>/model/ and return <workdir>/model.tar.gz."""
    workdir.mkdir(parents=True, exist_ok=True)
    src = model_dir(workdir / "model", model, filename=filename, inference_py=inference_py, extra_files=extra_files)
    return tar_dir(src, workdir / "model.tar.gz")


def pack_code(workdir: Path, inference_py: str) -> Path:
    """A SageMaker `sourcedir.tar.gz`: inference.py at the root."""
    src = workdir / "sourcedir"
    src.mkdir(parents=True, exist_ok=True)
    (src / "inference.py").write_text(inference_py)
    return tar_dir(src, workdir / "sourcedir.tar.gz")


def file_url(path: Path) -> str:
    return Path(path).resolve().as_uri()


# --------------------------------------------------------------------------------------------------
# payloads
# --------------------------------------------------------------------------------------------------
def csv_body(X: np.ndarray) -> bytes:
    rows = np.atleast_2d(X)
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()


def json_body(X: np.ndarray, *, instances: bool = False) -> bytes:
    data = np.atleast_2d(X).tolist()
    return json.dumps({"instances": data} if instances else data).encode()


def jsonlines_body(X: np.ndarray) -> bytes:
    return "\n".join(json.dumps(row) for row in np.atleast_2d(X).tolist()).encode() + b"\n"


def npy_body(X: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.atleast_2d(np.asarray(X, dtype=np.float64)), allow_pickle=False)
    return buf.getvalue()


def decode_predictions(body: bytes, content_type: str) -> np.ndarray:
    """Decode a response body by its Content-Type into a flat array of predictions."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == "application/json":
        doc = json.loads(body)  # the SageMaker scikit-learn container answers a bare JSON list
        assert isinstance(doc, list), f"expected a JSON list of predictions, got {body[:200]!r}"
        return np.asarray(doc)
    if ctype == "application/jsonlines":
        return np.asarray([json.loads(line) for line in body.decode().splitlines() if line.strip()])
    if ctype == "text/csv":
        cells = [c for line in body.decode().splitlines() if line.strip() for c in line.split(",")]
        return np.asarray([_scalar(c) for c in cells])
    if ctype == "application/x-npy":
        return np.load(io.BytesIO(body), allow_pickle=False)
    raise AssertionError(f"unexpected response Content-Type {content_type!r}: {body[:200]!r}")


def _scalar(cell: str) -> Any:
    cell = cell.strip().strip('"')
    try:
        return float(cell)
    except ValueError:
        return cell


def assert_predictions(got: np.ndarray, expected: np.ndarray) -> None:
    """Numbers equal to 1e-9 relative; labels exactly."""
    got = np.asarray(got).ravel()
    expected = np.asarray(expected).ravel()
    assert got.shape == expected.shape, f"shape {got.shape} != {expected.shape}: {got[:10]}"
    if expected.dtype.kind in "fiub":
        np.testing.assert_allclose(got.astype(np.float64), expected.astype(np.float64), rtol=1e-9, atol=0)
    else:
        assert [str(g) for g in got] == [str(e) for e in expected]


def invoke(rt: Any, endpoint: str, body: bytes, content_type: str = "text/csv", **kw: Any) -> dict[str, Any]:
    """invoke_endpoint, returning the response with Body read into bytes."""
    resp = rt.invoke_endpoint(EndpointName=endpoint, Body=body, ContentType=content_type, **kw)
    resp["Body"] = resp["Body"].read()
    return resp


def predict(rt: Any, endpoint: str, X: np.ndarray, **kw: Any) -> np.ndarray:
    """CSV in, JSON out: the predictions as an array."""
    resp = invoke(rt, endpoint, csv_body(X), "text/csv", Accept="application/json", **kw)
    return decode_predictions(resp["Body"], resp["ContentType"])


# --------------------------------------------------------------------------------------------------
# resources on a server
# --------------------------------------------------------------------------------------------------
def variant(
    name: str,
    model: str,
    *,
    weight: float = 1.0,
    count: int = 1,
    instance_type: str = INSTANCE_TYPE,
) -> dict[str, Any]:
    return {
        "VariantName": name,
        "ModelName": model,
        "InitialInstanceCount": count,
        "InstanceType": instance_type,
        "InitialVariantWeight": weight,
    }


class Deployer:
    """Creates models/configs/endpoints on a server and deletes them all in cleanup()."""

    def __init__(self, server: MoorageServer, sm: Any | None = None) -> None:
        self.server = server
        self.sm = sm or server.sm()
        self.models: list[str] = []
        self.configs: list[str] = []
        self.endpoints: list[str] = []

    def model(
        self,
        name: str,
        model_data_url: str | Path,
        *,
        image: str = SKLEARN_IMAGE,
        env: dict[str, str] | None = None,
    ) -> str:
        container: dict[str, Any] = {"Image": image, "ModelDataUrl": str(model_data_url)}
        if env:
            container["Environment"] = env
        self.sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=ROLE_ARN)
        self.models.append(name)
        return name

    def config(self, name: str, variants: list[dict[str, Any]], *, shadows: list[dict[str, Any]] | None = None) -> str:
        extra = {"ShadowProductionVariants": shadows} if shadows else {}
        self.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=variants, **extra)
        self.configs.append(name)
        return name

    def endpoint(self, name: str, config_name: str) -> str:
        self.sm.create_endpoint(EndpointName=name, EndpointConfigName=config_name)
        self.endpoints.append(name)
        return name

    def deploy(
        self,
        prefix: str,
        model_data_url: str | Path,
        *,
        image: str = SKLEARN_IMAGE,
        env: dict[str, str] | None = None,
        count: int = 1,
        variant_name: str = "AllTraffic",
        wait: bool = True,
    ) -> str:
        """model + one-variant config + endpoint, all named from `prefix`; returns the endpoint name."""
        name = new_name(prefix)
        self.model(name, model_data_url, image=image, env=env)
        self.config(name, [variant(variant_name, name, count=count)])
        self.endpoint(name, name)
        if wait:
            self.wait_in_service(name)
        return name

    def wait_in_service(self, name: str) -> dict[str, Any]:
        try:
            self.sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig=WAITER)
        except WaiterError as exc:
            raise AssertionError(
                f"endpoint {name} not InService: {self.describe_brief(name)}\n{self.server.log_tail()}"
            ) from exc
        return self.sm.describe_endpoint(EndpointName=name)

    def wait_status(self, name: str, statuses: set[str], timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        desc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            desc = self.sm.describe_endpoint(EndpointName=name)
            if desc["EndpointStatus"] in statuses:
                return desc
            time.sleep(0.25)
        raise AssertionError(
            f"endpoint {name} never reached {statuses} in {timeout}s: "
            f"{desc.get('EndpointStatus')} {desc.get('FailureReason')}\n{self.server.log_tail()}"
        )

    def describe_brief(self, name: str) -> str:
        try:
            d = self.sm.describe_endpoint(EndpointName=name)
            return f"{d.get('EndpointStatus')} {d.get('FailureReason', '')}"
        except ClientError as exc:
            return f"describe failed: {err_code(exc)} {err_message(exc)}"

    def cleanup(self) -> None:
        """Best effort, bounded: endpoints first (stops their instances), then configs, models."""
        if not self.server.alive():
            return
        for name in self.endpoints:
            with contextlib.suppress(Exception):
                self.sm.delete_endpoint(EndpointName=name)
        for name in self.endpoints:
            with contextlib.suppress(Exception):
                self.sm.get_waiter("endpoint_deleted").wait(
                    EndpointName=name, WaiterConfig={"Delay": 0.5, "MaxAttempts": 40}
                )
        for name in self.configs:
            with contextlib.suppress(Exception):
                self.sm.delete_endpoint_config(EndpointConfigName=name)
        for name in self.models:
            with contextlib.suppress(Exception):
                self.sm.delete_model(ModelName=name)
        self.endpoints, self.configs, self.models = [], [], []


def wait_until(predicate: Callable[[], Any], timeout: float, interval: float = 0.2, what: str = "") -> Any:
    """Poll predicate() until truthy (returned) or timeout (AssertionError). Exceptions count as falsy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as exc:
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}: last {last!r}")


# A bring-your-own server that answers /invocations with its environment and working directory,
# to check what moorage passes to an instance.
ECHO_ENV_SERVER = """\
import json, os
from http.server import BaseHTTPRequestHandler, HTTPServer

class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def _reply(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def do_GET(self):
        self._reply(b"{}")
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self._reply(json.dumps({"env": dict(os.environ), "cwd": os.getcwd(), "pid": os.getpid()}).encode())
    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["SAGEMAKER_BIND_TO_PORT"])), H).serve_forever()
"""


# --------------------------------------------------------------------------------------------------
# steady traffic during an update
# --------------------------------------------------------------------------------------------------
class SteadyTraffic:
    """One caller invoking an endpoint without pause while a test changes it. Keeps (time, the answer's
    ``field``) for each success and every failure: during an update none may fail."""

    def __init__(self, srv: MoorageServer, endpoint: str, field: str, body: bytes = b"1,2,3") -> None:
        self.rt = srv.rt()
        self.endpoint = endpoint
        self.field = field
        self.body = body
        self.answered: list[tuple[float, str]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @property
    def answers(self) -> list[str]:
        return [answer for _, answer in list(self.answered)]

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                reply = self.rt.invoke_endpoint(EndpointName=self.endpoint, Body=self.body, ContentType="text/csv")
                self.answered.append((time.time(), json.loads(reply["Body"].read())[self.field]))
            except Exception as exc:  # every steady request must succeed: keep what went wrong
                self.failures.append(f"{type(exc).__name__}: {exc}")

    def __enter__(self) -> SteadyTraffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def between(self, start: float, end: float) -> Counter[str]:
        return Counter(answer for when, answer in list(self.answered) if start <= when < end)
