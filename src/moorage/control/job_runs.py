"""The background runs of SageMaker's jobs (transform jobs, processing jobs): one asyncio task per job,
StopX by cancelling it, and what a stop or a restart leaves in the store.

A job's own module runs the work and records how it ended; this module owns what every kind of job
does alike: the task table, telling a stop asked for (Stopped) from a server going away (Failed, with
the kind's restart reason), a task cancelled before its first step, and settling what a router that
is gone left InProgress or Stopping.

A job runs on the router whose API call created it; its row names that router (``OWNER``, written with
the row). The controller leader settles only the jobs whose router is not alive (``settle_cut_off``,
control/settling.py), so with several routers on one database a starting router never fails a job
another one is running; with SQLite, the one server's earlier runs are all gone, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

from moorage.control.context import OWNER, Context
from moorage.control.resources import save_changes
from moorage.errors import ValidationException

IN_PROGRESS, STOPPING, STOPPED, FAILED = "InProgress", "Stopping", "Stopped", "Failed"
STOP_POLL_S = 1.0  # how often a router looks for StopX calls other routers took for its jobs


class JobRuns:
    """The running jobs of one kind (``kind`` in the store; ``noun`` in messages; ``end_field`` the
    description's end time, e.g. ``TransformEndTime``)."""

    def __init__(self, ctx: Context, kind: str, noun: str, end_field: str, restart_reason: str,
                 cleanup: Callable[[str], None] | None = None):
        self.ctx = ctx
        self.kind = kind
        self.noun = noun
        self.end_field = end_field
        self.restart_reason = restart_reason
        self.cleanup = cleanup  # what a job leaves on disk while it runs, removed when a restart settles it
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping: set[str] = set()
        self._watcher: asyncio.Task[None] | None = None

    def _save(self, name: str, status: str, **changes: Any) -> None:
        save_changes(self.ctx.store, self.kind, name, status, **{self.end_field: time.time(), **changes})

    def owned(self, body: dict[str, Any]) -> dict[str, Any]:
        """A new job's body, naming this router as the one that runs it."""
        return {**body, OWNER: self.ctx.router_id} if self.ctx.router_id else body

    def start(self, name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``run()`` as the job ``name``'s task (from a request handler, on the server's loop)."""
        loop = asyncio.get_running_loop()
        task = loop.create_task(run())
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._settle(name, t))
        if self.ctx.alive is not None and (self._watcher is None or self._watcher.done()):
            self._watcher = loop.create_task(self._watch_stops())

    async def _watch_stops(self) -> None:
        """Among several routers: a StopX that reached another router left the row Stopping; the job's own
        router sees it here (within a second) and stops the job as a stop asked of it would."""
        while self._tasks:
            await asyncio.sleep(STOP_POLL_S)
            for name in list(self._tasks):
                row = await asyncio.to_thread(self.ctx.store.get, self.kind, name)
                if row is not None and row.status == STOPPING and name not in self._stopping:
                    self._stopping.add(name)
                    task = self._tasks.get(name)
                    if task is not None and not task.done():
                        task.cancel()

    def _settle(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task:
            self._tasks.pop(name, None)
        if task.cancelled():
            # Cancelled before its first step: the run never got to record how the job ended.
            stopped = name in self._stopping
            self._stopping.discard(name)
            self._save(name, STOPPED if stopped else FAILED, FailureReason=None if stopped else self.restart_reason)

    def cancelled_by_stop(self, name: str) -> bool:
        """In a run's ``except CancelledError``: True when StopX asked for it, False when the server is
        stopping (the job then fails with ``restart_reason``)."""
        return name in self._stopping

    def finished(self, name: str) -> None:
        """In a run's ``finally``: the job no longer runs, whatever asked it to stop."""
        self._stopping.discard(name)

    def stop(self, name: str, status: str, owner: str | None = None) -> None:
        """StopX of a job whose row has ``status``: idempotent while it stops, refused once it ended.
        ``owner``: the router running it; another live router's job is left Stopping for it to stop."""
        if status in (STOPPING, STOPPED):
            return
        if status != IN_PROGRESS:
            raise ValidationException(f"The {self.noun} {name} is {status}; only an InProgress job can be stopped.")
        self.ctx.store.update(self.kind, name, status=STOPPING)
        task = self._tasks.get(name)
        if task is not None and not task.done():
            self._stopping.add(name)
            task.cancel()
        elif (self.ctx.alive is not None and owner is not None and owner != self.ctx.router_id
              and owner in self.ctx.alive()):
            return  # its router sees Stopping and stops it (``_watch_stops``)
        else:
            self._save(name, STOPPED)

    def recover(self, alive: set[str] | None = None) -> int:
        """Settle what a stopped server left running (Stopping jobs end Stopped, the others Failed): every
        job, or, given ``alive``, those of routers not in it; returns how many."""
        return self.settle_cut_off(alive)

    def settle_cut_off(self, alive: set[str] | None) -> int:
        """Settle the jobs left InProgress or Stopping by a router not in ``alive`` (None: any router),
        never one running here; returns how many."""
        rows = [row for row in self.ctx.store.statuses(self.kind, [IN_PROGRESS, STOPPING])
                if row.name not in self._tasks and (alive is None or row.body.get(OWNER) not in alive)]
        for row in rows:
            if row.status == STOPPING:
                self._save(row.name, STOPPED)
            else:
                self._save(row.name, FAILED, FailureReason=self.restart_reason)
            if self.cleanup is not None:
                self.cleanup(row.name)
        return len(rows)

    async def shutdown(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
