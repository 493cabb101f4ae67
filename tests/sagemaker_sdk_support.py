"""The official SageMaker Python SDK, unmodified, in a virtualenv of its own, run against moorage.

The SDK is no dependency of moorage (it pulls in pandas, numpy, protobuf, ...; and a user's copy is
what has to work), so the tests build a private venv for it: ``.venv-sagemaker-sdk/<key>`` in the
repository (ignored by git), keyed by the pinned SDK and boto3 versions, built once and reused by
every later run. A file lock keeps parallel runs (xdist workers, two sessions) from building it
twice; a marker written last says the venv is whole, so a build interrupted halfway is rebuilt.

Install failures (no package registry) make the tests skip with the reason, except under
``CI=true``, where a machine that cannot prove the SDK works fails.

Scripts run in a subprocess with that venv's python and only the variables an SDK user sets:
``AWS_ENDPOINT_URL`` (botocore sends every service there), the server's key as
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``, and the SDK's own config
file through ``SAGEMAKER_USER_CONFIG_OVERRIDE`` (default bucket, telemetry off). Each script prints
one ``SDK-RESULT {json}`` line (tests/sdk_scripts/_harness.py); :class:`SdkRun` starts a script and
returns that document.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SDK_ENVS = REPO / ".venv-sagemaker-sdk"
SCRIPTS = Path(__file__).resolve().parent / "sdk_scripts"

SAGEMAKER_VERSION = "2.257.7"
# If the registry does not have the pinned release, the newest 2.x it has (the closest: 2.257.7 is
# the last 2.x at the time of writing).
SAGEMAKER_FALLBACK = "sagemaker>=2,<3"
INSTALL_TIMEOUT = 900.0
LOCK_TIMEOUT = INSTALL_TIMEOUT + 60.0

DEFAULT_BUCKET = "moorage-sdk-tests"
ROLE_ARN = "arn:aws:iam::123456789012:role/MoorageSdkRole"


class SdkUnavailable(RuntimeError):
    """The SDK's venv could not be built (no registry, no wheel for this Python, ...)."""


@dataclass(frozen=True)
class SdkEnv:
    python: Path
    sagemaker_version: str
    boto3_version: str
    install_seconds: float | None  # how long the first build took (from its marker)
    fallback: bool  # the pinned release was not found and the newest 2.x was installed


def boto3_pin() -> str:
    """boto3 as in moorage's own environment: the SDK talks the same botocore the tests do."""
    return metadata.version("boto3")


def env_key() -> str:
    return f"sagemaker-{SAGEMAKER_VERSION}-boto3-{boto3_pin()}-py{sys.version_info[0]}{sys.version_info[1]}"


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(cmd: list[str], log: Path, timeout: float) -> int:
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        try:
            return subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=_clean_env(), timeout=timeout)
        except subprocess.TimeoutExpired:
            out.write(f"timed out after {timeout:.0f}s\n")
            return 124


def _tail(path: Path, lines: int = 6) -> str:
    text = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])[-800:]


def _build(root: Path, log: Path) -> dict[str, Any]:
    """Make the venv at ``root`` (removing a half-built one); return what went into its marker."""
    if root.exists():
        shutil.rmtree(root)
    log.write_text("")
    started = time.monotonic()
    deadline = started + INSTALL_TIMEOUT
    # `python -m venv` from moorage's venv makes a venv on the same base interpreter (3.11).
    if _run([sys.executable, "-m", "venv", str(root)], log, 120) != 0:
        raise SdkUnavailable(f"python -m venv failed: {_tail(log)}")
    python = root / "bin" / "python"
    boto3 = f"boto3=={boto3_pin()}"
    # pip's own cache is used as is (no --no-cache-dir): a rebuild reuses the downloaded wheels.
    pip = [str(python), "-m", "pip", "install", "--quiet", "--prefer-binary"]
    fallback = False
    rc = _run([*pip, f"sagemaker=={SAGEMAKER_VERSION}", boto3], log, max(deadline - time.monotonic(), 1))
    if rc != 0:
        fallback = True
        rc = _run([*pip, SAGEMAKER_FALLBACK, boto3], log, max(deadline - time.monotonic(), 1))
    if rc != 0:
        raise SdkUnavailable(f"pip install sagemaker failed (rc={rc}): {_tail(log)}; log: {log}")
    versions = "import json, sagemaker, boto3; print(json.dumps([sagemaker.__version__, boto3.__version__]))"
    probe = subprocess.run([str(python), "-c", versions], capture_output=True, text=True, timeout=300,
                           env=_clean_env())
    if probe.returncode != 0:
        raise SdkUnavailable(f"the installed SDK does not import: {probe.stderr[-800:]}")
    sm_version, boto3_version = json.loads(probe.stdout.strip().splitlines()[-1])
    return {
        "sagemaker": sm_version,
        "boto3": boto3_version,
        "install_seconds": round(time.monotonic() - started, 1),
        "fallback": fallback,
    }


def ensure_sdk_env() -> SdkEnv:
    """The SDK's venv, built on first use (under a file lock) and reused after. Raises SdkUnavailable."""
    SDK_ENVS.mkdir(parents=True, exist_ok=True)
    root = SDK_ENVS / env_key()
    marker = root / ".moorage-complete.json"
    python = root / "bin" / "python"
    with open(SDK_ENVS / ".lock", "w") as lock:
        deadline = time.monotonic() + LOCK_TIMEOUT
        while True:  # bounded: another process building the venv holds the lock for at most INSTALL_TIMEOUT
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SdkUnavailable(f"{SDK_ENVS / '.lock'} held for over {LOCK_TIMEOUT:.0f}s") from None
                time.sleep(0.5)
        try:
            info: dict[str, Any] | None = None
            if marker.exists() and python.exists():
                try:
                    info = json.loads(marker.read_text())
                except ValueError:
                    info = None
            if info is None:
                info = _build(root, SDK_ENVS / f"{env_key()}-install.log")
                marker.write_text(json.dumps(info, indent=1))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return SdkEnv(
        python=python,
        sagemaker_version=info["sagemaker"],
        boto3_version=info["boto3"],
        install_seconds=info.get("install_seconds"),
        fallback=bool(info.get("fallback")),
    )


def sdk_env_or_skip() -> SdkEnv:
    """For a fixture: the venv, or skip (fail under CI=true) saying why it could not be built."""
    try:
        return ensure_sdk_env()
    except SdkUnavailable as exc:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true and the SageMaker SDK could not be installed: {exc}")
        pytest.skip(f"the SageMaker SDK could not be installed: {exc}")


# --------------------------------------------------------------------------------------------------
# running SDK code against a server
# --------------------------------------------------------------------------------------------------
def write_sdk_config(path: Path, *, bucket: str = DEFAULT_BUCKET, role: str = ROLE_ARN) -> Path:
    """The SDK's own config file (the shape of ``sagemaker.config``'s schema): the default bucket, so
    the SDK does not ask STS for the account to name one; telemetry off, so it sends nothing to AWS."""
    document = {
        "SchemaVersion": "1.0",
        "SageMaker": {
            "PythonSDK": {
                "Modules": {
                    "Session": {"DefaultS3Bucket": bucket},
                    "TelemetryOptOut": True,
                }
            },
            # Every resource the SDK creates takes its role from here when a script gives none.
            "Model": {"ExecutionRoleArn": role},
            "ProcessingJob": {"RoleArn": role},
            "MonitoringSchedule": {"MonitoringScheduleConfig": {"MonitoringJobDefinition": {"RoleArn": role}}},
        },
    }
    # The SDK reads YAML; JSON is YAML.
    path.write_text(json.dumps(document, indent=1))
    return path


def sdk_environment(endpoint_url: str, access_key_id: str, secret_access_key: str, region: str,
                    config_file: Path, home: Path) -> dict[str, str]:
    """What an SDK user exports, and nothing else of the test's own environment that could reach AWS."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TMPDIR", "TZ")}
    return {
        **keep,
        "HOME": str(home),  # no ~/.aws/config or ~/.config/sagemaker of whoever runs the tests
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": access_key_id,
        "AWS_SECRET_ACCESS_KEY": secret_access_key,
        "AWS_DEFAULT_REGION": region,
        "AWS_EC2_METADATA_DISABLED": "true",
        "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config_file),
        # the admin config too, so no machine-wide /etc/xdg/sagemaker/config.yaml is read
        "SAGEMAKER_ADMIN_CONFIG_OVERRIDE": str(config_file),
        "SAGEMAKER_SUPPRESS_V2_WARNING": "1",
        "PYTHONUNBUFFERED": "1",
    }


RESULT_PREFIX = "SDK-RESULT "  # as tests/sdk_scripts/_harness.py prints it


class SdkScriptError(AssertionError):
    pass


class SdkRun:
    """One SDK script running in the SDK's venv (started at once; :meth:`outcome` waits for it, bounded).

    Output goes to files, not pipes, so scripts can run side by side without filling a pipe."""

    def __init__(self, python: Path, script: str, params: dict[str, Any], env: dict[str, str], workdir: Path,
                 timeout: float = 300.0) -> None:
        self.script, self.params, self.timeout = script, params, timeout
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path, self.stderr_path = workdir / "stdout.txt", workdir / "stderr.txt"
        self._stdout, self._stderr = open(self.stdout_path, "wb"), open(self.stderr_path, "wb")  # noqa: SIM115
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [str(python), str(SCRIPTS / script), json.dumps(params)],
            stdout=self._stdout, stderr=self._stderr, stdin=subprocess.DEVNULL, env=env, cwd=str(workdir),
            start_new_session=True,
        )  # fmt: skip
        self._outcome: dict[str, Any] | None = None

    def outcome(self) -> dict[str, Any]:
        """The script's ``SDK-RESULT`` document (ok, result or error, calls, endpoints, hosts, failed_calls)."""
        if self._outcome is not None:
            return self._outcome
        remaining = max(self.timeout - (time.monotonic() - self.started), 1.0)
        try:
            self.proc.wait(remaining)
        except subprocess.TimeoutExpired:
            self.stop()
            raise SdkScriptError(f"{self.script} ran past {self.timeout:.0f}s\n{self.tails()}") from None
        finally:
            self._close()
        lines = [line for line in self.stdout_path.read_text(errors="replace").splitlines()
                 if line.startswith(RESULT_PREFIX)]
        if not lines:
            raise SdkScriptError(f"{self.script} exited {self.proc.returncode} without a result\n{self.tails()}")
        self._outcome = json.loads(lines[-1][len(RESULT_PREFIX):])
        return self._outcome

    def result(self) -> dict[str, Any]:
        """The script's result; an AssertionError saying what failed (traceback, failed calls) if it did."""
        outcome = self.outcome()
        if not outcome["ok"]:
            failed = json.dumps(outcome["failed_calls"], indent=1, default=str)
            raise SdkScriptError(f"{self.script} failed:\n{outcome['error']}\nfailed AWS calls: {failed}\n"
                                 f"calls: {outcome['calls']}\n{self.tails(stdout=False)}")
        return outcome["result"]

    def tails(self, stdout: bool = True) -> str:
        parts = []
        if stdout:
            parts.append(f"stdout (tail): {self.stdout_path.read_text(errors='replace')[-3000:]}")
        parts.append(f"stderr (tail): {self.stderr_path.read_text(errors='replace')[-4000:]}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._close()

    def _close(self) -> None:
        for handle in (self._stdout, self._stderr):
            if not handle.closed:
                handle.close()
