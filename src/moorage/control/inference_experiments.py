"""Inference experiments (SageMaker's shadow tests): a schedule and a verdict over an endpoint's shadow variant.

An experiment owns no fleet of its own. It is built, as SageMaker builds it, from two parts that
already exist: an endpoint config with a ``ShadowProductionVariants`` entry (``serving/shadow.py``
mirrors the sampled share) and ``UpdateEndpoint``, whose blue/green update (``blue_green.py``) makes
every change to the endpoint zero-downtime. Starting the experiment updates the endpoint to a config
named after it (production: the source variant's model; shadow: the shadow's model at
``SamplingPercentage``/100 of production's weight); stopping it updates the endpoint once more, to a
config whose production variant is the promoted shadow (``Promote``) or the source alone
(``Remove``), or leaves the endpoint as it is (``Retain``); an ``EndTime`` that passes removes the
shadow.

Status: Created (waiting for its StartTime) -> Starting -> Running [-> Updating -> Running] ->
Stopping -> Completed | Cancelled. The endpoint's update runs on its own, so the transitional
states settle by reading the endpoint's row: the experiment is Running once the endpoint is
InService on the experiment's config, and an update that rolled back says why in StatusReason.
State lives in the store; a tick (and every read) settles and advances experiments, so a restart
picks up where the last server stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from moorage.capture import CaptureConfig
from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, MODEL, Context
from moorage.control.endpoints import IN_SERVICE, Endpoints
from moorage.control.paging import list_query, page
from moorage.control.resources import put_tags, save_changes
from moorage.control.times import epoch, timestamp
from moorage.errors import ApiError, ConflictException, ResourceInUse, ResourceNotFound, ValidationException
from moorage.store.metadata import AlreadyExists, Resource

log = logging.getLogger("moorage.inference_experiments")

INFERENCE_EXPERIMENT = "inference-experiment"
CREATED, STARTING, RUNNING, UPDATING = "Created", "Starting", "Running", "Updating"
STOPPING, COMPLETED, CANCELLED = "Stopping", "Completed", "Cancelled"
PENDING = (STARTING, UPDATING, STOPPING)  # waiting for the endpoint's update to settle
ACTIVE = (CREATED, *PENDING, RUNNING)
ENDED = (COMPLETED, CANCELLED)
PROMOTE, REMOVE, RETAIN = "Promote", "Remove", "Retain"
DEFAULT_DURATION_S = 7 * 24 * 3600  # SageMaker's default duration; 30 days is its longest
MAX_DURATION_S = 30 * 24 * 3600
TICK_S = 1.0
CONFIG_NAME_MAX = 63




def _variant_config(variant: dict[str, Any], weight: float) -> dict[str, Any]:
    """A ModelVariantConfig as an endpoint config's ProductionVariant."""
    infra = variant["InfrastructureConfig"]["RealTimeInferenceConfig"]
    return {"VariantName": variant["VariantName"], "ModelName": variant["ModelName"],
            "InstanceType": infra["InstanceType"], "InitialInstanceCount": int(infra["InstanceCount"]),
            "InitialVariantWeight": weight}


def _capture_doc(storage: dict[str, Any]) -> dict[str, Any]:
    """DataStorageConfig as the experiment config's DataCaptureConfig: every request and response."""
    doc: dict[str, Any] = {"EnableCapture": True, "InitialSamplingPercentage": 100,
                           "DestinationS3Uri": storage["Destination"],
                           "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
    if storage.get("KmsKey"):
        doc["KmsKeyId"] = storage["KmsKey"]
    if storage.get("ContentType"):
        doc["CaptureContentTypeHeader"] = storage["ContentType"]
    return doc


class InferenceExperiments:
    def __init__(self, ctx: Context, endpoints: Endpoints):
        self.ctx = ctx
        self.endpoints = endpoints
        self._loop_task: asyncio.Task[None] | None = None

    # Server lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(BaseException):
                await self._loop_task

    async def _loop(self) -> None:
        while True:
            for row in self.ctx.store.statuses(INFERENCE_EXPERIMENT, list(ACTIVE)):
                try:
                    await self._advance(row)
                except Exception:
                    log.exception("inference experiment %s could not advance", row.name)
            await asyncio.sleep(TICK_S)

    # Helpers ----------------------------------------------------------------------------------------
    def _row(self, name: str) -> Resource:
        row = self.ctx.store.get(INFERENCE_EXPERIMENT, name)
        if row is None:
            raise ResourceNotFound(f'Could not find inference experiment "{self.ctx.arn(INFERENCE_EXPERIMENT, name)}".')
        return row

    def _save(self, name: str, status: str | None = None, **changes: Any) -> Resource:
        save_changes(self.ctx.store, INFERENCE_EXPERIMENT, name, status, **changes)
        return self._row(name)

    def _check_variants(self, variants: list[dict[str, Any]], shadow_mode: dict[str, Any],
                        field: str = "ModelVariants") -> None:
        """ModelVariants and ShadowModeConfig agree, name models that exist, and sample 0-100%."""
        names: set[str] = set()
        for i, variant in enumerate(variants):
            if variant["VariantName"] in names:
                raise ValidationException(f"{field}[{i}].VariantName: duplicate variant '{variant['VariantName']}'.")
            names.add(variant["VariantName"])
            if self.ctx.store.get(MODEL, variant["ModelName"]) is None:
                raise ValidationException(
                    f'{field}[{i}].ModelName: Could not find model "{self.ctx.arn(MODEL, variant["ModelName"])}".')
            if int(variant["InfrastructureConfig"]["RealTimeInferenceConfig"]["InstanceCount"]) < 1:
                raise ValidationException(
                    f"{field}[{i}].InfrastructureConfig.RealTimeInferenceConfig.InstanceCount: at least 1.")
        source = shadow_mode["SourceModelVariantName"]
        if source not in names:
            raise ValidationException(f"ShadowModeConfig.SourceModelVariantName: '{source}' is not in {field}.")
        shadows = shadow_mode["ShadowModelVariants"]
        if len(shadows) != 1:
            raise ValidationException("ShadowModeConfig.ShadowModelVariants: exactly one shadow variant is supported.")
        shadow = shadows[0]
        if shadow["ShadowModelVariantName"] not in names or shadow["ShadowModelVariantName"] == source:
            raise ValidationException(
                f"ShadowModeConfig.ShadowModelVariants[0].ShadowModelVariantName: "
                f"'{shadow['ShadowModelVariantName']}' must be a variant of {field} other than the source.")
        if not 0 <= int(shadow["SamplingPercentage"]) <= 100:
            raise ValidationException(
                "ShadowModeConfig.ShadowModelVariants[0].SamplingPercentage: must be between 0 and 100.")
        if names != {source, shadow["ShadowModelVariantName"]}:
            raise ValidationException(f"{field}: a shadow test has one production variant (the source) and "
                                      f"one shadow variant; nothing else.")

    def _check_source(self, endpoint: str, shadow_mode: dict[str, Any]) -> None:
        known = {d.variant for d in self.ctx.store.desired(endpoint) if not d.shadow}
        source = shadow_mode["SourceModelVariantName"]
        if source not in known:
            raise ValidationException(f"ShadowModeConfig.SourceModelVariantName: '{source}' is not a production "
                                      f"variant of endpoint {endpoint} ({', '.join(sorted(known))}).")

    @staticmethod
    def _schedule(schedule: dict[str, Any] | None, now: float, old: dict[str, Any] | None = None) -> dict[str, float]:
        given = schedule or {}
        start = epoch(given.get("StartTime")) or (old or {}).get("StartTime") or now
        end = epoch(given.get("EndTime")) or (old or {}).get("EndTime") or start + DEFAULT_DURATION_S
        if end <= start or end <= now:
            raise ValidationException("Schedule.EndTime: must be after the StartTime and in the future.")
        if end - start > MAX_DURATION_S:
            raise ValidationException("Schedule: an inference experiment runs for at most 30 days.")
        return {"StartTime": start, "EndTime": end}

    def _variant(self, body: dict[str, Any], name: str) -> dict[str, Any]:
        return next(v for v in body["ModelVariants"] if v["VariantName"] == name)

    def _new_config(self, base: str, production: list[dict[str, Any]], shadows: list[dict[str, Any]],
                    capture: dict[str, Any] | None) -> str:
        """An endpoint config named after the experiment (a free name: a suffix where it is taken)."""
        base = base[:CONFIG_NAME_MAX - 4]
        name, n = base, 1
        while True:
            config: dict[str, Any] = {"EndpointConfigName": name, "ProductionVariants": production}
            if shadows:
                config["ShadowProductionVariants"] = shadows
            if capture:
                config["DataCaptureConfig"] = capture
            try:
                self.ctx.store.create(ENDPOINT_CONFIG, name, self.ctx.arn(ENDPOINT_CONFIG, name), config)
                return name
            except AlreadyExists:
                n += 1
                name = f"{base}-{n}"

    def _source_capture(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The DataCaptureConfig the endpoint had before the experiment (kept by the configs it makes)."""
        row = self.ctx.store.get(ENDPOINT_CONFIG, body.get("SourceConfigName") or "")
        return row.body.get("DataCaptureConfig") if row is not None else None

    def _experiment_config(self, name: str, body: dict[str, Any]) -> str:
        mode = body["ShadowModeConfig"]
        shadow = mode["ShadowModelVariants"][0]
        production = [_variant_config(self._variant(body, mode["SourceModelVariantName"]), 1.0)]
        shadows = [_variant_config(self._variant(body, shadow["ShadowModelVariantName"]),
                                   int(shadow["SamplingPercentage"]) / 100)]
        capture = _capture_doc(body["DataStorageConfig"]) if body.get("DataStorageConfig") else \
            self._source_capture(body)
        return self._new_config(name, production, shadows, capture)

    async def _update_endpoint(self, endpoint: str, config: str) -> None:
        """UpdateEndpoint to ``config`` (all at once, blue/green: zero downtime); the config is dropped
        again if the endpoint refuses it."""
        try:
            await self.endpoints.update_endpoint({"EndpointName": endpoint, "EndpointConfigName": config})
        except ApiError:
            self.ctx.store.delete(ENDPOINT_CONFIG, config)
            raise

    def _endpoint_ready(self, endpoint: str) -> Resource:
        row = self.ctx.store.get(ENDPOINT, endpoint)
        if row is None:
            raise ValidationException(f'Could not find endpoint "{self.ctx.arn(ENDPOINT, endpoint)}".')
        if row.status != IN_SERVICE:
            raise ConflictException(f"Endpoint {endpoint} is {row.status}; try again once it is InService.")
        return row

    # Transitions ------------------------------------------------------------------------------------
    async def _start(self, row: Resource) -> Resource:
        """Created -> Starting: update the endpoint to the experiment's config."""
        body = row.body
        endpoint = self._endpoint_ready(body["EndpointName"])
        source_config = endpoint.body["EndpointConfigName"]
        body = dict(body, SourceConfigName=source_config)
        config = self._experiment_config(row.name, body)
        await self._update_endpoint(body["EndpointName"], config)
        log.info("inference experiment %s starting: endpoint %s to config %s", row.name, body["EndpointName"], config)
        return self._save(row.name, STARTING, SourceConfigName=source_config, EndpointConfigName=config,
                          TargetConfigName=config, NextStatus=RUNNING, StatusReason=None)

    def _final_variants(self, body: dict[str, Any], actions: dict[str, str],
                        desired: list[dict[str, Any]] | None) -> tuple[list[dict[str, Any]] | None, dict[str, str]]:
        """The production variants the endpoint keeps after StopInferenceExperiment (None: keep the
        experiment's config as it is), and each variant's outcome (InService or Deleted)."""
        mode = body["ShadowModeConfig"]
        source, shadow = mode["SourceModelVariantName"], mode["ShadowModelVariants"][0]["ShadowModelVariantName"]
        known = {v["VariantName"] for v in body["ModelVariants"]}
        for vname in actions:
            if vname not in known:
                raise ValidationException(f"ModelVariantActions: '{vname}' is not a variant of this experiment.")
        for vname in known:
            if vname not in actions:
                raise ValidationException(f"ModelVariantActions: say what happens to variant '{vname}'.")
        overrides = {v["VariantName"]: v for v in desired or []}
        for i, variant in enumerate(desired or []):
            if variant["VariantName"] not in known:
                raise ValidationException(
                    f"DesiredModelVariants[{i}].VariantName: '{variant['VariantName']}' is not in this experiment.")
            if self.ctx.store.get(MODEL, variant["ModelName"]) is None:
                raise ValidationException(f'DesiredModelVariants[{i}].ModelName: Could not find model '
                                          f'"{self.ctx.arn(MODEL, variant["ModelName"])}".')

        def keep(vname: str) -> dict[str, Any]:
            return _variant_config(overrides.get(vname) or self._variant(body, vname), 1.0)

        source_action, shadow_action = actions[source], actions[shadow]
        if shadow_action == PROMOTE:
            if source_action != REMOVE:
                raise ValidationException(f"ModelVariantActions: promoting shadow variant '{shadow}' replaces the "
                                          f"production variant; its action must be Remove.")
            return [keep(shadow)], {source: "Deleted", shadow: "InService"}
        if source_action == REMOVE:
            raise ValidationException(f"ModelVariantActions: production variant '{source}' can be removed only "
                                      f"when shadow variant '{shadow}' is promoted.")
        if shadow_action == REMOVE:
            return [keep(source)], {source: "InService", shadow: "Deleted"}
        return None, {source: "InService", shadow: "InService"}  # Retain: the shadow keeps shadowing

    async def _finish(self, row: Resource, actions: dict[str, str], desired: list[dict[str, Any]] | None,
                      state: str, reason: str | None) -> Resource:
        """Running -> Stopping (an endpoint update under way) or straight to ``state`` (nothing to change)."""
        variants, outcome = self._final_variants(row.body, actions, desired)
        if variants is None:
            return self._save(row.name, state, VariantOutcome=outcome, StatusReason=reason,
                              CompletionTime=time.time())
        self._endpoint_ready(row.body["EndpointName"])
        promoted = actions.get(row.body["ShadowModeConfig"]["ShadowModelVariants"][0]["ShadowModelVariantName"])
        config = self._new_config(f"{row.name}-{'promoted' if promoted == PROMOTE else 'ended'}", variants, [],
                                  self._source_capture(row.body))
        await self._update_endpoint(row.body["EndpointName"], config)
        log.info("inference experiment %s stopping: endpoint %s to config %s", row.name, row.body["EndpointName"],
                 config)
        return self._save(row.name, STOPPING, TargetConfigName=config, NextStatus=state, VariantOutcome=outcome,
                          StatusReason=reason)

    def _settle(self, row: Resource) -> Resource:
        """Read where the endpoint is and move the experiment's status after it."""
        body = row.body
        endpoint = self.ctx.store.get(ENDPOINT, body["EndpointName"])
        if endpoint is None:
            if row.status in ENDED:
                return row
            return self._save(row.name, CANCELLED, StatusReason=f"Endpoint {body['EndpointName']} was deleted.",
                              CompletionTime=time.time(), TargetConfigName=None, NextStatus=None)
        serving = endpoint.body.get("EndpointConfigName")
        if row.status == RUNNING and endpoint.status == IN_SERVICE and serving != body.get("EndpointConfigName"):
            return self._save(row.name, CANCELLED, CompletionTime=time.time(), StatusReason=(
                f"Endpoint {body['EndpointName']} was updated to config {serving} outside the experiment."))
        if row.status not in PENDING or endpoint.status not in (IN_SERVICE, "Failed"):
            return row  # nothing pending, or the endpoint's update is still under way
        target, following = body.get("TargetConfigName"), body.get("NextStatus") or RUNNING
        ended = {"CompletionTime": time.time()} if following in ENDED else {}
        if serving == target and endpoint.status == IN_SERVICE:
            return self._save(row.name, following, TargetConfigName=None, NextStatus=None, FallbackConfigName=None,
                              **ended)
        why = endpoint.body.get("FailureReason") or "the endpoint's update did not complete"
        self.ctx.store.delete(ENDPOINT_CONFIG, target or "")
        if row.status == STARTING:
            return self._save(row.name, CANCELLED, StatusReason=f"The experiment could not start: {why}",
                              CompletionTime=time.time(), TargetConfigName=None, NextStatus=None)
        if row.status == UPDATING:
            return self._save(row.name, RUNNING, StatusReason=f"The update did not take effect: {why}",
                              EndpointConfigName=body.get("FallbackConfigName"), TargetConfigName=None,
                              NextStatus=None, FallbackConfigName=None)
        kept = {v["VariantName"]: IN_SERVICE for v in body["ModelVariants"]}
        return self._save(row.name, following, StatusReason=f"The endpoint kept the experiment's config: {why}",
                          VariantOutcome=kept, TargetConfigName=None, NextStatus=None, **ended)

    async def _advance(self, row: Resource) -> Resource:
        """Settle, then start a due experiment or end one whose EndTime passed."""
        row = self._settle(row)
        now = time.time()
        schedule = row.body.get("Schedule") or {}
        try:
            if row.status == CREATED and schedule.get("StartTime", 0) <= now:
                row = await self._start(row)
            elif row.status == RUNNING and schedule.get("EndTime", float("inf")) <= now:
                mode = row.body["ShadowModeConfig"]
                actions = {mode["SourceModelVariantName"]: RETAIN,
                           mode["ShadowModelVariants"][0]["ShadowModelVariantName"]: REMOVE}
                row = await self._finish(row, actions, None, COMPLETED, "The experiment's EndTime passed.")
        except ConflictException:
            pass  # the endpoint is busy (an update of its own): the next tick tries again
        return row

    # What Describe and List show --------------------------------------------------------------------
    def _variant_status(self, row: Resource, vname: str) -> str:
        outcome = row.body.get("VariantOutcome") or {}
        if row.status in (CREATED, STARTING):
            return "Creating"
        if row.status == UPDATING:
            return "Updating"
        if row.status == STOPPING:
            return "Deleting" if outcome.get(vname) == "Deleted" else "Updating"
        if row.status in ENDED:
            return outcome.get(vname, "Deleted")
        return IN_SERVICE

    @staticmethod
    def _schedule_out(body: dict[str, Any]) -> dict[str, Any]:
        schedule = body.get("Schedule") or {}
        return {k: timestamp(v) for k, v in schedule.items()}

    def _summary(self, row: Resource) -> dict[str, Any]:
        body = row.body
        out: dict[str, Any] = {"Name": row.name, "Type": body["Type"], "Schedule": self._schedule_out(body),
                               "Status": row.status, "CreationTime": timestamp(row.created_at),
                               "LastModifiedTime": timestamp(row.modified_at)}
        for key in ("StatusReason", "Description", "RoleArn"):
            if body.get(key):
                out[key] = body[key]
        if body.get("CompletionTime"):
            out["CompletionTime"] = timestamp(body["CompletionTime"])
        return out

    # API operations ---------------------------------------------------------------------------------
    async def create_inference_experiment(self, req: dict[str, Any]) -> dict[str, Any]:
        name, endpoint = req["Name"], req["EndpointName"]
        arn = self.ctx.arn(INFERENCE_EXPERIMENT, name)
        if self.ctx.store.get(INFERENCE_EXPERIMENT, name) is not None:
            raise ResourceInUse(f'Cannot create already existing inference experiment "{arn}".')
        if req["Type"] != "ShadowMode":
            raise ValidationException(f"Type: only ShadowMode experiments exist, not {req['Type']!r}.")
        endpoint_row = self.ctx.store.get(ENDPOINT, endpoint)
        if endpoint_row is None:
            raise ValidationException(f'EndpointName: Could not find endpoint "{self.ctx.arn(ENDPOINT, endpoint)}".')
        for other in self.ctx.store.statuses(INFERENCE_EXPERIMENT, list(ACTIVE)):
            if other.body["EndpointName"] == endpoint:
                raise ResourceInUse(f"Endpoint {endpoint} already has an active inference experiment ({other.name}).")
        self._check_variants(req["ModelVariants"], req["ShadowModeConfig"])
        self._check_source(endpoint, req["ShadowModeConfig"])
        if req.get("DataStorageConfig"):
            CaptureConfig.parse(_capture_doc(req["DataStorageConfig"]))  # says what is wrong
        now = time.time()
        schedule = self._schedule(req.get("Schedule"), now)
        if schedule["StartTime"] <= now:
            self._endpoint_ready(endpoint)  # before anything is recorded: a refusal changes nothing
        body = {k: v for k, v in req.items() if k not in ("Name", "Tags", "Schedule")}
        body["Schedule"] = schedule
        row = self.ctx.store.create(INFERENCE_EXPERIMENT, name, arn, body, status=CREATED)
        put_tags(self.ctx, arn, req.get("Tags"))
        if schedule["StartTime"] <= now:
            try:
                await self._start(row)
            except ApiError:
                self.ctx.store.delete(INFERENCE_EXPERIMENT, name)
                raise
        return {"InferenceExperimentArn": arn}

    async def describe_inference_experiment(self, req: dict[str, Any]) -> dict[str, Any]:
        row = await self._advance(self._row(req["Name"]))
        body = row.body
        out = self._summary(row)
        out["Arn"] = row.arn
        endpoint = self.ctx.store.get(ENDPOINT, body["EndpointName"])
        metadata: dict[str, Any] = {"EndpointName": body["EndpointName"]}
        if body.get("EndpointConfigName"):
            metadata["EndpointConfigName"] = body["EndpointConfigName"]
        if endpoint is not None:
            metadata["EndpointStatus"] = endpoint.status
            if endpoint.body.get("FailureReason"):
                metadata["FailureReason"] = endpoint.body["FailureReason"]
        out["EndpointMetadata"] = metadata
        out["ModelVariants"] = [dict(v, Status=self._variant_status(row, v["VariantName"]))
                                for v in body["ModelVariants"]]
        for key in ("ShadowModeConfig", "DataStorageConfig", "KmsKey"):
            if body.get(key):
                out[key] = body[key]
        return out

    async def list_inference_experiments(self, req: dict[str, Any]) -> dict[str, Any]:
        for row in self.ctx.store.statuses(INFERENCE_EXPERIMENT, list(ACTIVE)):
            await self._advance(row)  # so StatusEquals filters on settled statuses
        query = list_query(req)
        rows, token = page(self.ctx.store.list(INFERENCE_EXPERIMENT, query), query)
        if req.get("Type"):
            rows = [r for r in rows if r.body.get("Type") == req["Type"]]
        out: dict[str, Any] = {"InferenceExperiments": [self._summary(r) for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    async def start_inference_experiment(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._settle(self._row(req["Name"]))
        if row.status != CREATED:
            raise ConflictException(f"Inference experiment {row.name} is {row.status}; only a Created one starts.")
        # Starting now: the schedule's StartTime becomes now, its EndTime stays.
        schedule = dict(row.body.get("Schedule") or {}, StartTime=time.time())
        row = self._save(row.name, Schedule=schedule)
        await self._start(row)
        return {"InferenceExperimentArn": row.arn}

    async def stop_inference_experiment(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._settle(self._row(req["Name"]))
        state = req.get("DesiredState") or COMPLETED
        actions = dict(req["ModelVariantActions"])
        if row.status == CREATED:
            self._final_variants(row.body, actions, req.get("DesiredModelVariants"))  # the same checks
            # Never started: the endpoint has nothing of the experiment to promote or remove.
            self._save(row.name, state, StatusReason=req.get("Reason"), CompletionTime=time.time(),
                       VariantOutcome={})
            return {"InferenceExperimentArn": row.arn}
        if row.status != RUNNING:
            raise ConflictException(f"Inference experiment {row.name} is {row.status}; only a Running or Created "
                                    f"experiment stops.")
        await self._finish(row, actions, req.get("DesiredModelVariants"), state, req.get("Reason"))
        return {"InferenceExperimentArn": row.arn}

    async def update_inference_experiment(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._settle(self._row(req["Name"]))
        if row.status not in (CREATED, RUNNING):
            raise ConflictException(f"Inference experiment {row.name} is {row.status}; only a Created or Running "
                                    f"experiment can be updated.")
        body = row.body
        old = body.get("Schedule") or {}
        if row.status == RUNNING and req.get("Schedule", {}).get("StartTime") is not None \
                and epoch(req["Schedule"]["StartTime"]) != old.get("StartTime"):
            raise ValidationException("Schedule.StartTime: a Running experiment's StartTime cannot change.")
        schedule = self._schedule(req.get("Schedule"), time.time(), old)
        variants = req.get("ModelVariants") or body["ModelVariants"]
        mode = req.get("ShadowModeConfig") or body["ShadowModeConfig"]
        self._check_variants(variants, mode)
        self._check_source(body["EndpointName"], mode)
        if req.get("DataStorageConfig"):
            CaptureConfig.parse(_capture_doc(req["DataStorageConfig"]))
        changes: dict[str, Any] = {"Schedule": schedule, "ModelVariants": variants, "ShadowModeConfig": mode}
        for key in ("Description", "DataStorageConfig"):
            if key in req:
                changes[key] = req[key]
        reconfigure = any(changes.get(k, body.get(k)) != body.get(k)
                          for k in ("ModelVariants", "ShadowModeConfig", "DataStorageConfig"))
        if row.status == RUNNING and reconfigure:
            self._endpoint_ready(body["EndpointName"])
            config = self._experiment_config(row.name, dict(body, **changes))
            await self._update_endpoint(body["EndpointName"], config)
            self._save(row.name, UPDATING, FallbackConfigName=body.get("EndpointConfigName"),
                       EndpointConfigName=config, TargetConfigName=config, NextStatus=RUNNING, **changes)
        else:
            await self._advance(self._save(row.name, **changes))  # a StartTime moved to now starts it
        return {"InferenceExperimentArn": row.arn}

    async def delete_inference_experiment(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._settle(self._row(req["Name"]))
        if row.status not in (CREATED, *ENDED):
            raise ConflictException(f"Inference experiment {row.name} is {row.status}; stop it first.")
        self.ctx.store.delete(INFERENCE_EXPERIMENT, row.name)
        return {"InferenceExperimentArn": row.arn}
