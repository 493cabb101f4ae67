"""Multi-model endpoints (SageMaker MME): many model archives under one prefix, loaded on demand.

A model whose container has ``Mode: MultiModel`` names a *prefix* (``file://``, a plain path or
``s3://``) rather than one archive, and each ``InvokeEndpoint`` names the archive it wants with
``TargetModel`` (``m17.tar.gz``, ``customers/eu/m17.tar.gz``): the archive's URL is the prefix joined
with that key. An archive put under the prefix after the endpoint was deployed is servable, because
nothing is listed up front: the key is only resolved when a request names it.

Each instance of a multi-model variant is a ``ModelHost``: a memory budget (the instance type's
memory, or ``MOORAGE_MODEL_CACHE_BYTES``) and the models it has loaded. moorage runs every loaded
model as its own instance process, so unloading a model means stopping its process and the operating
system really gets the memory back; a model server that only dropped its references would keep the
pages in its heap. A load that would go over the budget first unloads the least recently used models
that no request is using; the size of a model is the measured resident memory of its process tree.

``ModelCache`` is the variant's hosts together: it sends a request for a model to a host that already
holds it (affinity), spreads a hot model to a second host when requests queue for it, and otherwise
picks the host with the most free budget.

With ``MultiModelConfig.ModelCacheSetting: Disabled`` SageMaker "asynchronously unloads the model from
memory and deletes it from disk immediately after it is invoked" (the MME caching guide): a host made
with ``caching=False`` schedules the unload once the last request using the model is released.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import psutil

from moorage.errors import ApiError
from moorage.serving.instance import Instance, InstanceStartError, InstanceState
from moorage.serving.instance_types import machine_memory_bytes, resources_for
from moorage.store.artifacts import ArtifactError
from moorage.store.locations import StorageError, filesystem, is_local, join

log = logging.getLogger("moorage.model_cache")

# The container Environment variable that overrides a host's budget (bytes).
CACHE_BYTES_ENV = "MOORAGE_MODEL_CACHE_BYTES"
# A host's budget when neither the variable nor the instance type (a local or unknown type) gives one
# and the machine's memory cannot be read.
FALLBACK_BUDGET_BYTES = 8 * 1024**3
# What a model is assumed to need before anything has been measured. A bare runtime process that
# serves a tiny model measures about 45 MiB resident; a little more so the first loads leave room.
ESTIMATE_FLOOR_BYTES = 64 * 1024**2
# Requests for one model in flight on its host (acquired, not yet released) beyond which the model
# counts as hot and queueing, and ModelCache loads a second copy on another host. An instance process
# answers one request per core of its type at best; a queue of this depth means a wait of several
# predictions, which a copy elsewhere removes once it is loaded.
HOT_MODEL_IN_FLIGHT = 4
# Loads of one request that find their model dead at once before the request gives up.
MAX_LOADS_PER_REQUEST = 2
# Samples kept for drain_metrics; older ones are dropped when nobody drains.
MAX_PENDING_SAMPLES = 10_000

# SageMaker's multi-model metric names (AWS/SageMaker, per instance); the integrator moves them to
# metrics/vocabulary.py.
MODEL_LOADING_WAIT_TIME = "ModelLoadingWaitTime"
MODEL_UNLOADING_TIME = "ModelUnloadingTime"
MODEL_DOWNLOADING_TIME = "ModelDownloadingTime"
MODEL_LOADING_TIME = "ModelLoadingTime"
MODEL_CACHE_HIT = "ModelCacheHit"
LOADED_MODEL_COUNT = "LoadedModelCount"
MICROSECONDS = "Microseconds"
NO_UNIT = "None"

# SageMaker's TargetModelHeader: 1 to 1024 characters, pattern \A\S[\p{Print}]*\z (Java's \p{Print},
# which is ASCII: space to tilde).
MAX_TARGET_LENGTH = 1024
MAX_SEGMENT_BYTES = 255  # a file name on this machine (and S3ModelDataSource's rule for names)


class TargetModelError(ApiError):
    """A ``TargetModel`` that cannot be served; rendered as SageMaker's runtime error.

    ``status``/``code`` are the runtime service's: ValidationError (400) for a key that is not valid
    or whose archive cannot be fetched or unpacked, ModelError (424) for a model whose server failed
    to load it, ServiceUnavailable (503) for a host that is shutting down.
    """

    def __init__(self, message: str, *, status: int = 400, code: str = "ValidationError",
                 target: str | None = None, **fields: Any):
        super().__init__(message, **fields)
        self.status = status
        self.code = code
        self.target = target


def _invalid(target: str, constraint: str) -> TargetModelError:
    # Escaped, so a control character in the key cannot break the error's text or a log line.
    shown = "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in target[:200])
    shown += "..." if len(target) > 200 else ""
    return TargetModelError(f"1 validation error detected: Value '{shown}' at 'targetModel' failed to satisfy "
                            f"constraint: {constraint}", target=target)


def check_target(target: str) -> str:
    """The archive key ``target`` names, or TargetModelError (400) when it is not a valid key.

    SageMaker's own constraint comes first (1-1024 printable ASCII characters, not starting with a
    space). Then the key must be a relative path that stays under the prefix: no leading ``/``, no
    backslash, no empty, ``.`` or ``..`` segment. Such keys are refused rather than normalised so a
    model has exactly one spelling, and the cache never holds one archive twice under two names.
    A ``.tar.gz`` suffix is not required: SageMaker's API does not require it, and the artifact
    store recognises an archive by its content.
    """
    if not isinstance(target, str) or not target:
        raise _invalid(str(target or ""), "Member must have length greater than or equal to 1")
    if len(target) > MAX_TARGET_LENGTH:
        raise _invalid(target, f"Member must have length less than or equal to {MAX_TARGET_LENGTH}")
    if target[0] == " " or any(not (" " <= ch <= "~") for ch in target):
        raise _invalid(target, r"Member must satisfy regular expression pattern: \A\S[\p{Print}]*\z")
    if target.startswith("/"):
        raise TargetModelError(f"TargetModel '{target}' is an absolute path; it must be relative to the "
                               "model data prefix.", target=target)
    if "\\" in target:
        raise TargetModelError(f"TargetModel '{target}' contains a backslash; separate folders with '/'.",
                               target=target)
    for segment in target.split("/"):
        if segment in ("", ".", ".."):
            raise TargetModelError(f"TargetModel '{target}' has an empty, '.' or '..' path segment; it must "
                                   "name an archive under the model data prefix.", target=target)
        if len(segment.encode()) > MAX_SEGMENT_BYTES:
            raise TargetModelError(f"TargetModel '{target}' has a path segment longer than "
                                   f"{MAX_SEGMENT_BYTES} bytes.", target=target)
    return target


def resolve_target(prefix_url: str, target: str) -> str:
    """The URL of ``target``'s archive under the model data prefix ``prefix_url``.

    For a local prefix the path is also resolved through symbolic links and refused when it lands
    outside the prefix (a link out of the model folder would otherwise serve any file on the
    machine) or on a folder (a folder is not an archive, and on S3 it would not be an object).
    Whether the archive exists is left to the load, so one added later is found then.
    """
    key = check_target(target)
    url = join(prefix_url, key)
    try:
        fs, prefix_path = filesystem(prefix_url)
    except StorageError as exc:
        raise TargetModelError(f"Could not read the model data prefix {prefix_url}: {exc}", target=key) from exc
    if is_local(fs):
        root = os.path.realpath(prefix_path)
        real = os.path.realpath(os.path.join(prefix_path, key))
        if real == root or os.path.commonpath([root, real]) != root:
            raise TargetModelError(f"TargetModel '{key}' resolves outside the model data prefix {prefix_url}.",
                                   target=key)
        if os.path.isdir(real):
            raise TargetModelError(f"TargetModel '{key}' names a folder under {prefix_url}, not a model archive.",
                                   target=key)
    return url


def budget_for(instance_type: str, environment: Mapping[str, str] | None = None) -> int:
    """A host's memory budget in bytes: ``MOORAGE_MODEL_CACHE_BYTES`` from the container Environment,
    else the instance type's memory, else this machine's. Raises ValueError for a value that is not a
    positive whole number of bytes (the integrator reports it when the model is created)."""
    raw = (environment or {}).get(CACHE_BYTES_ENV)
    if raw is not None and raw.strip():
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError(f"{CACHE_BYTES_ENV} must be a whole number of bytes, not {raw!r}") from None
        if value <= 0:
            raise ValueError(f"{CACHE_BYTES_ENV} must be positive, not {raw!r}")
        return value
    memory = resources_for(instance_type).memory_bytes
    if memory is None:
        memory = machine_memory_bytes()
    return memory if memory else FALLBACK_BUDGET_BYTES


def process_tree_rss(pid: int | None) -> int | None:
    """Resident memory of ``pid`` and its descendants (a server's workers count too); None when gone.

    RSS counts pages shared between a server and its forked workers once per process, so it errs on
    the large side, which for a budget is the safe side; USS would need each process's smaps.
    """
    if pid is None:
        return None
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
        if root.status() == psutil.STATUS_ZOMBIE:
            return None
    except psutil.Error:
        return None
    total = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):
            total += process.memory_info().rss
    return total


def _alive(instance: Instance) -> bool:
    if instance.state != InstanceState.IN_SERVICE:
        return False
    process = getattr(instance, "process", None)  # a Ray actor's instance (cluster mode) has no local process
    return process is None or process.returncode is None


def _resident(instance: Instance) -> int | None:
    """The model's resident memory: its process tree here, or what its actor measured on its node."""
    if getattr(instance, "process", None) is None:
        return instance.resident_bytes()
    return process_tree_rss(instance.pid)


@dataclass(frozen=True, slots=True)
class ModelMetricSample:
    """One value of a multi-model metric, for the integrator to publish with the host's dimensions."""

    name: str
    value: float
    unit: str
    host_id: str
    timestamp: float  # time.time()


@dataclass
class LoadedModel:
    target: str
    instance: Instance
    size_bytes: int  # measured RSS of its process tree (re-measured as the host decides evictions)
    loaded_at: float  # time.time()
    last_used: float  # time.time() of the last acquire or release
    hits: int = 0  # requests that found it loaded
    invocations: int = 0  # requests it served, the one that loaded it included

    def to_dict(self, in_flight: int = 0) -> dict[str, Any]:
        return {"TargetModel": self.target, "InstanceId": self.instance.id, "Pid": self.instance.pid,
                "SizeBytes": self.size_bytes, "LoadedAt": self.loaded_at, "LastUsed": self.last_used,
                "Hits": self.hits, "Invocations": self.invocations, "InFlight": in_flight,
                "Alive": _alive(self.instance)}


@dataclass
class _Counters:
    requests: int = 0
    hits: int = 0
    loads: int = 0
    failed_loads: int = 0
    unloads: int = 0
    evictions: int = 0
    samples: deque[ModelMetricSample] = field(default_factory=lambda: deque(maxlen=MAX_PENDING_SAMPLES))


class ModelHost:
    """One instance of a multi-model variant: a memory budget and the model processes it runs.

    A request calls ``acquire(target)`` for the instance serving its model, invokes it, then calls
    ``release(target)``; between the two the model is *in use* and is never chosen for eviction.
    ``start_model(target)`` fetches and unpacks the archive and returns a started Instance (it raises
    ArtifactError or InstanceStartError when it cannot).
    """

    def __init__(self, host_id: str, budget_bytes: int, start_model: Callable[[str], Awaitable[Instance]], *,
                 caching: bool = True, stop_timeout: float = 10.0):
        self.host_id = host_id
        self.budget_bytes = budget_bytes
        self.caching = caching
        self.stop_timeout = stop_timeout
        self._start_model = start_model
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()  # least recently used first
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._claims: dict[str, int] = {}  # requests between acquire and release, per target
        self._sizes: dict[str, int] = {}  # the last measured size of every target ever loaded here
        self._reserved: dict[str, int] = {}  # estimates of the loads in progress
        self._unloading: dict[int, int] = {}  # sizes of processes being stopped, until they are gone
        self._room = asyncio.Lock()  # one eviction decision at a time, so two loads cannot both fit
        self._background: set[asyncio.Task[None]] = set()
        self._closed = False
        self._counters = _Counters()

    # ------------------------------------------------------------------------------------------- reading

    def used_bytes(self) -> int:
        """Memory of the loaded models, as last measured."""
        return sum(model.size_bytes for model in self._models.values())

    def committed_bytes(self) -> int:
        """What the budget is charged with: loaded models, loads in progress, processes being stopped."""
        return self.used_bytes() + sum(self._reserved.values()) + sum(self._unloading.values())

    def free_bytes(self) -> int:
        return self.budget_bytes - self.committed_bytes()

    def loaded(self) -> list[LoadedModel]:
        """The loaded models, least recently used first."""
        return list(self._models.values())

    def holds(self, target: str) -> bool:
        """Whether ``target`` is loaded here, being loaded, or has requests waiting here."""
        return target in self._models or target in self._loading or self._claims.get(target, 0) > 0

    def in_flight(self, target: str | None = None) -> int:
        """Requests acquired and not yet released: for ``target``, or for every model of the host."""
        if target is None:
            return sum(self._claims.values())
        return self._claims.get(target, 0)

    def snapshot(self) -> dict[str, Any]:
        """What the host holds, JSON-able; sizes measured now."""
        self._refresh_sizes(drop_dead=False)
        counters = self._counters
        return {
            "HostId": self.host_id, "BudgetBytes": self.budget_bytes, "UsedBytes": self.used_bytes(),
            "CommittedBytes": self.committed_bytes(), "Caching": self.caching,
            "Models": [model.to_dict(self._claims.get(model.target, 0)) for model in self._models.values()],
            "Loading": sorted(self._loading), "Requests": counters.requests, "Hits": counters.hits,
            "HitRate": counters.hits / counters.requests if counters.requests else None,
            "Loads": counters.loads, "FailedLoads": counters.failed_loads, "Unloads": counters.unloads,
            "Evictions": counters.evictions,
        }

    def drain_metrics(self) -> list[ModelMetricSample]:
        """The samples recorded since the last call, then LoadedModelCount now (a gauge: one value per
        drain, so every publishing period has one)."""
        samples = list(self._counters.samples)
        self._counters.samples.clear()
        samples.append(ModelMetricSample(LOADED_MODEL_COUNT, float(len(self._models)), NO_UNIT, self.host_id,
                                         time.time()))
        return samples

    def _record(self, name: str, value: float, unit: str) -> None:
        self._counters.samples.append(ModelMetricSample(name, value, unit, self.host_id, time.time()))

    # ------------------------------------------------------------------------------------------- serving

    async def acquire(self, target: str) -> tuple[Instance, bool]:
        """The instance serving ``target`` and whether it was already loaded (a cache hit).

        A miss loads the model, once however many requests ask for it meanwhile: they all wait on
        the same load, which goes on even if the request that started it goes away. Call ``release``
        after the invocation, whatever its outcome, but not when this raises.
        """
        key = check_target(target)
        if self._closed:
            raise TargetModelError(f"Host {self.host_id} is shutting down.", status=503, code="ServiceUnavailable",
                                   target=key)
        # Claimed before the first await, so eviction, ModelCache.choose and a cache-disabled unload
        # see this request from now on.
        self._claims[key] = self._claims.get(key, 0) + 1
        self._counters.requests += 1
        try:
            return await self._acquire(key, time.monotonic())
        except BaseException:
            self._unclaim(key)
            raise

    async def _acquire(self, key: str, arrived: float) -> tuple[Instance, bool]:
        waited = False
        loads = 0
        while True:
            model = self._models.get(key)
            if model is not None and _alive(model.instance):
                model.invocations += 1
                model.last_used = time.time()
                self._models.move_to_end(key)
                if waited:
                    self._record(MODEL_LOADING_WAIT_TIME, (time.monotonic() - arrived) * 1e6, MICROSECONDS)
                else:
                    model.hits += 1
                    self._counters.hits += 1
                self._record(MODEL_CACHE_HIT, 0.0 if waited else 1.0, NO_UNIT)
                return model.instance, not waited
            if model is not None:
                log.warning("host %s: the process of model %s (instance %s) died; loading it again",
                            self.host_id, key, model.instance.id)
                self._drop_dead(key, model)
                continue
            task = self._loading.get(key)
            if task is None:
                if loads >= MAX_LOADS_PER_REQUEST:
                    raise TargetModelError(f"Target model {key} stopped right after it was loaded, "
                                           f"{loads} times.", status=424, code="ModelError", target=key)
                loads += 1
                task = self._start_load(key)
            waited = True
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if task.cancelled() and not (current is not None and current.cancelling()):
                    raise TargetModelError(f"Host {self.host_id} stopped loading {key}: it is shutting down.",
                                           status=503, code="ServiceUnavailable", target=key) from None
                raise

    def release(self, target: str) -> None:
        """The request that acquired ``target`` is done with it. Without caching, the model is unloaded
        (in the background, as SageMaker does) once no other request is using it."""
        key = check_target(target)
        self._unclaim(key)
        model = self._models.get(key)
        if model is not None:
            model.last_used = time.time()

    def _unclaim(self, key: str) -> None:
        if key not in self._claims:
            log.warning("host %s: %s released more often than acquired", self.host_id, key)
            return
        remaining = self._claims[key] - 1
        if remaining > 0:
            self._claims[key] = remaining
            return
        self._claims.pop(key, None)
        if not self.caching and key in self._models and key not in self._loading:
            self._spawn(self._unload_if_unused(key, self._models[key]))

    async def _unload_if_unused(self, key: str, model: LoadedModel) -> None:
        # A request that arrived between the release and now keeps the model.
        if self._models.get(key) is model and self._claims.get(key, 0) == 0:
            await self._unload_model(key, evicted=False)

    # ------------------------------------------------------------------------------------------- loading

    def _start_load(self, key: str) -> asyncio.Task[LoadedModel]:
        task = asyncio.create_task(self._load(key))
        self._loading[key] = task

        def done(finished: asyncio.Task[LoadedModel]) -> None:
            if self._loading.get(key) is finished:
                del self._loading[key]
            if not finished.cancelled():
                finished.exception()  # retrieved here: every waiter may have gone away

        task.add_done_callback(done)
        return task

    def estimate(self, key: str) -> int:
        """What loading ``key`` is expected to take: its last measured size on this host; else the
        median of the models loaded now (models behind one endpoint tend to be alike); else the median
        of every size measured here; else ESTIMATE_FLOOR_BYTES."""
        if key in self._sizes:
            return self._sizes[key]
        if self._models:
            return int(statistics.median(model.size_bytes for model in self._models.values()))
        if self._sizes:
            return int(statistics.median(self._sizes.values()))
        return ESTIMATE_FLOOR_BYTES

    async def _load(self, key: str) -> LoadedModel:
        estimate = self.estimate(key)
        async with self._room:
            await self._make_room(estimate, keep=key)
            self._reserved[key] = estimate
        began = time.monotonic()
        try:
            instance = await self._start_model(key)
        except TargetModelError:
            self._counters.failed_loads += 1
            raise
        except ArtifactError as exc:
            self._counters.failed_loads += 1
            raise TargetModelError(f"Failed to download model data for target model {key}: {exc}",
                                   target=key) from exc
        except InstanceStartError as exc:
            self._counters.failed_loads += 1
            raise TargetModelError(f"Failed to load target model {key}: {exc}", status=424, code="ModelError",
                                   target=key, OriginalStatusCode=500, OriginalMessage=str(exc)) from exc
        except Exception as exc:
            self._counters.failed_loads += 1
            log.exception("host %s: loading %s failed", self.host_id, key)
            raise TargetModelError(f"Failed to load target model {key}: {type(exc).__name__}: {exc}", status=500,
                                   code="InternalFailure", target=key) from exc
        finally:
            self._reserved.pop(key, None)
        elapsed = time.monotonic() - began
        # The instance times its own start (spawn to /ping); the rest of start_model was fetching
        # and unpacking the archive.
        loading = min(elapsed, instance.setup_seconds or elapsed)
        self._record(MODEL_DOWNLOADING_TIME, (elapsed - loading) * 1e6, MICROSECONDS)
        self._record(MODEL_LOADING_TIME, loading * 1e6, MICROSECONDS)
        size = _resident(instance) or estimate
        self._sizes[key] = size
        now = time.time()
        model = LoadedModel(key, instance, size, loaded_at=now, last_used=now)
        if self._closed:
            await self._stop(model)
            raise TargetModelError(f"Host {self.host_id} is shutting down.", status=503, code="ServiceUnavailable",
                                   target=key)
        self._models[key] = model
        self._counters.loads += 1
        log.info("host %s: loaded %s in %.2f s (%d MiB; %d of %d MiB used)", self.host_id, key, elapsed,
                 size >> 20, self.used_bytes() >> 20, self.budget_bytes >> 20)
        # The estimate may have been low: measured, the host may now be over its budget.
        async with self._room:
            await self._make_room(0, keep=key)
        if not self.caching and self._claims.get(key, 0) == 0:
            self._spawn(self._unload_if_unused(key, model))  # everyone who asked for it has gone away
        return model

    def _refresh_sizes(self, *, drop_dead: bool = True) -> None:
        """Measure the loaded models again (a model grows as it serves); drop those whose process died."""
        for key, model in list(self._models.items()):
            if not _alive(model.instance):
                if drop_dead:
                    self._drop_dead(key, model)
                continue
            size = _resident(model.instance)
            if size is not None:
                model.size_bytes = size
                self._sizes[key] = size

    async def _make_room(self, needed: int, keep: str) -> None:
        """Unload least recently used models until ``needed`` more bytes fit in the budget.

        A victim is a model no request holds (acquired and not released), preferring one whose
        process has nothing outstanding; ``keep`` (the model being loaded) is never one. When every
        other model is in use the load goes ahead over the budget rather than fail the request: the
        models in use become victims once released.
        """
        self._refresh_sizes()
        while self.committed_bytes() + needed > self.budget_bytes:
            victim = self._victim(keep)
            if victim is None:
                log.warning("host %s: %d MiB committed + %d MiB needed is over the %d MiB budget, and every "
                            "other model is in use", self.host_id, self.committed_bytes() >> 20, needed >> 20,
                            self.budget_bytes >> 20)
                return
            await self._unload_model(victim, evicted=True)

    def _victim(self, keep: str) -> str | None:
        unclaimed = [key for key in self._models if key != keep and self._claims.get(key, 0) == 0]
        for key in unclaimed:
            if self._models[key].instance.outstanding == 0:
                return key
        return unclaimed[0] if unclaimed else None

    # ----------------------------------------------------------------------------------------- unloading

    async def unload(self, target: str) -> bool:
        """Unload ``target`` now (its requests in flight finish first); False when it was not loaded."""
        key = check_target(target)
        if key not in self._models:
            return False
        await self._unload_model(key, evicted=False)
        return True

    async def _unload_model(self, key: str, *, evicted: bool) -> None:
        model = self._models.pop(key, None)
        if model is None:
            return
        self._unloading[id(model)] = model.size_bytes
        log.info("host %s: %s %s (%d MiB, %d hits)", self.host_id, "evicting" if evicted else "unloading", key,
                 model.size_bytes >> 20, model.hits)
        began = time.monotonic()
        # Shielded: a request that gives up while its eviction runs must not leave a process half stopped.
        stopping = self._spawn(self._stop(model))
        try:
            await asyncio.shield(stopping)
        finally:
            if stopping.done():
                self._finish_unload(model, began, evicted)
            else:
                stopping.add_done_callback(lambda _: self._finish_unload(model, began, evicted))

    def _finish_unload(self, model: LoadedModel, began: float, evicted: bool) -> None:
        self._unloading.pop(id(model), None)
        self._counters.unloads += 1
        self._counters.evictions += evicted
        self._record(MODEL_UNLOADING_TIME, (time.monotonic() - began) * 1e6, MICROSECONDS)

    async def _stop(self, model: LoadedModel) -> None:
        try:
            await model.instance.stop(drain_timeout=self.stop_timeout, term_timeout=self.stop_timeout)
        except Exception:
            log.exception("host %s: stopping the process of %s failed", self.host_id, model.target)
            with contextlib.suppress(Exception):
                await model.instance.kill()

    def _drop_dead(self, key: str, model: LoadedModel) -> None:
        """Forget a model whose process died, and reap what is left of it (socket, log pump)."""
        if self._models.get(key) is model:
            del self._models[key]
        self._spawn(self._stop(model))

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def close(self) -> None:
        """Stop loading, unload every model and wait until their processes are gone."""
        self._closed = True
        loading = list(self._loading.values())
        for task in loading:
            task.cancel()
        await asyncio.gather(*loading, return_exceptions=True)
        await asyncio.gather(*(self._unload_model(key, evicted=False) for key in list(self._models)),
                             return_exceptions=True)
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)


class ModelCache:
    """The hosts of one multi-model variant (its InitialInstanceCount instances) and request routing."""

    def __init__(self, hosts: list[ModelHost]):
        if not hosts:
            raise ValueError("a model cache needs at least one host")
        self.hosts = hosts

    def choose(self, target: str) -> ModelHost:
        """The host a request for ``target`` should go to.

        A host that holds the model (loaded, loading, or with requests for it), the one with the
        fewest requests for it in flight. When even that one has more than HOT_MODEL_IN_FLIGHT in
        flight and some host does not hold it, the model is hot: the host with the most free budget
        among the others gets a copy, and the two then share its requests. A model no host holds goes
        to the host with the most free budget (the fewest requests in flight on a tie).
        """
        key = check_target(target)
        holders = [host for host in self.hosts if host.holds(key)]
        others = [host for host in self.hosts if not host.holds(key)]
        if holders:
            best = min(holders, key=lambda host: (host.in_flight(key), host.in_flight()))
            if best.in_flight(key) <= HOT_MODEL_IN_FLIGHT or not others:
                return best
            return max(others, key=lambda host: (host.free_bytes(), -host.in_flight()))
        return max(self.hosts, key=lambda host: (host.free_bytes(), -host.in_flight()))

    async def acquire(self, target: str) -> tuple[ModelHost, Instance, bool]:
        """(host, instance, cache hit) for one request; call ``host.release(target)`` after it."""
        host = self.choose(target)
        instance, hit = await host.acquire(target)
        return host, instance, hit

    def snapshot(self) -> list[dict[str, Any]]:
        return [host.snapshot() for host in self.hosts]

    def drain_metrics(self) -> list[ModelMetricSample]:
        return [sample for host in self.hosts for sample in host.drain_metrics()]

    async def close(self) -> None:
        await asyncio.gather(*(host.close() for host in self.hosts), return_exceptions=True)
