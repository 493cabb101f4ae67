"""Distributions read back from ``statistics.json``, so checks and tests need no raw data.

A numeric feature's KLL sketch (``distribution.kll.sketch.data``: items by level, level ``i``
weighing ``2**i``; SageMaker's Deequ sketch and ours share that layout) becomes a weighted sample
whose step CDF approximates the data's. A String feature's categorical buckets become counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NumericDistribution:
    values: np.ndarray  # sorted
    weights: np.ndarray
    count: float  # how many values the sketch stands for

    @classmethod
    def from_feature(cls, feature: dict[str, Any]) -> NumericDistribution | None:
        stats = feature.get("numerical_statistics") or {}
        kll = stats.get("distribution", {}).get("kll", {})
        levels = kll.get("sketch", {}).get("data") or []
        values, weights = [], []
        for level, items in enumerate(levels):
            values.extend(items)
            weights.extend([float(2**level)] * len(items))
        if values:
            order = np.argsort(np.asarray(values, dtype=np.float64), kind="stable")
            sorted_values = np.asarray(values, dtype=np.float64)[order]
            sorted_weights = np.asarray(weights, dtype=np.float64)[order]
            return cls(sorted_values, sorted_weights, float(sorted_weights.sum()))
        buckets = kll.get("buckets") or []
        if buckets:
            # no sketch: stand each bucket's count at its midpoint (coarser, but still a CDF)
            mids = np.array([(b["lower_bound"] + b["upper_bound"]) / 2 for b in buckets], dtype=np.float64)
            counts = np.array([b["count"] for b in buckets], dtype=np.float64)
            keep = counts > 0
            return cls(mids[keep], counts[keep], float(counts.sum())) if keep.any() else None
        return None

    def cdf(self, points: np.ndarray) -> np.ndarray:
        """Share of the values at or below each point."""
        cumulative = np.cumsum(self.weights)
        index = np.searchsorted(self.values, points, side="right")
        below = np.where(index > 0, cumulative[np.maximum(index - 1, 0)], 0.0)
        return below / cumulative[-1]

    def quantiles(self, ranks: np.ndarray) -> np.ndarray:
        cumulative = np.cumsum(self.weights) / self.weights.sum()
        index = np.searchsorted(cumulative, ranks, side="left")
        return self.values[np.minimum(index, len(self.values) - 1)]

    def histogram(self, edges: np.ndarray) -> np.ndarray:
        """Weights falling in each ``[edges[i], edges[i+1])`` (the last bin also holds values past the end)."""
        index = np.clip(np.searchsorted(edges, self.values, side="right") - 1, 0, len(edges) - 2)
        return np.bincount(index, weights=self.weights, minlength=len(edges) - 1)


@dataclass(frozen=True)
class CategoricalDistribution:
    counts: dict[str, float]

    @classmethod
    def from_feature(cls, feature: dict[str, Any]) -> CategoricalDistribution | None:
        stats = feature.get("string_statistics") or {}
        buckets = stats.get("distribution", {}).get("categorical", {}).get("buckets")
        if not buckets:
            return None
        counts: dict[str, float] = {}
        for bucket in buckets:
            key = str(bucket["value"])
            counts[key] = counts.get(key, 0.0) + float(bucket["count"])
        return cls(counts)

    @property
    def total(self) -> float:
        return float(sum(self.counts.values()))

    def aligned(self, other: CategoricalDistribution) -> tuple[list[str], np.ndarray, np.ndarray]:
        keys = list(dict.fromkeys([*self.counts, *other.counts]))
        mine = np.array([self.counts.get(k, 0.0) for k in keys])
        theirs = np.array([other.counts.get(k, 0.0) for k in keys])
        return keys, mine, theirs


# Deequ's c(alpha) for alpha = 0.003 (Knuth, TAOCP vol. 2, 3.3.1 eq. 15), used by linf_robust
ROBUST_C_ALPHA = 1.8


def linf_simple_numeric(baseline: NumericDistribution, current: NumericDistribution) -> float:
    """The largest gap between the two CDFs (the two-sample Kolmogorov-Smirnov statistic)."""
    points = np.union1d(baseline.values, current.values)
    return float(np.max(np.abs(baseline.cdf(points) - current.cdf(points))))


def linf_simple_categorical(baseline: CategoricalDistribution, current: CategoricalDistribution) -> float:
    """The largest gap between the two frequency tables (Deequ's categorical L-infinity)."""
    _, base, cur = baseline.aligned(current)
    return float(np.max(np.abs(base / base.sum() - cur / cur.sum())))


def robust(distance: float, n: float, m: float) -> float:
    """Deequ's linf_robust: the simple distance less what two samples of n and m values differ by
    by chance, ``max(0, d - c(alpha) * sqrt((n + m) / (n m)))``."""
    if n <= 0 or m <= 0:
        return distance
    return max(0.0, distance - ROBUST_C_ALPHA * math.sqrt((n + m) / (n * m)))
