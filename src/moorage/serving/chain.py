"""A serial chain of containers that serves as one instance: a model's inference pipeline.

Each request goes through the containers in order, each response becoming the next one's request
(its content type too); only the last container is asked for the caller's ``Accept``, and the
first answer that is not a success ends the chain (it is the caller's answer, marked with the
container that gave it). Each container may set ``SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT`` in its
Environment: the Accept it is asked with when it is not the last (so a preprocessor can hand the
next container JSON, say), as SageMaker's containers read it. In ``Direct`` mode
(InferenceExecutionConfig) a request names one container (``TargetContainerHostname``) and only
that one answers. A chain has what the pool needs of an instance (id, state, outstanding requests,
ping, start, stop), so an endpoint variant's pool and a transform job hold chains as they hold
single instances.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from moorage.serving.instance import Instance, InstanceStartError, InstanceState
from moorage.serving.instance_client import InstanceResponse
from moorage.serving.invocation_events import parse_header_block

DEFAULT_ACCEPT_ENV = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
_TARGET_CONTAINER = b"x-amzn-sagemaker-target-container-hostname"


class UnknownContainer(Exception):
    """A TargetContainerHostname the chain has not (or a Direct-mode request that names none)."""


class ContainerChain:
    def __init__(self, instances: Sequence[Instance]):
        if not instances:
            raise ValueError("a container chain needs at least one container")
        self.instances = list(instances)
        self.hostnames = [i.launch.container_hostname or f"container-{n}" for n, i in enumerate(self.instances, 1)]
        self.direct = any(i.launch.direct for i in self.instances)
        # What each container but the last is asked to answer in (its SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT).
        self._accepts = [(i.launch.environment.get(DEFAULT_ACCEPT_ENV) or "").encode("latin-1")
                         for i in self.instances]
        self.id = f"c-{uuid.uuid4().hex[:12]}"
        self.outstanding = 0
        self._state: InstanceState | None = None  # set by the pool (draining, stopped, failed)
        self.recycle_reason: str | None = None  # set when the pool replaces it on purpose
        self._idle = asyncio.Event()
        self._idle.set()

    # What the pool reads --------------------------------------------------------------------------
    @property
    def state(self) -> InstanceState:
        if self._state is not None:
            return self._state
        states = {i.state for i in self.instances}
        if states == {InstanceState.IN_SERVICE}:
            return InstanceState.IN_SERVICE
        if InstanceState.FAILED in states:
            return InstanceState.FAILED
        return InstanceState.PENDING

    @state.setter
    def state(self, value: InstanceState) -> None:
        self._state = value

    @property
    def pid(self) -> int | None:
        """The first container's process (the chain's face in logs and metrics)."""
        return self.instances[0].pid

    @property
    def pids(self) -> list[int | None]:
        return [i.pid for i in self.instances]

    @property
    def log_path(self) -> Path:
        return self.instances[0].log_path

    @property
    def setup_seconds(self) -> float | None:
        seconds = [i.setup_seconds for i in self.instances]
        return None if None in seconds else max(s for s in seconds if s is not None)

    # Life -----------------------------------------------------------------------------------------
    async def start(self, timeout: float = 120.0) -> None:
        """Start every container; if one cannot, stop the others and raise its InstanceStartError."""
        results = await asyncio.gather(*(i.start(timeout) for i in self.instances), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            await self.stop(drain_timeout=0, term_timeout=5)
            first = failed[0]
            if isinstance(first, InstanceStartError):
                raise first
            raise InstanceStartError(f"{type(first).__name__}: {first}")

    async def ping(self, timeout: float = 5.0) -> bool:
        return all(await asyncio.gather(*(i.ping(timeout) for i in self.instances)))

    def memory_excess(self) -> str | None:
        """The first container's reason to be replaced for its memory (each has its own limit)."""
        for instance in self.instances:
            excess = instance.memory_excess()
            if excess is not None:
                return f"container {instance.id}: {excess}"
        return None

    async def check_health(self, timeout: float = 2.0) -> bool | None:
        """False if any container fails its check; None if none could be asked (all busy BYO servers)."""
        answers = await asyncio.gather(*(i.check_health(timeout) for i in self.instances))
        if any(a is False for a in answers):
            return False
        return None if all(a is None for a in answers) else True

    async def wait_exit(self) -> int:
        """The exit code of the first container to exit: the chain cannot serve without any of them."""
        waits = [asyncio.ensure_future(i.wait_exit()) for i in self.instances]
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            return next(iter(done)).result()
        finally:
            for task in waits:
                task.cancel()

    def close_connections(self) -> None:
        for instance in self.instances:
            instance.close_connections()

    async def drain(self, timeout: float) -> None:
        """Wait (bounded) for the requests in flight to finish."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)

    async def stop(self, drain_timeout: float = 30.0, term_timeout: float = 10.0) -> None:
        if self.state == InstanceState.IN_SERVICE:
            self._state = InstanceState.DRAINING
        await self.drain(drain_timeout)
        self._state = InstanceState.STOPPED
        await asyncio.gather(*(i.stop(drain_timeout=0, term_timeout=term_timeout) for i in self.instances),
                             return_exceptions=True)

    async def kill(self) -> None:
        await asyncio.gather(*(i.kill() for i in self.instances), return_exceptions=True)

    # Invocation -----------------------------------------------------------------------------------
    async def invoke(self, body: bytes, headers: bytes, timeout: float) -> InstanceResponse:
        response, position = await self.invoke_steps(body, headers, timeout)
        if len(self.instances) > 1:
            response.container = self.hostnames[position]
        return response

    async def invoke_steps(self, body: bytes, headers: bytes, timeout: float) -> tuple[InstanceResponse, int]:
        """The chain's answer and the position of the container that gave it (the last, or the first
        that failed). ``timeout`` bounds each container's hop."""
        self.outstanding += 1
        self._idle.clear()
        try:
            last = len(self.instances) - 1
            if last == 0:
                return await self.instances[0].invoke(body, headers, timeout), 0
            given = parse_header_block(headers)
            target = given.pop(_TARGET_CONTAINER, None)
            if self.direct or target is not None:
                return await self._invoke_one(body, headers, timeout, target)
            accept = given.pop(b"accept", None)
            content_type = given.pop(b"content-type", None)
            passed = b"".join(b"%s: %s\r\n" % (k, v.encode("latin-1")) for k, v in given.items())
            response: InstanceResponse | None = None
            seconds: list[tuple[str, float]] = []
            for position, instance in enumerate(self.instances):
                hop = passed
                if content_type:
                    hop += b"content-type: " + content_type.encode("latin-1") + b"\r\n"
                if position == last:
                    if accept:
                        hop += b"accept: " + accept.encode("latin-1") + b"\r\n"
                elif self._accepts[position]:
                    hop += b"accept: " + self._accepts[position] + b"\r\n"
                started = time.perf_counter()
                response = await instance.invoke(body, hop, timeout)
                seconds.append((self.hostnames[position], time.perf_counter() - started))
                if response.status >= 300:
                    response.container_seconds = tuple(seconds)
                    return response, position
                body, content_type = response.body, response.content_type
            assert response is not None
            response.container_seconds = tuple(seconds)
            return response, last
        finally:
            self.outstanding -= 1
            if self.outstanding == 0:
                self._idle.set()

    async def _invoke_one(self, body: bytes, headers: bytes, timeout: float,
                          target: str | None) -> tuple[InstanceResponse, int]:
        """Direct mode: the one container the request names answers it."""
        if not self.direct:
            raise UnknownContainer("TargetContainerHostname applies to a pipeline in Direct mode "
                                   "(InferenceExecutionConfig); this one runs its containers in order")
        if target is None or target not in self.hostnames:
            raise UnknownContainer(f"name one of the containers {', '.join(self.hostnames)} with "
                                   f"TargetContainerHostname" + (f", not {target!r}" if target else ""))
        position = self.hostnames.index(target)
        passed = b"".join(line + b"\r\n" for line in headers.split(b"\r\n")
                          if line and not line.lower().startswith(_TARGET_CONTAINER))
        started = time.perf_counter()
        response = await self.instances[position].invoke(body, passed, timeout)
        response.container_seconds = ((target, time.perf_counter() - started),)
        return response, position
