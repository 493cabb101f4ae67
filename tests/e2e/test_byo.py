"""Bring-your-own model servers, deployed through boto3 against a real `moorage serve`.

The server under test is examples/byo_server (standard library only). It runs as image `byo`, as an
image moorage does not know whose model data has an executable `serve`, and through
MOORAGE_SERVE_COMMAND; servers that crash or never get ready must leave a Failed endpoint whose
FailureReason quotes their output, and never hang the platform.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    ECHO_ENV_SERVER,
    ROLE_ARN,
    Deployer,
    err_code,
    err_message,
    file_url,
    invoke,
    new_name,
    pid_alive,
    tar_dir,
    variant,
    wait_until,
)

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byo_server" / "model"
CUSTOM_IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/my-own-server:latest"
X = np.array([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0], [-1.5, 0.25, 8.0, 2.0]])



def expected_scores(weights_file: Path, rows: np.ndarray) -> np.ndarray:
    doc = json.loads(weights_file.read_text())
    return rows @ np.asarray(doc["weights"], dtype=float) + float(doc.get("bias", 0.0))


def csv(rows: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()


def scores(rt: Any, endpoint: str, rows: np.ndarray, content_type: str = "text/csv") -> np.ndarray:
    body = csv(rows) if content_type == "text/csv" else json.dumps({"instances": rows.tolist()}).encode()
    resp = invoke(rt, endpoint, body, content_type, Accept="application/json")
    assert resp["ContentType"] == "application/json", resp
    return np.asarray(json.loads(resp["Body"]), dtype=float)


def make_model_dir(root: Path, files: dict[str, str], executable: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text)
    for name in executable:
        (root / name).chmod(0o755)
    return root


@pytest.fixture(scope="module")
def example_tar(artifacts: Path) -> Path:
    """The example's model folder (serve + model.json) as a SageMaker model.tar.gz."""
    work = artifacts / "byo-example"
    shutil.copytree(EXAMPLE, work / "model")
    assert os.access(work / "model" / "serve", os.X_OK)
    return tar_dir(work / "model", work / "model.tar.gz")


def deploy(deployer: Deployer, prefix: str, data: Path, *, image: str = "byo", env: dict[str, str] | None = None,
           wait: bool = True, count: int = 1) -> str:
    return deployer.deploy(prefix, file_url(data), image=image, env=env, wait=wait, count=count)


# --------------------------------------------------------------------------------------------------
# serving
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("image", ["byo", CUSTOM_IMAGE])
def test_example_server_serves_predictions(deployer: Deployer, rt: Any, example_tar: Path, image: str) -> None:
    name = deploy(deployer, "byo-ex", example_tar, image=image, count=2)
    expected = expected_scores(EXAMPLE / "model.json", X)
    for content_type in ("text/csv", "application/json"):
        np.testing.assert_allclose(scores(rt, name, X, content_type), expected, rtol=1e-12)
    resp = invoke(rt, name, csv(X[:1]), "text/csv", Accept="text/csv")
    assert resp["ContentType"] == "text/csv"
    np.testing.assert_allclose(float(resp["Body"]), expected[0], rtol=1e-12)
    desc = deployer.sm.describe_endpoint(EndpointName=name)
    assert desc["ProductionVariants"][0]["CurrentInstanceCount"] == 2
    instances = deployer.server.instances(name)
    assert len(instances) == 2 and all(i["State"] == "InService" for i in instances)


def test_server_errors_come_back_as_model_errors(deployer: Deployer, rt: Any, example_tar: Path) -> None:
    name = deploy(deployer, "byo-err", example_tar)
    with pytest.raises(ClientError) as info:
        invoke(rt, name, b"1,2,3", "text/csv")
    assert err_code(info.value) == "ModelError"
    assert "expected 4 features" in err_message(info.value)
    # The instance is still fine afterwards.
    np.testing.assert_allclose(scores(rt, name, X), expected_scores(EXAMPLE / "model.json", X), rtol=1e-12)


def test_serve_command_from_the_environment(deployer: Deployer, rt: Any, artifacts: Path) -> None:
    """No `serve` file at all: MOORAGE_SERVE_COMMAND names the program and its arguments."""
    root = make_model_dir(artifacts / "byo-cmd" / "model", {
        "server.py": (EXAMPLE / "serve").read_text(),
        "other weights.json": json.dumps({"weights": [1.0, 2.0, 3.0, 4.0], "bias": -2.0}),
    })
    tar = tar_dir(root, root.parent / "model.tar.gz")
    command = shlex.join([sys.executable, "server.py", "--model", "other weights.json"])
    name = deploy(deployer, "byo-cmd", tar, image="sklearn", env={"MOORAGE_SERVE_COMMAND": command})
    np.testing.assert_allclose(scores(rt, name, X), expected_scores(root / "other weights.json", X), rtol=1e-12)
    desc = deployer.sm.describe_endpoint(EndpointName=name)
    assert desc["ProductionVariants"][0]["DeployedImages"][0]["ResolvedImage"] == "moorage/byo"


def test_the_server_gets_the_container_contract_environment(deployer: Deployer, rt: Any, artifacts: Path) -> None:
    root = make_model_dir(artifacts / "byo-env" / "model", {"serve": f"#!{sys.executable}\n{ECHO_ENV_SERVER}"},
                          executable=("serve",))
    tar = tar_dir(root, root.parent / "model.tar.gz")
    name = deploy(deployer, "byo-env", tar, env={"MY_SETTING": "forty two", "SAGEMAKER_PROGRAM": "ignored.py"})
    doc = json.loads(invoke(rt, name, b"{}", "application/json")["Body"])
    env = doc["env"]
    port = int(env["SAGEMAKER_BIND_TO_PORT"])
    lo, hi = (int(p) for p in env["SAGEMAKER_SAFE_PORT_RANGE"].split("-"))
    assert port > 1024 and lo <= hi and not lo <= port <= hi, env
    assert env["MY_SETTING"] == "forty two"
    model_dir = Path(env["SM_MODEL_DIR"])
    assert Path(doc["cwd"]).resolve() == model_dir.resolve()
    assert (model_dir / "serve").is_file()
    assert "MOORAGE_SECRET_ACCESS_KEY" not in env  # the server's admin key never reaches model code
    instances = deployer.server.instances(name)
    assert [i["Pid"] for i in instances] == [doc["pid"]]


def test_a_crashed_server_is_replaced(deployer: Deployer, rt: Any, example_tar: Path) -> None:
    name = deploy(deployer, "byo-crash", example_tar)
    expected = expected_scores(EXAMPLE / "model.json", X)
    [before] = deployer.server.instances(name)
    os.kill(before["Pid"], signal.SIGKILL)
    wait_until(lambda: not pid_alive(before["Pid"]), 10, what="the killed server to be gone")

    def replaced() -> bool:
        now = deployer.server.instances(name)
        return len(now) == 1 and now[0]["InstanceId"] != before["InstanceId"] and now[0]["State"] == "InService"

    wait_until(replaced, 30, what="a replacement instance")
    np.testing.assert_allclose(scores(rt, name, X), expected, rtol=1e-12)


# --------------------------------------------------------------------------------------------------
# failures
# --------------------------------------------------------------------------------------------------
def failed(deployer: Deployer, name: str, timeout: float = 60) -> str:
    desc = deployer.wait_status(name, {"Failed", "InService"}, timeout=timeout)
    assert desc["EndpointStatus"] == "Failed", desc
    return desc.get("FailureReason", "")


def test_a_server_that_exits_at_once_fails_the_endpoint_with_its_last_line(deployer: Deployer,
                                                                          artifacts: Path) -> None:
    root = make_model_dir(artifacts / "byo-exit" / "model", {
        "serve": "#!/bin/sh\necho 'loading weights'\necho 'fatal: weights.bin is missing' >&2\nexit 3\n",
    }, executable=("serve",))
    tar = tar_dir(root, root.parent / "model.tar.gz")
    started = time.monotonic()
    name = deploy(deployer, "byo-exit", tar, wait=False)
    reason = failed(deployer, name)
    assert time.monotonic() - started < 30
    assert "fatal: weights.bin is missing" in reason, reason
    assert "exited with code 3" in reason, reason
    assert len(reason) <= 1024


@pytest.mark.parametrize("behaviour", ["never listens", "answers 503"])
def test_a_server_that_never_answers_ping_fails_at_the_startup_timeout(deployer: Deployer, artifacts: Path,
                                                                      behaviour: str) -> None:
    if behaviour == "never listens":
        script = "#!/bin/sh\necho 'warming up: this takes forever'\nexec sleep 600\n"
    else:
        script = (f"#!{sys.executable}\nimport os\nfrom http.server import BaseHTTPRequestHandler, HTTPServer\n"
                  "class H(BaseHTTPRequestHandler):\n"
                  "    def do_GET(self):\n        self.send_error(503)\n"
                  "    def log_message(self, *args):\n        pass\n"
                  "print('warming up: this takes forever', flush=True)\n"
                  "HTTPServer(('127.0.0.1', int(os.environ['SAGEMAKER_BIND_TO_PORT'])), H).serve_forever()\n")
    root = make_model_dir(artifacts / f"byo-noping-{behaviour[:5]}" / "model", {"serve": script},
                          executable=("serve",))
    tar = tar_dir(root, root.parent / "model.tar.gz")
    started = time.monotonic()
    name = deploy(deployer, "byo-noping", tar, wait=False, env={"MOORAGE_STARTUP_TIMEOUT": "3"})
    reason = failed(deployer, name, timeout=45)
    assert time.monotonic() - started < 40
    assert "did not pass its /ping health check within 3 s" in reason, reason
    assert "warming up: this takes forever" in reason, reason
    # The server was killed: the pid the instance log names is gone.
    [log] = (deployer.server.home / "logs" / name / "AllTraffic").glob("*.log")
    text = log.read_text()
    assert "warming up" in text
    pid = int(re.search(r"started pid (\d+)", text).group(1))  # type: ignore[union-attr]
    wait_until(lambda: not pid_alive(pid), 10, what=f"pid {pid} to be gone")


# --------------------------------------------------------------------------------------------------
# CreateModel validation
# --------------------------------------------------------------------------------------------------
def create_model_error(sm: Any, container: dict[str, Any]) -> str:
    name = new_name("byo-bad")
    with pytest.raises(ClientError) as info:
        sm.create_model(ModelName=name, PrimaryContainer=container, ExecutionRoleArn=ROLE_ARN)
    assert err_code(info.value) == "ValidationException", info.value.response
    with pytest.raises(ClientError):
        sm.describe_model(ModelName=name)
    return err_message(info.value)


def test_an_unknown_image_without_a_server_is_rejected(sm: Any, artifacts: Path) -> None:
    root = make_model_dir(artifacts / "byo-none" / "model", {"model.json": "{}"})
    tar = tar_dir(root, root.parent / "model.tar.gz")
    message = create_model_error(sm, {"Image": CUSTOM_IMAGE, "ModelDataUrl": file_url(tar)})
    assert CUSTOM_IMAGE in message and "sklearn" in message, message
    assert "serve" in message and "MOORAGE_SERVE_COMMAND" in message, message
    message = create_model_error(sm, {"Image": "byo", "ModelDataUrl": file_url(tar)})
    assert "has no `serve` file" in message, message
    message = create_model_error(sm, {"Image": CUSTOM_IMAGE})
    assert "ModelDataUrl" in message, message


def test_a_serve_file_that_is_not_executable_is_named(sm: Any, artifacts: Path) -> None:
    root = make_model_dir(artifacts / "byo-noexec" / "model", {"serve": "#!/bin/sh\nexit 0\n"})
    (root / "serve").chmod(0o644)
    tar = tar_dir(root, root.parent / "model.tar.gz")
    message = create_model_error(sm, {"Image": "byo", "ModelDataUrl": file_url(tar)})
    assert "not executable" in message, message


@pytest.mark.parametrize("env", [{"MOORAGE_SERVE_COMMAND": "python 'unbalanced"}, {"MOORAGE_SERVE_COMMAND": "  "},
                                 {"MOORAGE_SERVE_COMMAND": "python x.py", "MOORAGE_STARTUP_TIMEOUT": "soon"}])
def test_bad_byo_environment_is_rejected(sm: Any, example_tar: Path, env: dict[str, str]) -> None:
    message = create_model_error(sm, {"Image": "byo", "ModelDataUrl": file_url(example_tar), "Environment": env})
    assert "MOORAGE_" in message, message


def test_byo_variants_mix_with_builtin_ones(deployer: Deployer, rt: Any, example_tar: Path, artifacts: Path,
                                           classifier: tuple[Any, Any]) -> None:
    """One endpoint, a built-in sklearn variant and a BYO variant: TargetVariant reaches each."""
    from e2e_support import pack_model, predict

    model, Xc = classifier
    sk = deployer.model(new_name("byo-mix-sk"), file_url(pack_model(artifacts / "byo-mix-sk", model)))
    byo = deployer.model(new_name("byo-mix-byo"), file_url(example_tar), image="byo")
    name = new_name("byo-mix")
    deployer.config(name, [variant("sk", sk), variant("own", byo)])
    deployer.endpoint(name, name)
    deployer.wait_in_service(name)
    np.testing.assert_array_equal(predict(rt, name, Xc[:5], TargetVariant="sk"), model.predict(Xc[:5]))
    resp = invoke(rt, name, csv(X), "text/csv", Accept="application/json", TargetVariant="own")
    np.testing.assert_allclose(np.asarray(json.loads(resp["Body"])), expected_scores(EXAMPLE / "model.json", X),
                               rtol=1e-12)
