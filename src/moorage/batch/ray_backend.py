"""The Ray backend: the same transform job as a Ray Data pipeline on an existing Ray cluster.

The server starts a driver process (``python -m moorage.batch.ray_backend JOB.json``) so that Ray
lives outside the server: the driver connects to the cluster (``ray.init(address=...)``), and

    input objects --read tasks: mini_batches()--> mini-batches --actor pool--> outputs --> driver

where each actor of the pool is one of the job's instances: it starts the same instance server
(container chain) on its node and sends it the mini-batches it is given. Read tasks cut objects
with the same ``mini_batches`` as the local backend, and the driver writes with the same
``OutputFile``, so both backends write the same bytes. Errors travel as rows, so the job's
FailureReason is the same too.

The driver reports to the server on stdout, one ``MOORAGE {json}`` line per update; stopping the
job terminates the driver, and with it (Ray's ownership) the actors and their instance processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from moorage.batch.assemble import OutputFile, output_url, prepare_output_location
from moorage.batch.inputs import InputError, InputObject, list_inputs, open_input
from moorage.batch.invoke import BatchFailure, MiniBatchTransform
from moorage.batch.progress import Progress
from moorage.batch.records import MiniBatch, SplitError, mini_batches
from moorage.batch.spec import TransformSpec
from moorage.serving.instance import InstanceStartError
from moorage.serving.launchers.ray_node import NodeChainHost
from moorage.store.locations import StorageError

log = logging.getLogger("moorage.batch.ray")

REPORT_PREFIX = "MOORAGE "
REPORT_INTERVAL_S = 0.5
STOP_GRACE_S = 10.0
# Ray schedules by declared CPUs; the instance servers use what they need outside that accounting.
# Small shares keep a job schedulable on a small cluster (readers and actors at once on 2 CPUs).
ACTOR_CPUS = 0.5
READER_CPUS = 0.25
_COLUMNS = ("file", "seq", "payload", "count", "first", "raw", "end", "error", "pids")


# -- what travels between the driver and the actors ----------------------------------------------
def _row(**values: Any) -> dict[str, list[Any]]:
    defaults: dict[str, Any] = {"file": -1, "seq": -1, "payload": b"", "count": 0, "first": 0, "raw": 0,
                                "end": False, "error": "", "pids": ""}
    defaults.update(values)
    return {k: [defaults[k]] for k in _COLUMNS}


def _records_of(payload: bytes, spec: TransformSpec) -> list[bytes] | None:
    """A mini-batch's single records, rebuilt from its payload (only jobs that filter or join need them)."""
    if not spec.processes_records:
        return None
    if spec.split_type == "Line":
        return payload.split(b"\n")[:-1]
    return [payload]


# -- read tasks -----------------------------------------------------------------------------------
def read_objects(batch: dict[str, Any], spec: dict[str, Any], objects: list[dict[str, Any]]) -> Any:
    """Ray Data UDF: each input row is an object index; yields one row per mini-batch, then an end row."""
    tspec = TransformSpec.from_dict(spec)
    for index in batch["file"]:
        index = int(index)
        obj = InputObject(**objects[index])
        try:
            stream, counter = open_input(obj, tspec.compression)
            try:
                seq = 0
                for mb in mini_batches(stream, tspec, counter):
                    yield _row(file=index, seq=mb.seq, payload=mb.payload, count=mb.count, first=mb.first_record,
                               raw=mb.raw_bytes)
                    seq = mb.seq + 1
            finally:
                stream.close()
        except SplitError as exc:
            yield _row(file=index, error=f"{obj.url}: {exc}")
            return
        except InputError as exc:
            yield _row(file=index, error=str(exc))
            return
        except (OSError, EOFError, StorageError) as exc:
            yield _row(file=index, error=f"{obj.url}: could not read the object: {exc}")
            return
        yield _row(file=index, seq=seq, end=True)


# -- actors ---------------------------------------------------------------------------------------
class InstanceActor:
    """One instance of the job (a container chain, hosted by serving's ``NodeChainHost``) on a Ray node,
    invoked by Ray Data for each mini-batch."""

    def __init__(self, spec: dict[str, Any], launches: list[dict[str, Any]], log_dir: str,
                 objects: list[dict[str, Any]]):
        self.spec = TransformSpec.from_dict(spec)
        self.names = [o["url"] for o in objects]
        try:
            self.host = NodeChainHost(launches, log_dir)
        except InstanceStartError as exc:
            raise BatchFailure(f"An instance could not start: {exc}") from exc
        self.chain = self.host.chain
        self.transform = MiniBatchTransform(self.spec)
        self.pids = orjson.dumps(self.chain.pids).decode()

    def _run(self, coro: Any) -> Any:
        return self.host.run(coro)

    def execution_parameters(self) -> dict[str, Any] | None:
        from moorage.batch.local import execution_parameters

        return self._run(execution_parameters(self.chain.instances[0]))

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        rows = [self._one({k: batch[k][i] for k in _COLUMNS}) for i in range(len(batch["file"]))]
        return {k: [r[k][0] for r in rows] for k in _COLUMNS}

    def _one(self, row: dict[str, Any]) -> dict[str, list[Any]]:
        if row["end"] or row["error"]:
            return _row(**{**row, "payload": b"", "pids": self.pids})
        index = int(row["file"])
        payload = bytes(row["payload"])
        mb = MiniBatch(int(row["seq"]), payload, int(row["count"]), int(row["first"]), int(row["raw"]),
                       _records_of(payload, self.spec))
        name = self.names[index]
        try:
            body = self.transform.prepare(mb, name)
            out, content_type = self._run(self.transform.invoke([self.chain], 0, body, mb, name))
            data = self.transform.finish(mb, out, content_type, name)
        except BatchFailure as exc:
            return _row(file=index, seq=mb.seq, error=str(exc), pids=self.pids)
        return _row(file=index, seq=mb.seq, payload=data, count=mb.count, raw=mb.raw_bytes, pids=self.pids)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.host.stop()


# -- the driver -----------------------------------------------------------------------------------
class _Reporter:
    def __init__(self, progress: Progress):
        self.progress = progress
        self.last = 0.0

    def report(self, force: bool = False, **extra: Any) -> None:
        now = time.monotonic()
        if not force and now - self.last < REPORT_INTERVAL_S and not extra:
            return
        self.last = now
        message = {"Progress": self.progress.to_dict(), **extra}
        sys.stdout.write(REPORT_PREFIX + orjson.dumps(message).decode() + "\n")
        sys.stdout.flush()


def run_driver(job: dict[str, Any]) -> None:
    """Run the job on Ray; raises BatchFailure with the job's FailureReason."""
    spec = TransformSpec.from_dict(job["spec"])
    progress = Progress(backend="ray")
    reporter = _Reporter(progress)
    try:
        objects = list_inputs(spec)
        prepare_output_location(spec.output_path)
    except (InputError, StorageError) as exc:
        raise BatchFailure(str(exc)) from exc
    progress.files_total = len(objects)
    progress.bytes_total = sum(o.size for o in objects)
    reporter.report(force=True)

    import ray

    address = job.get("ray_address") or None
    ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
             **({} if address else {"num_cpus": os.cpu_count() or 2}))
    try:
        _run_pipeline(ray, spec, job, objects, progress, reporter)
    finally:
        ray.shutdown()


def _run_pipeline(ray: Any, spec: TransformSpec, job: dict[str, Any], objects: list[InputObject],
                  progress: Progress, reporter: _Reporter) -> None:
    object_dicts = [dataclasses.asdict(o) for o in objects]
    launches, log_dir = job["launches"], job["log_dir"]
    if spec.batch_strategy is None or spec.max_payload_mb is None or spec.max_concurrent is None:
        # Ask one instance what the container prefers, as the local backend does, so both cut alike.
        probe = ray.remote(num_cpus=ACTOR_CPUS)(InstanceActor).remote(spec.to_dict(), launches, log_dir,
                                                                        object_dicts)
        try:
            params = ray.get(probe.execution_parameters.remote())
        except ray.exceptions.RayActorError as exc:
            raise BatchFailure(f"An instance could not start: {_actor_error(exc)}") from exc
        finally:
            ray.kill(probe)
        spec = spec.with_defaults(params)
    assert spec.max_concurrent is not None
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    dataset = ray.data.from_items([{"file": i} for i in range(len(objects))], override_num_blocks=len(objects))
    dataset = dataset.map_batches(read_objects, batch_size=1, num_cpus=READER_CPUS,
                                  fn_kwargs={"spec": spec.to_dict(), "objects": object_dicts})
    # MaxConcurrentTransforms: calls in flight on one actor (its instance batches them, as in the
    # local backend); they run in the actor's threads and meet on its event loop.
    pool = ray.data.ActorPoolStrategy(size=spec.instance_count, max_concurrent_calls_per_actor=spec.max_concurrent,
                                      max_tasks_in_flight_per_actor=max(2, spec.max_concurrent),
                                      enable_true_multi_threading=spec.max_concurrent > 1)
    dataset = dataset.map_batches(InstanceActor, batch_size=1, num_cpus=ACTOR_CPUS, compute=pool,
                                  fn_constructor_kwargs={"spec": spec.to_dict(), "launches": launches,
                                                         "log_dir": log_dir, "objects": object_dicts})
    spool = Path(job["spool_dir"])
    outputs: dict[int, OutputFile] = {}
    counted: dict[int, int] = {}
    pids: dict[str, list[int]] = {}
    try:
        for row in dataset.iter_rows():
            index = int(row["file"])
            if progress.ready_at is None:
                progress.ready_at = time.time()  # the first result: actors are up
            if row["pids"] and row["pids"] not in pids:
                pids[row["pids"]] = orjson.loads(row["pids"])
                progress.instances = [{"Pids": p} for p in pids.values()]
            if row["error"]:
                raise BatchFailure(row["error"])
            out = outputs.get(index)
            if out is None:
                url = output_url(spec.output_path, objects[index].name)
                try:
                    out = outputs[index] = OutputFile(url, spool, spec.assemble_with)
                except (OSError, StorageError) as exc:
                    raise BatchFailure(f"Could not write the output {url}: {exc}") from exc
            if row["end"]:
                out.total = int(row["seq"])
            else:
                out.add(int(row["seq"]), bytes(row["payload"]))
                progress.records_done += int(row["count"])
                progress.batches_done += 1
                progress.bytes_done += int(row["raw"])
                counted[index] = counted.get(index, 0) + int(row["raw"])
            if out.complete and not out.finished:
                try:
                    out.finish()
                except (OSError, StorageError) as exc:
                    raise BatchFailure(f"Could not write the output {out.url}: {exc}") from exc
                progress.files_done += 1
                progress.bytes_done += max(0, objects[index].size - counted.get(index, 0))
            reporter.report()
    except ray.exceptions.RayError as exc:
        raise BatchFailure(f"The Ray pipeline failed: {_actor_error(exc)}") from exc
    finally:
        for out in outputs.values():
            out.discard()
        reporter.report(force=True)
    missing = [objects[i].url for i in range(len(objects)) if i not in outputs or not outputs[i].finished]
    if missing:
        raise BatchFailure(f"The Ray pipeline ended without the output of {', '.join(missing[:3])}.")


def _actor_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1] if text else type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    job = orjson.loads(Path(args[0]).read_bytes())

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        run_driver(job)
    except BatchFailure as exc:
        sys.stdout.write(REPORT_PREFIX + orjson.dumps({"Result": "Failed", "FailureReason": str(exc)}).decode()
                         + "\n")
        return 1
    except KeyboardInterrupt:
        sys.stdout.write(REPORT_PREFIX + orjson.dumps({"Result": "Stopped"}).decode() + "\n")
        return 2
    sys.stdout.write(REPORT_PREFIX + orjson.dumps({"Result": "Completed"}).decode() + "\n")
    return 0


# -- the server's side ----------------------------------------------------------------------------
class RayBackend:
    """Runs a job's Ray driver process and follows its reports (in the server's event loop)."""

    def __init__(self, spec: TransformSpec, launches: list[dict[str, Any]], *, ray_address: str | None,
                 job_dir: Path, log_dir: Path, progress: Progress):
        self.spec = spec
        self.launches = launches
        self.ray_address = ray_address
        self.job_dir = job_dir
        self.log_dir = log_dir
        self.progress = progress
        self.process: asyncio.subprocess.Process | None = None

    async def run(self) -> None:
        try:
            import ray  # noqa: F401
        except ImportError as exc:
            raise BatchFailure("The ray backend needs Ray: pip install 'moorage[ray]'.") from exc
        self.job_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        spool = self.job_dir / "spool"
        spool.mkdir(exist_ok=True)
        job_file = self.job_dir / "ray-job.json"
        job_file.write_bytes(orjson.dumps({
            "spec": self.spec.to_dict(), "launches": self.launches, "ray_address": self.ray_address,
            "log_dir": str(self.log_dir), "spool_dir": str(spool)}))
        driver_log = self.log_dir / "ray-driver.log"
        with open(driver_log, "ab") as err:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "moorage.batch.ray_backend", str(job_file),
                stdout=asyncio.subprocess.PIPE, stderr=err, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True)
        result: dict[str, Any] = {}
        try:
            assert self.process.stdout is not None
            async for raw in self.process.stdout:
                line = raw.decode("utf-8", "replace")
                if not line.startswith(REPORT_PREFIX):
                    continue
                message = orjson.loads(line[len(REPORT_PREFIX):])
                if "Progress" in message:
                    self.progress.update(message["Progress"])
                if "Result" in message:
                    result = message
            code = await self.process.wait()
        except BaseException:
            await self._terminate()
            raise
        if result.get("Result") == "Completed" and code == 0:
            return
        if result.get("FailureReason"):
            raise BatchFailure(result["FailureReason"])
        raise BatchFailure(f"The Ray driver exited with code {code} without a result; see {driver_log}.")

    async def _terminate(self) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), STOP_GRACE_S)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 5)


if __name__ == "__main__":
    sys.exit(main())
