"""The data plane's route table: endpoint name -> its live route.

The control plane asks it to build, start, publish and retire routes; the runtime API asks it for
the route of an endpoint name on every invocation (a dict lookup, no database).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path

from moorage.serving.instance import InstanceStartError
from moorage.serving.invocation_events import InvocationObserver
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers import Launcher
from moorage.serving.launchers.local import LocalLauncher, socket_folder
from moorage.serving.model_cache import ModelCache
from moorage.serving.multi_model_pool import Materialize, MultiModelPool
from moorage.serving.pool import InstancePool
from moorage.serving.router import EndpointRoute, VariantRoute
from moorage.serving.serverless import ServerlessPool, ServerlessSpec
from moorage.serving.shadow import ShadowMirror
from moorage.serving.snapshot import EndpointSnapshot, snapshot_of
from moorage.serving.traffic_shift import TrafficShift
from moorage.settings import ShadowSettings

log = logging.getLogger("moorage.route_table")


@dataclass(frozen=True)
class VariantPlan:
    name: str
    weight: float
    instance_count: int
    launches: tuple[LaunchSpec, ...]  # one per container: several for a serial inference pipeline
    shadow: bool = False  # a ShadowProductionVariant: gets copies of production's requests, never callers
    serverless: ServerlessSpec | None = None  # a ServerlessConfig variant: instances on demand (serverless.py)

    @property
    def launch(self) -> LaunchSpec:
        """The first container's (the variant's runtime and instance type)."""
        return self.launches[0]


class DeployError(Exception):
    def __init__(self, variant: str, reason: str):
        super().__init__(f"variant {variant}: {reason}")
        self.variant = variant
        self.reason = reason


class RouteTable:
    def __init__(self, logs_dir: Path, start_timeout: float = 120.0, invocation_timeout: float = 60.0,
                 shadow: ShadowSettings | None = None, materialize: Materialize | None = None,
                 launcher: Launcher | None = None):
        self.logs_dir = logs_dir
        # Fetches and unpacks an archive by URL: a multi-model variant's models, as they are asked for.
        self.materialize = materialize
        self.shadow = shadow or ShadowSettings()
        self.start_timeout = start_timeout
        self.invocation_timeout = invocation_timeout
        # Unix socket paths are limited to ~108 bytes, so sockets live in a short /tmp directory
        # rather than under a home that may be deeply nested.
        # Its own, marked, after reaping those of servers killed before they could clean up.
        self.socket_dir = socket_folder()
        # Processes beside the server: local transform jobs and monitoring's explainer instances start here.
        self.local_launcher = LocalLauncher(self.socket_dir)
        # Where endpoints' instances run: here, or on a Ray cluster in cluster mode (launchers/ray_instance.py).
        self.launcher: Launcher = launcher or self.local_launcher
        self._routes: dict[str, EndpointRoute | TrafficShift] = {}
        # The endpoint config each fleet was built from: a router that follows the store compares it
        # with the config the endpoint's row names (control/cluster_sync.py).
        self._config_names: weakref.WeakKeyDictionary[EndpointRoute, str] = weakref.WeakKeyDictionary()
        # Observers of every endpoint (metrics); per-endpoint ones (data capture) are added to a route
        # by whoever builds it.
        self.observers: list[InvocationObserver] = []

    def get(self, endpoint: str) -> EndpointRoute | TrafficShift | None:
        """What the runtime door invokes: the endpoint's route, or the shift between its two fleets."""
        return self._routes.get(endpoint)

    def fleet(self, endpoint: str) -> EndpointRoute | None:
        """The endpoint's fleet of record: its route, or the blue fleet while an update shifts traffic."""
        route = self._routes.get(endpoint)
        return route.blue if isinstance(route, TrafficShift) else route

    def config_of(self, endpoint: str) -> str | None:
        """The endpoint config the endpoint's fleet of record was built from; None when nothing serves it."""
        fleet = self.fleet(endpoint)
        return None if fleet is None else self._config_names.get(fleet)

    def shift(self, endpoint: str) -> TrafficShift | None:
        route = self._routes.get(endpoint)
        return route if isinstance(route, TrafficShift) else None

    def snapshot(self, endpoint: str) -> EndpointSnapshot | None:
        """What serves ``endpoint`` as its fleet of record, or None when nothing is published for it."""
        fleet = self.fleet(endpoint)
        return None if fleet is None else snapshot_of(fleet)

    def pending_snapshot(self, endpoint: str) -> EndpointSnapshot | None:
        """The green fleet of an update in flight, or None."""
        shift = self.shift(endpoint)
        return None if shift is None else snapshot_of(shift.green)

    def snapshots(self) -> list[EndpointSnapshot]:
        """Every live fleet, both of an endpoint mid-update (they share its name)."""
        out = []
        for route in list(self._routes.values()):
            fleets = (route.blue, route.green) if isinstance(route, TrafficShift) else (route,)
            out.extend(snapshot_of(fleet) for fleet in fleets)
        return out

    def model_caches(self) -> list[tuple[str, str, ModelCache]]:
        """(endpoint, variant, its model cache) of every multi-model variant serving now."""
        out = []
        for route in list(self._routes.values()):
            for fleet in ((route.blue, route.green) if isinstance(route, TrafficShift) else (route,)):
                for variant in fleet.variants.values():
                    cache = getattr(variant.pool, "cache", None)
                    if cache is not None:
                        out.append((route.name, variant.name, cache))
        return out

    def build(self, endpoint: str, plans: list[VariantPlan], config_name: str | None = None) -> EndpointRoute:
        def variant(plan: VariantPlan) -> VariantRoute:
            log_dir = self.logs_dir / endpoint / plan.name
            if plan.launch.multi_model:
                if self.materialize is None:
                    raise DeployError(plan.name, "this server cannot fetch models: no artifact store")
                return VariantRoute(plan.name, plan.weight, MultiModelPool(
                    endpoint, plan.name, plan.launch, self.launcher, log_dir, self.materialize, self.start_timeout))
            if plan.serverless is not None:
                return VariantRoute(plan.name, plan.weight, ServerlessPool(
                    endpoint, plan.name, plan.launches, self.launcher, log_dir, plan.serverless, self.start_timeout))
            return VariantRoute(plan.name, plan.weight,
                                InstancePool(endpoint, plan.name, plan.launches, self.launcher, log_dir,
                                             self.start_timeout, fleet=config_name))

        route = EndpointRoute(endpoint, [variant(p) for p in plans if not p.shadow],
                              invocation_timeout=self.invocation_timeout)
        route.observers.extend(self.observers)
        if config_name is not None:
            self._config_names[route] = config_name
        production_weight = sum(p.weight for p in plans if not p.shadow)
        for plan in (p for p in plans if p.shadow):
            # A shadow's instances yield the CPU to production's: on a shared machine its copies must
            # not slow the answers callers wait for.
            plan = dataclasses.replace(plan, launches=tuple(dataclasses.replace(launch, background=True)
                                                            for launch in plan.launches))
            shadow = route.shadows[plan.name] = variant(plan)
            route.observers.append(ShadowMirror(
                endpoint, shadow, plan.weight / production_weight if production_weight else 0.0,
                frozenset(route.variants), notify=route.notify, queue_records=self.shadow.queue_records,
                concurrency=self.shadow.concurrency, timeout=self.invocation_timeout))
        return route

    @staticmethod
    def reweigh(route: EndpointRoute) -> None:
        """The variants' ``current_weight`` changed: the chooser and the shadows' sampled shares follow."""
        route.reweigh()
        production_weight = sum(v.current_weight for v in route.variants.values())
        for observer in route.observers:
            if isinstance(observer, ShadowMirror):
                observer.reshare(production_weight)

    async def start(self, route: EndpointRoute, counts: dict[str, int]) -> None:
        """Start every variant's instances (shadows' too); on any failure stop them all and raise DeployError."""
        variants = [*route.variants.values(), *route.shadows.values()]
        results = await asyncio.gather(*(v.pool.start(counts[v.name]) for v in variants), return_exceptions=True)
        failed = [(v, r) for v, r in zip(variants, results, strict=True) if isinstance(r, BaseException)]
        if failed:
            await self.retire(route)
            variant, error = failed[0]
            reason = str(error) if isinstance(error, InstanceStartError) else f"{type(error).__name__}: {error}"
            raise DeployError(variant.name, reason)
        for observer in route.observers:
            if isinstance(observer, ShadowMirror):
                observer.start()

    def publish(self, route: EndpointRoute | TrafficShift) -> EndpointRoute | TrafficShift | None:
        """Make ``route`` the one serving its endpoint; returns what it replaced, if anything."""
        old = self._routes.get(route.name)
        self._routes[route.name] = route
        return old if old is not route else None

    def unpublish(self, endpoint: str) -> EndpointRoute | TrafficShift | None:
        return self._routes.pop(endpoint, None)

    async def retire(self, route: EndpointRoute | TrafficShift, drain_timeout: float = 30.0) -> None:
        """Drain and stop a fleet (both, for a shift) that no longer serves."""
        fleets = (route.blue, route.green) if isinstance(route, TrafficShift) else (route,)
        mirrors = [o for f in fleets for o in f.observers if isinstance(o, ShadowMirror)]
        await asyncio.gather(*(m.close() for m in mirrors), return_exceptions=True)
        await asyncio.gather(*(v.pool.close(drain_timeout) for f in fleets
                               for v in (*f.variants.values(), *f.shadows.values())), return_exceptions=True)

    async def shutdown(self, drain_timeout: float = 10.0) -> None:
        routes = list(self._routes.values())
        self._routes.clear()
        count = sum(len(v.pool.instances) for r in routes
                    for f in ((r.blue, r.green) if isinstance(r, TrafficShift) else (r,))
                    for v in (*f.variants.values(), *f.shadows.values()))
        if count:
            log.info("stopping %d instance(s) of %d endpoint(s)", count, len(routes))
        await asyncio.gather(*(self.retire(r, drain_timeout) for r in routes), return_exceptions=True)
        shutil.rmtree(self.socket_dir, ignore_errors=True)
