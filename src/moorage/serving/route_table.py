"""The data plane's route table: endpoint name -> its live route.

The control plane asks it to build, start, publish and retire routes; the runtime API asks it for
the route of an endpoint name on every invocation (a dict lookup, no database).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from moorage.serving.instance import InstanceStartError
from moorage.serving.invocation_events import InvocationObserver
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers.local import LocalLauncher
from moorage.serving.pool import InstancePool
from moorage.serving.router import EndpointRoute, VariantRoute
from moorage.serving.snapshot import EndpointSnapshot, snapshot_of

log = logging.getLogger("moorage.route_table")


@dataclass(frozen=True)
class VariantPlan:
    name: str
    weight: float
    instance_count: int
    launch: LaunchSpec


class DeployError(Exception):
    def __init__(self, variant: str, reason: str):
        super().__init__(f"variant {variant}: {reason}")
        self.variant = variant
        self.reason = reason


class RouteTable:
    def __init__(self, logs_dir: Path, start_timeout: float = 120.0, invocation_timeout: float = 60.0):
        self.logs_dir = logs_dir
        self.start_timeout = start_timeout
        self.invocation_timeout = invocation_timeout
        # Unix socket paths are limited to ~108 bytes, so sockets live in a short /tmp directory
        # rather than under a home that may be deeply nested.
        self.socket_dir = Path(tempfile.mkdtemp(prefix="moorage-"))
        # Endpoints and local transform jobs start their instances through this one launcher.
        self.launcher = LocalLauncher(self.socket_dir)
        self._routes: dict[str, EndpointRoute] = {}
        # Observers of every endpoint (metrics); per-endpoint ones (data capture) are added to a route
        # by whoever builds it.
        self.observers: list[InvocationObserver] = []

    def get(self, endpoint: str) -> EndpointRoute | None:
        return self._routes.get(endpoint)

    def snapshot(self, endpoint: str) -> EndpointSnapshot | None:
        """What serves ``endpoint`` now, or None when nothing is published for it."""
        route = self._routes.get(endpoint)
        return None if route is None else snapshot_of(route)

    def snapshots(self) -> list[EndpointSnapshot]:
        return [snapshot_of(route) for route in list(self._routes.values())]

    def build(self, endpoint: str, plans: list[VariantPlan]) -> EndpointRoute:
        variants = [
            VariantRoute(plan.name, plan.weight,
                         InstancePool(endpoint, plan.name, plan.launch, self.launcher,
                                      self.logs_dir / endpoint / plan.name, self.start_timeout))
            for plan in plans
        ]
        route = EndpointRoute(endpoint, variants, invocation_timeout=self.invocation_timeout)
        route.observers.extend(self.observers)
        return route

    async def start(self, route: EndpointRoute, counts: dict[str, int]) -> None:
        """Start every variant's instances; on any failure stop them all and raise DeployError."""
        variants = list(route.variants.values())
        results = await asyncio.gather(*(v.pool.start(counts[v.name]) for v in variants), return_exceptions=True)
        failed = [(v, r) for v, r in zip(variants, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await self.retire(route)
            variant, error = failed[0]
            reason = str(error) if isinstance(error, InstanceStartError) else f"{type(error).__name__}: {error}"
            raise DeployError(variant.name, reason)

    def publish(self, route: EndpointRoute) -> EndpointRoute | None:
        """Make ``route`` the one serving its endpoint; returns the route it replaced, if any."""
        old = self._routes.get(route.name)
        self._routes[route.name] = route
        return old if old is not route else None

    def unpublish(self, endpoint: str) -> EndpointRoute | None:
        return self._routes.pop(endpoint, None)

    async def retire(self, route: EndpointRoute, drain_timeout: float = 30.0) -> None:
        await asyncio.gather(*(v.pool.close(drain_timeout) for v in route.variants.values()),
                             return_exceptions=True)

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        routes = list(self._routes.values())
        self._routes.clear()
        count = sum(len(v.pool.instances) for r in routes for v in r.variants.values())
        if count:
            log.info("stopping %d instance(s) of %d endpoint(s)", count, len(routes))
        await asyncio.gather(*(self.retire(r, drain_timeout) for r in routes), return_exceptions=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
