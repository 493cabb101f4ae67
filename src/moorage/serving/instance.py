"""One instance: a model-server process that implements the container contract.

The platform owns the process's whole life: it starts it with the model directory and the
container's environment, waits for ``/ping``, counts outstanding requests for the load balancer,
notices when the process dies, and drains then stops it. Output goes to a per-instance log file,
whose last lines become the reason when the instance cannot start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from moorage.serving.client import InstanceClient, InstanceConnectionError, InstanceResponse, InstanceTimeout


class InstanceState(StrEnum):
    PENDING = "Pending"
    IN_SERVICE = "InService"
    DRAINING = "Draining"
    FAILED = "Failed"
    STOPPED = "Stopped"


class InstanceStartError(Exception):
    """The instance could not start; the message is fit to be an endpoint's FailureReason."""


@dataclass(frozen=True)
class LaunchSpec:
    """Everything needed to start an instance of one production variant."""

    runtime: str
    model_dir: Path
    environment: dict[str, str] = field(default_factory=dict)
    instance_type: str = "ml.m5.large"


def log_tail(path: Path, lines: int = 12, max_bytes: int = 16384) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.strip().splitlines()[-lines:])


class Instance:
    def __init__(self, launch: LaunchSpec, socket_dir: Path, log_dir: Path, instance_id: str | None = None):
        self.id = instance_id or f"i-{uuid.uuid4().hex[:12]}"
        self.launch = launch
        self.socket_path = str(socket_dir / f"{self.id}.sock")
        self.log_path = log_dir / f"{self.id}.log"
        self.state = InstanceState.PENDING
        self.outstanding = 0
        self.process: asyncio.subprocess.Process | None = None
        self.client = InstanceClient(socket_path=self.socket_path)
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def setup_seconds(self) -> float | None:
        if self.started_at is None or self.ready_at is None:
            return None
        return self.ready_at - self.started_at

    def _command(self) -> list[str]:
        return [sys.executable, "-m", "moorage.runtimes.server", "--runtime", self.launch.runtime,
                "--model-dir", str(self.launch.model_dir), "--socket", self.socket_path]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.launch.environment)
        env["MOORAGE_PARENT_PID"] = str(os.getpid())
        env["MOORAGE_INSTANCE_ID"] = self.id
        env["SAGEMAKER_INSTANCE_TYPE"] = self.launch.instance_type
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    async def start(self, timeout: float = 120.0) -> None:
        """Start the process and return once ``/ping`` answers 200; raise InstanceStartError otherwise."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.started_at = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"--- moorage: starting instance {self.id} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                *self._command(), env=self._environment(), stdin=asyncio.subprocess.DEVNULL,
                stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.returncode is not None:
                self.state = InstanceState.FAILED
                raise InstanceStartError(self._exit_reason())
            if os.path.exists(self.socket_path) and await self._ping(timeout=2.0):
                self.ready_at = time.monotonic()
                self.state = InstanceState.IN_SERVICE
                return
            if time.monotonic() > deadline:
                await self.kill()
                self.state = InstanceState.FAILED
                raise InstanceStartError(
                    f"instance {self.id} did not pass its /ping health check within {timeout:g} s. "
                    f"Last log lines:\n{log_tail(self.log_path)}")
            await asyncio.sleep(0.05)

    def _exit_reason(self) -> str:
        code = self.process.returncode if self.process else None
        tail = log_tail(self.log_path)
        last = tail.splitlines()[-1] if tail else ""
        prefix = "moorage-instance: "
        if last.startswith(prefix):
            return f"{last[len(prefix):]} (instance {self.id} exited with code {code}; log: {self.log_path})"
        return f"instance {self.id} exited with code {code} during startup. Last log lines:\n{tail}"

    async def _ping(self, timeout: float) -> bool:
        try:
            response = await self.client.request(b"GET", b"/ping", timeout=timeout)
        except (InstanceConnectionError, InstanceTimeout):
            return False
        return response.status == 200

    async def ping(self, timeout: float = 5.0) -> bool:
        return await self._ping(timeout)

    async def invoke(self, body: bytes, headers: bytes, timeout: float) -> InstanceResponse:
        self.outstanding += 1
        self._idle.clear()
        try:
            return await self.client.request(b"POST", b"/invocations", body, headers, timeout)
        finally:
            self.outstanding -= 1
            if self.outstanding == 0:
                self._idle.set()

    async def wait_exit(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def drain(self, timeout: float) -> None:
        """Take no new requests; wait (bounded) for the outstanding ones to finish."""
        if self.state == InstanceState.IN_SERVICE:
            self.state = InstanceState.DRAINING
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, drain_timeout: float = 30.0, term_timeout: float = 10.0) -> None:
        await self.drain(drain_timeout)
        self.state = InstanceState.STOPPED
        self.client.close()
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), term_timeout)
        except TimeoutError:
            await self.kill()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    async def kill(self) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
