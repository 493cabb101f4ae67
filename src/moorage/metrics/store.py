"""Metric time series in the metadata database: one row per series per period, queryable as CloudWatch is.

A row is a *statistic set* for one series (namespace, metric name, exact dimension set) over one
period: sample count, sum, minimum, maximum, and a serialised KLL sketch of the samples. Sums,
counts and extremes merge by addition and min/max, and KLL sketches merge too, so any statistic
(``Average``, ``Sum``, ``Minimum``, ``Maximum``, ``SampleCount``, any ``pNN.N``) over any range of
rows and any coarser period is computed from the rows alone, with the sketch's rank error
(about 1.3% at k=200) for percentiles. Rows without a sketch (counts such as ``Invocations``)
answer percentiles only when all their samples are equal.

The tables live in the same database as the metadata store (SQLite by default, PostgreSQL by URL)
under their own SQLAlchemy ``MetaData``, created on first use.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from datasketches import kll_floats_sketch
from sqlalchemy import (
    JSON,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    and_,
    delete,
    insert,
    select,
)
from sqlalchemy.engine import Engine

from moorage.metrics.vocabulary import check_unit, dimension_key, dimensions_of, percentile_of

# Accuracy/size of every sketch: k=200 gives ~1.3% normalised rank error in ~2.4 KB at most.
SKETCH_K = 200

metrics_metadata = MetaData()

datapoints = Table(
    "metric_datapoints",
    metrics_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("namespace", String(256), nullable=False),
    Column("metric_name", String(256), nullable=False),
    Column("dimensions", String(2048), nullable=False),  # names.dimension_key(): canonical, matched exactly
    Column("timestamp", Float, nullable=False),  # period start, epoch seconds
    Column("unit", String(32), nullable=False),
    Column("sample_count", Float, nullable=False),
    Column("value_sum", Float, nullable=False),
    Column("value_min", Float, nullable=True),
    Column("value_max", Float, nullable=True),
    Column("sketch", LargeBinary, nullable=True),  # serialised KLL floats sketch of the samples
    Index("ix_metric_series_time", "namespace", "metric_name", "dimensions", "timestamp"),
    Index("ix_metric_time", "timestamp"),
)

# What happened to each alarm (configuration changes, state changes, actions), as CloudWatch's
# DescribeAlarmHistory reports it; alarms themselves are rows of kind "alarm" in ``resources``.
alarm_history = Table(
    "alarm_history",
    metrics_metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("alarm_name", String(256), nullable=False),
    Column("timestamp", Float, nullable=False),
    Column("item_type", String(32), nullable=False),  # ConfigurationUpdate | StateUpdate | Action
    Column("summary", String(1024), nullable=False),
    Column("data", JSON, nullable=False),
    Index("ix_alarm_history_name_time", "alarm_name", "timestamp"),
)


@dataclass(frozen=True)
class Datapoint:
    timestamp: float
    value: float
    sample_count: float
    unit: str


@dataclass(frozen=True)
class MetricSeries:
    namespace: str
    metric_name: str
    dimensions: dict[str, str]


@dataclass
class StatisticSet:
    """One period of one series, ready to be written."""

    namespace: str
    metric_name: str
    dimensions: Mapping[str, str]
    timestamp: float
    unit: str
    sample_count: float
    total: float
    minimum: float | None
    maximum: float | None
    sketch: bytes | None = None

    @classmethod
    def of_samples(cls, namespace: str, metric_name: str, dimensions: Mapping[str, str], timestamp: float,
                   unit: str, samples: np.ndarray) -> StatisticSet:
        """The statistic set (with a sketch) of a non-empty float array."""
        sketch = kll_floats_sketch(SKETCH_K)
        sketch.update(samples.astype(np.float32, copy=False))
        return cls(namespace, metric_name, dimensions, timestamp, unit, float(samples.size), float(samples.sum()),
                   float(samples.min()), float(samples.max()), sketch.serialize())

    @classmethod
    def of_counts(cls, namespace: str, metric_name: str, dimensions: Mapping[str, str], timestamp: float,
                  hits: float, samples: float, unit: str = "None") -> StatisticSet:
        """``samples`` events of which ``hits`` were 1 and the rest 0 (SageMaker's error metrics)."""
        if samples <= 0:
            return cls(namespace, metric_name, dimensions, timestamp, unit, 0.0, 0.0, None, None)
        return cls(namespace, metric_name, dimensions, timestamp, unit, samples, hits,
                   1.0 if hits >= samples else 0.0, 1.0 if hits > 0 else 0.0)

    def row(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "metric_name": self.metric_name,
                "dimensions": dimension_key(self.dimensions), "timestamp": self.timestamp, "unit": self.unit,
                "sample_count": self.sample_count, "value_sum": self.total, "value_min": self.minimum,
                "value_max": self.maximum, "sketch": self.sketch}


class _Bucket:
    __slots__ = ("count", "maximum", "minimum", "sketch", "sketch_rows", "total", "unit")

    def __init__(self, unit: str) -> None:
        self.count = 0.0
        self.total = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf
        self.sketch: kll_floats_sketch | None = None
        self.sketch_rows = 0
        self.unit = unit

    def add(self, count: float, total: float, minimum: float | None, maximum: float | None,
            sketch: bytes | None, want_sketch: bool) -> None:
        self.count += count
        self.total += total
        if minimum is not None:
            self.minimum = min(self.minimum, minimum)
        if maximum is not None:
            self.maximum = max(self.maximum, maximum)
        if want_sketch and sketch is not None:
            other = kll_floats_sketch.deserialize(sketch)
            if self.sketch is None:
                self.sketch = other
            else:
                self.sketch.merge(other)
            self.sketch_rows += 1

    def value(self, statistic: str, quantile: float | None) -> float | None:
        if statistic == "Sum":
            return self.total
        if statistic == "SampleCount":
            return self.count
        if self.count <= 0:
            return None  # an empty period has a sum (0) but no average, extremes or percentiles
        if statistic == "Average":
            return self.total / self.count
        if statistic == "Minimum":
            return self.minimum
        if statistic == "Maximum":
            return self.maximum
        assert quantile is not None
        if quantile <= 0.0:
            return self.minimum
        if quantile >= 1.0:
            return self.maximum
        if self.sketch is not None and not self.sketch.is_empty():
            return float(self.sketch.get_quantile(quantile))
        if self.minimum == self.maximum:
            return self.minimum  # every sample equal (a count metric): every percentile is that value
        return None


class MetricStore:
    def __init__(self, engine: Engine):
        self.engine = engine
        metrics_metadata.create_all(engine)

    @classmethod
    def from_url(cls, url: str) -> MetricStore:
        from moorage.store.metadata import make_engine

        return cls(make_engine(url))

    # -- writing -----------------------------------------------------------------------------------
    def write(self, sets: Iterable[StatisticSet]) -> int:
        rows = [s.row() for s in sets]
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(datapoints), rows)
        return len(rows)

    def put(self, namespace: str, metric_name: str, dimensions: Mapping[str, str],
            values: float | Sequence[float] | np.ndarray, timestamp: float | None = None, unit: str | None = None,
            counts: Sequence[float] | None = None) -> StatisticSet:
        """Store samples of a (business) metric at ``timestamp`` (default now) as one statistic set.

        ``counts`` (CloudWatch's ``Counts``) repeats each value that many times.
        """
        stats = self.statistic_set(namespace, metric_name, dimensions, values, timestamp, unit, counts)
        self.write([stats])
        return stats

    @staticmethod
    def statistic_set(namespace: str, metric_name: str, dimensions: Mapping[str, str],
                      values: float | Sequence[float] | np.ndarray, timestamp: float | None = None,
                      unit: str | None = None, counts: Sequence[float] | None = None) -> StatisticSet:
        """The statistic set ``put`` would store (ValueError for what it would refuse), written by nobody:
        a request of several data checks every one before any is stored."""
        if not namespace or not metric_name:
            raise ValueError("a metric needs a namespace and a name")
        array = np.atleast_1d(np.asarray(values, dtype=np.float64))
        if array.ndim != 1 or array.size == 0:
            raise ValueError("values must be a number or a non-empty list of numbers")
        if counts is not None:
            weights = np.asarray(counts, dtype=np.float64)
            if weights.shape != array.shape or (weights < 0).any() or (weights != np.floor(weights)).any():
                raise ValueError("counts must be whole numbers >= 0, one per value")
            if weights.sum() > 1_000_000:
                raise ValueError("counts may add up to at most 1,000,000 samples per put")
            array = np.repeat(array, weights.astype(np.int64))
            if array.size == 0:
                raise ValueError("counts are all zero: nothing to put")
        if not np.isfinite(array).all():
            raise ValueError("values must be finite numbers")
        return StatisticSet.of_samples(namespace, metric_name, dict(dimensions),
                                       time.time() if timestamp is None else float(timestamp), check_unit(unit),
                                       array)

    def purge(self, before: float) -> int:
        """Drop datapoints and alarm history older than ``before`` (retention)."""
        with self.engine.begin() as conn:
            conn.execute(delete(alarm_history).where(alarm_history.c.timestamp < before))
            return conn.execute(delete(datapoints).where(datapoints.c.timestamp < before)).rowcount or 0

    # -- reading -----------------------------------------------------------------------------------
    def statistics(self, namespace: str, metric_name: str, dimensions: dict[str, str], statistic: str,
                   start: float, end: float, period: int) -> list[Datapoint]:
        """CloudWatch's GetMetricStatistics: ``statistic`` per ``period``-second bucket of [start, end).

        Buckets start at ``start`` (pass a multiple of ``period`` for buckets aligned across
        calls); buckets without data are absent; ascending by timestamp.
        """
        quantile = percentile_of(statistic)
        if period <= 0:
            raise ValueError("period must be a positive number of seconds")
        if end <= start:
            return []
        columns = [datapoints.c.timestamp, datapoints.c.unit, datapoints.c.sample_count, datapoints.c.value_sum,
                   datapoints.c.value_min, datapoints.c.value_max]
        if quantile is not None:
            columns.append(datapoints.c.sketch)
        stmt = select(*columns).where(and_(
            datapoints.c.namespace == namespace, datapoints.c.metric_name == metric_name,
            datapoints.c.dimensions == dimension_key(dimensions),
            datapoints.c.timestamp >= start, datapoints.c.timestamp < end))
        buckets: dict[float, _Bucket] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(stmt):
                slot = start + math.floor((row.timestamp - start) / period) * period
                bucket = buckets.get(slot)
                if bucket is None:
                    bucket = buckets[slot] = _Bucket(row.unit)
                bucket.add(row.sample_count, row.value_sum, row.value_min, row.value_max,
                           row.sketch if quantile is not None else None, quantile is not None)
        out = []
        for slot in sorted(buckets):
            bucket = buckets[slot]
            value = bucket.value(statistic, quantile)
            if value is not None:
                out.append(Datapoint(slot, value, bucket.count, bucket.unit))
        return out

    def list_metrics(self, namespace: str | None = None, metric_name: str | None = None,
                     dimensions: Mapping[str, str] | None = None, since: float | None = None) -> list[MetricSeries]:
        """Series that have data (since ``since``), as CloudWatch's ListMetrics: ``dimensions``
        filters to series that have (at least) those dimensions with those values."""
        stmt = select(datapoints.c.namespace, datapoints.c.metric_name, datapoints.c.dimensions).distinct()
        if namespace:
            stmt = stmt.where(datapoints.c.namespace == namespace)
        if metric_name:
            stmt = stmt.where(datapoints.c.metric_name == metric_name)
        if since is not None:
            stmt = stmt.where(datapoints.c.timestamp >= since)
        wanted = dict(dimensions or {})
        out = []
        with self.engine.connect() as conn:
            for row in conn.execute(stmt.order_by(datapoints.c.namespace, datapoints.c.metric_name,
                                                  datapoints.c.dimensions)):
                dims = dimensions_of(row.dimensions)
                if all(dims.get(k) == v for k, v in wanted.items()):
                    out.append(MetricSeries(row.namespace, row.metric_name, dims))
        return out
