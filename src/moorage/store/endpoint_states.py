"""A cheap read of what every endpoint should be serving, for routers that follow the store.

Each router of a cluster polls this every MOORAGE_CLUSTER_SYNC_SECONDS (``control/cluster_sync.py``),
so it reads only what decides the data plane: each endpoint row's name, status and EndpointConfigName
(one JSON field, not the whole document), and each variant's desired weight and instance count (not
its state document, which a routing experiment rewrites with every reward). Two small SELECTs in one
transaction; no schema of its own.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select

from moorage.store.metadata import MetadataStore, desired_variants, resources

ENDPOINT = "endpoint"  # the resource kind endpoints are stored under (control.context.ENDPOINT)

# (variant, weight, instance count), in config order: what a fleet converges on.
DesiredVector = tuple[tuple[str, float, int], ...]


@dataclass(frozen=True)
class StoredEndpoint:
    name: str
    status: str | None
    config_name: str | None  # the config the endpoint serves (an update in flight still names the old one)
    desired: DesiredVector


def read_endpoint_states(store: MetadataStore) -> dict[str, StoredEndpoint]:
    """Every endpoint's status, serving config and desired weights and counts, by name."""
    rows = select(resources.c.name, resources.c.status,
                  resources.c.body["EndpointConfigName"].as_string().label("config_name")
                  ).where(resources.c.kind == ENDPOINT)
    goals = select(desired_variants.c.endpoint, desired_variants.c.variant, desired_variants.c.weight,
                   desired_variants.c.instance_count).order_by(desired_variants.c.endpoint,
                                                               desired_variants.c.position)
    with store.engine.begin() as conn:
        endpoints = conn.execute(rows).all()
        desired: dict[str, list[tuple[str, float, int]]] = defaultdict(list)
        for goal in conn.execute(goals):
            desired[goal.endpoint].append((goal.variant, float(goal.weight), int(goal.instance_count)))
    return {row.name: StoredEndpoint(row.name, row.status, row.config_name, tuple(desired.get(row.name, ())))
            for row in endpoints}
