"""The rewards one variant received, as sufficient statistics: enough for a mean, a variance, a
Beta posterior (binary rewards) and a Normal-Inverse-Gamma posterior (continuous ones).

Kept in the store as JSON (a variant's desired state, ``to_dict``/``from_dict``), so a restart
resumes from what was learned. Sums are floats; with rewards of order 1 and up to about 10^12 of
them the variance below stays accurate (it is clamped at 0 against rounding).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

BINARY, CONTINUOUS = "binary", "continuous"
REWARD_KINDS = (BINARY, CONTINUOUS)


@dataclass(frozen=True)
class ArmStats:
    """n rewards, their sum and their sum of squares (for binary rewards, total = successes)."""

    n: int = 0
    total: float = 0.0
    total_sq: float = 0.0

    @classmethod
    def of(cls, rewards: Iterable[float]) -> ArmStats:
        stats = cls()
        for reward in rewards:
            stats = stats.add(reward)
        return stats

    def add(self, reward: float, count: int = 1) -> ArmStats:
        return ArmStats(self.n + count, self.total + reward * count, self.total_sq + reward * reward * count)

    def merge(self, other: ArmStats) -> ArmStats:
        return ArmStats(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float:
        """The mean reward; NaN with no reward yet."""
        return self.total / self.n if self.n else math.nan

    @property
    def variance(self) -> float:
        """The unbiased sample variance; NaN below two rewards."""
        if self.n < 2:
            return math.nan
        return max(0.0, (self.total_sq - self.total * self.total / self.n) / (self.n - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "total": self.total, "total_sq": self.total_sq}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any] | None) -> ArmStats:
        if not doc:
            return cls()
        return cls(int(doc.get("n", 0)), float(doc.get("total", 0.0)), float(doc.get("total_sq", 0.0)))
