"""Settling work cut off by a router that is gone: the controller leader's sweep.

Work that runs on one router records that router's id (``OWNER`` in the row's body, control/routers.py):
transform, processing, compilation and edge-packaging jobs (on the router their Create call reached),
endpoint updates (likewise), monitoring executions and asynchronous requests (on the leader). When the
router dies, its rows stay InProgress/Updating/Running; the leader settles them, on gaining leadership
and then every ``MOORAGE_LEADER_CHECK_SECONDS``, but only those whose router is not alive, so a
starting router never settles what a live one is doing:

- jobs end Failed with their kind's restart reason (Stopping ones Stopped), as after a restart;
- an endpoint update ends InService on the config the row still names, saying the update was rolled
  back (the other routers' fleets never switched; a change of desired weights or counts already stored
  stays stored, and every router converges on it);
- monitoring executions go back to Pending and run again, asynchronous requests back to Queued
  (their controllers' own sweep: ``MonitoringScheduler._adopt``, ``AsyncInference._adopt``).

With SQLite there is one server, and what the last one left is settled at start as before (``alive``
is this server alone).
"""

from __future__ import annotations

import logging
from typing import Protocol

from moorage.control.context import ENDPOINT, OWNER, Context
from moorage.control.endpoints import IN_SERVICE, ROLLING_BACK, UPDATING
from moorage.control.resources import save_changes

log = logging.getLogger("moorage.cluster")


class SettlesJobs(Protocol):
    def recover(self, alive: set[str] | None = None) -> int: ...


class Settling:
    """The leader's sweep over jobs and endpoint updates left by routers that are gone."""

    def __init__(self, ctx: Context, jobs: dict[str, SettlesJobs]):
        self.ctx = ctx
        self.jobs = jobs  # noun (for the log) -> the jobs of that kind

    def alive(self) -> set[str] | None:
        return self.ctx.alive() if self.ctx.alive is not None else None

    def settle(self) -> int:
        """One sweep; returns how many rows it settled."""
        alive = self.alive()
        settled = 0
        for noun, jobs in self.jobs.items():
            if count := jobs.recover(alive):
                log.info("%d %s(s) were cut off by a router that is gone; marked ended", count, noun)
                settled += count
        settled += self._endpoint_updates(alive)
        return settled

    def _endpoint_updates(self, alive: set[str] | None) -> int:
        if alive is None:
            return 0  # one server: Endpoints.recover settled them at start
        settled = 0
        for row in self.ctx.store.statuses(ENDPOINT, [UPDATING, ROLLING_BACK]):
            owner = row.body.get(OWNER)
            if owner in alive:
                continue  # a live router runs it (this one included)
            save_changes(self.ctx.store, ENDPOINT, row.name, IN_SERVICE, PendingEndpointConfigName=None,
                         PendingDeploymentSummary=None, **{OWNER: None},
                         FailureReason="Update rolled back: the router running it stopped before the update finished.")
            log.warning("endpoint %s: its update was cut off (router %s is gone); back InService on %s", row.name,
                        owner or "unknown", row.body.get("EndpointConfigName"))
            settled += 1
        return settled
