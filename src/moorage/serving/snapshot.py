"""The one read model of what is live: per endpoint, per variant, its weight, counts and instances.

Metrics, the native API, DescribeEndpoint and the autoscaler read this instead of walking routes,
pools and instances themselves. A snapshot is a plain frozen copy, safe to keep across awaits and
to hand to another thread; what the endpoint was *told* (desired weight and count) is the store's,
and readers put the two side by side.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from moorage.serving.instance import InstanceState
from moorage.serving.pool import InstancePool
from moorage.serving.router import EndpointRoute
from moorage.serving.shadow import ShadowMirror


@dataclass(frozen=True, slots=True)
class InstanceSnapshot:
    instance_id: str
    pid: int | None
    state: InstanceState
    outstanding: int
    log_path: str
    setup_seconds: float | None
    node: str | None = None  # the Ray node it runs on (cluster mode); None: this machine
    address: str | None = None  # HOST:PORT it is reached at over TCP (cluster mode)
    waiting: str | None = None  # why it is not placed yet (cluster mode: no node has room now)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "InstanceId": self.instance_id, "Pid": self.pid, "State": str(self.state), "Outstanding": self.outstanding,
            "LogPath": self.log_path, "ModelSetupSeconds": self.setup_seconds}
        if self.node is not None:
            out.update(Node=self.node, Address=self.address)
        if self.waiting is not None:
            out["Waiting"] = self.waiting
        return out


@dataclass(frozen=True, slots=True)
class VariantSnapshot:
    name: str
    current_weight: float
    in_service: int  # instances taking traffic: SageMaker's CurrentInstanceCount
    target_instance_count: int  # what the pool is converging on
    runtime: str
    instance_type: str
    restarts: int
    instances: tuple[InstanceSnapshot, ...]
    shadow: bool = False  # a ShadowProductionVariant
    shadow_stats: dict[str, object] | None = None  # what its copies did beside production (ShadowStats)
    recycled: dict[str, int] = field(default_factory=dict)  # instances replaced on purpose, by cause


@dataclass(frozen=True, slots=True)
class EndpointSnapshot:
    name: str
    fleet: int  # tells fleets apart: a new route (restart, update) is a new fleet
    variants: dict[str, VariantSnapshot]


def instances_of(pool: InstancePool) -> tuple[InstanceSnapshot, ...]:
    return tuple(InstanceSnapshot(i.id, i.pid, i.state, i.outstanding, str(i.log_path), i.setup_seconds,
                                  getattr(i, "node_id", None), getattr(i, "address", None),
                                  getattr(i, "waiting", None))
                 for i in list(pool.instances))


def snapshot_of(route: EndpointRoute) -> EndpointSnapshot:
    mirrors = {o.name: o for o in route.observers if isinstance(o, ShadowMirror)}
    variants = {}
    for variant in (*route.variants.values(), *route.shadows.values()):
        pool = variant.pool
        mirror = mirrors.get(variant.name) if variant.name in route.shadows else None
        variants[variant.name] = VariantSnapshot(
            variant.name, variant.current_weight, len(pool.ready), pool.desired, pool.launch.runtime,
            pool.launch.instance_type, pool.restarts, instances_of(pool), shadow=variant.name in route.shadows,
            shadow_stats=dict(mirror.stats.to_dict(), Backlog=mirror.backlog()) if mirror is not None else None,
            recycled=dict(getattr(pool, "recycled", {})))
    return EndpointSnapshot(route.name, id(route), variants)
