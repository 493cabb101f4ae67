"""What an ``ml.*`` instance type means on this machine: CPU threads and a memory limit per instance.

SageMaker gives each instance its own VM; moorage runs instances as processes on one machine, so an
instance type becomes a budget instead: a model library should use as many threads as the type has
vCPUs (never more than the machine has cores, which would only add contention), and an instance
should not grow past the type's memory.

Threads are set through the variables every numerical library reads at import time
(``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``) plus ``MOORAGE_CPU_THREADS`` for
runtimes that size their own pools (onnxruntime's intra-op threads, torch.set_num_threads). A
variable the container's Environment sets wins.

Memory is limited only by a mechanism that counts real memory, or on request:

* ``MOORAGE_CGROUP_ROOT``: a cgroup v2 directory delegated to moorage (writable, with the memory
  controller enabled in its ``cgroup.subtree_control``, e.g. systemd ``Delegate=yes``). Each instance
  gets a child cgroup whose ``memory.max`` is the type's memory; the process joins it before it
  execs the model server, so every byte it allocates is counted. moorage never creates or
  reconfigures cgroups on its own: the hierarchy belongs to whoever runs the machine.
* ``MOORAGE_ENFORCE_MEMORY_LIMIT=1``: an address-space rlimit (``prlimit --as``). It is opt-in
  because it limits *virtual* memory, which onnxruntime, torch, CUDA and jemalloc-style allocators
  reserve far beyond what they touch; a limit equal to the type's memory would make such a model
  fail to load on a machine with plenty of free memory. The limit is applied by wrapping the
  command in util-linux ``prlimit`` because asyncio's ``preexec_fn`` is unsafe once the server has
  threads.

Types not in the table, and the SageMaker SDK's local-mode types (``local``, ``local_cpu``,
``local_gpu``), get the machine's cores and no memory limit, with a warning logged once per type.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from moorage.settings import InstanceSettings

log = logging.getLogger("moorage.instance_types")

GIB = 1024**3
CPU_THREADS_ENV = "MOORAGE_CPU_THREADS"
THREAD_VARIABLES = (CPU_THREADS_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
CGROUP_ROOT_ENV = "MOORAGE_CGROUP_ROOT"
ENFORCE_MEMORY_ENV = "MOORAGE_ENFORCE_MEMORY_LIMIT"
LOCAL_TYPES = frozenset({"local", "local_cpu", "local_gpu"})


@dataclass(frozen=True)
class InstanceType:
    name: str
    vcpus: int
    memory_gib: float
    gpus: int = 0


def _family(family: str, sizes: list[tuple[str, int, float, int]]) -> dict[str, InstanceType]:
    return {f"ml.{family}.{size}": InstanceType(f"ml.{family}.{size}", vcpus, memory, gpus)
            for size, vcpus, memory, gpus in sizes}


# The sizes SageMaker offers for each family (the hosting ones follow botocore's
# ProductionVariantInstanceType enum; t3 is a notebook/training family), with EC2's vCPUs, memory
# (GiB) and GPUs.
_M = [("large", 2, 8, 0), ("xlarge", 4, 16, 0), ("2xlarge", 8, 32, 0), ("4xlarge", 16, 64, 0)]
_M5 = [*_M, ("12xlarge", 48, 192, 0), ("24xlarge", 96, 384, 0)]
_M6 = [*_M, ("8xlarge", 32, 128, 0), ("12xlarge", 48, 192, 0), ("16xlarge", 64, 256, 0), ("24xlarge", 96, 384, 0)]
_C = [("large", 2, 4, 0), ("xlarge", 4, 8, 0), ("2xlarge", 8, 16, 0), ("4xlarge", 16, 32, 0)]
_C5 = [*_C, ("9xlarge", 36, 72, 0), ("18xlarge", 72, 144, 0)]
_C6 = [*_C, ("8xlarge", 32, 64, 0), ("12xlarge", 48, 96, 0), ("16xlarge", 64, 128, 0), ("24xlarge", 96, 192, 0)]
_R = [("large", 2, 16, 0), ("xlarge", 4, 32, 0), ("2xlarge", 8, 64, 0), ("4xlarge", 16, 128, 0)]
_R5 = [*_R, ("12xlarge", 48, 384, 0), ("24xlarge", 96, 768, 0)]
_R6 = [*_R, ("8xlarge", 32, 256, 0), ("12xlarge", 48, 384, 0), ("16xlarge", 64, 512, 0), ("24xlarge", 96, 768, 0)]
_T = [("medium", 2, 4, 0), ("large", 2, 8, 0), ("xlarge", 4, 16, 0), ("2xlarge", 8, 32, 0)]

INSTANCE_TYPES: dict[str, InstanceType] = {
    **_family("t2", _T),
    **_family("t3", _T),
    **_family("m4", [("xlarge", 4, 16, 0), ("2xlarge", 8, 32, 0), ("4xlarge", 16, 64, 0),
                     ("10xlarge", 40, 160, 0), ("16xlarge", 64, 256, 0)]),
    **_family("m5", _M5),
    **_family("m5d", _M5),
    **_family("m6i", [*_M6, ("32xlarge", 128, 512, 0)]),
    **_family("m7i", [*_M6, ("48xlarge", 192, 768, 0)]),
    **_family("c4", [("large", 2, 3.75, 0), ("xlarge", 4, 7.5, 0), ("2xlarge", 8, 15, 0), ("4xlarge", 16, 30, 0),
                     ("8xlarge", 36, 60, 0)]),
    **_family("c5", _C5),
    **_family("c5d", _C5),
    **_family("c6i", [*_C6, ("32xlarge", 128, 256, 0)]),
    **_family("c7i", [*_C6, ("48xlarge", 192, 384, 0)]),
    **_family("r5", _R5),
    **_family("r5d", _R5),
    **_family("r6i", [*_R6, ("32xlarge", 128, 1024, 0)]),
    **_family("g4dn", [("xlarge", 4, 16, 1), ("2xlarge", 8, 32, 1), ("4xlarge", 16, 64, 1), ("8xlarge", 32, 128, 1),
                       ("12xlarge", 48, 192, 4), ("16xlarge", 64, 256, 1)]),
    **_family("g5", [("xlarge", 4, 16, 1), ("2xlarge", 8, 32, 1), ("4xlarge", 16, 64, 1), ("8xlarge", 32, 128, 1),
                     ("12xlarge", 48, 192, 4), ("16xlarge", 64, 256, 1), ("24xlarge", 96, 384, 4),
                     ("48xlarge", 192, 768, 8)]),
    **_family("p3", [("2xlarge", 8, 61, 1), ("8xlarge", 32, 244, 4), ("16xlarge", 64, 488, 8)]),
    **_family("p4d", [("24xlarge", 96, 1152, 8)]),
    **_family("inf1", [("xlarge", 4, 8, 0), ("2xlarge", 8, 16, 0), ("6xlarge", 24, 48, 0), ("24xlarge", 96, 192, 0)]),
    # A serverless variant's instance (ServerlessConfig.MemorySizeInMB, 1 to 6 GB): moorage's own names,
    # never given by users (InstanceType is refused beside ServerlessConfig). SageMaker gives serverless
    # compute in proportion to memory without saying how much; a vCPU per 2 GB, rounded up, here.
    **_family("serverless", [(f"{gb}gb", (gb + 1) // 2, gb, 0) for gb in range(1, 7)]),
}


def serverless_instance_type(memory_mb: int) -> str:
    """The instance type standing for a serverless variant of ``memory_mb`` (1024 to 6144, by 1024)."""
    return f"ml.serverless.{memory_mb // 1024}gb"


def machine_cores() -> int:
    """Cores this process may run on (its CPU affinity, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def machine_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Resources:
    """The budget of one instance of a type on this machine."""

    instance_type: str
    cpu_threads: int
    memory_bytes: int | None  # None: no limit (local or unknown type)
    known: bool


_warned: set[str] = set()


def _warn_once(key: str, message: str, *args: object) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message, *args)


def lookup(instance_type: str) -> InstanceType | None:
    return INSTANCE_TYPES.get(instance_type.strip().lower())


def resources_for(instance_type: str) -> Resources:
    cores = machine_cores()
    spec = lookup(instance_type)
    if spec is None:
        if instance_type.strip().lower() in LOCAL_TYPES:
            _warn_once(instance_type, "instance type %s: using the machine's defaults (%d CPU threads, no memory "
                       "limit)", instance_type, cores)
        else:
            _warn_once(instance_type, "unknown instance type %s: using the machine's defaults (%d CPU threads, no "
                       "memory limit)", instance_type, cores)
        return Resources(instance_type, cores, None, known=False)
    memory = int(spec.memory_gib * GIB)
    total = machine_memory_bytes()
    if total is not None:
        memory = min(memory, total)
    return Resources(instance_type, min(spec.vcpus, cores), memory, known=True)


def thread_environment(resources: Resources, container_env: Mapping[str, str]) -> dict[str, str]:
    """The thread-count variables to export, leaving out any the container's Environment sets."""
    value = str(resources.cpu_threads)
    return {name: value for name in THREAD_VARIABLES if name not in container_env}


@dataclass
class MemoryLimit:
    """How an instance's memory is limited: a command prefix, and what to clean up after it exits."""

    mechanism: str  # "cgroup", "rlimit" or "none"
    limit_bytes: int | None = None
    prefix: list[str] = field(default_factory=list)
    cgroup_dir: Path | None = None
    note: str = ""

    def release(self) -> None:
        if self.cgroup_dir is not None:
            # Only an empty cgroup can be removed; one that still has processes is left for the next start.
            try:
                os.rmdir(self.cgroup_dir)
            except OSError:
                pass


def memory_limit(resources: Resources, instance_id: str, server_env: Mapping[str, str] | None = None, *,
                 settings: InstanceSettings | None = None) -> MemoryLimit:
    """The memory limit for one instance, by the best mechanism the server is configured for.

    ``settings`` is the server's instances section; ``server_env`` (variables, read by the settings
    tree's rules) stands in for it where there is no server.
    """
    if settings is None:
        settings = InstanceSettings.from_env(server_env or {})
    limit = resources.memory_bytes
    if limit is None:
        return MemoryLimit("none", note="no memory limit (machine defaults)")
    root = str(settings.cgroup_root or "")
    if root:
        cgroup = Path(root) / f"moorage-{instance_id}"
        try:
            cgroup.mkdir(exist_ok=True)
            (cgroup / "memory.max").write_text(f"{limit}\n")
        except OSError as exc:
            _warn_once(f"cgroup:{root}", "%s=%s is not usable for memory limits (%s); instances run without one",
                       CGROUP_ROOT_ENV, root, exc)
        else:
            # The process moves itself into the cgroup and only then execs the server, so nothing it
            # allocates escapes the limit (moving it from outside after the spawn would race its start).
            prefix = ["/bin/sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', str(cgroup)]
            return MemoryLimit("cgroup", limit, prefix, cgroup, f"memory.max {limit} bytes in cgroup {cgroup}")
    if settings.enforce_memory_limit:
        prlimit = shutil.which("prlimit")
        if prlimit:
            return MemoryLimit("rlimit", limit, [prlimit, f"--as={limit}", "--"],
                               note=f"address-space rlimit {limit} bytes ({ENFORCE_MEMORY_ENV}=1)")
        _warn_once("prlimit", "%s=1 but util-linux prlimit is not installed; instances run without a memory limit",
                   ENFORCE_MEMORY_ENV)
    return MemoryLimit("none", note=f"no memory limit enforced (set {CGROUP_ROOT_ENV} to a delegated cgroup v2 "
                                    f"directory, or {ENFORCE_MEMORY_ENV}=1 for an address-space rlimit)")
