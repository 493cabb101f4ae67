"""Endpoints: the lifecycle state machine over the store, driving the data plane.

Creating -> InService | Failed;  InService -> Updating -> InService (a failed update leaves the old
fleet serving and says why in FailureReason);  any -> Deleting -> gone.

State lives in the store. The endpoint's row says which config serves it and where its lifecycle
is; its desired state (``MetadataStore.desired``: per variant, the weight and instance count it was
last told to have) is written first by every change (CreateEndpoint from the config's initial
values, UpdateEndpointWeightsAndCapacities, the autoscaler, a successful UpdateEndpoint), and the
data plane converges on it (``converge``). A restart therefore brings back what the endpoint was
told, not its config's initial values. Lifecycle work runs in background tasks, one at a time per
endpoint, so API calls return at once as SageMaker's do and the waiters see the transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from moorage.capture import CaptureConfig, CaptureObserver, CaptureWriter, ServedBy
from moorage.control.blue_green import BlueGreenUpdate, RolledBack, UpdateContext
from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, OWNER, Context
from moorage.control.deployment_config import DeploymentPlan
from moorage.control.launch import launch_specs
from moorage.control.models import containers_of
from moorage.control.paging import list_query, page
from moorage.control.resources import check_instance_quota, put_tags, save_changes
from moorage.control.routing_experiments import RoutingExperiments
from moorage.control.times import timestamp
from moorage.errors import ValidationException
from moorage.experiments.routing import RoutingPolicy
from moorage.serving.instance_types import serverless_instance_type
from moorage.serving.route_table import DeployError, VariantPlan
from moorage.serving.router import EndpointRoute
from moorage.serving.serverless import ServerlessSpec
from moorage.serving.snapshot import EndpointSnapshot, snapshot_of
from moorage.store.artifacts import ArtifactError
from moorage.store.metadata import AlreadyExists, DesiredVariant, MetadataStore, Resource

log = logging.getLogger("moorage.endpoints")

CREATING, IN_SERVICE, UPDATING, DELETING, FAILED = "Creating", "InService", "Updating", "Deleting", "Failed"
ROLLING_BACK = "RollingBack"
IN_PROGRESS = (CREATING, UPDATING, DELETING, ROLLING_BACK)


def variant_summaries(store: MetadataStore, row: Resource, snapshot: EndpointSnapshot | None) -> list[dict[str, Any]]:
    """DescribeEndpoint's ProductionVariants: the row's images, the store's desired weight and count,
    the live snapshot's current ones (no snapshot: nothing serves yet)."""
    summaries = {v["VariantName"]: v for v in row.body.get("ProductionVariants", [])}
    out = []
    for goal in store.desired(row.name):
        if goal.shadow:
            continue
        summary = {k: v for k, v in summaries.get(goal.variant, {"VariantName": goal.variant}).items()
                   if k not in ("CurrentWeight", "DesiredWeight", "CurrentInstanceCount", "DesiredInstanceCount")}
        live = snapshot.variants.get(goal.variant) if snapshot is not None else None
        summary.update(CurrentWeight=live.current_weight if live else goal.weight, DesiredWeight=goal.weight)
        if "DesiredServerlessConfig" not in summary:  # a serverless variant has no instance count to show
            summary.update(CurrentInstanceCount=live.in_service if live else 0,
                           DesiredInstanceCount=goal.instance_count)
        out.append(summary)
    return out


def shadow_summaries(store: MetadataStore, row: Resource, snapshot: EndpointSnapshot | None) -> list[dict[str, Any]]:
    """DescribeEndpoint's ShadowProductionVariants: the store's desired weight and count, the live
    counts (a store written before shadows had desired state: the config's)."""
    config = store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", ""))
    given = {v["VariantName"]: v for v in ((config.body if config else {}).get("ShadowProductionVariants") or [])}
    goals = {d.variant: d for d in store.desired(row.name) if d.shadow}
    out = []
    for summary in row.body.get("ShadowProductionVariants") or []:
        vname = summary["VariantName"]
        variant = given.get(vname, {})
        goal = goals.get(vname) or DesiredVariant(vname, float(variant.get("InitialVariantWeight", 1.0)),
                                                  int(variant.get("InitialInstanceCount", 1)))
        live = snapshot.variants.get(vname) if snapshot is not None else None
        out.append(dict(summary, CurrentWeight=live.current_weight if live else goal.weight,
                        DesiredWeight=goal.weight, CurrentInstanceCount=live.in_service if live else 0,
                        DesiredInstanceCount=goal.instance_count))
    return out


def pending_summary(stored: dict[str, Any], green: EndpointSnapshot | None) -> dict[str, Any]:
    """DescribeEndpoint's PendingDeploymentSummary: as the update last recorded it, with the new
    fleet's current weights and counts read live."""
    out = dict(stored)
    if green is not None and out.get("ProductionVariants"):
        variants = []
        for summary in out["ProductionVariants"]:
            live = green.variants.get(summary["VariantName"])
            if live is not None:
                summary = dict(summary, CurrentWeight=live.current_weight, CurrentInstanceCount=live.in_service)
            variants.append(summary)
        out["ProductionVariants"] = variants
    return out


def _initial_count(variant: dict[str, Any]) -> int:
    """A variant's instances at first: its InitialInstanceCount, or, serverless, the warm floor
    (one instance with ProvisionedConcurrency, none otherwise: the first request starts it)."""
    if variant.get("ServerlessConfig"):
        return 1 if variant["ServerlessConfig"].get("ProvisionedConcurrency") else 0
    return int(variant.get("InitialInstanceCount", 1))


class Endpoints:
    def __init__(self, ctx: Context, capture: CaptureWriter | None = None,
                 experiments: RoutingExperiments | None = None):
        self.ctx = ctx
        self.capture = capture  # data capture's writer; endpoint configs with DataCaptureConfig feed it
        self.experiments = experiments  # routing experiments: a config's tags choose its fleet's chooser
        self._tasks: dict[str, asyncio.Task[None]] = {}

    # Helpers ----------------------------------------------------------------------------------------
    def _not_found(self, name: str) -> ValidationException:
        return ValidationException(f'Could not find endpoint "{self.ctx.arn(ENDPOINT, name)}".')

    def _updatable(self, name: str) -> Resource:
        """The endpoint's row, if it exists and is InService (SageMaker refuses updates otherwise)."""
        row = self.ctx.store.get(ENDPOINT, name)
        if row is None:
            raise self._not_found(name)
        if row.status != IN_SERVICE:
            raise ValidationException(f'Cannot update in-progress endpoint "{row.arn}".' if row.status in IN_PROGRESS
                                      else f'Cannot update endpoint "{row.arn}" in status {row.status}.')
        return row

    def _config(self, name: str, kept: dict[str, Any] | None = None) -> dict[str, Any]:
        row = self.ctx.store.get(ENDPOINT_CONFIG, name)
        if row is not None:
            return row.body
        if kept and kept.get("EndpointConfigName") == name:
            # Deleted while the endpoint serves it, which SageMaker allows: the endpoint keeps what it was
            # deployed with, so a restart brings it back as it was.
            log.warning("endpoint config %s was deleted; its endpoint is brought back from the definition it "
                        "kept", name)
            return dict(kept["EndpointConfig"])
        raise ValidationException(f'Could not find endpoint configuration "{self.ctx.arn(ENDPOINT_CONFIG, name)}".')

    def _model(self, name: str, kept: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """A model's definition: its row, or, once deleted, the one the endpoint kept when it deployed it."""
        row = self.ctx.store.get("model", name)
        if row is not None:
            return row.body
        body = (kept or {}).get("Models", {}).get(name)
        if body is not None:
            log.warning("model %s was deleted; its endpoint is brought back from the definition it kept", name)
        return body

    def models_in_use(self) -> list[dict[str, Any]]:
        """Every model definition something may still launch: the models' rows and what endpoints kept
        of models deleted since (the extraction cache keeps their files)."""
        bodies = [row.body for row in self.ctx.store.list("model")]
        for row in self.ctx.store.list(ENDPOINT):
            bodies.extend(((row.body.get("Deployed") or {}).get("Models") or {}).values())
        return bodies

    def _kept(self, name: str) -> dict[str, Any] | None:
        """What endpoint ``name`` was last deployed with (its config and models), kept in its row."""
        row = self.ctx.store.get(ENDPOINT, name)
        return row.body.get("Deployed") if row is not None else None

    @staticmethod
    def _capture_summary(config: dict[str, Any]) -> dict[str, Any] | None:
        """DescribeEndpoint's DataCaptureConfig (a DataCaptureConfigSummary) for an endpoint config."""
        doc = config.get("DataCaptureConfig")
        return CaptureConfig.parse(doc).summary() if doc else None

    def _run(self, name: str, coro: Any) -> asyncio.Task[None]:
        """Run lifecycle work for ``name`` after any already running for it; returns its task."""
        previous = self._tasks.get(name)

        async def chained() -> None:
            if previous is not None and not previous.done():
                with contextlib.suppress(BaseException):
                    await previous
            try:
                await coro
            except Exception:
                log.exception("lifecycle task for endpoint %s failed", name)

        task = asyncio.get_running_loop().create_task(chained())
        self._tasks[name] = task
        task.add_done_callback(lambda t: self._tasks.pop(name, None) if self._tasks.get(name) is t else None)
        return task

    def _save(self, name: str, status: str | None = None, **changes: Any) -> None:
        save_changes(self.ctx.store, ENDPOINT, name, status, **changes)

    async def _plans(self, config: dict[str, Any], desired: list[DesiredVariant],
                     kept: dict[str, Any] | None = None) -> list[VariantPlan]:
        """A plan per production variant, then per shadow variant, each at its desired weight and count."""
        by_name = {d.variant: d for d in desired}
        plans = []
        shadows = config.get("ShadowProductionVariants") or []
        for variant, shadow in [*((v, False) for v in config["ProductionVariants"]), *((v, True) for v in shadows)]:
            vname = variant["VariantName"]
            model = self._model(variant["ModelName"], kept)
            if model is None:
                raise DeployError(vname, f'Could not find model "{self.ctx.arn("model", variant["ModelName"])}".')
            serverless = self._serverless_spec(variant)
            instance_type = (serverless_instance_type(serverless.memory_mb) if serverless
                             else variant.get("InstanceType", "ml.m5.large"))
            try:
                timeout = variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
                launches = await launch_specs(self.ctx, model, instance_type,
                                              startup_timeout=float(timeout) if timeout else None)
            except ArtifactError as exc:
                raise DeployError(vname, str(exc)) from exc
            goal = by_name.get(vname)
            weight = goal.weight if goal else float(variant.get("InitialVariantWeight", 1.0))
            count = goal.instance_count if goal else _initial_count(variant)
            plans.append(VariantPlan(name=vname, weight=weight, instance_count=count, launches=tuple(launches),
                                     shadow=shadow, serverless=serverless))
        return plans

    def _serverless_spec(self, variant: dict[str, Any]) -> ServerlessSpec | None:
        config = variant.get("ServerlessConfig")
        if not config:
            return None
        return ServerlessSpec(memory_mb=int(config["MemorySizeInMB"]), max_concurrency=int(config["MaxConcurrency"]),
                              provisioned_concurrency=int(config.get("ProvisionedConcurrency") or 0),
                              idle_timeout=self.ctx.settings.serverless.idle_timeout)

    @staticmethod
    def _initial_desired(config: dict[str, Any]) -> list[DesiredVariant]:
        """A config's variants (production, then shadow) at their initial weights and counts."""
        return [DesiredVariant(v["VariantName"], float(v.get("InitialVariantWeight", 1.0)),
                               _initial_count(v), {"shadow": True} if shadow else {})
                for key, shadow in (("ProductionVariants", False), ("ShadowProductionVariants", True))
                for v in config.get(key) or []]

    def _desired_for(self, name: str, config: dict[str, Any], *, keep_stored: bool,
                     exclude: frozenset[str] = frozenset()) -> list[DesiredVariant]:
        """What the fleet of ``config`` should be: the config's initial values, or, with ``keep_stored``
        (a restart, RetainAllVariantProperties), what the store says for each variant it knows, but
        for the properties in ``exclude`` (ExcludeRetainedVariantProperties: the config's)."""
        initial = self._initial_desired(config)
        stored = {d.variant: d for d in self.ctx.store.desired(name)}
        if not keep_stored:
            # What a variant learned (an experiment's rewards) stays with it while it serves the same model.
            row = self.ctx.store.get(ENDPOINT, name)
            old = self.ctx.store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", "")) if row else None
            old_models = {v["VariantName"]: v["ModelName"] for v in (old.body["ProductionVariants"] if old else [])}
            new_models = {v["VariantName"]: v["ModelName"] for v in config["ProductionVariants"]}
            return [DesiredVariant(d.variant, d.weight, d.instance_count,
                                   {**{k: v for k, v in stored[d.variant].state.items() if k != "shadow"}, **d.state})
                    if d.variant in stored and not d.shadow and not stored[d.variant].shadow
                    and old_models.get(d.variant) == new_models.get(d.variant) else d
                    for d in initial]
        if not stored:
            # A store written before desired state had its own table: the summaries Describe showed.
            row = self.ctx.store.get(ENDPOINT, name)
            for summary in (row.body.get("ProductionVariants", []) if row else []):
                if "DesiredWeight" in summary and "DesiredInstanceCount" in summary:
                    stored[summary["VariantName"]] = DesiredVariant(
                        summary["VariantName"], float(summary["DesiredWeight"]), int(summary["DesiredInstanceCount"]))
        out = []
        for fresh in initial:
            kept = stored.get(fresh.variant)
            if kept is None:
                out.append(fresh)
                continue
            if kept.shadow != fresh.shadow:
                out.append(fresh)  # a production variant of the old config is a shadow in this one, or back
                continue
            out.append(DesiredVariant(
                fresh.variant, fresh.weight if "DesiredWeight" in exclude else kept.weight,
                fresh.instance_count if "DesiredInstanceCount" in exclude else kept.instance_count,
                {**kept.state, **fresh.state}))
        return out

    @staticmethod
    def _variant_summaries(config: dict[str, Any], plans: list[VariantPlan], models: dict[str, Any],
                           key: str = "ProductionVariants") -> list[dict]:
        """What the row keeps of each variant: its images. Weights and counts are the desired state's
        and the live snapshot's, put together by Describe."""
        by_name = {p.name: p for p in plans}
        summaries = []
        for variant in config.get(key) or []:
            plan = by_name[variant["VariantName"]]
            containers = containers_of(models[variant["ModelName"]])
            summary: dict[str, Any] = {
                "VariantName": plan.name,
                "DeployedImages": [{"SpecifiedImage": c["Image"], "ResolvedImage": f"moorage/{launch.runtime}"}
                                   for c, launch in zip(containers, plan.launches, strict=True)],
            }
            if variant.get("ServerlessConfig"):
                summary.update(CurrentServerlessConfig=dict(variant["ServerlessConfig"]),
                               DesiredServerlessConfig=dict(variant["ServerlessConfig"]))
            summaries.append(summary)
        return summaries

    # Lifecycle work ---------------------------------------------------------------------------------
    def _build(self, name: str, plans: list[VariantPlan], capture: dict[str, Any] | None, config_name: str,
               config: dict[str, Any]) -> tuple[EndpointRoute, RoutingPolicy | None]:
        """A fleet for ``plans``, its instances not started yet, with the chooser its config's routing
        tags ask for, and data capture when configured."""
        route = self.ctx.routes.build(name, plans, config_name)
        policy = self.experiments.prepare(route, config_name, config) if self.experiments is not None else None
        if capture and self.capture is not None:
            capture_config = CaptureConfig.parse(capture)
            if capture_config.enabled:
                route.observers.append(self.capture.observer(name, capture_config))
        return route, policy

    def _capture_doc(self, row: Resource, config: dict[str, Any]) -> dict[str, Any] | None:
        """The DataCaptureConfig the fleet captures with: its config's, or the one an update kept
        (RetainAllVariantProperties without DataCaptureConfig in ExcludeRetainedVariantProperties)."""
        kept = row.body.get("CaptureConfigName")
        if kept:
            source = self.ctx.store.get(ENDPOINT_CONFIG, kept)
            if source is not None:
                return source.body.get("DataCaptureConfig")
        return config.get("DataCaptureConfig")

    def _models(self, config: dict[str, Any], kept: dict[str, Any] | None = None) -> dict[str, Any]:
        return {v["ModelName"]: self._model(v["ModelName"], kept)
                for v in (*config["ProductionVariants"], *(config.get("ShadowProductionVariants") or []))}

    async def _bring_up(self, name: str, config_name: str, *, recovering: bool = False,
                        follower: bool = False) -> None:
        """Deploy ``config_name`` for a new or restarted endpoint ``name`` and make it the serving fleet.

        ``follower``: this router serves an endpoint whose lifecycle another router runs (cluster_sync.py):
        it builds its own fleet and writes nothing to the store (status, desired state) of its own.
        """
        row = self.ctx.store.get(ENDPOINT, name)
        if row is None or row.status == DELETING:
            return
        try:
            kept = self._kept(name)
            config = self._config(config_name, kept)
            desired = self._desired_for(name, config, keep_stored=True)
            plans = await self._plans(config, desired, kept)
            models = self._models(config, kept)
            route, policy = self._build(name, plans, self._capture_doc(row, config), config_name, config)
            if recovering:
                # Publish before the instances are up: invocations wait (bounded) for the first
                # ready instance instead of failing while a restarted server brings them back.
                self.ctx.routes.publish(route)
                if self.experiments is not None:
                    self.experiments.serving(name, policy)
            await self.ctx.routes.start(route, {p.name: p.instance_count for p in plans})
        except (DeployError, ValidationException) as exc:
            reason = exc.reason if isinstance(exc, DeployError) else exc.message
            variant = f"variant {exc.variant}: " if isinstance(exc, DeployError) else ""
            if recovering:
                self.ctx.routes.unpublish(name)
            log.error("endpoint %s failed%s: %s%s", name, " on this router" if follower else "", variant, reason)
            if not follower:
                self._save(name, FAILED, FailureReason=f"{variant}{reason}")
            return
        except Exception as exc:  # a bug or a bad value nobody checked: the endpoint fails, saying why
            if recovering:
                self.ctx.routes.unpublish(name)
            log.exception("endpoint %s failed to come up", name)
            if not follower:
                self._save(name, FAILED, FailureReason=f"The endpoint could not be brought up: "
                                                   f"{type(exc).__name__}: {exc}"[:1024])
            return
        current = self.ctx.store.get(ENDPOINT, name)
        if current is None or current.status == DELETING:
            if recovering:
                self.ctx.routes.unpublish(name)
            await self.ctx.routes.retire(route)
            return
        if not follower and not (recovering and [d.variant for d in self.ctx.store.desired(name)]
                                 == [d.variant for d in desired]):
            # A restart's fleet was built from the stored desired state; what changed in it while the
            # instances came up (a reward credited, a bandit's weights) must not be written over.
            self.ctx.store.replace_desired(name, desired)
        self._publish_metrics(name, config)
        replaced = self.ctx.routes.publish(route)
        if self.experiments is not None:
            self.experiments.serving(name, policy)
        log.info("endpoint %s in service with config %s (%s)", name, config_name,
                 ", ".join(f"{p.name}: {p.instance_count} x {p.launch.runtime}, weight {p.weight:g}" for p in plans))
        # A restart keeps the reason an update cut off by the stop left; a new endpoint has none.
        reason = row.body.get("FailureReason") if recovering else None
        if not follower:
            self._save(name, IN_SERVICE, EndpointConfigName=config_name, FailureReason=reason,
                       Deployed={"EndpointConfigName": config_name, "EndpointConfig": config, "Models": models},
                       ExperimentStartTime=row.body.get("ExperimentStartTime") or time.time(),
                       ProductionVariants=self._variant_summaries(config, plans, models),
                       ShadowProductionVariants=self._variant_summaries(config, plans, models,
                                                                        "ShadowProductionVariants") or None,
                       DataCaptureConfig=self._capture_summary(config))
        if replaced is not None:
            await self.ctx.routes.retire(replaced)
        if recovering or follower:
            await self.converge(name, save=False)  # a change stored while the fleet was coming up

    async def _update(self, name: str, config_name: str, plan: DeploymentPlan, desired: list[DesiredVariant],
                      capture_config_name: str) -> None:
        """UpdateEndpoint: a blue/green update of the serving fleet to ``config_name`` (``blue_green.py``)."""
        row = self.ctx.store.get(ENDPOINT, name)
        blue_config = (row.body.get("EndpointConfigName") if row is not None else None) or ""
        blue = self.ctx.routes.fleet(name)
        if blue is None and row is not None and row.status != DELETING and self.ctx.alive is not None:
            # Among several routers, this one may not serve the endpoint yet (it learns of endpoints made
            # elsewhere within a sync interval): its fleet first, then the update from it.
            await self._bring_up(name, row.body.get("EndpointConfigName", ""), follower=True)
            blue = self.ctx.routes.fleet(name)
        if row is None or row.status == DELETING or blue is None:
            if row is not None and row.status == UPDATING:
                self._save(name, IN_SERVICE, PendingDeploymentSummary=None, **{OWNER: None},
                           FailureReason="The update could not start: this router has no fleet of the endpoint.")
            return
        config = self._config(config_name)
        capture_source = self.ctx.store.get(ENDPOINT_CONFIG, capture_config_name)
        capture = (capture_source.body if capture_source else config).get("DataCaptureConfig")
        models = self._models(config)
        goals = {d.variant: d for d in desired}

        def pending_variants(snapshot: EndpointSnapshot, status: str, message: str) -> list[dict[str, Any]]:
            out = []
            for variant in config["ProductionVariants"]:
                vname = variant["VariantName"]
                live, goal = snapshot.variants.get(vname), goals[vname]
                images = [c["Image"] for c in containers_of(models[variant["ModelName"]])]
                out.append({"VariantName": vname, "InstanceType": variant.get("InstanceType"),
                            "DeployedImages": [{"SpecifiedImage": image,
                                                "ResolvedImage": f"moorage/{live.runtime if live else 'pending'}"}
                                               for image in images],
                            "CurrentWeight": live.current_weight if live else 0.0, "DesiredWeight": goal.weight,
                            "CurrentInstanceCount": live.in_service if live else 0,
                            "DesiredInstanceCount": goal.instance_count,
                            "VariantStatus": [{"Status": status, "StatusMessage": message, "StartTime": time.time()}]})
            return out

        config_of = {"blue": row.body.get("EndpointConfigName", ""), "green": config_name}

        def served_by(fleet: EndpointRoute, which: str | None) -> None:
            for observer in fleet.observers:
                if isinstance(observer, CaptureObserver):
                    observer.serve_as(ServedBy(which, config_of[which]) if which else None)

        update = BlueGreenUpdate(UpdateContext(
            name=name, config_name=config_name, plan=plan,
            save=lambda status, **changes: self._save(name, status, **changes),
            alarm_state=self._alarm_state, publish=self.ctx.routes.publish, retire=self.ctx.routes.retire,
            pending_variants=pending_variants, snapshot=snapshot_of, served_by=served_by), blue)
        green: EndpointRoute | None = None
        try:
            plans = await self._plans(config, desired)
            green, policy = self._build(name, plans, capture, config_name, config)
            update.record("Creating", "Creating the new fleet.", green, variant_status="Creating")
            # A rolling update starts green empty and grows it a batch at a time.
            await self.ctx.routes.start(green, {p.name: 0 if plan.rolling_batch and not p.shadow else p.instance_count
                                                for p in plans})
        except (DeployError, ValidationException) as exc:
            reason = exc.reason if isinstance(exc, DeployError) else exc.message
            variant = f"variant {exc.variant}: " if isinstance(exc, DeployError) else ""
            log.warning("update of endpoint %s failed; the previous fleet keeps serving: %s", name, reason)
            update.record("Failed", f"The new fleet could not start: {variant}{reason}")
            self._save(name, IN_SERVICE, FailureReason=f"Update failed, rolled back: {variant}{reason}",
                       PendingDeploymentSummary=None)
            return
        except asyncio.CancelledError:
            if green is not None:
                await self.ctx.routes.retire(green)
            raise
        try:
            if plan.rolling_batch is not None:
                await update.roll(green, {p.name: p.instance_count for p in plans if not p.shadow})
            else:
                await update.shift_traffic(green)
        except RolledBack as exc:
            update.record("RolledBack", str(exc))
            self._save(name, IN_SERVICE, FailureReason=str(exc), PendingDeploymentSummary=None)
            return
        current = self.ctx.store.get(ENDPOINT, name)
        if current is None or current.status == DELETING:
            return  # the tear-down retires both fleets
        self.ctx.store.replace_desired(name, desired)
        self._publish_metrics(name, config)
        update.finish(green)
        if self.experiments is not None:
            self.experiments.serving(name, policy)
        update.record("Completed", "All traffic is on the new fleet; the old fleet is being stopped.")
        self._save(name, IN_SERVICE, EndpointConfigName=config_name, PendingDeploymentSummary=None, FailureReason=None,
                   Deployed={"EndpointConfigName": config_name, "EndpointConfig": config, "Models": models},
                   ProductionVariants=self._variant_summaries(config, plans, models),
                   ShadowProductionVariants=self._variant_summaries(config, plans, models, "ShadowProductionVariants")
                   or None,
                   DataCaptureConfig=self._capture_summary({"DataCaptureConfig": capture} if capture else {}),
                   CaptureConfigName=capture_config_name if capture_config_name != config_name else None,
                   LastDeploymentConfig=plan.document or current.body.get("LastDeploymentConfig"),
                   # The config this update left: what the dashboard's "roll back" updates to.
                   PreviousEndpointConfigName=blue_config if blue_config != config_name else
                   current.body.get("PreviousEndpointConfigName"))
        log.info("endpoint %s in service with config %s after a %s update", name, config_name, plan.routing)
        await self.ctx.routes.retire(blue)

    def _publish_metrics(self, name: str, config: dict[str, Any] | None) -> None:
        """The endpoint's metrics are published as often as its serving config says (MetricsConfig)."""
        if self.ctx.metrics is not None:
            frequency = ((config or {}).get("MetricsConfig") or {}).get("MetricPublishFrequencyInSeconds")
            self.ctx.metrics.set_publish_period(name, int(frequency) if frequency else None)

    def _alarm_state(self, alarm: str) -> str | None:
        return self.ctx.metrics.alarms.state(alarm) if self.ctx.metrics is not None else None

    async def converge(self, name: str, save: bool = True) -> None:
        """Bring the live fleet to the store's desired state: each variant's weight and instance count.

        Scaling keeps the instances that did start when some cannot (the reason goes to FailureReason).
        """
        route = self.ctx.routes.fleet(name)
        if route is None:
            if save:
                self._save(name, FAILED, FailureReason="The endpoint has no running fleet to update.")
            return
        errors = []
        desired = {d.variant: d for d in self.ctx.store.desired(name)}
        for variant in (*route.variants.values(), *route.shadows.values()):
            goal = desired.get(variant.name)
            if goal is None:
                continue
            if variant.pool.desired != goal.instance_count:
                try:
                    await variant.pool.scale_to(goal.instance_count)
                except Exception as exc:
                    errors.append(f"variant {variant.name}: {exc}")
            variant.current_weight = goal.weight
        self.ctx.routes.reweigh(route)
        if save:
            self._save(name, IN_SERVICE, FailureReason="; ".join(errors) or None)

    async def _tear_down(self, name: str) -> None:
        log.info("deleting endpoint %s", name)
        route = self.ctx.routes.unpublish(name)
        if route is not None:
            await self.ctx.routes.retire(route)
        self.ctx.store.delete_desired(name)
        self.ctx.store.delete(ENDPOINT, name)
        self._publish_metrics(name, None)
        if self.experiments is not None:
            await asyncio.to_thread(self.experiments.forget, name)

    # API operations ---------------------------------------------------------------------------------
    async def create_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        name, config_name = req["EndpointName"], req["EndpointConfigName"]
        config = self._config(config_name)
        arn = self.ctx.arn(ENDPOINT, name)
        body: dict[str, Any] = {"EndpointConfigName": config_name}
        if config.get("DataCaptureConfig"):
            body["DataCaptureConfig"] = self._capture_summary(config)
        try:
            self.ctx.store.create(ENDPOINT, name, arn, {**body, OWNER: self.ctx.router_id}, status=CREATING)
        except AlreadyExists as exc:
            raise ValidationException(f'Cannot create already existing endpoint "{arn}".') from exc
        self.ctx.store.replace_desired(name, self._initial_desired(config))
        put_tags(self.ctx, arn, req.get("Tags"))
        log.info("creating endpoint %s from config %s", name, config_name)
        self._run(name, self._bring_up(name, config_name))
        return {"EndpointArn": arn}

    async def describe_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointName"]
        row = self.ctx.store.get(ENDPOINT, name)
        if row is None:
            raise self._not_found(name)
        out = {k: v for k, v in row.body.items() if k not in ("PendingEndpointConfigName", "PendingDeploymentSummary")}
        out.update(EndpointName=row.name, EndpointArn=row.arn, EndpointStatus=row.status,
                   CreationTime=timestamp(row.created_at), LastModifiedTime=timestamp(row.modified_at))
        if row.status in (IN_SERVICE, UPDATING, ROLLING_BACK):
            snapshot = self.ctx.routes.snapshot(name)
            out["ProductionVariants"] = variant_summaries(self.ctx.store, row, snapshot)
            if row.body.get("ShadowProductionVariants"):
                out["ShadowProductionVariants"] = shadow_summaries(self.ctx.store, row, snapshot)
        config = self.ctx.store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", ""))
        if config is not None and config.body.get("AsyncInferenceConfig"):
            out["AsyncInferenceConfig"] = config.body["AsyncInferenceConfig"]  # as SageMaker shows it
        pending = row.body.get("PendingDeploymentSummary")
        if pending:
            out["PendingDeploymentSummary"] = pending_summary(pending, self.ctx.routes.pending_snapshot(name))
        return out

    async def list_endpoints(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query(req)
        rows, token = page(self.ctx.store.list(ENDPOINT, query), query)
        out: dict[str, Any] = {"Endpoints": [
            {"EndpointName": r.name, "EndpointArn": r.arn, "CreationTime": timestamp(r.created_at),
             "LastModifiedTime": timestamp(r.modified_at), "EndpointStatus": r.status} for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    async def delete_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointName"]
        row = self.ctx.store.get(ENDPOINT, name)
        if row is None:
            raise self._not_found(name)
        if row.status != DELETING:
            self._save(name, DELETING, **{OWNER: self.ctx.router_id})  # the router deleting it (settling)
        # Deletion goes ahead of queued work: cancel a bring-up in progress rather than wait for it.
        task = self._tasks.get(name)
        if task is not None and not task.done():
            task.cancel()
        self._run(name, self._tear_down(name))
        return {}

    async def update_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        name, config_name = req["EndpointName"], req["EndpointConfigName"]
        row = self._updatable(name)
        config = self._config(config_name)
        deployment = req.get("DeploymentConfig")
        if deployment is None and req.get("RetainDeploymentConfig"):
            deployment = row.body.get("LastDeploymentConfig")
        plan = DeploymentPlan.parse(deployment)
        retain = bool(req.get("RetainAllVariantProperties"))
        excluded = frozenset(item.get("VariantPropertyType", "")
                             for item in req.get("ExcludeRetainedVariantProperties") or [])
        if excluded and not retain:
            raise ValidationException(
                "ExcludeRetainedVariantProperties applies only when RetainAllVariantProperties is true.")
        desired = self._desired_for(name, config, keep_stored=retain, exclude=excluded)
        plan.check_capacity(sum(d.instance_count for d in desired))
        for alarm in plan.alarms:
            if self._alarm_state(alarm) is None:
                raise ValidationException(
                    f"DeploymentConfig.AutoRollbackConfiguration.Alarms: the alarm {alarm!r} does not exist.")
        keep_capture = retain and "DataCaptureConfig" not in excluded
        capture_config_name = (row.body.get("CaptureConfigName") or row.body.get("EndpointConfigName")
                               if keep_capture else config_name)
        self._save(name, UPDATING, PendingDeploymentSummary={
            "EndpointConfigName": config_name, "StartTime": time.time()}, **{OWNER: self.ctx.router_id})
        self._run(name, self._update(name, config_name, plan, desired, capture_config_name))
        return {"EndpointArn": row.arn}

    async def update_endpoint_weights_and_capacities(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointName"]
        row = self._updatable(name)
        known = {d.variant for d in self.ctx.store.desired(name)}
        desired = req["DesiredWeightsAndCapacities"]
        for change in desired:
            if change["VariantName"] not in known:
                raise ValidationException(
                    f"The variant(s) \"[{change['VariantName']}]\" are not present in the endpoint \"{row.arn}\".")
            if "DesiredWeight" not in change and "DesiredInstanceCount" not in change:
                raise ValidationException(
                    f"Specify DesiredWeight or DesiredInstanceCount for variant {change['VariantName']}.")
            if "DesiredInstanceCount" in change:
                if change["VariantName"] in self._serverless_variants(row):
                    raise ValidationException(
                        f"Variant '{change['VariantName']}' is serverless: it has no DesiredInstanceCount to set.")
                check_instance_quota(self.ctx, change["DesiredInstanceCount"],
                                     f"Variant '{change['VariantName']}': DesiredInstanceCount")
        # The store first: from here on this is what the endpoint is, whatever happens to this server.
        for change in desired:
            self.ctx.store.update_desired(
                name, change["VariantName"],
                weight=float(change["DesiredWeight"]) if "DesiredWeight" in change else None,
                instance_count=int(change["DesiredInstanceCount"]) if "DesiredInstanceCount" in change else None)
        self._save(name, UPDATING, **{OWNER: self.ctx.router_id})  # the router running the update (settling.py)
        self._run(name, self.converge(name))
        return {"EndpointArn": row.arn}

    def _serverless_variants(self, row: Resource) -> set[str]:
        return {v["VariantName"] for v in row.body.get("ProductionVariants", []) if v.get("DesiredServerlessConfig")}

    # Server lifecycle -------------------------------------------------------------------------------
    def recover(self) -> int:
        """Bring back what the store says should be serving; returns how many endpoints it resumes.

        Alone on its store (SQLite), the server also settles what its last stop cut off. Among several
        routers it writes nothing: it serves every endpoint as a follower (cluster_sync.py), and what a
        router that is gone left half done is the leader's to settle (``settle_cut_off``)."""
        if self.ctx.alive is not None:
            return self._follow_all()
        resumed = 0
        for row in self.ctx.store.statuses(ENDPOINT, [IN_SERVICE, CREATING, UPDATING, DELETING, ROLLING_BACK]):
            if row.status == DELETING:
                self._run(row.name, self._tear_down(row.name))
                continue
            config_name = row.body.get("EndpointConfigName")
            if row.status in (UPDATING, ROLLING_BACK):
                # An update cut off by the stop: the row still names the old config, which comes back.
                # (PendingEndpointConfigName: what rows written before blue/green updates kept instead.)
                self._save(row.name, IN_SERVICE, PendingEndpointConfigName=None, PendingDeploymentSummary=None,
                           FailureReason="Update rolled back: the server stopped before the update finished.")
            self._run(row.name, self._bring_up(row.name, config_name, recovering=row.status != CREATING))
            resumed += 1
        return resumed

    def _follow_all(self) -> int:
        resumed = 0
        for row in self.ctx.store.statuses(ENDPOINT, [IN_SERVICE, CREATING, UPDATING, ROLLING_BACK]):
            self._run(row.name, self._bring_up(row.name, row.body.get("EndpointConfigName"), follower=True))
            resumed += 1
        return resumed

    def settle_cut_off(self, alive: set[str]) -> int:
        """The leader's part (control/settling.py): an endpoint whose creation or deletion was cut off by a
        router that is gone is finished here: brought up (and saved InService) or torn down."""
        settled = 0
        for row in self.ctx.store.statuses(ENDPOINT, [CREATING, DELETING]):
            owner = row.body.get(OWNER)
            if owner in alive or row.name in self._tasks:
                continue  # a live router does it (this one included)
            log.warning("endpoint %s: its %s was cut off (router %s is gone); finishing it here", row.name,
                        "creation" if row.status == CREATING else "deletion", owner or "unknown")
            self._save(row.name, **{OWNER: self.ctx.router_id})
            if row.status == DELETING:
                self._run(row.name, self._tear_down(row.name))
            else:
                self._run(row.name, self._bring_up(row.name, row.body.get("EndpointConfigName"), recovering=True))
            settled += 1
        return settled

    async def shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
