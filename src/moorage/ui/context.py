"""What every dashboard page is handed: the control plane, the metrics, and who is signed in.

``api/app.py`` builds one ``UiContext`` from the parts it already holds and hands it to
``ui.app.build_ui``; the ui layer never imports the doors, so the key lookups come in as callables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from moorage.control.context import Context
from moorage.control.endpoints import Endpoints
from moorage.metrics.service import MetricsService

if TYPE_CHECKING:
    from moorage.control.inference_experiments import InferenceExperiments
    from moorage.control.monitoring_scheduler import MonitoringScheduler
    from moorage.control.routing_experiments import RoutingExperiments
    from moorage.control.transform_jobs import TransformJobs

ADMIN, DEPLOYER, INVOKER, VIEWER = "admin", "deployer", "invoker", "viewer"


@dataclass(frozen=True)
class Principal:
    """A signed-in access key: its id, its role, and the endpoints it is limited to (None: every one)."""

    key_id: str
    role: str
    endpoints: tuple[str, ...] | None = None

    def sees(self, endpoint: str) -> bool:
        """Whether this key may see ``endpoint`` (a key limited to endpoints sees only those)."""
        return self.endpoints is None or endpoint in self.endpoints


@dataclass
class UiContext:
    ctx: Context  # settings, the store, the live routes
    endpoints: Endpoints
    metrics: MetricsService  # .store: the MetricStore; .alarms: the AlarmService
    # (access key id, secret) -> the key, or None when the pair is wrong: the login's check.
    authenticate: Callable[[str, str], Principal | None]
    # access key id -> the key as it is now, or None when revoked: every request's check of its session.
    lookup: Callable[[str], Principal | None]
    routing_experiments: RoutingExperiments | None = None
    experiments: InferenceExperiments | None = None
    monitoring: MonitoringScheduler | None = None
    transform_jobs: TransformJobs | None = None
