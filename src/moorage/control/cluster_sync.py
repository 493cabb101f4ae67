"""Every router's route table follows the store: what another router changes reaches this one within
MOORAGE_CLUSTER_SYNC_SECONDS (settings.cluster.sync_interval).

Several ``moorage serve`` processes (routers) share one PostgreSQL database (docs/cluster.md). The
router an API call reaches runs that change's lifecycle work (CreateEndpoint's bring-up, UpdateEndpoint's
blue/green shift, a convergence, DeleteEndpoint's tear-down) and writes the endpoint's status. Every
router reads the store on a timer (``store/endpoint_states.py``: statuses, configs, desired weights and
counts) and brings its own data plane to match, as a follower:

- an endpoint it does not serve that is Creating, InService, Updating or RollingBack: it brings the
  fleet of the config the row names up here, published first, so invocations wait for the first
  ready instance instead of failing;
- the row names another config (an update finished on another router): it builds that config's fleet,
  publishes it once its instances are up and retires the old one. The router that ran the update did
  the blue/green traffic shift and its checks (alarms, baking); a follower has nothing left to check,
  so it switches at once and shifts no traffic of its own;
- desired weights or instance counts changed: it converges its fleet on them;
- the row is gone, Deleting or Failed: it stops serving the endpoint and retires its fleet.

A follower writes nothing to the store: the statuses are the lifecycle router's. Its work runs through
``Endpoints._run``, after the work this router's own API calls queued for the endpoint, and an endpoint
with work in flight here is looked at again on the next pass rather than raced. What this router did
itself is not done twice: configs are compared with the one its live fleet was built from
(``RouteTable.config_of``), and converging on a desired state the fleet already has changes nothing.

With SQLite there is one server and nobody to follow: the loop does not run.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from dataclasses import dataclass

from moorage.control.context import ENDPOINT
from moorage.control.endpoints import (
    CREATING,
    DELETING,
    FAILED,
    IN_SERVICE,
    ROLLING_BACK,
    UPDATING,
    Endpoints,
)
from moorage.store.endpoint_states import DesiredVector, StoredEndpoint, read_endpoint_states

log = logging.getLogger("moorage.cluster_sync")

SERVED = (CREATING, IN_SERVICE, UPDATING, ROLLING_BACK)  # a fleet serves these (Updating: the old config's)
NOT_SERVED = (DELETING, FAILED)  # a row in these, or no row, has no fleet anywhere
# A fleet that would not come up on this router (a model this machine cannot load, no room) is tried
# again after this long, or at once when the row names another config: not on every pass.
RETRY_SECONDS = 30.0


class Action(enum.Enum):
    NOTHING = "nothing"
    BRING_UP = "bring up"  # nothing serves it here: build the row's config, published first
    REPLACE = "replace"  # the row names another config: build it, then switch and retire the old fleet
    CONVERGE = "converge"  # desired weights or counts changed
    RETIRE = "retire"  # gone, Deleting or Failed: stop serving it here


@dataclass(frozen=True)
class Here:
    """What this router has of one endpoint."""

    config_name: str | None  # the config its fleet of record was built from; None: no fleet here
    busy: bool = False  # lifecycle work for the endpoint is queued or running here
    following: bool = False  # ... and it is this loop's (a follower's bring-up), not an API call's


def decide(stored: StoredEndpoint | None, here: Here, applied: DesiredVector | None) -> Action:
    """What this router does about one endpoint, given the store's row (None: no row), what it serves,
    and the desired state it last converged on for it (None: none yet)."""
    if stored is None or stored.status in NOT_SERVED:
        if here.busy:
            # Its own tear-down (DeleteEndpoint reached this router) or a failing bring-up finishes by
            # itself; a follower's bring-up of an endpoint that is going away is cut short.
            return Action.RETIRE if here.following else Action.NOTHING
        return Action.RETIRE if here.config_name is not None else Action.NOTHING
    if here.busy or stored.status not in SERVED or not stored.config_name:
        return Action.NOTHING
    if here.config_name is None:
        return Action.BRING_UP
    if here.config_name != stored.config_name:
        return Action.REPLACE
    if stored.desired != applied:
        return Action.CONVERGE
    return Action.NOTHING


class ClusterSync:
    """The loop: read the store, decide per endpoint, queue the work through ``Endpoints._run``."""

    def __init__(self, endpoints: Endpoints):
        self.endpoints = endpoints
        self.ctx = endpoints.ctx
        self.interval = self.ctx.settings.cluster.sync_interval
        self.enabled = self.ctx.store.shared
        self._task: asyncio.Task[None] | None = None
        self._known: set[str] = set()  # endpoints the last pass read: one gone since is retired here
        self._applied: dict[str, DesiredVector] = {}  # the desired state last converged on, per endpoint
        self._following: dict[str, asyncio.Task[None]] = {}  # this loop's work in flight, per endpoint
        self._failed: dict[str, tuple[str, float]] = {}  # endpoint -> (config that did not come up, retry at)
        self._store_down_since: float | None = None

    def start(self) -> None:
        if not self.enabled or self._task is not None:
            return
        log.info("following the shared store every %g s for changes made through other routers", self.interval)
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            try:
                await self.sync_once()
            except Exception as exc:
                # The store is out of reach: keep serving what is live here and say so once, not every pass.
                if self._store_down_since is None:
                    self._store_down_since = time.monotonic()
                    log.warning("cannot read the shared store (%s: %s); serving what this router has until it "
                                "answers again", type(exc).__name__, exc)
            else:
                if self._store_down_since is not None:
                    log.info("the shared store answers again after %.0f s", time.monotonic() - self._store_down_since)
                    self._store_down_since = None
            await asyncio.sleep(self.interval)

    async def sync_once(self) -> None:
        """One pass: read the store and queue what this router must do to serve it."""
        stored = await asyncio.to_thread(read_endpoint_states, self.ctx.store)
        now = time.monotonic()
        for name in sorted(set(stored) | self._known | set(self._following)):
            row = stored.get(name)
            action = decide(row, self._here(name), self._applied.get(name))
            if action in (Action.BRING_UP, Action.REPLACE) and row is not None:
                failed = self._failed.get(name)
                if failed is not None and failed[0] == row.config_name and now < failed[1]:
                    continue
            self._act(name, action, row)
        self._known = set(stored)

    def _here(self, name: str) -> Here:
        mine = self._following.get(name)
        if mine is not None and mine.done():
            del self._following[name]
            mine = None
        busy = name in self.endpoints._tasks  # the per-endpoint queue drops a task once it is done
        return Here(self.ctx.routes.config_of(name), busy=busy, following=busy and mine is not None)

    def _act(self, name: str, action: Action, row: StoredEndpoint | None) -> None:
        if action is Action.NOTHING:
            return
        if action is Action.RETIRE:
            log.info("endpoint %s is %s: this router stops serving it", name,
                     "gone" if row is None else row.status)
            mine = self._following.pop(name, None)
            if mine is not None:
                mine.cancel()
            self._applied.pop(name, None)
            self._failed.pop(name, None)
            self.endpoints._run(name, self._stop_serving(name))
            return
        assert row is not None and row.config_name is not None
        self._applied[name] = row.desired
        if action is Action.CONVERGE:
            self._following[name] = self.endpoints._run(name, self.endpoints.converge(name, save=False))
            return
        log.info("endpoint %s: %s config %s on this router, as the store says", name,
                 "bringing up" if action is Action.BRING_UP else "switching to", row.config_name)
        self._following[name] = self.endpoints._run(
            name, self._follow(name, row.config_name, replacing=action is Action.REPLACE))

    async def _follow(self, name: str, config_name: str, *, replacing: bool) -> None:
        row = self.ctx.store.get(ENDPOINT, name)
        if row is None or row.status not in SERVED:
            return  # changed while this waited behind other work for the endpoint: the next pass sees it
        # A first fleet is published before its instances are up (invocations wait for them); a
        # replacement only once they are, the old fleet serving until then.
        await self.endpoints._bring_up(name, config_name, recovering=not replacing, follower=True)
        if self.ctx.routes.config_of(name) == config_name:
            self._failed.pop(name, None)
        else:
            row = self.ctx.store.get(ENDPOINT, name)
            if row is not None and row.status not in NOT_SERVED:
                log.warning("endpoint %s: config %s did not come up on this router; trying again in %g s", name,
                            config_name, RETRY_SECONDS)
                self._failed[name] = (config_name, time.monotonic() + RETRY_SECONDS)

    async def _stop_serving(self, name: str) -> None:
        route = self.ctx.routes.unpublish(name)
        if route is not None:
            await self.ctx.routes.retire(route)
        self.endpoints._publish_metrics(name, None)
        if self.endpoints.experiments is not None:
            self.endpoints.experiments.serving(name, None)
