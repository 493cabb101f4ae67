"""Router workers (MOORAGE_ROUTER_WORKERS, api/router_worker.py): worker processes accept the port's
connections beside the router, admit InvokeEndpoint themselves and ask it for the answer over the router link;
every other request's connection is handed to the router. One server with two workers serves the
whole module: invocations (and what the router observes of them), the control plane on the same
port and on a connection an invocation used first, keys created and revoked while workers hold
copies, a worker killed and replaced, and a restart."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from e2e_support import (
    REGION,
    Deployer,
    MoorageServer,
    assert_predictions,
    csv_body,
    decode_predictions,
    file_url,
    http_request,
    pack_model,
)
from moorage.runtimes.shared_bodies import SHARE_MIN

pytestmark = pytest.mark.e2e

WORKERS = 2


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, regressor: Any) -> Iterator[tuple[MoorageServer, str]]:
    home = tmp_path_factory.mktemp("workers-home")
    srv = MoorageServer(home, env={"MOORAGE_ROUTER_WORKERS": str(WORKERS)})
    srv.start(timeout=90)
    try:
        tar = pack_model(tmp_path_factory.mktemp("workers-model"), regressor[0])
        name = Deployer(srv).deploy("workers", file_url(tar))
        yield srv, name
    finally:
        srv.stop()


def _workers(srv: MoorageServer) -> list[psutil.Process]:
    assert srv.pid is not None
    found = []
    for child in psutil.Process(srv.pid).children():
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "moorage.api.router_worker" in child.cmdline():
                found.append(child)
        except psutil.Error:
            continue  # gone meanwhile
    return found


def _holder(srv: MoorageServer, client_port: int) -> psutil.Process | None:
    """The server process (router or worker) that accepted the connection from ``client_port``."""
    assert srv.pid is not None
    router = psutil.Process(srv.pid)
    for process in (router, *_workers(srv)):
        try:
            if any(c.raddr and c.raddr.port == client_port for c in process.net_connections("tcp")):
                return process
        except psutil.Error:
            continue
    return None


def _connect_to(srv: MoorageServer, *, worker: bool) -> socket.socket:
    """A connection that a worker (or the router itself) accepted: the kernel gives each new connection to
    whichever process takes it, so connect until one lands where the test needs it."""
    router_pid = srv.pid
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", srv.port), timeout=30)
        port = sock.getsockname()[1]
        holder = _wait_for(lambda: _holder(srv, port), 10, "the connection accepted")  # noqa: B023
        if (holder.pid != router_pid) == worker:
            return sock
        sock.close()
    raise AssertionError(f"200 connections and none accepted by {'a worker' if worker else 'the router'}")


def _on(sock: socket.socket, srv: MoorageServer) -> http.client.HTTPConnection:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    conn.sock = sock
    return conn


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what} not seen within {timeout}s"
        time.sleep(0.05)


def _invocations(srv: MoorageServer, name: str) -> float:
    """The router's count of the endpoint's invocations, from its Prometheus exposition."""
    status, _, text = http_request("GET", srv.url + "/metrics")
    assert status == 200
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith("moorage_invocations_total{") and f'endpoint="{name}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _signed(srv: MoorageServer, key: tuple[str, str], method: str, path: str, body: bytes,
            headers: dict[str, str], service: str = "sagemaker") -> dict[str, str]:
    request = AWSRequest(method=method, url=srv.url + path, data=body, headers=headers)
    SigV4Auth(Credentials(*key), service, REGION).add_auth(request)
    return dict(request.headers.items())


def _call(conn: http.client.HTTPConnection, srv: MoorageServer, key: tuple[str, str], method: str, path: str,
          body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """One request on ``conn`` (kept alive between calls), as the SDKs sign it."""
    conn.request(method, path, body, _signed(srv, key, method, path, body, headers))
    response = conn.getresponse()
    return response.status, response.read()


def test_workers_run_and_answer_invocations_the_router_observes(served: tuple[MoorageServer, str],
                                                                regressor: Any) -> None:
    srv, name = served
    assert len(_workers(srv)) == WORKERS
    model, X = regressor
    rt = srv.rt()
    before = _invocations(srv, name)
    for start in range(0, 40, 4):
        reply = rt.invoke_endpoint(EndpointName=name, Body=csv_body(X[start:start + 4]), ContentType="text/csv",
                                   Accept="application/json")
        assert reply["InvokedProductionVariant"] == "AllTraffic"
        assert_predictions(decode_predictions(reply["Body"].read(), reply["ContentType"]),
                           model.predict(X[start:start + 4]))
    # Bodies past the shared-body threshold (runtimes/shared_bodies.py): from a worker through its arena
    # to the router, from the router through its own to the instance.
    rows = X[np.arange(6000) % len(X)]
    body = csv_body(rows)
    assert len(body) >= SHARE_MIN
    for _ in range(4):
        reply = rt.invoke_endpoint(EndpointName=name, Body=body, ContentType="text/csv", Accept="application/json")
        assert_predictions(decode_predictions(reply["Body"].read(), reply["ContentType"]), model.predict(rows))
    # The router observed each one (metrics are its observers): the workers asked it for every answer.
    _wait_for(lambda: _invocations(srv, name) - before >= 14, 30, "14 invocations counted by the router")
    with pytest.raises(ClientError) as missing:
        rt.invoke_endpoint(EndpointName="no-such-endpoint", Body=b"1,2,3,4", ContentType="text/csv")
    assert missing.value.response["Error"]["Code"] == "ValidationError"
    assert "not found" in missing.value.response["Error"]["Message"]


def test_the_control_plane_is_served_on_the_same_port(served: tuple[MoorageServer, str], regressor: Any) -> None:
    srv, name = served
    sm = srv.sm()
    assert sm.describe_endpoint(EndpointName=name)["EndpointStatus"] == "InService"
    assert name in [e["EndpointName"] for e in sm.list_endpoints()["Endpoints"]]
    # One connection: an invocation (the worker's), then a control-plane call (handed to the router).
    key = (srv.access_key_id, srv.secret_access_key)
    _, X = regressor
    invoke = ("POST", f"/endpoints/{name}/invocations", csv_body(X[:2]), {"Content-Type": "text/csv"})
    describe = ("POST", "/", json.dumps({"EndpointName": name}).encode(),
                {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.DescribeEndpoint"})
    conn = _on(_connect_to(srv, worker=True), srv)
    try:
        assert _call(conn, srv, key, *invoke)[0] == 200
        sock = conn.sock
        status, answer = _call(conn, srv, key, *describe)
        assert status == 200, answer
        assert json.loads(answer)["EndpointName"] == name
        # ... and the connection, now the router's, goes on serving both kinds.
        assert _call(conn, srv, key, *invoke)[0] == 200
        assert conn.sock is sock, "the client had to reconnect"
    finally:
        conn.close()


def test_keys_created_and_revoked_reach_the_workers(served: tuple[MoorageServer, str], regressor: Any) -> None:
    srv, name = served
    _, X = regressor
    status, _, reply = srv.signed_request("POST", "/moorage/v1/access-keys",
                                          json.dumps({"Role": "invoker", "EndpointNames": [name]}).encode())
    assert status == 200, reply
    doc = json.loads(reply)
    key = (doc["AccessKeyId"], doc["SecretAccessKey"])

    def invoke_status(worker: bool) -> int:
        conn = _on(_connect_to(srv, worker=worker), srv)
        try:
            return _call(conn, srv, key, "POST", f"/endpoints/{name}/invocations", csv_body(X[:1]),
                         {"Content-Type": "text/csv"})[0]
        finally:
            conn.close()

    _wait_for(lambda: all(invoke_status(worker) == 200 for worker in (True, True, True, False)), 10,
              "the new key accepted by the workers and the router")
    status, _, reply = srv.signed_request("DELETE", f"/moorage/v1/access-keys/{key[0]}")
    assert status == 200, reply
    _wait_for(lambda: all(invoke_status(worker) == 403 for worker in (True, True, True, False)), 10,
              "the revoked key refused by the workers and the router")


def test_a_killed_worker_is_replaced_and_serving_goes_on(served: tuple[MoorageServer, str], regressor: Any) -> None:
    srv, name = served
    model, X = regressor
    victim = _workers(srv)[0]
    os.kill(victim.pid, signal.SIGKILL)
    _wait_for(lambda: len([p for p in _workers(srv) if p.pid != victim.pid]) == WORKERS, 30,
              "a new worker in the dead one's place")
    rt = srv.rt()
    for _ in range(6):
        reply = rt.invoke_endpoint(EndpointName=name, Body=csv_body(X[:3]), ContentType="text/csv",
                                   Accept="application/json")
        assert_predictions(decode_predictions(reply["Body"].read(), reply["ContentType"]), model.predict(X[:3]))


def test_a_restart_with_workers_serves_the_endpoint_again(served: tuple[MoorageServer, str], regressor: Any,
                                                          tmp_path: Path) -> None:
    srv, name = served
    model, X = regressor
    old = {p.pid for p in _workers(srv)}
    assert srv.stop() == 0
    assert not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in old), \
        "a worker outlived its router"
    srv.start(timeout=90)
    Deployer(srv).wait_in_service(name)
    assert len(_workers(srv)) == WORKERS
    reply = srv.rt().invoke_endpoint(EndpointName=name, Body=csv_body(X[:2]), ContentType="text/csv",
                                     Accept="application/json")
    assert_predictions(decode_predictions(reply["Body"].read(), reply["ContentType"]), model.predict(X[:2]))


def test_a_handed_over_request_whose_body_comes_later_arrives_whole(served: tuple[MoorageServer, str]) -> None:
    """The worker hands the connection over once it has the header block; the router reads the rest of the
    body from the socket itself, after what the worker had read."""
    import hashlib

    srv, _ = served
    key = (srv.access_key_id, srv.secret_access_key)
    body = os.urandom(300_000)
    sm = srv.sm()
    bucket = "workers-handover"
    srv.client("s3").create_bucket(Bucket=bucket)
    path = f"/{bucket}/piece"
    headers = _signed(srv, key, "PUT", path, body, {"Content-Type": "application/octet-stream",
                                                    "X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()},
                      service="s3")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    with _connect_to(srv, worker=True) as sock:
        sock.sendall(f"PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nContent-Length: {len(body)}\r\n{head}\r\n"
                     .encode() + body[:1000])
        time.sleep(0.1)  # the header block alone first, whatever the loop's timing
        for start in range(1000, len(body), 100_000):
            sock.sendall(body[start:start + 100_000])
        reply = sock.recv(65536)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    got = srv.client("s3").get_object(Bucket=bucket, Key="piece")["Body"].read()
    assert got == body
    assert sm.list_endpoints()["Endpoints"] is not None


def test_a_request_pipelined_behind_an_invocation_is_told_to_use_a_new_connection(
        served: tuple[MoorageServer, str], regressor: Any) -> None:
    """Where a second request starts inside the worker's read is not known, so it cannot be handed over:
    it is answered 503 (retried by the SDKs) and the connection closed, after the invocation's answer."""
    srv, name = served
    _, X = regressor
    key = (srv.access_key_id, srv.secret_access_key)
    invoke_body = csv_body(X[:2])
    invoke = _signed(srv, key, "POST", f"/endpoints/{name}/invocations", invoke_body, {"Content-Type": "text/csv"})
    describe_body = json.dumps({"EndpointName": name}).encode()
    describe = _signed(srv, key, "POST", "/", describe_body, {"Content-Type": "application/x-amz-json-1.1",
                                                               "X-Amz-Target": "SageMaker.DescribeEndpoint"})

    def raw(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{srv.port}", f"Content-Length: {len(body)}",
                 *(f"{k}: {v}" for k, v in headers.items())]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    with _connect_to(srv, worker=True) as sock:
        sock.sendall(raw("POST", f"/endpoints/{name}/invocations", invoke, invoke_body)
                     + raw("POST", "/", describe, describe_body))
        received = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
    first, _, rest = received.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200"), received[:300]
    assert b"HTTP/1.1 503" in rest and b"connection: close" in rest.lower(), rest[:500]


def test_workers_with_tls_are_refused_at_start(tmp_path: Path) -> None:
    """A worker hands plain TCP connections over; inside TLS it could not, so the server says so and stops."""
    import subprocess
    import sys

    env = {**os.environ, "MOORAGE_ROUTER_WORKERS": "2", "MOORAGE_TLS_SELF_SIGNED": "true"}
    done = subprocess.run([sys.executable, "-m", "moorage", "serve", "--host", "127.0.0.1", "--port", "0",
                           "--home", str(tmp_path / "home")], env=env, capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "MOORAGE_ROUTER_WORKERS needs plain HTTP" in done.stderr
