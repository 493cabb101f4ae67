"""The local backend: a transform job's instances as processes beside the server, fed by a bounded queue.

One reader walks the input objects in order and cuts them into mini-batches; ``InstanceCount x
MaxConcurrentTransforms`` workers take them from a bounded queue (so at most a few mini-batches
per worker are in memory, whatever the input's size), send each through their instance's
container chain, and hand the result to the object's output file, which writes results in input
order. The instances are the same servers endpoints use, started for the job and stopped when
it ends, however it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from moorage.batch.assemble import OutputFile, output_url, prepare_output_location
from moorage.batch.inputs import InputError, InputObject, list_inputs, open_input
from moorage.batch.invoke import BatchFailure, MiniBatchTransform
from moorage.batch.progress import Progress
from moorage.batch.records import MiniBatch, SplitError, mini_batches
from moorage.batch.spec import TransformSpec
from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance, InstanceStartError
from moorage.serving.instance_client import InstanceConnectionError, InstanceTimeout
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers.local import LocalLauncher
from moorage.store.locations import StorageError

log = logging.getLogger("moorage.batch")

START_TIMEOUT_S = 120.0


@dataclass
class _ObjectState:
    obj: InputObject
    out: OutputFile
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sent: int = 0
    bytes_counted: int = 0


def batch_launch(launch: LaunchSpec, spec: TransformSpec) -> LaunchSpec:
    """An endpoint's LaunchSpec turned into a batch instance's: SAGEMAKER_BATCH and the job's Environment."""
    return dataclasses.replace(launch, environment={**launch.environment, **spec.batch_environment()},
                               instance_type=spec.instance_type)


async def execution_parameters(instance: Instance) -> dict[str, Any] | None:
    """The container's own batch settings (GET /execution-parameters), when it offers them."""
    try:
        response = await instance.client.request(b"GET", b"/execution-parameters", timeout=5.0)
    except (InstanceConnectionError, InstanceTimeout):
        return None
    if response.status != 200:
        return None
    try:
        params = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        return None
    return params if isinstance(params, dict) else None


class LocalBackend:
    def __init__(self, spec: TransformSpec, launches: list[LaunchSpec], *, launcher: LocalLauncher, log_dir: Path,
                 spool_dir: Path, progress: Progress):
        self.spec = spec
        self.launches = [batch_launch(launch, spec) for launch in launches]
        self.launcher = launcher
        self.log_dir = log_dir
        self.spool_dir = spool_dir
        self.progress = progress
        self.chains: list[ContainerChain] = []
        self._open: list[_ObjectState] = []

    async def run(self) -> None:
        """Transform every input object; raises BatchFailure with the reason when the job fails."""
        try:
            objects = await asyncio.to_thread(list_inputs, self.spec)
            await asyncio.to_thread(prepare_output_location, self.spec.output_path)
        except (InputError, StorageError) as exc:
            raise BatchFailure(str(exc)) from exc
        except OSError as exc:
            raise BatchFailure(f"Could not prepare the output location {self.spec.output_path}: {exc}") from exc
        self.progress.files_total = len(objects)
        self.progress.bytes_total = sum(o.size for o in objects)
        try:
            try:
                self.chains = await self.launcher.start_chains(self.launches, self.spec.instance_count, self.log_dir,
                                                               START_TIMEOUT_S)
            except InstanceStartError as exc:
                raise BatchFailure(f"An instance could not start: {exc}") from exc
            self.progress.instances = [{"InstanceId": c.instances[0].id, "Pids": c.pids} for c in self.chains]
            self.progress.ready_at = time.time()
            spec = self.spec.with_defaults(await execution_parameters(self.chains[0].instances[0]))
            log.info("transform job %s: %d object(s), %d instance(s) x %d concurrent, %s, %s MB payloads",
                     spec.job_name, len(objects), len(self.chains), spec.max_concurrent, spec.batch_strategy,
                     spec.max_payload_mb)
            await self._pipeline(spec, objects)
        finally:
            await asyncio.gather(*(c.stop() for c in self.chains), return_exceptions=True)
            for state in self._open:
                await asyncio.to_thread(state.out.discard)

    async def _pipeline(self, spec: TransformSpec, objects: list[InputObject]) -> None:
        transform = MiniBatchTransform(spec)
        assert spec.max_concurrent is not None
        workers = len(self.chains) * spec.max_concurrent
        queue: asyncio.Queue[tuple[_ObjectState, MiniBatch] | None] = asyncio.Queue(maxsize=max(2, workers))
        tasks = [asyncio.ensure_future(self._read(spec, objects, queue, workers))]
        tasks += [asyncio.ensure_future(self._work(transform, queue, i % len(self.chains)))
                  for i in range(workers)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, spec: TransformSpec, objects: list[InputObject],
                    queue: asyncio.Queue[tuple[_ObjectState, MiniBatch] | None], workers: int) -> None:
        for obj in objects:
            url = output_url(spec.output_path, obj.name)
            try:
                out = await asyncio.to_thread(OutputFile, url, self.spool_dir, spec.assemble_with)
            except (OSError, StorageError) as exc:
                raise BatchFailure(f"Could not write the output {url}: {exc}") from exc
            state = _ObjectState(obj, out)
            self._open.append(state)
            try:
                stream, counter = await asyncio.to_thread(open_input, obj, spec.compression)
            except InputError as exc:
                raise BatchFailure(str(exc)) from exc
            batches = mini_batches(stream, spec, counter)
            try:
                while True:
                    batch = await asyncio.to_thread(next, batches, None)
                    if batch is None:
                        break
                    await queue.put((state, batch))
                    state.sent += 1
            except SplitError as exc:
                raise BatchFailure(f"{obj.url}: {exc}") from exc
            except (OSError, EOFError, StorageError) as exc:  # gzip errors are OSError/EOFError
                raise BatchFailure(f"{obj.url}: could not read the object: {exc}") from exc
            finally:
                await asyncio.to_thread(stream.close)
            async with state.lock:
                state.out.total = state.sent
                await self._finish_if_complete(state)
        for _ in range(workers):
            await queue.put(None)

    async def _work(self, transform: MiniBatchTransform,
                    queue: asyncio.Queue[tuple[_ObjectState, MiniBatch] | None], chain_index: int) -> None:
        offload = transform.processor is not None  # per-record Python work stays off the event loop
        while True:
            item = await queue.get()
            if item is None:
                return
            state, batch = item
            name = state.obj.url
            payload = await asyncio.to_thread(transform.prepare, batch, name) if offload \
                else transform.prepare(batch, name)
            body, content_type = await transform.invoke(self.chains, chain_index, payload, batch, name)
            data = await asyncio.to_thread(transform.finish, batch, body, content_type, name) if offload \
                else transform.finish(batch, body, content_type, name)
            async with state.lock:
                try:
                    await asyncio.to_thread(state.out.add, batch.seq, data)
                except OSError as exc:
                    raise BatchFailure(f"Could not write the output {state.out.url}: {exc}") from exc
                self.progress.records_done += batch.count
                self.progress.batches_done += 1
                self.progress.bytes_done += batch.raw_bytes
                state.bytes_counted += batch.raw_bytes
                await self._finish_if_complete(state)

    async def _finish_if_complete(self, state: _ObjectState) -> None:
        if not state.out.complete or state.out.finished:
            return
        try:
            await asyncio.to_thread(state.out.finish)
        except (OSError, StorageError) as exc:
            raise BatchFailure(f"Could not write the output {state.out.url}: {exc}") from exc
        self.progress.files_done += 1
        self.progress.bytes_done += max(0, state.obj.size - state.bytes_counted)
        with contextlib.suppress(ValueError):
            self._open.remove(state)
