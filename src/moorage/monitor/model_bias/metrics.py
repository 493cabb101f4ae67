"""Clarify's bias metrics over boolean arrays: pure numpy, one function per metric, Clarify's edge cases.

Every metric compares two groups of the data. ``facet`` marks the sensitive group, Clarify's facet *d*
(the rows that the analysis configuration's ``value_or_threshold`` selects); the other rows are facet
*a*. ``label`` marks the rows whose observed label is the positive outcome, ``predicted`` those whose
predicted label is; ``group`` is the group variable of the conditional metrics and ``features`` the
numeric feature matrix of the flip test. Turning a data set into these arrays is
:func:`select_values`, :func:`select_interval` and :func:`labels_from_probabilities` here, and
:mod:`.analysis` for the whole analysis configuration.

The definitions, and where each is undefined, are those of Clarify's open-source implementation
(``aws/amazon-sagemaker-clarify``, ``smclarify/bias/metrics``), which its processing container runs:

- A ratio of counts goes through :func:`divide`: 0/0 is 0, x/0 is +infinity (-infinity for a
  negative x). So DI, DCA, DCR and TE can be infinite; a difference of two infinite ratios (DCA,
  DCR, TE, AD) is 0, not NaN.
- A metric that needs both facets raises :class:`MetricError` when one of them is empty; the
  analysis writes it as ``"value": null`` with an ``"error"``, as Clarify does. CDDL/CDDPL need a
  group variable and both outcomes; GE needs a benefit that is not zero everywhere.
- The label-distribution metrics (KL, JS, LP, TVD, KS) compare the facets' distributions of the
  positive-label flag over the outcomes that *both* facets have (Clarify's ``pdfs_aligned_nonzero``):
  an outcome absent from one facet is dropped from both, so a facet whose labels are all positive
  is compared on that outcome alone (and KL can then be negative, as Clarify's own tests show).
- GE (generalized entropy, alpha 2) is over the whole data set: it does not depend on the facet.

The arithmetic follows Clarify's order of operations, so values agree with Clarify's to the last bit
on the same arrays (tests check its published numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

INFINITY = math.inf
# Clarify's generalized entropy index uses alpha = 2 (half the squared coefficient of variation).
GE_ALPHA = 2.0
# The flip test's nearest-neighbour vote: 5 neighbours, or 1 when facet a has 9 rows or fewer.
FT_NEIGHBOURS = 5
FT_FEW_NEIGHBOURS = 1
FT_FEW_ROWS = 9
# Rows of facet d compared with facet a at once in the flip test, to bound the distance matrix's memory.
_FT_CHUNK_CELLS = 4_000_000


class MetricError(ValueError):
    """A metric undefined for this data (an empty facet, no group variable, ...).

    The analysis keeps the message as the metric's ``error`` and writes ``"value": null``.
    """


def divide(numerator: float, denominator: float) -> float:
    """Clarify's ratio: 0/0 is 0, x/0 is +/-infinity by x's sign, otherwise the quotient."""
    if denominator == 0:
        if numerator == 0:
            return 0.0
        return -INFINITY if numerator < 0 else INFINITY
    return float(numerator / denominator)


# -- selecting rows ----------------------------------------------------------------------------------
def select_values(column: Any, values: list[Any] | tuple[Any, ...]) -> np.ndarray:
    """Rows whose value equals one of ``values``: a categorical facet or label."""
    data = np.asarray(column, dtype=object) if not isinstance(column, np.ndarray) else column
    selected = np.zeros(len(data), dtype=bool)
    for value in values:
        selected |= np.asarray(data == value, dtype=bool)
    return selected


def select_interval(column: Any, lower: float, upper: float) -> np.ndarray:
    """Rows with ``lower < value <= upper``: a continuous facet or label above its threshold.

    Clarify closes the interval at the data's maximum (``(threshold, max]``), which every value
    meets, so this is ``value > threshold``; missing values (NaN) are in no interval.
    """
    data = np.asarray(column, dtype=float)
    with np.errstate(invalid="ignore"):
        return (data > lower) & (data <= upper)


def labels_from_probabilities(scores: Any, threshold: float) -> np.ndarray:
    """A binary model's scores as the labels 1 and 0: 1 where the score exceeds ``threshold``.

    Clarify's ``probability_threshold`` (0.5 by default) turns a probability into a predicted label
    this way; the labels are then compared with ``label_values_or_threshold`` like observed labels.
    """
    data = np.asarray(scores, dtype=float)
    with np.errstate(invalid="ignore"):
        return (data > threshold).astype(np.int64)


# -- inputs ------------------------------------------------------------------------------------------
def _flags(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one flag per row, not an array of shape {array.shape}")
    return array.astype(bool)


def _rows(facet: Any, *others: tuple[Any, str]) -> tuple[np.ndarray, ...]:
    facet_flags = _flags(facet, "facet")
    arrays = [facet_flags]
    for values, what in others:
        flags = _flags(values, what)
        if len(flags) != len(facet_flags):
            raise ValueError(f"{what} has {len(flags)} rows but facet has {len(facet_flags)}")
        arrays.append(flags)
    return tuple(arrays)


def _require_both_facets(facet: np.ndarray) -> None:
    if not facet.any():
        raise MetricError("the facet (the sensitive group) has no rows")
    if facet.all():
        raise MetricError("the rest of the data (facet a, outside the sensitive group) has no rows")


@dataclass(frozen=True)
class _Confusion:
    """One facet's confusion-matrix counts."""

    tp: int
    fp: int
    fn: int
    tn: int


def _confusion(rows: np.ndarray, label: np.ndarray, predicted: np.ndarray) -> _Confusion:
    label, predicted = label[rows], predicted[rows]
    return _Confusion(
        tp=int(np.count_nonzero(label & predicted)), fp=int(np.count_nonzero(~label & predicted)),
        fn=int(np.count_nonzero(label & ~predicted)), tn=int(np.count_nonzero(~label & ~predicted)),
    )


def _difference(advantaged: float, disadvantaged: float) -> float:
    """``advantaged - disadvantaged``, 0 when both are +infinity (Clarify's rule for inf - inf)."""
    if advantaged == disadvantaged == INFINITY:
        return 0.0
    return advantaged - disadvantaged


# -- pre-training metrics ----------------------------------------------------------------------------
def ci(facet: Any) -> float:
    """Class imbalance: (n_a - n_d) / n, in [-1, 1]; positive when the facet is under-represented."""
    (facet,) = _rows(facet)
    _require_both_facets(facet)
    n_d = int(np.count_nonzero(facet))
    n_a = len(facet) - n_d
    return float(n_a - n_d) / (n_a + n_d)


def dpl(facet: Any, label: Any) -> float:
    """Difference in proportions of labels: q_a - q_d, each facet's share of positive labels."""
    facet, label = _rows(facet, (label, "label"))
    return _proportion_difference(facet, label)


def _proportion_difference(facet: np.ndarray, outcome: np.ndarray) -> float:
    _require_both_facets(facet)
    n_d = int(np.count_nonzero(facet))
    n_a = len(facet) - n_d
    q_a = int(np.count_nonzero(outcome & ~facet)) / n_a
    q_d = int(np.count_nonzero(outcome & facet)) / n_d
    return q_a - q_d


def _label_distributions(facet: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """P_a and P_d over the outcomes (negative, positive) present in both facets."""
    label_a, label_d = label[~facet], label[facet]
    if label_a.size == 0 or label_d.size == 0:
        raise MetricError("no outcome occurs in both facets: one of them has no rows")
    positive_a, positive_d = int(np.count_nonzero(label_a)), int(np.count_nonzero(label_d))
    p_a = np.array([(label_a.size - positive_a) / label_a.size, positive_a / label_a.size])
    p_d = np.array([(label_d.size - positive_d) / label_d.size, positive_d / label_d.size])
    shared = (p_a > 0) & (p_d > 0)
    if not shared.any():
        raise MetricError("no outcome occurs in both facets")
    return p_a[shared], p_d[shared]


def kl(facet: Any, label: Any) -> float:
    """Kullback-Leibler divergence of facet d's label distribution from facet a's: sum P_a log(P_a / P_d)."""
    facet, label = _rows(facet, (label, "label"))
    p_a, p_d = _label_distributions(facet, label)
    return float(np.sum(p_a * np.log(p_a / p_d)))


def js(facet: Any, label: Any) -> float:
    """Jensen-Shannon divergence: the mean KL of each facet's distribution from their average P."""
    facet, label = _rows(facet, (label, "label"))
    p_a, p_d = _label_distributions(facet, label)
    p = 1 / 2 * (p_a + p_d)
    return float(0.5 * (np.sum(p_a * np.log(p_a / p)) + np.sum(p_d * np.log(p_d / p))))


def _norm(facet: Any, label: Any, order: float) -> float:
    facet, label = _rows(facet, (label, "label"))
    p_a, p_d = _label_distributions(facet, label)
    return float(np.linalg.norm(p_a - p_d, order))


def lp(facet: Any, label: Any) -> float:
    """L-p norm (p = 2) of the difference between the facets' label distributions."""
    return _norm(facet, label, 2)


def tvd(facet: Any, label: Any) -> float:
    """Total variation distance: half the L1 norm of the difference between the label distributions."""
    return 0.5 * _norm(facet, label, 1)


def ks(facet: Any, label: Any) -> float:
    """Kolmogorov-Smirnov distance: the largest difference between the facets' label distributions."""
    return _norm(facet, label, np.inf)


def cdd(facet: Any, outcome: Any, group: Any) -> float:
    """Conditional demographic disparity of ``outcome`` (the labels for CDDL, the predictions for CDDPL).

    For each value of the group variable: DD = (facet d's share of the group's negative outcomes) -
    (facet d's share of its positive outcomes), 0 for a share of nothing; CDD is their mean weighted
    by the groups' sizes. Rows whose group is missing (None, NaN) belong to no group. Needs a group
    variable and both outcomes in the data.
    """
    if group is None or len(group) == 0:
        raise MetricError("the group variable is empty or not configured")
    facet, outcome = _rows(facet, (outcome, "outcome"))
    groups = np.asarray(group, dtype=object) if not isinstance(group, np.ndarray) else group
    if len(groups) != len(facet):
        raise ValueError(f"group has {len(groups)} rows but facet has {len(facet)}")
    if not outcome.any():
        raise MetricError("no positive outcome in the data")
    if outcome.all():
        raise MetricError("no negative outcome in the data")
    present = ~_missing(groups)
    codes = _group_codes(groups, present)
    size = int(codes.max()) + 1 if codes.size else 0

    def count(mask: np.ndarray) -> np.ndarray:
        return np.bincount(codes[mask[present]], minlength=size).astype(np.int64)

    counts = count(np.ones_like(facet)).astype(float)
    accepted, accepted_d = count(outcome), count(outcome & facet)
    rejected, rejected_d = count(~outcome), count(~outcome & facet)
    with np.errstate(invalid="ignore", divide="ignore"):
        share_accepted = np.where(accepted != 0, accepted_d / np.where(accepted != 0, accepted, 1), 0.0)
        share_rejected = np.where(rejected != 0, rejected_d / np.where(rejected != 0, rejected, 1), 0.0)
    disparity = share_rejected - share_accepted
    return divide(float(np.sum(counts * disparity)), float(np.sum(counts)))


def _missing(values: np.ndarray) -> np.ndarray:
    if values.dtype.kind == "f":
        return np.isnan(values)
    if values.dtype.kind != "O":
        return np.zeros(len(values), dtype=bool)
    return np.array([value is None or (isinstance(value, float) and math.isnan(value)) for value in values],
                    dtype=bool)


def _group_codes(groups: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Each present row's group as 0..k-1, groups in sorted order (Clarify's np.unique order)."""
    kept = groups[present]
    try:
        _, codes = np.unique(kept, return_inverse=True)
    except TypeError:  # values of several types (1 and "a") do not sort together: group by their text
        _, codes = np.unique(np.asarray([f"{type(value).__name__}:{value}" for value in kept]), return_inverse=True)
    return np.asarray(codes, dtype=np.int64).reshape(-1)


def cddl(facet: Any, label: Any, group: Any) -> float:
    """Conditional demographic disparity in labels: :func:`cdd` of the observed labels."""
    return cdd(facet, label, group)


# -- post-training metrics ---------------------------------------------------------------------------
def dppl(facet: Any, predicted: Any) -> float:
    """Difference in positive proportions in predicted labels: q'_a - q'_d."""
    facet, predicted = _rows(facet, (predicted, "predicted"))
    return _proportion_difference(facet, predicted)


def di(facet: Any, predicted: Any) -> float:
    """Disparate impact: q'_d / q'_a, 1 at parity; +infinity when only facet d gets positive predictions."""
    facet, predicted = _rows(facet, (predicted, "predicted"))
    _require_both_facets(facet)
    n_d = int(np.count_nonzero(facet))
    n_a = len(facet) - n_d
    q_a = int(np.count_nonzero(predicted & ~facet)) / n_a
    q_d = int(np.count_nonzero(predicted & facet)) / n_d
    return divide(q_d, q_a)


def _facet_confusions(facet: Any, label: Any, predicted: Any) -> tuple[_Confusion, _Confusion]:
    facet, label, predicted = _rows(facet, (label, "label"), (predicted, "predicted"))
    _require_both_facets(facet)
    return _confusion(~facet, label, predicted), _confusion(facet, label, predicted)


def dca(facet: Any, label: Any, predicted: Any) -> float:
    """Difference in conditional acceptance: c_a - c_d, c = observed positives / predicted positives.

    A facet with positive labels but no positive predictions has c = +infinity.
    """
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(a.tp + a.fn, a.tp + a.fp), divide(d.tp + d.fn, d.tp + d.fp))


def dcr(facet: Any, label: Any, predicted: Any) -> float:
    """Difference in conditional rejection: r_d - r_a, r = observed negatives / predicted negatives."""
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(d.tn + d.fp, d.tn + d.fn), divide(a.tn + a.fp, a.tn + a.fn))


def rd(facet: Any, label: Any, predicted: Any) -> float:
    """Recall difference: recall_a - recall_d, recall = TP / (TP + FN) (0 without positive labels)."""
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(a.tp, a.tp + a.fn), divide(d.tp, d.tp + d.fn))


def sd(facet: Any, label: Any, predicted: Any) -> float:
    """Specificity difference: specificity_d - specificity_a, specificity = TN / (TN + FP)."""
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(d.tn, d.tn + d.fp), divide(a.tn, a.tn + a.fp))


def dar(facet: Any, label: Any, predicted: Any) -> float:
    """Difference in acceptance rates: precision_a - precision_d, precision = TP / (TP + FP)."""
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(a.tp, a.tp + a.fp), divide(d.tp, d.tp + d.fp))


def drr(facet: Any, label: Any, predicted: Any) -> float:
    """Difference in rejection rates: TN_d / (TN_d + FN_d) - TN_a / (TN_a + FN_a)."""
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(d.tn, d.tn + d.fn), divide(a.tn, a.tn + a.fn))


def ad(facet: Any, label: Any, predicted: Any) -> float:
    """Accuracy difference: accuracy_a - accuracy_d."""
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(a.tp + a.tn, a.tp + a.tn + a.fp + a.fn), divide(d.tp + d.tn, d.tp + d.tn + d.fp + d.fn))


def te(facet: Any, label: Any, predicted: Any) -> float:
    """Treatment equality: FN_d / FP_d - FN_a / FP_a (a facet with false negatives but no false positives is +inf)."""
    a, d = _facet_confusions(facet, label, predicted)
    return _difference(divide(d.fn, d.fp), divide(a.fn, a.fp))


def cddpl(facet: Any, predicted: Any, group: Any) -> float:
    """Conditional demographic disparity in predicted labels: :func:`cdd` of the predictions."""
    return cdd(facet, predicted, group)


def ft(facet: Any, predicted: Any, features: Any) -> float:
    """Flip test: how facet d's predictions differ from what facet a's nearest rows were predicted.

    A k-nearest-neighbour vote (Euclidean distance over ``features``, k = 5, or 1 when facet a has 9
    rows or fewer) over facet a's predictions gives each row of facet d a counterfactual prediction;
    FT = (rows the model predicts positive but the vote negative - rows the model predicts negative
    but the vote positive) / n_d. Needs the features (not the facet, label or prediction columns) as
    numbers, not calls to the model: the model's predictions are ``predicted``. The vote is
    scikit-learn's ``KNeighborsClassifier``, as in Clarify, when scikit-learn is installed (the
    ``monitor`` extra has it); without it a numpy vote gives the same result except where several
    rows of facet a are at the same distance at the k-th place, where it takes them in row order.
    """
    facet, predicted = _rows(facet, (predicted, "predicted"))
    matrix = np.asarray(features)
    if matrix.ndim == 1:
        matrix = matrix.reshape(-1, 1)
    if matrix.ndim != 2 or matrix.shape[0] != len(facet):
        raise ValueError(f"features must be one row per facet flag ({len(facet)}), not shape {matrix.shape}")
    _require_both_facets(facet)
    if matrix.shape[1] == 0:
        raise MetricError("the flip test needs at least one feature besides the facet and the label")
    if matrix.dtype.kind not in "biuf":
        try:
            matrix = matrix.astype(float)
        except (TypeError, ValueError):
            raise MetricError("the flip test needs numeric features only") from None
    matrix = matrix.astype(float)
    if not np.isfinite(matrix).all():
        raise MetricError("the flip test needs features without missing or infinite values")
    rows_a, votes_a = matrix[~facet], predicted[~facet]
    rows_d, model_d = matrix[facet], predicted[facet]
    k = FT_NEIGHBOURS if len(rows_a) > FT_FEW_ROWS else FT_FEW_NEIGHBOURS
    counterfactual = _neighbour_vote(rows_a, votes_a, rows_d, min(k, len(rows_a)))
    flipped_up = int(np.count_nonzero(model_d & ~counterfactual))
    flipped_down = int(np.count_nonzero(~model_d & counterfactual))
    return divide(flipped_up - flipped_down, len(rows_d))


def _neighbour_vote(rows_a: np.ndarray, votes_a: np.ndarray, rows_d: np.ndarray, k: int) -> np.ndarray:
    """Each row of ``rows_d``'s majority vote among its ``k`` nearest rows of ``rows_a`` (Euclidean)."""
    try:
        from sklearn.neighbors import KNeighborsClassifier
    except ImportError:  # scikit-learn is optional here: the vote below differs only in how ties are broken
        pass
    else:
        # Clarify's own classifier, with its settings: which of several rows at the same distance are
        # the neighbours is decided inside scikit-learn's trees, so only it reproduces Clarify's ties
        knn = KNeighborsClassifier(n_neighbors=k, weights="uniform", algorithm="auto", leaf_size=30, p=2,
                                   metric="minkowski")
        knn.fit(rows_a, votes_a)
        return np.asarray(knn.predict(rows_d), dtype=bool)
    votes = np.empty(len(rows_d), dtype=bool)
    chunk = max(1, _FT_CHUNK_CELLS // (len(rows_a) * rows_a.shape[1]))
    for start in range(0, len(rows_d), chunk):
        block = rows_d[start:start + chunk]
        # exact squared differences, not the |x|^2 - 2xy + |y|^2 shortcut, whose rounding would break
        # the ties between duplicate rows
        distances = ((block[:, None, :] - rows_a[None, :, :]) ** 2).sum(axis=2)
        nearest = np.argsort(distances, axis=1, kind="stable")[:, :k]
        votes[start:start + chunk] = votes_a[nearest].sum(axis=1) * 2 > k
    return votes


def ge(label: Any, predicted: Any, alpha: float = GE_ALPHA) -> float:
    """Generalized entropy index of the benefits b = predicted - label + 1 (0, 1 or 2), over all rows.

    GE = sum((b / mean(b))^alpha - 1) / (n alpha (alpha - 1)); 0 when every row has the same benefit.
    Undefined for no rows, and when every prediction is a false negative (mean benefit 0).
    """
    if alpha in (0, 1):
        raise ValueError("the generalized entropy index is implemented for alpha other than 0 and 1")
    label_flags, predicted_flags = _rows(label, (predicted, "predicted"))
    n = len(label_flags)
    if n == 0:
        raise MetricError("the data set is empty")
    benefit = predicted_flags.astype(np.int64) - label_flags.astype(np.int64) + 1
    mean_benefit = benefit.mean()
    if mean_benefit == 0:
        raise MetricError("every prediction is a false negative: the mean benefit is 0")
    ratio = benefit / mean_benefit
    return float((ratio**alpha - 1).sum() / (n * alpha * (alpha - 1)))


# -- the registry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MetricInputs:
    """What the metrics read: the row flags, and the group variable and features where there are any."""

    facet: np.ndarray
    label: np.ndarray
    predicted: np.ndarray | None = None
    group: np.ndarray | None = None
    features: np.ndarray | None = None
    # why FT has no features, when the analysis knows (non-numeric columns); None: features are used
    features_error: str | None = None


@dataclass(frozen=True)
class Metric:
    """A bias metric: Clarify's short name, the description its analysis.json gives, how to compute it."""

    name: str
    description: str
    stage: str  # "pre_training" or "post_training"
    compute: Callable[[MetricInputs], float]


def _predicted(inputs: MetricInputs) -> np.ndarray:
    if inputs.predicted is None:
        raise ValueError("post-training metrics need the predicted labels")
    return inputs.predicted


def _ft(inputs: MetricInputs) -> float:
    if inputs.features_error is not None:
        raise MetricError(inputs.features_error)
    if inputs.features is None:
        raise MetricError("the flip test needs the feature columns")
    return ft(inputs.facet, _predicted(inputs), inputs.features)


# Descriptions are Clarify's, byte for byte ("Kullback-Liebler" included): they are data in analysis.json.
PRE_TRAINING_METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    Metric("CDDL", "Conditional Demographic Disparity in Labels (CDDL)", "pre_training",
           lambda i: cddl(i.facet, i.label, i.group)),
    Metric("CI", "Class Imbalance (CI)", "pre_training", lambda i: ci(i.facet)),
    Metric("DPL", "Difference in Positive Proportions in Labels (DPL)", "pre_training",
           lambda i: dpl(i.facet, i.label)),
    Metric("JS", "Jensen-Shannon Divergence (JS)", "pre_training", lambda i: js(i.facet, i.label)),
    Metric("KL", "Kullback-Liebler Divergence (KL)", "pre_training", lambda i: kl(i.facet, i.label)),
    Metric("KS", "Kolmogorov-Smirnov Distance (KS)", "pre_training", lambda i: ks(i.facet, i.label)),
    Metric("LP", "L-p Norm (LP)", "pre_training", lambda i: lp(i.facet, i.label)),
    Metric("TVD", "Total Variation Distance (TVD)", "pre_training", lambda i: tvd(i.facet, i.label)),
)}

POST_TRAINING_METRICS: dict[str, Metric] = {metric.name: metric for metric in (
    Metric("AD", "Accuracy Difference (AD)", "post_training", lambda i: ad(i.facet, i.label, _predicted(i))),
    Metric("CDDPL", "Conditional Demographic Disparity in Predicted Labels (CDDPL)", "post_training",
           lambda i: cddpl(i.facet, _predicted(i), i.group)),
    Metric("DAR", "Difference in Acceptance Rates (DAR)", "post_training",
           lambda i: dar(i.facet, i.label, _predicted(i))),
    Metric("DCA", "Difference in Conditional Acceptance (DCA)", "post_training",
           lambda i: dca(i.facet, i.label, _predicted(i))),
    Metric("DCR", "Difference in Conditional Rejection (DCR)", "post_training",
           lambda i: dcr(i.facet, i.label, _predicted(i))),
    Metric("DI", "Disparate Impact (DI)", "post_training", lambda i: di(i.facet, _predicted(i))),
    Metric("DPPL", "Difference in Positive Proportions in Predicted Labels (DPPL)", "post_training",
           lambda i: dppl(i.facet, _predicted(i))),
    Metric("DRR", "Difference in Rejection Rates (DRR)", "post_training",
           lambda i: drr(i.facet, i.label, _predicted(i))),
    Metric("FT", "Flip Test (FT)", "post_training", _ft),
    Metric("GE", "Generalized Entropy (GE)", "post_training", lambda i: ge(i.label, _predicted(i))),
    Metric("RD", "Recall Difference (RD)", "post_training", lambda i: rd(i.facet, i.label, _predicted(i))),
    Metric("SD", "Specificity Difference (SD)", "post_training", lambda i: sd(i.facet, i.label, _predicted(i))),
    Metric("TE", "Treatment Equality (TE)", "post_training", lambda i: te(i.facet, i.label, _predicted(i))),
)}

ALL_METRICS: dict[str, Metric] = {**PRE_TRAINING_METRICS, **POST_TRAINING_METRICS}


def compute_metrics(names: list[str] | tuple[str, ...], inputs: MetricInputs) -> dict[str, float | MetricError]:
    """Each named metric's value, or the :class:`MetricError` that leaves it undefined, in name order."""
    unknown = [name for name in names if name not in ALL_METRICS]
    if unknown:
        raise ValueError(f"unknown bias metrics {', '.join(unknown)}; known: {', '.join(sorted(ALL_METRICS))}")
    results: dict[str, float | MetricError] = {}
    for name in sorted(names):
        try:
            results[name] = float(ALL_METRICS[name].compute(inputs))
        except MetricError as error:
            results[name] = error
    return results
