"""Sending one mini-batch through a job's containers, with its retry; the same for every backend.

A transform job's model may be a chain of containers (a serial inference pipeline): each
mini-batch goes through them in order, each container's response becoming the next one's request,
and only the last one is asked for the job's Accept type. A model with one container is a chain of
one; the chain itself is serving's (``serving/chain.py``), shared with endpoints. A mini-batch that
fails is tried again (on another instance when there is one), then fails the job with a reason
naming the object and its records.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from moorage.batch.filters import DataProcessor, RecordError
from moorage.batch.records import MiniBatch
from moorage.batch.spec import TransformSpec
from moorage.serving.chain import ContainerChain
from moorage.serving.instance_client import InstanceConnectionError, InstanceTimeout

MAX_ERROR_BODY = 300
RETRY_PAUSE_S = 0.2


class InvocationError(Exception):
    pass


class BatchFailure(Exception):
    """The job cannot go on; the message is its FailureReason."""


async def invoke_chain(chain: ContainerChain, body: bytes, content_type: str | None, accept: str | None,
                       timeout: float) -> tuple[bytes, str]:
    """One mini-batch through the chain; an InvocationError says what failed and where."""
    headers = b""
    if content_type:
        headers += b"content-type: " + content_type.encode("latin-1") + b"\r\n"
    if accept:
        headers += b"accept: " + accept.encode("latin-1") + b"\r\n"
    try:
        response, position = await chain.invoke_steps(body, headers, timeout)
    except InstanceTimeout as exc:
        raise InvocationError(f"no answer within {timeout:g} s (InvocationsTimeoutInSeconds)") from exc
    except InstanceConnectionError as exc:
        raise InvocationError(f"instance {chain.instances[0].id}: {exc}") from exc
    if response.status != 200:
        detail = response.body[:MAX_ERROR_BODY].decode("utf-8", "replace").strip()
        which = f"container {position + 1} " if len(chain.instances) > 1 else ""
        raise InvocationError(f"the model {which}answered HTTP {response.status}: {detail}")
    return response.body, response.content_type or ""


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
                return await invoke_chain(chain, payload, self.spec.content_type, self.spec.accept,
                                          self.spec.invocation_timeout_s)
            except InvocationError as exc:
                error = exc
                if attempt + 1 < attempts:
                    await asyncio.sleep(RETRY_PAUSE_S)
        tries = "once" if attempts == 1 else f"{attempts} times"
        raise BatchFailure(f"{name}: {batch.where()} failed (tried {tries}): {error}")
