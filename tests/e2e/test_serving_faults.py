"""Serving faults through boto3 on a real server: a request past the invocation timeout is answered as
SageMaker answers it and does not starve the ones after it; a model archive that expands past its cap
fails its endpoint with the reason."""

from __future__ import annotations

import io
import tarfile
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
    invoke,
    new_name,
    pack_model,
    variant,
)

pytestmark = pytest.mark.e2e

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
