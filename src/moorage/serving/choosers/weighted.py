"""Weighted random choice: each variant gets its share of CurrentWeight (SageMaker's default routing)."""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from typing import Generic

from moorage.serving.choosers import NoVariantToChoose, V


class WeightedChooser(Generic[V]):
    __slots__ = ("_ordered", "_thresholds")

    def __init__(self) -> None:
        self._thresholds: list[float] = []
        self._ordered: list[V] = []

    def update(self, variants: Sequence[V]) -> None:
        """A cumulative weight table over the variants with weight above 0, normalised to [0, 1]."""
        total = 0.0
        thresholds, ordered = [], []
        for variant in variants:
            if variant.current_weight > 0:
                total += variant.current_weight
                thresholds.append(total)
                ordered.append(variant)
        self._thresholds = [t / total for t in thresholds] if total else []
        self._ordered = ordered

    def choose(self, forwarded_headers: bytes) -> V:
        ordered = self._ordered
        if len(ordered) == 1:
            return ordered[0]
        if not ordered:
            raise NoVariantToChoose
        index = bisect.bisect_right(self._thresholds, random.random())
        return ordered[min(index, len(ordered) - 1)]

    def pick(self, point: float) -> V:
        """The variant whose share of [0, 1) holds ``point`` (sticky assignment picks by a hash)."""
        ordered = self._ordered
        if not ordered:
            raise NoVariantToChoose
        index = bisect.bisect_right(self._thresholds, point)
        return ordered[min(index, len(ordered) - 1)]
