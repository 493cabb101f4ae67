"""The metrics subsystem of one server: recorder, sampler, store, Prometheus exposition, alarms.

One ticker task, aligned to the period's boundaries, closes the recorder's window, samples the
instances, writes both to the store (in a worker thread: the event loop only swaps a dict), folds
the window into the Prometheus totals, purges what is past retention, and then evaluates the
alarms, so an alarm always sees the period that has just been written. ``stop`` writes the last,
partial period (flush on shutdown).

Other parts of the server use it through ``ctx.metrics``: ``statistics(...)`` (the autoscaler,
CLI, API), ``put_metric(...)`` (business metrics), ``alarms`` (rollouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from moorage.config import Settings
from moorage.metrics.alarms import AlarmService
from moorage.metrics.prometheus import PrometheusExposition
from moorage.metrics.recorder import InvocationRecorder, statistic_sets
from moorage.metrics.sampler import UtilizationSampler, sampled_instances
from moorage.metrics.store import Datapoint, MetricSeries, MetricStore, StatisticSet
from moorage.metrics.vocabulary import CAPTURE_NAMESPACE, CAPTURE_OUTCOMES, COUNT, variant_dimensions
from moorage.serving.route_table import RouteTable
from moorage.store.metadata import MetadataStore

log = logging.getLogger("moorage.metrics")

PURGE_EVERY_S = 600.0
STOP_TIMEOUT_S = 30.0


class MetricsService:
    def __init__(self, settings: Settings, store: MetadataStore, routes: RouteTable):
        self.period = max(1, int(settings.metrics.period))
        self.retention = float(settings.metrics.retention)
        self.routes = routes
        self.store = MetricStore(store.engine)
        self.recording = settings.metrics.enabled
        self.recorder = InvocationRecorder() if self.recording else None
        self.sampler = UtilizationSampler(settings.home) if self.recording else None
        self.prometheus = PrometheusExposition(lambda: self.recorder.windows if self.recorder else {})
        self.prometheus.dropped_samples = lambda: self.recorder.dropped_total if self.recorder else 0
        self.alarms = AlarmService(store, self.store, settings.region, settings.account_id, data_period=self.period)
        if self.recorder is not None:
            routes.observers.append(self.recorder)
        self._capture_counts: Callable[[], Mapping[tuple[str, str], Mapping[str, int]]] | None = None
        self._capture_seen: dict[tuple[str, str], dict[str, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._last_purge = 0.0

    # -- queries and business metrics --------------------------------------------------------------
    def statistics(self, namespace: str, metric_name: str, dimensions: dict[str, str], statistic: str,
                   start: float, end: float, period: int) -> list[Datapoint]:
        return self.store.statistics(namespace, metric_name, dimensions, statistic, start, end, period)

    def list_metrics(self, namespace: str | None = None, metric_name: str | None = None,
                     dimensions: Mapping[str, str] | None = None, since: float | None = None) -> list[MetricSeries]:
        return self.store.list_metrics(namespace, metric_name, dimensions, since)

    def put_metric(self, namespace: str, metric_name: str, dimensions: Mapping[str, str],
                   values: float | Sequence[float] | np.ndarray, timestamp: float | None = None,
                   unit: str | None = None, counts: Sequence[float] | None = None) -> StatisticSet:
        """Store a business metric's samples (blocking: call from a worker thread on a server)."""
        stats = self.store.put(namespace, metric_name, dimensions, values, timestamp, unit, counts)
        self.prometheus.add_business(namespace, metric_name, dimensions, stats.total, stats.sample_count)
        return stats

    def put_statistic_sets(self, sets: Sequence[StatisticSet]) -> None:
        """Store business metrics already made statistic sets, in one transaction (CloudWatch's PutMetricData:
        all of a request or none of it). Blocking, like put_metric."""
        self.store.write(sets)
        for s in sets:
            self.prometheus.add_business(s.namespace, s.metric_name, s.dimensions, s.total, s.sample_count)

    def watch_capture(self, counts: Callable[[], Mapping[tuple[str, str], Mapping[str, int]]]) -> None:
        """Publish data capture's per-variant counters (captured, written, dropped, failed) each period."""
        self._capture_counts = counts
        self.prometheus.capture_counts = counts

    def _capture_sets(self, timestamp: float) -> list[StatisticSet]:
        """This period's capture counts: the difference of the writer's running totals since the last tick."""
        if self._capture_counts is None:
            return []
        sets = []
        for (endpoint, variant), counters in self._capture_counts().items():
            seen = self._capture_seen.get((endpoint, variant), {})
            dims = variant_dimensions(endpoint, variant)
            for outcome, metric in CAPTURE_OUTCOMES.items():
                delta = counters.get(outcome, 0) - seen.get(outcome, 0)
                sets.append(StatisticSet(CAPTURE_NAMESPACE, metric, dims, timestamp, COUNT, 1.0, float(delta),
                                         float(delta), float(delta)))
            self._capture_seen[(endpoint, variant)] = dict(counters)
        return sets

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(self._stopping))

    async def stop(self) -> None:
        """Stop the ticker (bounded), write the last partial period, let webhooks finish."""
        if self._task is not None and self._stopping is not None:
            self._stopping.set()
            try:
                await asyncio.wait_for(self._task, STOP_TIMEOUT_S)
            except (TimeoutError, asyncio.CancelledError):
                self._task.cancel()
            self._task = None
        try:
            await self.tick(final=True)
        except Exception:
            log.exception("writing the last metrics period failed")
        await self.alarms.close()

    async def _run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            now = time.time()
            # Wake just after the boundary, so each window is one aligned period.
            delay = self.period - (now % self.period) + min(0.05, self.period * 0.02)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), delay)
                return
            try:
                await self.tick()
            except Exception:
                log.exception("metrics tick failed")

    async def tick(self, final: bool = False) -> None:
        now = time.time()
        taken = self.recorder.take(now) if self.recorder is not None else None
        in_service: dict[tuple[str, str], int] = {}
        snapshots = self.routes.snapshots()
        for endpoint in snapshots:
            for variant in endpoint.variants.values():
                if variant.in_service:  # summed: both fleets of an endpoint mid-update serve it
                    key = (endpoint.name, variant.name)
                    in_service[key] = in_service.get(key, 0) + variant.in_service
        instances = sampled_instances(snapshots) if self.sampler is not None and not final else []
        capture_sets = self._capture_sets(math.floor((now - self.period) / self.period) * self.period)

        def work() -> None:
            sets: list[StatisticSet] = list(capture_sets)
            if taken is not None:
                timestamp = math.floor(taken.start / self.period) * self.period
                sets += statistic_sets(taken, timestamp, in_service, list(in_service))
                self.prometheus.fold(taken)
            if self.sampler is not None and not final:
                sample = self.sampler.sample(instances, math.floor((now - self.period) / self.period) * self.period)
                sets += sample.sets
                for metric, values in sample.gauges.items():
                    self.prometheus.set_gauges(metric, values)
            self.store.write(sets)
            if now - self._last_purge >= PURGE_EVERY_S:
                self._last_purge = now
                purged = self.store.purge(now - self.retention)
                if purged:
                    log.info("purged %d metric datapoint(s) older than %g s", purged, self.retention)

        await asyncio.to_thread(work)
        if not final:
            await self.alarms.evaluate_all(now)
