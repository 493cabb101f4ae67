"""The router's workers (``api/router_worker.py``): started with the server, restarted when one dies,
stopped as the router stops (they drain beside it, within its grace period); with them, the router
link that answers them and the listener their handed-over connections arrive on (``api/router_link.py``).

A worker is a child process (``python -m moorage.api.router_worker``) given the listening socket and
the paths of the router link and the handoff listener (``api/router_link.py``). One that exits while
the server runs is started again, at most once a second per slot, so a worker that cannot start
does not spin. On stop each gets SIGTERM (uvicorn's graceful shutdown: new connections refused,
requests in flight finished within the grace period), then SIGKILL after the grace period.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from collections.abc import Callable

from moorage.api.router_link import HandoffListener, RouterLink
from moorage.api.router_worker import WorkerConfig

log = logging.getLogger("moorage.router_workers")

WATCH_SECONDS = 0.5
RESTART_EVERY_SECONDS = 1.0


class RouterWorkers:
    def __init__(self, count: int, listener: socket.socket, config: WorkerConfig, link: RouterLink) -> None:
        self.count = count
        self.listener = listener
        self.config = config
        self.link = link
        self._handoff: HandoffListener | None = None
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * count
        self._started_at = [0.0] * count
        self._watch: asyncio.Task[None] | None = None
        self._stopping = False

    def _spawn(self, slot: int) -> None:
        self._started_at[slot] = time.monotonic()
        self.processes[slot] = subprocess.Popen(
            [sys.executable, "-m", "moorage.api.router_worker", self.config.to_json()],
            pass_fds=(self.listener.fileno(),), stdin=subprocess.DEVNULL)
        log.info("router worker %d started (pid %d)", slot, self.processes[slot].pid)  # type: ignore[union-attr]

    async def start(self, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        """``protocol_factory``: the HTTP edge's, which serves the connections the workers hand over."""
        self._handoff = HandoffListener(self.config.handoff_path, protocol_factory)
        self._handoff.start()
        await self.link.start()
        for slot in range(self.count):
            self._spawn(slot)
        self._watch = asyncio.ensure_future(self._watch_loop())

    def invocations(self) -> set[asyncio.Task[None]]:
        """The workers' invocations the router is answering now."""
        return self.link.invocations()

    async def _watch_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(WATCH_SECONDS)
            for slot, process in enumerate(self.processes):
                if self._stopping or process is None or process.poll() is None:
                    continue
                if time.monotonic() - self._started_at[slot] < RESTART_EVERY_SECONDS:
                    continue
                log.warning("router worker %d (pid %d) exited with %s; starting another", slot, process.pid,
                            process.returncode)
                self._spawn(slot)

    async def stop(self, grace: float) -> None:
        self._stopping = True
        if self._watch is not None:
            self._watch.cancel()
        running = [p for p in self.processes if p is not None and p.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + grace + 5.0
        while any(p.poll() is None for p in running) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for process in running:
            if process.poll() is None:
                log.warning("router worker pid %d did not stop within %gs; killing it", process.pid, grace)
                process.kill()
                process.wait()
        await self.link.stop()  # what is still being answered for a worker now has nobody to answer
        if self._handoff is not None:
            self._handoff.stop()
