"""The in-process Agent: serving, capture, and sync with a real HTTP door (a thread on 127.0.0.1 that
checks every signature with botocore's signer), offline first, then online."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from e2e_support import free_port
from edge_support import ACCESS_KEY, SECRET_KEY, DoorServer, model, package_bytes, wait_for, write_key
from moorage.edge import Agent
from moorage.edge import package as edge_package
from moorage.edge.agent import AgentError

ROW = [[0.5, -1.0, 2.0, 0.25]]


@pytest.fixture(autouse=True)
def device_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("MOORAGE_SECRET_ACCESS_KEY", SECRET_KEY)


@pytest.fixture(scope="module")
def key() -> object:
    return edge_package.generate_key()


@pytest.fixture
def pkg(tmp_path: Path, key: object) -> tuple[Path, Path]:
    path = tmp_path / "v1.tar.gz"
    path.write_bytes(package_bytes(key, "1"))
    return path, write_key(key, tmp_path / "trusted.pem")


@pytest.fixture
def door() -> Iterator[DoorServer]:
    server = DoorServer(free_port())
    yield server
    server.stop()


def test_predicts_in_process_and_answers_the_container_contract(pkg: tuple[Path, Path], tmp_path: Path) -> None:
    path, trusted = pkg
    with Agent(path, spool=tmp_path / "spool", trust_keys=[trusted]) as agent:
        m = model()
        got = agent.predict(m.sample)
        assert np.array_equal(got, m.outputs["label"])
        assert agent.predict(ROW).shape == (1,)
        status, body, content_type = agent.invoke(b"0.5,-1,2,0.25\n1,1,1,1", "text/csv", "application/json")
        assert (status, content_type) == (200, "application/json") and len(json.loads(body)) == 2
        status, body, content_type = agent.invoke(b'{"instances": [[1, 2, 3, 4]]}', "application/json", "text/csv")
        assert (status, content_type) == (200, "text/csv") and body in (b"0\n", b"1\n")
        assert agent.invoke(b"1,2", "text/csv", None)[0] == 400  # wrong width: the graph refuses it
        assert agent.invoke(b"1,2,3,4", "text/plain", None)[0] == 415
        assert agent.invoke(b"1,2,3,4", "text/csv", "image/png")[0] == 406
        assert agent.spool is not None and agent.spool.stats().backlog_records == 4


def test_refuses_a_tampered_or_untrusted_package(pkg: tuple[Path, Path], tmp_path: Path) -> None:
    path, trusted = pkg
    data = bytearray(path.read_bytes())
    data[-30] ^= 0xFF
    tampered = tmp_path / "tampered.tar.gz"
    tampered.write_bytes(bytes(data))
    with pytest.raises(AgentError, match="refused"):
        Agent(tampered, trust_keys=[trusted])
    other = write_key(edge_package.generate_key(), tmp_path / "other.pem")
    with pytest.raises(AgentError, match="not trusted"):
        Agent(path, trust_keys=[other])
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(package_bytes(edge_package.load_private_key(edge_package.private_key_pem(
        edge_package.generate_key())), "9", broken=True))
    with pytest.raises(AgentError):
        Agent(broken, trust_keys=[trusted])


def test_offline_it_serves_and_spools_then_every_record_arrives_once(pkg: tuple[Path, Path], tmp_path: Path,
                                                                       door: DoorServer) -> None:
    path, trusted = pkg
    agent = Agent(path, spool=tmp_path / "spool", server=door.url, fleet="fleet-1", device="dev-1",
                  trust_keys=[trusted], heartbeat_interval_s=0.1, segment_bytes=4096, segment_age_s=0.2,
                  timeout_s=5)
    try:
        for i in range(300):
            agent.predict([[i, 1.0, -1.0, 0.5]])
        assert agent.spool is not None
        wait_for(lambda: agent.spool.stats().sealed_segments > 2 and agent.errors >= 2, 30,
                 "uploads and heartbeats to fail while the server is away")
        assert agent.spool.stats().backlog_records == 300 and door.state.segments == {}
        door.start()
        wait_for(lambda: agent.spool.stats().backlog_records == 0, 60, "the backlog to drain")
        wait_for(lambda: door.state.heartbeats, 30, "a heartbeat")
    finally:
        agent.close()
    records = door.records()
    assert sorted(r["captureData"]["endpointInput"]["data"].split(",")[0] for r in records) == sorted(
        str(float(i)) for i in range(300))
    assert len({r["eventMetadata"]["eventId"] for r in records}) == 300
    assert all(r.signed for r in door.state.requests)
    names = door.state.puts
    assert names == sorted(names) and all(n.startswith("dev-1-") for n in names)  # oldest first
    beat = door.state.heartbeats[-1]
    assert beat["DeviceName"] == "dev-1" and beat["DeviceFleetName"] == "fleet-1"
    metrics = {m["MetricName"]: m["Value"] for m in beat["AgentMetrics"]}
    assert {"SpoolBacklogRecords", "SpoolBacklogBytes", "SpoolDroppedRecords", "LastSyncTime", "Errors"} <= set(metrics)
    assert metrics["Errors"] >= 2 and metrics["SpoolDroppedRecords"] == 0
    assert beat["Models"][0]["ModelName"] == "edge-demo" and beat["Models"][0]["ModelVersion"] == "1"


def test_a_segment_refused_for_good_is_set_aside_and_the_rest_still_go(pkg: tuple[Path, Path], tmp_path: Path,
                                                                        door: DoorServer) -> None:
    path, trusted = pkg
    door.state.refuse.add("dev-1-000000000001")
    door.start()
    agent = Agent(path, spool=tmp_path / "spool", server=door.url, fleet="fleet-1", device="dev-1",
                  trust_keys=[trusted], heartbeat_interval_s=0.1, segment_bytes=2048, segment_age_s=0.2, timeout_s=5)
    try:
        for i in range(40):
            agent.predict([[i, 1.0, -1.0, 0.5]])
        assert agent.spool is not None
        wait_for(lambda: agent.spool.stats().backlog_records == 0, 30, "the backlog to drain")
        stats = agent.spool.stats()
    finally:
        agent.close()
    rejected = list((tmp_path / "spool" / "capture" / "rejected").iterdir())
    assert [p.name for p in rejected] == ["dev-1-000000000001.jsonl"]
    kept = len(rejected[0].read_bytes().splitlines())
    assert stats.rejected_records == kept and len(door.records()) + kept == 40


def test_pulls_a_new_package_rolls_back_a_broken_one_and_restarts_on_the_last_good(
        pkg: tuple[Path, Path], tmp_path: Path, door: DoorServer, key: object) -> None:
    path, trusted = pkg
    door.start()
    options = dict(spool=tmp_path / "spool", server=door.url, fleet="fleet-1", device="dev-1", trust_keys=[trusted],
                   heartbeat_interval_s=0.1, timeout_s=5)
    agent = Agent(path, **options)  # type: ignore[arg-type]
    try:
        assert agent.model.version == "1"
        v2 = package_bytes(key, "2", seed=1)
        sha2 = door.publish(v2, "edge-demo-2", "deploy-2")
        wait_for(lambda: agent.model.version == "2", 30, "the switch to version 2")
        wait_for(lambda: any(r["DeploymentStatus"] == "SUCCESS" for r in door.results()), 30, "SUCCESS reported")
        assert (tmp_path / "spool" / "packages" / f"{sha2}.tar.gz").exists()
        assert np.array_equal(agent.predict(model(1).sample), model(1).outputs["label"])

        door.publish(package_bytes(key, "3", broken=True), "edge-demo-3", "deploy-3")
        wait_for(lambda: any(r["DeploymentStatus"] == "FAIL" for r in door.results()), 30, "FAIL reported")
        failed = next(r for r in door.results() if r["DeploymentStatus"] == "FAIL")
        assert "self-test failed" in failed["DeploymentStatusMessage"]
        assert failed["DeploymentModels"][0]["ModelHandle"] == "edge-demo-3"
        assert agent.model.version == "2"

        untrusted = package_bytes(edge_package.generate_key(), "4")
        door.publish(untrusted, "edge-demo-4", "deploy-4")
        wait_for(lambda: "not trusted" in (agent.last_outcome.message if agent.last_outcome else ""), 30,
                 "an untrusted package refused")
        data = package_bytes(key, "5")
        door.publish(data, "edge-demo-5", "deploy-5")
        with door.lock:  # the server hands out other bytes than GetDeployments' checksum names
            door.state.packages["edge-demo-5"] = package_bytes(key, "6")
        wait_for(lambda: "checksum mismatch" in (agent.last_outcome.message if agent.last_outcome else ""), 30,
                 "a checksum mismatch refused")
        assert agent.model.version == "2"
    finally:
        agent.close()
    door.stop()
    again = Agent(path, **{**options, "server": None, "fleet": None, "device": None})  # type: ignore[arg-type]
    try:
        assert again.model.version == "2"  # the last good package, not the one on the command line
    finally:
        again.close()
    newer = tmp_path / "v7.tar.gz"
    newer.write_bytes(package_bytes(key, "7"))
    given = Agent(newer, spool=tmp_path / "spool", trust_keys=[trusted])
    try:
        assert given.model.version == "7"  # a different package given on the command line wins
    finally:
        given.close()


def test_the_options_are_checked(pkg: tuple[Path, Path], tmp_path: Path) -> None:
    path, trusted = pkg
    with pytest.raises(AgentError, match="spool directory"):
        Agent(path, server="http://127.0.0.1:1", fleet="f", device="d", trust_keys=[trusted])
    with pytest.raises(AgentError, match="--fleet and --device"):
        Agent(path, spool=tmp_path, server="http://127.0.0.1:1", trust_keys=[trusted])
    with pytest.raises(AgentError, match="no trusted key"):
        Agent(path)
