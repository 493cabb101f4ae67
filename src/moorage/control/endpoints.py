"""Endpoints: the lifecycle state machine over the store, driving the data plane.

Creating -> InService | Failed;  InService -> Updating -> InService (a failed update leaves the old
fleet serving and says why in FailureReason);  any -> Deleting -> gone.

State lives in the store: on start the server brings back every endpoint the store says should be
serving. Lifecycle work runs in background tasks, one at a time per endpoint, so API calls return
at once as SageMaker's do and the waiters see the transitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from moorage.capture import CaptureConfig, CaptureWriter
from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, Context
from moorage.control.launch import launch_spec
from moorage.control.models import primary_container
from moorage.control.paging import list_query, page
from moorage.control.resources import put_tags, save_changes
from moorage.control.times import timestamp
from moorage.errors import ValidationException
from moorage.serving.route_table import DeployError, VariantPlan
from moorage.serving.router import EndpointRoute
from moorage.store.artifacts import ArtifactError
from moorage.store.metadata import AlreadyExists, Resource

log = logging.getLogger("moorage.endpoints")

CREATING, IN_SERVICE, UPDATING, DELETING, FAILED = "Creating", "InService", "Updating", "Deleting", "Failed"
IN_PROGRESS = (CREATING, UPDATING, DELETING)


class Endpoints:
    def __init__(self, ctx: Context, capture: CaptureWriter | None = None):
        self.ctx = ctx
        self.capture = capture  # data capture's writer; endpoint configs with DataCaptureConfig feed it
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

    def _config(self, name: str) -> dict[str, Any]:
        row = self.ctx.store.get(ENDPOINT_CONFIG, name)
        if row is None:
            raise ValidationException(
                f'Could not find endpoint configuration "{self.ctx.arn(ENDPOINT_CONFIG, name)}".')
        return row.body

    @staticmethod
    def _capture_summary(config: dict[str, Any]) -> dict[str, Any] | None:
        """DescribeEndpoint's DataCaptureConfig (a DataCaptureConfigSummary) for an endpoint config."""
        doc = config.get("DataCaptureConfig")
        return CaptureConfig.parse(doc).summary() if doc else None

    def _run(self, name: str, coro: Any) -> None:
        """Run lifecycle work for ``name`` after any already running for it."""
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

    def _save(self, name: str, status: str | None = None, **changes: Any) -> None:
        save_changes(self.ctx.store, ENDPOINT, name, status, **changes)

    async def _plans(self, config: dict[str, Any], counts: dict[str, int] | None = None,
                     weights: dict[str, float] | None = None) -> list[VariantPlan]:
        plans = []
        for variant in config["ProductionVariants"]:
            vname = variant["VariantName"]
            model_row = self.ctx.store.get("model", variant["ModelName"])
            if model_row is None:
                raise DeployError(vname, f'Could not find model "{self.ctx.arn("model", variant["ModelName"])}".')
            try:
                timeout = variant.get("ContainerStartupHealthCheckTimeoutInSeconds")
                launch = await launch_spec(self.ctx, model_row.body, variant.get("InstanceType", "ml.m5.large"),
                                           startup_timeout=float(timeout) if timeout else None)
            except ArtifactError as exc:
                raise DeployError(vname, str(exc)) from exc
            plans.append(VariantPlan(
                name=vname,
                weight=(weights or {}).get(vname, float(variant.get("InitialVariantWeight", 1.0))),
                instance_count=(counts or {}).get(vname, int(variant.get("InitialInstanceCount", 1))),
                launch=launch,
            ))
        return plans

    @staticmethod
    def _variant_summaries(config: dict[str, Any], plans: list[VariantPlan], models: dict[str, Any]) -> list[dict]:
        by_name = {p.name: p for p in plans}
        summaries = []
        for variant in config["ProductionVariants"]:
            plan = by_name[variant["VariantName"]]
            image = primary_container(models[variant["ModelName"]])["Image"]
            summaries.append({
                "VariantName": plan.name,
                "DeployedImages": [{"SpecifiedImage": image, "ResolvedImage": f"moorage/{plan.launch.runtime}"}],
                "CurrentWeight": plan.weight, "DesiredWeight": plan.weight,
                "CurrentInstanceCount": plan.instance_count, "DesiredInstanceCount": plan.instance_count,
            })
        return summaries

    # Lifecycle work ---------------------------------------------------------------------------------
    async def _bring_up(self, name: str, config_name: str, *, recovering: bool = False,
                        retain: bool = False) -> None:
        """Deploy ``config_name`` for endpoint ``name`` and make it the serving fleet."""
        row = self.ctx.store.get(ENDPOINT, name)
        if row is None or row.status == DELETING:
            return
        old_route = self.ctx.routes.get(name)
        updating = old_route is not None and not recovering
        counts = weights = None
        if retain and old_route is not None:
            counts = {v.name: v.pool.desired for v in old_route.variants.values()}
            weights = {v.name: v.current_weight for v in old_route.variants.values()}
        try:
            config = self._config(config_name)
            plans = await self._plans(config, counts, weights)
            models = {v["ModelName"]: self.ctx.store.get("model", v["ModelName"]).body  # type: ignore[union-attr]
                      for v in config["ProductionVariants"]}
            route = self.ctx.routes.build(name, plans)
            capture = config.get("DataCaptureConfig")
            if capture and self.capture is not None:
                capture_config = CaptureConfig.parse(capture)
                if capture_config.enabled:
                    route.observers.append(self.capture.observer(name, capture_config))
            if recovering:
                # Publish before the instances are up: invocations wait (bounded) for the first
                # ready instance instead of failing while a restarted server brings them back.
                self.ctx.routes.publish(route)
            await self.ctx.routes.start(route, {p.name: p.instance_count for p in plans})
        except (DeployError, ValidationException) as exc:
            reason = exc.reason if isinstance(exc, DeployError) else exc.message
            variant = f"variant {exc.variant}: " if isinstance(exc, DeployError) else ""
            if recovering:
                self.ctx.routes.unpublish(name)
            if updating:
                log.warning("update of endpoint %s failed; the previous fleet keeps serving: %s", name, reason)
                self._save(name, IN_SERVICE, FailureReason=f"Update failed, rolled back: {variant}{reason}",
                           PendingEndpointConfigName=None)
            else:
                log.error("endpoint %s failed: %s%s", name, variant, reason)
                self._save(name, FAILED, FailureReason=f"{variant}{reason}")
            return
        current = self.ctx.store.get(ENDPOINT, name)
        if current is None or current.status == DELETING:
            if recovering:
                self.ctx.routes.unpublish(name)
            await self.ctx.routes.retire(route)
            return
        replaced = self.ctx.routes.publish(route)
        log.info("endpoint %s in service with config %s (%s)", name, config_name,
                 ", ".join(f"{p.name}: {p.instance_count} x {p.launch.runtime}, weight {p.weight:g}" for p in plans))
        self._save(name, IN_SERVICE, EndpointConfigName=config_name, PendingEndpointConfigName=None,
                   FailureReason=None, ProductionVariants=self._variant_summaries(config, plans, models),
                   DataCaptureConfig=self._capture_summary(config))
        if replaced is not None:
            await self.ctx.routes.retire(replaced)  # blue/green: the old fleet drains after the switch

    async def _apply_weights_and_capacities(self, name: str, desired: list[dict[str, Any]]) -> None:
        route = self.ctx.routes.get(name)
        if route is None:
            self._save(name, FAILED, FailureReason="The endpoint has no running fleet to update.")
            return
        errors = []
        for change in desired:
            variant = route.variants[change["VariantName"]]
            if "DesiredWeight" in change:
                variant.desired_weight = float(change["DesiredWeight"])
            if "DesiredInstanceCount" in change:
                try:
                    await variant.pool.scale_to(int(change["DesiredInstanceCount"]))
                except Exception as exc:  # a failed scale-out keeps the instances that did start
                    errors.append(f"variant {variant.name}: {exc}")
        for variant in route.variants.values():
            variant.current_weight = variant.desired_weight
        route.reweigh()
        self._save(name, IN_SERVICE, FailureReason="; ".join(errors) or None,
                   ProductionVariants=self._live_variants(name, route))

    async def _tear_down(self, name: str) -> None:
        log.info("deleting endpoint %s", name)
        route = self.ctx.routes.unpublish(name)
        if route is not None:
            await self.ctx.routes.retire(route)
        self.ctx.store.delete(ENDPOINT, name)

    def _live_variants(self, name: str, route: EndpointRoute | None) -> list[dict[str, Any]]:
        row = self.ctx.store.get(ENDPOINT, name)
        stored = {v["VariantName"]: v for v in (row.body.get("ProductionVariants", []) if row else [])}
        if route is None:
            return list(stored.values())
        live = []
        for variant in route.variants.values():
            summary = dict(stored.get(variant.name, {"VariantName": variant.name}))
            summary.update(CurrentWeight=variant.current_weight, DesiredWeight=variant.desired_weight,
                           CurrentInstanceCount=len(variant.pool.ready), DesiredInstanceCount=variant.pool.desired)
            live.append(summary)
        return live

    # API operations ---------------------------------------------------------------------------------
    async def create_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        name, config_name = req["EndpointName"], req["EndpointConfigName"]
        config = self._config(config_name)
        arn = self.ctx.arn(ENDPOINT, name)
        body: dict[str, Any] = {"EndpointConfigName": config_name}
        if config.get("DataCaptureConfig"):
            body["DataCaptureConfig"] = self._capture_summary(config)
        try:
            self.ctx.store.create(ENDPOINT, name, arn, body, status=CREATING)
        except AlreadyExists as exc:
            raise ValidationException(f'Cannot create already existing endpoint "{arn}".') from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        log.info("creating endpoint %s from config %s", name, config_name)
        self._run(name, self._bring_up(name, config_name))
        return {"EndpointArn": arn}

    async def describe_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointName"]
        row = self.ctx.store.get(ENDPOINT, name)
        if row is None:
            raise self._not_found(name)
        out = {k: v for k, v in row.body.items() if k != "PendingEndpointConfigName"}
        out.update(EndpointName=row.name, EndpointArn=row.arn, EndpointStatus=row.status,
                   CreationTime=timestamp(row.created_at), LastModifiedTime=timestamp(row.modified_at))
        if row.status in (IN_SERVICE, UPDATING):
            out["ProductionVariants"] = self._live_variants(name, self.ctx.routes.get(name))
        if row.body.get("PendingEndpointConfigName"):
            out["PendingDeploymentSummary"] = {"EndpointConfigName": row.body["PendingEndpointConfigName"]}
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
            self.ctx.store.update(ENDPOINT, name, status=DELETING)
        # Deletion goes ahead of queued work: cancel a bring-up in progress rather than wait for it.
        task = self._tasks.get(name)
        if task is not None and not task.done():
            task.cancel()
        self._run(name, self._tear_down(name))
        return {}

    async def update_endpoint(self, req: dict[str, Any]) -> dict[str, Any]:
        name, config_name = req["EndpointName"], req["EndpointConfigName"]
        row = self._updatable(name)
        self._config(config_name)
        self._save(name, UPDATING, PendingEndpointConfigName=config_name)
        retain = bool(req.get("RetainAllVariantProperties"))
        self._run(name, self._bring_up(name, config_name, retain=retain))
        return {"EndpointArn": row.arn}

    async def update_endpoint_weights_and_capacities(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointName"]
        row = self._updatable(name)
        route = self.ctx.routes.get(name)
        known = set(route.variants) if route else {v["VariantName"] for v in row.body.get("ProductionVariants", [])}
        desired = req["DesiredWeightsAndCapacities"]
        for change in desired:
            if change["VariantName"] not in known:
                raise ValidationException(
                    f"The variant(s) \"[{change['VariantName']}]\" are not present in the endpoint \"{row.arn}\".")
            if "DesiredWeight" not in change and "DesiredInstanceCount" not in change:
                raise ValidationException(
                    f"Specify DesiredWeight or DesiredInstanceCount for variant {change['VariantName']}.")
        self.ctx.store.update(ENDPOINT, name, status=UPDATING)
        self._run(name, self._apply_weights_and_capacities(name, desired))
        return {"EndpointArn": row.arn}

    # Server lifecycle -------------------------------------------------------------------------------
    def recover(self) -> int:
        """Bring back what the store says should be serving; returns how many endpoints it resumes."""
        resumed = 0
        for row in self.ctx.store.statuses(ENDPOINT, [IN_SERVICE, CREATING, UPDATING, DELETING]):
            if row.status == DELETING:
                self._run(row.name, self._tear_down(row.name))
                continue
            config_name = row.body.get("EndpointConfigName")
            if row.status == UPDATING:
                self._save(row.name, IN_SERVICE, PendingEndpointConfigName=None)
            self._run(row.name, self._bring_up(row.name, config_name, recovering=row.status != CREATING))
            resumed += 1
        return resumed

    async def shutdown(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
