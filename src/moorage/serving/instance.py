"""One instance: a model-server process that implements the container contract.

The platform owns the process's whole life: it starts it with the model directory and the
container's environment, waits for ``/ping``, counts outstanding requests for the load balancer,
notices when the process dies, and drains then stops it.

Two kinds of server are started the same way. A built-in runtime (``python -m
moorage.runtimes.server``) listens on a Unix socket; a bring-your-own server (runtime ``byo``: the
model's ``serve`` executable or ``MOORAGE_SERVE_COMMAND``) is told where to listen as SageMaker tells
a container, with ``SAGEMAKER_BIND_TO_PORT`` (a free loopback port) and ``SAGEMAKER_SAFE_PORT_RANGE``
(a few more ports reserved for its own helpers), and is reached over loopback TCP.

The process's output goes through a pipe into a rotating per-instance log (see ``logs.py``), whose
last lines become the reason when the instance cannot start. Each instance gets the CPU threads and
memory limit of its instance type (``instance_types.py``), and the Python environment of its
``requirements.txt`` when it has one (``environments.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from enum import StrEnum
from pathlib import Path

import psutil

from moorage.runtimes.frames import SOCKET_SUFFIX as FRAMES_SUFFIX
from moorage.serving.environments import RequirementsError, ensure_environment, server_environment
from moorage.serving.frame_client import FrameClient
from moorage.serving.instance_client import InstanceClient, InstanceConnectionError, InstanceResponse, InstanceTimeout
from moorage.serving.instance_types import (
    MemoryLimit,
    Resources,
    memory_limit,
    resources_for,
    thread_environment,
)
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.logs import LogPolicy, RotatingLog, clip_tail

log = logging.getLogger("moorage.instance")

BYO_RUNTIME = "byo"
LOOPBACK = "127.0.0.1"
# Where ports for bring-your-own servers come from: below Linux's ephemeral range (32768-60999), so
# the kernel does not hand them to outgoing connections meanwhile.
PORT_RANGE = (20000, 32760)
PORT_BLOCK = 8  # the bind port + 7 in SAGEMAKER_SAFE_PORT_RANGE
# Bounds the wait for the last output of a process that exited (a grandchild may hold its pipe open).
LOG_DRAIN_TIMEOUT_S = 2.0
# runtimes/server.py's health listener is the instance's socket plus this (not imported from there:
# that module loads the frameworks, which the platform process never needs).
HEALTH_SUFFIX = ".health"
MAX_REASON_TAIL = 700  # FailureReason is at most 1024 characters in SageMaker's API


class InstanceState(StrEnum):
    PENDING = "Pending"
    IN_SERVICE = "InService"
    DRAINING = "Draining"
    FAILED = "Failed"
    STOPPED = "Stopped"


class InstanceStartError(Exception):
    """The instance could not start; the message is fit to be an endpoint's FailureReason."""


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


class _PortBlocks:
    """Loopback port blocks for bring-your-own servers, reserved while their instance lives."""

    def __init__(self) -> None:
        self.taken: set[int] = set()

    def reserve(self, host: str = LOOPBACK) -> int:
        lo, hi = PORT_RANGE
        bases = list(range(lo, hi - PORT_BLOCK, PORT_BLOCK))
        random.shuffle(bases)
        for base in bases[:400]:
            if base in self.taken:
                continue
            if all(_bindable(p, host) for p in range(base, base + PORT_BLOCK)):
                self.taken.add(base)
                return base
        raise InstanceStartError(f"no free block of {PORT_BLOCK} ports on {host} in {lo}-{hi}")

    def release(self, base: int) -> None:
        self.taken.discard(base)


def _bindable(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


PORTS = _PortBlocks()


@functools.cache
def _death_signal_prefix() -> tuple[str, ...]:
    """util-linux ``setpriv --pdeathsig KILL --`` where available: the kernel then kills an instance
    whose server died, even by SIGKILL (a bring-your-own server has no parent watch of its own).
    A wrapper rather than ``preexec_fn``, which is unsafe in a process with threads."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    try:
        usage = subprocess.run([setpriv, "--help"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    return (setpriv, "--pdeathsig", "KILL", "--") if "--pdeathsig" in usage else ()


def _close_on_exec() -> None:
    """Mark every descriptor of this process above stderr close-on-exec before an instance is spawned.

    uvloop (the server's loop) spawns through libuv, which ignores ``close_fds`` and passes on every
    descriptor not marked close-on-exec: the server's listening socket (made inheritable for uvicorn)
    and libuv's own. An instance, or a helper a BYO server leaves behind, would then hold the server's
    port after the server died, and the next server could not bind it.
    """
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return  # no procfs: nothing to go by
    for fd in fds:
        if fd > 2:
            with contextlib.suppress(OSError):
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


class Instance:
    def __init__(self, launch: LaunchSpec, socket_dir: Path, log_dir: Path, instance_id: str | None = None,
                 listen_host: str | None = None):
        self.id = instance_id or f"i-{uuid.uuid4().hex[:12]}"
        self.launch = launch
        # Set on a Ray node (launchers/ray_instance.py): the server listens on a TCP port of this address,
        # for routers on other machines; health checks stay on the node, over the Unix health socket.
        self.listen_host = listen_host
        self.socket_path = str(socket_dir / f"{self.id}.sock")
        self.log_path = log_dir / f"{self.id}.log"
        self.state = InstanceState.PENDING
        self.outstanding = 0
        self.process: asyncio.subprocess.Process | None = None
        self.port: int | None = None
        self.client: InstanceClient | FrameClient = InstanceClient(socket_path=self.socket_path)
        # A built-in runtime also listens for the router's framed link (runtimes/frames.py) here; the
        # client moves to it once the instance is ready, unless MOORAGE_INSTANCE_LINK says http.
        self.frames_path = self.socket_path + FRAMES_SUFFIX
        # A built-in runtime answers health checks on a listener of its own (runtimes/server.py), so
        # that they never wait behind predictions; a BYO server has only its /ping.
        self.health_socket_path = self.socket_path + HEALTH_SUFFIX
        self.health_client: InstanceClient | None = None if self.byo else InstanceClient(
            socket_path=self.health_socket_path)
        self.recycle_reason: str | None = None  # set when the platform replaces a live instance on purpose
        self.group_record = str(socket_dir / f"{self.id}.pgid")
        self.rss_limit: int | None = None  # resident bytes past which the pool replaces it (set at spawn)
        self.started_at: float | None = None
        self.ready_at: float | None = None
        self.log: RotatingLog | None = None
        self._pump: asyncio.Future[None] | None = None
        self._memory: MemoryLimit | None = None
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def byo(self) -> bool:
        return self.launch.runtime == BYO_RUNTIME

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def setup_seconds(self) -> float | None:
        if self.started_at is None or self.ready_at is None:
            return None
        return self.ready_at - self.started_at

    def _command(self, python: str) -> list[str]:
        if self.byo:
            return list(self.launch.command)
        listen = (["--port", str(self.port), "--health-socket", self.health_socket_path] if self.listen_host
                  else ["--socket", self.socket_path])
        return [python, "-m", "moorage.runtimes.server", "--runtime", self.launch.runtime,
                "--model-dir", str(self.launch.model_dir), *listen]

    def _environment(self, resources: Resources, venv_bin: Path | None) -> dict[str, str]:
        container = self.launch.environment
        env = server_environment()
        env.update(thread_environment(resources, container))
        env.update(container)
        env["MOORAGE_PARENT_PID"] = str(os.getpid())
        env["MOORAGE_INSTANCE_ID"] = self.id
        env["SAGEMAKER_INSTANCE_TYPE"] = self.launch.instance_type
        env.setdefault("SM_MODEL_DIR", str(self.launch.model_dir))
        env.setdefault("PYTHONUNBUFFERED", "1")
        if self.listen_host is not None:
            env["MOORAGE_BIND_HOST"] = self.listen_host
        if self.port is not None:
            env["SAGEMAKER_BIND_TO_PORT"] = str(self.port)
            env["SAGEMAKER_SAFE_PORT_RANGE"] = f"{self.port + 1}-{self.port + PORT_BLOCK - 1}"
        if venv_bin is not None:
            env["VIRTUAL_ENV"] = str(venv_bin.parent)
            env["PATH"] = f"{venv_bin}{os.pathsep}{env.get('PATH', os.defpath)}"
            env.pop("PYTHONHOME", None)
        return env

    async def start(self, timeout: float = 120.0) -> None:
        """Start the process and return once ``/ping`` answers 200; raise InstanceStartError otherwise."""
        timeout = self.launch.startup_timeout or timeout
        self.started_at = time.monotonic()
        self.log = RotatingLog(self.log_path, LogPolicy.for_instance(self.launch.environment, self.launch.instances))
        self.log.line(f"starting instance {self.id} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')} "
                      f"(runtime {self.launch.runtime}, instance type {self.launch.instance_type})")
        try:
            await self._spawn()
            await self._wait_ready(timeout)
        except InstanceStartError:
            self.state = InstanceState.FAILED
            await self._abort()
            raise
        except BaseException:
            # Cancelled (the endpoint was deleted while starting) or an unexpected error: never leave
            # a half-started process behind.
            self.state = InstanceState.FAILED
            self._signal_group(signal.SIGKILL)
            if self._pump is None and self.log is not None:
                self.log.close()
            self._release()
            raise

    async def _spawn(self) -> None:
        assert self.log is not None
        venv_bin: Path | None = None
        python = sys.executable
        if self.launch.requirements is not None:
            envs_dir = self.launch.envs_dir or self.launch.model_dir.parent / "envs"
            try:
                code_env = await ensure_environment(self.launch.requirements, envs_dir, self.launch.environment,
                                                    note=self.log.line, instances=self.launch.instances)
            except RequirementsError as exc:
                self.log.line(str(exc))
                raise InstanceStartError(str(exc)) from exc
            venv_bin, python = code_env.bin_dir, str(code_env.python)
        Path(self.socket_path).parent.mkdir(parents=True, exist_ok=True)  # its group record goes there too
        if self.byo:
            if not self.launch.command:
                raise InstanceStartError(f"instance {self.id}: runtime byo needs a command (a `serve` executable "
                                         "in the model data, or MOORAGE_SERVE_COMMAND)")
            self.port = PORTS.reserve(self.listen_host or LOOPBACK)
            self.client = InstanceClient(host=self.listen_host or LOOPBACK, port=self.port)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            if self.listen_host is not None:
                self.port = PORTS.reserve(self.listen_host)
                self.client = InstanceClient(host=self.listen_host, port=self.port)
        resources = resources_for(self.launch.instance_type)
        self._memory = memory_limit(resources, self.id, settings=self.launch.instances)
        self.rss_limit = self._rss_limit(resources)
        watched = f"; replaced past {self.rss_limit} resident bytes" if self.rss_limit else ""
        self.log.line(f"{resources.cpu_threads} CPU threads; {self._memory.note}{watched}")
        prefix = [*_death_signal_prefix(), *self._memory.prefix]
        command = self._command(python)
        if self.byo:
            self.log.line(f"command {command} in {self.launch.model_dir}, SAGEMAKER_BIND_TO_PORT={self.port}")
        _close_on_exec()
        try:
            self.process = await asyncio.create_subprocess_exec(
                *prefix, *command, env=self._environment(resources, venv_bin), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                cwd=str(self.launch.model_dir) if self.byo else None,
            )
        except OSError as exc:
            reason = f"instance {self.id} could not run {command[0]!r}: {exc}"
            self.log.line(reason)
            raise InstanceStartError(reason) from exc
        assert self.process.stdout is not None
        if self.launch.background:
            # SCHED_IDLE: the process runs only on CPU nobody else wants, and any normal task that
            # wakes takes the core from it at once (a nice value only shares the core in proportion).
            # Set before its server starts any thread or worker: they inherit the policy.
            with contextlib.suppress(OSError):
                os.sched_setscheduler(self.process.pid, os.SCHED_IDLE, os.sched_param(0))
            # The instance leads its own session, and with the kernel's autogroup scheduling each
            # session is a task group that competes as a whole: the policy above only ranks it within
            # its group. The group's own nice (lowest) makes the whole group yield.
            with contextlib.suppress(OSError):
                Path(f"/proc/{self.process.pid}/autogroup").write_text("19")
        self.log.line(f"started pid {self.process.pid}")
        # Its process group (start_new_session: the pid), for the next server to reap should this one
        # be killed before it can stop the group itself (launchers/local.py).
        with contextlib.suppress(OSError):
            Path(self.group_record).write_text(f"{self.process.pid}\n")
        self._pump = asyncio.ensure_future(self._drain_output(self.process, self.log))

    def _rss_limit(self, resources: Resources) -> int | None:
        settings = self.launch.instances
        if settings.max_rss is not None:
            return settings.max_rss
        if resources.memory_bytes is None or settings.rss_limit_percent == 0:
            return None
        return resources.memory_bytes * settings.rss_limit_percent // 100

    def resident_bytes(self) -> int | None:
        """The resident memory of the instance's processes together (a server's workers count); None
        once it has exited. Counted from outside, so a model that leaks is seen whatever it runs."""
        proc = self.process
        if proc is None or proc.returncode is not None:
            return None
        try:
            root = psutil.Process(proc.pid)
            total = root.memory_info().rss
            children = root.children(recursive=True)
        except psutil.Error:
            return None
        for child in children:
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return total

    def memory_excess(self) -> str | None:
        """Why the instance must be replaced for its memory, or None while it is within its limit."""
        if self.rss_limit is None:
            return None
        used = self.resident_bytes()
        if used is None or used <= self.rss_limit:
            return None
        return (f"its processes use {used} resident bytes, over the limit of {self.rss_limit} for "
                f"{self.launch.instance_type} (MOORAGE_INSTANCE_RSS_PERCENT / MOORAGE_INSTANCE_MAX_RSS)")

    async def _drain_output(self, process: asyncio.subprocess.Process, out: RotatingLog) -> None:
        """Log the process's output until its pipe closes, then free what the instance held."""
        assert process.stdout is not None
        try:
            await out.pump(process.stdout)
            await process.wait()
        finally:
            out.close()
            self._release()

    async def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        interval = 0.05
        while True:
            if self.process.returncode is not None:
                raise InstanceStartError(await self._exit_reason())
            remaining = deadline - time.monotonic()
            ready = ((self.byo or self.listen_host is not None or os.path.exists(self.socket_path))
                     and await self._ping(min(2.0, max(0.1, remaining))))
            if ready:
                self.ready_at = time.monotonic()
                self._choose_link()
                self.state = InstanceState.IN_SERVICE
                return
            if time.monotonic() > deadline:
                await self.kill()
                await self._wait_drained()
                raise InstanceStartError(
                    f"instance {self.id} did not pass its /ping health check within {timeout:g} s. "
                    f"Last log lines:\n{clip_tail(self._tail(), MAX_REASON_TAIL)}")
            await asyncio.sleep(interval)
            if self.byo:
                # A server that is up but not ready yet answers every ping (and may log each one):
                # ask less often as the wait grows.
                interval = min(0.5, interval * 1.2)

    def _choose_link(self) -> None:
        """The framed link where the instance offers it (a built-in runtime on this machine, its
        ``.frames`` socket bound) and the settings want it; HTTP otherwise."""
        if (self.launch.instances.link == "frames" and not self.byo and self.listen_host is None
                and os.path.exists(self.frames_path)):
            self.client.close()
            self.client = FrameClient(self.frames_path, share_bodies=True)

    @property
    def link(self) -> str:
        return "frames" if isinstance(self.client, FrameClient) else "http"

    async def _wait_drained(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._pump), LOG_DRAIN_TIMEOUT_S)

    def _tail(self, lines: int = 12) -> str:
        return self.log.tail(lines) if self.log is not None else log_tail(self.log_path, lines)

    async def _exit_reason(self) -> str:
        await self._wait_drained()
        code = self.process.returncode if self.process else None
        tail = self._tail()
        last = tail.splitlines()[-1] if tail else ""
        prefix = "moorage-instance: "
        if last.startswith(prefix):
            return f"{last[len(prefix):]} (instance {self.id} exited with code {code}; log: {self.log_path})"
        return (f"instance {self.id} exited with code {code} during startup. "
                f"Last log lines:\n{clip_tail(tail, MAX_REASON_TAIL)}")

    async def _abort(self) -> None:
        """After a failed start: the process group gone, its output logged, its resources freed."""
        await self.kill()
        self._signal_group(signal.SIGKILL)  # what the process started goes with it
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.group_record)
        await self._wait_drained()
        if self._pump is None and self.log is not None:
            self.log.close()  # nothing was spawned, so no pump will close it
        self._release()

    def _release(self) -> None:
        """Free the ports and cgroup once the process is gone (the output pump calls this at its exit)."""
        if self.process is not None and self.process.returncode is None:
            return
        if self.port is not None:
            PORTS.release(self.port)
            self.port = None
        if self._memory is not None:
            self._memory.release()
            self._memory = None

    def _signal_group(self, sig: signal.Signals) -> None:
        """Signal the instance's process group: a server's own workers go with it."""
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)

    async def _ping(self, timeout: float) -> bool:
        try:
            response = await self.client.request(b"GET", b"/ping", timeout=timeout)
        except (InstanceConnectionError, InstanceTimeout):
            return False
        return response.status == 200

    async def ping(self, timeout: float = 5.0) -> bool:
        return await self._ping(timeout)

    async def check_health(self, timeout: float = 2.0) -> bool | None:
        """Whether the process answers its health check; None when it cannot be asked without waiting
        behind the requests in flight (a busy BYO server, whose only /ping shares their workers): a
        busy instance is alive by definition."""
        # A server that could not open its health listener (it logs why) is asked as a BYO one is.
        if self.health_client is not None and os.path.exists(self.health_socket_path):
            try:
                response = await self.health_client.request(b"GET", b"/ping", timeout=timeout)
            except (InstanceConnectionError, InstanceTimeout):
                return False
            return response.status == 200
        if self.outstanding:
            return None
        return await self._ping(timeout)

    def close_connections(self) -> None:
        """Fail the requests in flight at once (the process died) instead of at their timeout."""
        self.client.close()

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
        if proc is not None and proc.returncode is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), term_timeout)
            except TimeoutError:
                await self.kill()
        if proc is not None:
            # Helpers a server started and left behind in its group go too.
            self._signal_group(signal.SIGKILL)
            await self._wait_drained()
        self._release()
        if self.health_client is not None:
            self.health_client.close()
        for path in (self.socket_path, self.health_socket_path, self.frames_path, self.group_record):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    async def kill(self) -> None:
        proc = self.process
        if proc is None or proc.returncode is not None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 10)
