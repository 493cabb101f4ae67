"""Monitoring schedules, data- and model-quality job definitions and monitoring executions (SageMaker's API).

Schedule states: Pending (created or updated; the scheduler checks it) -> Scheduled (fires on its
expression) | Failed (FailureReason says why it cannot run); Scheduled <-> Stopped by
Stop/StartMonitoringSchedule. Executions: Pending -> InProgress -> Completed |
CompletedWithViolations | Failed (with FailureReason). The scheduler (:mod:`moorage.control.monitoring_scheduler`)
does the firing and running; these handlers only change rows and wake it.

Missing resources are ``ResourceNotFound`` and duplicates ``ResourceInUse``, the errors botocore's
model lists for these operations.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Callable
from typing import Any

import orjson

from moorage.control.context import ENDPOINT, Context
from moorage.control.monitoring_scheduler import (
    DEFINITION_PARSERS,
    EXECUTION,
    JOB_DEFINITION_KINDS,
    SCHEDULE,
    SCHEDULED,
    STOPPED,
    MonitoringScheduler,
)
from moorage.control.paging import list_query
from moorage.control.resources import put_tags
from moorage.control.times import epoch, timestamp
from moorage.errors import ResourceInUse, ResourceNotFound, ValidationException
from moorage.monitor.common.jobs import (
    DATA_QUALITY,
    IN_PROGRESS,
    MODEL_BIAS,
    MODEL_EXPLAINABILITY,
    MODEL_QUALITY,
    PENDING,
    JobDefinition,
)
from moorage.store.metadata import AlreadyExists, ListQuery, Resource


def _page(rows: list[Resource], query: ListQuery, keep: Callable[[Resource], bool]) -> tuple[list[Resource],
                                                                                            str | None]:
    """Filter in Python (on fields inside the JSON body), then cut the page the token asks for."""
    assert query.limit is not None
    size = query.limit - 1
    kept = [r for r in rows if keep(r)]
    chunk = kept[query.offset:query.offset + size]
    token = None
    if query.offset + size < len(kept):
        token = base64.urlsafe_b64encode(orjson.dumps({"offset": query.offset + size})).decode()
    return chunk, token


def _all(query: ListQuery) -> ListQuery:
    return ListQuery(name_contains=query.name_contains, status=query.status, created_after=query.created_after,
                     created_before=query.created_before, modified_after=query.modified_after,
                     modified_before=query.modified_before, sort_by=query.sort_by, descending=query.descending)


class Monitoring:
    def __init__(self, ctx: Context, scheduler: MonitoringScheduler):
        self.ctx = ctx
        self.scheduler = scheduler

    # -- helpers ---------------------------------------------------------------------------------------
    def _schedule(self, name: str) -> Resource:
        row = self.ctx.store.get(SCHEDULE, name)
        if row is None:
            raise ResourceNotFound(f'Could not find monitoring schedule "{self.ctx.arn(SCHEDULE, name)}".')
        return row

    def _definition_row(self, name: str, kind: str = DATA_QUALITY) -> Resource:
        resource = JOB_DEFINITION_KINDS[kind]
        row = self.ctx.store.get(resource, name)
        if row is None:
            raise ResourceNotFound(f'Could not find job definition "{self.ctx.arn(resource, name)}".')
        return row

    def _checked_config(self, config: dict[str, Any]) -> tuple[JobDefinition, str | None]:
        """A MonitoringScheduleConfig that can run; raises ValidationException saying what is wrong."""
        inline, named = config.get("MonitoringJobDefinition"), config.get("MonitoringJobDefinitionName")
        if bool(inline) == bool(named):
            raise ValidationException("Specify exactly one of MonitoringJobDefinition and "
                                      "MonitoringJobDefinitionName in MonitoringScheduleConfig.")
        kind = config.get("MonitoringType")
        if named and not kind:
            raise ValidationException("MonitoringType is required with MonitoringJobDefinitionName.")
        if kind and kind not in JOB_DEFINITION_KINDS:
            raise ValidationException(f"MonitoringType {kind} is not supported by moorage yet; use "
                                      f"{' or '.join(JOB_DEFINITION_KINDS)}.")
        if inline and kind not in (None, DATA_QUALITY):
            raise ValidationException(f"An inline MonitoringJobDefinition is a data-quality job; a {kind} schedule "
                                      f"names its job definition (MonitoringJobDefinitionName).")
        if named:
            self._definition_row(named, kind or DATA_QUALITY)
        self.scheduler.expression({"MonitoringScheduleConfig": config})  # raises on a bad expression
        definition, _ = self.scheduler.job_definition({"MonitoringScheduleConfig": config})
        if self.ctx.store.get(ENDPOINT, definition.endpoint_name) is None:
            raise ValidationException(
                f'Could not find endpoint "{self.ctx.arn(ENDPOINT, definition.endpoint_name)}".')
        return definition, named

    def _execution_summary(self, row: Resource) -> dict[str, Any]:
        body = row.body
        out: dict[str, Any] = {
            "MonitoringScheduleName": body["MonitoringScheduleName"], "ScheduledTime": timestamp(body["ScheduledTime"]),
            "CreationTime": timestamp(row.created_at), "LastModifiedTime": timestamp(row.modified_at),
            "MonitoringExecutionStatus": row.status, "EndpointName": body.get("EndpointName"),
            "MonitoringType": body.get("MonitoringType", DATA_QUALITY)}
        # a processing job exists once the execution started analysing; one that failed before has none
        if row.status == IN_PROGRESS or body.get("OutputLocation"):
            out["ProcessingJobArn"] = row.arn
        if body.get("FailureReason"):
            out["FailureReason"] = body["FailureReason"]
        if body.get("MonitoringJobDefinitionName"):
            out["MonitoringJobDefinitionName"] = body["MonitoringJobDefinitionName"]
        return out

    # -- monitoring schedules ----------------------------------------------------------------------------
    async def create_monitoring_schedule(self, req: dict[str, Any]) -> dict[str, Any]:
        name, config = req["MonitoringScheduleName"], req["MonitoringScheduleConfig"]
        arn = self.ctx.arn(SCHEDULE, name)
        if self.ctx.store.get(SCHEDULE, name) is not None:
            raise ResourceInUse(f'Monitoring schedule "{arn}" already exists.')
        definition, named = self._checked_config(config)
        body: dict[str, Any] = {"MonitoringScheduleConfig": config, "MonitoringType": definition.monitoring_type,
                                "EndpointName": definition.endpoint_name}
        if named:
            body["MonitoringJobDefinitionName"] = named
        try:
            self.ctx.store.create(SCHEDULE, name, arn, body, status=PENDING)
        except AlreadyExists as exc:
            raise ResourceInUse(f'Monitoring schedule "{arn}" already exists.') from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        self.scheduler.wake()
        return {"MonitoringScheduleArn": arn}

    async def describe_monitoring_schedule(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._schedule(req["MonitoringScheduleName"])
        out: dict[str, Any] = {
            "MonitoringScheduleArn": row.arn, "MonitoringScheduleName": row.name,
            "MonitoringScheduleStatus": row.status, "MonitoringType": row.body.get("MonitoringType", DATA_QUALITY),
            "CreationTime": timestamp(row.created_at), "LastModifiedTime": timestamp(row.modified_at),
            "MonitoringScheduleConfig": row.body["MonitoringScheduleConfig"],
            "EndpointName": row.body.get("EndpointName")}
        if row.body.get("FailureReason"):
            out["FailureReason"] = row.body["FailureReason"]
        last = row.body.get("LastExecutionName")
        execution = self.ctx.store.get(EXECUTION, last) if last else None
        if execution is not None:
            out["LastMonitoringExecutionSummary"] = self._execution_summary(execution)
        return out

    async def list_monitoring_schedules(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query(req)
        endpoint, definition = req.get("EndpointName"), req.get("MonitoringJobDefinitionName")
        kind = req.get("MonitoringTypeEquals")

        def keep(row: Resource) -> bool:
            return ((endpoint is None or row.body.get("EndpointName") == endpoint)
                    and (definition is None or row.body.get("MonitoringJobDefinitionName") == definition)
                    and (kind is None or row.body.get("MonitoringType", DATA_QUALITY) == kind))

        rows, token = _page(self.ctx.store.list(SCHEDULE, _all(query)), query, keep)
        out: dict[str, Any] = {"MonitoringScheduleSummaries": [
            {k: v for k, v in {
                "MonitoringScheduleName": r.name, "MonitoringScheduleArn": r.arn,
                "CreationTime": timestamp(r.created_at), "LastModifiedTime": timestamp(r.modified_at),
                "MonitoringScheduleStatus": r.status, "EndpointName": r.body.get("EndpointName"),
                "MonitoringJobDefinitionName": r.body.get("MonitoringJobDefinitionName"),
                "MonitoringType": r.body.get("MonitoringType", DATA_QUALITY)}.items() if v is not None}
            for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    async def update_monitoring_schedule(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._schedule(req["MonitoringScheduleName"])
        config = req["MonitoringScheduleConfig"]
        definition, named = self._checked_config(config)
        body = {k: v for k, v in row.body.items() if k not in ("FailureReason", "MonitoringJobDefinitionName")}
        body.update(MonitoringScheduleConfig=config, EndpointName=definition.endpoint_name,
                    MonitoringType=definition.monitoring_type)
        if named:
            body["MonitoringJobDefinitionName"] = named
        # a stopped schedule stays stopped; any other goes back through Pending to its new expression
        self.ctx.store.update(SCHEDULE, row.name, status=STOPPED if row.status == STOPPED else PENDING, body=body)
        self.scheduler.wake()
        return {"MonitoringScheduleArn": row.arn}

    async def delete_monitoring_schedule(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._schedule(req["MonitoringScheduleName"])
        self.ctx.store.delete(SCHEDULE, row.name)
        self.scheduler.cancel_schedule(row.name)
        for execution in self.ctx.store.list(EXECUTION):
            if execution.body.get("MonitoringScheduleName") == row.name:
                self.ctx.store.delete(EXECUTION, execution.name)
        return {}

    async def start_monitoring_schedule(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._schedule(req["MonitoringScheduleName"])
        if row.status not in (SCHEDULED, PENDING):
            # Stopped (or Failed, to try again): back through Pending, which sets the next fire time
            self.ctx.store.update(SCHEDULE, row.name, status=PENDING)
            self.scheduler.wake()
        return {}

    async def stop_monitoring_schedule(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._schedule(req["MonitoringScheduleName"])
        if row.status != STOPPED:
            self.ctx.store.update(SCHEDULE, row.name, status=STOPPED)
        return {}

    # -- executions ------------------------------------------------------------------------------------------
    async def list_monitoring_executions(self, req: dict[str, Any]) -> dict[str, Any]:
        schedule, endpoint = req.get("MonitoringScheduleName"), req.get("EndpointName")
        definition, kind = req.get("MonitoringJobDefinitionName"), req.get("MonitoringTypeEquals")
        scheduled_before = epoch(req.get("ScheduledTimeBefore"))
        scheduled_after = epoch(req.get("ScheduledTimeAfter"))
        query = list_query(req)
        sort_by = req.get("SortBy", "ScheduledTime")

        def keep(row: Resource) -> bool:
            body = row.body
            return ((schedule is None or body.get("MonitoringScheduleName") == schedule)
                    and (endpoint is None or body.get("EndpointName") == endpoint)
                    and (definition is None or body.get("MonitoringJobDefinitionName") == definition)
                    and (kind is None or body.get("MonitoringType", DATA_QUALITY) == kind)
                    and (scheduled_before is None or body["ScheduledTime"] < scheduled_before)
                    and (scheduled_after is None or body["ScheduledTime"] > scheduled_after))

        rows = self.ctx.store.list(EXECUTION, _all(query))
        if sort_by == "ScheduledTime":
            rows.sort(key=lambda r: (r.body.get("ScheduledTime", 0.0), r.created_at), reverse=query.descending)
        page_rows, token = _page(rows, query, keep)
        out: dict[str, Any] = {"MonitoringExecutionSummaries": [self._execution_summary(r) for r in page_rows]}
        if token:
            out["NextToken"] = token
        return out

    # -- job definitions, one resource kind per monitoring type -------------------------------------------------
    async def _create_definition(self, req: dict[str, Any], kind: str) -> dict[str, Any]:
        name = req["JobDefinitionName"]
        resource = JOB_DEFINITION_KINDS[kind]
        arn = self.ctx.arn(resource, name)
        body = {k: v for k, v in req.items() if k not in ("Tags", "JobDefinitionName")}
        definition = DEFINITION_PARSERS[kind](body)  # raises ValidationException saying what is wrong
        if definition.config_uri:
            await asyncio.to_thread(_check_analysis_config, kind, definition.config_uri)
        if self.ctx.store.get(ENDPOINT, definition.endpoint_name) is None:
            raise ValidationException(
                f'Could not find endpoint "{self.ctx.arn(ENDPOINT, definition.endpoint_name)}".')
        body["EndpointName"] = definition.endpoint_name
        try:
            self.ctx.store.create(resource, name, arn, body)
        except AlreadyExists as exc:
            raise ResourceInUse(f'Job definition "{arn}" already exists.') from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        return {"JobDefinitionArn": arn}

    def _describe_definition(self, req: dict[str, Any], kind: str) -> dict[str, Any]:
        row = self._definition_row(req["JobDefinitionName"], kind)
        body = {k: v for k, v in row.body.items() if k != "EndpointName"}
        return {**body, "JobDefinitionArn": row.arn, "JobDefinitionName": row.name,
                "CreationTime": timestamp(row.created_at)}

    def _list_definitions(self, req: dict[str, Any], kind: str) -> dict[str, Any]:
        query = list_query(req)
        endpoint = req.get("EndpointName")
        rows, token = _page(self.ctx.store.list(JOB_DEFINITION_KINDS[kind], _all(query)), query,
                            lambda r: endpoint is None or r.body.get("EndpointName") == endpoint)
        out: dict[str, Any] = {"JobDefinitionSummaries": [
            {"MonitoringJobDefinitionName": r.name, "MonitoringJobDefinitionArn": r.arn,
             "CreationTime": timestamp(r.created_at), "EndpointName": r.body.get("EndpointName")} for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    def _delete_definition(self, req: dict[str, Any], kind: str) -> dict[str, Any]:
        row = self._definition_row(req["JobDefinitionName"], kind)
        users = [s.name for s in self.ctx.store.list(SCHEDULE)
                 if s.body.get("MonitoringJobDefinitionName") == row.name
                 and (s.body.get("MonitoringType") or DATA_QUALITY) == kind]
        if users:
            raise ResourceInUse(f'Job definition "{row.arn}" is used by monitoring schedule(s) {", ".join(users)}; '
                                "delete them first.")
        self.ctx.store.delete(JOB_DEFINITION_KINDS[kind], row.name)
        return {}

    async def create_data_quality_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self._create_definition(req, DATA_QUALITY)

    async def describe_data_quality_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._describe_definition(req, DATA_QUALITY)

    async def list_data_quality_job_definitions(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._list_definitions(req, DATA_QUALITY)

    async def delete_data_quality_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._delete_definition(req, DATA_QUALITY)

    async def create_model_quality_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self._create_definition(req, MODEL_QUALITY)

    async def describe_model_quality_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._describe_definition(req, MODEL_QUALITY)

    async def list_model_quality_job_definitions(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._list_definitions(req, MODEL_QUALITY)

    async def delete_model_quality_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._delete_definition(req, MODEL_QUALITY)

    async def create_model_bias_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self._create_definition(req, MODEL_BIAS)

    async def describe_model_bias_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._describe_definition(req, MODEL_BIAS)

    async def list_model_bias_job_definitions(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._list_definitions(req, MODEL_BIAS)

    async def delete_model_bias_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._delete_definition(req, MODEL_BIAS)

    async def create_model_explainability_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return await self._create_definition(req, MODEL_EXPLAINABILITY)

    async def describe_model_explainability_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._describe_definition(req, MODEL_EXPLAINABILITY)

    async def list_model_explainability_job_definitions(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._list_definitions(req, MODEL_EXPLAINABILITY)

    async def delete_model_explainability_job_definition(self, req: dict[str, Any]) -> dict[str, Any]:
        return self._delete_definition(req, MODEL_EXPLAINABILITY)


def _check_analysis_config(kind: str, uri: str) -> None:
    """Clarify's analysis configuration at ``uri`` can drive this kind of job (ValidationException if not)."""
    from moorage.monitor.common.formats import load_json

    try:
        document = load_json(uri)
    except Exception as exc:
        raise ValidationException(f"ConfigUri {uri}: cannot read the analysis configuration: {exc}") from exc
    try:
        if kind == MODEL_BIAS:
            from moorage.monitor.model_bias.analysis import load_analysis_config

            load_analysis_config(document)
        else:
            from moorage.monitor.model_explainability.attributions import load_shap_config

            load_shap_config(document)
    except ValueError as exc:
        raise ValidationException(f"ConfigUri {uri}: {exc}") from exc
