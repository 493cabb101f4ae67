"""Helpers for the edge agent's tests: real packages, a real device-door HTTP server, a real agent process.

``DoorServer`` is a small HTTP server (a thread, a real socket) that speaks the four requests of the
agent <-> server contract and checks each one's SigV4 signature with botocore's own signer
(``botocore.auth.SigV4Auth`` recomputes it from what arrived); it keeps segments by name (a second PUT
of a name overwrites, as the object store does), so the tests count what would be stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from moorage.edge import package as edge_package

ROOT = Path(__file__).resolve().parents[1]
ACCESS_KEY, SECRET_KEY, REGION = "EDGEDEVICEKEY0000001", "device-secret-for-tests", "us-east-1"


def wait_for(condition: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy; fail after ``timeout`` seconds (a bound, not a sync)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


# ----------------------------------------------------------------------------------------- packages


@dataclass(frozen=True)
class Model:
    onnx: bytes
    sample: np.ndarray
    outputs: dict[str, np.ndarray]
    input_name: str


_MODELS: dict[int, Model] = {}


def model(seed: int = 0) -> Model:
    """A logistic regression (4 float features) exported to ONNX with skl2onnx, no ZipMap."""
    if seed not in _MODELS:
        import onnxruntime as ort
        from skl2onnx import to_onnx
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(seed)
        x = rng.normal(size=(200, 4)).astype(np.float32)
        y = (x[:, 0] + (seed + 1) * x[:, 1] > 0).astype(np.int64)
        onnx = to_onnx(LogisticRegression().fit(x, y), x[:1], options={"zipmap": False}).SerializeToString()
        session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
        names = [out.name for out in session.get_outputs()]
        sample = x[:16]
        got = session.run(names, {session.get_inputs()[0].name: sample})
        _MODELS[seed] = Model(onnx, sample, dict(zip(names, got, strict=True)), session.get_inputs()[0].name)
    return _MODELS[seed]


def package_bytes(key: Any, version: str = "1", *, name: str = "edge-demo", seed: int = 0,
                  broken: bool = False) -> bytes:
    """A signed package; ``broken``: its expected outputs are wrong, so its self-test fails."""
    m = model(seed)
    expected = {k: v.copy() for k, v in m.outputs.items()}
    if broken:
        expected["probabilities"] = expected["probabilities"] + 0.5
    files = {"model.onnx": m.onnx, "validation.csv": edge_package.sample_csv(m.sample),
             "expected.json": edge_package.expected_json(expected)}
    manifest = {"name": name, "version": version,
                "signature": {"inputs": [{"name": m.input_name, "dtype": "float32", "shape": [None, 4]}],
                              "outputs": [{"name": n} for n in m.outputs]}}
    return edge_package.package_bytes(manifest, files, key)


def write_key(key: Any, path: Path) -> Path:
    path.write_bytes(edge_package.public_key_pem(key))
    return path


# -------------------------------------------------------------------------------------- the door


def botocore_signature_ok(method: str, path: str, headers: dict[str, str], body: bytes, secret: str,
                          access_key: str = ACCESS_KEY, region: str = REGION) -> tuple[bool, str]:
    """Whether the request's SigV4 signature is what botocore's signer computes for it."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    lower = {k.lower(): v for k, v in headers.items()}
    auth = lower.get("authorization", "")
    if not auth.startswith("AWS4-HMAC-SHA256 "):
        return False, "no SigV4 Authorization"
    fields = dict(part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(","))
    key_id, _day, scope_region, service, _ = fields["Credential"].split("/")
    if (key_id, scope_region, service) != (access_key, region, "sagemaker"):
        return False, f"credential scope {fields['Credential']}"
    signed = fields["SignedHeaders"].split(";")
    if not {"host", "x-amz-date"} <= set(signed):
        return False, f"signed headers {signed}"
    if lower.get("x-amz-content-sha256", hashlib.sha256(body).hexdigest()) != hashlib.sha256(body).hexdigest():
        return False, "body hash"
    request = AWSRequest(method=method, url=f"http://{lower['host']}{path}", data=body,
                         headers={name: lower[name] for name in signed})
    request.context["timestamp"] = lower["x-amz-date"]
    signer = SigV4Auth(Credentials(access_key, secret), "sagemaker", region)
    expected = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return expected == fields["Signature"], "signature"


@dataclass
class Recorded:
    method: str
    path: str
    body: bytes
    signed: bool


@dataclass
class DoorState:
    segments: dict[str, bytes] = field(default_factory=dict)  # segment name -> stored bytes
    puts: list[str] = field(default_factory=list)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Recorded] = field(default_factory=list)
    packages: dict[str, bytes] = field(default_factory=dict)  # handle -> bytes
    deployment: dict[str, Any] | None = None
    refuse: set[str] = field(default_factory=set)  # segment names answered 409, as a conflicting re-upload is


class _DoorHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self, status: int, doc: dict[str, Any] | bytes, content_type: str = "application/json") -> None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        door: DoorServer = self.server.door  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if len(body) != length:
            self.close_connection = True
            return  # the client went away mid-body: nothing stored
        ok, why = botocore_signature_ok(self.command, self.path, dict(self.headers.items()), body, door.secret)
        state = door.state
        with door.lock:
            state.requests.append(Recorded(self.command, self.path, body, ok))
        if not ok:
            self._answer(403, {"__type": "InvalidSignatureException", "message": why})
            return
        parts = self.path.strip("/").split("/")
        with door.lock:
            if self.command == "POST" and self.path == "/SendHeartbeat":
                state.heartbeats.append(json.loads(body))
                self._answer(200, {})
            elif self.command == "POST" and self.path == "/GetDeployments":
                self._answer(200, {"Deployments": [state.deployment] if state.deployment else []})
            elif self.command == "GET" and parts[:4] == ["moorage", "v1", "edge", "fleets"] and parts[5] == "packages":
                data = state.packages.get(parts[6])
                if data is None:
                    self._answer(404, {"__type": "ResourceNotFound", "message": "no such package"})
                else:
                    self._answer(200, data, "application/gzip")
            elif self.command == "PUT" and parts[-1] in state.refuse:
                self._answer(409, {"__type": "SegmentConflict", "message": "other bytes stored under this name"})
            elif self.command == "PUT" and parts[:4] == ["moorage", "v1", "edge", "fleets"] and parts[7] == "capture":
                state.segments[parts[8]] = body
                state.puts.append(parts[8])
                self._answer(200, {"Key": f"s3://bucket/{parts[4]}/{parts[6]}/{parts[8]}.jsonl"})
            else:
                self._answer(404, {"__type": "UnknownOperationException", "message": self.path})

    do_GET = do_POST = do_PUT = _handle


class DoorServer:
    """The device door on 127.0.0.1:``port`` in a thread (start/stop it to play a server going away)."""

    def __init__(self, port: int, secret: str = SECRET_KEY) -> None:
        self.port = port
        self.secret = secret
        self.state = DoorState()
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> DoorServer:
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _DoorHandler)
        httpd.daemon_threads = True
        httpd.door = self  # type: ignore[attr-defined]
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def publish(self, data: bytes, handle: str, name: str = "deploy-1") -> str:
        sha1 = hashlib.sha1(data).hexdigest()
        with self.lock:
            self.state.packages[handle] = data
            self.state.deployment = {
                "DeploymentName": name, "Type": "Model", "FailureHandlingPolicy": "ROLLBACK_ON_FAILURE",
                "Definitions": [{"ModelHandle": handle, "S3Url": f"s3://bucket/{handle}.tar.gz",
                                 "Checksum": {"Type": "SHA1", "Sum": sha1}, "State": "DEPLOY"}]}
        return sha1

    def records(self) -> list[dict[str, Any]]:
        with self.lock:
            return [json.loads(line) for data in self.state.segments.values() for line in data.splitlines()]

    def results(self) -> list[dict[str, Any]]:
        with self.lock:
            return [hb["DeploymentResult"] for hb in self.state.heartbeats if "DeploymentResult" in hb]


# ------------------------------------------------------------------------------------- the agent


def agent_command(package: Path, port: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "moorage.edge.cli", "serve", str(package), "--port", str(port), *args]


def start_agent(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    full = dict(os.environ, **(env or {}))
    full.pop("MOORAGE_ACCESS_KEY_ID", None)
    full.pop("MOORAGE_SECRET_ACCESS_KEY", None)
    full.update(env or {})
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    try:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full, cwd=ROOT)
    finally:
        out.close()


def wait_ping(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    import urllib.request

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the agent exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    wait_for(ready, timeout, "the agent's /ping")


def stop_agent(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)
