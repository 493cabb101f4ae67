"""Batch transform jobs and multi-model endpoints as the jobs page shows them.

A job's progress is what ``GET /moorage/v1/transform-jobs/NAME`` answers (``transform_job_state``:
live while the job runs in this server, else what the store kept); this adds the fraction done and the
rate (records and bytes a second since its instances were ready). A multi-model endpoint's hosts are
its route table's model caches (``RouteTable.model_caches``), as ``GET .../endpoints/NAME/models``
shows them.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from moorage.control.context import Context
from moorage.control.transform_jobs import TRANSFORM_JOB, TransformJobs, transform_job_state
from moorage.store.metadata import ListQuery

RUNNING = ("InProgress", "Stopping")


def _clock(epoch: Any) -> str:
    if isinstance(epoch, dt.datetime):
        return epoch.strftime("%Y-%m-%d %H:%M:%S")
    if not isinstance(epoch, int | float):
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _epoch(value: Any) -> float | None:
    if isinstance(value, dt.datetime):
        return value.timestamp()
    return float(value) if isinstance(value, int | float) else None


def job_view(state: dict[str, Any], now: float | None = None) -> dict[str, Any]:
    """One job: status, reason, progress as fractions, and its rate so far."""
    progress = state.get("Progress") or {}
    status = state.get("TransformJobStatus")
    files_total, files_done = int(progress.get("FilesTotal", 0) or 0), int(progress.get("FilesDone", 0) or 0)
    bytes_total, bytes_done = int(progress.get("BytesTotal", 0) or 0), int(progress.get("BytesDone", 0) or 0)
    records = int(progress.get("RecordsDone", 0) or 0)
    began = _epoch(progress.get("InstancesReadyAt")) or _epoch(progress.get("StartedAt"))
    ended = _epoch(state.get("TransformEndTime")) if status not in RUNNING else None
    until = ended or (now if now is not None else time.time())
    seconds = until - began if began is not None and until > began else None
    if bytes_total:
        fraction: float | None = min(1.0, bytes_done / bytes_total)
    elif files_total:
        fraction = min(1.0, files_done / files_total)
    else:
        fraction = 1.0 if status == "Completed" else None
    return {"name": state.get("TransformJobName"), "status": status, "backend": state.get("Backend", "local"),
            "failure_reason": state.get("FailureReason"), "created": _clock(state.get("CreationTime")),
            "files_done": files_done, "files_total": files_total, "records": records,
            "batches": int(progress.get("MiniBatchesDone", 0) or 0), "bytes_done": bytes_done,
            "bytes_total": bytes_total, "fraction": fraction,
            "percent": round(100 * fraction, 1) if fraction is not None else None,
            "seconds": seconds, "records_per_s": records / seconds if seconds else None,
            "bytes_per_s": bytes_done / seconds if seconds else None,
            "instances": len(progress.get("Instances") or []), "running": status in RUNNING}


def job_rows(ctx: Context, jobs: TransformJobs | None, limit: int = 100) -> list[dict[str, Any]]:
    """The newest transform jobs, each with its progress."""
    out = []
    for row in ctx.store.list(TRANSFORM_JOB, ListQuery(limit=limit)):
        state = transform_job_state(ctx, jobs, row.name)
        if state is not None:
            out.append(job_view(state))
    return out


def model_hosts(ctx: Context, endpoint: str | None = None) -> list[dict[str, Any]]:
    """Per multi-model endpoint and variant, each host with the models it has loaded."""
    out = []
    for name, variant, cache in ctx.routes.model_caches():
        if endpoint is not None and name != endpoint:
            continue
        hosts = []
        for host in cache.snapshot():
            models = sorted(host.get("Models") or [], key=lambda m: -(m.get("LastUsed") or 0))
            hosts.append({"id": host.get("HostId"), "used": host.get("UsedBytes", 0),
                          "budget": host.get("BudgetBytes", 0), "hit_rate": host.get("HitRate"),
                          "loads": host.get("Loads", 0), "evictions": host.get("Evictions", 0),
                          "failed_loads": host.get("FailedLoads", 0), "loading": list(host.get("Loading") or []),
                          "models": [{"name": m.get("TargetModel"), "size": m.get("SizeBytes", 0),
                                      "hits": m.get("Hits", 0), "in_flight": m.get("InFlight", 0),
                                      "last_used": _clock(m.get("LastUsed")), "alive": m.get("Alive", True)}
                                     for m in models]})
        out.append({"endpoint": name, "variant": variant, "hosts": hosts})
    return out
