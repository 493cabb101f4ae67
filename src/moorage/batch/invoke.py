"""Sending one mini-batch through a job's containers, with its retry; the same for every backend.

A transform job's model may be a chain of containers (a serial inference pipeline): each
mini-batch goes through them in order, each container's response becoming the next one's request,
and only the last one is asked for the job's Accept type. A model with one container is a chain of
one. A mini-batch that fails is tried again (on another instance when there is one), then fails the
job with a reason naming the object and its records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from moorage.batch.filters import DataProcessor, RecordError
from moorage.batch.records import MiniBatch
from moorage.batch.spec import TransformSpec
from moorage.serving.instance import Instance
from moorage.serving.instance_client import InstanceConnectionError, InstanceTimeout

MAX_ERROR_BODY = 300
RETRY_PAUSE_S = 0.2


class InvocationError(Exception):
    pass


class BatchFailure(Exception):
    """The job cannot go on; the message is its FailureReason."""


class ContainerChain:
    """One instance of each of the model's containers, invoked in order."""

    def __init__(self, instances: Sequence[Instance]):
        self.instances = list(instances)

    @property
    def pids(self) -> list[int | None]:
        return [i.pid for i in self.instances]

    async def invoke(self, body: bytes, content_type: str | None, accept: str | None,
                     timeout: float) -> tuple[bytes, str]:
        last = len(self.instances) - 1
        for position, instance in enumerate(self.instances):
            headers = b""
            if content_type:
                headers += b"content-type: " + content_type.encode("latin-1") + b"\r\n"
            if accept and position == last:
                headers += b"accept: " + accept.encode("latin-1") + b"\r\n"
            try:
                response = await instance.invoke(body, headers, timeout)
            except InstanceTimeout as exc:
                raise InvocationError(f"no answer within {timeout:g} s (InvocationsTimeoutInSeconds)") from exc
            except InstanceConnectionError as exc:
                raise InvocationError(f"instance {instance.id}: {exc}") from exc
            if response.status != 200:
                detail = response.body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
                which = f"container {position + 1} " if last else ""
                raise InvocationError(f"the model {which}answered HTTP {response.status}: {detail}")
            body, content_type = response.body, response.content_type
        return body, content_type or ""

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop(drain_timeout=0, term_timeout=5) for i in self.instances),
                             return_exceptions=True)


class MiniBatchTransform:
    """prepare (InputFilter) -> invoke (with retry) -> finish (join, OutputFilter) for one mini-batch."""

    def __init__(self, spec: TransformSpec):
        self.spec = spec
        self.processor = DataProcessor(spec) if spec.processes_records else None

    def prepare(self, batch: MiniBatch, name: str) -> bytes:
        if self.processor is None or batch.records is None:
            return batch.payload
        line = self.spec.split_type == "Line"
        try:
            filtered = [self.processor.filter_input(r) for r in batch.records]
        except (RecordError, UnicodeDecodeError) as exc:
            raise BatchFailure(f"{name}: {batch.where()}: InputFilter {self.spec.input_filter}: {exc}") from exc
        return b"".join(r + b"\n" for r in filtered) if line else b"".join(filtered)

    def finish(self, batch: MiniBatch, body: bytes, content_type: str, name: str) -> bytes:
        if self.processor is None or batch.records is None:
            return body
        try:
            return self.processor.finish(batch.records, body, content_type)
        except (RecordError, UnicodeDecodeError) as exc:
            raise BatchFailure(f"{name}: {batch.where()}: {exc}") from exc

    async def invoke(self, chains: Sequence[ContainerChain], start: int, payload: bytes, batch: MiniBatch,
                     name: str) -> tuple[bytes, str]:
        attempts = 1 + max(0, self.spec.max_retries)
        error: Exception | None = None
        for attempt in range(attempts):
            chain = chains[(start + attempt) % len(chains)]
            try:
                return await chain.invoke(payload, self.spec.content_type, self.spec.accept,
                                          self.spec.invocation_timeout_s)
            except InvocationError as exc:
                error = exc
                if attempt + 1 < attempts:
                    await asyncio.sleep(RETRY_PAUSE_S)
        tries = "once" if attempts == 1 else f"{attempts} times"
        raise BatchFailure(f"{name}: {batch.where()} failed (tried {tries}): {error}")
