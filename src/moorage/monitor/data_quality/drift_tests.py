"""Verify, beyond SageMaker: statistical drift tests chosen per feature, and a dataset-level verdict.

Every test runs on what ``statistics.json`` keeps (a numeric feature's KLL sketch, a String
feature's categorical buckets), so a baseline needs no raw data:

==================  ===========  ==================================================================
test                features     drifted when
==================  ===========  ==================================================================
``ks``              numeric      p < alpha **and** the KS distance D >= ``min_effect`` (0.1)
``chi2``            both         p < alpha **and** Cramer's V >= ``min_effect`` (0.1, "small")
``psi``             both         population stability index >= 0.2 (0.1-0.2 is "moderate")
``wasserstein``     numeric      W1 / the baseline's std dev >= 0.1
``jensen_shannon``  both         Jensen-Shannon distance (base 2) >= 0.1
==================  ===========  ==================================================================

A p-value alone flags everything once samples are large (any difference is "significant" with a
million rows), so the tests with p-values also require an effect size. Numeric features are
binned at the baseline's deciles for ``chi2``, ``psi`` and ``jensen_shannon``. Defaults follow
Evidently's for large data: ``wasserstein`` for numeric and ``jensen_shannon`` for String
features; a numeric-only test asked of a String feature falls back to ``jensen_shannon``. A
String feature whose buckets hold under 90% of its values (ids, free text) is not tested. The
dataset drifts when the share of drifted features reaches ``drift_share`` (0.5).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from moorage.monitor.common.distributions import CategoricalDistribution, NumericDistribution, linf_simple_numeric
from moorage.monitor.data_quality.profile import statistics_of

TESTS = ("ks", "chi2", "psi", "wasserstein", "jensen_shannon")
NUMERIC_ONLY = ("ks", "wasserstein")
DEFAULT_THRESHOLDS = {"ks": 0.1, "chi2": 0.1, "psi": 0.2, "wasserstein": 0.1, "jensen_shannon": 0.1}
_PSI_EPSILON = 1e-4
# a String feature is tested only when its categorical buckets hold this share of its values
MIN_BUCKET_COVERAGE = 0.9


@dataclass
class DriftTestConfig:
    """Which test each feature gets, and when a result counts as drift."""

    tests: dict[str, str] = field(default_factory=dict)  # feature name -> test
    numeric_test: str = "wasserstein"
    categorical_test: str = "jensen_shannon"
    thresholds: dict[str, float] = field(default_factory=dict)  # test -> effect-size threshold
    alpha: float = 0.05
    drift_share: float = 0.5

    def __post_init__(self) -> None:
        for test in (*self.tests.values(), self.numeric_test, self.categorical_test, *self.thresholds):
            if test not in TESTS:
                raise ValueError(f"unknown drift test {test!r}: choose from {', '.join(TESTS)}")

    def threshold(self, test: str) -> float:
        return self.thresholds.get(test, DEFAULT_THRESHOLDS[test])


@dataclass
class DriftTestResult:
    feature: str
    test: str
    statistic: float
    threshold: float
    drifted: bool
    p_value: float | None = None


@dataclass
class DriftVerdict:
    results: list[DriftTestResult]
    drift_share: float
    threshold_share: float

    @property
    def dataset_drift(self) -> bool:
        return bool(self.results) and self.drift_share >= self.threshold_share

    @property
    def drifted_features(self) -> list[str]:
        return [result.feature for result in self.results if result.drifted]

    def to_dict(self) -> dict[str, Any]:
        return {"dataset_drift": self.dataset_drift, "drift_share": self.drift_share,
                "threshold_share": self.threshold_share, "features": [asdict(r) for r in self.results]}


def run_drift_tests(current: Any, baseline_statistics: Any, config: DriftTestConfig | None = None) -> DriftVerdict:
    """Test every feature present in both, with the test ``config`` picks for it."""
    config = config or DriftTestConfig()
    current_features = {f["name"]: f for f in statistics_of(current).get("features", [])}
    results = []
    for baseline in statistics_of(baseline_statistics).get("features", []):
        observed = current_features.get(baseline["name"])
        if observed is not None:
            result = test_feature(baseline, observed, config)
            if result is not None:
                results.append(result)
    share = sum(r.drifted for r in results) / len(results) if results else 0.0
    return DriftVerdict(results, share, config.drift_share)


def test_feature(baseline: dict[str, Any], current: dict[str, Any], config: DriftTestConfig) -> DriftTestResult | None:
    name = baseline["name"]
    numeric = baseline.get("inferred_type") in ("Integral", "Fractional")
    test = config.tests.get(name) or (config.numeric_test if numeric else config.categorical_test)
    if not numeric and test in NUMERIC_ONLY:
        test = "jensen_shannon"
    threshold = config.threshold(test)
    if numeric:
        if current.get("inferred_type") not in ("Integral", "Fractional"):
            return None
        base, cur = NumericDistribution.from_feature(baseline), NumericDistribution.from_feature(current)
        if base is None or cur is None:
            return None
        std = float((baseline.get("numerical_statistics") or {}).get("std_dev") or 0.0)
        statistic, p_value = _numeric_test(test, base, cur, std)
    else:
        base_c, cur_c = CategoricalDistribution.from_feature(baseline), CategoricalDistribution.from_feature(current)
        if base_c is None or cur_c is None or not (_covered(base_c, baseline) and _covered(cur_c, current)):
            return None
        _, base_counts, cur_counts = base_c.aligned(cur_c)
        statistic, p_value = _binned_test(test, base_counts, cur_counts)
    drifted = statistic >= threshold and (p_value is None or p_value < config.alpha)
    return DriftTestResult(name, test, statistic, threshold, bool(drifted), p_value)


def _numeric_test(test: str, base: NumericDistribution, cur: NumericDistribution,
                  std: float) -> tuple[float, float | None]:
    if test == "ks":
        from scipy import stats

        distance = linf_simple_numeric(base, cur)
        effective = base.count * cur.count / (base.count + cur.count)
        return distance, float(stats.kstwobign.sf(distance * math.sqrt(effective)))
    if test == "wasserstein":
        ranks = (np.arange(1000) + 0.5) / 1000
        distance = float(np.mean(np.abs(base.quantiles(ranks) - cur.quantiles(ranks))))
        scale = std if std > 0 else (float(np.ptp(base.values)) or 1.0)
        return distance / scale, None
    edges = np.unique(base.quantiles(np.linspace(0.1, 0.9, 9)))
    edges = np.concatenate([[-np.inf], edges, [np.inf]])
    return _binned_test(test, base.histogram(edges), cur.histogram(edges))


def _binned_test(test: str, base: np.ndarray, cur: np.ndarray) -> tuple[float, float | None]:
    if test == "chi2":
        from scipy import stats

        keep = (base + cur) > 0
        table = np.vstack([base[keep], cur[keep]])
        if table.shape[1] < 2:
            return 0.0, 1.0
        chi2, p_value, _, _ = stats.chi2_contingency(table, correction=False)
        cramers_v = math.sqrt(chi2 / table.sum())  # two rows: min(r, c) - 1 = 1
        return cramers_v, float(p_value)
    p = _shares(base)
    q = _shares(cur)
    if test == "psi":
        p, q = np.maximum(p, _PSI_EPSILON), np.maximum(q, _PSI_EPSILON)
        return float(np.sum((q - p) * np.log(q / p))), None
    if test == "jensen_shannon":
        from scipy.spatial import distance

        return float(distance.jensenshannon(p, q, base=2)), None
    raise ValueError(f"{test} does not apply to binned data")


def _covered(distribution: CategoricalDistribution, feature: dict[str, Any]) -> bool:
    """Whether the buckets describe the feature: not so for ids and free text, where only the few
    values seen more than once are kept and any two samples differ."""
    present = float(((feature.get("string_statistics") or {}).get("common") or {}).get("num_present", 0))
    return present > 0 and distribution.total >= MIN_BUCKET_COVERAGE * present


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts
