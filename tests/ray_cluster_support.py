"""A real multi-node Ray cluster on this machine: a head and worker nodes, each its own ``ray start``.

Every node is a separate raylet (``ray start --block``, its own process group and temp folder), so a
node can be killed the way a machine dies: SIGKILL to its whole group, nothing cleaned up. CPUs and
memory are declared per node (Ray's resources are counters) so an instance type's request fits the
way it would on real machines. Every wait is bounded; ``stop`` kills what is left.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@dataclass
class RayNode:
    index: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """As a machine dies: every process of the node at once, no clean-up."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(30)


class RayNodes:
    def __init__(self, cpus_per_node: int = 4, memory_per_node: int = 20 * 2**30):
        self.cpus = cpus_per_node
        self.memory = memory_per_node
        self.port = _free_port()
        self.address = f"{HOST}:{self.port}"
        self.temp = Path(tempfile.mkdtemp(prefix="mrc-"))  # short: Ray's socket paths live under it
        self.nodes: list[RayNode] = []

    def _start(self, args: list[str], ready: str, timeout: float) -> RayNode:
        index = len(self.nodes)
        log = self.temp / f"node-{index}.log"
        exe = Path(sys.executable).parent / "ray"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(exe), "start", "--block", f"--node-ip-address={HOST}", f"--num-cpus={self.cpus}",
                 f"--memory={self.memory}", "--object-store-memory=100000000", "--disable-usage-stats", *args],
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True, stdin=subprocess.DEVNULL,
                env={**os.environ, **RAY_ENV})
        node = RayNode(index, proc, log)
        self.nodes.append(node)
        deadline = time.monotonic() + timeout
        while ready not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {index} did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        return node

    def start(self, workers: int, timeout: float = 120.0) -> RayNodes:
        self._start(["--head", f"--port={self.port}", "--include-dashboard=false", f"--temp-dir={self.temp}"],
                    "Ray runtime started", timeout)
        for _ in range(workers):
            self.add_worker(timeout)
        self.wait_alive(1 + workers, timeout)
        return self

    def add_worker(self, timeout: float = 120.0) -> RayNode:
        return self._start([f"--address={self.address}"], "Ray runtime started", timeout)

    def alive_node_ids(self) -> list[str]:
        """The node ids Ray's control store lists as alive (asked from a child process: no driver here)."""
        code = (f"import ray, json; ray.init(address={self.address!r}, log_to_driver=False, configure_logging=False); "
                "print(json.dumps([n['NodeID'] for n in ray.nodes() if n['Alive']]))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                             env={**os.environ, **RAY_ENV})
        import json

        return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else []

    def wait_alive(self, count: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.alive_node_ids()) < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Ray cluster did not reach {count} alive nodes")
            time.sleep(1)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.proc.pid, signal.SIGTERM)
        for node in reversed(self.nodes):
            try:
                node.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(node.proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.proc.wait(10)
        shutil.rmtree(self.temp, ignore_errors=True)
