"""The routers of one deployment: every ``moorage serve`` sharing the metadata store says it is alive.

Each router makes an id (a uuid) when it starts and writes a heartbeat row (resource kind ``router``
in the generic resources table: id, url, host, pid, start and last heartbeat time) every
``MOORAGE_LEADER_CHECK_SECONDS`` (``settings.cluster.leader_check_interval``, I). A router is alive
while its last heartbeat is younger than its lease, ``3 x I + 2 s`` (three missed beats and a margin
for a slow store); its row is deleted on a clean stop and, by any router, once it is ten leases old.

Work cut off by a dead router is settled by the controller leader (``control/settling.py``): rows
that record an owner router (jobs, monitoring executions, asynchronous requests, endpoint updates)
are settled only when that owner is not alive, so a starting router never touches what a live one
is doing. With SQLite there is one server per home, so ``alive`` is this router alone: whatever
another id left behind was cut off by the last stop, as before cluster mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any

from moorage.config import Settings
from moorage.store.metadata import AlreadyExists, MetadataStore

log = logging.getLogger("moorage.cluster")

ROUTER = "router"
LEASE_BEATS = 3  # heartbeats a router may miss before it counts as dead
LEASE_MARGIN_S = 2.0
FORGET_AFTER_LEASES = 10  # a dead router's row is removed once this many leases old


def lease_seconds(interval: float) -> float:
    """How long a router counts as alive after its last heartbeat."""
    return LEASE_BEATS * interval + LEASE_MARGIN_S


class Routers:
    """This router's heartbeat row and the question "which routers are alive?"."""

    def __init__(self, settings: Settings, store: MetadataStore):
        self.store = store
        self.id = str(uuid.uuid4())
        self.interval = float(settings.cluster.leader_check_interval)
        self.lease = lease_seconds(self.interval)
        self.single = not store.shared  # one server per home: nobody else can be alive
        self.started = time.time()
        self._info: dict[str, Any] = {"RouterId": self.id, "Url": settings.url, "Host": socket.gethostname(),
                                      "Pid": os.getpid(), "StartTime": self.started}
        self.registered = False
        self._task: asyncio.Task[None] | None = None

    # -- the heartbeat (a shared database only: with SQLite nobody reads it) ---------------------------
    def start(self) -> None:
        if self.single:
            return
        self.beat()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
            await asyncio.to_thread(self.leave)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await asyncio.to_thread(self.beat)
            except Exception as exc:  # the store is away: the lease runs out, and others settle our work
                log.warning("router heartbeat failed: %s", exc)

    def arn(self, router_id: str) -> str:
        return f"moorage:router/{router_id}"

    def beat(self, now: float | None = None) -> None:
        """Write this router's heartbeat (create the row the first time), and forget long-dead routers."""
        now = time.time() if now is None else now
        body = {**self._info, "LastHeartbeat": now}
        if not self.registered:
            try:
                self.store.create(ROUTER, self.id, self.arn(self.id), body, status="Alive")
            except AlreadyExists:
                self.store.update(ROUTER, self.id, body=body)
            self.registered = True
        elif self.store.update(ROUTER, self.id, body=body) is None:
            # Deleted as dead by another router (this one was stalled for ten leases): register again.
            self.registered = False
            self.beat(now)
            return
        self._forget_dead(now)

    def _forget_dead(self, now: float) -> None:
        for row in self.store.list(ROUTER):
            silent = now - float(row.body.get("LastHeartbeat") or 0)
            if row.name != self.id and silent > FORGET_AFTER_LEASES * self.lease:
                self.store.delete(ROUTER, row.name)
                log.info("forgot router %s (%s, pid %s): no heartbeat for %.0f s", row.name, row.body.get("Url"),
                         row.body.get("Pid"), silent)

    def alive(self, now: float | None = None) -> set[str]:
        """The ids of the routers whose heartbeat is within the lease (always this one)."""
        if self.single:
            return {self.id}
        now = time.time() if now is None else now
        ids = {row.name for row in self.store.list(ROUTER)
               if now - float(row.body.get("LastHeartbeat") or 0) <= self.lease}
        return ids | {self.id}

    def describe(self) -> list[dict[str, Any]]:
        """Every router's row (alive or not yet forgotten), for the native API and the docs' examples."""
        now = time.time()
        return [dict(row.body, Alive=now - float(row.body.get("LastHeartbeat") or 0) <= self.lease)
                for row in self.store.list(ROUTER)]

    def leave(self) -> None:
        """On a clean stop: the row goes, so what this router owned is settled at once, not after a lease."""
        try:
            self.store.delete(ROUTER, self.id)
        except Exception:
            log.exception("could not remove this router's heartbeat row")
        self.registered = False
