"""Transform jobs: SageMaker's batch transform lifecycle over the store, driving the batch data plane.

InProgress -> Completed | Failed (FailureReason names the object and records) ;
InProgress -> Stopping -> Stopped (StopTransformJob: the job's instances are stopped, unfinished
outputs removed; finished ``.out`` objects stay, as SageMaker keeps them).

A job runs in a background task of the server: ``backend local`` (the default) starts its
instances beside the server, ``backend ray`` runs it on a Ray cluster through a driver process.
The backend is chosen per job by the tag ``moorage:backend`` (``local`` | ``ray``, with
``moorage:ray-address``), else by the server's ``batch`` settings (``MOORAGE_BATCH_BACKEND`` /
``MOORAGE_RAY_ADDRESS``): tags are the field boto3 already carries (DESIGN.md, contract 4).

A restarted server does not resume jobs: a job found InProgress was cut off mid-way, its partial
outputs were never renamed into place, and rerunning it silently would double the work already
written by finished objects. It is marked Failed ("the server stopped while the job was running"),
and one found Stopping is marked Stopped; its temporary files are removed. ``KmsKeyId`` is kept in
the job's description and otherwise ignored: outputs are written as the output store writes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from typing import Any

from moorage.batch.invoke import BatchFailure
from moorage.batch.local import LocalBackend, batch_launch
from moorage.batch.progress import Progress
from moorage.batch.ray_backend import RayBackend
from moorage.batch.spec import SpecError, TransformSpec
from moorage.control.context import MODEL, OWNER, Context
from moorage.control.job_runs import FAILED, IN_PROGRESS, STOPPED, JobRuns
from moorage.control.launch import launch_specs
from moorage.control.paging import list_query, page
from moorage.control.resources import put_tags, save_changes
from moorage.control.times import timestamp
from moorage.errors import ResourceNotFound, ValidationException
from moorage.store.artifacts import ArtifactError
from moorage.store.metadata import AlreadyExists

log = logging.getLogger("moorage.transform_jobs")

TRANSFORM_JOB = "transform-job"
COMPLETED = "Completed"
BACKEND_TAG, RAY_ADDRESS_TAG = "moorage:backend", "moorage:ray-address"
BACKENDS = ("local", "ray")
PROGRESS_SAVE_INTERVAL_S = 1.0
MAX_REASON = 1024  # FailureReason's length limit in SageMaker's API
RESTART_REASON = ("The server stopped while the job was running; the job was not resumed. Objects whose "
                  "output was complete keep their .out files; create a new job for the rest.")
# Fields of the CreateTransformJob request kept as the job's description.
_DESCRIBED = ("ModelName", "MaxConcurrentTransforms", "ModelClientConfig", "MaxPayloadInMB", "BatchStrategy",
              "Environment", "TransformInput", "TransformOutput", "DataCaptureConfig", "TransformResources",
              "DataProcessing", "ExperimentConfig")


class TransformJobs:
    def __init__(self, ctx: Context):
        self.ctx = ctx
        self._progress: dict[str, Progress] = {}
        self.runs = JobRuns(ctx, TRANSFORM_JOB, "transform job", "TransformEndTime", RESTART_REASON,
                            cleanup=lambda name: shutil.rmtree(self.job_dir(name) / "spool", ignore_errors=True))

    # Helpers ----------------------------------------------------------------------------------------
    def _not_found(self, name: str) -> ResourceNotFound:
        return ResourceNotFound(f"Could not find requested job with name {name}")

    def _save(self, name: str, status: str | None = None, **changes: Any) -> None:
        save_changes(self.ctx.store, TRANSFORM_JOB, name, status, **changes)

    def job_dir(self, name: str) -> Any:
        return self.ctx.settings.home / "transform-jobs" / name

    def _backend(self, tags: dict[str, str]) -> tuple[str, str | None]:
        batch = self.ctx.settings.batch
        backend = (tags.get(BACKEND_TAG) or batch.backend).strip().lower()
        if backend not in BACKENDS:
            raise ValidationException(f"Tag {BACKEND_TAG} must be one of {', '.join(BACKENDS)}, not {backend!r}.")
        address = tags.get(RAY_ADDRESS_TAG) or self.ctx.settings.cluster.ray_address or None
        return backend, address

    # API operations ---------------------------------------------------------------------------------
    async def create_transform_job(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["TransformJobName"]
        arn = self.ctx.arn(TRANSFORM_JOB, name)
        if self.ctx.store.get(MODEL, req["ModelName"]) is None:
            raise ValidationException(f'Could not find model "{self.ctx.arn(MODEL, req["ModelName"])}".')
        try:
            TransformSpec.from_request(req)
        except SpecError as exc:
            raise ValidationException(str(exc)) from exc
        tags = {t["Key"]: t.get("Value", "") for t in req.get("Tags") or []}
        backend, address = self._backend(tags)
        body = {key: req[key] for key in _DESCRIBED if key in req}
        body.update(Backend=backend, RayAddress=address)
        try:
            self.ctx.store.create(TRANSFORM_JOB, name, arn, self.runs.owned(body), status=IN_PROGRESS)
        except AlreadyExists as exc:
            raise ValidationException("Job name must be unique within an AWS account and region, and a job with "
                                      f"this name already exists ({arn})") from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        log.info("transform job %s: model %s, %d x %s, backend %s", name, req["ModelName"],
                 req["TransformResources"]["InstanceCount"], req["TransformResources"]["InstanceType"], backend)
        self.runs.start(name, lambda: self._run(name))
        return {"TransformJobArn": arn}

    async def describe_transform_job(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["TransformJobName"]
        row = self.ctx.store.get(TRANSFORM_JOB, name)
        if row is None:
            raise self._not_found(name)
        out = {k: v for k, v in row.body.items() if k in _DESCRIBED or k == "FailureReason"}
        out.update(TransformJobName=row.name, TransformJobArn=row.arn, TransformJobStatus=row.status,
                   CreationTime=timestamp(row.created_at),
                   TransformStartTime=timestamp(row.body.get("TransformStartTime")),
                   TransformEndTime=timestamp(row.body.get("TransformEndTime")))
        return out

    async def list_transform_jobs(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query(req)
        rows, token = page(self.ctx.store.list(TRANSFORM_JOB, query), query)
        out: dict[str, Any] = {"TransformJobSummaries": [
            {"TransformJobName": r.name, "TransformJobArn": r.arn, "CreationTime": timestamp(r.created_at),
             "TransformEndTime": timestamp(r.body.get("TransformEndTime")),
             "LastModifiedTime": timestamp(r.modified_at), "TransformJobStatus": r.status,
             "FailureReason": r.body.get("FailureReason")} for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    async def stop_transform_job(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["TransformJobName"]
        row = self.ctx.store.get(TRANSFORM_JOB, name)
        if row is None:
            raise self._not_found(name)
        self.runs.stop(name, row.status, row.body.get(OWNER))
        return {}

    # The job itself ---------------------------------------------------------------------------------
    async def _run(self, name: str) -> None:
        row = self.ctx.store.get(TRANSFORM_JOB, name)
        if row is None:
            return
        body = row.body
        progress = Progress(backend=body.get("Backend", "local"))
        self._progress[name] = progress
        self._save(name, TransformStartTime=time.time())
        saver = asyncio.get_running_loop().create_task(self._save_progress(name, progress))
        job_dir = self.job_dir(name)
        status, reason = COMPLETED, None
        try:
            await self._execute(name, body, progress, job_dir)
        except BatchFailure as exc:
            status, reason = FAILED, str(exc)
        except asyncio.CancelledError:
            if self.runs.cancelled_by_stop(name):
                status = STOPPED
            else:
                status, reason = FAILED, RESTART_REASON
        except Exception as exc:
            log.exception("transform job %s failed unexpectedly", name)
            status, reason = FAILED, f"Internal error: {type(exc).__name__}: {exc}"
        finally:
            saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await saver
            self.runs.finished(name)
            self._progress.pop(name, None)
            shutil.rmtree(job_dir / "spool", ignore_errors=True)
        if reason:
            log.warning("transform job %s %s: %s", name, status.lower(), reason)
        else:
            log.info("transform job %s %s: %d record(s) in %d object(s)", name, status.lower(),
                     progress.records_done, progress.files_done)
        self._save(name, status, FailureReason=reason[:MAX_REASON] if reason else None,
                   TransformEndTime=time.time(), Progress=progress.to_dict())

    async def _execute(self, name: str, body: dict[str, Any], progress: Progress, job_dir: Any) -> None:
        request = {**body, "TransformJobName": name}
        spec = TransformSpec.from_request(request)
        model_row = self.ctx.store.get(MODEL, body["ModelName"])
        if model_row is None:
            raise BatchFailure(f'Could not find model "{self.ctx.arn(MODEL, body["ModelName"])}".')
        try:
            launches = await launch_specs(self.ctx, model_row.body, spec.instance_type)
        except (ArtifactError, ValidationException) as exc:
            raise BatchFailure(f"Could not prepare the model {body['ModelName']}: "
                               f"{getattr(exc, 'message', None) or exc}") from exc
        log_dir = self.ctx.settings.logs_dir / "transform-jobs" / name
        if body.get("Backend") == "ray":
            backend: LocalBackend | RayBackend = RayBackend(
                spec, [batch_launch(launch, spec).to_dict() for launch in launches], ray_address=body.get("RayAddress"),
                job_dir=job_dir, log_dir=log_dir, progress=progress)
        else:
            spool = job_dir / "spool"
            spool.mkdir(parents=True, exist_ok=True)
            backend = LocalBackend(spec, launches, launcher=self.ctx.routes.local_launcher, log_dir=log_dir,
                                   spool_dir=spool, progress=progress)
        await backend.run()

    async def _save_progress(self, name: str, progress: Progress) -> None:
        while True:
            await asyncio.sleep(PROGRESS_SAVE_INTERVAL_S)
            self._save(name, Progress=progress.to_dict())

    def progress(self, name: str) -> dict[str, Any] | None:
        """Live progress of a running job (the store has it a second later)."""
        progress = self._progress.get(name)
        return progress.to_dict() if progress else None

    # Server lifecycle -------------------------------------------------------------------------------
    def recover(self, alive: set[str] | None = None) -> int:
        """Settle the jobs a stopped server (or, given ``alive``, a router not in it) left running;
        returns how many."""
        return self.runs.settle_cut_off(alive)

    async def shutdown(self) -> None:
        await self.runs.shutdown()


def transform_job_state(ctx: Context, jobs: TransformJobs | None, name: str) -> dict[str, Any] | None:
    """The native API's view of a job: status, reason and progress (live when the job runs here)."""
    row = ctx.store.get(TRANSFORM_JOB, name)
    if row is None:
        return None
    live = jobs.progress(name) if jobs is not None else None
    return {"TransformJobName": row.name, "TransformJobArn": row.arn, "TransformJobStatus": row.status,
            "FailureReason": row.body.get("FailureReason"), "Backend": row.body.get("Backend", "local"),
            "CreationTime": row.created_at, "TransformStartTime": row.body.get("TransformStartTime"),
            "TransformEndTime": row.body.get("TransformEndTime"),
            "Progress": live or row.body.get("Progress") or {}}
