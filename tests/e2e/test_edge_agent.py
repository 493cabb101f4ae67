"""The edge agent (a real `moorage-edge serve` process) against a real `moorage serve`.

One server, its own home (it is stopped and started): a fleet writing capture to the server's object
store, a registered device with its own key. The agent starts while the server is down and keeps
serving and spooling; once the server is back every record is stored exactly once (counted in the
stored capture files), also after the agent is killed -9 mid-upload (``--upload-pause-file`` stops the
upload after its headers and half its body, deterministically) and restarted. Then a new package
version published to the fleet is pulled and served, and a broken one (its self-test fails) is
refused and reported while the agent keeps the good one, across an agent restart too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from e2e_support import REGION, MoorageServer, free_port, new_name
from edge_support import agent_command, model, package_bytes, start_agent, stop_agent, wait_for, wait_ping
from moorage.edge.package import load_or_create_private_key, public_key_pem

pytestmark = pytest.mark.e2e


def _invoke(port: int, row: list[float]) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=",".join(map(str, row)).encode(),
                                     headers={"Content-Type": "text/csv", "Accept": "text/csv"}, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200
        return response.read().decode().strip()


def _stored(home: Path, bucket: str, fleet: str, device: str) -> list[dict[str, Any]]:
    """Every capture record the server stored for the device (the object store's files)."""
    folder = home / "objects" / bucket / "synced" / fleet / device
    return [json.loads(line) for path in sorted(folder.rglob("*.jsonl")) for line in path.read_bytes().splitlines()]


def _device(server: MoorageServer, fleet: str, device: str) -> dict[str, Any]:
    status, _, body = server.signed_request("GET", f"/moorage/v1/edge/devices?DeviceFleetName={fleet}")
    assert status == 200, body
    return next(d for d in json.loads(body)["Devices"] if d["DeviceName"] == device)


def _publish(server: MoorageServer, fleet: str, data: bytes) -> None:
    import hashlib

    status, _, body = server.signed_request(
        "POST", f"/moorage/v1/edge/fleets/{fleet}/deployments", body=data,
        headers={"Content-Type": "application/gzip", "X-Amz-Content-SHA256": hashlib.sha256(data).hexdigest()})
    assert status == 200, body


def test_offline_sync_exactly_once_kill_9_and_package_updates(fresh_server: Callable[..., MoorageServer],
                                                              tmp_path: Path) -> None:
    server = fresh_server(home=tmp_path / "home", port=free_port())
    fleet, device, bucket = new_name("fleet"), "cam-1", new_name("edge-capture")
    server.client("s3").create_bucket(Bucket=bucket)
    sm = server.sm()
    sm.create_device_fleet(DeviceFleetName=fleet, OutputConfig={"S3OutputLocation": f"s3://{bucket}/synced"})
    sm.register_devices(DeviceFleetName=fleet, Devices=[{"DeviceName": device}])
    status, _, body = server.signed_request("POST", f"/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys")
    assert status == 200, body
    key = json.loads(body)
    credentials = tmp_path / "edge-credentials"
    credentials.write_text(f"[default]\naws_access_key_id = {key['AccessKeyId']}\n"
                           f"aws_secret_access_key = {key['SecretAccessKey']}\nregion = {REGION}\n")
    signing = load_or_create_private_key(server.home / "edge" / "signing-key.pem")
    trusted = tmp_path / "trusted.pem"
    trusted.write_bytes(public_key_pem(signing))
    first = tmp_path / "v1.tar.gz"
    first.write_bytes(package_bytes(signing, "1"))
    server.stop()

    port, log, paused = free_port(), tmp_path / "agent.log", tmp_path / "paused"
    options = ["--trust-key", str(trusted), "--spool", str(tmp_path / "spool"), "--server", server.url,
               "--fleet", fleet, "--device", device, "--credentials", str(credentials),
               "--segment-age", "0.3", "--heartbeat-interval", "0.3"]
    agent: subprocess.Popen[bytes] = start_agent(agent_command(first, port, *options), log)
    sent: list[str] = []
    try:
        # 1. The server is down: the agent serves and spools.
        wait_ping(port, agent, log)
        for i in range(40):
            row = [float(i), 0.5, -0.5, 1.0]
            _invoke(port, row)
            sent.append(",".join(map(str, row)))
        wait_for(lambda: len(list((tmp_path / "spool" / "capture" / "sealed").iterdir())) > 0, 30, "a sealed segment")
        # Tried, refused by a closed port, kept: the agent tries on its own schedule, so wait (bounded) for it.
        wait_for(lambda: "upload of" in log.read_text(), 30, "the agent to try an upload")
        assert "upload of" in log.read_text()

        # 2. The server is back: every record arrives, once.
        server.start(timeout=90)
        wait_for(lambda: len(_stored(server.home, bucket, fleet, device)) >= 40, 60, "the offline records stored")
        wait_for(lambda: _device(server, fleet, device).get("SpoolBacklogRecords") == 0, 30, "an empty backlog")

        # 3. kill -9 mid-upload, restart: the segment is sent again to the same key, nothing twice.
        stop_agent(agent)
        agent = start_agent(agent_command(first, port, *options, "--upload-pause-file", str(paused)), log)
        wait_ping(port, agent, log)
        for i in range(40, 70):
            row = [float(i), 0.5, -0.5, 1.0]
            _invoke(port, row)
            sent.append(",".join(map(str, row)))
        wait_for(paused.exists, 30, "the agent to pause mid-upload")
        os.kill(agent.pid, signal.SIGKILL)
        agent.wait(timeout=20)
        agent = start_agent(agent_command(first, port, *options), log)
        wait_ping(port, agent, log)
        wait_for(lambda: len(_stored(server.home, bucket, fleet, device)) >= 70, 60, "every record stored")
        wait_for(lambda: not list((tmp_path / "spool" / "capture" / "sealed").iterdir()), 30, "an empty spool")
        stored = _stored(server.home, bucket, fleet, device)
        assert sorted(r["captureData"]["endpointInput"]["data"] for r in stored) == sorted(sent)
        assert len({r["eventMetadata"]["eventId"] for r in stored}) == len(sent)

        # 4. A new version published to the fleet is pulled, self-tested and served.
        _publish(server, fleet, package_bytes(signing, "2", seed=1))
        wait_for(lambda: (_device(server, fleet, device).get("DeploymentResult") or {}).get("DeploymentStatus")
                 == "SUCCESS", 60, "the switch to version 2 reported")
        reported = _device(server, fleet, device)
        assert [m["ModelVersion"] for m in reported["Models"]] == ["2"]
        m1 = model(1)
        labels = [_invoke(port, row.tolist()) for row in m1.sample]
        assert labels == [str(v) for v in m1.outputs["label"].tolist()]

        # 5. A broken version (its self-test fails) is refused: reported FAIL, version 2 kept.
        _publish(server, fleet, package_bytes(signing, "3", broken=True))
        wait_for(lambda: (_device(server, fleet, device).get("DeploymentResult") or {}).get("DeploymentStatus")
                 == "FAIL", 60, "the broken version refused")
        result = _device(server, fleet, device)["DeploymentResult"]
        assert "self-test failed" in result["DeploymentStatusMessage"]
        assert [_invoke(port, row.tolist()) for row in m1.sample] == labels

        # 6. Restarted, the agent serves the last good package, not the one on its command line.
        stop_agent(agent)
        agent = start_agent(agent_command(first, port, *options), log)
        wait_ping(port, agent, log)
        assert [_invoke(port, row.tolist()) for row in m1.sample] == labels
        assert log.read_text().rsplit("moorage-edge: serving ", 1)[1].startswith("edge-demo-2 ")
    finally:
        stop_agent(agent)


def test_the_agent_refuses_a_package_it_cannot_trust(tmp_path: Path) -> None:
    from moorage.edge.package import generate_key

    data = tmp_path / "v1.tar.gz"
    data.write_bytes(package_bytes(generate_key(), "1"))
    other = tmp_path / "other.pem"
    other.write_bytes(public_key_pem(generate_key()))
    port, log = free_port(), tmp_path / "agent.log"
    agent = start_agent(agent_command(data, port, "--trust-key", str(other)), log)
    try:
        assert agent.wait(timeout=60) == 2
    finally:
        stop_agent(agent)
    assert "not trusted" in log.read_text()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
