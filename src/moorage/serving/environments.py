"""Per-model Python environments for a ``requirements.txt`` beside the user's code.

SageMaker's framework containers ``pip install -r requirements.txt`` from the code directory
before they load ``inference.py``. moorage does the same once per distinct file: the environment
is cached under ``home/envs/<sha256 of the file>/``, so every instance of every model with the same
file shares one, and a restarted server reuses it.

The environment is a ``venv`` that also sees the server's own site-packages (through a ``.pth``
file that calls ``site.addsitedir``, which, unlike a plain path line, also runs the editable-install
hooks found there), so moorage and the framework import without being installed again. Its own
site-packages come first on ``sys.path``: a version the user pins wins over the server's, and pip
never touches the server's packages (it does not uninstall outside the environment it runs in).

Installs can be turned off on a server (``MOORAGE_ALLOW_REQUIREMENTS=0``); a model that brings a
requirements.txt then fails to deploy with a reason that says so, rather than running without
its dependencies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import shutil
import signal
import site
import sys
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moorage.serving.logs import RotatingLog, clip_tail
from moorage.settings import InstanceSettings

ALLOW_ENV = "MOORAGE_ALLOW_REQUIREMENTS"
TIMEOUT_ENV = "MOORAGE_REQUIREMENTS_TIMEOUT"
READY_MARKER = ".moorage-ready"
INSTALL_LOG = "install.log"
PTH_NAME = "_moorage_server_site.pth"
MAX_REASON_TAIL = 500  # of pip's output in a FailureReason (at most 1024 characters in all)
# Server variables an install (and user code) must not see: the admin key, a database URL's password.
SERVER_SECRETS = frozenset({"MOORAGE_ACCESS_KEY_ID", "MOORAGE_SECRET_ACCESS_KEY", "MOORAGE_DATABASE_URL"})


class RequirementsError(Exception):
    """The code environment could not be prepared; the message is fit to be a FailureReason."""


@dataclass(frozen=True)
class CodeEnvironment:
    path: Path
    python: Path
    reused: bool

    @property
    def bin_dir(self) -> Path:
        return self.python.parent


def requirements_digest(requirements: Path) -> str:
    return hashlib.sha256(requirements.read_bytes()).hexdigest()


def server_environment() -> dict[str, str]:
    """The server's environment without its secrets: the base for instances and installs."""
    return {k: v for k, v in os.environ.items() if k not in SERVER_SECRETS}


# One lock per environment directory, for instances of this server starting at the same time; a
# file lock beside it covers other servers sharing the home. Kept per event loop because an
# asyncio.Lock belongs to the loop that first waits on it.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Path, asyncio.Lock]] = weakref.WeakKeyDictionary()


async def ensure_environment(requirements: Path, envs_dir: Path, container_env: Mapping[str, str],
                             note: Callable[[str], None] | None = None,
                             instances: InstanceSettings | None = None) -> CodeEnvironment:
    """The environment for ``requirements``: built (once) or reused. Raises RequirementsError.

    ``instances`` is the server's settings section (whether installs are allowed, their time limit).
    """
    say = note or (lambda _text: None)
    instances = instances or InstanceSettings()
    if not instances.allow_requirements:
        raise RequirementsError(
            f"A requirements.txt was found at {requirements}, but installing code dependencies is disabled on "
            f"this server ({ALLOW_ENV}=0). Install the packages where moorage runs and remove the file, or "
            f"restart the server with {ALLOW_ENV}=1.")
    try:
        digest = await asyncio.to_thread(requirements_digest, requirements)
    except OSError as exc:
        raise RequirementsError(f"Cannot read {requirements}: {exc}") from exc
    target = envs_dir / digest
    timeout = _timeout(container_env, instances.requirements_timeout)
    lock = _locks.setdefault(asyncio.get_running_loop(), {}).setdefault(target, asyncio.Lock())
    async with lock, _file_lock(envs_dir / f"{digest}.lock", timeout):
        python = _ready(target)
        if python is not None:
            say(f"using the cached environment {target} for {requirements}")
            return CodeEnvironment(target, python, reused=True)
        say(f"installing {requirements} into {target} (log: {target / INSTALL_LOG})")
        started = time.monotonic()
        python = await _build(target, requirements, container_env, timeout)
        say(f"environment {target} ready in {time.monotonic() - started:.1f} s")
        return CodeEnvironment(target, python, reused=False)


def _timeout(container_env: Mapping[str, str], server_timeout: float) -> float:
    """The container Environment's value (SageMaker's contract, per model), else the server's setting."""
    value = container_env.get(TIMEOUT_ENV)
    if value:
        with contextlib.suppress(ValueError):
            return max(1.0, float(value))
    return server_timeout


def _venv_python(target: Path) -> Path:
    return target / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _ready(target: Path) -> Path | None:
    """The environment's python when a complete build for this interpreter is there."""
    try:
        marker = json.loads((target / READY_MARKER).read_text())
    except (OSError, ValueError):
        return None
    python = _venv_python(target)
    if marker.get("python") != sys.version or not python.exists():
        return None
    return python


@contextlib.asynccontextmanager
async def _file_lock(path: Path, timeout: float):  # type: ignore[no-untyped-def]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout + 60
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RequirementsError(
                        f"Timed out waiting for another install into {path.with_suffix('')}") from None
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)  # also releases the lock


async def _build(target: Path, requirements: Path, container_env: Mapping[str, str], timeout: float) -> Path:
    await asyncio.to_thread(shutil.rmtree, target, True)  # a build that did not finish
    target.mkdir(parents=True)
    install_log = RotatingLog(target / INSTALL_LOG)
    deadline = time.monotonic() + timeout
    try:
        # Without pip when the server has one: the environment borrows it through the .pth file,
        # which saves seconds per build and needs no network.
        venv_cmd = [sys.executable, "-m", "venv"]
        if importlib.util.find_spec("pip") is not None:
            venv_cmd.append("--without-pip")
        install_log.line(f"creating environment: {' '.join(venv_cmd)} {target}")
        await _run([*venv_cmd, str(target)], target, server_environment(), install_log, deadline, "python -m venv")
        python = _venv_python(target)
        purelib = await _run_capture([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
        Path(purelib).mkdir(parents=True, exist_ok=True)
        (Path(purelib) / PTH_NAME).write_text(_pth_text())
        env = server_environment()
        env.update(container_env)  # PIP_INDEX_URL and friends from the model's Environment apply
        env.pop("PYTHONHOME", None)
        env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
        pip = [str(python), "-m", "pip", "install", "--no-input", "-r", str(requirements)]
        install_log.line(f"pip install (cwd {requirements.parent}): {' '.join(pip)}")
        # pip resolves relative paths in the file (./localpkg, -e .) against its cwd: the code directory.
        await _run(pip, requirements.parent, env, install_log, deadline, "pip install")
        (target / READY_MARKER).write_text(json.dumps(
            {"requirements": str(requirements), "python": sys.version, "built_at": time.time()}))
        install_log.line("environment ready")
        return python
    except RequirementsError:
        raise
    except OSError as exc:
        raise RequirementsError(f"Could not create the environment for {requirements}: {exc}") from exc
    finally:
        install_log.close()


def _pth_text() -> str:
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and site.getusersitepackages():
        dirs.append(site.getusersitepackages())
    return "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)


async def _run(cmd: list[str], cwd: Path, env: Mapping[str, str], install_log: RotatingLog, deadline: float,
               what: str) -> None:
    proc = await asyncio.create_subprocess_exec(*cmd, cwd=str(cwd), env=dict(env), stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                start_new_session=True)
    assert proc.stdout is not None
    pump = asyncio.ensure_future(install_log.pump(proc.stdout))
    try:
        code = await asyncio.wait_for(proc.wait(), max(0.1, deadline - time.monotonic()))
    except TimeoutError:
        _kill_group(proc.pid)
        await proc.wait()
        raise RequirementsError(
            f"{what} for the model's requirements.txt did not finish in time ({TIMEOUT_ENV}); "
            f"last lines of {install_log.path}:\n{clip_tail(install_log.tail(8), MAX_REASON_TAIL)}") from None
    except BaseException:
        _kill_group(proc.pid)
        raise
    finally:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(pump), 5)
        pump.cancel()
    if code != 0:
        tail = clip_tail(install_log.tail(8), MAX_REASON_TAIL)
        raise RequirementsError(f"{what} failed with exit code {code} for the model's requirements.txt. "
                                f"Last lines of {install_log.path}:\n{tail}")


async def _run_capture(cmd: list[str]) -> str:
    proc = await asyncio.create_subprocess_exec(*cmd, stdin=asyncio.subprocess.DEVNULL,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RequirementsError(f"{cmd[0]} did not answer in 60 s") from None
    if proc.returncode != 0:
        raise RequirementsError(f"{' '.join(cmd)} failed: {err.decode(errors='replace').strip()[-500:]}")
    return out.decode().strip()


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
