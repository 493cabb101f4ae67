"""Serving faults through boto3 on a real server: a request past the invocation timeout is answered as
SageMaker answers it and does not starve the ones after it; a model archive that expands past its cap
fails its endpoint with the reason."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    Deployer,
    MoorageServer,
    err_code,
    err_field,
    err_message,
    err_status,
    file_url,
    http_request,
    invoke,
    new_name,
    pack_model,
    pid_alive,
    variant,
    wait_pids_gone,
    wait_until,
)

pytestmark = pytest.mark.e2e

CUSTOM_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-own-server:latest"

GATED = '''
import os
import time


def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    if text.startswith("slow"):
        gate = os.environ["GATE_DIR"]
        open(os.path.join(gate, "started"), "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(gate, "release")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "slow-done", "text/csv"
    return "fast", "text/csv"
'''


def test_timed_out_work_is_isolated_and_a_bomb_is_refused(fresh_server: Callable[..., MoorageServer],
                                                          tmp_path: Path) -> None:
    server = fresh_server(env={"MOORAGE_INVOCATION_TIMEOUT": "3s", "MOORAGE_MAX_ARCHIVE_BYTES": "8M"})
    deployer = Deployer(server)
    gate = tmp_path / "gate"
    gate.mkdir()
    try:
        archive = pack_model(tmp_path / "gated", None, inference_py=GATED)
        endpoint = deployer.deploy("faults", file_url(archive), env={"GATE_DIR": str(gate)})
        rt = server.rt()
        assert invoke(rt, endpoint, b"1,2")["Body"] == b"fast"

        with pytest.raises(ClientError) as caught:
            invoke(rt, endpoint, b"slow")
        assert (gate / "started").exists()
        assert err_code(caught.value) == "ModelError" and err_status(caught.value) == 424
        assert "Your invocation timed out while waiting for a response from container AllTraffic" in \
            err_message(caught.value)
        assert err_field(caught.value, "OriginalStatusCode") == 504
        # The slow work still runs (the gate is closed): the requests after it are served all the same.
        for _ in range(5):
            assert invoke(rt, endpoint, b"1,2")["Body"] == b"fast"
        assert not (gate / "release").exists()
        assert "recycling instance" in server.log_tail(400)
        # ...and counted, by cause, in the server's Prometheus exposition.
        line = f'moorage_instance_replacements_total{{cause="timeout",endpoint="{endpoint}",variant="AllTraffic"}} 1.0'
        assert line in http_request("GET", server.url + "/metrics")[2].decode()

        # A 16 MB expansion from a few KiB, past the server's 8 MB cap: the endpoint fails with the reason.
        bomb = tmp_path / "bomb.tar.gz"
        with tarfile.open(bomb, "w:gz") as tar:
            info = tarfile.TarInfo("zeros.bin")
            info.size = 16 << 20
            tar.addfile(info, io.BytesIO(bytes(info.size)))
        name = new_name("bomb")
        deployer.model(name, file_url(bomb))
        deployer.config(name, [variant("AllTraffic", name)])
        deployer.endpoint(name, name)
        failed = deployer.wait_status(name, {"Failed", "InService"}, timeout=90)
        assert failed["EndpointStatus"] == "Failed"
        assert "expands beyond 8388608 bytes" in failed["FailureReason"]
    finally:
        (gate / "release").touch()
        deployer.cleanup()


def test_a_server_killed_with_sigkill_leaves_nothing_behind_at_the_next_start(
        fresh_server: Callable[..., MoorageServer], tmp_path: Path) -> None:
    """A BYO server's helper (a child in its process group) outlives a server killed -9; the next server
    on the home kills it and removes the dead server's socket folder."""
    example = Path(__file__).resolve().parents[2] / "examples" / "byo_server" / "model"
    root = tmp_path / "byo" / "model"
    root.mkdir(parents=True)
    (root / "server.py").write_text((example / "serve").read_text())
    (root / "model.json").write_text((example / "model.json").read_text())
    helper_pid = tmp_path / "helper.pid"
    serve = root / "serve"
    serve.write_text(f'#!/bin/sh\nsleep 600 &\necho $! > "{helper_pid}"\nexec "{sys.executable}" server.py\n')
    serve.chmod(0o755)
    archive = tmp_path / "byo" / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for child in sorted(root.iterdir()):
            tar.add(child, arcname=child.name)

    # Socket folders of dead servers are reaped by whichever server starts next on the machine: this
    # server's live in a temporary folder of its own, so that the one reaping them is its successor
    # here, not a server another test starts meanwhile.
    private_tmp = Path(tempfile.mkdtemp(prefix="mrg", dir="/tmp"))  # short: socket paths live under it
    server = fresh_server(env={"TMPDIR": str(private_tmp)})
    Deployer(server).deploy("byokill", file_url(archive), image=CUSTOM_IMAGE)
    helper = int(wait_until(lambda: helper_pid.exists() and helper_pid.read_text().strip(), 30, what="the helper"))
    assert server.proc is not None
    marks = [m for m in private_tmp.glob("moorage-*/server.pid")
             if m.read_text().split()[0] == str(server.proc.pid)]
    assert len(marks) == 1, marks
    folder = marks[0].parent
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    server.stop()
    try:
        assert pid_alive(helper) and folder.is_dir()  # what nobody could clean up
        server.start(timeout=90)
        assert wait_pids_gone([helper], 30) == [], "the dead server's BYO helper is still running"
        assert not folder.exists()
        assert "leftover process(es) of instance" in server.log_tail(200)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(helper, signal.SIGKILL)
        server.stop()
        shutil.rmtree(private_tmp, ignore_errors=True)


def test_the_extraction_cache_keeps_only_what_models_use_across_a_restart(
        fresh_server: Callable[..., MoorageServer], tmp_path: Path) -> None:
    server = fresh_server()
    deployer = Deployer(server)
    archive = pack_model(tmp_path / "kept", None, inference_py=GATED)
    endpoint = deployer.deploy("cachekeep", file_url(archive), env={"GATE_DIR": str(tmp_path)})
    cache = server.home / "models"
    used = [p for p in cache.iterdir() if p.is_dir() and len(p.name) == 20]
    assert len(used) == 1
    server.stop()
    unused, half_done = cache / "0123456789abcdef0123", cache / ".extract-crashed"
    for folder in (unused, half_done):
        (folder / "code").mkdir(parents=True)
        (folder / "code" / "inference.py").write_text("")
    old = time.time() - 60  # made before the next start
    for folder in (unused, half_done):
        os.utime(folder, (old, old))

    server.start(timeout=90)
    wait_until(lambda: not unused.exists() and not half_done.exists(), 30, what="the unused extractions to go")
    assert used[0].is_dir()
    deployer.wait_in_service(endpoint)
    assert invoke(server.rt(), endpoint, b"1,2")["Body"] == b"fast"
    deployer.cleanup()
