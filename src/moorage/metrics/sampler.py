"""Utilisation of instance processes, sampled with psutil once per period.

As SageMaker reports them: ``CPUUtilization`` is the sum over cores (100 per fully busy core, so
it can exceed 100), ``MemoryUtilization`` the resident memory as a percent of the instance type's
memory (the machine's, for types without a budget), ``DiskUtilization`` the use of the disk holding
moorage's home, all in ``/aws/sagemaker/Endpoints``; ``ModelSetupTime`` (``AWS/SageMaker``,
microseconds) is published once per instance, from its start to its first passing ``/ping``.
An instance's figures cover its whole process tree (a server's own workers count).

``sampled_instances`` reads the serving snapshot (taken on the event loop); ``sample`` does the
system calls and runs in a worker thread. Each endpoint is sampled at the end of each of its metric
periods (its ``MetricPublishFrequencyInSeconds``): CPU is the average since the previous sample.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil

from moorage.metrics.recorder import SeriesKey
from moorage.metrics.store import StatisticSet
from moorage.metrics.vocabulary import (
    CPU_UTILIZATION,
    DISK_UTILIZATION,
    INVOCATION_NAMESPACE,
    MEMORY_UTILIZATION,
    MICROSECONDS,
    MODEL_SETUP_TIME,
    PERCENT,
    UTILIZATION_NAMESPACE,
    instance_dimensions,
    variant_dimensions,
)
from moorage.serving.instance import InstanceState
from moorage.serving.instance_types import machine_memory_bytes, resources_for
from moorage.serving.snapshot import EndpointSnapshot

_SAMPLED_STATES = (InstanceState.IN_SERVICE, InstanceState.DRAINING)


@dataclass(frozen=True)
class InstanceInfo:
    endpoint: str
    variant: str
    instance_id: str
    pid: int
    setup_seconds: float | None
    memory_bytes: int | None

    @property
    def key(self) -> SeriesKey:
        return (self.endpoint, self.variant, self.instance_id)


def sampled_instances(snapshots: list[EndpointSnapshot]) -> list[InstanceInfo]:
    """The instances whose process trees are sampled: those serving or draining."""
    out = []
    for endpoint in snapshots:
        for variant in endpoint.variants.values():
            memory = resources_for(variant.instance_type).memory_bytes
            for instance in variant.instances:
                pid = instance.pid
                if pid is None or instance.state not in _SAMPLED_STATES:
                    continue
                out.append(InstanceInfo(endpoint.name, variant.name, instance.instance_id, pid,
                                        instance.setup_seconds, memory))
    return out


@dataclass
class Sample:
    sets: list[StatisticSet]
    gauges: dict[str, dict[SeriesKey, float]]


class UtilizationSampler:
    def __init__(self, disk_path: Path):
        self.disk_path = disk_path
        self._cpu_seen: dict[str, tuple[float, float]] = {}  # instance id -> (cpu seconds, monotonic time)
        self._setup_reported: set[str] = set()
        self._setup_seconds: dict[SeriesKey, float] = {}
        self._machine_memory = machine_memory_bytes()

    def sample(self, instances: list[InstanceInfo], timestamp: float, live: set[str] | None = None) -> Sample:
        """``instances``' figures since their previous sample; ``live`` (default: those sampled) are the
        instance ids still running, whose state is kept for their next sample."""
        try:
            disk = float(psutil.disk_usage(str(self.disk_path)).percent)
        except OSError:
            disk = None
        per_instance: dict[str, dict[SeriesKey, float]] = {CPU_UTILIZATION: {}, MEMORY_UTILIZATION: {},
                                                          DISK_UTILIZATION: {}}
        setups: dict[SeriesKey, float] = {}
        for info in instances:
            usage = self._usage(info)
            if usage is None:
                continue
            cpu, memory = usage
            per_instance[CPU_UTILIZATION][info.key] = cpu
            per_instance[MEMORY_UTILIZATION][info.key] = memory
            if disk is not None:
                per_instance[DISK_UTILIZATION][info.key] = disk
            if info.setup_seconds is not None and info.instance_id not in self._setup_reported:
                self._setup_reported.add(info.instance_id)
                setups[info.key] = info.setup_seconds
                self._setup_seconds[info.key] = info.setup_seconds
        live = {i.instance_id for i in instances} if live is None else live
        self._cpu_seen = {k: v for k, v in self._cpu_seen.items() if k in live}
        self._setup_reported &= live
        self._setup_seconds = {k: v for k, v in self._setup_seconds.items() if k[2] in live}
        sets = self._sets(per_instance, UTILIZATION_NAMESPACE, PERCENT, timestamp)
        sets += self._sets({MODEL_SETUP_TIME: {k: v * 1e6 for k, v in setups.items()}}, INVOCATION_NAMESPACE,
                           MICROSECONDS, timestamp)
        gauges = {**per_instance, MODEL_SETUP_TIME: dict(self._setup_seconds)}
        return Sample(sets, gauges)

    def _usage(self, info: InstanceInfo) -> tuple[float, float] | None:
        """(CPU percent since the last sample, resident memory percent) of an instance's process tree."""
        try:
            root = psutil.Process(info.pid)
            procs = [root, *root.children(recursive=True)]
            created = root.create_time()
        except psutil.Error:
            return None
        cpu_seconds, rss = 0.0, 0
        for proc in procs:
            try:
                times = proc.cpu_times()
                cpu_seconds += times.user + times.system
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
        now = time.monotonic()
        previous = self._cpu_seen.get(info.instance_id)
        if previous is None:
            # First sample: the average since the process started.
            elapsed = max(time.time() - created, 1e-3)
            cpu = 100.0 * cpu_seconds / elapsed
        else:
            elapsed = max(now - previous[1], 1e-3)
            cpu = 100.0 * max(cpu_seconds - previous[0], 0.0) / elapsed
        self._cpu_seen[info.instance_id] = (cpu_seconds, now)
        budget = info.memory_bytes or self._machine_memory
        memory = 100.0 * rss / budget if budget else 0.0
        return cpu, memory

    @staticmethod
    def _sets(values: dict[str, dict[SeriesKey, float]], namespace: str, unit: str,
              timestamp: float) -> list[StatisticSet]:
        out = []
        for metric, by_instance in values.items():
            by_variant: dict[tuple[str, str], list[float]] = {}
            for (endpoint, variant, instance_id), value in by_instance.items():
                by_variant.setdefault((endpoint, variant), []).append(value)
                out.append(StatisticSet.of_samples(namespace, metric,
                                                   instance_dimensions(endpoint, variant, instance_id),
                                                   timestamp, unit, np.asarray([value])))
            for (endpoint, variant), found in by_variant.items():
                out.append(StatisticSet.of_samples(namespace, metric, variant_dimensions(endpoint, variant),
                                                   timestamp, unit, np.asarray(found)))
        return out
