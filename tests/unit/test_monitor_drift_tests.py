"""Per-feature drift tests with effect sizes, and the dataset verdict."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from moorage.monitor import DriftTestConfig, profile_batches, run_drift_tests
from moorage.monitor.data_quality.drift_tests import TESTS


def _frame(rows: int, seed: int, shift: float = 0.0, mix: tuple[float, float, float] = (0.5, 0.3, 0.2)) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"x": rng.normal(shift, 1.0, rows), "y": rng.exponential(2.0, rows),
                         "c": rng.choice(["a", "b", "c"], rows, p=list(mix))})


@pytest.fixture(scope="module")
def reference() -> dict:
    return profile_batches([_frame(200_000, seed=1)]).to_statistics()


@pytest.mark.parametrize("test", TESTS)
def test_every_test_flags_a_real_shift_and_not_the_same_distribution(reference: dict, test: str) -> None:
    config = DriftTestConfig(tests={"x": test, "c": test})
    same = run_drift_tests(profile_batches([_frame(200_000, seed=2)]), reference, config)
    assert same.drifted_features == [], same.to_dict()
    moved = run_drift_tests(profile_batches([_frame(200_000, seed=3, shift=0.8, mix=(0.2, 0.3, 0.5))]),
                            reference, config)
    # ks and wasserstein are numeric-only: the String feature falls back to jensen_shannon
    assert sorted(moved.drifted_features) == ["c", "x"], moved.to_dict()


def test_large_samples_do_not_flag_a_negligible_shift(reference: dict) -> None:
    """A 0.03-sigma shift is 'significant' at 200k rows but below every effect-size threshold."""
    current = profile_batches([_frame(200_000, seed=4, shift=0.03)])
    for test in ("ks", "chi2"):
        result = run_drift_tests(current, reference, DriftTestConfig(tests={"x": test})).results[0]
        assert result.feature == "x" and result.p_value is not None
        assert result.p_value < 0.05 and not result.drifted


def test_dataset_verdict_uses_the_share_of_drifted_features(reference: dict) -> None:
    current = profile_batches([_frame(50_000, seed=5, shift=1.0)])
    verdict = run_drift_tests(current, reference)
    assert verdict.drifted_features == ["x"]
    assert verdict.drift_share == pytest.approx(1 / 3)
    assert not verdict.dataset_drift
    assert run_drift_tests(current, reference, DriftTestConfig(drift_share=0.3)).dataset_drift
    assert verdict.to_dict()["features"][0]["test"] == "wasserstein"


def test_unknown_tests_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown drift test"):
        DriftTestConfig(tests={"x": "t-test"})
