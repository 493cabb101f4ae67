"""Profile (Deequ's first step): one pass over record batches -> per-feature metrics -> ``statistics.json``.

Every metric is a mergeable summary, so a profile of a dataset is the merge of its batches'
profiles and a baseline needs no raw data later:

- counts per Deequ type (:mod:`moorage.monitor.common.type_inference`), which decide ``inferred_type``;
- for numbers: count, sum, mean and the centred sum of squares (merged with Chan et al.'s
  formula, so ``std_dev`` stays exact and stable), min, max, and an Apache DataSketches KLL
  sketch, fed a whole numpy array per batch. ``statistics.json`` carries the sketch itself (items
  grouped by level, level ``i`` weighing ``2**i``, as Deequ's ``QuantileNonSample`` writes its
  compactors) and 10 equal-width buckets read from it;
- for text: exact value counts while a column has at most ``EXACT_DISTINCT`` values; past that a
  DataSketches frequent-items sketch keeps the heavy hitters and an HLL sketch the distinct count.

Standard deviation is the population one (what SageMaker's files show).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import datasketches
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from moorage.monitor.common.datasets import as_record_batches
from moorage.monitor.common.type_inference import InferredType, TypeCounts, classify

KLL_K = 400
# DataSketches KLL shrinks each lower level's capacity by 2/3 (Deequ's sketch writes its own c, 0.64)
KLL_C = 2.0 / 3.0
BUCKETS = 10
EXACT_DISTINCT = 10_000
MAX_CATEGORICAL_BUCKETS = 1_000
HLL_LG_K = 12
FREQUENT_LG_MAX_MAP = 12


@dataclass
class NumericSummary:
    count: int = 0
    total: float = 0.0
    mean: float = 0.0
    m2: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    sketch: Any = field(default_factory=lambda: datasketches.kll_doubles_sketch(KLL_K))

    def update(self, values: np.ndarray) -> None:
        n = len(values)
        if n == 0:
            return
        batch_sum = float(values.sum())
        batch_mean = batch_sum / n
        batch_m2 = float(np.square(values - batch_mean).sum())
        self._combine(n, batch_sum, batch_mean, batch_m2, float(values.min()), float(values.max()))
        if not values.flags.writeable or values.dtype != np.float64 or not values.flags.c_contiguous:
            values = np.array(values, dtype=np.float64)  # the sketch binding takes only writable float64 arrays
        self.sketch.update(values)

    def merge(self, other: NumericSummary) -> None:
        if other.count == 0:
            return
        self._combine(other.count, other.total, other.mean, other.m2, other.minimum, other.maximum)
        self.sketch.merge(other.sketch)

    def _combine(self, n: int, total: float, mean: float, m2: float, minimum: float, maximum: float) -> None:
        combined = self.count + n
        delta = mean - self.mean
        self.m2 += m2 + delta * delta * self.count * n / combined
        self.mean += delta * n / combined
        self.count = combined
        self.total += total
        self.minimum = min(self.minimum, minimum)
        self.maximum = max(self.maximum, maximum)

    @property
    def std_dev(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def buckets(self) -> list[dict[str, float]]:
        """10 equal-width buckets from min to max, counted from the sketch; the last one holds max."""
        if self.count == 0:
            return []
        low, high = self.minimum, self.maximum
        if low == high:
            return [{"lower_bound": low, "upper_bound": high, "count": float(self.count)}]
        edges = [low + (high - low) * i / BUCKETS for i in range(BUCKETS + 1)]
        masses = self.sketch.get_pmf(edges[1:-1])
        return [{"lower_bound": edges[i], "upper_bound": edges[i + 1], "count": float(round(masses[i] * self.count))}
                for i in range(BUCKETS)]

    def sketch_levels(self) -> list[list[float]]:
        """The retained items by level (level ``i`` items each stand for ``2**i`` values)."""
        levels: dict[int, list[float]] = {}
        for item, weight in self.sketch:
            levels.setdefault(int(weight).bit_length() - 1, []).append(float(item))
        return [levels.get(level, []) for level in range(max(levels, default=-1) + 1)]


@dataclass
class TextSummary:
    """Value counts of a text feature: exact while small, sketched past ``EXACT_DISTINCT`` values."""

    counts: dict[str, int] | None = field(default_factory=dict)
    frequent: Any = None
    distinct: Any = None

    def update(self, text: pa.Array) -> None:
        if len(text) == 0:
            return
        value_counts = pc.value_counts(text)
        values = value_counts.field("values").to_pylist()
        weights = value_counts.field("counts").to_numpy(zero_copy_only=False)
        if self.counts is not None:
            for value, weight in zip(values, weights.tolist(), strict=True):
                self.counts[value] = self.counts.get(value, 0) + weight
            if len(self.counts) > EXACT_DISTINCT:
                self._to_sketches()
            return
        for value in values:
            self.distinct.update(value)
        # Values seen once in a batch are left out of the heavy-hitter sketch: that undercounts a
        # value by at most one per batch, far below the sketch's own error, and spares one call
        # per row on columns of unique ids.
        repeated = np.flatnonzero(weights > 1)
        for index in repeated.tolist():
            self.frequent.update(values[index], int(weights[index]))

    def _to_sketches(self) -> None:
        self.frequent = datasketches.frequent_strings_sketch(FREQUENT_LG_MAX_MAP)
        self.distinct = datasketches.hll_sketch(HLL_LG_K)
        for value, weight in (self.counts or {}).items():
            self.frequent.update(value, weight)
            self.distinct.update(value)
        self.counts = None

    def merge(self, other: TextSummary) -> None:
        if other.counts is not None:
            if self.counts is not None:
                for value, weight in other.counts.items():
                    self.counts[value] = self.counts.get(value, 0) + weight
                if len(self.counts) > EXACT_DISTINCT:
                    self._to_sketches()
                return
            for value, weight in other.counts.items():
                self.frequent.update(value, weight)
                self.distinct.update(value)
            return
        if self.counts is not None:
            self._to_sketches()
        self.frequent.merge(other.frequent)
        union = datasketches.hll_union(HLL_LG_K)
        union.update(self.distinct)
        union.update(other.distinct)
        self.distinct = union.get_result()

    @property
    def exact(self) -> bool:
        return self.counts is not None

    def distinct_count(self) -> float:
        if self.counts is not None:
            return float(len(self.counts))
        return float(round(self.distinct.get_estimate()))

    def top(self, limit: int = MAX_CATEGORICAL_BUCKETS) -> list[tuple[str, int]]:
        if self.counts is not None:
            pairs = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        else:
            no_false_negatives = datasketches.frequent_items_error_type.NO_FALSE_NEGATIVES
            pairs = [(row[0], int(row[1])) for row in self.frequent.get_frequent_items(no_false_negatives)]
        return pairs[:limit]


@dataclass
class FeatureProfile:
    name: str
    types: TypeCounts = field(default_factory=TypeCounts)
    numbers: NumericSummary = field(default_factory=NumericSummary)
    text: TextSummary | None = None
    # True when text arrived after batches of plain numbers whose values the text summary lacks
    text_partial: bool = False

    def update(self, column: pa.Array | pa.ChunkedArray) -> None:
        classified = classify(column)
        seen_before = self.types.present
        self.types.add(classified.counts)
        if classified.text is not None:
            if self.text is None:
                self.text = TextSummary()
                self.text_partial = seen_before > 0
            self.text.update(classified.text)
        elif self.text is not None and classified.counts.present:
            # plain numbers in a column already holding text: count them as text too
            self.text.update(as_text(column))
        if self.text is None:
            self.numbers.update(classified.numbers)

    def merge(self, other: FeatureProfile) -> None:
        self.types.add(other.types)
        self.numbers.merge(other.numbers)
        if other.text is not None:
            if self.text is None:
                self.text = TextSummary()
                self.text_partial = self.text_partial or self.types.present > other.types.present
            self.text.merge(other.text)
        self.text_partial = self.text_partial or other.text_partial

    @property
    def inferred_type(self) -> InferredType:
        return self.types.inferred_type()

    def to_dict(self) -> dict[str, Any]:
        kind = self.inferred_type
        common = {"num_present": self.types.present, "num_missing": self.types.null}
        feature: dict[str, Any] = {"name": self.name, "inferred_type": kind.value}
        if kind in (InferredType.INTEGRAL, InferredType.FRACTIONAL):
            numbers = self.numbers
            feature["numerical_statistics"] = {
                "common": common,
                "mean": numbers.mean,
                "sum": numbers.total,
                "std_dev": numbers.std_dev,
                "min": numbers.minimum,
                "max": numbers.maximum,
                "distribution": {"kll": {
                    "buckets": numbers.buckets(),
                    "sketch": {"parameters": {"c": KLL_C, "k": float(KLL_K)}, "data": numbers.sketch_levels()},
                }},
            }
        else:
            text = self.text or TextSummary()
            feature["string_statistics"] = {
                "common": common,
                "distinct_count": text.distinct_count(),
                "distribution": {"categorical": {
                    "buckets": [{"value": value, "count": count} for value, count in text.top()],
                }},
            }
        return feature


def as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The present values of a column as text."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_floating(column.type):
        column = pc.if_else(pc.is_nan(column), None, column)
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    return column.drop_null()


@dataclass
class DatasetProfile:
    """The profile of a dataset: per-feature mergeable metrics, in the dataset's column order."""

    features: dict[str, FeatureProfile] = field(default_factory=dict)
    item_count: int = 0

    def update(self, batch: pa.RecordBatch) -> None:
        self.item_count += batch.num_rows
        for index, name in enumerate(batch.schema.names):
            feature = self.features.get(name)
            if feature is None:
                feature = self.features[name] = FeatureProfile(name)
                # a column first seen in a later batch was missing in the earlier rows
                feature.types.null += self.item_count - batch.num_rows
            feature.update(batch.column(index))
        if len(self.features) > batch.num_columns:
            for name, feature in self.features.items():
                if name not in batch.schema.names:
                    feature.types.null += batch.num_rows

    def merge(self, other: DatasetProfile) -> DatasetProfile:
        for name, feature in other.features.items():
            mine = self.features.get(name)
            if mine is None:
                mine = self.features[name] = FeatureProfile(name)
                mine.types.null += self.item_count
            mine.merge(feature)
        for name, feature in self.features.items():
            if name not in other.features:
                feature.types.null += other.item_count
        self.item_count += other.item_count
        return self

    def type_counts(self) -> dict[str, TypeCounts]:
        return {name: feature.types for name, feature in self.features.items()}

    def to_statistics(self) -> dict[str, Any]:
        """The profile as SageMaker's ``statistics.json`` body."""
        return {
            "version": 0.0,
            "dataset": {"item_count": self.item_count},
            "features": [feature.to_dict() for feature in self.features.values()],
        }


def profile_batches(batches: Iterable[Any]) -> DatasetProfile:
    """Profile an iterable of pandas DataFrames, Arrow tables or record batches (one pass).

    This is the entry point for monitoring executions: feed it the batches of a window of
    captured records and get the profile whose ``to_statistics()`` is the execution's
    ``statistics.json`` and which :func:`moorage.monitor.data_quality.verify.evaluate` checks.
    """
    profile = DatasetProfile()
    for batch in _record_batches(batches):
        profile.update(batch)
    return profile


def profile_dataset(dataset: Iterable[Any]) -> DatasetProfile:
    """Profile a re-iterable dataset (a :class:`~moorage.monitor.common.datasets.Dataset`).

    Like :func:`profile_batches`, and where a column turned to text only after batches of plain
    numbers, a second pass over just those columns fills in the text counts of the first batches.
    """
    profile = profile_batches(dataset)
    partial = [name for name, feature in profile.features.items() if feature.text_partial]
    if partial:
        texts = {name: TextSummary() for name in partial}
        for batch in _record_batches(dataset):
            for name in partial:
                if name in batch.schema.names:
                    texts[name].update(as_text(batch.column(name)))
        for name in partial:
            profile.features[name].text = texts[name]
            profile.features[name].text_partial = False
    return profile


def _record_batches(batches: Iterable[Any]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield from as_record_batches(batch)


def statistics_of(source: Any) -> dict[str, Any]:
    """A statistics body from a profile or an already loaded statistics dict."""
    if isinstance(source, DatasetProfile):
        return source.to_statistics()
    if hasattr(source, "body_dict"):
        return source.body_dict
    return source
