"""The Ray backend: a transform job on a local Ray cluster (started here, 2 CPUs, loopback) writes the
same output objects as the local backend, joins and filters included."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batch_support import create_model, csv_rows, free_port, run_job
from e2e_support import HOST, MoorageServer, new_name, pack_model, train_classifier

pytestmark = pytest.mark.e2e

ray = pytest.importorskip("ray", reason="the Ray backend needs moorage[ray]")


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """`ray start --head --block` on 127.0.0.1; terminating that process stops the cluster it started."""
    exe = Path(sys.executable).parent / "ray"
    port = free_port()
    temp = Path(tempfile.mkdtemp(prefix="mray-"))  # short: Ray's socket paths live under it
    log = open(temp / "ray-start.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [str(exe), "start", "--head", "--block", f"--port={port}", f"--node-ip-address={HOST}", "--num-cpus=2",
         "--include-dashboard=false", "--disable-usage-stats", "--object-store-memory=150000000",
         f"--temp-dir={temp}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    address = f"{HOST}:{port}"
    try:
        deadline = time.monotonic() + 90
        while "Ray runtime started" not in (temp / "ray-start.log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start failed:\n{(temp / 'ray-start.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield address
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    srv = MoorageServer(tmp_path_factory.mktemp("ray-home"))
    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # the driver joins the cluster above, which runs without tokens
    try:
        srv.start(timeout=90)
    finally:
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old
    try:
        yield srv
    finally:
        srv.stop()


def outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ray_backend_writes_the_same_outputs_as_the_local_backend(ray_cluster: str, server: MoorageServer,
                                                                  tmp_path: Path) -> None:
    model, X = train_classifier()
    sm = server.sm()
    name = create_model(sm, new_name("br-model"), pack_model(tmp_path / "m", model))
    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    (root / "a.csv").write_text("".join(f"id{i},{r}\n" for i, r in enumerate(csv_rows(X[:150]))))
    (root / "sub" / "b.csv").write_text("".join(f"id{i},{r}\n" for i, r in enumerate(csv_rows(X[150:160]))))
    jobs: list[dict[str, Any]] = [
        # plain MultiRecord: byte-chunked mini-batches, several per object
        {"MaxPayloadInMB": 1, "DataProcessing": {"InputFilter": "$[1:]"},
         "output": {"Accept": "text/csv", "AssembleWith": "Line"}},
        # records filtered and joined, one per request
        {"strategy": "SingleRecord", "output": {"Accept": "text/csv", "AssembleWith": "Line"},
         "DataProcessing": {"InputFilter": "$[1:]", "JoinSource": "Input", "OutputFilter": "$[0,-1]"}},
    ]
    for index, extra in enumerate(jobs):
        results = {}
        for backend in ("local", "ray"):
            out = tmp_path / f"out-{index}-{backend}"
            tags = [{"Key": "moorage:backend", "Value": backend}]
            if backend == "ray":
                tags.append({"Key": "moorage:ray-address", "Value": ray_cluster})
            desc = run_job(sm, name=new_name(f"br-{backend}"), model=name, input_uri=str(root), output_path=str(out),
                           instances=2, Tags=tags, **extra)
            assert desc["TransformJobStatus"] == "Completed", (backend, desc.get("FailureReason"))
            results[backend] = outputs(out)
        assert sorted(results["ray"]) == ["a.csv.out", "sub/b.csv.out"]
        assert results["ray"] == results["local"]
    predictions = model.predict(X[:150]).tolist()
    assert results["ray"]["a.csv.out"].decode() == "".join(f"id{i},{p}\n" for i, p in enumerate(predictions))


def test_ray_backend_reports_failures_like_the_local_backend(ray_cluster: str, server: MoorageServer,
                                                             tmp_path: Path) -> None:
    model, X = train_classifier()
    sm = server.sm()
    name = create_model(sm, new_name("br-model"), pack_model(tmp_path / "m", model))
    root = tmp_path / "in"
    root.mkdir()
    rows = csv_rows(X[:5])
    rows[3] = "x,y,z,w"
    (root / "bad.csv").write_text("\n".join(rows) + "\n")
    reasons = {}
    for backend in ("local", "ray"):
        tags = [{"Key": "moorage:backend", "Value": backend}, {"Key": "moorage:ray-address", "Value": ray_cluster}]
        desc = run_job(sm, name=new_name(f"brf-{backend}"), model=name, input_uri=str(root),
                       output_path=str(tmp_path / f"out-{backend}"), strategy="SingleRecord", Tags=tags)
        assert desc["TransformJobStatus"] == "Failed"
        reasons[backend] = desc["FailureReason"]
    assert "bad.csv: record 4 failed (tried 2 times)" in reasons["ray"]
    assert reasons["ray"].split(": the model")[0] == reasons["local"].split(": the model")[0]
