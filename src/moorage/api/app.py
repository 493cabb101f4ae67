"""The ``moorage serve`` ASGI application: every front door on one port, wired explicitly.

``POST /`` -> AWS JSON protocol services by X-Amz-Target (SageMaker.*, CloudWatch in JSON 1.0), or, with a
form body, the query protocol (CloudWatch for older botocore; STS's GetCallerIdentity);
``/service/{prefix}/operation/{Op}`` -> the same services in Smithy RPC v2 CBOR;
``/endpoints/{name}/invocations`` -> the runtime; ``/healthz`` -> liveness; ``/SendHeartbeat``,
``/GetDeployments``, ``/GetDeviceRegistration`` and the edge package/capture paths -> the device door
(``api/edge_routes.py``, the only door that takes device keys); ``/moorage/v1/...`` -> the native REST
API. The runtime path is matched first and by prefix: it is the hot one.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import time
from typing import Any

import orjson

from moorage.api.access import KeyedVerifier
from moorage.api.access_routes import access_key_routes
from moorage.api.async_runtime import AsyncRuntimeDoor
from moorage.api.edge_routes import EDGE_OPERATION_PATHS, EdgeDeviceDoor, edge_admin_routes, is_device_path
from moorage.api.experiment_routes import experiment_routes
from moorage.api.monitoring_routes import monitoring_routes
from moorage.api.native import build_native_app
from moorage.api.query_protocol import QueryFrontDoor, is_query_request
from moorage.api.responses import JSON, PENDING_BODIES, Receive, Scope, Send, respond, respond_error
from moorage.api.rpcv2_cbor import RpcV2CborFrontDoor
from moorage.api.runtime import RouteAnswers, RuntimeFrontDoor
from moorage.api.s3 import S3FrontDoor, s3_scope_in
from moorage.api.sagemaker import JsonFrontDoor, JsonProtocolService
from moorage.autoscale.controller import ScalingController
from moorage.autoscale.target_tracking import Rules
from moorage.capture import CaptureWriter
from moorage.config import Credentials, Settings
from moorage.control.access_keys import AccessKeys
from moorage.control.async_inference import AsyncInference
from moorage.control.cloudwatch import CloudWatch
from moorage.control.cluster_sync import ClusterSync
from moorage.control.compilation_jobs import CompilationJobs
from moorage.control.context import Context
from moorage.control.edge_deployments import EdgeDeployments
from moorage.control.edge_devices import DeviceKeys
from moorage.control.edge_fleets import EdgeFleets
from moorage.control.endpoint_configs import EndpointConfigs
from moorage.control.endpoints import Endpoints
from moorage.control.identity import SecurityTokenService
from moorage.control.inference_experiments import InferenceExperiments
from moorage.control.leadership import Leadership
from moorage.control.logs import Logs
from moorage.control.models import Models
from moorage.control.monitoring import Monitoring
from moorage.control.monitoring_scheduler import MonitoringScheduler
from moorage.control.processing_jobs import ProcessingJobs
from moorage.control.routers import Routers
from moorage.control.routing_experiments import RoutingExperiments
from moorage.control.scaling import Scaling
from moorage.control.settling import Settling
from moorage.control.tags import Tags
from moorage.control.transform_jobs import TransformJobs
from moorage.metrics.service import MetricsService
from moorage.serving.launchers.ray_instance import RayLauncher
from moorage.serving.route_table import RouteTable
from moorage.store.artifacts import ArtifactStore, model_data_urls
from moorage.store.locations import export_object_store
from moorage.store.metadata import MetadataStore
from moorage.store.objects import ObjectStore
from moorage.ui.app import build_ui
from moorage.ui.context import Principal as UiPrincipal
from moorage.ui.context import UiContext

log = logging.getLogger("moorage.server")
# The classic text format every Prometheus version parses.
PROMETHEUS_TEXT = b"text/plain; version=0.0.4; charset=utf-8"
ACTOR_SWEEP_S = 15.0  # how often the leader looks for shared instance actors no fleet uses (cluster mode)


def ray_launcher(settings: Settings, store: MetadataStore) -> RayLauncher | None:
    """Cluster mode's launcher when a Ray cluster is named (--ray, MOORAGE_RAY_ADDRESS), else None (local)."""
    address = settings.cluster.ray_address
    if not address:
        return None
    # Over a database other routers may share, a fleet's actors are shared by all of them (the leader's).
    return RayLauncher(address, settings.cluster.ray_namespace, shared=store.shared)


class MoorageApp:
    def __init__(self, settings: Settings, credentials: list[Credentials]):
        self.settings = settings
        PENDING_BODIES.limit = settings.server.max_pending_body_bytes
        secrets = {c.access_key_id: c.secret_access_key for c in credentials}
        # The admin key and, once the store is open, the keys made with `moorage keys` (api/access.py).
        self.verifier = KeyedVerifier(secrets, account_id=settings.account_id, region=settings.region)
        # Before anything starts a process: s3:// is the same store here and in every child.
        export_object_store(settings.objects.backend, settings.objects_dir)
        objects = ObjectStore(settings.objects_dir).ensure() if settings.objects.backend == "local" else None
        if objects is not None:
            objects.clean_stale()
        self.s3_door = S3FrontDoor(self.verifier, objects)
        settings.home.mkdir(parents=True, exist_ok=True)
        assert settings.database_url is not None
        self.store = MetadataStore(settings.database_url)
        artifacts = ArtifactStore(settings.models_dir, max_expansion=settings.instances.max_archive_expansion,
                                  max_bytes=settings.instances.max_archive_bytes)
        self.routes = RouteTable(settings.logs_dir, shadow=settings.shadow, materialize=artifacts.materialize,
                                 invocation_timeout=settings.instances.invocation_timeout,
                                 launcher=ray_launcher(settings, self.store))
        self.ctx = Context(settings, self.store, artifacts, self.routes)
        # This router among those sharing the store (a heartbeat row; control/routers.py): work it starts
        # names it, and only work whose router is gone is settled by the leader.
        self._next_sweep = 0.0
        self.routers = Routers(settings, self.store)
        self.ctx.router_id = self.routers.id
        if not self.routers.single:
            self.ctx.alive = self.routers.alive
        self.access_keys = self.verifier.keys = AccessKeys(self.ctx)
        # Before any route is built: the recorder joins routes.observers, which every route gets.
        self.metrics = self.ctx.metrics = MetricsService(settings, self.store, self.routes)
        self.capture = CaptureWriter(settings.capture)
        self.metrics.watch_capture(self.capture.stats_by_variant)
        self.routing_experiments = RoutingExperiments(self.ctx)
        self.endpoints = Endpoints(self.ctx, capture=self.capture, experiments=self.routing_experiments)
        # Every router, leader or not, follows the endpoints other routers change (a shared database only).
        self.cluster_sync = ClusterSync(self.endpoints)
        self.autoscaler = ScalingController(
            self.ctx, self.endpoints, self.metrics, period=max(1, round(settings.metrics.period)),
            rules=Rules(scale_out_datapoints=settings.autoscale.scale_out_datapoints,
                        scale_in_datapoints=settings.autoscale.scale_in_datapoints))
        self.transform_jobs = TransformJobs(self.ctx)
        self.monitoring = MonitoringScheduler(self.ctx)
        self.processing_jobs = ProcessingJobs(self.ctx, self.monitoring)
        # Edge fleets: device keys open only the device door (edge_door), which knows them and the admin key.
        self.device_keys = DeviceKeys(self.ctx)
        self.edge_deployments = EdgeDeployments(self.ctx)
        self.edge_fleets = EdgeFleets(self.ctx, self.device_keys, self.edge_deployments)
        self.edge_door = EdgeDeviceDoor(secrets, self.device_keys, self.edge_fleets, self.edge_deployments,
                                        region=settings.region)
        self.compilation_jobs = CompilationJobs(self.ctx)
        self.experiments = InferenceExperiments(self.ctx, self.endpoints)
        # The controllers run on one router, the leader (control/leadership.py; with SQLite, this server):
        # _lead starts them, _step_down stops them; alarms and experiment looks wait for it too.
        self.settling = Settling(self.ctx, {"transform job": self.transform_jobs,
                                            "processing job": self.processing_jobs,
                                            "compilation/packaging job": self.compilation_jobs})
        self.leadership = Leadership(settings.database_url, settings.cluster.leader_check_interval,
                                     on_lead=self._lead, on_step_down=self._step_down,
                                     while_leading=self._while_leading, router_id=self.routers.id)
        self.metrics.evaluate_alarms = self.routing_experiments.leading = False
        sagemaker = JsonProtocolService("sagemaker", "SageMaker", [
            Models(self.ctx), EndpointConfigs(self.ctx), self.endpoints, Tags(self.ctx), self.transform_jobs,
            Monitoring(self.ctx, self.monitoring), self.experiments, self.processing_jobs, self.edge_fleets,
            self.compilation_jobs])
        autoscaling = JsonProtocolService("application-autoscaling", "AnyScaleFrontendService", [Scaling(self.ctx)])
        cloudwatch = JsonProtocolService("cloudwatch", "GraniteServiceVersion20100801", [CloudWatch(self.ctx)])
        logs = JsonProtocolService("logs", "Logs_20140328", [Logs(self.ctx)])
        self.json_door = JsonFrontDoor(self.verifier, [sagemaker, autoscaling, cloudwatch, logs])
        # STS speaks only the query protocol; its target prefix is never used.
        sts = JsonProtocolService("sts", "AWSSecurityTokenServiceV20110615", [SecurityTokenService(self.ctx)])
        self.query_door = QueryFrontDoor(self.verifier, [cloudwatch, sts])
        self.cbor_door = RpcV2CborFrontDoor(self.verifier, [cloudwatch])
        self.async_inference = AsyncInference(self.ctx)
        self.invocation_answers = RouteAnswers(self.routes, self.store, settings.account_id)
        self.runtime_door = RuntimeFrontDoor(self.verifier, self.invocation_answers,
                                             async_door=AsyncRuntimeDoor(self.verifier, self.async_inference))
        self.native = build_native_app(self.ctx, self.verifier, self.transform_jobs,
                                       [*monitoring_routes(self.ctx, self.monitoring, self.routing_experiments),
                                        *experiment_routes(self.routing_experiments),
                                        *edge_admin_routes(self.edge_fleets, self.device_keys, self.edge_deployments),
                                        *access_key_routes(self.access_keys, list(secrets))])
        # The dashboard at /ui (ui/): it signs in with the same keys, looked up here (ui never imports api).
        self._admin_secrets = secrets
        self.ui = build_ui(UiContext(
            self.ctx, self.endpoints, self.metrics, authenticate=self._ui_authenticate, lookup=self._ui_lookup,
            routing_experiments=self.routing_experiments, experiments=self.experiments, monitoring=self.monitoring,
            transform_jobs=self.transform_jobs))

    def _ui_lookup(self, key_id: str) -> UiPrincipal | None:
        if key_id in self._admin_secrets:
            return UiPrincipal(key_id, "admin")
        key = self.access_keys.get(key_id)
        return UiPrincipal(key.access_key_id, key.role, key.endpoints) if key is not None else None

    def _ui_authenticate(self, key_id: str, secret: str) -> UiPrincipal | None:
        key = self.access_keys.get(key_id)
        expected = self._admin_secrets.get(key_id) or (key.secret_access_key if key is not None else None)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            return None
        return self._ui_lookup(key_id)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith("/endpoints/"):
                await self.runtime_door(scope, receive, send)
            elif s3_scope_in(scope):  # signed for s3: the S3 API, path-style (/BUCKET/KEY)
                await self.s3_door(scope, receive, send)
            elif path == "/":
                if scope["method"] == "POST":
                    if is_query_request(scope):
                        await self.query_door(scope, receive, send)
                    else:
                        await self.json_door(scope, receive, send)
                else:
                    await respond(send, 200, orjson.dumps({"service": "moorage", "healthz": "/healthz"}),
                                  [(b"content-type", JSON)])
            elif path == "/healthz":
                await respond(send, 200, b'{"status":"ok"}', [(b"content-type", JSON)])
            elif path == "/metrics":
                # Unauthenticated, as Prometheus scrapes: counts and latencies, no payloads.
                await respond(send, 200, self.metrics.prometheus.render(), [(b"content-type", PROMETHEUS_TEXT)])
            elif path.startswith("/service/"):
                await self.cbor_door(scope, receive, send)
            elif path in EDGE_OPERATION_PATHS or is_device_path(path):
                await self.edge_door(scope, receive, send)
            elif path.startswith("/moorage/"):
                await self.native(scope, receive, send)
            elif path == "/ui" or path.startswith("/ui/"):
                await self.ui(scope, receive, send)
            else:
                await respond_error(send, "UnknownOperationException", f"No route for {path}.", 404, JSON)
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            # No route speaks WebSocket: refuse the upgrade (403) quietly, not as an application error, and
            # in the AWS JSON error shape where the server lets the app write the refusal's body.
            if "websocket.http.response" in scope.get("extensions", {}):
                body = orjson.dumps({"__type": "UnknownOperationException",
                                     "message": f"No WebSocket API at {scope['path']}: moorage's APIs are HTTP."})
                await send({"type": "websocket.http.response.start", "status": 403,
                            "headers": [(b"content-type", JSON), (b"content-length", str(len(body)).encode()),
                                        (b"x-amzn-errortype", b"UnknownOperationException")]})
                await send({"type": "websocket.http.response.body", "body": body})
            else:
                await send({"type": "websocket.close", "code": 1008})

    # The controllers: only on the router that leads (control/leadership.py) --------------------------
    async def _lead(self) -> None:
        self.metrics.evaluate_alarms = self.routing_experiments.leading = True
        if isinstance(self.routes.launcher, RayLauncher):
            self.routes.launcher.leading = True  # shared instance actors: created, replaced, retired here
        await asyncio.to_thread(self.settling.settle)  # jobs and updates cut off by routers that are gone
        if self.ctx.alive is not None:
            self.endpoints.settle_cut_off(self.ctx.alive())  # creations and deletions likewise
        self.monitoring.start()  # due schedules fire; executions nobody runs run again
        self.experiments.start()  # due schedules start, passed EndTimes end
        self.autoscaler.start()
        self.async_inference.lead()  # accepted requests queue again; they wait for instances

    async def _step_down(self) -> None:
        self.metrics.evaluate_alarms = self.routing_experiments.leading = False
        if isinstance(self.routes.launcher, RayLauncher) and self.routes.launcher.shared:
            self.routes.launcher.leading = False
        await self.autoscaler.stop()
        await self.experiments.stop()
        await self.monitoring.stop()  # running executions go back to Pending, for the next leader
        await self.async_inference.step_down()  # likewise running requests, to Queued

    async def _while_leading(self) -> None:
        if self.ctx.alive is not None:  # several routers: one of them may have died since the last look
            await asyncio.to_thread(self.settling.settle)
            self.endpoints.settle_cut_off(self.ctx.alive())
        launcher = self.routes.launcher
        if isinstance(launcher, RayLauncher) and launcher.shared and time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + ACTOR_SWEEP_S
            await asyncio.to_thread(launcher.sweep)  # shared actors no fleet uses any more

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    if isinstance(self.routes.launcher, RayLauncher):
                        await asyncio.to_thread(self.routes.launcher.connect)  # before any instance is placed
                        log.info("cluster mode: endpoint instances run on the Ray cluster at %s",
                                 self.routes.launcher.address)
                    self.routers.start()  # the heartbeat, before any work names this router
                    self.capture.start()
                    self.metrics.start()
                    resumed = self.endpoints.recover()
                    self.cluster_sync.start()
                    self.async_inference.start()  # the ticker; the leader works the queues
                    if resumed:
                        log.info("bringing back %d endpoint(s) from the store", resumed)
                    self.routing_experiments.start()  # assignments stored here; the leader looks
                    await self.leadership.start()  # leads now if no router does (SQLite: always)
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                # Model extractions no model needs any more (and half-done ones) go, off the startup
                # path: describing an s3:// URL is a request.
                self._cache_pruning = asyncio.ensure_future(asyncio.to_thread(
                    self.ctx.artifacts.prune, [u for m in self.endpoints.models_in_use() for u in model_data_urls(m)],
                    staging=True, before=time.time()))
                # Everything loaded so far (botocore's service models, routes, modules) lives as long as
                # the server: keep it out of the collector's scans, which otherwise run on the hot path.
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.leadership.stop()  # the controllers stop; executions and requests go back to wait
                await self.monitoring.stop()  # on-demand executions another router's API call started here
                await self.routing_experiments.stop()
                await self.async_inference.stop()
                await self.cluster_sync.stop()
                await self.endpoints.shutdown()
                await self.transform_jobs.shutdown()
                await self.processing_jobs.shutdown()
                await self.compilation_jobs.shutdown()
                launcher = self.routes.launcher
                if isinstance(launcher, RayLauncher) and launcher.shared and self.ctx.alive is not None:
                    # Other routers serve on with the shared actors: leave them running (the next leader's).
                    launcher.detaching = bool(self.ctx.alive() - {self.ctx.router_id})
                await self.routes.shutdown()
                await self.capture.shutdown()  # after the routes: every answered invocation is written
                await self.metrics.stop()  # likewise: the last partial period is written, alarms' webhooks sent
                await self.routers.stop()  # last: what it ran is settled by the next leader at once
                self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
