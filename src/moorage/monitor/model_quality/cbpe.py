"""Beyond SageMaker: a binary classifier's quality estimated before its labels arrive (CBPE).

Ground truth often lands days or weeks after the predictions it judges, and the model-quality
monitor would be blind until then. Confidence-based performance estimation (CBPE, as NannyML
does it) fills the gap for classifiers that output a probability of the positive class:

1. :meth:`CBPE.fit` calibrates the scores on the baseline (reference) data, where labels are
   known, so that a calibrated score ``p`` means "``y = 1`` with probability ``p``".
2. :meth:`CBPE.estimate` takes an unlabelled window, predicts ``score >= threshold`` as the model
   does, and treats each row's label as a coin with the calibrated probability: a predicted
   positive is a true positive with probability ``p`` and a false positive with ``1 - p``, a
   predicted negative a false negative with ``p`` and a true negative with ``1 - p``. Summing
   gives the expected confusion matrix, hence expected accuracy, precision, recall and F1. The
   expected ROC AUC counts, in the model's own ranking of the raw scores, the expected number of
   correctly ordered positive-negative pairs over the expected number of such pairs.

Each estimate carries a band, ``value +- 3 standard errors``: where the *realised* metric of this
window should land once its labels arrive, if the assumptions below hold (see
:meth:`CBPE.estimate` for what the standard error counts).

The assumptions, and what happens when one fails:

* **No concept drift**: ``P(y | score)`` is the same in the window as in the reference. It follows
  from ``P(y | x)`` unchanged when the score is a calibrated or monotone function of
  ``P(y | x)``. Covariate shift (``P(x)`` moving the class balance and the score distribution) is
  what CBPE handles, because every window's estimate comes from that window's own scores. Under
  concept drift the estimate keeps reporting the old quality while the realised metric drops;
  once labels arrive, that gap (estimated minus realised, beyond the band) *is* the concept-drift
  signal, which :func:`concept_drift_signal` reports. An imperfect model, whose score misses some
  of what ``x`` says about ``y``, can see ``P(y | score)`` move under covariate shift alone; that
  shows up the same way, as a gap.
* **Calibrated scores**: already calibrated on the reference, or made so by the fit. Isotonic
  calibration is only as good as the reference rows in the score range a window uses; the band
  includes that error (thin reference regions widen it). Scores beyond the reference's range get
  the probability at its edge. With identity calibration the scores are taken at their word.
* **Enough data per window**: the band is a normal approximation and wants tens of expected
  positives and negatives (and of predicted positives, for precision). A metric with nothing to
  count (precision without predicted positives, recall without expected positives) is NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

BINARY_METRICS = ("accuracy", "precision", "recall", "f1", "roc_auc")
FORMAT = "moorage.cbpe"
FORMAT_VERSION = 1
# The band's half-width in standard errors, as NannyML's: when nothing but P(x) moved, about 0.3% of
# (window, metric) pairs still land outside by chance.
BAND_SIGMAS = 3.0
# The calibration check: isotonic regression is kept only if, fitted on nine folds of the reference, it
# lowers the expected calibration error (ECE) of the tenth, on average over the ten folds.
_CALIBRATION_FOLDS = 10
_ECE_BINS = 10
_CALIBRATION_SEED = 0
# Below this many reference rows isotonic regression mostly fits noise and ten-fold ECEs cannot tell
# the two apart: "auto" then trusts the scores as they are.
MIN_ROWS_TO_CALIBRATE = 200

Calibration = Literal["auto", "isotonic", "identity"]
Method = Literal["isotonic", "identity"]


@dataclass(frozen=True)
class Estimate:
    """An estimated metric and its band: where the realised metric should land if only ``P(x)`` moved."""

    value: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float | None]:
        return {"value": _json_float(self.value), "low": _json_float(self.low), "high": _json_float(self.high)}


class CBPE:
    """A fitted estimator: the decision threshold and the calibration map from raw score to probability.

    The map is piecewise linear through knots (score -> probability) and flat beyond the end knots;
    isotonic regression's fit is exactly such a map, and the identity is the knots ``(0, 0)``,
    ``(1, 1)``, so both store, load and apply the same way with numpy alone. For an isotonic map
    ``knots_rows`` holds, per knot, how many reference rows stand behind its probability (its
    isotonic block), which sizes the calibration's share of the band.
    """

    def __init__(
        self,
        *,
        threshold: float,
        positive_label: Any,
        method: Method,
        knots_x: np.ndarray,
        knots_y: np.ndarray,
        knots_rows: np.ndarray | None = None,
        reference: dict[str, Any] | None = None,
    ) -> None:
        self.threshold = _check_threshold(threshold)
        self.positive_label = _json_label(positive_label)
        if method not in ("isotonic", "identity"):
            raise ValueError(f"unknown calibration method {method!r}")
        self.method: Method = method
        self.knots_x = np.asarray(knots_x, dtype=np.float64)
        self.knots_y = np.asarray(knots_y, dtype=np.float64)
        if self.knots_x.ndim != 1 or self.knots_x.shape != self.knots_y.shape or self.knots_x.size == 0:
            raise ValueError("calibration knots must be two non-empty lists of the same length")
        if (
            not np.all(np.isfinite(self.knots_x))
            or np.any(np.diff(self.knots_x) <= 0)
            or np.any(np.diff(self.knots_y) < 0)
        ):
            raise ValueError("calibration knots must increase in score and not decrease in probability")
        if not np.all((self.knots_y >= 0) & (self.knots_y <= 1)):
            raise ValueError("calibrated probabilities must lie in [0, 1]")
        self.knots_rows = None if knots_rows is None else np.asarray(knots_rows, dtype=np.float64)
        if self.knots_rows is not None and (self.knots_rows.shape != self.knots_x.shape or np.any(self.knots_rows < 1)):
            raise ValueError("knots_rows must give a positive row count for every knot")
        # what the reference looked like (size, class balance, ECEs, realised metrics), for reports
        self.reference: dict[str, Any] = dict(reference or {})

    @classmethod
    def fit(
        cls,
        scores: np.ndarray,
        labels: np.ndarray,
        *,
        threshold: float = 0.5,
        positive_label: Any = 1,
        calibration: Calibration = "auto",
    ) -> CBPE:
        """Calibrate on labelled reference data.

        ``calibration="auto"`` (the default) decides as NannyML does, by the held-out expected
        calibration error (ECE, ten equal-count bins): isotonic regression is used only when, fitted
        on nine folds of the reference, it lowers the tenth fold's ECE (on average over ten
        stratified folds); otherwise the scores are taken as already calibrated (identity).
        Refitting well-calibrated scores only adds the fit's noise and flat steps (which merge
        distinct scores into one probability). Unlike NannyML, the ECE is measured per fold and
        then averaged: pooling the folds' calibrated scores first leaks, because one fold's
        calibration is made of the labels of other folds' rows in the same ECE bins, and isotonic
        then wins even on scores that are the true probabilities. ``"isotonic"`` and
        ``"identity"`` force the choice.

        Raises ValueError on scores outside [0, 1], lengths that differ, or labels that are not two
        classes one of which is ``positive_label``.
        """
        s = _check_scores(scores)
        labels_arr = np.asarray(labels)
        if labels_arr.ndim != 1 or labels_arr.shape[0] != s.shape[0]:
            raise ValueError(f"scores and labels differ in length ({s.shape[0]} and {labels_arr.shape[0]})")
        _check_threshold(threshold)
        if calibration not in ("auto", "isotonic", "identity"):
            raise ValueError(f"calibration must be 'auto', 'isotonic' or 'identity', not {calibration!r}")
        classes = np.unique(labels_arr).tolist()
        if len(classes) != 2 or positive_label not in classes:
            raise ValueError(
                f"reference labels must hold exactly two classes, one of them {positive_label!r}; found {classes[:5]}"
            )
        y = (labels_arr == positive_label).astype(np.float64)

        ece_raw = ece_isotonic = None
        method: Method
        if calibration == "auto":
            if s.size < MIN_ROWS_TO_CALIBRATE:
                method = "identity"
            else:
                ece_raw, ece_isotonic = _held_out_ece(s, y)
                method = "isotonic" if ece_isotonic < ece_raw else "identity"
        else:
            method = calibration
        knots_rows = None
        if method == "isotonic":
            knots_x, knots_y = _isotonic_knots(s, y)
            knots_rows = _block_rows(knots_x, knots_y, s)
        else:
            knots_x, knots_y = np.array([0.0, 1.0]), np.array([0.0, 1.0])

        reference = {
            "rows": int(s.size),
            "positive_rate": float(y.mean()),
            "predicted_positive_rate": float((s >= threshold).mean()),
            "ece_raw": ece_raw,
            "ece_isotonic": ece_isotonic,
            "metrics": {name: _json_float(v) for name, v in realised_metrics(s, y, threshold).items()},
        }
        return cls(
            threshold=threshold,
            positive_label=positive_label,
            method=method,
            knots_x=knots_x,
            knots_y=knots_y,
            knots_rows=knots_rows,
            reference=reference,
        )

    def calibrate(self, scores: np.ndarray) -> np.ndarray:
        """The calibrated probability of the positive class for each raw score."""
        return np.interp(_check_scores(scores), self.knots_x, self.knots_y)

    def estimate(self, scores: np.ndarray) -> dict[str, Estimate]:
        """Expected metrics of an unlabelled window, each with its band.

        Predictions are ``score >= threshold`` on the raw scores, and ROC AUC ranks the raw scores:
        the model as it decides, judged with calibrated probabilities as the expected labels.

        The band is ``value +- 3 * standard error``, clipped to [0, 1]. Every metric here is a
        smooth function of sums over rows, so to first order it moves by ``sum_i h_i * d_i`` when
        row i's label moves by ``d_i``, for per-row weights ``h_i``. The standard error adds two
        independent parts through those weights:

        * the window's sampling error: each label is a coin with its calibrated probability ``p_i``,
          variance ``sum_i p_i (1 - p_i) h_i**2``. Exact for accuracy and precision (the predictions
          fix their denominators), the delta method for recall, F1 and ROC AUC;
        * the calibration's error (isotonic only): each isotonic block's probability is the mean of
          the ``m`` reference labels behind it, variance ``q (1 - q) / m``, and is shared by every
          window row that maps to it, so it enters as ``sum_b var_b (sum_{i in b} h_i)**2``. It does
          not shrink as windows grow, and dominates large windows over a small reference.

        Why this and not NannyML's band (a standard deviation measured on the reference, scaled to
        the window's size): the reference's spread belongs to the reference's class balance and
        score distribution, which covariate shift is exactly what moves; computing the spread from
        the window's own scores keeps the band right as they move. It is also deterministic, so a
        reloaded estimator gives identical bands.
        """
        s = _check_scores(scores)
        p = np.interp(s, self.knots_x, self.knots_y)
        coin_variance = p * (1 - p)
        blocks = self._calibration_blocks(s)
        out: dict[str, Estimate] = {}
        for name, (value, h) in _influence(s, p, self.threshold).items():
            if h is None or not math.isfinite(value):
                out[name] = Estimate(math.nan, math.nan, math.nan)
                continue
            variance = float(coin_variance @ (h * h))
            if blocks is not None:
                left, right, w_left, block_variance = blocks
                size = block_variance.size
                per_block = np.bincount(left, weights=h * w_left, minlength=size)
                per_block += np.bincount(right, weights=h * (1 - w_left), minlength=size)
                variance += float(block_variance @ (per_block * per_block))
            se = math.sqrt(variance)
            out[name] = Estimate(value, max(0.0, value - BAND_SIGMAS * se), min(1.0, value + BAND_SIGMAS * se))
        return out

    def _calibration_blocks(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
        """For each row the isotonic blocks either side of its score and its weight on the left one,
        and each block's variance; None without a fitted calibration."""
        if self.knots_rows is None:
            return None
        # consecutive knots with one probability are one isotonic block (its two ends)
        block_of_knot = np.concatenate([[0], np.cumsum(np.diff(self.knots_y) > 0)])
        first_knot = np.flatnonzero(np.concatenate([[True], np.diff(block_of_knot) > 0]))
        m = self.knots_rows[first_knot]
        # a block of all-0 or all-1 labels still has uncertainty: shrink its rate half a row towards 1/2
        q = (self.knots_y[first_knot] * m + 0.5) / (m + 1)
        block_variance = q * (1 - q) / m
        last = self.knots_x.size - 1
        idx = np.searchsorted(self.knots_x, s, side="right")
        left_knot = np.clip(idx - 1, 0, last)
        right_knot = np.clip(idx, 0, last)
        span = self.knots_x[right_knot] - self.knots_x[left_knot]
        with np.errstate(divide="ignore", invalid="ignore"):
            w_left = np.where(span > 0, (self.knots_x[right_knot] - s) / span, 1.0)
        return block_of_knot[left_knot], block_of_knot[right_knot], np.clip(w_left, 0.0, 1.0), block_variance

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable document, kept beside the baseline's ``statistics.json``."""
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "threshold": float(self.threshold),
            "positive_label": self.positive_label,
            "calibration": {
                "method": self.method,
                "knots_x": self.knots_x.tolist(),
                "knots_y": self.knots_y.tolist(),
                "knots_rows": None if self.knots_rows is None else [int(r) for r in self.knots_rows],
            },
            "reference": self.reference,
        }

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> CBPE:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} document")
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"unsupported {FORMAT} version {doc.get('version')!r} (this reads {FORMAT_VERSION})")
        try:
            calibration = doc["calibration"]
            rows = calibration.get("knots_rows")
            return cls(
                threshold=float(doc["threshold"]),
                positive_label=doc["positive_label"],
                method=calibration["method"],
                knots_x=np.asarray(calibration["knots_x"], dtype=np.float64),
                knots_y=np.asarray(calibration["knots_y"], dtype=np.float64),
                knots_rows=None if rows is None else np.asarray(rows, dtype=np.float64),
                reference=doc.get("reference"),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed {FORMAT} document: {exc!r}") from exc


def concept_drift_signal(estimated: dict[str, Estimate], realised: dict[str, float]) -> dict[str, dict]:
    """Per metric, how far the realised value (labels now known) sits from the estimate made without them.

    ``gap`` is estimated minus realised, so a model doing worse than its scores promised has a
    positive gap. ``outside_band`` is true when the realised value falls outside the estimate's
    band: the estimate already follows ``P(x)``, so what is left is ``P(y | x)`` having moved (or
    the scores' calibration no longer holding), that is, concept drift; ``direction`` says which
    side ("below": worse than estimated). Metrics missing from either side are left out; a NaN on
    either side gives no gap and no flag. Values are JSON-ready (null for NaN).
    """
    signal: dict[str, dict] = {}
    for name, est in estimated.items():
        if name not in realised:
            continue
        real = float(realised[name])
        entry: dict[str, Any] = {
            "estimated": _json_float(est.value),
            "realised": _json_float(real),
            "low": _json_float(est.low),
            "high": _json_float(est.high),
            "gap": None,
            "outside_band": False,
            "direction": None,
        }
        if math.isfinite(est.value) and math.isfinite(real):
            direction = "below" if real < est.low else "above" if real > est.high else None
            entry.update(gap=est.value - real, outside_band=direction is not None, direction=direction)
        signal[name] = entry
    return signal


def realised_metrics(scores: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, float]:
    """The metrics with labels known (``y`` in {0, 1}), by the same definitions as the estimates.

    NaN where a metric is undefined (precision without predicted positives, recall or ROC AUC
    without both classes) rather than scikit-learn's warning and 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    yy = np.asarray(y, dtype=np.float64)
    predicted = s >= threshold
    n = s.size
    tp = float(yy[predicted].sum())
    n_pp = float(predicted.sum())
    n_pos = float(yy.sum())
    n_neg = n - n_pos
    out = {
        "accuracy": (tp + float((1 - yy[~predicted]).sum())) / n if n else math.nan,
        "precision": tp / n_pp if n_pp else math.nan,
        "recall": tp / n_pos if n_pos else math.nan,
        "f1": 2 * tp / (n_pos + n_pp) if n_pos + n_pp else math.nan,
        "roc_auc": math.nan,
    }
    if n_pos and n_neg:
        out["roc_auc"] = (float(yy @ _mid_ranks(s)) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out


def _influence(s: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, tuple[float, np.ndarray | None]]:
    """Per metric, the expected value and the per-row weights ``h`` of its linearisation.

    ``p`` are the calibrated probabilities of the raw scores ``s``. To first order a metric moves by
    ``sum_i h_i * d_i`` when row i's label (or calibrated probability) moves by ``d_i``. ``h`` is
    None where the metric is undefined.
    """
    n = s.size
    predicted = s >= threshold
    pp = predicted.astype(np.float64)
    n_pp = float(pp.sum())
    a = float(p[predicted].sum())  # expected true positives
    b = float(p[~predicted].sum())  # expected false negatives
    tn = float((1 - p[~predicted]).sum())
    undefined: tuple[float, np.ndarray | None] = (math.nan, None)
    out: dict[str, tuple[float, np.ndarray | None]] = {}
    # accuracy = (TP + TN) / n: a label turning positive gains a correct row if predicted positive, loses one if not
    out["accuracy"] = ((a + tn) / n, (2 * pp - 1) / n)
    # precision = A / predicted positives, where A = positives among predicted positives; the predictions fix
    # the denominator
    out["precision"] = (a / n_pp, pp / n_pp) if n_pp else undefined
    # recall = A / (A + B), B = positives among predicted negatives
    positives = a + b
    out["recall"] = (a / positives, np.where(predicted, b, -a) / positives**2) if positives > 0 else undefined
    # F1 = 2 TP / (2 TP + FP + FN) = 2A / (A + B + predicted positives)
    d = positives + n_pp
    out["f1"] = (2 * a / d, 2 * np.where(predicted, b + n_pp, -a) / d**2) if d > 0 else undefined
    out["roc_auc"] = _roc_auc_influence(s, p)
    return out


def _roc_auc_influence(s: np.ndarray, p: np.ndarray) -> tuple[float, np.ndarray | None]:
    """Expected ROC AUC over the raw scores' ranking, and its linearisation.

    With mid-ranks ``R`` (ties share their average rank, so a tied pair counts half, as
    ``roc_auc_score`` counts it), the realised AUC is ``(S - P (P + 1) / 2) / (P (n - P))`` with
    ``S = sum y_i R_i`` and ``P = sum y_i``. The value is the expected number of correctly ordered
    positive-negative pairs (exactly ``E[S] - E[P (P + 1)] / 2``) over the expected pair count
    ``E[P] E[N]``: NannyML's estimate up to O(1/n). ``h`` differentiates the AUC in ``S`` and ``P``
    at their expected values.
    """
    n = s.size
    pos = float(p.sum())
    neg = n - pos
    if pos <= 0 or neg <= 0:
        return math.nan, None
    ranks = _mid_ranks(s)
    expected_s = float(p @ ranks)
    pos_variance = float((p * (1 - p)).sum())
    pairs = pos * neg
    value = (expected_s - (pos * pos + pos_variance + pos) / 2) / pairs
    u = expected_s - pos * (pos + 1) / 2
    d_s = 1 / pairs
    d_p = (-(pos + 0.5) * pairs - u * (n - 2 * pos)) / pairs**2
    return value, d_s * ranks + d_p


def _mid_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s``, ties given their average rank."""
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse]


def _isotonic_knots(s: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fit isotonic regression and return its piecewise-linear map as knots."""
    # imported here: only fitting needs scikit-learn; loading and estimating need numpy alone
    try:
        from sklearn.isotonic import IsotonicRegression
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("isotonic calibration needs scikit-learn (pip install 'moorage[sklearn]')") from exc
    model = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
    # IsotonicRegression.predict interpolates linearly between these and clips beyond them, as np.interp does
    return np.asarray(model.X_thresholds_, dtype=np.float64), np.asarray(model.y_thresholds_, dtype=np.float64)


def _block_rows(knots_x: np.ndarray, knots_y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per knot, the reference rows of its isotonic block (the scores between the block's end knots)."""
    block_of_knot = np.concatenate([[0], np.cumsum(np.diff(knots_y) > 0)])
    rows = np.empty(knots_x.size, dtype=np.float64)
    sorted_s = np.sort(s)
    for block in range(int(block_of_knot[-1]) + 1):
        members = np.flatnonzero(block_of_knot == block)
        lo, hi = knots_x[members[0]], knots_x[members[-1]]
        count = np.searchsorted(sorted_s, hi, side="right") - np.searchsorted(sorted_s, lo, side="left")
        rows[members] = max(1, int(count))
    return rows


def _held_out_ece(s: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean over stratified folds of the held-out fold's ECE: raw scores, and isotonic fitted on the other folds."""
    rng = np.random.default_rng(_CALIBRATION_SEED)
    fold = np.empty(s.size, dtype=np.int64)
    for cls_value in (0.0, 1.0):
        idx = np.flatnonzero(y == cls_value)
        fold[rng.permutation(idx)] = np.arange(idx.size) % _CALIBRATION_FOLDS
    raw = isotonic = 0.0
    for k in range(_CALIBRATION_FOLDS):
        test = fold == k
        knots_x, knots_y = _isotonic_knots(s[~test], y[~test])
        raw += _ece(s[test], y[test])
        isotonic += _ece(np.interp(s[test], knots_x, knots_y), y[test])
    return raw / _CALIBRATION_FOLDS, isotonic / _CALIBRATION_FOLDS


def _ece(prob: np.ndarray, y: np.ndarray) -> float:
    """Expected calibration error over equal-count bins of ``prob``."""
    order = np.argsort(prob, kind="stable")
    total = 0.0
    for chunk in np.array_split(order, min(_ECE_BINS, prob.size)):
        total += chunk.size * abs(float(prob[chunk].mean()) - float(y[chunk].mean()))
    return total / prob.size


def _check_scores(scores: np.ndarray) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be one-dimensional (a positive-class probability per row), got shape {s.shape}")
    if s.size == 0:
        raise ValueError("no scores")
    if not np.all((s >= 0) & (s <= 1)):  # NaN fails both comparisons
        raise ValueError("scores must be probabilities in [0, 1] (no NaN)")
    return s


def _check_threshold(threshold: float) -> float:
    t = float(threshold)
    if not 0 <= t <= 1:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold!r}")
    return t


def _json_label(label: Any) -> Any:
    # numpy scalars (np.int64 out of an array of labels) are not JSON-serialisable; their Python values are
    if isinstance(label, np.generic):
        label = label.item()
    if not isinstance(label, int | float | str | bool):
        raise ValueError(f"positive_label must be a number, string or boolean, not {type(label).__name__}")
    return label


def _json_float(value: float | None) -> float | None:
    # JSON has no NaN: an undefined metric is stored as null
    if value is None or not math.isfinite(value):
        return None
    return float(value)
