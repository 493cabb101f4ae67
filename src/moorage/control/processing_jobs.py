"""Processing jobs (SageMaker's CreateProcessingJob, Describe, List, Stop), for Model Monitor.

Two kinds of processing job answer here:

- **Baselining jobs** of SageMaker's Model Monitor analyzer image (any registry or account whose
  repository is ``sagemaker-model-monitor-analyzer``, as ``image_uris.retrieve("model-monitor", region)``
  builds it), created as ``DefaultModelMonitor.suggest_baseline`` and ``ModelQualityMonitor.suggest_baseline``
  create them: moorage's own baseline runs in a process of the job's own (``control/analyzer.py`` over
  ``monitor/common/jobs.py``), and ``statistics.json``/``constraints.json`` land in the output's S3Uri.
  Any other image is a ValidationException naming the one supported: bring-your-own processing
  containers are not run. Rows of kind ``processing-job`` in the store: InProgress -> Completed |
  Failed (FailureReason) | Stopping -> Stopped. A job cut off by a server stop is Failed on the next
  start, as transform jobs are: its outputs were never uploaded, and rerunning it silently could
  overwrite what a newer job wrote.
- **Monitoring executions**: SageMaker runs each as a processing job named after the execution, and the
  SDK's ``list_executions``/``latest_monitoring_statistics`` describe it by the execution's
  ``ProcessingJobArn``. Described from the execution's row (status, times, exit message, and the
  ``ProcessingOutputConfig`` pointing where the execution writes its statistics and violations);
  listed by ListProcessingJobs beside baselining jobs once they started (a Pending execution, or one
  that failed before analysing, has no processing job, as in SageMaker). Stopping one is refused: its
  schedule owns it (StopMonitoringSchedule).

A job's log is ``logs/processing-jobs/{job}/algo-1.log``, the ``{job}/algo-1-{epoch}`` stream of
``/aws/sagemaker/ProcessingJobs`` (``control/logs.py``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import shutil
import time
from typing import Any

from moorage.control.analyzer import CONTAINER_ROOT, DEFAULT_OUTPUT, RUNNER, AnalyzerError, reader_options
from moorage.control.context import OWNER, Context
from moorage.control.job_runs import IN_PROGRESS, STOPPED, JobRuns
from moorage.control.logs import PROCESSING_JOB, processing_log_path
from moorage.control.monitoring_scheduler import EXECUTION, JOB_DEFINITION_KINDS, SCHEDULE, MonitoringScheduler
from moorage.control.paging import list_query, offset_token
from moorage.control.resources import put_tags, save_changes
from moorage.control.times import timestamp
from moorage.errors import ResourceInUse, ResourceNotFound, ValidationException
from moorage.monitor.common.jobs import (
    COMPLETED,
    DATA_QUALITY,
    FAILED,
    MODEL_BIAS,
    MODEL_EXPLAINABILITY,
    MODEL_QUALITY,
    PROBLEM_TYPES,
    WITH_VIOLATIONS,
    run_in_subprocess,
)
from moorage.store.locations import StorageError, check_location
from moorage.store.metadata import AlreadyExists, ListQuery, Resource

log = logging.getLogger("moorage.processing_jobs")

ANALYZER_REPOSITORY = "sagemaker-model-monitor-analyzer"
MAX_REASON = 1024
RESTART_REASON = ("The server stopped while the job was running; the job was not resumed and its outputs were not "
                  "uploaded. Create a new job.")
UNSUPPORTED_ENVIRONMENT = ("record_preprocessor_script", "post_analytics_processor_script")
# Fields of the CreateProcessingJob request kept as the job's description.
_DESCRIBED = ("ProcessingInputs", "ProcessingOutputConfig", "ProcessingResources", "StoppingCondition",
              "AppSpecification", "Environment", "NetworkConfig", "RoleArn", "ExperimentConfig")
# Each monitoring type's job-definition fields (an inline MonitoringJobDefinition is a data-quality one).
_DEFINITION_PREFIX = {DATA_QUALITY: "DataQuality", MODEL_QUALITY: "ModelQuality", MODEL_BIAS: "ModelBias",
                      MODEL_EXPLAINABILITY: "ModelExplainability"}


def analyzer_image(image_uri: str) -> bool:
    """Whether ``image_uri`` is SageMaker's Model Monitor analyzer (any registry, account, tag or digest)."""
    path = image_uri.split("@", 1)[0]
    repository = path.rsplit("/", 1)[-1].split(":", 1)[0] if "/" in path else path.split(":", 1)[0]
    return repository == ANALYZER_REPOSITORY


def _container_path(value: str, field: str) -> str:
    path = value.rstrip("/")
    if not (path == CONTAINER_ROOT or path.startswith(CONTAINER_ROOT + "/")) or "/../" in path + "/" or "\x00" in path:
        raise ValidationException(f"{field}: {value!r} must be a path under {CONTAINER_ROOT}/.")
    return path


class ProcessingJobs:
    def __init__(self, ctx: Context, scheduler: MonitoringScheduler):
        self.ctx = ctx
        self.scheduler = scheduler
        self.runs = JobRuns(ctx, PROCESSING_JOB, "processing job", "ProcessingEndTime", RESTART_REASON,
                            cleanup=lambda name: shutil.rmtree(self._work_dir(name), ignore_errors=True))
        self._slots: asyncio.Semaphore | None = None  # made on first use: it belongs to the server's loop

    # -- helpers ---------------------------------------------------------------------------------------
    def _not_found(self, name: str) -> ResourceNotFound:
        return ResourceNotFound(f"Could not find requested job with name {name}")

    def _save(self, name: str, status: str | None = None, **changes: Any) -> None:
        save_changes(self.ctx.store, PROCESSING_JOB, name, status, **changes)

    def _work_dir(self, name: str) -> Any:
        return self.ctx.settings.home / "processing-jobs" / name

    def _find(self, name: str) -> tuple[str, Resource] | None:
        """(kind, row) of the processing job ``name``: a baselining job or a monitoring execution's. A name taken
        from an ARN is lower-cased (SageMaker's ARNs are), so the ARN finds it too."""
        for kind in (PROCESSING_JOB, EXECUTION):
            row = self.ctx.store.get(kind, name) or self.ctx.store.get_by_arn(self.ctx.arn("processing-job", name))
            if row is not None and row.kind == kind:
                if kind == EXECUTION and not _has_processing_job(row):
                    return None
                return kind, row
        return None

    # -- checks ------------------------------------------------------------------------------------------
    def _checked(self, req: dict[str, Any]) -> None:
        """ValidationException saying what of the request moorage cannot run."""
        app = req["AppSpecification"]
        image = app.get("ImageUri") or ""
        if not analyzer_image(image):
            raise ValidationException(
                f"AppSpecification.ImageUri {image!r}: moorage runs processing jobs of SageMaker's Model Monitor "
                f"analyzer image only (repository {ANALYZER_REPOSITORY}, as "
                "sagemaker.image_uris.retrieve('model-monitor', region) names it), for baselines.")
        for field in ("ContainerEntrypoint", "ContainerArguments"):
            if app.get(field):
                raise ValidationException(f"AppSpecification.{field}: the Model Monitor analyzer takes none; its "
                                          "environment says what to do.")
        local_paths = []
        for n, item in enumerate(req.get("ProcessingInputs") or []):
            s3_input = item.get("S3Input")
            if not s3_input:
                raise ValidationException(f"ProcessingInputs[{n}] ({item.get('InputName')}): only S3Input is "
                                          "supported (not DatasetDefinition).")
            if s3_input.get("S3DataType", "S3Prefix") != "S3Prefix":
                raise ValidationException(f"ProcessingInputs[{n}].S3Input.S3DataType: only S3Prefix is supported.")
            if not s3_input.get("LocalPath"):
                raise ValidationException(f"ProcessingInputs[{n}].S3Input.LocalPath is required.")
            local_paths.append(_container_path(s3_input["LocalPath"], f"ProcessingInputs[{n}].S3Input.LocalPath"))
            try:
                check_location(s3_input["S3Uri"], f"ProcessingInputs[{n}].S3Input.S3Uri")
            except StorageError as exc:
                raise ValidationException(str(exc)) from exc
        for n, item in enumerate((req.get("ProcessingOutputConfig") or {}).get("Outputs") or []):
            s3_output = item.get("S3Output")
            if not s3_output:
                raise ValidationException(f"ProcessingOutputConfig.Outputs[{n}] ({item.get('OutputName')}): only "
                                          "S3Output is supported (not FeatureStoreOutput).")
            _container_path(s3_output.get("LocalPath") or "", f"ProcessingOutputConfig.Outputs[{n}].S3Output.LocalPath")
            try:
                check_location(s3_output["S3Uri"], f"ProcessingOutputConfig.Outputs[{n}].S3Output.S3Uri")
            except StorageError as exc:
                raise ValidationException(str(exc)) from exc
        env = req.get("Environment") or {}
        for name in UNSUPPORTED_ENVIRONMENT:
            if env.get(name):
                raise ValidationException(f"Environment {name}: moorage's baselines do not run record "
                                          "pre-processor or post-analytics scripts.")
        source = env.get("dataset_source")
        if not source:
            raise ValidationException("Environment dataset_source is required: the LocalPath of the input that holds "
                                      "the baseline dataset.")
        source = _container_path(source, "Environment dataset_source")
        if not any(source == p or source.startswith(p + "/") for p in local_paths):
            raise ValidationException(f"Environment dataset_source {source} is not under the LocalPath of any of "
                                      "the ProcessingInputs.")
        _container_path(env.get("output_path") or DEFAULT_OUTPUT, "Environment output_path")
        try:
            reader_options(env.get("dataset_format"))
        except AnalyzerError as exc:
            raise ValidationException(f"Environment {exc}") from exc
        analysis = (env.get("analysis_type") or "").upper()
        if analysis not in ("", "MODEL_QUALITY"):
            raise ValidationException(f"Environment analysis_type {env['analysis_type']!r}: moorage's analyzer makes "
                                      "data-quality baselines (no analysis_type) and MODEL_QUALITY baselines.")
        if analysis == "MODEL_QUALITY":
            if env.get("problem_type") not in PROBLEM_TYPES:
                raise ValidationException(f"Environment problem_type {env.get('problem_type')!r}: one of "
                                          f"{', '.join(PROBLEM_TYPES)}.")
            if not env.get("ground_truth_attribute"):
                raise ValidationException("Environment ground_truth_attribute is required for a MODEL_QUALITY "
                                          "baseline.")
            threshold = env.get("probability_threshold_attribute")
            if threshold not in (None, ""):
                try:
                    float(threshold)
                except ValueError as exc:
                    raise ValidationException(f"Environment probability_threshold_attribute {threshold!r} is not a "
                                              "number.") from exc

    # -- API operations ----------------------------------------------------------------------------------
    async def create_processing_job(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ProcessingJobName"]
        arn = self.ctx.arn(PROCESSING_JOB, name)
        in_use = ResourceInUse("Job name must be unique within an AWS account and region, and a job with this name "
                               f"already exists ({arn})")
        if self._find(name) is not None or self.ctx.store.get(EXECUTION, name) is not None:
            raise in_use
        self._checked(req)
        body = {key: req[key] for key in _DESCRIBED if key in req}
        try:
            self.ctx.store.create(PROCESSING_JOB, name, arn, self.runs.owned(body), status=IN_PROGRESS)
        except AlreadyExists as exc:
            raise in_use from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        log.info("processing job %s: Model Monitor analyzer, %s baseline", name,
                 "model-quality" if (req.get("Environment") or {}).get("analysis_type") else "data-quality")
        self.runs.start(name, lambda: self._run(name))
        return {"ProcessingJobArn": arn}

    async def describe_processing_job(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ProcessingJobName"]
        found = self._find(name)
        if found is None:
            raise self._not_found(name)
        kind, row = found
        if kind == EXECUTION:
            return self._describe_execution(row)
        out = {k: v for k, v in row.body.items() if k in _DESCRIBED}
        out.update(self._summary(row))
        out.update(ProcessingStartTime=timestamp(row.body.get("ProcessingStartTime")),
                   ProcessingResources=row.body["ProcessingResources"], AppSpecification=row.body["AppSpecification"],
                   RoleArn=row.body.get("RoleArn"))
        return out

    async def list_processing_jobs(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query(req)
        everything = ListQuery(name_contains=query.name_contains, created_after=query.created_after,
                               created_before=query.created_before, modified_after=query.modified_after,
                               modified_before=query.modified_before)
        summaries = [self._summary(r) for r in self.ctx.store.list(PROCESSING_JOB, everything)]
        summaries += [self._execution_summary(r) for r in self.ctx.store.list(EXECUTION, everything)
                      if _has_processing_job(r)]
        if query.status:
            summaries = [s for s in summaries if s["ProcessingJobStatus"] == query.status]
        sort_key = {"name": "ProcessingJobName", "status": "ProcessingJobStatus"}.get(query.sort_by, "CreationTime")
        summaries.sort(key=lambda s: (s[sort_key], s["ProcessingJobName"]), reverse=query.descending)
        assert query.limit is not None
        size = query.limit - 1
        out: dict[str, Any] = {"ProcessingJobSummaries": summaries[query.offset:query.offset + size]}
        if query.offset + size < len(summaries):
            out["NextToken"] = offset_token(query.offset + size)
        return out

    async def stop_processing_job(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ProcessingJobName"]
        found = self._find(name)
        if found is None:
            raise self._not_found(name)
        kind, row = found
        if kind == EXECUTION:
            raise ValidationException(f"The processing job {name} is a monitoring execution of schedule "
                                      f"{row.body.get('MonitoringScheduleName')}; its schedule runs it "
                                      "(StopMonitoringSchedule stops further executions).")
        self.runs.stop(name, row.status, row.body.get(OWNER))
        return {}

    # -- descriptions ------------------------------------------------------------------------------------
    def _summary(self, row: Resource) -> dict[str, Any]:
        body = row.body
        out = {"ProcessingJobName": row.name, "ProcessingJobArn": row.arn, "CreationTime": timestamp(row.created_at),
               "ProcessingEndTime": timestamp(body.get("ProcessingEndTime")),
               "LastModifiedTime": timestamp(row.modified_at), "ProcessingJobStatus": row.status,
               "FailureReason": body.get("FailureReason"), "ExitMessage": body.get("ExitMessage")}
        return {k: v for k, v in out.items() if v is not None}

    def _execution_status(self, row: Resource) -> tuple[str, str | None]:
        """(processing-job status, ExitMessage) of a monitoring execution, as SageMaker reports them."""
        if row.status == WITH_VIOLATIONS:
            count = row.body.get("Violations")
            return COMPLETED, (f"CompletedWithViolations: Job completed successfully with {count} violations."
                               if count is not None else "CompletedWithViolations")
        if row.status == COMPLETED:
            return COMPLETED, "Completed: Job completed successfully with no violations."
        if row.status in (FAILED, STOPPED):
            return row.status, None
        return IN_PROGRESS, None

    def _execution_summary(self, row: Resource) -> dict[str, Any]:
        status, exit_message = self._execution_status(row)
        ended = row.status not in (IN_PROGRESS, "Pending")
        out = {"ProcessingJobName": row.name, "ProcessingJobArn": row.arn, "CreationTime": timestamp(row.created_at),
               "ProcessingEndTime": timestamp(row.modified_at) if ended else None,
               "LastModifiedTime": timestamp(row.modified_at), "ProcessingJobStatus": status,
               "FailureReason": row.body.get("FailureReason"), "ExitMessage": exit_message}
        return {k: v for k, v in out.items() if v is not None}

    def _definition(self, row: Resource) -> tuple[dict[str, Any], str]:
        """The execution's job definition as it was written (inline or named) and its field prefix."""
        schedule = self.ctx.store.get(SCHEDULE, row.body.get("MonitoringScheduleName", ""))
        if schedule is None:
            return {}, "Monitoring"
        config = schedule.body["MonitoringScheduleConfig"]
        named = config.get("MonitoringJobDefinitionName")
        if not named:
            return config.get("MonitoringJobDefinition") or {}, "Monitoring"
        kind = config.get("MonitoringType") or DATA_QUALITY
        definition = self.ctx.store.get(JOB_DEFINITION_KINDS.get(kind, ""), named)
        return (definition.body if definition else {}), _DEFINITION_PREFIX.get(kind, "DataQuality")

    def _describe_execution(self, row: Resource) -> dict[str, Any]:
        body = row.body
        definition, prefix = self._definition(row)
        inline = prefix == "Monitoring"
        app = definition.get("MonitoringAppSpecification" if inline else f"{prefix}AppSpecification") or {}
        resources = definition.get("MonitoringResources" if inline else "JobResources") or {
            "ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.xlarge", "VolumeSizeInGB": 30}}
        if inline:
            job_input = (definition.get("MonitoringInputs") or [{}])[0]
        else:
            job_input = definition.get(f"{prefix}JobInput") or {}
        baseline = definition.get("BaselineConfig" if inline else f"{prefix}BaselineConfig") or {}
        outputs = (definition.get("MonitoringOutputConfig" if inline else f"{prefix}JobOutputConfig") or {}).get(
            "MonitoringOutputs") or [{}]
        s3_output = outputs[0].get("S3Output") or {}
        location = body.get("OutputLocation") or self._output_location(body, s3_output.get("S3Uri"))
        status, exit_message = self._execution_status(row)
        ended = status != IN_PROGRESS
        seconds = body.get("Seconds")
        started = row.modified_at - seconds if ended and seconds is not None else row.modified_at
        environment = dict(definition.get("Environment") or app.get("Environment") or {})
        out: dict[str, Any] = {
            "ProcessingJobName": row.name, "ProcessingJobArn": row.arn, "ProcessingJobStatus": status,
            "ProcessingInputs": self._execution_inputs(body, job_input, baseline),
            "ProcessingOutputConfig": {"Outputs": [{
                "OutputName": "monitoring_output", "AppManaged": False, "S3Output": {
                    "S3Uri": location or "", "LocalPath": s3_output.get("LocalPath") or DEFAULT_OUTPUT,
                    "S3UploadMode": s3_output.get("S3UploadMode") or "EndOfJob"}}]},
            "ProcessingResources": resources,
            "AppSpecification": {"ImageUri": app.get("ImageUri") or ANALYZER_REPOSITORY},
            "Environment": environment, "RoleArn": definition.get("RoleArn"),
            "StoppingCondition": definition.get("StoppingCondition"),
            "CreationTime": timestamp(row.created_at), "LastModifiedTime": timestamp(row.modified_at),
            "ProcessingStartTime": timestamp(started) if row.status != "Pending" else None,
            "ProcessingEndTime": timestamp(row.modified_at) if ended else None,
            "ExitMessage": exit_message, "FailureReason": body.get("FailureReason"),
            "MonitoringScheduleArn": self.ctx.arn(SCHEDULE, body.get("MonitoringScheduleName", ""))}
        return {k: v for k, v in out.items() if v is not None}

    @staticmethod
    def _output_location(body: dict[str, Any], output_uri: str | None) -> str | None:
        """Where a running execution writes (its row learns it when it ends): SageMaker's
        ``{S3Uri}/{endpoint}/{schedule}/{yyyy}/{mm}/{dd}/{hh}``."""
        if not output_uri:
            return None
        hour = dt.datetime.fromtimestamp(body["ScheduledTime"], tz=dt.UTC)
        schedule_root = f"{output_uri.rstrip('/')}/{body.get('EndpointName')}/{body.get('MonitoringScheduleName')}"
        return f"{schedule_root}/{hour:%Y/%m/%d/%H}"

    def _execution_inputs(self, body: dict[str, Any], job_input: dict[str, Any],
                          baseline: dict[str, Any]) -> list[dict[str, Any]]:
        """The execution's inputs as SageMaker lists them: the endpoint's captured data, the baseline's files,
        the ground truth."""
        def s3_input(name: str, uri: str, local: str) -> dict[str, Any]:
            return {"InputName": name, "AppManaged": False, "S3Input": {
                "S3Uri": uri, "LocalPath": local, "S3DataType": "S3Prefix", "S3InputMode": "File",
                "S3DataDistributionType": "FullyReplicated"}}

        inputs = []
        endpoint = body.get("EndpointName") or ""
        try:
            capture = self.scheduler.capture_uri(endpoint)
        except ValidationException:
            capture = None  # the endpoint is gone: its captured data is not an input any more
        if capture:
            local = (job_input.get("EndpointInput") or {}).get("LocalPath") or f"{CONTAINER_ROOT}/input/endpoint"
            inputs.append(s3_input("endpoint_input_1", f"{capture.rstrip('/')}/{endpoint}", local))
        constraints = (baseline.get("ConstraintsResource") or {}).get("S3Uri")
        if constraints:
            inputs.append(s3_input("constraints", constraints, f"{CONTAINER_ROOT}/baseline/constraints"))
        statistics = (baseline.get("StatisticsResource") or {}).get("S3Uri")
        if statistics:
            inputs.append(s3_input("baseline", statistics, f"{CONTAINER_ROOT}/baseline/stats"))
        ground_truth = (job_input.get("GroundTruthS3Input") or {}).get("S3Uri")
        if ground_truth:
            inputs.append(s3_input("groundtruth_input_1", ground_truth, f"{CONTAINER_ROOT}/groundtruth"))
        return inputs

    # -- the job itself ----------------------------------------------------------------------------------
    async def _run(self, name: str) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.ctx.settings.monitor.concurrency)
        status, changes = FAILED, {}
        work_dir = self._work_dir(name)
        try:
            async with self._slots:
                row = self.ctx.store.get(PROCESSING_JOB, name)
                if row is None:
                    return
                self._save(name, ProcessingStartTime=time.time())
                result = await run_in_subprocess(RUNNER, self._spec(row, work_dir), name,
                                                 (row.body.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds"),
                                                 log_path=str(processing_log_path(self.ctx.settings.logs_dir, name)))
            status = result.get("Status", FAILED)
            changes = {"ExitMessage": result.get("ExitMessage"),
                       "FailureReason": (result.get("FailureReason") or "")[:MAX_REASON] or None}
            if status == FAILED and not changes["FailureReason"]:
                changes["FailureReason"] = "The job ended without saying why; see its log."
        except asyncio.CancelledError:
            if self.runs.cancelled_by_stop(name):
                status, changes = STOPPED, {"ExitMessage": "Stopped: the job was stopped (StopProcessingJob)."}
            else:
                status, changes = FAILED, {"FailureReason": RESTART_REASON}
        except Exception as exc:
            log.exception("processing job %s failed unexpectedly", name)
            status, changes = FAILED, {"FailureReason": f"Internal error: {type(exc).__name__}: {exc}"[:MAX_REASON]}
        finally:
            self.runs.finished(name)
            shutil.rmtree(work_dir, ignore_errors=True)
        log.info("processing job %s: %s%s", name, status,
                 f" ({changes['FailureReason']})" if changes.get("FailureReason") else "")
        self._save(name, status, ProcessingEndTime=time.time(), **changes)

    def _spec(self, row: Resource, work_dir: Any) -> dict[str, Any]:
        body = row.body
        return {
            "job_name": row.name, "work_dir": str(work_dir), "environment": body.get("Environment") or {},
            "inputs": [{"name": i.get("InputName"), "uri": i["S3Input"]["S3Uri"],
                        "local_path": i["S3Input"]["LocalPath"]} for i in body.get("ProcessingInputs") or []],
            "outputs": [{"name": o.get("OutputName"), "uri": o["S3Output"]["S3Uri"],
                         "local_path": o["S3Output"]["LocalPath"]}
                        for o in (body.get("ProcessingOutputConfig") or {}).get("Outputs") or []],
        }

    # -- server lifecycle ----------------------------------------------------------------------------------
    def recover(self, alive: set[str] | None = None) -> int:
        """Settle the jobs a stopped server (or, given ``alive``, a router not in it) left running;
        returns how many."""
        return self.runs.settle_cut_off(alive)

    async def shutdown(self) -> None:
        await self.runs.shutdown()


def _has_processing_job(row: Resource) -> bool:
    """A monitoring execution has a processing job once it started analysing (as ``_execution_summary`` in
    ``control/monitoring.py`` gives it a ProcessingJobArn)."""
    return row.status == IN_PROGRESS or bool(row.body.get("OutputLocation"))
