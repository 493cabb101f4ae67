"""Drain on SIGTERM (issue 19): a request in flight when the server is told to stop is answered whole
within MOORAGE_SHUTDOWN_GRACE_SECONDS (the old server cut it after 15 s), new connections are refused
meanwhile, and the log says how many requests were drained and cut. The model blocks until the test
creates its gate file, so nothing here depends on timing."""

from __future__ import annotations

import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from e2e_support import HOST, Deployer, MoorageServer, file_url, pack_model

pytestmark = pytest.mark.e2e

GATED = """
import os
import time


def model_fn(model_dir):
    return "gated"


def input_fn(request_body, content_type):
    return request_body.decode() if isinstance(request_body, (bytes, bytearray)) else request_body


def predict_fn(gate, model):
    open(gate + ".started", "w").close()
    deadline = time.monotonic() + 150
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released " + gate


def output_fn(prediction, accept):
    return prediction, "text/plain"
"""


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not seen within {timeout}s"
        time.sleep(0.05)


def _refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(5)
        try:
            sock.connect((HOST, port))
        except ConnectionRefusedError:
            return True
        return False


def _deploy_gated(srv: MoorageServer, tmp_path: Path) -> tuple[Deployer, str]:
    deployer = Deployer(srv)
    tar = pack_model(tmp_path / "gated", None, inference_py=GATED)
    return deployer, deployer.deploy("drain", file_url(tar), env={"SAGEMAKER_PROGRAM": "inference.py"})


def _invoke_in_background(srv: MoorageServer, name: str, gate: Path) -> tuple[threading.Thread, dict[str, Any]]:
    rt = srv.rt(read_timeout=150)
    result: dict[str, Any] = {}

    def call() -> None:
        try:
            reply = rt.invoke_endpoint(EndpointName=name, ContentType="text/plain", Body=str(gate).encode())
            result["body"] = reply["Body"].read().decode()
        except Exception as exc:  # recorded, asserted on below
            result["error"] = exc

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    _wait_for(lambda: Path(str(gate) + ".started").exists(), 60, "the request reaching the model")
    return thread, result


def test_a_request_in_flight_at_sigterm_is_answered_whole(fresh_server: Any, tmp_path: Path) -> None:
    srv = fresh_server(env={"MOORAGE_SHUTDOWN_GRACE_SECONDS": "90"})
    _, name = _deploy_gated(srv, tmp_path)
    gate = tmp_path / "gate"
    thread, result = _invoke_in_background(srv, name, gate)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    _wait_for(lambda: _refused(srv.port), 30, "new connections refused while draining")
    # Past the old server's fixed 15 s: the request is still held, not cut.
    time.sleep(16)
    assert thread.is_alive() and not result, result
    gate.touch()
    thread.join(timeout=60)
    assert result.get("body") == f"released {gate}", result
    assert srv.proc.wait(timeout=60) == 0
    log = srv.log_path.read_text()
    assert "1 request(s) in flight have up to 90s to finish" in log
    assert "1 request(s) drained, 0 cut" in log


def test_a_request_past_the_grace_period_is_cut_and_counted(fresh_server: Any, tmp_path: Path) -> None:
    srv = fresh_server(env={"MOORAGE_SHUTDOWN_GRACE_SECONDS": "1"})
    _, name = _deploy_gated(srv, tmp_path)
    gate = tmp_path / "gate"
    thread, result = _invoke_in_background(srv, name, gate)
    assert srv.proc is not None
    srv.proc.send_signal(signal.SIGTERM)
    thread.join(timeout=60)
    assert not thread.is_alive() and "error" in result, result
    assert srv.proc.wait(timeout=60) == 0
    assert "0 request(s) drained, 1 cut after the 1s grace period" in srv.log_path.read_text()
    gate.touch()  # nothing waits on it now; the instance went with the server
