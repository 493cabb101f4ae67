"""The metrics subsystem of one server: recorder, sampler, store, Prometheus exposition, alarms.

One ticker task, aligned to the period's boundaries, closes the recorder's window, samples the
instances, writes both to the store (in a worker thread: the event loop only swaps a dict), folds
the window into the Prometheus totals, purges what is past retention, and then evaluates the
alarms, so an alarm always sees the period that has just been written. ``stop`` writes the last,
partial period (flush on shutdown). With several routers every one writes its own datapoints, and
only the controller leader evaluates the alarms (``evaluate_alarms``): once per period, whatever the
number of routers, and a transition's webhook is sent once.

Each endpoint publishes at its own period: its config's ``MetricsConfig.MetricPublishFrequencyInSeconds``
(10 to 300 s, so a rollback alarm with a 10 s period sees every period), else the server's. The
ticker runs at the greatest common divisor of the periods in use, and each tick publishes the
endpoints whose period has ended since they last published; the others' windows stay open.

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
from moorage.metrics.recorder import InvocationRecorder, TakenWindow, statistic_sets
from moorage.metrics.sampler import UtilizationSampler, sampled_instances
from moorage.metrics.store import Datapoint, MetricSeries, MetricStore, StatisticSet
from moorage.metrics.vocabulary import (
    CAPTURE_NAMESPACE,
    CAPTURE_OUTCOMES,
    COUNT,
    INVOCATION_NAMESPACE,
    instance_dimensions,
    variant_dimensions,
)
from moorage.serving.model_cache import ModelMetricSample
from moorage.serving.route_table import RouteTable
from moorage.store.metadata import MetadataStore

log = logging.getLogger("moorage.metrics")

PURGE_EVERY_S = 600.0
STOP_TIMEOUT_S = 30.0
# MetricsConfig.MetricPublishFrequencyInSeconds: the values SageMaker accepts.
PUBLISH_FREQUENCIES = (10, 30, 60, 120, 180, 240, 300)


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
        self.prometheus.replacements = self.replacements
        # An alarm's period must be a multiple of the finest period an endpoint may publish at.
        self.alarms = AlarmService(store, self.store, settings.region, settings.account_id,
                                   data_period=math.gcd(self.period, min(PUBLISH_FREQUENCIES)))
        if self.recorder is not None:
            routes.observers.append(self.recorder)
        self._capture_counts: Callable[[], Mapping[tuple[str, str], Mapping[str, int]]] | None = None
        self._sources: list[Callable[[Mapping[str, float]], list[StatisticSet]]] = []
        self._capture_seen: dict[tuple[str, str], dict[str, int]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopped = False
        self._wake: asyncio.Event | None = None  # stop, or the set of periods changed
        self._last_purge = 0.0
        self._publish_periods: dict[str, int] = {}  # endpoint -> its own period, where not the server's
        self._published: dict[str, float] = {}  # endpoint -> the start of the period it is now recording
        self._last_tick = time.time()
        # Alarms are evaluated by one router (the controller leader, control/leadership.py) over the
        # datapoints every router wrote; the others only write theirs. Set by the app.
        self.evaluate_alarms = True

    # -- publishing periods ------------------------------------------------------------------------
    def publish_period(self, endpoint: str) -> int:
        """How often ``endpoint``'s metrics are published, in seconds."""
        return self._publish_periods.get(endpoint, self.period)

    def set_publish_period(self, endpoint: str, seconds: int | None) -> None:
        """``endpoint`` publishes every ``seconds`` from now on (None: at the server's period)."""
        if seconds is None or int(seconds) == self.period:
            changed = self._publish_periods.pop(endpoint, None) is not None
        else:
            changed = self._publish_periods.get(endpoint) != int(seconds)
            self._publish_periods[endpoint] = int(seconds)
        if changed and self._wake is not None:
            self._wake.set()

    @property
    def tick_period(self) -> int:
        return math.gcd(self.period, *self._publish_periods.values())

    def _due(self, endpoints: set[str], now: float, final: bool) -> dict[str, float]:
        """endpoint -> the timestamp of the period to publish now, for the endpoints whose period ended
        since their last publication (all of them, with their current period, on the final flush)."""
        due = {}
        for endpoint in endpoints:
            period = self.publish_period(endpoint)
            current = math.floor(now / period) * period
            if final:
                due[endpoint] = current
                continue
            # An endpoint first seen records from the period the previous tick was in.
            recording = self._published.setdefault(endpoint, math.floor(self._last_tick / period) * period)
            if current > recording:
                due[endpoint] = current - period
                self._published[endpoint] = current
        for gone in set(self._published) - endpoints:
            del self._published[gone]
        self._last_tick = now
        return due

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

    def replacements(self) -> dict[tuple[str, str], dict[str, int]]:
        """Instances replaced per live variant, by cause (the pools count them; ``restarts`` is every one)."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for endpoint in self.routes.snapshots():
            for variant in endpoint.variants.values():
                causes = out.setdefault((endpoint.name, variant.name), {"exited": 0, "timeout": 0, "memory": 0})
                recycled = sum(variant.recycled.values())
                causes["exited"] += max(0, variant.restarts - recycled)
                for cause, count in variant.recycled.items():
                    causes[cause] = causes.get(cause, 0) + count
        return out

    def watch_capture(self, counts: Callable[[], Mapping[tuple[str, str], Mapping[str, int]]]) -> None:
        """Publish data capture's per-variant counters (captured, written, dropped, failed) each period."""
        self._capture_counts = counts
        self.prometheus.capture_counts = counts

    def add_source(self, source: Callable[[Mapping[str, float]], list[StatisticSet]]) -> None:
        """Another part's per-endpoint metrics (asynchronous inference's backlog gauges), asked on the event
        loop each tick for the endpoints due (endpoint -> the period's timestamp) and written with the
        rest, before the alarms look."""
        if source not in self._sources:
            self._sources.append(source)

    def _capture_endpoints(self) -> set[str]:
        return {endpoint for endpoint, _ in self._capture_counts()} if self._capture_counts is not None else set()

    def _capture_sets(self, due: Mapping[str, float]) -> list[StatisticSet]:
        """The due endpoints' capture counts: the difference of the writer's running totals since their
        last publication."""
        if self._capture_counts is None:
            return []
        sets = []
        for (endpoint, variant), counters in self._capture_counts().items():
            timestamp = due.get(endpoint)
            if timestamp is None:
                continue
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
        self._stopped = False
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(self._wake))

    async def stop(self) -> None:
        """Stop the ticker (bounded), write the last partial period, let webhooks finish."""
        if self._task is not None and self._wake is not None:
            self._stopped = True
            self._wake.set()
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

    async def _run(self, wake: asyncio.Event) -> None:
        while not self._stopped:
            base = self.tick_period
            now = time.time()
            # Wake just after the boundary, so each window is one aligned period.
            delay = base - (now % base) + min(0.05, base * 0.02)
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
                continue  # stopping, or the periods changed: look again
            try:
                await self.tick()
            except Exception:
                log.exception("metrics tick failed")

    async def tick(self, final: bool = False, now: float | None = None) -> None:
        now = time.time() if now is None else now
        snapshots = self.routes.snapshots()
        endpoints = {e.name for e in snapshots} | self._capture_endpoints()
        if self.recorder is not None:
            endpoints |= {key[0] for key in self.recorder.windows}
        due = self._due(endpoints, now, final)
        taken = self.recorder.take(now, due) if self.recorder is not None else None
        in_service: dict[tuple[str, str], int] = {}
        for endpoint in snapshots:
            if endpoint.name not in due:
                continue
            for variant in endpoint.variants.values():
                if variant.in_service:  # summed: both fleets of an endpoint mid-update serve it
                    key = (endpoint.name, variant.name)
                    in_service[key] = in_service.get(key, 0) + variant.in_service
        instances = sampled_instances(snapshots) if self.sampler is not None and not final else []
        live = {i.instance_id for i in instances}
        capture_sets = self._capture_sets(due)
        for source in self._sources:
            try:
                capture_sets += source(due)
            except Exception:
                log.exception("metrics source %r failed", source)
        cache_samples = [(endpoint, variant, sample) for endpoint, variant, cache in self.routes.model_caches()
                         if endpoint in due for sample in cache.drain_metrics()]
        by_timestamp: dict[float, set[str]] = {}
        for endpoint, timestamp in due.items():
            by_timestamp.setdefault(timestamp, set()).add(endpoint)

        def work() -> None:
            sets: list[StatisticSet] = list(capture_sets) + model_cache_sets(cache_samples, due)
            for timestamp, names in by_timestamp.items():
                if taken is not None:
                    part = TakenWindow(taken.start, taken.end, {k: w for k, w in taken.series.items() if k[0] in names})
                    serving = {k: n for k, n in in_service.items() if k[0] in names}
                    sets += statistic_sets(part, timestamp, serving, list(serving))
                if self.sampler is not None and not final:
                    sample = self.sampler.sample([i for i in instances if i.endpoint in names], timestamp, live)
                    sets += sample.sets
                    for metric, values in sample.gauges.items():
                        self.prometheus.set_gauges(metric, values, live)
            if taken is not None:
                self.prometheus.fold(taken)
            self.store.write(sets)
            if now - self._last_purge >= PURGE_EVERY_S:
                self._last_purge = now
                purged = self.store.purge(now - self.retention)
                if purged:
                    log.info("purged %d metric datapoint(s) older than %g s", purged, self.retention)

        await asyncio.to_thread(work)
        if not final and self.evaluate_alarms:
            await self.alarms.evaluate_all(now)


def model_cache_sets(samples: Sequence[tuple[str, str, ModelMetricSample]],
                     due: Mapping[str, float]) -> list[StatisticSet]:
    """Multi-model endpoints' cache metrics (ModelLoadingTime, ModelCacheHit, LoadedModelCount, ...),
    per host (InstanceId) and per variant, stamped with their endpoint's period."""
    grouped: dict[tuple[str, str, str, str, str], list[float]] = {}
    for endpoint, variant, sample in samples:
        grouped.setdefault((endpoint, variant, sample.host_id, sample.name, sample.unit), []).append(sample.value)
    sets: list[StatisticSet] = []
    by_variant: dict[tuple[str, str, str, str], list[float]] = {}
    for (endpoint, variant, host, name, unit), values in grouped.items():
        sets.append(StatisticSet.of_samples(INVOCATION_NAMESPACE, name, instance_dimensions(endpoint, variant, host),
                                            due[endpoint], unit, np.asarray(values)))
        by_variant.setdefault((endpoint, variant, name, unit), []).extend(values)
    for (endpoint, variant, name, unit), values in by_variant.items():
        sets.append(StatisticSet.of_samples(INVOCATION_NAMESPACE, name, variant_dimensions(endpoint, variant),
                                            due[endpoint], unit, np.asarray(values)))
    return sets
