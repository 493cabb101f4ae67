"""Compilation jobs and edge packaging jobs: SageMaker Neo's and Edge Manager's API over moorage's compiler.

- **CreateCompilationJob** compiles ``InputConfig.S3Uri`` (a ``model.tar.gz`` as endpoints take it, at any
  location moorage reads: ``s3://`` is the server's object store, ``file://`` or a path a local file) with
  ``moorage.compiler`` into a signed edge package, at ``{OutputConfig.S3OutputLocation}/{model}-{target}.tar.gz``
  (SageMaker's naming), which DescribeCompilationJob gives as ``ModelArtifacts.S3ModelArtifacts`` with a BLAKE2
  ``ModelDigests.ArtifactDigest``. ``InputConfig.Framework`` is SageMaker's enum where it fits (SKLEARN,
  XGBOOST, PYTORCH, ONNX) plus ``LIGHTGBM``, moorage's extension (the API accepts it beside AWS's values:
  ``api/sagemaker.py`` ``EXTRA_ENUM_VALUES``); TensorFlow, Keras, MXNet, TFLite and Darknet are refused.
  ``DataInputConfig`` gives a PyTorch model's input shape; ``TargetDevice``/``TargetPlatform`` are recorded
  and choose the optimisation level (``compiler/optimize.py``). ``OutputConfig.CompilerOptions`` is a JSON
  object, as SageMaker's is; moorage reads its own keys there: ``quantize`` ("int8"), ``validation_data`` (a
  CSV location), ``label_column``, ``tolerance``, ``task``, ``name``, ``version``; others are kept and ignored.
  A validation drop beyond the tolerance fails the job, its FailureReason giving the measured drop.
- **CreateEdgePackagingJob** takes a Completed compilation job's package, signs it again with the server's key
  under ``ModelName``/``ModelVersion`` and writes ``{S3OutputLocation}/{ModelName}-{ModelVersion}.tar.gz``:
  ``ModelArtifact`` and ``ModelSignature`` (the base64 Ed25519 signature over its manifest) in the description.
  That file is what ``POST /moorage/v1/edge/fleets/{fleet}/deployments`` publishes to a fleet.

The key is the home's ``edge/signing-key.pem`` (``control/edge_deployments.py``), the one ``moorage edge
compile`` signs with and the fleets verify against. Jobs run in a child process each
(``compiler/jobs.py`` through ``monitor.common.jobs.run_in_subprocess``: onnx, skl2onnx and the frameworks
never load into the server), two at a time; ``control/job_runs.py`` keeps the task/stop/restart bookkeeping.
Rows (kinds ``compilation-job``, ``edge-packaging-job``) survive a restart; a job the last server was running
is Failed on start (its output was never written), a Stopping one Stopped. Statuses are stored in the
vocabulary JobRuns shares with the other jobs and shown in SageMaker's (``INPROGRESS``, ``COMPLETED``...).
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from moorage.compiler.compile import default_name
from moorage.compiler.source import SAGEMAKER_FRAMEWORKS as _FRAMEWORKS
from moorage.compiler.source import UNSUPPORTED_SAGEMAKER as _UNSUPPORTED_FRAMEWORKS
from moorage.control.context import Context
from moorage.control.edge_deployments import signing_key_path
from moorage.control.job_runs import FAILED, IN_PROGRESS, STOPPED, STOPPING, JobRuns
from moorage.control.paging import list_query, offset_token
from moorage.control.resources import put_tags, save_changes
from moorage.control.times import timestamp
from moorage.errors import ResourceInUse, ResourceNotFound, ValidationException
from moorage.monitor.common.jobs import run_in_subprocess
from moorage.store.locations import StorageError, check_location, join
from moorage.store.metadata import AlreadyExists, ListQuery, Resource

log = logging.getLogger("moorage.compilation_jobs")

COMPILATION_JOB = "compilation-job"
PACKAGING_JOB = "edge-packaging-job"
COMPLETED = "Completed"
COMPILE_RUNNER = "moorage.compiler.jobs:run_compilation"
PACKAGE_RUNNER = "moorage.compiler.jobs:run_packaging"
MAX_REASON = 1024
# Jobs compiling at once: each is a process that may load a framework and a model; more would only queue on
# the CPUs.
CONCURRENT_JOBS = 2
RESTART_REASON = ("The server stopped while the job was running; the job was not resumed and its output was not "
                  "written. Create a new job.")
# JobRuns' statuses -> SageMaker's CompilationJobStatus / EdgePackagingJobStatus.
_SAGEMAKER_STATUS = {IN_PROGRESS: "INPROGRESS", COMPLETED: "COMPLETED", FAILED: "FAILED", STOPPING: "STOPPING",
                     STOPPED: "STOPPED"}
_STORED_STATUS = {v: k for k, v in _SAGEMAKER_STATUS.items()} | {"STARTING": IN_PROGRESS}
_COMPILER_OPTIONS = {"quantize": str, "validation_data": str, "label_column": (str, int), "tolerance": (int, float),
                     "task": str, "name": str, "version": str, "input_shape": list}
# What a job's result adds to its row (compiler/jobs.py): the digest, the signature, the compiler's record.
_RESULT_FIELDS = ("ArtifactDigest", "ModelSignature", "SigningKeyId", "Sizes", "Validation", "Optimization",
                  "PackageBytes", "Notes")
# What a device can report as its model (control/edge_deployments.py's rule, moorage.edge.package's patterns).
_NAME_HINT = "4 to 63 letters, digits and hyphens"


def _stem(uri: str) -> str:
    last = uri.rstrip("/").rsplit("/", 1)[-1]
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if last.endswith(suffix):
            return last[: -len(suffix)]
    return last.rsplit(".", 1)[0] if "." in last else last


def _target(output: dict[str, Any]) -> str:
    if output.get("TargetDevice"):
        return str(output["TargetDevice"])
    platform = output.get("TargetPlatform") or {}
    parts = [platform.get("Os"), platform.get("Arch"), platform.get("Accelerator")]
    return "_".join(p.lower() for p in parts if p)


def _checked_location(value: str, field: str) -> None:
    try:
        check_location(value, field)
    except StorageError as exc:
        raise ValidationException(str(exc)) from exc


class CompilationJobs:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.compilations = JobRuns(ctx, COMPILATION_JOB, "compilation job", "CompilationEndTime", RESTART_REASON,
                                    cleanup=lambda name: self._clean(COMPILATION_JOB, name))
        self.packagings = JobRuns(ctx, PACKAGING_JOB, "edge packaging job", "PackagingEndTime", RESTART_REASON,
                                  cleanup=lambda name: self._clean(PACKAGING_JOB, name))
        self._slots: asyncio.Semaphore | None = None  # made on first use: it belongs to the server's loop

    # -- helpers ---------------------------------------------------------------------------------------
    def _work_dir(self, kind: str, name: str) -> Path:
        return self.ctx.settings.home / "edge" / "jobs" / kind / name

    def _clean(self, kind: str, name: str) -> None:
        shutil.rmtree(self._work_dir(kind, name), ignore_errors=True)

    def _log_path(self, kind: str, name: str) -> Path:
        return self.ctx.settings.logs_dir / f"{kind}s" / name / "job.log"

    def _row(self, kind: str, name: str) -> Resource:
        row = self.ctx.store.get(kind, name)
        if row is None:
            noun = "compilation job" if kind == COMPILATION_JOB else "edge packaging job"
            raise ResourceNotFound(f"Could not find {noun} {name}.")
        return row

    # -- CreateCompilationJob --------------------------------------------------------------------------
    def _checked_compilation(self, req: dict[str, Any]) -> dict[str, Any]:
        if req.get("ModelPackageVersionArn"):
            raise ValidationException("ModelPackageVersionArn: moorage compiles a model archive; give "
                                      "InputConfig.S3Uri instead.")
        if req.get("VpcConfig"):
            raise ValidationException("VpcConfig: moorage runs compilation jobs on its own host; there is no VPC.")
        input_config = req.get("InputConfig")
        if not input_config:
            raise ValidationException("InputConfig is required: the S3Uri of the model archive and its Framework.")
        framework = str(input_config.get("Framework", "")).upper()
        if framework in _UNSUPPORTED_FRAMEWORKS:
            raise ValidationException(f"InputConfig.Framework {framework}: moorage compiles "
                                      f"{', '.join(_FRAMEWORKS)} models to ONNX for its edge agent.")
        if framework not in _FRAMEWORKS:
            raise ValidationException(f"InputConfig.Framework {framework!r}: one of {', '.join(_FRAMEWORKS)}.")
        _checked_location(input_config["S3Uri"], "InputConfig.S3Uri")
        if input_config.get("DataInputConfig"):
            try:
                json.loads(input_config["DataInputConfig"])
            except ValueError as exc:
                raise ValidationException(f"InputConfig.DataInputConfig is not JSON: {exc}") from exc
        output = req["OutputConfig"]
        _checked_location(output["S3OutputLocation"], "OutputConfig.S3OutputLocation")
        if bool(output.get("TargetDevice")) == bool(output.get("TargetPlatform")):
            raise ValidationException("OutputConfig: give either TargetDevice or TargetPlatform (exactly one).")
        return self._compiler_options(output.get("CompilerOptions"))

    @staticmethod
    def _compiler_options(text: str | None) -> dict[str, Any]:
        if not text:
            return {}
        try:
            options = json.loads(text)
        except ValueError as exc:
            raise ValidationException(f"OutputConfig.CompilerOptions is not JSON: {exc}") from exc
        if not isinstance(options, dict):
            raise ValidationException("OutputConfig.CompilerOptions must be a JSON object.")
        for key, kind in _COMPILER_OPTIONS.items():
            if key in options and not isinstance(options[key], kind):
                raise ValidationException(f"OutputConfig.CompilerOptions {key}: {options[key]!r} has the wrong type.")
        if options.get("quantize") not in (None, "int8"):
            raise ValidationException(f"OutputConfig.CompilerOptions quantize {options['quantize']!r}: the only "
                                      "quantisation is \"int8\".")
        if options.get("task") not in (None, "classification", "regression"):
            raise ValidationException("OutputConfig.CompilerOptions task: classification or regression.")
        if "tolerance" in options and not options["tolerance"] >= 0:
            raise ValidationException("OutputConfig.CompilerOptions tolerance: a drop of at least 0.")
        if options.get("validation_data"):
            _checked_location(options["validation_data"], "OutputConfig.CompilerOptions validation_data")
        return {k: v for k, v in options.items() if k in _COMPILER_OPTIONS}

    async def create_compilation_job(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["CompilationJobName"]
        arn = self.ctx.arn(COMPILATION_JOB, name)
        in_use = ResourceInUse(f"Compilation job {name} already exists ({arn}).")
        if self.ctx.store.get(COMPILATION_JOB, name) is not None:
            raise in_use
        options = self._checked_compilation(req)
        output = req["OutputConfig"]
        stem = _stem(req["InputConfig"]["S3Uri"])
        artifact = join(output["S3OutputLocation"], f"{stem}-{_target(output)}.tar.gz")
        body = {key: req[key] for key in ("RoleArn", "InputConfig", "OutputConfig", "StoppingCondition") if key in req}
        body.update(S3ModelArtifacts=artifact, Options=options)
        try:
            self.ctx.store.create(COMPILATION_JOB, name, arn, self.compilations.owned(body), status=IN_PROGRESS)
        except AlreadyExists as exc:
            raise in_use from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        log.info("compilation job %s: %s %s -> %s", name, req["InputConfig"]["Framework"],
                 req["InputConfig"]["S3Uri"], artifact)
        self.compilations.start(name, lambda: self._run(COMPILATION_JOB, name))
        return {"CompilationJobArn": arn}

    async def describe_compilation_job(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._row(COMPILATION_JOB, req["CompilationJobName"])
        body = row.body
        out: dict[str, Any] = {
            "CompilationJobName": row.name, "CompilationJobArn": row.arn,
            "CompilationJobStatus": _SAGEMAKER_STATUS.get(row.status, row.status),
            "CompilationStartTime": timestamp(body.get("CompilationStartTime")),
            "CompilationEndTime": timestamp(body.get("CompilationEndTime")),
            "StoppingCondition": body.get("StoppingCondition") or {},
            "CreationTime": timestamp(row.created_at), "LastModifiedTime": timestamp(row.modified_at),
            "FailureReason": body.get("FailureReason") or "",
            "ModelArtifacts": {"S3ModelArtifacts": body["S3ModelArtifacts"]},
            "RoleArn": body.get("RoleArn") or "", "InputConfig": body.get("InputConfig") or {},
            "OutputConfig": body.get("OutputConfig") or {},
        }
        if body.get("ArtifactDigest"):
            out["ModelDigests"] = {"ArtifactDigest": body["ArtifactDigest"]}
        data_input = (body.get("InputConfig") or {}).get("DataInputConfig")
        if data_input:
            out["DerivedInformation"] = {"DerivedDataInputConfig": data_input}
        return {k: v for k, v in out.items() if v is not None}

    async def list_compilation_jobs(self, req: dict[str, Any]) -> dict[str, Any]:
        summaries = [self._compilation_summary(r) for r in self._listed(COMPILATION_JOB, req)]
        return self._page(summaries, req, "CompilationJobSummaries", "CompilationJobName",
                          {"Name": "CompilationJobName", "Status": "CompilationJobStatus"})

    async def stop_compilation_job(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._row(COMPILATION_JOB, req["CompilationJobName"])
        self.compilations.stop(row.name, row.status)
        return {}

    def _compilation_summary(self, row: Resource) -> dict[str, Any]:
        output = row.body.get("OutputConfig") or {}
        platform = output.get("TargetPlatform") or {}
        out = {"CompilationJobName": row.name, "CompilationJobArn": row.arn, "CreationTime": timestamp(row.created_at),
               "CompilationStartTime": timestamp(row.body.get("CompilationStartTime")),
               "CompilationEndTime": timestamp(row.body.get("CompilationEndTime")),
               "CompilationTargetDevice": output.get("TargetDevice"),
               "CompilationTargetPlatformOs": platform.get("Os"),
               "CompilationTargetPlatformArch": platform.get("Arch"),
               "CompilationTargetPlatformAccelerator": platform.get("Accelerator"),
               "LastModifiedTime": timestamp(row.modified_at),
               "CompilationJobStatus": _SAGEMAKER_STATUS.get(row.status, row.status)}
        return {k: v for k, v in out.items() if v is not None}

    # -- CreateEdgePackagingJob ------------------------------------------------------------------------
    async def create_edge_packaging_job(self, req: dict[str, Any]) -> dict[str, Any]:
        from moorage.edge.package import PackageError, check_name_version

        name = req["EdgePackagingJobName"]
        arn = self.ctx.arn(PACKAGING_JOB, name)
        in_use = ResourceInUse(f"Edge packaging job {name} already exists ({arn}).")
        if self.ctx.store.get(PACKAGING_JOB, name) is not None:
            raise in_use
        compilation = self.ctx.store.get(COMPILATION_JOB, req["CompilationJobName"])
        if compilation is None:
            raise ValidationException(f"Compilation job {req['CompilationJobName']} does not exist.")
        if compilation.status != COMPLETED:
            raise ValidationException(f"Compilation job {compilation.name} is "
                                      f"{_SAGEMAKER_STATUS.get(compilation.status, compilation.status)}; only a "
                                      "COMPLETED compilation job's model can be packaged.")
        try:
            check_name_version(req["ModelName"], req["ModelVersion"])
        except PackageError as exc:
            raise ValidationException(f"{exc} (a device reports them in its heartbeat; {_NAME_HINT}).") from exc
        if req.get("ResourceKey"):
            raise ValidationException("ResourceKey: moorage does not encrypt packages with KMS keys.")
        output = req["OutputConfig"]
        if output.get("PresetDeploymentType"):
            raise ValidationException("OutputConfig.PresetDeploymentType: moorage has no Greengrass components; "
                                      "publish the package to a device fleet instead.")
        _checked_location(output["S3OutputLocation"], "OutputConfig.S3OutputLocation")
        artifact = join(output["S3OutputLocation"], f"{req['ModelName']}-{req['ModelVersion']}.tar.gz")
        body = {key: req[key] for key in ("CompilationJobName", "ModelName", "ModelVersion", "RoleArn",
                                          "OutputConfig") if key in req}
        body.update(ModelArtifact=artifact, Source=compilation.body["S3ModelArtifacts"])
        try:
            self.ctx.store.create(PACKAGING_JOB, name, arn, self.packagings.owned(body), status=IN_PROGRESS)
        except AlreadyExists as exc:
            raise in_use from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        log.info("edge packaging job %s: %s -> %s", name, compilation.name, artifact)
        self.packagings.start(name, lambda: self._run(PACKAGING_JOB, name))
        return {}

    async def describe_edge_packaging_job(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._row(PACKAGING_JOB, req["EdgePackagingJobName"])
        body = row.body
        completed = row.status == COMPLETED
        out = {
            "EdgePackagingJobArn": row.arn, "EdgePackagingJobName": row.name,
            "CompilationJobName": body.get("CompilationJobName"), "ModelName": body.get("ModelName"),
            "ModelVersion": body.get("ModelVersion"), "RoleArn": body.get("RoleArn"),
            "OutputConfig": body.get("OutputConfig"),
            "EdgePackagingJobStatus": _SAGEMAKER_STATUS.get(row.status, row.status),
            "EdgePackagingJobStatusMessage": body.get("FailureReason") or body.get("StatusMessage"),
            "CreationTime": timestamp(row.created_at), "LastModifiedTime": timestamp(row.modified_at),
            "ModelArtifact": body.get("ModelArtifact") if completed else None,
            "ModelSignature": body.get("ModelSignature") if completed else None,
        }
        return {k: v for k, v in out.items() if v is not None}

    async def list_edge_packaging_jobs(self, req: dict[str, Any]) -> dict[str, Any]:
        rows = self._listed(PACKAGING_JOB, req)
        if req.get("ModelNameContains"):
            rows = [r for r in rows if req["ModelNameContains"] in (r.body.get("ModelName") or "")]
        summaries = [self._packaging_summary(r) for r in rows]
        return self._page(summaries, req, "EdgePackagingJobSummaries", "EdgePackagingJobName",
                          {"NAME": "EdgePackagingJobName", "MODEL_NAME": "ModelName",
                           "STATUS": "EdgePackagingJobStatus", "LAST_MODIFIED_TIME": "LastModifiedTime"})

    async def stop_edge_packaging_job(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self._row(PACKAGING_JOB, req["EdgePackagingJobName"])
        self.packagings.stop(row.name, row.status)
        return {}

    def _packaging_summary(self, row: Resource) -> dict[str, Any]:
        body = row.body
        out = {"EdgePackagingJobArn": row.arn, "EdgePackagingJobName": row.name,
               "EdgePackagingJobStatus": _SAGEMAKER_STATUS.get(row.status, row.status),
               "CompilationJobName": body.get("CompilationJobName"), "ModelName": body.get("ModelName"),
               "ModelVersion": body.get("ModelVersion"), "CreationTime": timestamp(row.created_at),
               "LastModifiedTime": timestamp(row.modified_at)}
        return {k: v for k, v in out.items() if v is not None}

    # -- listing ---------------------------------------------------------------------------------------
    def _listed(self, kind: str, req: dict[str, Any]) -> list[Resource]:
        query = list_query(req)
        status = req.get("StatusEquals")
        everything = ListQuery(name_contains=query.name_contains, created_after=query.created_after,
                               created_before=query.created_before, modified_after=query.modified_after,
                               modified_before=query.modified_before,
                               status=_STORED_STATUS.get(status, status) if status else None)
        return self.ctx.store.list(kind, everything)

    @staticmethod
    def _page(summaries: list[dict[str, Any]], req: dict[str, Any], field: str, name_field: str,
              sort_fields: dict[str, str]) -> dict[str, Any]:
        query = list_query(req)
        sort_key = sort_fields.get(req.get("SortBy") or "", "CreationTime")
        summaries.sort(key=lambda s: (s.get(sort_key) or "", s[name_field]), reverse=query.descending)
        assert query.limit is not None
        size = query.limit - 1
        out: dict[str, Any] = {field: summaries[query.offset:query.offset + size]}
        if query.offset + size < len(summaries):
            out["NextToken"] = offset_token(query.offset + size)
        return out

    # -- the jobs themselves ---------------------------------------------------------------------------
    def _spec(self, kind: str, row: Resource) -> tuple[str, dict[str, Any]]:
        body = row.body
        common = {"job_name": row.name, "work_dir": str(self._work_dir(kind, row.name)),
                  "signing_key": str(signing_key_path(self.ctx.settings.home))}
        if kind == PACKAGING_JOB:
            return PACKAGE_RUNNER, {**common, "source": body["Source"], "output": body["ModelArtifact"],
                                    "model_name": body["ModelName"], "model_version": body["ModelVersion"],
                                    "compilation_job": body["CompilationJobName"]}
        input_config, output = body["InputConfig"], body["OutputConfig"]
        return COMPILE_RUNNER, {
            **common, "source": input_config["S3Uri"], "output": body["S3ModelArtifacts"],
            "framework": _FRAMEWORKS[input_config["Framework"].upper()],
            "framework_version": input_config.get("FrameworkVersion"),
            "data_input_config": input_config.get("DataInputConfig"),
            "target_device": output.get("TargetDevice"), "target_platform": output.get("TargetPlatform"),
            "options": body.get("Options") or {}, "default_name": default_name(input_config["S3Uri"])}

    async def _run(self, kind: str, name: str) -> None:
        runs = self.compilations if kind == COMPILATION_JOB else self.packagings
        start_field, end_field = (("CompilationStartTime", "CompilationEndTime") if kind == COMPILATION_JOB
                                  else ("PackagingStartTime", "PackagingEndTime"))
        if self._slots is None:
            self._slots = asyncio.Semaphore(CONCURRENT_JOBS)
        status, changes = FAILED, {}
        try:
            async with self._slots:
                row = self.ctx.store.get(kind, name)
                if row is None:
                    return
                save_changes(self.ctx.store, kind, name, **{start_field: time.time()})
                runner, spec = self._spec(kind, row)
                limit = (row.body.get("StoppingCondition") or {}).get("MaxRuntimeInSeconds")
                job = run_in_subprocess(runner, spec, name, log_path=str(self._log_path(kind, name)))
                try:
                    result = await asyncio.wait_for(job, timeout=limit) if limit else await job
                except TimeoutError:
                    result = {"Status": FAILED, "FailureReason": f"The job ran longer than its MaxRuntimeInSeconds "
                                                                 f"({limit} s) and was stopped."}
            status = result.get("Status", FAILED)
            reason = (result.get("FailureReason") or "")[:MAX_REASON] or None
            changes = {"FailureReason": reason}
            if status == COMPLETED:
                changes.update({k: result[k] for k in _RESULT_FIELDS if result.get(k) is not None})
            elif not reason:
                changes["FailureReason"] = "The job ended without saying why; see its log."
        except asyncio.CancelledError:
            if runs.cancelled_by_stop(name):
                status, changes = STOPPED, {}
            else:
                status, changes = FAILED, {"FailureReason": RESTART_REASON}
        except Exception as exc:
            log.exception("%s %s failed unexpectedly", kind, name)
            status, changes = FAILED, {"FailureReason": f"Internal error: {type(exc).__name__}: {exc}"[:MAX_REASON]}
        finally:
            runs.finished(name)
            self._clean(kind, name)
        log.info("%s %s: %s%s", kind, name, status,
                 f" ({changes['FailureReason']})" if changes.get("FailureReason") else "")
        save_changes(self.ctx.store, kind, name, status, **{end_field: time.time()}, **changes)

    # -- server lifecycle ------------------------------------------------------------------------------
    def recover(self, alive: set[str] | None = None) -> int:
        """Settle the jobs a stopped server (or, given ``alive``, a router not in it) left running;
        returns how many."""
        return self.compilations.settle_cut_off(alive) + self.packagings.settle_cut_off(alive)

    async def shutdown(self) -> None:
        await self.compilations.shutdown()
        await self.packagings.shutdown()
