"""Asynchronous inference (InvokeEndpointAsync): a persisted queue per endpoint, its workers, its metrics.

An endpoint whose config has ``AsyncInferenceConfig`` takes requests through
``POST /endpoints/{name}/async-invocations`` (``api/async_runtime.py``). ``submit`` stores each
request in the metadata store (a ``Queued`` row) before the 202 is sent, so a request once accepted
survives a restart; ``start`` puts every ``Queued`` or ``Running`` row back in its endpoint's queue
(a request cut off mid-run runs again: at least once, as an output object is written whole or not at
all).

One dispatcher task per endpoint hands requests to workers while fewer than
``MaxConcurrentInvocationsPerInstance`` x (instances in service) are running: at zero instances the
queue only grows (``HasBacklogWithoutCapacity``) until a scaling policy brings an instance back. A
worker reads the input through the location layer (``store/locations.py``: ``s3://``, ``file://``,
paths), invokes the endpoint's route exactly as InvokeEndpoint does (chooser, pools, and the route's
observers, so metrics and data capture see it), writes the answer to ``{S3OutputPath}/{InferenceId}.out``
or the failure to ``{S3FailurePath}/{InferenceId}-error.out`` (whole: a local file is renamed into place,
an object is one upload), and marks the row ``Completed`` or ``Failed``. A request older than its
``RequestTTLSeconds`` fails as expired instead of running. SNS notifications (``NotificationConfig``)
are recorded in the row and logged, never sent: moorage has no SNS.

With several routers on one database, only the controller leader (control/leadership.py) works the
queues: any router accepts a request (its row, ``Queued``, is the queue), and the leader takes up, every
tick (at most a second), the rows it does not hold yet (``lead``/``_adopt``). A request is claimed
(``Queued -> Running``, naming the router as ``OWNER``) in one conditional update, so two routers that
both hold it (a leader stepping down, the next one starting) run it once; a ``Running`` one is queued
again only once its router is not alive. A leader that steps down puts what it ran back to ``Queued``.
With SQLite the one server always leads: everything behaves as before.

Each metrics period the backlog gauges (``ApproximateBacklogSize``, ``...PerInstance``,
``ApproximateAgeOfOldestRequest``, ``HasBacklogWithoutCapacity``; ``AWS/SageMaker``, dimension
``EndpointName``) are published from samples taken every fraction of a period, so target tracking
and alarms (the scale-from-zero pattern) read them like any metric.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moorage.control.async_config import AsyncConfig
from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, OWNER, Context
from moorage.control.endpoints import IN_SERVICE, ROLLING_BACK, UPDATING
from moorage.errors import RuntimeValidationError, ServiceUnavailable
from moorage.metrics.store import StatisticSet
from moorage.metrics.vocabulary import COUNT, ENDPOINT_NAME, INVOCATION_NAMESPACE
from moorage.serving.chain import UnknownContainer
from moorage.serving.model_cache import TargetModelError
from moorage.serving.router import EndpointRoute, Invocation, InvocationFailed, UnknownVariant
from moorage.serving.serverless import Throttled
from moorage.serving.traffic_shift import TrafficShift
from moorage.store.locations import StorageError, check_location, filesystem, write_whole
from moorage.store.metadata import ListQuery, Resource

log = logging.getLogger("moorage.async_inference")

ASYNC_REQUEST = "async-inference-request"
QUEUED, RUNNING, COMPLETED, FAILED = "Queued", "Running", "Completed", "Failed"

# InvokeEndpointAsync's documented limits and defaults.
MAX_INPUT_BYTES = 1024**3  # an input object of up to 1 GB
DEFAULT_TTL_SECONDS = 21600
DEFAULT_INVOCATION_TIMEOUT_SECONDS = 900

APPROXIMATE_BACKLOG_SIZE = "ApproximateBacklogSize"
APPROXIMATE_BACKLOG_SIZE_PER_INSTANCE = "ApproximateBacklogSizePerInstance"
APPROXIMATE_AGE_OF_OLDEST_REQUEST = "ApproximateAgeOfOldestRequest"
HAS_BACKLOG_WITHOUT_CAPACITY = "HasBacklogWithoutCapacity"
_UNITS = {APPROXIMATE_BACKLOG_SIZE: COUNT, APPROXIMATE_BACKLOG_SIZE_PER_INSTANCE: COUNT,
          APPROXIMATE_AGE_OF_OLDEST_REQUEST: "Seconds", HAS_BACKLOG_WITHOUT_CAPACITY: COUNT}
_SERVING = (IN_SERVICE, UPDATING, ROLLING_BACK)


@dataclass
class Submission:
    """What the door read from an InvokeEndpointAsync request."""

    endpoint: str
    inference_id: str | None = None
    input_location: str | None = None
    body: bytes | None = None
    content_type: str | None = None
    accept: str | None = None
    custom_attributes: str | None = None
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    invocation_timeout_seconds: int = DEFAULT_INVOCATION_TIMEOUT_SECONDS
    output_extension: str | None = None
    filename: str | None = None


@dataclass
class Accepted:
    inference_id: str
    output_location: str
    failure_location: str | None  # the response header: only with an S3FailurePath, as SageMaker answers


@dataclass
class AsyncRequest:
    key: str  # the row's name
    endpoint: str
    inference_id: str
    accepted_at: float
    ttl_seconds: int
    timeout_seconds: int
    headers: bytes  # the header block forwarded to the instance, as InvokeEndpoint's
    input_location: str | None
    body: bytes | None
    output_location: str
    failure_location: str  # where a failure is written (beside the output without an S3FailurePath)
    notification: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_row(cls, row: Resource) -> AsyncRequest:
        b = row.body
        return cls(row.name, b["EndpointName"], b["InferenceId"], float(b["AcceptedAt"]), int(b["RequestTTLSeconds"]),
                   int(b["InvocationTimeoutSeconds"]), b.get("ForwardedHeaders", "").encode("latin-1"),
                   b.get("InputLocation"), base64.b64decode(b["Body"]) if b.get("Body") is not None else None,
                   b["OutputLocation"], b["FailureWrittenTo"], dict(b.get("NotificationConfig") or {}))

    def expired(self, now: float) -> bool:
        return now - self.accepted_at > self.ttl_seconds


class EndpointQueue:
    """One endpoint's backlog: requests waiting (in order) and running, and the gauges' samples."""

    def __init__(self, name: str):
        self.name = name
        self.pending: deque[AsyncRequest] = deque()
        self.running: dict[str, AsyncRequest] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.samples: dict[str, list[float]] = {m: [] for m in _UNITS}
        self.storing = 0  # accepted requests whose rows are being written

    @property
    def backlog(self) -> int:
        return len(self.pending) + len(self.running)

    def oldest(self) -> float | None:
        times = [r.accepted_at for r in self.running.values()]
        if self.pending:
            times.append(self.pending[0].accepted_at)
        return min(times) if times else None


class InputUnavailable(Exception):
    pass


def in_service(route: EndpointRoute | TrafficShift | None) -> int:
    """Instances ready to serve the endpoint (both fleets mid-update)."""
    if route is None:
        return 0
    fleets = (route.blue, route.green) if isinstance(route, TrafficShift) else (route,)
    return sum(len(v.pool.ready) for f in fleets for v in f.variants.values())


def read_input(location: str) -> tuple[bytes, str | None]:
    """The whole input object (bounded) and the Content-Type it was stored with (where the store keeps
    one), or InputUnavailable saying why not."""
    try:
        check_location(location, "InputLocation")
        fs, path = filesystem(location)
        with fs.open(path, "rb") as f:
            data = f.read(MAX_INPUT_BYTES + 1)
        content_type = fs.info(path).get("ContentType")
    except FileNotFoundError:
        raise InputUnavailable(f"The input object {location} does not exist.") from None
    except (StorageError, OSError, ValueError) as exc:
        raise InputUnavailable(f"The input object {location} could not be read: {exc}") from None
    if len(data) > MAX_INPUT_BYTES:
        raise InputUnavailable(f"The input object {location} is larger than 1 GB, the limit of asynchronous inference.")
    return data, content_type if isinstance(content_type, str) and content_type else None


def _names_content_type(headers: bytes) -> bool:
    return any(line.lower().startswith(b"content-type:") for line in headers.split(b"\r\n"))


class AsyncInference:
    """The lifecycle of asynchronous requests on one server."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        settings = ctx.settings.async_inference
        self.max_backlog = settings.max_backlog
        self.retention = settings.retention
        self.queues: dict[str, EndpointQueue] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._configs: dict[str, AsyncConfig | None] = {}  # endpoint config name -> its async config
        self._last_purge = 0.0
        self._stopping = False
        self._endpoints: list[str] = []
        self._endpoints_at = -math.inf
        self.leading = False  # only the controller leader works the queues (``lead``)

    # Configs ----------------------------------------------------------------------------------------
    def config_of(self, config_name: str) -> AsyncConfig | None:
        if config_name not in self._configs:
            row = self.ctx.store.get(ENDPOINT_CONFIG, config_name)
            doc = (row.body if row else {}).get("AsyncInferenceConfig")
            self._configs[config_name] = AsyncConfig.parse(doc) if doc else None
        return self._configs[config_name]

    def _endpoint_config(self, endpoint: str) -> AsyncConfig | None:
        row = self.ctx.store.get(ENDPOINT, endpoint)
        return self.config_of(row.body.get("EndpointConfigName", "")) if row is not None else None

    # The door's operation ---------------------------------------------------------------------------
    async def submit(self, sub: Submission) -> Accepted:
        """Check and store a request, queue it; raises the runtime's errors as SageMaker answers them."""
        account = self.ctx.settings.account_id
        row = await asyncio.to_thread(self.ctx.store.get, ENDPOINT, sub.endpoint)
        if row is None:
            raise RuntimeValidationError(f"Endpoint {sub.endpoint} of account {account} not found.")
        if row.status not in _SERVING:
            raise RuntimeValidationError(
                f"Endpoint {sub.endpoint} of account {account} is not in service (status {row.status}).")
        config = await asyncio.to_thread(self.config_of, row.body.get("EndpointConfigName", ""))
        if config is None:
            raise RuntimeValidationError(
                f"Endpoint {sub.endpoint} of account {account} is not configured for asynchronous inference: its "
                f"endpoint configuration has no AsyncInferenceConfig. Use InvokeEndpoint.")
        if (sub.input_location is None) == (sub.body is None):
            raise RuntimeValidationError("Provide exactly one of InputLocation and Body.")
        if sub.input_location is not None:
            try:
                check_location(sub.input_location, "InputLocation")
            except StorageError as exc:
                raise RuntimeValidationError(str(exc)) from None
        # Not leading: the row is the queue, and the leader takes it up; the bound is the leader's.
        queue = self._queue(sub.endpoint) if self.leading else EndpointQueue(sub.endpoint)
        if queue.backlog + queue.storing >= self.max_backlog:
            raise ServiceUnavailable(
                f"Endpoint {sub.endpoint} has {queue.backlog} asynchronous requests queued or running, this server's "
                f"limit (MOORAGE_ASYNC_MAX_BACKLOG); retry later.")
        inference_id = sub.inference_id or str(uuid.uuid4())
        output = config.output_location(inference_id, sub.output_extension, sub.filename)
        failure = config.failure_location(inference_id, sub.output_extension)
        headers = b"".join(b"%s: %s\r\n" % (name, value.encode("latin-1")) for name, value in (
            (b"content-type", sub.content_type), (b"accept", sub.accept),
            (b"x-amzn-sagemaker-custom-attributes", sub.custom_attributes),
            (b"x-amzn-sagemaker-inference-id", inference_id)) if value is not None)
        notification = {k: v for k, v in (("SuccessTopic", config.success_topic), ("ErrorTopic", config.error_topic),
                                          ("IncludeInferenceResponseIn", list(config.include_response_in)))
                        if v}
        key = f"{sub.endpoint}/{uuid.uuid4().hex}"
        now = time.time()
        body: dict[str, Any] = {
            "EndpointName": sub.endpoint, "InferenceId": inference_id, "AcceptedAt": now,
            "RequestTTLSeconds": sub.ttl_seconds, "InvocationTimeoutSeconds": sub.invocation_timeout_seconds,
            "ForwardedHeaders": headers.decode("latin-1"), "OutputLocation": output, "FailureWrittenTo": failure,
            "EndpointConfigName": row.body.get("EndpointConfigName")}
        if config.failure_path:
            body["FailureLocation"] = failure
        if sub.input_location is not None:
            body["InputLocation"] = sub.input_location
        else:
            body["Body"] = base64.b64encode(sub.body or b"").decode()
        if notification:
            body["NotificationConfig"] = notification
        queue.storing += 1  # counts against the bound while the row is written
        try:
            await asyncio.to_thread(self.ctx.store.create, ASYNC_REQUEST, key,
                                    f"{row.arn}/async-inference/{key.rsplit('/', 1)[1]}", body, QUEUED)
        finally:
            queue.storing -= 1
        if not self.leading:
            return Accepted(inference_id, output, failure if config.failure_path else None)
        queue.pending.append(AsyncRequest(key, sub.endpoint, inference_id, now, sub.ttl_seconds,
                                          sub.invocation_timeout_seconds, headers, sub.input_location, sub.body,
                                          output, failure, notification))
        queue.wake.set()
        return Accepted(inference_id, output, failure if config.failure_path else None)

    # Lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        """The ticker and the backlog gauges (on every router; they sample only while leading)."""
        self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())
        if self.ctx.metrics is not None:
            self.ctx.metrics.add_source(self.metric_sets)

    def lead(self) -> int:
        """Work the queues (this router leads the controllers): take up what the store says was accepted
        and not finished; returns how many."""
        self._stopping = False
        self.leading = True
        return self._adopt()

    async def step_down(self) -> None:
        """Stop working the queues; what this router was running goes back to Queued for the next leader."""
        self.leading = False
        running = [r.key for q in self.queues.values() for r in q.running.values()]
        await self._cancel_all()
        self.queues.clear()
        for key in running:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.ctx.store.transition, ASYNC_REQUEST, key, [RUNNING], QUEUED)

    def _adopt(self) -> int:
        """Queue the stored requests not held here: Queued ones, and Running ones whose router is gone."""
        held = {r.key for q in self.queues.values() for r in (*q.pending, *q.running.values())}
        alive = self.ctx.alive() if self.ctx.alive is not None else None
        adopted = 0
        for row in self.ctx.store.statuses(ASYNC_REQUEST, [QUEUED, RUNNING]):  # oldest first
            if row.name in held:
                continue
            if row.status == RUNNING:
                owner = row.body.get(OWNER)
                if alive is not None and owner in alive and owner != self.ctx.router_id:
                    continue  # a live router runs it (a leader stepping down puts it back soon)
            try:
                request = AsyncRequest.from_row(row)
            except (KeyError, ValueError) as exc:
                log.error("asynchronous request %s cannot be read back (%s); marking it Failed", row.name, exc)
                self.ctx.store.update(ASYNC_REQUEST, row.name, status=FAILED,
                                      body={**row.body, "FailureReason": f"Unreadable after a restart: {exc}"})
                continue
            if row.status == RUNNING and not self.ctx.store.transition(
                    ASYNC_REQUEST, row.name, [RUNNING], QUEUED, modified_at=row.modified_at):
                continue
            self._queue(request.endpoint).pending.append(request)
            self._queue(request.endpoint).wake.set()
            adopted += 1
        if adopted:
            log.info("%d asynchronous request(s) queued from the store", adopted)
        return adopted

    async def stop(self) -> None:
        """Stop the workers; what they were running stays Running in the store and runs again on start."""
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        await self._cancel_all()

    async def _cancel_all(self) -> None:
        self._stopping = True
        tasks = [t for t in (*(q.task for q in self.queues.values()), *self._workers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _queue(self, endpoint: str) -> EndpointQueue:
        queue = self.queues.get(endpoint)
        if queue is None:
            queue = self.queues[endpoint] = EndpointQueue(endpoint)
            queue.task = asyncio.get_running_loop().create_task(self._dispatch(queue))
        return queue

    # Dispatch ---------------------------------------------------------------------------------------
    async def _dispatch(self, queue: EndpointQueue) -> None:
        while True:
            try:
                if not await self._dispatch_once(queue):
                    return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatching asynchronous requests of %s failed", queue.name)
            queue.wake.clear()
            with contextlib.suppress(TimeoutError):
                # Waiting requests look for capacity twice a second (an instance coming up wakes nobody).
                await asyncio.wait_for(queue.wake.wait(), 0.5 if queue.pending else 5.0)

    async def _dispatch_once(self, queue: EndpointQueue) -> bool:
        """Start what capacity allows; False once the endpoint is gone (its queue is failed and dropped)."""
        if not queue.pending:
            if not queue.running and self.ctx.store.get(ENDPOINT, queue.name) is None:
                self.queues.pop(queue.name, None)
                return False
            return True
        row = self.ctx.store.get(ENDPOINT, queue.name)
        if row is None:
            while queue.pending:
                await self._finish(queue.pending.popleft(), FAILED, failure="The endpoint was deleted before the "
                                   "request was processed.")
            return True
        now = time.time()
        for request in [r for r in queue.pending if r.expired(now)]:
            queue.pending.remove(request)
            await self._finish(request, FAILED, failure=self._expired_message(request))
        config = self.config_of(row.body.get("EndpointConfigName", ""))
        per_instance = config.concurrent_per_instance if config else 1
        route = self.ctx.routes.get(queue.name)
        capacity = per_instance * in_service(route)
        while queue.pending and len(queue.running) < capacity and not self._stopping:
            request = queue.pending.popleft()
            queue.running[request.key] = request
            worker = asyncio.get_running_loop().create_task(self._work(queue, request))
            self._workers.add(worker)
            worker.add_done_callback(self._workers.discard)
        return True

    @staticmethod
    def _expired_message(request: AsyncRequest) -> str:
        return (f"Request expired: it waited in the queue longer than its RequestTTLSeconds ({request.ttl_seconds} s) "
                f"before an instance could take it.")

    async def _work(self, queue: EndpointQueue, request: AsyncRequest) -> None:
        try:
            if not await self._process(request):
                # No instance took it (the last one went away meanwhile): first in line again.
                await asyncio.to_thread(self.ctx.store.update, ASYNC_REQUEST, request.key, status=QUEUED)
                queue.pending.appendleft(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must fail the request visibly, never the queue
            log.exception("asynchronous request %s of %s failed", request.inference_id, queue.name)
            await self._finish(request, FAILED, failure=f"Internal failure while processing the request: "
                                                        f"{type(exc).__name__}: {exc}")
        finally:
            queue.running.pop(request.key, None)
            queue.wake.set()

    async def _process(self, request: AsyncRequest) -> bool:
        """Run one request to its end; False when it must wait again for an instance."""
        if request.expired(time.time()):
            await self._finish(request, FAILED, failure=self._expired_message(request))
            return True
        if not await asyncio.to_thread(self._claim, request.key):
            return True  # another router runs it (two leaders for an instant): not twice
        headers = request.headers
        if request.body is not None:
            body = request.body
        else:
            try:
                body, stored_type = await asyncio.to_thread(read_input, request.input_location or "")
            except InputUnavailable as exc:
                await self._finish(request, FAILED, failure=str(exc))
                return True
            if stored_type is not None and not _names_content_type(headers):
                # The SageMaker SDK's AsyncPredictor uploads the input with its serializer's type and sends
                # no ContentType: the object's own type is what the model must be told.
                headers += b"content-type: %s\r\n" % stored_type.encode("latin-1", "replace")
        route = self.ctx.routes.get(request.endpoint)
        if route is None:
            return False  # being brought back (a restart, a failed bring-up retried): wait in the queue
        arrived, started = time.time(), time.perf_counter()
        outcome: Invocation | InvocationFailed
        try:
            outcome = await route.invoke(body, headers, None, float(request.timeout_seconds))
        except InvocationFailed as exc:
            outcome = exc
        except (UnknownVariant, UnknownContainer, TargetModelError, Throttled) as exc:
            await self._finish(request, FAILED, failure=f"The request could not be routed: {exc}")
            return True
        if isinstance(outcome, InvocationFailed) and outcome.status == 503 and not outcome.instance_id:
            return False
        if route.observers:
            route.observe(body, headers, arrived, started, outcome)
        if isinstance(outcome, InvocationFailed):
            await self._finish(request, FAILED, failure=str(outcome))
        elif outcome.status >= 300:
            kind = "client" if outcome.status < 500 else "server"
            await self._finish(request, FAILED, failure=(
                f'Received {kind} error ({outcome.status}) from {outcome.variant} with message '
                f'"{outcome.body.decode("utf-8", "replace")}".'), variant=outcome.variant)
        else:
            await self._finish(request, COMPLETED, output=outcome.body, variant=outcome.variant,
                               content_type=outcome.content_type)
        return True

    def _claim(self, key: str) -> bool:
        """Queued -> Running, naming this router, only if nobody else took it meanwhile."""
        row = self.ctx.store.get(ASYNC_REQUEST, key)
        if row is None or row.status != QUEUED:
            return False
        return self.ctx.store.transition(ASYNC_REQUEST, key, [QUEUED], RUNNING, {**row.body, OWNER: self.ctx.router_id},
                                         modified_at=row.modified_at)

    async def _finish(self, request: AsyncRequest, status: str, *, output: bytes | None = None,
                      failure: str | None = None, variant: str | None = None, content_type: str | None = None) -> None:
        """Write the answer (or the failure) whole, then the row: a reader that finds the row finished
        finds its object."""
        changes: dict[str, Any] = {"EndTime": time.time()}
        if variant:
            changes["InvokedProductionVariant"] = variant
        if status == COMPLETED:
            assert output is not None
            try:
                await asyncio.to_thread(write_whole, request.output_location, output)
                changes["ResponseContentType"] = content_type
            except Exception as exc:
                status, failure = FAILED, f"The answer could not be written to {request.output_location}: {exc}"
        if status == FAILED:
            changes["FailureReason"] = failure
            try:
                await asyncio.to_thread(write_whole, request.failure_location, (failure or "").encode())
            except Exception as exc:
                log.error("asynchronous request %s: the failure could not be written to %s: %s",
                          request.inference_id, request.failure_location, exc)
                changes["FailureWriteError"] = str(exc)
        topic = request.notification.get("SuccessTopic" if status == COMPLETED else "ErrorTopic")
        if topic:
            # Recorded, not sent: the message SageMaker would publish to the topic.
            changes["Notification"] = {"Topic": topic, "Sent": False, "Message": {
                "eventVersion": "1.0", "eventSource": "aws:sagemaker", "eventName": "InferenceResult",
                "inferenceId": request.inference_id,
                "invocationStatus": "Completed" if status == COMPLETED else "Failed",
                "responseParameters": {"outputLocation": request.output_location} if status == COMPLETED
                else {"failureLocation": request.failure_location, "failureReason": failure}}}
            log.info("asynchronous request %s %s: SNS topic %s would be notified (not sent: no SNS here)",
                     request.inference_id, status.lower(), topic)
        (log.info if status == COMPLETED else log.warning)(
            "asynchronous request %s of %s %s%s", request.inference_id, request.endpoint, status.lower(),
            f": {failure}" if failure else "")

        def save() -> None:
            row = self.ctx.store.get(ASYNC_REQUEST, request.key)
            if row is not None:
                body = {**row.body, **{k: v for k, v in changes.items() if v is not None}}
                self.ctx.store.update(ASYNC_REQUEST, request.key, status=status, body=body)

        await asyncio.to_thread(save)

    # Metrics ----------------------------------------------------------------------------------------
    def _async_endpoints(self, now: float) -> list[str]:
        """Endpoints serving now whose config has AsyncInferenceConfig (their gauges are published even
        when empty: scaling in needs the zeros); looked up in the store every few seconds."""
        if now - self._endpoints_at >= 2.0:
            names = set()
            for name in {s.name for s in self.ctx.routes.snapshots()}:
                row = self.ctx.store.get(ENDPOINT, name)
                if row is not None and self.config_of(row.body.get("EndpointConfigName", "")) is not None:
                    names.add(name)
            self._endpoints, self._endpoints_at = sorted(names), now
        return self._endpoints

    def sample(self, now: float) -> None:
        if not self.leading:
            return  # the leader's queues are the backlog; a router that does not lead has none to show
        for name in self._async_endpoints(now):
            queue = self.queues.get(name) or self._queue(name)
            instances = in_service(self.ctx.routes.get(name))
            backlog = queue.backlog
            oldest = queue.oldest()
            queue.samples[APPROXIMATE_BACKLOG_SIZE].append(float(backlog))
            # Per instance: at zero instances the whole backlog, so that target tracking scales out from
            # zero once the backlog passes its target, as SageMaker's does.
            queue.samples[APPROXIMATE_BACKLOG_SIZE_PER_INSTANCE].append(backlog / max(instances, 1))
            queue.samples[APPROXIMATE_AGE_OF_OLDEST_REQUEST].append(max(0.0, now - oldest) if oldest else 0.0)
            queue.samples[HAS_BACKLOG_WITHOUT_CAPACITY].append(1.0 if backlog and not instances else 0.0)

    def metric_sets(self, due: Mapping[str, float]) -> list[StatisticSet]:
        """The gauges of the endpoints whose metrics period ended (``due``: endpoint -> its timestamp);
        called by the metrics service's tick, so alarms see them in the same pass."""
        self.sample(time.time())
        if not self.leading:
            return []
        sets = []
        for name, timestamp in due.items():
            queue = self.queues.get(name)
            if queue is None:
                continue
            dims = {ENDPOINT_NAME: name}
            for metric, values in queue.samples.items():
                if values:
                    sets.append(StatisticSet.of_samples(INVOCATION_NAMESPACE, metric, dims, timestamp, _UNITS[metric],
                                                        np.asarray(values, dtype=np.float64)))
                queue.samples[metric] = []
        return sets

    async def _tick_loop(self) -> None:
        period = self.ctx.metrics.period if self.ctx.metrics is not None else 60
        interval = min(1.0, max(0.1, period / 4))
        while True:
            await asyncio.sleep(interval)
            now = time.time()
            try:
                self.sample(now)
                if self.leading and self.ctx.alive is not None:
                    self._adopt()  # several routers: requests others accepted, or whose router died
                for queue in list(self.queues.values()):
                    if any(r.expired(now) for r in queue.pending):
                        queue.wake.set()
                if now - self._last_purge >= 60.0:
                    self._last_purge = now
                    await asyncio.to_thread(self._purge, now)
            except Exception:
                log.exception("asynchronous inference tick failed")

    def _purge(self, now: float) -> None:
        """Forget finished requests older than MOORAGE_ASYNC_RETENTION (their objects stay)."""
        for status in (COMPLETED, FAILED):
            for row in self.ctx.store.list(ASYNC_REQUEST, ListQuery(status=status,
                                                                    modified_before=now - self.retention)):
                self.ctx.store.delete(ASYNC_REQUEST, row.name)

    def describe(self, endpoint: str) -> dict[str, Any]:
        """The endpoint's backlog as the native API and tests read it."""
        queue = self.queues.get(endpoint)
        oldest = queue.oldest() if queue else None
        return {"EndpointName": endpoint, "Queued": len(queue.pending) if queue else 0,
                "Running": len(queue.running) if queue else 0,
                "AgeOfOldestRequest": math.floor(time.time() - oldest) if oldest else 0}
