"""CloudWatch Logs' read API (``Logs_20140328.*``, AWS JSON 1.1) over the log files moorage keeps.

What SageMaker users read in CloudWatch, with SageMaker's group and stream names:

- ``/aws/sagemaker/Endpoints/{EndpointName}``, stream ``{VariantName}/{InstanceId}``: the instance's
  log, ``{endpoint}/{variant}/{instance}.log``;
- ``/aws/sagemaker/TransformJobs``, stream ``{TransformJobName}/{InstanceId}-{epoch}``: each instance
  of the job, ``transform-jobs/{job}/{instance}.log``;
- ``/aws/sagemaker/ProcessingJobs``, stream ``{ProcessingJobName}/algo-1-{epoch}``: a processing job's
  ``processing-jobs/{job}/algo-1.log`` and a monitoring execution's ``monitoring/{execution}/algo-1.log``
  (SageMaker runs executions as processing jobs, named after the execution).

``{epoch}`` is the job's creation time in seconds, as SageMaker names streams by when the instance
started. A group exists once something in it has logged (as in CloudWatch, where the first line
creates it); an unknown group or stream is ``ResourceNotFoundException`` with CloudWatch's message,
which the SageMaker SDK's log tailing expects before a job's first line. A transform job's Ray
driver log (``ray-driver.log``) and a monitoring execution's explainer instance are not streams: the
SDK waits for exactly ``InstanceCount`` streams of a job and loops on any more.

Reading (timestamps, tokens, filter patterns) is :mod:`moorage.control.log_files`; every read runs in
a worker thread, off the event loop that serves invocations.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moorage.control.context import ENDPOINT, Context
from moorage.control.log_files import (
    FilterPattern,
    LogStream,
    PatternError,
    TokenError,
    filter_page,
    log_base,
    read_page,
)
from moorage.control.paging import offset_token, token_offset
from moorage.errors import ApiError

ENDPOINTS_GROUP_PREFIX = "/aws/sagemaker/Endpoints/"
TRANSFORM_JOBS_GROUP = "/aws/sagemaker/TransformJobs"
PROCESSING_JOBS_GROUP = "/aws/sagemaker/ProcessingJobs"
# Folders of the logs directory that hold jobs' logs, not an endpoint's.
TRANSFORM_LOGS, PROCESSING_LOGS, MONITORING_LOGS = "transform-jobs", "processing-jobs", "monitoring"
JOB_FOLDERS = (TRANSFORM_LOGS, PROCESSING_LOGS, MONITORING_LOGS)
ALGO_LOG = "algo-1.log"
TRANSFORM_JOB, PROCESSING_JOB, EXECUTION = "transform-job", "processing-job", "monitoring-execution"
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
MAX_GROUPS_PAGE = 50
MAX_STREAMS_PAGE = 50


class LogsResourceNotFound(ApiError):
    code = "ResourceNotFoundException"
    status = 400


class InvalidParameter(ApiError):
    code = "InvalidParameterException"
    status = 400


def processing_log_path(logs_dir: Path, job_name: str) -> Path:
    """Where a processing job's log is written (the ``algo-1`` stream of ``/aws/sagemaker/ProcessingJobs``)."""
    return logs_dir / PROCESSING_LOGS / job_name / ALGO_LOG


def execution_log_path(logs_dir: Path, execution_name: str) -> Path:
    """Where a monitoring execution's log is written: its processing job's ``algo-1`` stream."""
    return logs_dir / MONITORING_LOGS / execution_name / ALGO_LOG


@dataclass
class Group:
    name: str
    created: int  # ms
    streams: Callable[[str | None], list[LogStream]]  # a name prefix narrows what is listed


class Logs:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    # -- where the logs are -------------------------------------------------------------------------------
    @property
    def logs_dir(self) -> Path:
        return self.ctx.settings.logs_dir

    def _created(self, kind: str, name: str) -> float | None:
        row = self.ctx.store.get(kind, name)
        return row.created_at if row is not None else None

    def _arn(self, group: str) -> str:
        return f"arn:aws:logs:{self.ctx.settings.region}:{self.ctx.settings.account_id}:log-group:{group}"

    def _endpoint_streams(self, endpoint: str, prefix: str | None) -> list[LogStream]:
        root = self.logs_dir / endpoint
        floor = int((self._created(ENDPOINT, endpoint) or 0) * 1000)
        streams = []
        for variant in _subdirs(root):
            if prefix and not (f"{variant}/".startswith(prefix) or prefix.startswith(f"{variant}/")):
                continue
            for base in _log_bases(root / variant):
                instance = base.removesuffix(".log")
                if _SAFE.match(instance):
                    streams.append(LogStream(f"{variant}/{instance}", root / variant / base, floor))
        return streams

    def _job_epoch(self, kind: str, name: str, folder: Path) -> int:
        created = self._created(kind, name)
        if created is None:
            # The job's row is gone (a deleted schedule's executions): its folder's first file names the time.
            stamps = [p.stat().st_mtime for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
            created = min(stamps, default=0.0)
        return int(created)

    def _transform_streams(self, prefix: str | None) -> list[LogStream]:
        root = self.logs_dir / TRANSFORM_LOGS
        streams = []
        for job in _job_folders(root, prefix):
            epoch = self._job_epoch(TRANSFORM_JOB, job, root / job)
            for base in _log_bases(root / job):
                instance = base.removesuffix(".log")
                if instance.startswith("i-") and _SAFE.match(instance):
                    streams.append(LogStream(f"{job}/{instance}-{epoch}", root / job / base, epoch * 1000))
        return streams

    def _processing_streams(self, prefix: str | None) -> list[LogStream]:
        streams = []
        for folder, kind in ((PROCESSING_LOGS, PROCESSING_JOB), (MONITORING_LOGS, EXECUTION)):
            root = self.logs_dir / folder
            for job in _job_folders(root, prefix):
                live = root / job / ALGO_LOG
                if live.exists() or any(True for _ in live.parent.glob(ALGO_LOG + ".*")):
                    epoch = self._job_epoch(kind, job, root / job)
                    streams.append(LogStream(f"{job}/algo-1-{epoch}", live, epoch * 1000))
        return streams

    def _groups(self) -> list[Group]:
        groups = []
        for endpoint in _subdirs(self.logs_dir):
            if endpoint in JOB_FOLDERS or not any(True for v in _subdirs(self.logs_dir / endpoint)
                                                  if _log_bases(self.logs_dir / endpoint / v)):
                continue
            created = self._created(ENDPOINT, endpoint) or _mtime(self.logs_dir / endpoint)
            groups.append(Group(ENDPOINTS_GROUP_PREFIX + endpoint, int(created * 1000),
                                lambda prefix, e=endpoint: self._endpoint_streams(e, prefix)))
        for name, lister, folders in ((TRANSFORM_JOBS_GROUP, self._transform_streams, (TRANSFORM_LOGS,)),
                                      (PROCESSING_JOBS_GROUP, self._processing_streams,
                                       (PROCESSING_LOGS, MONITORING_LOGS))):
            if lister(None):
                created = min(_mtime(self.logs_dir / f) for f in folders if (self.logs_dir / f).is_dir())
                groups.append(Group(name, int(created * 1000), lister))
        return sorted(groups, key=lambda g: g.name)

    def _group(self, req: dict[str, Any]) -> Group:
        """The request's log group (by name or ARN); ResourceNotFoundException if there is none."""
        name, identifier = req.get("logGroupName"), req.get("logGroupIdentifier")
        if name and identifier:
            raise InvalidParameter("Specify either logGroupName or logGroupIdentifier, not both.")
        if identifier:
            name = identifier.removesuffix(":*")
            if name.startswith("arn:"):
                name = name.split(":log-group:", 1)[-1]
        if not name:
            raise InvalidParameter("Either logGroupName or logGroupIdentifier is required.")
        if name.startswith(ENDPOINTS_GROUP_PREFIX):
            endpoint = name[len(ENDPOINTS_GROUP_PREFIX):]
            if _SAFE.match(endpoint) and endpoint not in JOB_FOLDERS and (self.logs_dir / endpoint).is_dir():
                created = self._created(ENDPOINT, endpoint) or _mtime(self.logs_dir / endpoint)
                return Group(name, int(created * 1000), lambda prefix: self._endpoint_streams(endpoint, prefix))
        elif name in (TRANSFORM_JOBS_GROUP, PROCESSING_JOBS_GROUP):
            for group in self._groups():
                if group.name == name:
                    return group
        raise LogsResourceNotFound("The specified log group does not exist.")

    def _stream(self, group: Group, name: str) -> LogStream:
        for stream in group.streams(name):
            if stream.name == name:
                return stream
        raise LogsResourceNotFound("The specified log stream does not exist.")

    # -- operations -----------------------------------------------------------------------------------
    async def describe_log_groups(self, req: dict[str, Any]) -> dict[str, Any]:
        prefix, pattern = req.get("logGroupNamePrefix"), req.get("logGroupNamePattern")
        if prefix and pattern:
            raise InvalidParameter("logGroupNamePrefix and logGroupNamePattern are mutually exclusive.")
        limit = int(req.get("limit") or MAX_GROUPS_PAGE)
        offset = token_offset(req.get("nextToken"), InvalidParameter)
        groups = await asyncio.to_thread(self._groups)
        chosen = [g for g in groups if (not prefix or g.name.startswith(prefix))
                  and (not pattern or pattern in g.name)]
        page = chosen[offset:offset + limit]

        def describe(group: Group) -> dict[str, Any]:
            stored = sum(s.stored_bytes() for s in group.streams(None))
            arn = self._arn(group.name)
            out: dict[str, Any] = {"logGroupName": group.name, "creationTime": group.created, "arn": f"{arn}:*"}
            if not pattern:
                out.update(metricFilterCount=0, storedBytes=stored, logGroupArn=arn, logGroupClass="STANDARD")
            return out

        out: dict[str, Any] = {"logGroups": await asyncio.to_thread(lambda: [describe(g) for g in page])}
        if offset + limit < len(chosen):
            out["nextToken"] = offset_token(offset + limit)
        return out

    async def describe_log_streams(self, req: dict[str, Any]) -> dict[str, Any]:
        order = req.get("orderBy") or "LogStreamName"
        prefix = req.get("logStreamNamePrefix")
        if prefix and order == "LastEventTime":
            raise InvalidParameter("Cannot order by LastEventTime with a logStreamNamePrefix.")
        descending = bool(req.get("descending"))
        limit = int(req.get("limit") or MAX_STREAMS_PAGE)
        offset = token_offset(req.get("nextToken"), InvalidParameter)

        def listing() -> dict[str, Any]:
            group = self._group(req)
            streams = [s for s in group.streams(prefix) if not prefix or s.name.startswith(prefix)]
            if order == "LastEventTime":
                keyed = [(s.last_write(), s.name, s) for s in streams]
                keyed.sort(key=lambda k: (k[0], k[1]), reverse=descending)
                streams = [s for _, _, s in keyed]
            else:
                streams.sort(key=lambda s: s.name, reverse=descending)
            page = streams[offset:offset + limit]
            described = []
            for stream in page:
                last = stream.last_write()
                first = stream.first_event_time()
                item: dict[str, Any] = {
                    "logStreamName": stream.name, "creationTime": first if first is not None else stream.floor,
                    "arn": f"{self._arn(group.name)}:log-stream:{stream.name}", "storedBytes": 0}
                if first is not None:
                    item.update(firstEventTimestamp=first, lastEventTimestamp=max(first, last),
                                lastIngestionTime=max(first, last))
                described.append(item)
            out: dict[str, Any] = {"logStreams": described}
            if offset + limit < len(streams):
                out["nextToken"] = offset_token(offset + limit)
            return out

        return await asyncio.to_thread(listing)

    async def get_log_events(self, req: dict[str, Any]) -> dict[str, Any]:
        limit = int(req.get("limit") or 10_000)

        def read() -> dict[str, Any]:
            group = self._group(req)
            stream = self._stream(group, req["logStreamName"])
            try:
                page = read_page(stream, req.get("nextToken"), start_from_head=bool(req.get("startFromHead")),
                                 start_time=req.get("startTime"), end_time=req.get("endTime"), limit=limit)
            except TokenError as exc:
                raise InvalidParameter("The specified nextToken is invalid.") from exc
            return {"events": [{"timestamp": e.time, "message": e.message, "ingestionTime": e.time}
                               for e in page.events],
                    "nextForwardToken": page.forward, "nextBackwardToken": page.backward}

        return await asyncio.to_thread(read)

    async def filter_log_events(self, req: dict[str, Any]) -> dict[str, Any]:
        names, prefix = req.get("logStreamNames"), req.get("logStreamNamePrefix")
        if names and prefix:
            raise InvalidParameter("logStreamNames and logStreamNamePrefix cannot both be specified.")
        try:
            pattern = FilterPattern.parse(req.get("filterPattern"))
        except PatternError as exc:
            raise InvalidParameter(str(exc)) from exc
        limit = int(req.get("limit") or 10_000)

        def search() -> dict[str, Any]:
            group = self._group(req)
            streams = group.streams(prefix)
            if names:
                wanted = set(names)
                streams = [s for s in streams if s.name in wanted]
                if len(streams) < len(wanted):
                    raise LogsResourceNotFound("The specified log stream does not exist.")
            elif prefix:
                streams = [s for s in streams if s.name.startswith(prefix)]
            try:
                found, token = filter_page(streams, pattern, start_time=req.get("startTime"),
                                           end_time=req.get("endTime"), limit=limit, token=req.get("nextToken"))
            except TokenError as exc:
                raise InvalidParameter("The specified nextToken is invalid.") from exc
            out: dict[str, Any] = {
                "events": [{"logStreamName": s.name, "timestamp": e.time, "message": e.message,
                            "ingestionTime": e.time, "eventId": f"{e.start.inode:020d}{e.start.offset:020d}"}
                           for s, e in found],
                "searchedLogStreams": []}
            if token:
                out["nextToken"] = token
            return out

        return await asyncio.to_thread(search)


def _subdirs(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root) if e.is_dir() and _SAFE.match(e.name))
    except OSError:
        return []


def _log_bases(folder: Path) -> list[str]:
    """The logs in a folder (``x.log`` for ``x.log`` and its rotated ``x.log.N``), each once."""
    try:
        names = [e.name for e in os.scandir(folder) if e.is_file()]
    except OSError:
        return []
    return sorted({base for base in map(log_base, names) if base})


def _job_folders(root: Path, prefix: str | None) -> list[str]:
    """Job folders under ``root``; a stream prefix naming the job (``job/`` ...) lists that one only."""
    if prefix and "/" in prefix:
        job = prefix.split("/", 1)[0]
        return [job] if _SAFE.match(job) and (root / job).is_dir() else []
    return [j for j in _subdirs(root) if not prefix or j.startswith(prefix) or prefix.startswith(j)]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
