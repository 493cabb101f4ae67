"""Model-quality metrics: ground-truth labels and a model's predictions -> SageMaker's ``statistics.json``.

The body has SageMaker's shape (its docs' "Model quality metrics" page and its SDK's test files):
``{"version": 0.0, "dataset": {"item_count": N, ...}, "<problem>_metrics": {...}}`` with each scalar
metric as ``{"value": v, "standard_deviation": s}``, in the order SageMaker writes them:

- ``BinaryClassification`` (``binary_classification_metrics``): ``confusion_matrix`` (actual label,
  then predicted label, then the count), recall, precision, accuracy, their
  ``*_best_constant_classifier``, the four rates, ``receiver_operating_characteristic_curve``,
  ``precision_recall_curve``, ``auc``, ``f0_5``/``f1``/``f2`` and their best-constant values;
- ``MulticlassClassification`` (``multiclass_classification_metrics``): ``confusion_matrix``,
  accuracy, ``weighted_recall``/``weighted_precision``/``weighted_f0_5``/``weighted_f1``/
  ``weighted_f2`` (per-class values weighted by the class's count among the labels) and the
  best-constant value of each;
- ``Regression`` (``regression_metrics``): mae, mse, rmse, r2.

Values are scikit-learn's for the same pairs (``zero_division=0``: a ratio with nothing to divide
is 0), computed here with numpy so the ``monitor`` extra does not need scikit-learn, in the order of
operations of Spark's evaluators, which SageMaker's container uses: F-scores from precision and
recall, weighted averages summed class by class. That reproduces the numbers of SageMaker's docs
examples to the last bit (scikit-learn's agree to rounding). Where SageMaker's own numbers show
another convention, its convention wins:

- ``true_negative_rate`` is ``1 - false_positive_rate`` and ``false_negative_rate`` is
  ``1 - true_positive_rate`` (the docs' 0.33333333333333337 and the violations example's
  0.8667953667953667 are those differences, not tn / negatives);
- the curves are Spark's (SageMaker's docs show 6 ROC and 5 PR points for 4 scores): ROC starts
  at (0, 0), has one point per distinct score from the highest down, and ends with (1, 1); PR
  starts at recall 0 with the precision of the first point. A rate whose class is absent is 0, so
  ``auc`` (the trapezoid area under that ROC curve, scikit-learn's ``roc_auc_score`` whenever both
  classes are present) is defined for one-class data too. Curves of more than
  ``CURVE_MAX_POINTS`` thresholds are thinned as Spark's ``numBins`` does (whole groups of
  neighbouring thresholds, each kept as its last point); ``auc`` is always computed on all of them;
- the binary best constant classifier always answers the positive class: that is what SageMaker's
  docs example shows (recall 1, precision = accuracy = the positive share, f1 0.4 for a share of
  0.25), and it is the constant answer with the best F-scores, as always-negative scores 0. For
  multiclass the constant answer is the most frequent label (the first in label order on a tie):
  it has the best accuracy and weighted metrics of any constant answer. (The docs' multiclass
  example, whose other numbers we reproduce exactly, answers its less frequent class of two, 406
  of 2096, which no "best" criterion picks; we keep the majority.)

Binary curves and ``auc`` need ``probabilities`` (the positive class's score, SageMaker's
``ProbabilityAttribute``); without them the three keys are left out rather than computed from the
0/1 predictions, so a file never presents a two-point curve as the model's ROC.

Standard deviations are SageMaker's rule: with at least ``STD_MIN_ITEMS`` (200) pairs, every metric
is computed again on ``STD_SAMPLES`` (5) random subsets of ``STD_FRACTION`` (80%) of the pairs,
drawn without replacement with ``seed``, and ``standard_deviation`` is the sample standard deviation
(ddof=1, as Spark's ``stddev``) of those values; below 200 it is the string ``"NaN"``, as SageMaker
writes it.

Labels are compared by value: ``1``, ``1.0``, ``"1"``, ``" 1.0 "`` and ``True`` are the same class,
keyed ``"1"`` in the confusion matrix; other text is a class as it is (stripped). Classes are
ordered numbers first (by value), then text. For ``BinaryClassification`` the positive class is
``positive_label`` when given, else ``1`` when present (also ``True``/``"1"``), else the larger
of the two labels in that order (``"yes"`` over ``"no"``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import numpy as np

PROBLEM_TYPES = ("BinaryClassification", "MulticlassClassification", "Regression")
METRICS_SECTIONS = {
    "BinaryClassification": "binary_classification_metrics",
    "MulticlassClassification": "multiclass_classification_metrics",
    "Regression": "regression_metrics",
}

STD_MIN_ITEMS = 200
STD_SAMPLES = 5
STD_FRACTION = 0.8
CURVE_MAX_POINTS = 1000

_F_BETAS = (("f0_5", 0.5), ("f1", 1.0), ("f2", 2.0))
_BINARY_ORDER = (
    "confusion_matrix", "recall", "precision", "accuracy", "recall_best_constant_classifier",
    "precision_best_constant_classifier", "accuracy_best_constant_classifier", "true_positive_rate",
    "true_negative_rate", "false_positive_rate", "false_negative_rate", "receiver_operating_characteristic_curve",
    "precision_recall_curve", "auc", "f0_5", "f1", "f2", "f0_5_best_constant_classifier",
    "f1_best_constant_classifier", "f2_best_constant_classifier",
)


def model_quality_statistics(
    problem_type: str,
    labels: Sequence[Any] | np.ndarray,
    predictions: Sequence[Any] | np.ndarray,
    probabilities: Sequence[float] | np.ndarray | None = None,
    *,
    positive_label: Any = None,
    seed: int = 0,
    dataset_name: str | None = None,
    evaluation_time: datetime | None = None,
) -> dict[str, Any]:
    """The ``statistics.json`` body of ``problem_type`` for these ground-truth ``labels`` and ``predictions``.

    ``probabilities`` (BinaryClassification: the positive class's probability per pair) adds the
    ROC and PR curves and ``auc``; MulticlassClassification checks and ignores them, as SageMaker
    computes no probability metric for it; Regression refuses them. ``dataset`` holds
    ``item_count`` (all that SageMaker's own files hold there), then ``evaluation_time``
    (``evaluation_time`` or now, UTC) and, when given, ``name`` (``dataset_name``, which also
    prefixes error messages).

    Raises ValueError for an unknown problem type, no pairs, lengths that differ, missing values,
    labels that do not fit the problem type, or probabilities outside [0, 1].
    """
    where = f"{dataset_name}: " if dataset_name else ""
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"{where}unknown problem type {problem_type!r}; expected one of {', '.join(PROBLEM_TYPES)}")
    actual = _column(labels, "labels", where)
    predicted = _column(predictions, "predictions", where)
    if actual.size == 0:
        raise ValueError(f"{where}no labels and predictions to evaluate")
    if predicted.size != actual.size:
        raise ValueError(f"{where}{actual.size} labels but {predicted.size} predictions; they must pair up")
    n = actual.size

    if problem_type == "Regression":
        if probabilities is not None:
            raise ValueError(f"{where}Regression takes no probabilities")
        metrics = _regression(_numbers(actual, "labels", where), _numbers(predicted, "predictions", where), seed)
    else:
        classes, actual_codes, predicted_codes = _encode(actual, predicted, where)
        scores = None if probabilities is None else _probabilities(
            probabilities, n, where, allow_matrix=problem_type == "MulticlassClassification")
        if problem_type == "BinaryClassification":
            metrics = _binary(classes, actual_codes, predicted_codes, scores, positive_label, seed, where)
        else:
            metrics = _multiclass(classes, actual_codes, predicted_codes, seed)

    moment = (evaluation_time or datetime.now(UTC)).astimezone(UTC)
    dataset: dict[str, Any] = {"item_count": n, "evaluation_time": moment.strftime("%Y-%m-%dT%H:%M:%SZ")}
    if dataset_name:
        dataset["name"] = dataset_name
    return {"version": 0.0, "dataset": dataset, METRICS_SECTIONS[problem_type]: metrics}


def problem_type_of(statistics: dict[str, Any]) -> str:
    """The problem type whose metrics section ``statistics`` holds (ValueError when none or several)."""
    found = [problem for problem, section in METRICS_SECTIONS.items()
             if isinstance(statistics, dict) and isinstance(statistics.get(section), dict)]
    if len(found) != 1:
        sections = ", ".join(METRICS_SECTIONS.values())
        raise ValueError(f"model-quality statistics need exactly one of {sections}; found {len(found)}")
    return found[0]


def metric_values(statistics: dict[str, Any]) -> dict[str, float]:
    """``{metric name: value}`` of the numeric metrics, best-constant ones included, as SageMaker publishes them.

    The names are the statistics' own (``accuracy``, ``f0_5``, ``true_positive_rate``,
    ``weighted_f1``, ``rmse``, ...): the ones SageMaker puts in CloudWatch's
    ``aws/sagemaker/Endpoints/model-metrics`` (``aws/sagemaker/ModelMonitoring/model-metrics`` for
    batch transforms), as its SDK's model-quality dashboard queries them. The confusion matrix and
    the curves are not single numbers and are left out.
    """
    metrics = statistics[METRICS_SECTIONS[problem_type_of(statistics)]]
    return {name: float(metric["value"]) for name, metric in metrics.items()
            if isinstance(metric, dict) and is_number(metric.get("value"))}


def is_number(value: Any) -> bool:
    """A finite JSON number (booleans are not numbers here)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def java_double(value: float) -> str:
    """``value`` as Java's ``Double.toString`` writes it (SageMaker's Scala code writes its messages so).

    The shortest digits that read back as ``value``, in decimal form from 10^-3 up to 10^7 and
    in Java's scientific form outside it (``1.0E-5``, ``1.23456789E7``); ``NaN``, ``Infinity``.
    """
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if value == 0:
        return "-0.0" if math.copysign(1.0, value) < 0 else "0.0"
    if 1e-3 <= abs(value) < 1e7:
        return repr(float(value))  # Python's repr is decimal throughout this range
    sign, digits, exponent = Decimal(repr(float(value))).as_tuple()
    power = int(exponent) + len(digits) - 1  # the exponent of the first digit; a finite Decimal's is an int
    text = "".join(map(str, digits)).rstrip("0") or "0"
    return f"{'-' if sign else ''}{text[0]}.{text[1:] or '0'}E{power}"


# -- inputs ------------------------------------------------------------------------------------------
def _column(values: Any, what: str, where: str) -> np.ndarray:
    column = np.asarray(values)
    if column.dtype.kind in "US" and not isinstance(values, np.ndarray):
        column = np.asarray(values, dtype=object)  # numpy would turn [True, "a", 1.0] into "True", "a", "1.0"
    if column.ndim == 2 and column.shape[1] == 1:
        column = column[:, 0]  # a one-column frame or matrix
    if column.ndim != 1:
        raise ValueError(f"{where}{what} must be one value per pair, not an array of shape {column.shape}")
    return column


def _numbers(values: np.ndarray, what: str, where: str) -> np.ndarray:
    try:
        numbers = values.astype(float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}Regression {what} must be numbers ({error})") from error
    if not np.all(np.isfinite(numbers)):
        raise ValueError(f"{where}{what} has {int(np.count_nonzero(~np.isfinite(numbers)))} missing or infinite values")
    return numbers


def _probabilities(values: Any, n: int, where: str, *, allow_matrix: bool) -> np.ndarray:
    try:
        scores = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}probabilities must be numbers ({error})") from error
    if scores.ndim == 2 and scores.shape[1] == 1:
        scores = scores[:, 0]
    if scores.ndim != 1 and not (allow_matrix and scores.ndim == 2):
        raise ValueError(f"{where}probabilities must be one number per pair (the positive class's), "
                         f"not an array of shape {scores.shape}")
    if scores.shape[0] != n:
        raise ValueError(f"{where}{n} labels but {scores.shape[0]} probabilities; they must pair up")
    if not np.all(np.isfinite(scores)):
        raise ValueError(f"{where}probabilities have missing or infinite values")
    if scores.size and (scores.min() < 0 or scores.max() > 1):
        raise ValueError(f"{where}probabilities must lie in [0, 1]; found values from {scores.min()} to {scores.max()}")
    return scores


class _MissingLabel(ValueError):
    pass


def _label_key(value: Any) -> str:
    """The class a label or prediction names, as the text the confusion matrix keys it by."""
    if isinstance(value, bool | np.bool_):
        return "1" if value else "0"
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if not math.isfinite(number):
            raise _MissingLabel(repr(value))
        return str(int(number)) if number.is_integer() else repr(number)
    if isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            if not text:
                raise _MissingLabel(repr(value)) from None
            return text
        if math.isnan(number):
            raise _MissingLabel(repr(value))
        return text if math.isinf(number) else _label_key(number)
    if value is None:
        raise _MissingLabel("None")
    raise ValueError(f"{value!r} is not a class label")


def _local_keys(values: np.ndarray, what: str, where: str) -> tuple[list[str], np.ndarray]:
    """The distinct class keys among ``values`` and, per value, the index of its key."""
    try:
        if values.dtype.kind in "biuf":  # whole numeric arrays: one key per distinct value
            distinct, inverse = np.unique(values, return_inverse=True)
            return [_label_key(v) for v in distinct.tolist()], inverse.reshape(-1)
        keys: list[str] = []
        positions: dict[str, int] = {}
        seen: dict[Any, int] = {}
        codes = np.empty(values.size, dtype=np.intp)
        for i, value in enumerate(values.tolist()):
            code = seen.get(value)
            if code is None:
                key = _label_key(value)
                code = positions.setdefault(key, len(keys))
                if code == len(keys):
                    keys.append(key)
                seen[value] = code
            codes[i] = code
        return keys, codes
    except _MissingLabel as error:
        raise ValueError(f"{where}{what} has a missing value ({error}); every pair needs both") from None
    except TypeError as error:  # unhashable values (lists, dicts)
        raise ValueError(f"{where}{what} must be single values ({error})") from None


def _class_order(key: str) -> tuple[int, float, str]:
    try:
        return (0, float(key), key)
    except ValueError:
        return (1, 0.0, key)


def _encode(actual: np.ndarray, predicted: np.ndarray, where: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """The classes of both columns in order, and each column as indices into them."""
    actual_keys, actual_local = _local_keys(actual, "labels", where)
    predicted_keys, predicted_local = _local_keys(predicted, "predictions", where)
    classes = sorted(set(actual_keys) | set(predicted_keys), key=_class_order)
    index = {key: i for i, key in enumerate(classes)}
    actual_codes = np.array([index[k] for k in actual_keys], dtype=np.intp)[actual_local]
    predicted_codes = np.array([index[k] for k in predicted_keys], dtype=np.intp)[predicted_local]
    return classes, actual_codes, predicted_codes


# -- standard deviations -----------------------------------------------------------------------------
def _with_deviations(values: dict[str, float], compute: Callable[[np.ndarray], dict[str, float]], n: int,
                     seed: int) -> dict[str, dict[str, Any]]:
    """Each value with SageMaker's standard deviation: over 5 subsets of 80% of the pairs, from 200 pairs up."""
    deviations: dict[str, Any]
    if n < STD_MIN_ITEMS:
        deviations = dict.fromkeys(values, "NaN")
    else:
        rng = np.random.default_rng(seed)
        size = int(n * STD_FRACTION)
        samples = [compute(rng.choice(n, size=size, replace=False)) for _ in range(STD_SAMPLES)]
        deviations = {name: float(np.std([sample[name] for sample in samples], ddof=1)) for name in values}
    return {name: {"value": float(value), "standard_deviation": deviations[name]} for name, value in values.items()}


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else 0.0


def _f_beta(precision: float, recall: float, beta: float) -> float:
    # from precision and recall, as Spark does, so the values are SageMaker's to the last bit (scikit-learn's
    # from counts agree to rounding); 0 when both are 0
    weight = beta * beta
    return (1 + weight) * precision * recall / (weight * precision + recall) if precision + recall else 0.0


# -- binary ------------------------------------------------------------------------------------------
def _positive_class(classes: list[str], positive_label: Any, where: str) -> str:
    if positive_label is not None:
        try:
            positive = _label_key(positive_label)
        except _MissingLabel:
            raise ValueError(f"{where}positive_label {positive_label!r} is not a class label") from None
        if positive not in classes and len(classes) >= 2:
            raise ValueError(f"{where}positive_label {positive_label!r} is not among the labels "
                             f"({', '.join(classes)})")
        return positive
    if "1" in classes:
        return "1"
    if classes == ["0"]:
        return "1"  # 0/1 data where nothing was positive
    return classes[-1]


def _binary(classes: list[str], actual_codes: np.ndarray, predicted_codes: np.ndarray, scores: np.ndarray | None,
            positive_label: Any, seed: int, where: str) -> dict[str, Any]:
    if len(classes) > 2:
        raise ValueError(f"{where}BinaryClassification takes two classes, found {len(classes)} "
                         f"({', '.join(classes[:10])}); use MulticlassClassification")
    positive = _positive_class(classes, positive_label, where)
    if positive not in classes:
        classes = sorted([*classes, positive], key=_class_order)
        actual_codes = actual_codes + (positive == classes[0])  # the present class moved up one place
        predicted_codes = predicted_codes + (positive == classes[0])
    positive_code = classes.index(positive)
    actual = actual_codes == positive_code
    predicted = predicted_codes == positive_code

    def compute(rows: np.ndarray) -> dict[str, float]:
        return _binary_values(actual[rows], predicted[rows], None if scores is None else scores[rows])

    everything = np.arange(actual.size)
    metrics = _with_deviations(compute(everything), compute, actual.size, seed)
    matrix = _confusion(actual_codes, predicted_codes, classes)
    curves: dict[str, Any] = {}
    if scores is not None:
        false_rates, true_rates, precisions, recalls = _curves(actual, scores)
        curves["receiver_operating_characteristic_curve"] = {
            "false_positive_rates": false_rates, "true_positive_rates": true_rates}
        curves["precision_recall_curve"] = {"precisions": precisions, "recalls": recalls}
    body: dict[str, Any] = {}
    for name in _BINARY_ORDER:
        if name == "confusion_matrix":
            body[name] = matrix
        elif name in curves:
            body[name] = curves[name]
        elif name in metrics:
            body[name] = metrics[name]
    return body


def _binary_values(actual: np.ndarray, predicted: np.ndarray, scores: np.ndarray | None) -> dict[str, float]:
    hits = int(np.count_nonzero(actual & predicted))
    false_alarms = int(np.count_nonzero(predicted & ~actual))
    misses = int(np.count_nonzero(actual & ~predicted))
    n = actual.size
    positives = hits + misses
    recall = _ratio(hits, positives)
    precision = _ratio(hits, hits + false_alarms)
    # always answering positive: every positive found, every negative a false alarm
    constant_recall = _ratio(positives, positives)
    constant_precision = _ratio(positives, n)
    false_positive_rate = _ratio(false_alarms, n - positives)
    values = {
        "recall": recall,
        "precision": precision,
        "accuracy": _ratio(n - false_alarms - misses, n),
        "recall_best_constant_classifier": constant_recall,
        "precision_best_constant_classifier": constant_precision,
        "accuracy_best_constant_classifier": constant_precision,
        "true_positive_rate": recall,
        "true_negative_rate": 1.0 - false_positive_rate,
        "false_positive_rate": false_positive_rate,
        "false_negative_rate": 1.0 - recall,
    }
    if scores is not None:
        false_rates, true_rates = _roc(*_threshold_counts(actual, scores))
        values["auc"] = float(np.sum(np.diff(false_rates) * (true_rates[1:] + true_rates[:-1])) / 2)
    for name, beta in _F_BETAS:
        values[name] = _f_beta(precision, recall, beta)
    for name, beta in _F_BETAS:
        values[f"{name}_best_constant_classifier"] = _f_beta(constant_precision, constant_recall, beta)
    return values


def _threshold_counts(actual: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positives and negatives scored at or above each distinct score, from the highest score down."""
    order = np.argsort(-scores, kind="mergesort")
    ranked = scores[order]
    ends = np.r_[np.flatnonzero(np.diff(ranked)), ranked.size - 1]  # the last pair of each run of one score
    hits = np.cumsum(actual[order])[ends].astype(float)
    return hits, ends + 1 - hits


def _roc(hits: np.ndarray, false_alarms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    positives, negatives = hits[-1], false_alarms[-1]
    true_rates = hits / positives if positives else np.zeros_like(hits)
    false_rates = false_alarms / negatives if negatives else np.zeros_like(false_alarms)
    return np.r_[0.0, false_rates, 1.0], np.r_[0.0, true_rates, 1.0]


def _curves(actual: np.ndarray, scores: np.ndarray) -> tuple[list[float], list[float], list[float], list[float]]:
    hits, false_alarms = _threshold_counts(actual, scores)
    if hits.size > CURVE_MAX_POINTS:
        group = math.ceil(hits.size / CURVE_MAX_POINTS)
        kept = np.unique(np.r_[np.arange(group - 1, hits.size, group), hits.size - 1])
        hits, false_alarms = hits[kept], false_alarms[kept]
    false_rates, true_rates = _roc(hits, false_alarms)
    precisions = hits / (hits + false_alarms)  # every threshold admits at least one pair
    recalls = true_rates[1:-1]
    return (false_rates.tolist(), true_rates.tolist(), np.r_[precisions[0], precisions].tolist(),
            np.r_[0.0, recalls].tolist())


def _confusion(actual_codes: np.ndarray, predicted_codes: np.ndarray, classes: list[str]) -> dict[str, dict[str, int]]:
    k = len(classes)
    counts = np.bincount(actual_codes * k + predicted_codes, minlength=k * k).reshape(k, k)
    return {actual: {predicted: int(counts[i, j]) for j, predicted in enumerate(classes)}
            for i, actual in enumerate(classes)}


# -- multiclass --------------------------------------------------------------------------------------
def _multiclass(classes: list[str], actual_codes: np.ndarray, predicted_codes: np.ndarray,
                seed: int) -> dict[str, Any]:
    k = len(classes)

    def compute(rows: np.ndarray) -> dict[str, float]:
        counts = np.bincount(actual_codes[rows] * k + predicted_codes[rows], minlength=k * k).reshape(k, k)
        return _multiclass_values(counts)

    metrics = _with_deviations(compute(np.arange(actual_codes.size)), compute, actual_codes.size, seed)
    return {"confusion_matrix": _confusion(actual_codes, predicted_codes, classes), **metrics}


def _multiclass_values(counts: np.ndarray) -> dict[str, float]:
    n = float(counts.sum())
    support = counts.sum(axis=1).astype(float)
    hits = np.diag(counts).astype(float)
    values = {"accuracy": float(hits.sum()) / n, **_weighted(hits, support, counts.sum(axis=0).astype(float), n)}
    majority = int(np.argmax(support))  # argmax keeps the first of equal counts
    constant_hits = np.zeros_like(hits)
    constant_hits[majority] = support[majority]
    constant_answers = np.zeros_like(hits)
    constant_answers[majority] = n
    values["accuracy_best_constant_classifier"] = float(support[majority]) / n
    for name, value in _weighted(constant_hits, support, constant_answers, n).items():
        values[f"{name}_best_constant_classifier"] = value
    return values


def _weighted(hits: np.ndarray, support: np.ndarray, answered: np.ndarray, n: float) -> dict[str, float]:
    """Per-class recall, precision and F-scores averaged with the classes' shares of the labels as weights.

    Term by term in class order, as Spark's MulticlassMetrics sums them (SageMaker's docs example
    comes out to the last bit).
    """
    counts = support.tolist()
    recalls = [_ratio(h, c) for h, c in zip(hits.tolist(), counts, strict=True)]
    precisions = [_ratio(h, a) for h, a in zip(hits.tolist(), answered.tolist(), strict=True)]

    def average(per_class: list[float]) -> float:
        return sum(value * count / n for value, count in zip(per_class, counts, strict=True))

    values = {"weighted_recall": average(recalls), "weighted_precision": average(precisions)}
    for name, beta in _F_BETAS:
        values[f"weighted_{name}"] = average([_f_beta(p, r, beta) for p, r in zip(precisions, recalls, strict=True)])
    return values


# -- regression --------------------------------------------------------------------------------------
def _regression(actual: np.ndarray, predicted: np.ndarray, seed: int) -> dict[str, Any]:
    def compute(rows: np.ndarray) -> dict[str, float]:
        return _regression_values(actual[rows], predicted[rows])

    return _with_deviations(compute(np.arange(actual.size)), compute, actual.size, seed)


def _regression_values(actual: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    errors = actual - predicted
    mse = float(np.mean(errors * errors))
    residual = float(np.sum(errors * errors))
    total = float(np.sum((actual - actual.mean()) ** 2))
    # scikit-learn's r2_score for constant labels: 1 when predicted exactly, else 0 (never -inf or NaN)
    r2 = 1.0 - residual / total if total else (1.0 if residual == 0 else 0.0)
    return {"mae": float(np.mean(np.abs(errors))), "mse": mse, "rmse": math.sqrt(mse), "r2": r2}
