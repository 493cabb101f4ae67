"""CBPE: metrics estimated without labels track the realised ones under covariate shift, not under concept drift.

The world is fixed: a true model ``P(y=1 | x) = sigmoid(w . x + b)`` over two normal features. The
reference draws ``x`` around the origin; each covariate-shift window moves the mean of ``x[0]`` (the
class balance goes from ~25% to ~70% positive and the scores move with it) while ``P(y | x)`` stays
put. Labels are always drawn from ``P(y | x)``, except in the concept-drift window. Seeds are fixed
where the data are drawn.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from moorage.monitor.model_quality.cbpe import (
    BINARY_METRICS,
    CBPE,
    Estimate,
    concept_drift_signal,
    realised_metrics,
)

W = np.array([1.5, -1.0])
B = -0.5
REFERENCE_ROWS = 20_000
WINDOW_ROWS = 5_000
SHIFTS = (-0.8, -0.4, 0.0, 0.4, 0.8, 1.2)
# what the issue demands of accuracy, and honest tolerances for the rest: over 40 seeds x 6 windows x
# 3 score variants the worst errors were 0.017 (accuracy), 0.042 (precision), 0.028 (recall),
# 0.029 (F1) and 0.018 (ROC AUC) at these sizes
TOLERANCE = {"accuracy": 0.03, "precision": 0.05, "recall": 0.05, "f1": 0.05, "roc_auc": 0.03}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-z))


def _draw(rng: np.random.Generator, rows: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = rng.normal(0.0, 1.0, (rows, 2)) + np.array([shift, 0.0])
    p = _sigmoid(x @ W + B)
    return x, p, (rng.random(rows) < p).astype(np.int64)


def _miscalibrated(p: np.ndarray) -> np.ndarray:
    # an overconfident-then-flattened, shifted score: same ranking as p, ECE ~0.12, which CBPE must calibrate away
    return _sigmoid(0.6 * np.log(p / (1 - p)) + 0.4)


SCORES = {"true": lambda p: p, "miscalibrated": _miscalibrated}


@pytest.fixture(scope="module")
def world() -> dict:
    rng = np.random.default_rng(20240601)
    _, p_ref, y_ref = _draw(rng, REFERENCE_ROWS)
    windows = [_draw(rng, WINDOW_ROWS, shift) for shift in SHIFTS]
    return {"p_ref": p_ref, "y_ref": y_ref, "windows": windows}


def _fit(world: dict, scores: str, calibration: str) -> CBPE:
    return CBPE.fit(SCORES[scores](world["p_ref"]), world["y_ref"], calibration=calibration)  # type: ignore[arg-type]


@pytest.mark.parametrize(("scores", "calibration"), [("true", "identity"), ("true", "auto"), ("miscalibrated", "auto")])
def test_estimates_track_realised_metrics_under_covariate_shift(world: dict, scores: str, calibration: str) -> None:
    cbpe = _fit(world, scores, calibration)
    if scores == "miscalibrated":
        assert cbpe.method == "isotonic", cbpe.reference
        assert cbpe.reference["ece_raw"] > 0.05 > cbpe.reference["ece_isotonic"]
    errors = []
    for shift, (_, p, y) in zip(SHIFTS, world["windows"], strict=True):
        s = SCORES[scores](p)
        estimated = cbpe.estimate(s)
        realised = realised_metrics(s, y, cbpe.threshold)
        gaps = {m: estimated[m].value - realised[m] for m in BINARY_METRICS}
        errors.append((shift, round(float(y.mean()), 3), {m: round(g, 4) for m, g in gaps.items()}))
        for metric in BINARY_METRICS:
            assert abs(gaps[metric]) <= TOLERANCE[metric], errors
        # the band holds the realised value: nothing here is concept drift. At 3 standard errors ~0.3% of
        # (window, metric) pairs fall outside by chance; over 40 seeds it happened to 0.4% of them.
        signal = concept_drift_signal(estimated, realised)
        assert not [m for m, entry in signal.items() if entry["outside_band"]], (shift, signal)
    # the windows really moved: class balance from ~25% to ~70% positive
    balances = [balance for _, balance, _ in errors]
    assert min(balances) < 0.27 and max(balances) > 0.65, errors


def test_concept_drift_keeps_the_estimate_and_drops_the_realised_metric(world: dict) -> None:
    cbpe = _fit(world, "true", "auto")
    rng = np.random.default_rng(7)
    x, p, y = _draw(rng, WINDOW_ROWS, shift=0.4)
    # P(y | x) changes for a segment of x: where x[0] > 0.8 the labels are flipped (~1/4 of the rows)
    segment = x[:, 0] > 0.8
    drifted = np.where(segment, 1 - y, y)
    estimated = cbpe.estimate(p)  # the scores cannot see the change
    realised = realised_metrics(p, drifted, cbpe.threshold)
    unchanged = realised_metrics(p, y, cbpe.threshold)

    # the estimate still says the model is as good as before (it matches the undrifted labels) ...
    assert abs(estimated["accuracy"].value - unchanged["accuracy"]) <= 0.03
    assert estimated["accuracy"].value >= cbpe.reference["metrics"]["accuracy"] - 0.03
    # ... while the realised accuracy falls well below the band
    assert realised["accuracy"] < estimated["accuracy"].low - 0.1, (estimated["accuracy"], realised["accuracy"])

    signal = concept_drift_signal(estimated, realised)
    assert signal["accuracy"]["outside_band"] and signal["accuracy"]["direction"] == "below"
    assert signal["accuracy"]["gap"] > 0.1
    assert signal["roc_auc"]["outside_band"] and signal["roc_auc"]["direction"] == "below"
    json.dumps(signal, allow_nan=False)  # ready for a report as it is


def test_band_is_the_spread_of_the_realised_metric(world: dict) -> None:
    """Scores fixed, labels redrawn from the calibrated probabilities: the realised metrics scatter around
    the estimate with the standard deviation the band is built from (band = 3 of them)."""
    cbpe = _fit(world, "true", "identity")
    rng = np.random.default_rng(11)
    _, p, _ = _draw(rng, 2_000, shift=0.4)
    estimated = cbpe.estimate(p)
    z: dict[str, list[float]] = {m: [] for m in BINARY_METRICS}
    for _ in range(400):
        y = (rng.random(p.size) < p).astype(np.int64)
        realised = realised_metrics(p, y, cbpe.threshold)
        for m in BINARY_METRICS:
            se = (estimated[m].high - estimated[m].low) / 6
            z[m].append((realised[m] - estimated[m].value) / se)
    for m in BINARY_METRICS:
        zm = np.array(z[m])
        assert abs(zm.mean()) < 0.2 and 0.85 < zm.std() < 1.15, (m, zm.mean(), zm.std())
        assert np.mean(np.abs(zm) > 3) < 0.02, m


def test_band_includes_the_calibrations_error() -> None:
    """A small reference and large windows: the isotonic fit's own error dominates the window's sampling
    error, and the band must still hold the realised metric (without the calibration term about 45% of
    these windows fell outside)."""
    outside = 0
    total = 0
    for seed in range(12):
        rng = np.random.default_rng(1000 + seed)
        _, p_ref, y_ref = _draw(rng, 3_000)
        cbpe = CBPE.fit(_miscalibrated(p_ref), y_ref, calibration="isotonic")
        for shift in (-0.4, 0.8):
            _, p, y = _draw(rng, 50_000, shift)
            s = _miscalibrated(p)
            signal = concept_drift_signal(cbpe.estimate(s), realised_metrics(s, y, cbpe.threshold))
            outside += sum(entry["outside_band"] for entry in signal.values())
            total += len(signal)
    assert outside <= 0.02 * total, (outside, total)


def test_realised_metrics_are_scikit_learns(world: dict) -> None:
    _, p, y = world["windows"][2]
    s = _miscalibrated(p)
    predicted = s >= 0.5
    ours = realised_metrics(s, y, 0.5)
    theirs = {
        "accuracy": skm.accuracy_score(y, predicted),
        "precision": skm.precision_score(y, predicted),
        "recall": skm.recall_score(y, predicted),
        "f1": skm.f1_score(y, predicted),
        "roc_auc": skm.roc_auc_score(y, s),
    }
    for m in BINARY_METRICS:
        assert ours[m] == pytest.approx(theirs[m], abs=1e-12), m
    # ties in the scores count half a pair, as scikit-learn counts them
    rounded = np.round(s, 1)
    assert realised_metrics(rounded, y, 0.5)["roc_auc"] == pytest.approx(skm.roc_auc_score(y, rounded), abs=1e-12)


@pytest.mark.parametrize(("scores", "calibration"), [("true", "identity"), ("miscalibrated", "isotonic")])
def test_round_trip_gives_identical_estimates(world: dict, scores: str, calibration: str) -> None:
    cbpe = _fit(world, scores, calibration)
    doc = json.loads(json.dumps(cbpe.to_dict(), allow_nan=False))
    loaded = CBPE.from_dict(doc)
    assert loaded.to_dict() == doc
    for _, p, _ in world["windows"]:
        s = SCORES[scores](p)
        assert loaded.estimate(s) == cbpe.estimate(s)


def test_string_labels_and_another_threshold() -> None:
    rng = np.random.default_rng(3)
    _, p, y = _draw(rng, 4_000)
    labels = np.where(y == 1, "fraud", "ok")
    cbpe = CBPE.fit(p, labels, threshold=0.3, positive_label="fraud", calibration="identity")
    assert cbpe.reference["metrics"] == pytest.approx(realised_metrics(p, y, 0.3))
    loaded = CBPE.from_dict(json.loads(json.dumps(cbpe.to_dict())))
    assert loaded.positive_label == "fraud" and loaded.threshold == 0.3
    assert loaded.estimate(p) == cbpe.estimate(p)


def test_undefined_metrics_are_nan_and_never_flag() -> None:
    rng = np.random.default_rng(5)
    _, p, y = _draw(rng, 4_000)
    cbpe = CBPE.fit(p, y, calibration="identity")
    low_scores = np.full(100, 0.2)  # nothing predicted positive: precision has nothing to count
    estimated = cbpe.estimate(low_scores)
    assert math.isnan(estimated["precision"].value) and math.isnan(estimated["precision"].low)
    assert estimated["accuracy"].value == pytest.approx(0.8)
    assert estimated["f1"] == Estimate(0.0, 0.0, 0.0)  # no predicted positives: no true positives, F1 is 0 for sure
    signal = concept_drift_signal(estimated, {"precision": 0.0, "accuracy": 0.8})
    assert signal["precision"]["gap"] is None and not signal["precision"]["outside_band"]
    assert set(signal) == {"precision", "accuracy"}  # metrics realised later only where labels allowed
    assert Estimate(math.nan, math.nan, math.nan).to_dict() == {"value": None, "low": None, "high": None}


def test_bad_inputs_raise_value_error() -> None:
    rng = np.random.default_rng(9)
    _, p, y = _draw(rng, 1_000)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CBPE.fit(np.where(np.arange(p.size) == 0, 1.2, p), y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CBPE.fit(np.where(np.arange(p.size) == 0, -0.1, p), y)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        CBPE.fit(np.where(np.arange(p.size) == 0, np.nan, p), y)
    with pytest.raises(ValueError, match="length"):
        CBPE.fit(p, y[:-1])
    with pytest.raises(ValueError, match="two classes"):
        CBPE.fit(p, np.ones_like(y))
    with pytest.raises(ValueError, match="two classes"):
        CBPE.fit(p, y, positive_label="yes")
    with pytest.raises(ValueError, match="two classes"):
        CBPE.fit(p, np.where(p > 0.9, 2, y))
    with pytest.raises(ValueError, match="threshold"):
        CBPE.fit(p, y, threshold=1.5)
    with pytest.raises(ValueError, match="calibration"):
        CBPE.fit(p, y, calibration="platt")  # type: ignore[arg-type]

    cbpe = CBPE.fit(p, y, calibration="identity")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cbpe.estimate(np.array([0.2, 1.01]))
    with pytest.raises(ValueError, match="no scores"):
        cbpe.estimate(np.array([]))
    with pytest.raises(ValueError, match="one-dimensional"):
        cbpe.estimate(np.ones((3, 2)) / 2)

    doc = cbpe.to_dict()
    with pytest.raises(ValueError, match="not a"):
        CBPE.from_dict({"format": "something else"})
    with pytest.raises(ValueError, match="version"):
        CBPE.from_dict({**doc, "version": 99})
    with pytest.raises(ValueError, match="malformed"):
        CBPE.from_dict({k: v for k, v in doc.items() if k != "calibration"})
    with pytest.raises(ValueError, match="knots"):
        CBPE.from_dict({**doc, "calibration": {**doc["calibration"], "knots_y": [0.5, 0.2]}})
