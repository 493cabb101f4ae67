"""Feature attributions as SageMaker Clarify computes them: SHAP values against a baseline, aggregated per feature.

**The configuration** (:func:`load_shap_config`) is Clarify's analysis configuration (the job's
``ConfigUri``): ``methods.shap`` with ``baseline`` (rows of feature values, or the URI of a file of
them that the caller reads and hands back with :meth:`ShapConfig.with_baseline`), ``num_samples``,
``agg_method`` (``mean_abs``, ``median``, ``mean_sq``), ``use_logit``, ``save_local_shap_values`` and
``seed``; ``headers`` less ``label`` name the features (the rule of ``common/features.py``, which
reads the captured rows in that order).

**The values** (:func:`compute_attributions`, :func:`global_shap`) explain one output of the model,
a number per row (a score or a probability: what the monitoring job reads from the endpoint's
answer), relative to the baseline rows: feature ``j``'s value for row ``x`` is the Shapley value of
the game ``v(S) = mean over baseline rows b of f(x_S, b_rest)`` (Kernel SHAP's "interventional"
game: features outside ``S`` take the baseline's values). With ``use_logit`` the game is played on
``logit(f)``, so the values are in log-odds. Three ways to the same numbers:

- ``predict`` only: **Kernel SHAP** (``shap.KernelExplainer``, the baseline as background,
  ``nsamples = num_samples``), Clarify's own method and the only one that needs nothing but the
  model's answers: ``predict(rows) -> one number a row`` is the endpoint over HTTP (the monitoring
  job's ``ModelClient.predict``). It calls ``predict`` once per explained row with
  ``num_samples x len(baseline)`` synthetic rows, so it is slow; an estimate unless ``num_samples``
  reaches ``2**m - 2`` (every coalition of ``m`` features), where it is exact.
- ``model=`` a fitted tree model (scikit-learn's ``DecisionTree*``, ``RandomForest*``,
  ``ExtraTrees*``, ``GradientBoosting*``, ``HistGradientBoosting*``, or what else ``shap.TreeExplainer``
  reads: XGBoost, LightGBM): **interventional TreeSHAP** with the baseline as background data, the
  exact value of the same game, in milliseconds instead of model calls.
- ``model=`` a fitted ``sklearn.linear_model`` estimator: the **exact linear explainer**
  (``shap.LinearExplainer``, baseline as an independent masker): ``coef_j * (x_j - mean(baseline_j))``.

What the model object explains is what its endpoint answers: ``predict`` of a regressor, the
probability of the second class (``predict_proba(X)[:, 1]``) of a binary classifier (``use_logit``:
its log-odds). A fast path applies where the model's own additive output *is* that function, so
the game is the same: a regressor without ``use_logit``; a classifier whose trees hold probabilities
(random forests, extra trees, decision trees) without ``use_logit``; a classifier whose trees or
linear function give log-odds (gradient boosting, ``LogisticRegression``) with ``use_logit`` and
one baseline row (Kernel SHAP's logit link takes the logit of the mean over the baseline rows,
which equals the mean of the logits for one row only; Clarify's usual baseline is one row).
shap's TreeSHAP ``model_output="probability"`` is not used: it is additive but not the Shapley value
of the probability (0.06 to 0.18 off an exhaustive enumeration on a small gradient-boosting case).
Every fast path's result is checked for additivity (each row's values plus the expected value give
the output explained, to 1e-5): where another combination is asked for, or the check fails (a
gradient-boosting classifier without ``use_logit``; shap's HistGradientBoostingRegressor support,
which misses some rows), the values come from Kernel SHAP instead, on ``predict`` when given, else
on the model object's own output, with a warning in the log; :attr:`Attributions.method` says which
ran. When both ``predict`` and ``model`` are given, the model's answers for the baseline rows must
be ``predict``'s (rtol 1e-4): a model object that is not the endpoint's would explain another model.

The fast paths' keys in ``analysis.json`` are still ``kernel_shap``: they are the values Kernel SHAP
estimates, and SageMaker's drift check reads that key.

**Global values** aggregate the per-row values per feature by ``agg_method``, as Clarify's docs define
them: ``mean_abs`` the mean of absolute values, ``median`` the median of the (signed) values,
``mean_sq`` the mean of squared values. :func:`explainability_analysis` writes Clarify's
``analysis.json``.

Not reproduced from Clarify: a baseline computed by clustering the data (``num_clusters``, or no
``baseline`` at all), text and image features (``text_config``, ``image_config``), and
``features_to_explain``: each is refused with a ValueError naming the field. Kernel SHAP runs with
``l1_reg=False`` (shap's default selects 10 features when sampling and gives the others 0; a
monitored ranking of every feature needs every feature's value).

``shap`` is the ``explain`` extra; it is imported on first use, so loading a configuration and
writing ``analysis.json`` do not need it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from moorage.monitor.common.features import feature_names

log = logging.getLogger(__name__)

AGG_METHODS = ("mean_abs", "median", "mean_sq")
DEFAULT_AGG_METHOD = "mean_abs"  # the SageMaker SDK's SHAPConfig default
ANALYSIS_VERSION = "1.0"
METHOD_KEY = "kernel_shap"  # analysis.json's key for SHAP values, whichever way they were computed
DEFAULT_LABEL = "label0"  # Clarify's placeholder when the configuration has no label_headers
ADDITIVITY_TOLERANCE = 1e-5  # relative to the larger of 1 and the largest output
AGREEMENT_RTOL = 1e-4  # model object vs predict on the baseline: the endpoint's text may round
MAX_PROBED_ROWS = 1000  # baseline rows tried one by one to name the ones predict fails on

_UNSUPPORTED = {
    "num_clusters": "a baseline computed by clustering is not supported: give methods.shap.baseline rows",
    "text_config": "text features are not supported",
    "image_config": "image features are not supported",
    "features_to_explain": "explaining a subset of the features is not supported",
}

Predict = Callable[[np.ndarray], np.ndarray]


class PredictError(RuntimeError):
    """``predict`` raised: which rows it was called on, and its own message."""


@dataclass(frozen=True)
class ShapConfig:
    """Clarify's ``methods.shap`` settings with the feature names (``headers`` less ``label``)."""

    features: tuple[str, ...]
    baseline: np.ndarray | None  # (rows, features) floats; None while baseline_uri is unresolved
    baseline_uri: str | None = None
    num_samples: int | None = None  # None: shap's "auto" (2 * features + 2048)
    agg_method: str = DEFAULT_AGG_METHOD
    use_logit: bool = False
    save_local_shap_values: bool = False
    seed: int | None = None
    label: str | int | None = None
    label_headers: tuple[str, ...] = ()

    def with_baseline(self, rows: Any) -> ShapConfig:
        """This configuration with baseline rows (those of ``baseline_uri``, read by the caller)."""
        baseline = _baseline_rows(rows, "baseline")
        features = self.features or tuple(str(i) for i in range(baseline.shape[1]))
        _check_width(baseline, features, "baseline")
        return replace(self, baseline=baseline, features=features)


@dataclass(frozen=True)
class Attributions:
    """The SHAP values of some rows: per row, per feature, and aggregated per feature."""

    method: str  # "kernel", "tree" or "linear"
    features: tuple[str, ...]
    local_values: np.ndarray  # (rows, features)
    expected_value: float  # the mean output over the baseline (log-odds with use_logit)
    global_values: dict[str, float]


# -- configuration -----------------------------------------------------------------------------------
def load_shap_config(doc: Mapping[str, Any]) -> ShapConfig:
    """The SHAP settings of Clarify's analysis configuration (ValueError naming the field at fault).

    ``methods.shap.baseline`` is rows (lists of numbers, or of numeric strings as a CSV file gives
    them; JSON Lines rows as ``{"features": [...]}``) or a URI string, kept in ``baseline_uri`` for the
    caller to read (this module reads no files). Each row has the features only, one value per name
    of ``headers`` less ``label``; without ``headers`` the features are named ``"0"``, ``"1"``, ...
    ``num_samples`` must be a positive integer when present; ``agg_method`` defaults to ``mean_abs``.
    """
    if not isinstance(doc, Mapping):
        raise ValueError(f"the analysis configuration should be a JSON object, not {type(doc).__name__}")
    methods = doc.get("methods")
    if not isinstance(methods, Mapping):
        raise ValueError("methods: the analysis configuration has no methods object")
    shap_doc = methods.get("shap")
    if not isinstance(shap_doc, Mapping):
        raise ValueError("methods.shap: the analysis configuration has no SHAP section")
    for name, why in _UNSUPPORTED.items():
        if shap_doc.get(name) is not None:
            raise ValueError(f"methods.shap.{name}: {why}")

    headers = doc.get("headers")
    if headers is not None and (not isinstance(headers, list) or not all(isinstance(h, str) for h in headers)):
        raise ValueError("headers: should be a list of feature names (strings)")
    label = doc.get("label")
    if label is not None and (isinstance(label, bool) or not isinstance(label, str | int)):
        raise ValueError(f"label: should be a header name or an index, not {label!r}")
    features = tuple(feature_names(doc)) if headers else ()
    if headers and len(set(features)) != len(features):
        raise ValueError("headers: the feature names are not unique")

    baseline, baseline_uri = None, None
    raw = shap_doc.get("baseline")
    if isinstance(raw, str):
        if not raw.strip():
            raise ValueError("methods.shap.baseline: an empty URI")
        baseline_uri = raw
    elif raw is None:
        raise ValueError("methods.shap.baseline: required (rows of feature values, or the URI of a file of them); "
                         "a baseline computed by clustering the data is not supported")
    else:
        baseline = _baseline_rows(raw, "methods.shap.baseline")
        if not features:
            features = tuple(str(i) for i in range(baseline.shape[1]))
        _check_width(baseline, features, "methods.shap.baseline")

    num_samples = shap_doc.get("num_samples")
    if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                    or num_samples < 1):
        raise ValueError(f"methods.shap.num_samples: should be a positive integer, not {num_samples!r}")
    agg_method = shap_doc.get("agg_method", DEFAULT_AGG_METHOD)
    if not isinstance(agg_method, str) or agg_method.lower() not in AGG_METHODS:
        raise ValueError(f"methods.shap.agg_method: {agg_method!r} is not one of {', '.join(AGG_METHODS)}")
    flags = {}
    for name in ("use_logit", "save_local_shap_values"):
        value = shap_doc.get(name, False)
        if not isinstance(value, bool):
            raise ValueError(f"methods.shap.{name}: should be true or false, not {value!r}")
        flags[name] = value
    seed = shap_doc.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"methods.shap.seed: should be an integer, not {seed!r}")
    predictor = doc.get("predictor")
    label_headers = predictor.get("label_headers") if isinstance(predictor, Mapping) else None
    if label_headers is not None and not isinstance(label_headers, list):
        raise ValueError("predictor.label_headers: should be a list of label names")
    return ShapConfig(
        features=features, baseline=baseline, baseline_uri=baseline_uri, num_samples=num_samples,
        agg_method=agg_method.lower(), use_logit=flags["use_logit"],
        save_local_shap_values=flags["save_local_shap_values"], seed=seed, label=label,
        label_headers=tuple(str(h) for h in label_headers or ()),
    )


def _baseline_rows(raw: Any, where: str) -> np.ndarray:
    if isinstance(raw, np.ndarray):
        rows: Sequence[Any] = raw.tolist() if raw.ndim == 2 else [raw.tolist()]
    elif isinstance(raw, Sequence) and not isinstance(raw, str | bytes):
        rows = raw
    else:
        raise ValueError(f"{where}: should be a list of rows, not {type(raw).__name__}")
    if len(rows) == 0:
        raise ValueError(f"{where}: needs at least one row")
    out: list[list[float]] = []
    for i, row in enumerate(rows):
        if isinstance(row, Mapping):  # a JSON Lines row: SageMaker's dense format
            row = row.get("features")
        if not isinstance(row, Sequence) or isinstance(row, str | bytes):
            raise ValueError(f"{where}[{i}]: should be a list of feature values")
        values = []
        for j, value in enumerate(row):
            try:
                if isinstance(value, bool):
                    raise ValueError
                values.append(float(value))
            except (TypeError, ValueError):
                raise ValueError(f"{where}[{i}][{j}]: {value!r} is not a number (categorical features must be "
                                 "encoded as the model takes them)") from None
        out.append(values)
    widths = {len(row) for row in out}
    if len(widths) != 1:
        raise ValueError(f"{where}: the rows have different numbers of values ({sorted(widths)})")
    if 0 in widths:
        raise ValueError(f"{where}: the rows are empty")
    return np.asarray(out, dtype=float)


def _check_width(rows: np.ndarray, features: Sequence[str], where: str) -> None:
    if rows.shape[1] != len(features):
        raise ValueError(f"{where}: rows have {rows.shape[1]} values but there are {len(features)} features "
                         f"({', '.join(features)}): a row holds the features only, without the label")


# -- values --------------------------------------------------------------------------------------------
def global_shap(config: ShapConfig, rows: Any, predict: Predict | None = None, *, model: Any = None,
                seed: int | None = None) -> dict[str, float]:
    """``{feature: global SHAP value}`` of ``rows``, in the features' order (see :func:`compute_attributions`)."""
    return compute_attributions(config, rows, predict, model=model, seed=seed).global_values


def compute_attributions(config: ShapConfig, rows: Any, predict: Predict | None = None, *, model: Any = None,
                         seed: int | None = None) -> Attributions:
    """The SHAP values of ``rows`` against ``config``'s baseline, by Kernel SHAP on ``predict`` or a fast path.

    ``predict(rows) -> one number a row`` is the model as its endpoint answers; ``model`` a fitted
    model object for TreeSHAP / the linear explainer (the module docstring says which apply). At
    least one is needed. ``seed`` (else the configuration's ``seed``, else 0) fixes Kernel SHAP's
    sampling; numpy's global random state, which shap draws from, is restored afterwards (so two
    Kernel SHAP runs must not share a process's threads; an execution has its own process).

    ValueError for rows, a configuration or answers that cannot be explained (no baseline, rows of
    another width, an answer that is not one finite number a row, probabilities outside (0, 1) with
    ``use_logit``); :class:`PredictError` (a RuntimeError) when ``predict`` raises, naming the
    baseline rows it fails on when it fails on the baseline.
    """
    if predict is None and model is None:
        raise ValueError("nothing to explain: give predict (the model's answers) or model (a fitted model object)")
    if config.baseline is None:
        raise ValueError(f"methods.shap.baseline: the URI {config.baseline_uri} has not been read; "
                         "read its rows and use config.with_baseline(rows)")
    features = config.features
    baseline = config.baseline
    matrix = _explained_rows(rows, len(features))
    seed = seed if seed is not None else (config.seed if config.seed is not None else 0)

    model_output = _model_output(model) if model is not None else None
    reference = None
    if predict is not None:
        reference = _checked(predict, config.use_logit, "the baseline rows", baseline, probe=True)
        if model_output is not None:
            _check_agreement(model_output, reference, baseline, config.use_logit)

    method, local, expected = "kernel", None, 0.0
    if model is not None:
        fast = _fast_path(model, model_output, baseline, matrix, config.use_logit)
        if fast is not None:
            method, local, expected = fast
    if local is None:
        function = predict if predict is not None else model_output
        assert function is not None
        local, expected = _kernel(function, baseline, matrix, config, seed,
                                  reference if function is predict else None)
    global_values = dict(zip(features, (float(v) for v in aggregate(local, config.agg_method)), strict=True))
    return Attributions(method=method, features=features, local_values=local, expected_value=float(expected),
                        global_values=global_values)


def aggregate(local_values: np.ndarray, agg_method: str) -> np.ndarray:
    """Per-row SHAP values (rows, features) -> one value per feature, by Clarify's ``agg_method``."""
    values = np.asarray(local_values, dtype=float)
    if agg_method == "mean_abs":
        return np.mean(np.abs(values), axis=0)
    if agg_method == "median":
        return np.median(values, axis=0)
    if agg_method == "mean_sq":
        return np.mean(values * values, axis=0)
    raise ValueError(f"agg_method: {agg_method!r} is not one of {', '.join(AGG_METHODS)}")


def _explained_rows(rows: Any, width: int) -> np.ndarray:
    try:
        matrix = np.asarray(rows, dtype=float)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"the rows to explain are not numbers: {exc}") from None
    if matrix.ndim == 1 and matrix.size == width:
        matrix = matrix[None, :]
    if matrix.ndim != 2 or matrix.shape[0] == 0:
        raise ValueError(f"the rows to explain should be a non-empty (rows, features) matrix, not shape {matrix.shape}")
    if matrix.shape[1] != width:
        raise ValueError(f"the rows to explain have {matrix.shape[1]} features but the configuration names {width}")
    return matrix


def _checked(predict: Predict, use_logit: bool, what: str, rows: np.ndarray, *, probe: bool = False) -> np.ndarray:
    """``predict(rows)`` as one finite float a row, or a clear error naming ``what`` it was called on."""
    try:
        out = predict(rows)
    except Exception as exc:
        # The callable is the endpoint over HTTP or user code: any failure is the model's, reported
        # with its own message instead of escaping from inside shap.
        detail = _failing_rows(predict, rows) if probe else ""
        raise PredictError(f"predict failed on {what}{detail}: {type(exc).__name__}: {exc}") from exc
    try:
        values = np.asarray(out, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"predict's answer for {what} is not numbers: {str(out)[:200]}") from None
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1 or values.shape[0] != rows.shape[0]:
        raise ValueError(f"predict should answer one number a row (the output explained, e.g. one class's "
                         f"probability); for {rows.shape[0]} rows of {what} it gave shape {values.shape}")
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        raise ValueError(f"predict gave {values[bad[0]]} for {_rows_named(bad)} of {what}")
    if use_logit:
        outside = np.flatnonzero((values <= 0) | (values >= 1))
        if outside.size:
            raise ValueError(f"use_logit needs probabilities strictly between 0 and 1, but predict gave "
                             f"{values[outside[0]]} for {_rows_named(outside)} of {what}")
    return values


def _failing_rows(predict: Predict, rows: np.ndarray) -> str:
    """`` (rows 3, 7 of 10 fail alone)``: the baseline rows predict fails on when called one at a time."""
    if rows.shape[0] < 2:
        return ""
    failing = []
    for i in range(min(rows.shape[0], MAX_PROBED_ROWS)):
        try:
            predict(rows[i:i + 1])
        except Exception:
            failing.append(i)
    if not failing:
        return f" (all {rows.shape[0]} rows together; each alone succeeds)"
    verb = "fails" if len(failing) == 1 else "fail"
    return f" ({_rows_named(np.asarray(failing))} of {rows.shape[0]} {verb} alone)"


def _rows_named(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:10])
    more = f" and {indices.size - 10} more" if indices.size > 10 else ""
    return f"row{'s' if indices.size > 1 else ''} {shown}{more}"


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def _kernel(function: Predict, baseline: np.ndarray, rows: np.ndarray, config: ShapConfig, seed: int,
            background: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    shap = _import_shap()
    if background is None:
        background = _checked(function, config.use_logit, "the baseline rows", baseline, probe=True)
    explained = [-1]  # the row being explained, for the messages of a failing call

    def answered(samples: np.ndarray) -> np.ndarray:
        if explained[0] < 0:
            return background if samples.shape == baseline.shape and np.array_equal(samples, baseline) \
                else _checked(function, config.use_logit, "the baseline rows", samples)
        return _checked(function, config.use_logit,
                        f"the {samples.shape[0]} rows made to explain row {explained[0]}", samples)

    explainer = shap.KernelExplainer(answered, baseline, link="logit" if config.use_logit else "identity")
    nsamples: int | str = config.num_samples if config.num_samples is not None else "auto"
    local = np.zeros(rows.shape, dtype=float)
    state = np.random.get_state()  # shap samples coalitions from numpy's global generator
    np.random.seed(seed)
    try:
        for i in range(rows.shape[0]):
            explained[0] = i
            local[i] = np.asarray(
                explainer.shap_values(rows[i:i + 1], nsamples=nsamples, l1_reg=False, silent=True),
                dtype=float).reshape(-1)
    finally:
        np.random.set_state(state)
    # shap's expected value is link(mean output over the baseline): with use_logit the logit of the
    # mean probability, which is what each row's values add up from
    return local, float(explainer.expected_value)


# -- fast paths ----------------------------------------------------------------------------------------
def _is_classifier(model: Any) -> bool:
    try:
        from sklearn.base import is_classifier
    except ImportError:
        is_classifier = None
    if is_classifier is not None and is_classifier(model):
        return True
    return hasattr(model, "predict_proba") and getattr(model, "classes_", None) is not None


def _model_output(model: Any) -> Predict:
    """The output of ``model`` that its endpoint answers: predict, or the second class's probability."""
    if _is_classifier(model):
        classes = getattr(model, "classes_", None)
        if classes is None or len(classes) != 2:
            raise ValueError("model: only regressors and binary classifiers are explained from the model object; "
                             "for another output give predict answering that output (e.g. one class's probability)")
        if not hasattr(model, "predict_proba"):
            raise ValueError("model: a classifier without predict_proba (its probabilities are what is explained)")
        return lambda rows: np.asarray(model.predict_proba(rows), dtype=float)[:, 1]
    if not hasattr(model, "predict"):
        raise ValueError(f"model: a {type(model).__name__} has no predict method")

    def predicted(rows: np.ndarray) -> np.ndarray:
        out = np.asarray(model.predict(rows), dtype=float)
        if out.ndim == 2 and out.shape[1] == 1:
            out = out[:, 0]
        if out.ndim != 1:
            raise ValueError(f"model: predict answers shape {out.shape}; only one output a row is explained")
        return out

    return predicted


def _check_agreement(model_output: Predict, reference: np.ndarray, baseline: np.ndarray, use_logit: bool) -> None:
    mine = _checked(model_output, use_logit, "the baseline rows (model object)", baseline)
    if not np.allclose(mine, reference, rtol=AGREEMENT_RTOL, atol=1e-6):
        worst = int(np.argmax(np.abs(mine - reference)))
        raise ValueError(f"model: the model object answers {mine[worst]!r} for baseline row {worst} where predict "
                         f"answers {reference[worst]!r}: it is not the endpoint's model")


def _fast_path(model: Any, model_output: Predict | None, baseline: np.ndarray, rows: np.ndarray,
               use_logit: bool) -> tuple[str, np.ndarray, float] | None:
    """(method, values, expected value) by the linear explainer or TreeSHAP, or None where neither applies exactly."""
    assert model_output is not None
    classifier = _is_classifier(model)
    if use_logit and baseline.shape[0] > 1:
        # Kernel SHAP's game with the logit link is the logit of the mean output over the baseline
        # rows; TreeSHAP and the linear explainer give the mean of the logits, the same game for one
        # baseline row only.
        return _fall_back(model, "use_logit with more than one baseline row")
    linear = type(model).__module__.startswith("sklearn.linear_model")
    if linear:
        # A linear model's margin is linear in the features: exact for a regressor's prediction and for
        # a logistic regression's log-odds, not for its probability.
        if classifier != use_logit:
            return _fall_back(model, "its output is not linear in the features" if classifier
                              else "use_logit explains the logit of a regressor's output, which is not linear")
        computed = _linear(model, baseline, rows)
        method = "linear"
    else:
        if use_logit and not classifier:
            return _fall_back(model, "use_logit on a regressor's output has no tree form")
        computed = _tree(model, baseline, rows)
        method = "tree"
    if computed is None:
        return None
    values, expected = computed
    target = model_output(rows)
    if use_logit:
        with np.errstate(divide="ignore"):
            target = _logit(target)  # a probability of 0 or 1 is infinite: no additivity, Kernel SHAP says why
    error = np.abs(values.sum(axis=1) + expected - target)
    if not np.all(error <= ADDITIVITY_TOLERANCE * max(1.0, float(np.max(np.abs(target))))):
        worst = int(np.argmax(error))
        total = float(values[worst].sum() + expected)
        return _fall_back(model, f"its {method} SHAP values of row {worst} add up to {total!r}, "
                                 f"not the output explained {float(target[worst])!r}")
    return method, values, expected


def _fall_back(model: Any, why: str) -> None:
    log.warning("no exact fast path for %s (%s): Kernel SHAP instead", type(model).__name__, why)
    return None


def _linear(model: Any, baseline: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float] | None:
    coef = np.asarray(getattr(model, "coef_", None), dtype=float)
    if coef.ndim == 2 and coef.shape[0] == 1:
        coef = coef[0]
    if coef.ndim != 1 or coef.shape[0] != rows.shape[1]:
        return _fall_back(model, f"coef_ of shape {coef.shape} is not one coefficient per feature")
    shap = _import_shap()
    try:
        explainer = shap.LinearExplainer(model, shap.maskers.Independent(baseline, max_samples=baseline.shape[0]))
        values = np.asarray(explainer.shap_values(rows), dtype=float)
    except Exception as exc:
        return _fall_back(model, f"shap's LinearExplainer: {type(exc).__name__}: {exc}")
    return values.reshape(rows.shape), _scalar(explainer.expected_value)


def _tree(model: Any, baseline: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, float] | None:
    shap = _import_shap()
    try:
        # the trees' own output (probabilities for a forest, log-odds for boosting): the additivity
        # check then tells whether that is the output explained
        explainer = shap.TreeExplainer(model, data=baseline, feature_perturbation="interventional",
                                       model_output="raw")
        # our own additivity check (against the output explained) replaces shap's, which compares
        # with the trees' raw output
        raw = explainer.shap_values(rows, check_additivity=False)
    except Exception as exc:
        return _fall_back(model, f"shap's TreeExplainer: {type(exc).__name__}: {exc}")
    # one set per class (a list before shap 0.45, a last axis since): the second class's (classes_[1])
    # is the one explained
    values = np.asarray(raw[-1] if isinstance(raw, list) else raw, dtype=float)
    if values.ndim == 3:
        values = values[..., -1]
    if values.shape != rows.shape:
        return _fall_back(model, f"TreeExplainer gave values of shape {values.shape}")
    return values, _scalar(explainer.expected_value)


def _scalar(value: Any) -> float:
    array = np.asarray(value, dtype=float).reshape(-1)
    return float(array[-1])


def _import_shap() -> Any:
    try:
        import shap
    except ImportError as exc:
        raise RuntimeError("SHAP values need the shap package: pip install 'moorage[explain]'") from exc
    return shap


# -- analysis.json -------------------------------------------------------------------------------------
def explainability_analysis(config: ShapConfig, global_values: Mapping[str, float], *, label: str = DEFAULT_LABEL,
                            expected_value: float | None = None) -> dict[str, Any]:
    """Clarify's ``analysis.json`` for one label: ``explanations.kernel_shap.<label>.global_shap_values``.

    The values go in the configuration's feature order; ``expected_value`` (the mean output over the
    baseline, :attr:`Attributions.expected_value`) is written when given, as Clarify writes it. The
    label is Clarify's placeholder ``label0`` unless the caller names it (by the configuration's
    ``label_headers``). ValueError when the values are not one finite number per feature.
    """
    names = set(global_values)
    if config.features and names != set(config.features):
        missing = [f for f in config.features if f not in names]
        extra = sorted(names - set(config.features))
        raise ValueError(f"global SHAP values should name every feature of the configuration: "
                         f"missing {missing}, unknown {extra}")
    order = list(config.features) or list(global_values)
    values: dict[str, float] = {}
    for name in order:
        value = global_values[name]
        if isinstance(value, bool) or not isinstance(value, int | float | np.number) or not math.isfinite(value):
            raise ValueError(f"the global SHAP value of {name} is {value!r}, not a finite number")
        values[name] = float(value)
    body: dict[str, Any] = {"global_shap_values": values}
    if expected_value is not None:
        if not math.isfinite(expected_value):
            raise ValueError(f"expected_value is {expected_value!r}, not a finite number")
        body["expected_value"] = float(expected_value)
    return {"version": ANALYSIS_VERSION, "explanations": {METHOD_KEY: {label: body}}}
