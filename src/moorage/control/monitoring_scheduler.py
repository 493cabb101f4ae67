"""The server's monitoring scheduler: fires due schedules and runs their executions.

State lives in the store, not in this object: a schedule's row holds its status and its next fire
time (``NextFireTime``, epoch seconds), an execution's row its status and results. So a restarted
server picks up where the last one stopped: a schedule whose fire times passed while no scheduler
ran fires once, for the latest of them (missed fires are not replayed one by one, as SageMaker does
not backfill either), and executions that were pending or running when it stopped run again.

With several routers on one database only the controller leader runs this scheduler
(control/leadership.py), and a leader switch must neither repeat nor skip a fire time: a fired
execution's name is derived from (schedule, scheduled time), so a second scheduler firing the same time
gets AlreadyExists and moves on, and the execution row is written before the schedule's next fire
time, so a leader dying in between leaves the fire for the next one. An execution is claimed
(Pending -> InProgress, naming this router as ``OWNER``) in one conditional update, so of two
schedulers that both see it Pending only one runs it; an InProgress one is run again only once its
router is not alive (``Context.alive``).

One task ticks every ``MOORAGE_MONITOR_TICK_SECONDS`` (default 1 s; API calls wake it at once);
at most ``MOORAGE_MONITOR_CONCURRENCY`` executions (default 2) run at a time, each in its own
process (:mod:`moorage.monitor.common.jobs`; each monitoring type has its own execution module).
Execution metrics are written to the metrics store in a worker thread under SageMaker's namespace
and dimensions, so alarms can watch them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import logging
import uuid
from typing import Any

from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, MODEL, OWNER, Context
from moorage.control.launch import launch_specs
from moorage.control.logs import execution_log_path
from moorage.control.schedule_expressions import ScheduleExpression
from moorage.errors import ValidationException
from moorage.monitor.common.jobs import (
    COMPLETED,
    DATA_QUALITY,
    FAILED,
    IN_PROGRESS,
    MODEL_BIAS,
    MODEL_EXPLAINABILITY,
    MODEL_QUALITY,
    PENDING,
    WITH_VIOLATIONS,
    JobDefinition,
    run_in_subprocess,
    window_of,
)
from moorage.monitor.data_quality import execution as data_quality
from moorage.monitor.model_bias import execution as model_bias
from moorage.monitor.model_explainability import execution as model_explainability
from moorage.monitor.model_quality import execution as model_quality
from moorage.serving.instance import Instance, InstanceStartError
from moorage.serving.pool import Member
from moorage.store.artifacts import ArtifactError
from moorage.store.metadata import AlreadyExists, Resource

log = logging.getLogger("moorage.monitor")

SCHEDULE = "monitoring-schedule"
JOB_DEFINITION = "data-quality-job-definition"
MODEL_QUALITY_JOB_DEFINITION = "model-quality-job-definition"
# Each monitoring type's job definitions are their own resource kind (and ARN type), as in SageMaker.
JOB_DEFINITION_KINDS = {DATA_QUALITY: JOB_DEFINITION, MODEL_QUALITY: MODEL_QUALITY_JOB_DEFINITION,
                        MODEL_BIAS: "model-bias-job-definition",
                        MODEL_EXPLAINABILITY: "model-explainability-job-definition"}
DEFINITION_PARSERS = {DATA_QUALITY: JobDefinition.from_data_quality, MODEL_QUALITY: JobDefinition.from_model_quality,
                      MODEL_BIAS: JobDefinition.from_model_bias,
                      MODEL_EXPLAINABILITY: JobDefinition.from_model_explainability}
EXECUTION = "monitoring-execution"
SCHEDULED, STOPPED = "Scheduled", "Stopped"
# Where each monitoring type's execution metrics go (SageMaker's namespaces).
METRICS_NAMESPACES = {DATA_QUALITY: "aws/sagemaker/Endpoints/data-metrics",
                      MODEL_QUALITY: "aws/sagemaker/Endpoints/model-metrics",
                      MODEL_BIAS: "aws/sagemaker/Endpoints/bias-metrics",
                      MODEL_EXPLAINABILITY: "aws/sagemaker/Endpoints/explainability-metrics"}


def utc(epoch: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def latest_fire(expression: ScheduleExpression, due: dt.datetime, now: dt.datetime) -> dt.datetime:
    """The last fire time at or before ``now``, from ``due`` (itself one): the one missed fire to run."""
    if expression.interval is not None:  # rate(...): multiples of the interval since the epoch
        return max(due, utc((now.timestamp() // expression.interval) * expression.interval))
    fire = due
    for _ in range(100_000):  # a cron's fires over years of downtime; bounded all the same
        following = expression.next_after(fire)
        if following is None or following > now:
            break
        fire = following
    return fire


def fired_execution_name(schedule: Resource, scheduled: dt.datetime) -> str:
    """The name of the execution a schedule fires for ``scheduled``: the same in every router (the
    schedule's ARN and creation time tell a schedule re-created under the same name apart)."""
    digest = hashlib.sha256(f"{schedule.arn}|{schedule.created_at!r}".encode()).hexdigest()[:8]
    return f"model-monitoring-{scheduled:%Y%m%d%H%M%S}-{digest}"


class MonitoringScheduler:
    def __init__(self, ctx: Context, tick: float | None = None, concurrency: int | None = None):
        self.ctx = ctx
        self.tick = tick or ctx.settings.monitor.tick_seconds
        self.concurrency = concurrency or ctx.settings.monitor.concurrency
        self._wake: asyncio.Event | None = None  # created in start(): it belongs to the server's loop
        self._slots: asyncio.Semaphore | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._running: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    # -- what schedules mean ---------------------------------------------------------------------------
    def job_definition(self, body: dict[str, Any]) -> tuple[JobDefinition, str | None]:
        """A schedule's job definition (inline, or the named one of its MonitoringType) and that name."""
        config = body["MonitoringScheduleConfig"]
        name = config.get("MonitoringJobDefinitionName")
        if name:
            kind = config.get("MonitoringType") or DATA_QUALITY
            resource = JOB_DEFINITION_KINDS.get(kind)
            row = self.ctx.store.get(resource, name) if resource else None
            if row is None:
                raise ValidationException(
                    f'Could not find job definition "{self.ctx.arn(resource or JOB_DEFINITION, name)}".')
            return DEFINITION_PARSERS[kind](row.body), name
        return JobDefinition.from_inline(config["MonitoringJobDefinition"]), None

    @staticmethod
    def expression(body: dict[str, Any]) -> ScheduleExpression | None:
        schedule = body["MonitoringScheduleConfig"].get("ScheduleConfig")
        return ScheduleExpression.parse(schedule["ScheduleExpression"]) if schedule else None

    def capture_uri(self, endpoint_name: str) -> str | None:
        """Where the endpoint's config captures to, if it captures at all."""
        endpoint = self.ctx.store.get(ENDPOINT, endpoint_name)
        if endpoint is None:
            raise ValidationException(f'Could not find endpoint "{self.ctx.arn(ENDPOINT, endpoint_name)}".')
        config_row = self.ctx.store.get(ENDPOINT_CONFIG, endpoint.body.get("EndpointConfigName", ""))
        capture = (config_row.body if config_row else {}).get("DataCaptureConfig") or {}
        if not capture or not capture.get("EnableCapture", True):
            return None
        return capture.get("DestinationS3Uri")

    # -- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the schedules (on the controller leader): fire what is due, run what was cut off."""
        self._stopping = False
        self._wake = asyncio.Event()
        resumed = self._adopt()
        if resumed:
            log.info("resuming %d monitoring execution(s) cut off by a stop", resumed)
        self._loop_task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Stop the schedules and the executions running here (they go back to Pending, to run again)."""
        self._stopping = True
        tasks = [t for t in (self._loop_task, *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop_task = None

    def _adopt(self) -> int:
        """Launch the executions nobody runs: Pending ones not running here, and InProgress ones whose
        router is gone (back to Pending first, guarded by the row's version); returns how many."""
        alive = self.ctx.alive() if self.ctx.alive is not None else None
        adopted = 0
        for row in self.ctx.store.statuses(EXECUTION, [PENDING, IN_PROGRESS]):
            if row.name in self._running:
                continue
            if row.status == IN_PROGRESS:
                owner = row.body.get(OWNER)
                if alive is not None and owner in alive and owner != self.ctx.router_id:
                    continue  # another live router runs it
                body = {k: v for k, v in row.body.items() if k != OWNER}
                if not self.ctx.store.transition(EXECUTION, row.name, [IN_PROGRESS], PENDING, body,
                                                 modified_at=row.modified_at):
                    continue
            self._launch(row.name)
            adopted += 1
        return adopted

    def wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _loop(self) -> None:
        assert self._wake is not None
        while True:
            try:
                self._fire_due(dt.datetime.now(dt.UTC))
                self._adopt()
            except Exception:
                log.exception("monitoring scheduler tick failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick)
            self._wake.clear()

    def _fire_due(self, now: dt.datetime) -> None:
        for row in self.ctx.store.statuses(SCHEDULE, [PENDING]):
            self._activate(row, now)
        for row in self.ctx.store.statuses(SCHEDULE, [SCHEDULED]):
            due = row.body.get("NextFireTime")
            if due is None or due > now.timestamp():
                continue
            body = dict(row.body)
            try:
                expression = self.expression(body)
                following = expression.next_after(now) if expression else None
            except ValidationException as exc:
                self.ctx.store.update(SCHEDULE, row.name, status=FAILED, body={**body, "FailureReason": exc.message})
                continue
            # The execution first, named by its fire time: a scheduler that stops right after leaves the
            # fire time due, and the next one finds the execution there (AlreadyExists) instead of a gap.
            scheduled = latest_fire(expression, utc(due), now) if expression else utc(due)
            self.submit(row.name, scheduled, fired=True)
            latest = self.ctx.store.get(SCHEDULE, row.name)
            if latest is not None:
                self.ctx.store.update(SCHEDULE, row.name, touch=False, body={
                    **latest.body, "NextFireTime": following.timestamp() if following else None})

    def _activate(self, row: Resource, now: dt.datetime) -> None:
        """Pending -> Scheduled (with its first fire time), or Failed saying why it cannot run."""
        body = dict(row.body)
        try:
            expression = self.expression(body)
            definition, _ = self.job_definition(body)
            self.capture_uri(definition.endpoint_name)  # the endpoint must exist
        except ValidationException as exc:
            body["FailureReason"] = exc.message
            self.ctx.store.update(SCHEDULE, row.name, status=FAILED, body=body)
            return
        body.pop("FailureReason", None)
        if expression is None:
            body["NextFireTime"] = None  # no ScheduleConfig: on-demand runs only
        elif expression.one_off:
            body["NextFireTime"] = now.timestamp()
        else:
            following = expression.next_after(now)
            body["NextFireTime"] = following.timestamp() if following else None
        self.ctx.store.update(SCHEDULE, row.name, status=SCHEDULED, body=body)
        self.wake()

    # -- executions -------------------------------------------------------------------------------------
    def submit(self, schedule_name: str, scheduled: dt.datetime, *, start: str | None = None,
               end: str | None = None, fired: bool = False) -> Resource:
        """Create an execution of ``schedule_name`` for ``scheduled`` and start it (bounded by the slots).

        ``start``/``end`` (an ISO-8601 time, or an offset from ``scheduled`` such as -PT1H) override
        the job's window; a bad one raises ValidationException before anything is created. ``fired``:
        the schedule fired for ``scheduled``; the execution's name is derived from both, and when it
        exists already (another scheduler fired it) that one is returned and nothing is started.
        """
        schedule = self.ctx.store.get(SCHEDULE, schedule_name)
        if schedule is None:
            raise ValidationException(f"Could not find monitoring schedule {schedule_name}.")
        definition, definition_name = self.job_definition(schedule.body)
        config = schedule.body["MonitoringScheduleConfig"].get("ScheduleConfig") or {}
        expression = self.expression(schedule.body)
        if start is None and end is None and expression is not None and expression.one_off:
            start = config.get("DataAnalysisStartTime") or "-PT1H"
            end = config.get("DataAnalysisEndTime") or "-PT0H"
        window_start, window_end = window_of(definition, scheduled, start=start, end=end)
        name = (fired_execution_name(schedule, scheduled) if fired
                else f"model-monitoring-{scheduled:%Y%m%d%H%M}-{uuid.uuid4().hex[:8]}")
        body: dict[str, Any] = {
            "MonitoringScheduleName": schedule_name, "ScheduledTime": scheduled.timestamp(),
            "EndpointName": definition.endpoint_name, "MonitoringType": definition.monitoring_type,
            "WindowStart": window_start.timestamp(), "WindowEnd": window_end.timestamp(),
        }
        if definition_name:
            body["MonitoringJobDefinitionName"] = definition_name
        try:
            row = self.ctx.store.create(EXECUTION, name, self.ctx.arn("processing-job", name), body, status=PENDING)
        except AlreadyExists:
            existing = self.ctx.store.get(EXECUTION, name)
            if existing is None or not fired:
                raise
            log.info("monitoring execution %s of schedule %s was fired already", name, schedule_name)
            return existing
        self.ctx.store.update(SCHEDULE, schedule_name, body={**schedule.body, "LastExecutionName": name},
                              touch=False)
        log.info("monitoring execution %s of schedule %s: window %s to %s", name, schedule_name,
                 window_start.isoformat(), window_end.isoformat())
        self._launch(name)
        return row

    def cancel_schedule(self, schedule_name: str) -> None:
        """Stop the running executions of a schedule that is being deleted."""
        for name, task in list(self._running.items()):
            row = self.ctx.store.get(EXECUTION, name)
            if row is None or row.body.get("MonitoringScheduleName") == schedule_name:
                task.cancel()

    def _launch(self, name: str) -> None:
        task = asyncio.get_running_loop().create_task(self._run(name))
        self._running[name] = task
        task.add_done_callback(lambda t: self._running.pop(name, None) if self._running.get(name) is t else None)

    def _save(self, name: str, status: str | None = None, **changes: Any) -> Resource | None:
        row = self.ctx.store.get(EXECUTION, name)
        if row is None:
            return None
        body = {**row.body, **changes}
        return self.ctx.store.update(EXECUTION, name, status=status, body=body)

    async def _run(self, name: str) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        claimed = False
        try:
            async with self._slots:
                row = self.ctx.store.get(EXECUTION, name)
                if row is None or row.status != PENDING:
                    return  # its schedule was deleted while it waited, or another router runs it
                claimed = self.ctx.store.transition(EXECUTION, name, [PENDING], IN_PROGRESS,
                                                    {**row.body, OWNER: self.ctx.router_id},
                                                    modified_at=row.modified_at)
                if not claimed:
                    return  # another router claimed it first
                result = await self._execute(row)
                status = result.get("Status", FAILED)
                saved = self._save(name, status, **{k: v for k, v in result.items() if k != "Metrics"})
                log.info("monitoring execution %s: %s%s", name, status,
                         f" ({result.get('FailureReason')})" if result.get("FailureReason") else "")
                if saved is not None and status in (COMPLETED, WITH_VIOLATIONS) and result.get("Metrics"):
                    await self._emit(saved, result["Metrics"])
        except asyncio.CancelledError:
            if self._stopping and claimed:
                # run again when the server comes back, or by the router that leads next
                with contextlib.suppress(Exception):
                    self._save(name, PENDING, **{OWNER: None})
            raise
        except Exception as exc:
            log.exception("monitoring execution %s failed", name)
            with contextlib.suppress(Exception):
                self._save(name, FAILED, FailureReason=f"Internal error: {type(exc).__name__}: {exc}")

    async def _execute(self, row: Resource) -> dict[str, Any]:
        body = row.body
        schedule = self.ctx.store.get(SCHEDULE, body["MonitoringScheduleName"])
        if schedule is None:
            return {"Status": FAILED, "FailureReason": "The monitoring schedule was deleted."}
        try:
            definition, _ = self.job_definition(schedule.body)
            capture_uri = self.capture_uri(definition.endpoint_name)
        except ValidationException as exc:
            return {"Status": FAILED, "FailureReason": exc.message}
        excluded = [f.strip() for f in (definition.exclude_features or "").split(",") if f.strip()]
        common = dict(execution_name=row.name, schedule_name=schedule.name, endpoint_name=definition.endpoint_name,
                      capture_uri=capture_uri, scheduled_time=body["ScheduledTime"], window_start=body["WindowStart"],
                      window_end=body["WindowEnd"], output_uri=definition.output_uri,
                      constraints_uri=definition.constraints_uri, preprocessor_uri=definition.preprocessor_uri)
        answers = dict(inference_attribute=definition.inference_attribute,
                       probability_attribute=definition.probability_attribute,
                       probability_threshold=definition.probability_threshold)
        explainer: Member | None = None
        if definition.monitoring_type == MODEL_QUALITY:
            spec: Any = model_quality.ExecutionSpec(**common, problem_type=definition.problem_type or "",
                                                    ground_truth_uri=definition.ground_truth_uri or "", **answers)
            runner = model_quality.RUNNER
        elif definition.monitoring_type == MODEL_BIAS:
            spec = model_bias.ExecutionSpec(**common, config_uri=definition.config_uri or "",
                                            ground_truth_uri=definition.ground_truth_uri or "",
                                            features_attribute=definition.features_attribute, **answers)
            runner = model_bias.RUNNER
        elif definition.monitoring_type == MODEL_EXPLAINABILITY:
            try:
                explainer = await self._explainer(definition.endpoint_name, row.name)
            except (ValidationException, ArtifactError, InstanceStartError) as exc:
                return {"Status": FAILED, "FailureReason": f"The model to explain could not start: "
                                                           f"{getattr(exc, 'message', None) or exc}"}
            address = {"socket": explainer.socket_path} if explainer.port is None else {"port": explainer.port}
            spec = model_explainability.ExecutionSpec(**common, config_uri=definition.config_uri or "",
                                                      features_attribute=definition.features_attribute,
                                                      model_address=address, **answers)
            runner = model_explainability.RUNNER
        else:
            spec = data_quality.ExecutionSpec(**common, statistics_uri=definition.statistics_uri,
                                              capture_sides=definition.capture_sides(), exclude_features=excluded)
            runner = data_quality.RUNNER
        try:
            # its log is its processing job's stream in /aws/sagemaker/ProcessingJobs (control/logs.py)
            result = await run_in_subprocess(runner, dataclasses.asdict(spec), row.name, definition.max_runtime,
                                             log_path=str(execution_log_path(self.ctx.settings.logs_dir, row.name)))
        finally:
            if explainer is not None:
                await explainer.stop(drain_timeout=0, term_timeout=10)
        result["PublishMetrics"] = definition.publishes_metrics()
        return result

    async def _explainer(self, endpoint: str, execution: str) -> Instance:
        """An instance of the endpoint's model for this execution alone (Clarify's shadow endpoint): explaining
        calls the model thousands of times, never through the instances that serve callers."""
        row = self.ctx.store.get(ENDPOINT, endpoint)
        config = self.ctx.store.get(ENDPOINT_CONFIG, (row.body if row else {}).get("EndpointConfigName", ""))
        if row is None or config is None:
            raise ValidationException(f"Endpoint {endpoint} has no endpoint config to explain.")
        variant = config.body["ProductionVariants"][0]
        model = self.ctx.store.get(MODEL, variant["ModelName"])
        if model is None:
            raise ValidationException(f"The model {variant['ModelName']} of endpoint {endpoint} is gone.")
        launches = await launch_specs(self.ctx, model.body, variant.get("InstanceType", "ml.m5.large"))
        if len(launches) > 1:
            raise ValidationException("Explaining a serial inference pipeline is not supported: explain its "
                                      "model's container on an endpoint of its own.")
        member = self.ctx.routes.local_launcher.member(launches, self.ctx.settings.logs_dir / "monitoring" / execution)
        assert isinstance(member, Instance)
        await member.start(self.ctx.settings.monitor.explainer_start_timeout)
        return member

    async def _emit(self, row: Resource, values: dict[str, float]) -> None:
        metrics = self.ctx.metrics
        if metrics is None or not row.body.get("PublishMetrics", True):
            return
        dimensions = {"Endpoint": row.body["EndpointName"], "MonitoringSchedule": row.body["MonitoringScheduleName"]}
        namespace = METRICS_NAMESPACES.get(row.body.get("MonitoringType") or DATA_QUALITY,
                                           METRICS_NAMESPACES[DATA_QUALITY])
        # stamped when the execution ended, so that an alarm over the latest periods sees them
        stamp = row.modified_at

        def write() -> None:
            for metric_name, value in values.items():
                metrics.put_metric(namespace, metric_name, dimensions, float(value), timestamp=stamp)

        try:
            await asyncio.to_thread(write)
        except Exception:
            log.exception("could not write the metrics of monitoring execution %s", row.name)
