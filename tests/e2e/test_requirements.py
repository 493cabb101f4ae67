"""Code dependencies: a requirements.txt beside inference.py is installed into a cached per-model environment.

No network: the requirements file names a local package directory (``./localpkg``) whose build
backend is in-tree and needs nothing installed, so pip builds and installs it offline. Each test
writes a requirements file with a unique comment, so its environment is its own on the shared server.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e_support import Deployer, MoorageServer, file_url, invoke, tar_dir

pytestmark = pytest.mark.e2e

PACKAGE = "moorage_test_localpkg"

INFERENCE_PY = f"""\
import numpy as np
import {PACKAGE}


def model_fn(model_dir):
    return {PACKAGE}.SCALE


def predict_fn(data, model):
    return (np.asarray(data, dtype=float).sum(axis=1) * model).tolist()
"""

PYPROJECT = f"""\
[build-system]
requires = []
build-backend = "backend"
backend-path = ["."]

[project]
name = "{PACKAGE.replace('_', '-')}"
version = "0.1"
"""

# A PEP 517 backend with no build requirements: pip needs no index to build this package.
BACKEND = f"""\
import base64, hashlib, os, zipfile

NAME, VERSION = "{PACKAGE}", "0.1"


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "src", NAME, "__init__.py")) as fh:
        source = fh.read()
    info = f"{{NAME}}-{{VERSION}}.dist-info"
    files = {{
        f"{{NAME}}/__init__.py": source,
        f"{{info}}/METADATA": f"Metadata-Version: 2.1\\nName: {{NAME}}\\nVersion: {{VERSION}}\\n",
        f"{{info}}/WHEEL": "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
    }}
    wheel = f"{{NAME}}-{{VERSION}}-py3-none-any.whl"
    record = []
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as zf:
        for path, text in files.items():
            data = text.encode()
            zf.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{{path}},sha256={{digest}},{{len(data)}}")
        zf.writestr(f"{{info}}/RECORD", "\\n".join(record + [f"{{info}}/RECORD,,"]) + "\\n")
    return wheel
"""

X = np.array([[1.0, 2.0, 3.0], [0.5, 0.5, 0.0]])
# Never ask an index: the tests must pass offline (pip reads PIP_* from the container Environment).
OFFLINE = {"PIP_NO_INDEX": "1"}


def requirements_text(extra: str = "./localpkg") -> str:
    return f"# test {uuid.uuid4().hex}\n{extra}\n"


def model_with_requirements(root: Path, requirements: str, scale: int = 3) -> Path:
    """model.tar.gz: code/inference.py, code/requirements.txt and code/localpkg/ (SCALE = scale)."""
    code = root / "model" / "code"
    pkg = code / "localpkg"
    (pkg / "src" / PACKAGE).mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(PYPROJECT)
    (pkg / "backend.py").write_text(BACKEND)
    (pkg / "src" / PACKAGE / "__init__.py").write_text(f"SCALE = {scale}\n")
    (code / "inference.py").write_text(INFERENCE_PY)
    (code / "requirements.txt").write_text(requirements)
    return tar_dir(root / "model", root / "model.tar.gz")


def env_dir(server: MoorageServer, requirements: str) -> Path:
    return server.home / "envs" / hashlib.sha256(requirements.encode()).hexdigest()


def predictions(rt: Any, name: str) -> list[float]:
    body = "\n".join(",".join(str(v) for v in row) for row in X).encode()
    return json.loads(invoke(rt, name, body, "text/csv", Accept="application/json")["Body"])


def proc_environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().decode()
    return dict(item.split("=", 1) for item in raw.split("\0") if "=" in item)


def instance_logs(server: MoorageServer, endpoint: str) -> str:
    return "\n".join(p.read_text() for p in sorted((server.home / "logs" / endpoint).rglob("*.log")))


def test_requirements_are_installed_once_and_reused(deployer: Deployer, rt: Any, tmp_path: Path) -> None:
    server = deployer.server
    requirements = requirements_text()
    tar = model_with_requirements(tmp_path / "a", requirements)
    # Three instances start at once: one install between them.
    first = deployer.deploy("req-a", file_url(tar), env=OFFLINE, count=3)
    assert predictions(rt, first) == pytest.approx((X.sum(axis=1) * 3).tolist())

    target = env_dir(server, requirements)
    install_log = (target / "install.log").read_text()
    assert install_log.count("--- moorage: pip install") == 1, install_log
    assert "Successfully installed moorage-test-localpkg-0.1" in install_log or (
        "Successfully installed moorage_test_localpkg-0.1" in install_log), install_log
    marker = target / ".moorage-ready"
    assert marker.is_file()
    built = marker.stat().st_mtime_ns
    pids = [i["Pid"] for i in server.instances(first)]
    assert len(pids) == 3
    for pid in pids:
        env = proc_environ(pid)
        assert Path(env["VIRTUAL_ENV"]) == target  # each instance runs on the environment's python
        assert env["PATH"].startswith(str(target / "bin"))

    # A second model with the same file (a different package version even): the cached environment.
    tar2 = model_with_requirements(tmp_path / "b", requirements, scale=5)
    second = deployer.deploy("req-b", file_url(tar2), env=OFFLINE)
    assert predictions(rt, second) == pytest.approx((X.sum(axis=1) * 3).tolist())  # the installed package
    assert (target / "install.log").read_text().count("--- moorage: pip install") == 1
    assert marker.stat().st_mtime_ns == built
    assert "using the cached environment" in instance_logs(server, second)


def test_a_failed_install_fails_the_endpoint_with_pips_error(deployer: Deployer, tmp_path: Path) -> None:
    requirements = requirements_text("./no-such-package-dir")
    tar = model_with_requirements(tmp_path / "bad", requirements)
    name = deployer.deploy("req-bad", file_url(tar), env=OFFLINE, wait=False)
    desc = deployer.wait_status(name, {"Failed", "InService"}, timeout=120)
    reason = desc.get("FailureReason", "")
    assert desc["EndpointStatus"] == "Failed", desc
    assert "pip install failed with exit code" in reason, reason
    assert "no-such-package-dir" in reason, reason  # pip's own error line
    assert len(reason) <= 1024
    # Not marked ready: the next deploy tries again rather than using a broken environment.
    assert not (env_dir(deployer.server, requirements) / ".moorage-ready").exists()


def test_disabled_installs_fail_the_endpoint_with_the_reason(fresh_server: Callable[..., MoorageServer],
                                                            monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MOORAGE_ALLOW_REQUIREMENTS", "0")  # the server copies this process's environment
    server = fresh_server()
    deployer = Deployer(server)
    try:
        tar = model_with_requirements(tmp_path / "off", requirements_text())
        name = deployer.deploy("req-off", file_url(tar), env=OFFLINE, wait=False)
        desc = deployer.wait_status(name, {"Failed", "InService"}, timeout=60)
        reason = desc.get("FailureReason", "")
        assert desc["EndpointStatus"] == "Failed", desc
        assert "requirements.txt" in reason and "disabled" in reason, reason
        assert "MOORAGE_ALLOW_REQUIREMENTS" in reason, reason
        assert not (server.home / "envs").exists() or not any((server.home / "envs").iterdir())
    finally:
        deployer.cleanup()
