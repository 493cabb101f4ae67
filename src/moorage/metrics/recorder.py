"""Invocation metrics: an observer of every invocation, aggregated per endpoint/variant/instance/period.

``observe`` runs on the router's event loop after each reply, so it does the least that keeps the
period's statistics exact: bump a counter or two and append the two latencies to typed arrays
(about 0.3 us). Everything else (microsecond conversion, sums, extremes, KLL sketches, the rows for
the store, the Prometheus totals) happens once per period on the swapped-out window, in a worker
thread. The arrays are bounded: past ``max_samples`` latencies per series and period the samples are
dropped (counts stay exact) and the drop is counted, never silent.

Per window and series: SageMaker publishes ``Invocations`` as one sample of 1 per request, and
``Invocation4XXErrors``/``Invocation5XXErrors`` as one sample per request that is 1 for an error and
0 otherwise (so their Average is the error rate); ``ModelLatency`` is the instance hop and
``OverheadLatency`` the rest of the request, both in microseconds.
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np

from moorage.metrics.store import StatisticSet
from moorage.metrics.vocabulary import (
    CONTAINER_LATENCY,
    COUNT,
    DROPPED_SAMPLES,
    INVOCATION_4XX,
    INVOCATION_5XX,
    INVOCATION_NAMESPACE,
    INVOCATIONS,
    INVOCATIONS_PER_INSTANCE,
    MICROSECONDS,
    MODEL_LATENCY,
    OVERHEAD_LATENCY,
    SELF_NAMESPACE,
    container_dimensions,
    instance_dimensions,
    target_model_dimensions,
    variant_dimensions,
)
from moorage.serving.invocation_events import InvocationEvent

DEFAULT_MAX_SAMPLES = 1_000_000  # per series and period: 16 MB of float64 pairs at most

SeriesKey = tuple[str, str, str]  # (endpoint, variant, instance id; "" when no instance was reached)


class Window:
    """One period's raw observations of one (endpoint, variant, instance)."""

    __slots__ = ("client_errors", "containers", "dropped", "model", "server_errors", "targets", "total")

    def __init__(self) -> None:
        self.client_errors = 0
        self.server_errors = 0
        self.dropped = 0  # requests whose latencies did not fit in the arrays
        self.model = array("d")  # seconds
        self.total = array("d")  # seconds
        self.containers: dict[str, array] | None = None  # a pipeline's: container -> seconds
        self.targets: dict[str, array] | None = None  # a multi-model endpoint's: TargetModel -> seconds

    @property
    def count(self) -> int:
        return len(self.model) + self.dropped

    def latencies_us(self) -> tuple[np.ndarray, np.ndarray]:
        """(model, overhead) in microseconds."""
        model = np.frombuffer(self.model, dtype=np.float64) * 1e6
        total = np.frombuffer(self.total, dtype=np.float64) * 1e6
        return model, np.maximum(total - model, 0.0)


@dataclass
class TakenWindow:
    start: float
    end: float
    series: dict[SeriesKey, Window]

    @property
    def dropped(self) -> int:
        return sum(w.dropped for w in self.series.values())


class InvocationRecorder:
    """An InvocationObserver (serving.invocation_events) that keeps the current period's windows in memory."""

    def __init__(self, max_samples: int = DEFAULT_MAX_SAMPLES):
        self.max_samples = max_samples
        self.windows: dict[SeriesKey, Window] = {}
        self.window_start = time.time()
        self._dropped_before = 0

    def observe(self, event: InvocationEvent) -> None:
        try:  # the series exists but for the first request of a period: try is cheaper than get + test
            window = self.windows[(event.endpoint, event.variant, event.instance_id)]
        except KeyError:
            window = self.windows[(event.endpoint, event.variant, event.instance_id)] = Window()
        model = window.model
        if len(model) < self.max_samples:
            model.append(event.model_seconds)
            window.total.append(event.total_seconds)
            if event.container_seconds is not None:
                containers = window.containers
                if containers is None:
                    containers = window.containers = {}
                for name, seconds in event.container_seconds:
                    containers.setdefault(name, array("d")).append(seconds)
            if event.target_model is not None:
                targets = window.targets
                if targets is None:
                    targets = window.targets = {}
                targets.setdefault(event.target_model, array("d")).append(event.model_seconds)
        else:
            window.dropped += 1
        if event.status >= 400:
            if event.status >= 500:
                window.server_errors += 1
            else:
                window.client_errors += 1

    @property
    def dropped_total(self) -> int:
        """Latency samples dropped since the start (the open window included)."""
        return self._dropped_before + sum(w.dropped for w in list(self.windows.values()))

    def take(self, now: float | None = None, endpoints: Collection[str] | None = None) -> TakenWindow:
        """Close the current period of ``endpoints`` (default: all) and start their next; the other
        endpoints' windows stay open (on the event loop: no lock needed)."""
        now = time.time() if now is None else now
        if endpoints is None:
            taken, self.windows = self.windows, {}
        else:
            taken = {k: w for k, w in self.windows.items() if k[0] in endpoints}
            self.windows = {k: w for k, w in self.windows.items() if k[0] not in endpoints}
        window = TakenWindow(self.window_start, now, taken)
        self._dropped_before += window.dropped
        self.window_start = now
        return window


def statistic_sets(window: TakenWindow, timestamp: float, instances_in_service: Mapping[tuple[str, str], int],
                   idle_variants: list[tuple[str, str]]) -> list[StatisticSet]:
    """The rows one period of invocations becomes: per instance and per variant.

    ``instances_in_service`` divides a variant's invocations into InvocationsPerInstance;
    ``idle_variants`` (in service, no traffic this period) get zero counts so a scale-in sees
    "no load" rather than "no data".
    """
    ns = INVOCATION_NAMESPACE
    out: list[StatisticSet] = []
    by_variant: dict[tuple[str, str], list[tuple[str, Window]]] = {}
    for (endpoint, variant, instance_id), win in window.series.items():
        by_variant.setdefault((endpoint, variant), []).append((instance_id, win))
    for (endpoint, variant), members in by_variant.items():
        vdims = variant_dimensions(endpoint, variant)
        count = sum(w.count for _, w in members)
        client = sum(w.client_errors for _, w in members)
        server = sum(w.server_errors for _, w in members)
        models, overheads = [], []
        for instance_id, win in members:
            if not instance_id:
                continue  # no instance reached (no capacity): counted, but there is no model latency
            model, overhead = win.latencies_us()
            idims = instance_dimensions(endpoint, variant, instance_id)
            out.append(StatisticSet.of_counts(ns, INVOCATIONS, idims, timestamp, win.count, win.count))
            out.append(StatisticSet.of_counts(ns, INVOCATION_4XX, idims, timestamp, win.client_errors, win.count))
            out.append(StatisticSet.of_counts(ns, INVOCATION_5XX, idims, timestamp, win.server_errors, win.count))
            if model.size:
                out.append(StatisticSet.of_samples(ns, MODEL_LATENCY, idims, timestamp, MICROSECONDS, model))
                out.append(StatisticSet.of_samples(ns, OVERHEAD_LATENCY, idims, timestamp, MICROSECONDS,
                                                   overhead))
                models.append(model)
                overheads.append(overhead)
        out.append(StatisticSet.of_counts(ns, INVOCATIONS, vdims, timestamp, count, count))
        out.append(StatisticSet.of_counts(ns, INVOCATION_4XX, vdims, timestamp, client, count))
        out.append(StatisticSet.of_counts(ns, INVOCATION_5XX, vdims, timestamp, server, count))
        serving = instances_in_service.get((endpoint, variant)) or len([i for i, _ in members if i]) or 1
        per_instance = StatisticSet.of_counts(ns, INVOCATIONS_PER_INSTANCE, vdims, timestamp, count, count)
        per_instance.total = count / serving
        if count:
            per_instance.minimum = per_instance.maximum = 1.0 / serving
        out.append(per_instance)
        containers: dict[str, list[np.ndarray]] = {}
        for _, win in members:
            for name, seconds in (win.containers or {}).items():
                containers.setdefault(name, []).append(np.frombuffer(seconds, dtype=np.float64) * 1e6)
        for name, parts in containers.items():
            out.append(StatisticSet.of_samples(ns, CONTAINER_LATENCY, container_dimensions(endpoint, variant, name),
                                               timestamp, MICROSECONDS, np.concatenate(parts)))
        targets: dict[str, list[np.ndarray]] = {}
        for _, win in members:
            for name, seconds in (win.targets or {}).items():
                targets.setdefault(name, []).append(np.frombuffer(seconds, dtype=np.float64) * 1e6)
        for name, parts in targets.items():
            tdims = target_model_dimensions(endpoint, variant, name)
            latencies = np.concatenate(parts)
            out.append(StatisticSet.of_counts(ns, INVOCATIONS, tdims, timestamp, latencies.size, latencies.size))
            out.append(StatisticSet.of_samples(ns, MODEL_LATENCY, tdims, timestamp, MICROSECONDS, latencies))
        if models:
            out.append(StatisticSet.of_samples(ns, MODEL_LATENCY, vdims, timestamp, MICROSECONDS,
                                               np.concatenate(models)))
            out.append(StatisticSet.of_samples(ns, OVERHEAD_LATENCY, vdims, timestamp, MICROSECONDS,
                                               np.concatenate(overheads)))
    for endpoint, variant in idle_variants:
        if (endpoint, variant) in by_variant:
            continue
        vdims = variant_dimensions(endpoint, variant)
        for name in (INVOCATIONS, INVOCATIONS_PER_INSTANCE, INVOCATION_4XX, INVOCATION_5XX):
            out.append(StatisticSet.of_counts(ns, name, vdims, timestamp, 0, 0))
    if window.dropped:
        out.append(StatisticSet(SELF_NAMESPACE, DROPPED_SAMPLES, {}, timestamp, COUNT, 1.0,
                                float(window.dropped), float(window.dropped), float(window.dropped)))
    return out
