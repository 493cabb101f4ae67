"""What every control-plane resource handler is given: settings, the store, artifacts, the live routes.

Also the resource kinds the store keys rows by, and SageMaker's ARN for each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moorage.config import Settings
from moorage.serving.route_table import RouteTable
from moorage.store.artifacts import ArtifactStore
from moorage.store.metadata import MetadataStore

if TYPE_CHECKING:
    from moorage.metrics.service import MetricsService

MODEL = "model"
ENDPOINT_CONFIG = "endpoint-config"
ENDPOINT = "endpoint"
OWNER = "OwnerRouter"  # the body field naming the router that runs a job, an execution or a request


@dataclass
class Context:
    settings: Settings
    store: MetadataStore
    artifacts: ArtifactStore
    routes: RouteTable
    # Time series, business metrics and alarms (``ctx.metrics.statistics(...)``); set by the app.
    metrics: MetricsService | None = None
    # This router's id (control/routers.py), recorded on the work it starts (OWNER in a job's body), so
    # that only work whose router died is settled when several routers share the store; set by the app.
    router_id: str | None = None
    # The ids of the routers alive now, where several share the store (None with SQLite: this server
    # alone, so whatever another id left running was cut off by the last stop); set by the app.
    alive: Callable[[], set[str]] | None = None

    def arn(self, kind: str, name: str) -> str:
        # SageMaker lower-cases resource names inside ARNs.
        return f"arn:aws:sagemaker:{self.settings.region}:{self.settings.account_id}:{kind}/{name.lower()}"
