"""Profiling: statistics.json numbers against numpy and against SageMaker's own file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from moorage.monitor import DatasetProfile, load_json, profile_batches, shape_errors
from moorage.monitor.common.distributions import NumericDistribution

SAGEMAKER = Path(__file__).parents[1] / "data" / "sagemaker" / "data_quality"


def _feature(statistics: dict, name: str) -> dict:
    return next(f for f in statistics["features"] if f["name"] == name)


def _numpy_buckets(values: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(values, bins=10, range=(values.min(), values.max()))
    return counts


def test_reproduces_sagemakers_numbers_from_the_same_values() -> None:
    """SageMaker's example sketch holds all 100 values (one level), so profiling them must give its numbers."""
    theirs = load_json(SAGEMAKER / "sdk-tests_statistics-numeric-kll.json")
    columns = {f["name"]: f["numerical_statistics"]["distribution"]["kll"]["sketch"]["data"][0]
               for f in theirs["features"]}
    ours = profile_batches([pa.table({name: pa.array(v, pa.float64()) for name, v in columns.items()})]).to_statistics()
    assert ours["dataset"]["item_count"] == theirs["dataset"]["item_count"] == 100
    for expected in theirs["features"]:
        got = _feature(ours, expected["name"])
        assert got["inferred_type"] == expected["inferred_type"] == "Fractional"
        mine, want = got["numerical_statistics"], expected["numerical_statistics"]
        assert mine["common"] == want["common"]
        for key in ("mean", "sum", "std_dev", "min", "max"):
            assert mine[key] == pytest.approx(want[key], rel=1e-12), key
        my_buckets = mine["distribution"]["kll"]["buckets"]
        their_buckets = want["distribution"]["kll"]["buckets"]
        assert [b["count"] for b in my_buckets] == [b["count"] for b in their_buckets]
        for mine_b, theirs_b in zip(my_buckets, their_buckets, strict=True):
            assert mine_b["lower_bound"] == pytest.approx(theirs_b["lower_bound"])
            assert mine_b["upper_bound"] == pytest.approx(theirs_b["upper_bound"])


def test_buckets_are_exact_while_the_sketch_holds_every_value() -> None:
    values = np.random.default_rng(7).normal(3.0, 2.0, 150)
    stats = profile_batches([pa.table({"x": values})]).to_statistics()
    buckets = _feature(stats, "x")["numerical_statistics"]["distribution"]["kll"]["buckets"]
    assert [b["count"] for b in buckets] == _numpy_buckets(values).tolist()
    edges = np.linspace(values.min(), values.max(), 11)
    assert [b["lower_bound"] for b in buckets] == pytest.approx(edges[:-1].tolist())
    assert buckets[-1]["upper_bound"] == pytest.approx(values.max())


def test_buckets_and_moments_on_a_large_stream() -> None:
    rng = np.random.default_rng(11)
    values = np.concatenate([rng.lognormal(0, 0.6, 200_000), rng.normal(8, 1, 100_000)])
    rng.shuffle(values)
    frames = [pd.DataFrame({"x": chunk}) for chunk in np.array_split(values, 13)]
    stats = profile_batches(frames).to_statistics()
    numeric = _feature(stats, "x")["numerical_statistics"]
    assert numeric["mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert numeric["std_dev"] == pytest.approx(values.std(), rel=1e-9)
    assert numeric["sum"] == pytest.approx(values.sum(), rel=1e-9)
    assert (numeric["min"], numeric["max"]) == (values.min(), values.max())
    counts = np.array([b["count"] for b in numeric["distribution"]["kll"]["buckets"]])
    expected = _numpy_buckets(values)
    assert counts.sum() == pytest.approx(len(values), abs=10)
    # KLL's rank error at k=400 is under 1% of n; a bucket is the difference of two ranks
    assert np.max(np.abs(counts - expected)) < 0.02 * len(values)
    # the sketch in the file stands for every value: its CDF tracks the data's
    sketch = NumericDistribution.from_feature(_feature(stats, "x"))
    assert sketch is not None and sketch.count == len(values)
    probes = np.quantile(values, [0.05, 0.25, 0.5, 0.75, 0.95])
    assert np.max(np.abs(sketch.cdf(probes) - np.array([0.05, 0.25, 0.5, 0.75, 0.95]))) < 0.02


def test_string_statistics_and_missing_values() -> None:
    frame = pd.DataFrame({"colour": ["red", "blue", None, "red", "green", "red"], "n": [1, 2, 3, None, 5, 6]})
    stats = profile_batches([frame]).to_statistics()
    colour = _feature(stats, "colour")["string_statistics"]
    assert colour["common"] == {"num_present": 5, "num_missing": 1}
    assert colour["distinct_count"] == 3.0
    assert colour["distribution"]["categorical"]["buckets"][0] == {"value": "red", "count": 3}
    n = _feature(stats, "n")
    assert n["inferred_type"] == "Fractional"  # pandas makes an int column with a gap float
    assert n["numerical_statistics"]["common"] == {"num_present": 5, "num_missing": 1}
    assert shape_errors(json.loads(json.dumps(stats)), "statistics") == []


def test_high_cardinality_text_switches_to_sketches() -> None:
    ids = [f"user-{i}" for i in range(30_000)] + ["hot"] * 5_000
    stats = profile_batches([pd.DataFrame({"id": ids[i:i + 7_000]}) for i in range(0, len(ids), 7_000)])
    text = _feature(stats.to_statistics(), "id")["string_statistics"]
    assert text["distinct_count"] == pytest.approx(30_001, rel=0.03)  # HLL, lg_k 12: ~1.6% error
    assert text["distribution"]["categorical"]["buckets"][0]["value"] == "hot"
    assert text["distribution"]["categorical"]["buckets"][0]["count"] == pytest.approx(5_000, rel=0.01)


def test_profiles_merge_like_one_pass() -> None:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"x": rng.normal(size=40_000), "c": rng.choice(list("abc"), 40_000)})
    whole = profile_batches([frame]).to_statistics()
    merged = DatasetProfile().merge(profile_batches([frame[:15_000]])).merge(profile_batches([frame[15_000:]]))
    parts = merged.to_statistics()
    assert parts["dataset"] == whole["dataset"]
    for key in ("mean", "std_dev", "sum", "min", "max"):
        assert _feature(parts, "x")["numerical_statistics"][key] == pytest.approx(
            _feature(whole, "x")["numerical_statistics"][key], rel=1e-9)
    assert _feature(parts, "c")["string_statistics"] == _feature(whole, "c")["string_statistics"]
