"""``GET /metrics``: the Prometheus exposition of invocation, utilisation and business metrics.

Prometheus wants cumulative counters and histograms, the store keeps periods; both come from the
recorder's windows. When a period closes, its window is folded into the running totals here (in
the flush thread, under a lock); a scrape adds the still-open window on top, so a scrape is never a
period behind. Utilisation is exposed as gauges of the latest sample, business metrics as a
summary (sum and count of every value put) per metric name, their dimensions as labels.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from moorage.metrics.recorder import SeriesKey, TakenWindow, Window
from moorage.metrics.vocabulary import (
    CAPTURE_OUTCOMES,
    CPU_UTILIZATION,
    DISK_UTILIZATION,
    ENDPOINT_NAME,
    INSTANCE_ID,
    MEMORY_UTILIZATION,
    MODEL_SETUP_TIME,
    VARIANT_NAME,
    dimension_key,
)

# Latency buckets in seconds: from 50 us (a fast model behind the router) to a minute (the default
# invocation timeout).
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_EDGES_US = np.asarray(LATENCY_BUCKETS) * 1e6
# "instance_id", not "instance": Prometheus sets "instance" to the scrape target's address and would
# rename ours to "exported_instance".
LABELS = ("endpoint", "variant", "instance_id")
# Series of instances that are gone are forgotten after this long without traffic.
FORGET_AFTER_S = 3600.0
_LABEL_NAMES = {ENDPOINT_NAME: "endpoint", VARIANT_NAME: "variant", INSTANCE_ID: "instance_id"}


def _bucket_counts(values_us: np.ndarray) -> np.ndarray:
    """Per-bucket (non-cumulative) counts, the last one for +Inf."""
    return np.bincount(np.searchsorted(_EDGES_US, values_us, side="left"), minlength=len(LATENCY_BUCKETS) + 1)


@dataclass
class _Totals:
    count: int = 0
    client_errors: int = 0
    server_errors: int = 0
    model_buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_BUCKETS) + 1, np.int64))
    model_sum_us: float = 0.0
    overhead_buckets: np.ndarray = field(default_factory=lambda: np.zeros(len(LATENCY_BUCKETS) + 1, np.int64))
    overhead_sum_us: float = 0.0
    updated: float = 0.0

    def add(self, window: Window, with_latency: bool) -> None:
        self.count += window.count
        self.client_errors += window.client_errors
        self.server_errors += window.server_errors
        if with_latency and len(window.model):
            model, overhead = window.latencies_us()
            self.model_buckets += _bucket_counts(model)
            self.model_sum_us += float(model.sum())
            self.overhead_buckets += _bucket_counts(overhead)
            self.overhead_sum_us += float(overhead.sum())

    def copy(self) -> _Totals:
        return _Totals(self.count, self.client_errors, self.server_errors, self.model_buckets.copy(),
                       self.model_sum_us, self.overhead_buckets.copy(), self.overhead_sum_us, self.updated)


def _sanitize(name: str) -> str:
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()
    snake = re.sub(r"[^a-z0-9_]", "_", snake)
    return snake if re.match(r"[a-z_]", snake) else f"_{snake}"


def label_name(dimension: str) -> str:
    return _LABEL_NAMES.get(dimension) or _sanitize(dimension)


class PrometheusExposition:
    """Running totals and latest gauges, and the collector that renders them."""

    def __init__(self, live_windows: Callable[[], Mapping[SeriesKey, Window]] | None = None):
        self._lock = threading.Lock()
        self._totals: dict[SeriesKey, _Totals] = {}
        self._gauges: dict[str, dict[SeriesKey, float]] = {}
        self._business: dict[tuple[str, str, str], tuple[dict[str, str], float, float]] = {}
        self._live = live_windows
        self.dropped_samples = lambda: 0
        # Data capture's cumulative counts per (endpoint, variant): set by whoever owns the writer.
        self.capture_counts: Callable[[], Mapping[tuple[str, str], Mapping[str, int]]] = dict
        # Instances replaced per (endpoint, variant), by cause (exited, timeout, memory): set by the metrics service.
        self.replacements: Callable[[], Mapping[tuple[str, str], Mapping[str, int]]] = dict
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # type: ignore[arg-type]  # a collector is anything with collect()

    # -- updates -----------------------------------------------------------------------------------
    def fold(self, window: TakenWindow) -> None:
        """Add a closed period to the totals (called from the flush thread)."""
        now = time.time()
        with self._lock:
            for key, win in window.series.items():
                totals = self._totals.get(key)
                if totals is None:
                    totals = self._totals[key] = _Totals()
                totals.add(win, bool(key[2]))
                totals.updated = now
            stale = [k for k, t in self._totals.items() if now - t.updated > FORGET_AFTER_S]
            for key in stale:
                del self._totals[key]

    def set_gauges(self, metric: str, values: Mapping[SeriesKey, float], live: set[str] | None = None) -> None:
        """New readings of ``metric``; those of other instances stay while their id is in ``live``
        (endpoints are sampled at their own periods), all are replaced when it is None."""
        with self._lock:
            kept = {} if live is None else {k: v for k, v in self._gauges.get(metric, {}).items() if k[2] in live}
            self._gauges[metric] = {**kept, **values}

    def add_business(self, namespace: str, metric_name: str, dimensions: Mapping[str, str], total: float,
                     count: float) -> None:
        key = (namespace, metric_name, dimension_key(dimensions))
        with self._lock:
            _, old_sum, old_count = self._business.get(key, ({}, 0.0, 0.0))
            self._business[key] = (dict(dimensions), old_sum + total, old_count + count)

    # -- exposition --------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            totals = {k: t.copy() for k, t in self._totals.items()}
            gauges = {m: dict(v) for m, v in self._gauges.items()}
            business = dict(self._business)
        for key, win in (self._live() if self._live else {}).items():
            totals.setdefault(key, _Totals()).add(win, bool(key[2]))
        yield from self._invocation_families(totals)
        yield from self._gauge_families(gauges)
        yield from self._business_families(business)
        yield from self._capture_families(self.capture_counts())
        yield from self._replacement_families(self.replacements())
        dropped = CounterMetricFamily("moorage_metrics_dropped_samples",
                                      "Latency samples the recorder dropped because its buffer was full.")
        dropped.add_metric([], float(self.dropped_samples()))
        yield dropped

    @staticmethod
    def _capture_families(counts: Mapping[tuple[str, str], Mapping[str, int]]) -> Iterator[Metric]:
        family = CounterMetricFamily("moorage_data_capture_records",
                                     "Data capture records by outcome: captured, written, dropped (queue full), "
                                     "failed (destination error).", labels=("endpoint", "variant", "outcome"))
        for (endpoint, variant), outcomes in sorted(counts.items()):
            for outcome in CAPTURE_OUTCOMES:
                family.add_metric([endpoint, variant, outcome], float(outcomes.get(outcome, 0)))
        yield family

    @staticmethod
    def _replacement_families(counts: Mapping[tuple[str, str], Mapping[str, int]]) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "moorage_instance_replacements",
            "Instances replaced since the variant's fleet started, by cause: exited (the process or its node died, "
            "or failed its health checks), timeout (recycled after a request timed out), memory (recycled past "
            "its resident-memory limit).", labels=("endpoint", "variant", "cause"))
        for (endpoint, variant), causes in sorted(counts.items()):
            for cause, count in sorted(causes.items()):
                family.add_metric([endpoint, variant, cause], float(count))
        yield family

    @staticmethod
    def _invocation_families(totals: dict[SeriesKey, _Totals]) -> Iterator[Metric]:
        invocations = CounterMetricFamily("moorage_invocations", "Invocations (SageMaker Invocations).",
                                          labels=LABELS)
        client = CounterMetricFamily("moorage_invocation_4xx_errors",
                                     "Invocations the model answered with a 4xx status (Invocation4XXErrors).",
                                     labels=LABELS)
        server = CounterMetricFamily("moorage_invocation_5xx_errors",
                                     "Invocations that failed with a 5xx status (Invocation5XXErrors).",
                                     labels=LABELS)
        model = HistogramMetricFamily("moorage_model_latency_seconds",
                                      "Time the instance took to answer (SageMaker ModelLatency).", labels=LABELS)
        overhead = HistogramMetricFamily("moorage_overhead_latency_seconds",
                                         "Time spent outside the instance (SageMaker OverheadLatency).",
                                         labels=LABELS)
        for (endpoint, variant, instance), t in sorted(totals.items()):
            labels = [endpoint, variant, instance]
            invocations.add_metric(labels, t.count)
            client.add_metric(labels, t.client_errors)
            server.add_metric(labels, t.server_errors)
            if instance:
                model.add_metric(labels, _histogram(t.model_buckets), t.model_sum_us / 1e6)
                overhead.add_metric(labels, _histogram(t.overhead_buckets), t.overhead_sum_us / 1e6)
        yield from (invocations, client, server, model, overhead)

    @staticmethod
    def _gauge_families(gauges: dict[str, dict[SeriesKey, float]]) -> Iterator[Metric]:
        described = {
            CPU_UTILIZATION: ("moorage_cpu_utilization_percent", "Instance CPU, 100 per busy core."),
            MEMORY_UTILIZATION: ("moorage_memory_utilization_percent",
                                   "Instance resident memory, percent of its instance type's memory."),
            DISK_UTILIZATION: ("moorage_disk_utilization_percent", "Use of the disk holding moorage's home."),
            MODEL_SETUP_TIME: ("moorage_model_setup_seconds", "Instance start to its first passing /ping."),
        }
        for metric, (name, doc) in described.items():
            family = GaugeMetricFamily(name, doc, labels=LABELS)
            for (endpoint, variant, instance), value in sorted(gauges.get(metric, {}).items()):
                family.add_metric([endpoint, variant, instance], value)
            yield family

    @staticmethod
    def _business_families(business: dict[tuple[str, str, str], tuple[dict[str, str], float, float]]
                           ) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for (namespace, metric_name, _), (dims, total, count) in sorted(business.items()):
            name = f"moorage_business_{_sanitize(metric_name)}"
            family = families.get(name)
            if family is None:
                family = families[name] = Metric(name, f"Business metric {metric_name} (sum and count of the "
                                                       "values put).", "summary")
            labels = {"namespace": namespace, **{label_name(k): v for k, v in dims.items()}}
            family.add_sample(f"{name}_sum", labels, total)
            family.add_sample(f"{name}_count", labels, count)
        yield from families.values()


def _histogram(per_bucket: np.ndarray) -> list[tuple[str, float]]:
    cumulative = np.cumsum(per_bucket)
    out = [(floatToGoString(edge), float(c)) for edge, c in zip(LATENCY_BUCKETS, cumulative[:-1], strict=True)]
    out.append(("+Inf", float(cumulative[-1])))
    return out
