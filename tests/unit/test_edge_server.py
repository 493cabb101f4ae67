"""``moorage-edge serve`` as a real process: the container contract over HTTP, and kill -9 mid-upload
against a real device door (every record still stored exactly once)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from e2e_support import free_port
from edge_support import (
    ACCESS_KEY,
    ROOT,
    SECRET_KEY,
    DoorServer,
    agent_command,
    package_bytes,
    start_agent,
    stop_agent,
    wait_for,
    wait_ping,
    write_key,
)
from moorage.edge import package as edge_package


def post(port: int, body: bytes, content_type: str | None, accept: str | None = None,
         path: str = "/invocations") -> tuple[int, str, bytes]:
    headers = {k: v for k, v in (("Content-Type", content_type), ("Accept", accept)) if v}
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read()


@pytest.fixture(scope="module")
def key() -> object:
    return edge_package.generate_key()


def test_the_container_contract_over_http(tmp_path: Path, key: object) -> None:
    pkg = tmp_path / "pkg.tar.gz"
    pkg.write_bytes(package_bytes(key, "1"))
    port, log = free_port(), tmp_path / "agent.log"
    agent = start_agent(agent_command(pkg, port, "--trust-key", str(write_key(key, tmp_path / "k.pem")),
                                      "--spool", str(tmp_path / "spool")), log)
    try:
        wait_ping(port, agent, log)
        status, content_type, body = post(port, b"0.5,-1,2,0.25\n1,1,1,1\n", "text/csv", "text/csv")
        assert (status, content_type) == (200, "text/csv") and len(body.splitlines()) == 2
        status, content_type, body = post(port, b"[[0.5,-1,2,0.25]]", "application/json")
        assert (status, content_type) == (200, "application/json") and len(json.loads(body)) == 1
        buffer = io.BytesIO()
        np.save(buffer, np.ones((3, 4), dtype=np.float32))
        status, content_type, body = post(port, buffer.getvalue(), "application/x-npy", "application/x-npy")
        assert (status, content_type) == (200, "application/x-npy") and np.load(io.BytesIO(body)).shape == (3,)
        assert post(port, b"1,2,3,4", "text/plain")[0] == 415
        assert post(port, b"1,2,3,4", "text/csv", "image/png")[0] == 406
        status, content_type, body = post(port, b"1,x,3", "text/csv")
        assert status == 400 and content_type.startswith("text/plain") and body
        assert post(port, b"", "text/csv", path="/nowhere")[0] == 404
        assert post(port, b"0" * (6 * 1024 * 1024 + 1), "text/csv")[0] == 413
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0
    finally:
        stop_agent(agent)
    lines = (tmp_path / "spool" / "capture" / "open.jsonl").read_bytes().splitlines()
    assert len(lines) == 3  # the three answered requests, captured as sent
    first = json.loads(lines[0])["captureData"]
    assert first["endpointInput"]["data"] == "0.5,-1,2,0.25\n1,1,1,1\n"
    assert first["endpointInput"]["encoding"] == "CSV" and first["endpointOutput"]["observedContentType"] == "text/csv"
    assert json.loads(lines[2])["captureData"]["endpointInput"]["encoding"] == "BASE64"


def test_kill_9_mid_upload_then_restart_stores_every_record_once(tmp_path: Path, key: object) -> None:
    pkg = tmp_path / "pkg.tar.gz"
    pkg.write_bytes(package_bytes(key, "1"))
    trusted = write_key(key, tmp_path / "k.pem")
    door = DoorServer(free_port()).start()
    creds = tmp_path / "device-credentials"
    creds.write_text(f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"
                     "region = us-east-1\n")
    port, log, paused = free_port(), tmp_path / "agent.log", tmp_path / "paused"
    common = ["--trust-key", str(trusted), "--spool", str(tmp_path / "spool"), "--server", door.url,
              "--fleet", "fleet-1", "--device", "dev-1", "--credentials", str(creds),
              "--segment-age", "0.2", "--heartbeat-interval", "0.2"]
    agent = start_agent(agent_command(pkg, port, *common, "--upload-pause-file", str(paused)), log)
    try:
        wait_ping(port, agent, log)
        for i in range(50):
            assert post(port, f"{i},1,1,1".encode(), "text/csv")[0] == 200
        wait_for(paused.exists, 30, "the agent to pause mid-upload")
        os.kill(agent.pid, signal.SIGKILL)  # headers and half the body sent: the server stored nothing
        agent.wait(timeout=20)
        assert door.state.segments == {}
        agent = start_agent(agent_command(pkg, port, *common), log)
        wait_ping(port, agent, log)
        for i in range(50, 80):
            assert post(port, f"{i},1,1,1".encode(), "text/csv")[0] == 200
        wait_for(lambda: len(door.records()) >= 80, 60, "every record at the door")
        wait_for(lambda: not list((tmp_path / "spool" / "capture" / "sealed").iterdir()), 30, "an empty spool")
    finally:
        stop_agent(agent)
        door.stop()
    inputs = [r["captureData"]["endpointInput"]["data"] for r in door.records()]
    assert sorted(inputs) == sorted(f"{i},1,1,1" for i in range(80))  # every one, once
    assert door.state.puts[0] == "dev-1-000000000001"  # the segment cut off mid-upload, sent again whole


def test_the_agent_imports_none_of_the_server() -> None:
    """Nor the standard library's heavy parts (http.server/client, email, ssl, asyncio): the RSS budget."""
    code = ("import sys, moorage.edge.cli, moorage.edge.agent, moorage.edge.server; "
            "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('botocore', 'boto3', 'starlette', 'uvicorn', 'sqlalchemy', 'orjson', 'pandas', 'sklearn', 'httptools',"
            " 'asyncio', 'email', 'http', 'ssl')"
            " or (m.startswith('moorage.') and not m.startswith('moorage.edge')))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60,
                         check=True)
    assert out.stdout.strip() == ""
