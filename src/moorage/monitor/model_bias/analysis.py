"""Clarify's bias analysis: an analysis configuration and a data set -> ``analysis.json``; drift against a baseline.

- :func:`load_analysis_config` reads Clarify's ``analysis_config.json`` (``label``,
  ``label_values_or_threshold``, ``facet``, ``group_variable``, ``probability_threshold``,
  ``headers``, ``methods``) into an :class:`AnalysisConfig`, or raises ValueError naming the field.
- :func:`bias_analysis` computes the metrics of :mod:`.metrics` for every facet and writes them in
  Clarify's ``analysis.json`` shape: ``{"version": "1.0", "post_training_bias_metrics": {...},
  "pre_training_bias_metrics": {...}}``, each ``{"label": ..., "facets": {name: [{"value_or_threshold":
  ..., "metrics": [{"name", "description", "value"}]}]}, "label_value_or_threshold": ...}``, metrics
  in name order, an undefined metric as ``"value": null`` with an ``"error"``, an infinite one as the
  string ``"Infinity"`` (``"-Infinity"``), as Clarify writes them.
- :func:`check_bias_drift` is SageMaker's bias-drift check: a current analysis against a baseline
  analysis (the ModelBias monitor's "constraints" are an ``analysis.json``) -> its violations.
- :func:`metric_values` and :func:`metric_records` are what SageMaker publishes to CloudWatch.

Which rows are the facet, and which labels are positive, follows Clarify's ``bias/report.py``:

- A column is *categorical* or *continuous*. Clarify infers it from the data: categorical when its
  pandas dtype is ``category`` or more than one value is configured; otherwise continuous for
  floats, and for integers (or text that reads as integers) when at least 5% of the non-missing
  values are distinct; categorical for everything else (booleans, other text). So a 0/1 column is
  categorical in a large data set but continuous in one of 40 rows or fewer, exactly as in
  Clarify; ``column_types`` pins a column's kind when that is not wanted.
- Categorical: the rows equal to one of the configured values (values of another type are
  converted to the column's: ``[1]`` selects ``"1"``); with no ``value_or_threshold`` a facet is
  analysed once per distinct value against all other rows. Continuous: the single configured value
  is a threshold and the rows in ``(threshold, max]`` are selected, written as pandas writes that
  interval (``"(40, 90]"``); a continuous facet without a threshold is an error, as in Clarify.
- Predictions: labels of the same kind as the label column, or a binary model's scores, which are
  turned into the labels 1 (score > ``probability_threshold``) and 0 before being compared with
  ``label_values_or_threshold`` like observed labels. Scores are recognised when the label column
  is categorical and the predictions are floats within [0, 1] (``predicted_probability`` decides
  explicitly). As in Clarify, predictions with no positive label at all are an error.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from moorage.monitor.model_bias.metrics import (
    ALL_METRICS,
    POST_TRAINING_METRICS,
    PRE_TRAINING_METRICS,
    MetricError,
    MetricInputs,
    compute_metrics,
    labels_from_probabilities,
    select_interval,
    select_values,
)

ColumnKind = Literal["categorical", "continuous"]
Scalar = str | int | float | bool

ANALYSIS_VERSION = "1.0"
PRE_TRAINING_SECTION = "pre_training_bias_metrics"
POST_TRAINING_SECTION = "post_training_bias_metrics"
DEFAULT_PROBABILITY_THRESHOLD = 0.5
# Clarify's rule for a numeric column: continuous when this share of its values is distinct.
UNIQUENESS_THRESHOLD = 0.05
CONSTRAINT_CHECK_TYPE = "bias_drift_check"
# The value of each metric at which the facets are treated alike. SageMaker's docs state the drift rule
# for metrics balanced at 0 ("a value closer to zero is more balanced"); DI is a ratio, at parity 1.
BALANCED_VALUES: dict[str, float] = {"DI": 1.0}
# SageMaker publishes +/-infinity to CloudWatch as this number (its docs, "CloudWatch Metrics for Bias Drift
# Analysis"), and leaves out metrics without a value.
CLOUDWATCH_INFINITY = 2.348543e108
CLOUDWATCH_STAGES = {PRE_TRAINING_SECTION: "Pre-training", POST_TRAINING_SECTION: "Post-Training"}


# -- the analysis configuration ---------------------------------------------------------------------
@dataclass(frozen=True)
class FacetConfig:
    """One ``facet`` entry: a column and the values (categorical) or threshold (continuous) of the sensitive group."""

    name_or_index: str | int
    value_or_threshold: tuple[Scalar, ...] | None = None


@dataclass(frozen=True)
class AnalysisConfig:
    """The bias part of Clarify's ``analysis_config.json``.

    ``pre_training_methods`` / ``post_training_methods`` are the metric names of the
    ``methods.pre_training_bias`` / ``methods.post_training_bias`` sections, None where the section is
    absent (``"all"`` becomes every name).
    """

    label: str | int
    label_values_or_threshold: tuple[Scalar, ...]
    facets: tuple[FacetConfig, ...]
    group_variable: str | int | None = None
    probability_threshold: float = DEFAULT_PROBABILITY_THRESHOLD
    headers: tuple[str, ...] | None = None
    pre_training_methods: tuple[str, ...] | None = None
    post_training_methods: tuple[str, ...] | None = None
    dataset_type: str | None = None


def load_analysis_config(doc: Mapping[str, Any]) -> AnalysisConfig:
    """Clarify's analysis configuration, validated; ValueError names the field that is wrong.

    ``label`` and a non-empty ``facet`` list are required, each facet with a ``name_or_index``;
    ``label_values_or_threshold`` and each ``value_or_threshold`` are lists of values (a bare number
    is read as a one-value list, a threshold); ``probability_threshold`` is a number; the
    ``methods`` sections name known metrics or ``"all"``. Other keys (``predictor``, ``report``,
    ``shap``, ...) are not bias settings and are ignored.
    """
    if not isinstance(doc, Mapping):
        raise ValueError("the analysis configuration must be a JSON object")
    headers = _headers(doc.get("headers"))
    if "label" not in doc or doc["label"] is None:
        raise ValueError("label: the analysis configuration names no label column")
    label = _column_ref(doc["label"], "label", headers)
    if "label_values_or_threshold" not in doc or doc["label_values_or_threshold"] is None:
        raise ValueError("label_values_or_threshold: the positive label values or threshold are missing")
    label_values = _values(doc["label_values_or_threshold"], "label_values_or_threshold")
    facets_doc = doc.get("facet")
    if facets_doc is None:
        raise ValueError("facet: the analysis configuration names no facet")
    if not isinstance(facets_doc, list) or not facets_doc:
        raise ValueError("facet: expected a non-empty list of {name_or_index, value_or_threshold} objects")
    facets = []
    for position, entry in enumerate(facets_doc):
        where = f"facet[{position}]"
        if not isinstance(entry, Mapping):
            raise ValueError(f"{where}: expected an object with name_or_index and value_or_threshold")
        if entry.get("name_or_index") is None:
            raise ValueError(f"{where}.name_or_index: the facet names no column")
        name = _column_ref(entry["name_or_index"], f"{where}.name_or_index", headers)
        raw_values = entry.get("value_or_threshold")
        values = None if raw_values is None else _values(raw_values, f"{where}.value_or_threshold")
        facets.append(FacetConfig(name, values))
    group = doc.get("group_variable")
    group_variable = None if group is None else _column_ref(group, "group_variable", headers)
    threshold = doc.get("probability_threshold", DEFAULT_PROBABILITY_THRESHOLD)
    if threshold is None:
        threshold = DEFAULT_PROBABILITY_THRESHOLD
    if not _is_number(threshold):
        raise ValueError(f"probability_threshold: expected a number, not {threshold!r}")
    methods = doc.get("methods")
    if methods is not None and not isinstance(methods, Mapping):
        raise ValueError("methods: expected an object of analysis sections")
    methods = methods or {}
    dataset_type = doc.get("dataset_type")
    if dataset_type is not None and not isinstance(dataset_type, str):
        raise ValueError(f"dataset_type: expected a MIME type string, not {dataset_type!r}")
    return AnalysisConfig(
        label=label, label_values_or_threshold=label_values, facets=tuple(facets), group_variable=group_variable,
        probability_threshold=float(threshold), headers=headers,
        pre_training_methods=_section_methods(methods, "pre_training_bias", PRE_TRAINING_METRICS),
        post_training_methods=_section_methods(methods, "post_training_bias", POST_TRAINING_METRICS),
        dataset_type=dataset_type,
    )


def _headers(value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(header, str) for header in value):
        raise ValueError("headers: expected a list of column names")
    return tuple(value)


def _column_ref(value: Any, field: str, headers: tuple[str, ...] | None) -> str | int:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        if headers is not None and value >= len(headers):
            raise ValueError(f"{field}: column index {value} is past the {len(headers)} headers")
        return value
    raise ValueError(f"{field}: expected a column name or a non-negative column index, not {value!r}")


def _values(value: Any, field: str) -> tuple[Scalar, ...]:
    if _is_number(value):
        return (value,)  # a bare threshold
    if not isinstance(value, list) or not value:
        raise ValueError(f"{field}: expected a non-empty list of values or a numeric threshold, not {value!r}")
    for item in value:
        if not (isinstance(item, str | bool) or _is_number(item)):
            raise ValueError(f"{field}: {item!r} is neither a value nor a numeric threshold")
    return tuple(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _section_methods(methods: Mapping[str, Any], section: str, known: Mapping[str, Any]) -> tuple[str, ...] | None:
    if section not in methods:
        return None
    body = methods[section]
    field = f"methods.{section}.methods"
    if not isinstance(body, Mapping):
        raise ValueError(f"methods.{section}: expected an object with methods")
    return _metric_names(body.get("methods", "all"), field, known)


def _metric_names(value: Any, field: str, known: Mapping[str, Any]) -> tuple[str, ...]:
    if value == "all" or value == ["all"]:
        return tuple(sorted(known))
    if isinstance(value, str):
        value = [name.strip() for name in value.split(",") if name.strip()]  # "CI, DPL" as the SDK also accepts
    if not isinstance(value, list | tuple) or not value or not all(isinstance(name, str) for name in value):
        raise ValueError(f'{field}: expected "all" or a list of metric names')
    unknown = [name for name in value if name not in known]
    if unknown:
        raise ValueError(f"{field}: unknown metrics {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return tuple(sorted(set(value)))


# -- the analysis ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Selection:
    """One column turned into flags: which rows are positive (or in the facet), and how Clarify writes it."""

    flags: np.ndarray
    text: str


def bias_analysis(
    config: Mapping[str, Any] | AnalysisConfig,
    data: pd.DataFrame | Mapping[str, Any],
    predicted: Any | None,
    *,
    methods: str | Iterable[str] | None = None,
    predicted_probability: bool | None = None,
    probability_threshold: float | None = None,
    column_types: Mapping[str | int, ColumnKind] | None = None,
) -> dict[str, Any]:
    """Clarify's ``analysis.json`` body for ``data`` (a DataFrame or a dict of columns) and the model's ``predicted``.

    ``config`` is the analysis configuration (a dict as in ``analysis_config.json``, or loaded).
    ``predicted`` holds one predicted label or score per row, or None for pre-training metrics only.
    ``methods`` picks metrics by short name (``"all"``, or names such as ``["CI", "DPPL"]``), their
    stages following; by default the configuration's ``methods`` sections, and when it has neither
    bias section, every pre-training metric and, with predictions, every post-training metric.
    ``predicted_probability`` says whether ``predicted`` are scores (None: decided as the module
    says); ``probability_threshold`` replaces the configuration's (a monitoring job's
    ``ProbabilityThresholdAttribute``). ``column_types`` pins a column's kind
    (``{"Age": "categorical"}``) instead of Clarify's inference.

    The flip test (FT) runs on the data's other columns (all but the facet and the label), which
    must all be numeric; it needs no calls to the model. Raises ValueError for a configuration or
    data Clarify rejects: a missing column, post-training metrics without predictions, predictions
    without a positive label, a continuous facet without a threshold.
    """
    cfg = config if isinstance(config, AnalysisConfig) else load_analysis_config(config)
    frame = _frame(data, cfg.headers)
    if len(frame) == 0:
        raise ValueError("the data set has no rows")
    pins = dict(column_types or {})
    for column, kind in pins.items():
        if kind not in ("categorical", "continuous"):
            raise ValueError(f"column_types[{column!r}]: expected 'categorical' or 'continuous', not {kind!r}")
    pre_names, post_names = _stages(cfg, methods, predicted is not None)
    if post_names and predicted is None:
        raise ValueError("post-training bias metrics need the model's predictions (predicted)")

    label_name, label_series = _column(frame, cfg.label, "label", cfg.headers)
    label_kind = _kind(label_series, list(cfg.label_values_or_threshold), _pin(pins, cfg.label, label_name))
    label_values = _threshold_values(cfg.label_values_or_threshold, label_kind, "label_values_or_threshold")
    label_selection = _select(label_series, label_kind, label_values, "label")

    predicted_flags = None
    if post_names:
        predicted_flags = _predicted_flags(predicted, frame.index, label_series, label_kind, label_values,
                                           cfg.probability_threshold if probability_threshold is None
                                           else float(probability_threshold), predicted_probability,
                                           _pin(pins, cfg.label, label_name))

    group = None
    if cfg.group_variable is not None:
        _, group_series = _column(frame, cfg.group_variable, "group_variable", cfg.headers)
        group = group_series.to_numpy()

    sections: dict[str, dict[str, Any]] = {}
    for section, names in ((POST_TRAINING_SECTION, post_names), (PRE_TRAINING_SECTION, pre_names)):
        if names:
            sections[section] = {"label": str(label_name), "facets": {},
                                 "label_value_or_threshold": label_selection.text}
    for position, facet in enumerate(cfg.facets):
        field = f"facet[{position}]"
        facet_name, facet_series = _column(frame, facet.name_or_index, f"{field}.name_or_index", cfg.headers)
        features, features_error = _features(frame, {facet_name, label_name})
        for selection in _facet_selections(facet, facet_series, _pin(pins, facet.name_or_index, facet_name), field):
            inputs = MetricInputs(facet=selection.flags, label=label_selection.flags, predicted=predicted_flags,
                                  group=group, features=features, features_error=features_error)
            for section, names in ((POST_TRAINING_SECTION, post_names), (PRE_TRAINING_SECTION, pre_names)):
                if names:
                    entry = {"value_or_threshold": selection.text,
                             "metrics": _metric_entries(compute_metrics(names, inputs))}
                    sections[section]["facets"].setdefault(str(facet_name), []).append(entry)
    return {"version": ANALYSIS_VERSION, **sections}


def _stages(cfg: AnalysisConfig, methods: str | Iterable[str] | None,
            has_predictions: bool) -> tuple[tuple[str, ...], tuple[str, ...]]:
    if methods is not None:
        names = _metric_names(methods if isinstance(methods, str) else list(methods), "methods", ALL_METRICS)
        return (tuple(name for name in names if name in PRE_TRAINING_METRICS),
                tuple(name for name in names if name in POST_TRAINING_METRICS))
    if cfg.pre_training_methods is None and cfg.post_training_methods is None:
        return tuple(sorted(PRE_TRAINING_METRICS)), tuple(sorted(POST_TRAINING_METRICS)) if has_predictions else ()
    return cfg.pre_training_methods or (), cfg.post_training_methods or ()


def _frame(data: pd.DataFrame | Mapping[str, Any], headers: tuple[str, ...] | None) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        frame = data
    elif isinstance(data, Mapping):
        frame = pd.DataFrame(dict(data))
    else:
        raise ValueError(f"data must be a pandas DataFrame or a dict of columns, not {type(data).__name__}")
    if headers is not None and isinstance(frame.columns, pd.RangeIndex) and len(headers) == frame.shape[1]:
        frame = frame.set_axis(list(headers), axis=1)  # a CSV read without its header row
    return frame


def _column(frame: pd.DataFrame, ref: str | int, field: str,
            headers: tuple[str, ...] | None = None) -> tuple[Any, pd.Series]:
    if ref in frame.columns:
        return ref, frame[ref]
    # an index counts in the configuration's headers, which name the data's columns
    if isinstance(ref, int) and headers is not None and ref < len(headers) and headers[ref] in frame.columns:
        return headers[ref], frame[headers[ref]]
    if isinstance(ref, int) and 0 <= ref < frame.shape[1]:
        return frame.columns[ref], frame.iloc[:, ref]
    raise ValueError(f"{field}: column {ref!r} is not in the data (columns: {', '.join(map(str, frame.columns))})")


def _pin(pins: Mapping[str | int, ColumnKind], ref: str | int, name: Any) -> ColumnKind | None:
    return pins.get(ref, pins.get(name))


def _kind(series: pd.Series, values: list[Any] | None, pinned: ColumnKind | None) -> ColumnKind:
    """Clarify's ``series_datatype``: whether a facet or label column is categorical or continuous."""
    if pinned is not None:
        return pinned
    if isinstance(series.dtype, pd.CategoricalDtype) or (values is not None and len(values) > 1):
        return "categorical"
    present = int(series.count())
    uniqueness = series.nunique() / present if present else 0.0
    if pd.api.types.is_bool_dtype(series.dtype):
        return "categorical"
    if pd.api.types.is_float_dtype(series.dtype):
        return "continuous"
    if pd.api.types.is_integer_dtype(series.dtype):
        return "continuous" if uniqueness >= UNIQUENESS_THRESHOLD else "categorical"
    if pd.api.types.is_object_dtype(series.dtype) or pd.api.types.is_string_dtype(series.dtype):
        try:
            series.astype("int64")
        except (TypeError, ValueError, OverflowError):
            return "categorical"
        return "continuous" if uniqueness >= UNIQUENESS_THRESHOLD else "categorical"
    return "categorical"


def _threshold_values(values: tuple[Scalar, ...] | None, kind: ColumnKind, field: str) -> list[Any] | None:
    """The configured values; for a continuous column the first is the threshold, made a number."""
    if values is None:
        return None
    values_list = list(values)
    if kind == "continuous" and not _is_number(values_list[0]):
        try:
            values_list[0] = float(values_list[0])
        except (TypeError, ValueError):
            raise ValueError(f"{field}: a continuous column needs a single numeric threshold, "
                             f"not {values_list[0]!r}") from None
    return values_list


def _select(series: pd.Series, kind: ColumnKind, values: list[Any] | None, field: str,
            data_for_max: pd.Series | None = None) -> _Selection:
    if kind == "continuous":
        if not values:
            raise ValueError(f"{field}: a continuous column needs a threshold")
        try:
            numbers = pd.to_numeric(series)
        except (TypeError, ValueError):
            raise ValueError(f"{field}: a continuous column needs numbers, and this one holds other values") from None
        if numbers.count() == 0:
            raise ValueError(f"{field}: the column has no values to compare with the threshold")
        intervals = _intervals(numbers if data_for_max is None else data_for_max, values)
        flags = np.zeros(len(series), dtype=bool)
        for interval in intervals:
            flags |= select_interval(numbers.to_numpy(dtype=float, na_value=np.nan), interval.left, interval.right)
        return _Selection(flags, ",".join(map(str, intervals)))
    assert values is not None
    return _Selection(_categorical_flags(series, values, field), ",".join(map(str, values)))


def _intervals(numbers: pd.Series, thresholds: list[Any]) -> pd.IntervalIndex:
    """Clarify's intervals: the thresholds and the data's maximum as breaks, ``(threshold, max]``."""
    breaks = list(thresholds)
    highest = numbers.max()
    # Clarify tests abs(max) here; doing the same keeps the interval texts (and so the facet_value of
    # violations) identical to its files when the maximum is negative
    if abs(highest) not in breaks:
        breaks.append(highest)
    return pd.IntervalIndex.from_breaks(sorted(breaks))


def _categorical_flags(series: pd.Series, values: list[Any], field: str) -> np.ndarray:
    data = series.to_numpy(dtype=object)
    flags = select_values(data, values)
    if flags.any() or len(data) == 0:
        return flags
    # no row matched: the configured values may be another type than the column's ([1] for "1")
    converted = _convert_values(values, data[0], field)
    return select_values(data, converted)


def _convert_values(values: list[Any], example: Any, field: str) -> list[Any]:
    kind: type = type(example.item()) if isinstance(example, np.generic) else type(example)
    if kind is bool:
        return [value.strip().lower() == "true" if isinstance(value, str) else bool(value) for value in values]
    try:
        return [kind(value) for value in values]
    except (TypeError, ValueError):
        if kind is int:
            try:
                return [float(value) for value in values]  # int("1.0") fails where float does not
            except (TypeError, ValueError):
                pass
    raise ValueError(f"{field}: the values {values!r} do not occur in the column and cannot be read as its "
                     f"{kind.__name__} values")


def _predicted_flags(predicted: Any, index: pd.Index, label_series: pd.Series, label_kind: ColumnKind,
                     label_values: list[Any] | None, probability_threshold: float, probability: bool | None,
                     pinned: ColumnKind | None) -> np.ndarray:
    values = np.asarray(predicted)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise ValueError(f"predicted must hold one label or score per row, not an array of shape {values.shape}")
    if len(values) != len(index):
        raise ValueError(f"predicted has {len(values)} values but the data has {len(index)} rows")
    if probability is None:
        probability = label_kind == "categorical" and _looks_like_scores(values)
    if probability:
        series = pd.Series(labels_from_probabilities(values, probability_threshold), index=index)
        kind: ColumnKind = label_kind  # labels made here are the label column's kind by construction
    else:
        series = pd.Series(values, index=index)
        kind = _kind(series, label_values, pinned)
    if kind != label_kind:
        raise ValueError(f"the predicted labels are {kind} but the label column is {label_kind}: they must be "
                         "the same kind of values")
    if kind == "continuous":
        try:
            series = series.astype(label_series.dtype)  # as Clarify, predictions take the label column's type
        except (TypeError, ValueError):
            raise ValueError("the predicted labels cannot be read as the label column's values") from None
        selection = _select(series, kind, label_values, "predicted",
                            data_for_max=pd.to_numeric(pd.concat([label_series, series], ignore_index=True)))
    else:
        selection = _select(series, kind, label_values, "predicted")
    if not selection.flags.any():
        raise ValueError("no predicted label is positive (none is among label_values_or_threshold): Clarify "
                         "computes no post-training bias metrics for such predictions")
    return selection.flags


def _looks_like_scores(values: np.ndarray) -> bool:
    if values.dtype.kind != "f":
        return False
    present = values[~np.isnan(values)]
    return bool(present.size) and bool(((present >= 0) & (present <= 1)).all())


def _features(frame: pd.DataFrame, excluded: set[Any]) -> tuple[np.ndarray | None, str | None]:
    """The flip test's feature matrix: every column but the facet and the label, all numeric."""
    columns = [column for column in frame.columns if column not in excluded]
    if not columns:
        return None, "the flip test needs at least one feature column besides the facet and the label"
    features = frame[columns]
    numeric = features.select_dtypes(include=[np.number, bool])
    if numeric.shape[1] != features.shape[1]:
        return None, "the flip test supports numeric feature columns only"
    return features.to_numpy(dtype=float, na_value=np.nan), None


def _facet_selections(facet: FacetConfig, series: pd.Series, pinned: ColumnKind | None,
                      field: str) -> list[_Selection]:
    values = None if facet.value_or_threshold is None else list(facet.value_or_threshold)
    kind = _kind(series, values, pinned)
    if kind == "continuous":
        thresholds = _threshold_values(facet.value_or_threshold, kind, f"{field}.value_or_threshold")
        if not thresholds:
            raise ValueError(f"{field}.value_or_threshold: the facet column is continuous and needs a threshold")
        return [_select(series, kind, thresholds, f"{field}.value_or_threshold")]
    if values is not None:
        return [_select(series, kind, values, f"{field}.value_or_threshold")]
    # no values configured: each distinct value against the rest, in the order the data shows them
    return [_select(series, kind, [value], f"{field}.value_or_threshold")
            for value in series.dropna().unique()]


def _metric_entries(results: Mapping[str, float | MetricError]) -> list[dict[str, Any]]:
    entries = []
    for name, result in results.items():
        entry: dict[str, Any] = {"name": name, "description": ALL_METRICS[name].description}
        if isinstance(result, MetricError):
            entry["value"] = None
            entry["error"] = str(result)
        else:
            entry["value"] = _json_value(result)
        entries.append(entry)
    return entries


def _json_value(value: float) -> float | str:
    if math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"  # Clarify writes infinities as these strings
    return value


# -- drift -------------------------------------------------------------------------------------------
def check_bias_drift(current: Mapping[str, Any], baseline: Mapping[str, Any]) -> list[dict[str, str]]:
    """SageMaker's bias-drift violations of ``current`` (an analysis) against ``baseline`` (the baseline's analysis).

    A metric violates when it is farther from balance than the baseline's value of the same metric,
    for the same stage, facet and facet value: ``|current - b| > |baseline - b|`` with b = 0, the
    balance of every metric but DI, whose balance is 1 (its facets' ratio at parity). So a DPPL of
    0.1 against a baseline of 0.2 passes and one of -0.3 violates (SageMaker's docs' example); an
    infinite value violates any finite baseline. Metrics without a value (``null``, NaN) on either
    side are not compared. Pre-training violations come first, then post-training, each in the
    analysis's order. A facet value missing from the baseline is matched to the baseline's only
    value of that facet when both have just one (a continuous facet's interval ends at the data's
    maximum, which moves from one data set to the next).

    Each violation is ``{"facet", "facet_value", "metric_name", "constraint_check_type":
    "bias_drift_check", "description"}``, the description as SageMaker writes it: ``Metric value
    0.3748947825295131 doesn't meet the baseline constraint requirement 0.28176563733194276``.
    """
    for name, doc in (("current", current), ("baseline", baseline)):
        if not isinstance(doc, Mapping):
            raise ValueError(f"the {name} analysis must be a JSON object")
        if not any(isinstance(doc.get(section), Mapping) for section in (PRE_TRAINING_SECTION, POST_TRAINING_SECTION)):
            raise ValueError(f"the {name} analysis has neither {PRE_TRAINING_SECTION} nor {POST_TRAINING_SECTION}")
    violations: list[dict[str, str]] = []
    for section in (PRE_TRAINING_SECTION, POST_TRAINING_SECTION):
        current_facets = _section_facets(current, section, "current")
        baseline_facets = _section_facets(baseline, section, "baseline")
        if current_facets is None or baseline_facets is None:
            continue
        for facet, entries in current_facets.items():
            baseline_entries = baseline_facets.get(facet)
            if not isinstance(baseline_entries, list) or not isinstance(entries, list):
                continue
            for entry in entries:
                if not isinstance(entry, Mapping):
                    continue
                baseline_entry = _matching_entry(entry, entries, baseline_entries)
                if baseline_entry is not None:
                    violations.extend(_entry_violations(str(facet), entry, baseline_entry))
    return violations


def violations_document(violations: Iterable[dict[str, str]]) -> dict[str, Any]:
    """The bias-drift ``constraint_violations.json`` body."""
    return {"version": ANALYSIS_VERSION, "violations": list(violations)}


def _section_facets(doc: Mapping[str, Any], section: str, name: str) -> Mapping[str, Any] | None:
    body = doc.get(section)
    if body is None:
        return None
    if not isinstance(body, Mapping) or not isinstance(body.get("facets"), Mapping):
        raise ValueError(f"the {name} analysis's {section} has no facets object")
    return body["facets"]


def _matching_entry(entry: Mapping[str, Any], entries: list[Any],
                    baseline_entries: list[Any]) -> Mapping[str, Any] | None:
    value = entry.get("value_or_threshold")
    for candidate in baseline_entries:
        if isinstance(candidate, Mapping) and candidate.get("value_or_threshold") == value:
            return candidate
    if len(entries) == 1 and len(baseline_entries) == 1 and isinstance(baseline_entries[0], Mapping):
        return baseline_entries[0]
    return None


def _entry_violations(facet: str, entry: Mapping[str, Any], baseline_entry: Mapping[str, Any]) -> list[dict[str, str]]:
    baseline_values = {metric.get("name"): metric.get("value") for metric in baseline_entry.get("metrics", [])
                       if isinstance(metric, Mapping)}
    violations = []
    for metric in entry.get("metrics", []):
        if not isinstance(metric, Mapping):
            continue
        name = metric.get("name")
        value, threshold = _metric_number(metric.get("value")), _metric_number(baseline_values.get(name))
        if value is None or threshold is None:
            continue
        balance = BALANCED_VALUES.get(str(name), 0.0)
        if abs(value - balance) > abs(threshold - balance):
            violations.append({
                "facet": facet,
                "facet_value": str(entry.get("value_or_threshold")),
                "metric_name": str(name),
                "constraint_check_type": CONSTRAINT_CHECK_TYPE,
                "description": f"Metric value {_value_text(metric.get('value'))} doesn't meet the baseline "
                               f"constraint requirement {_value_text(baseline_values.get(name))}",
            })
    return violations


def _metric_number(value: Any) -> float | None:
    """A metric's value as a number: JSON numbers and Clarify's "Infinity" strings; None for null or NaN."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    elif isinstance(value, int | float):
        number = float(value)
    else:
        return None
    return None if math.isnan(number) else number


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    return repr(value)


# -- CloudWatch --------------------------------------------------------------------------------------
def metric_records(analysis: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every metric SageMaker publishes to CloudWatch, with its dimensions.

    ``{"name": "bias_metric_CI", "value": 0.37, "dimensions": {"BiasStage": "Pre-training", "Label":
    "Target", "LabelValue": "1", "Facet": "Sex", "FacetValue": "0"}}``: the metric's short name after
    ``bias_metric_``, +/-infinity as +/-2.348543e108, metrics without a value left out (SageMaker's
    docs, "CloudWatch Metrics for Bias Drift Analysis"; the stage names are theirs too).
    """
    records = []
    for section in (PRE_TRAINING_SECTION, POST_TRAINING_SECTION):
        body = analysis.get(section)
        if not isinstance(body, Mapping) or not isinstance(body.get("facets"), Mapping):
            continue
        for facet, entries in body["facets"].items():
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, Mapping):
                    continue
                dimensions = {"BiasStage": CLOUDWATCH_STAGES[section], "Label": str(body.get("label")),
                              "LabelValue": str(body.get("label_value_or_threshold")), "Facet": str(facet),
                              "FacetValue": str(entry.get("value_or_threshold"))}
                for metric in entry.get("metrics", []):
                    number = _metric_number(metric.get("value")) if isinstance(metric, Mapping) else None
                    if number is None:
                        continue
                    if math.isinf(number):
                        number = math.copysign(CLOUDWATCH_INFINITY, number)
                    records.append({"name": f"bias_metric_{metric.get('name')}", "value": number,
                                    "dimensions": dimensions})
    return records


def metric_values(analysis: Mapping[str, Any]) -> dict[str, float]:
    """``{name: value}`` of :func:`metric_records`: ``bias_metric_CI``, ``bias_metric_DPPL``, ...

    With one facet value in the analysis (a monitor's usual configuration) the names are
    SageMaker's CloudWatch names. When several facets or facet values share a metric, SageMaker
    tells them apart by the Facet and FacetValue dimensions; a flat name cannot, so each then
    carries them: ``bias_metric_DPPL_Sex_0``.
    """
    records = metric_records(analysis)
    facets = {(record["dimensions"]["Facet"], record["dimensions"]["FacetValue"]) for record in records}
    values = {}
    for record in records:
        name = record["name"]
        if len(facets) > 1:
            name = f"{name}_{record['dimensions']['Facet']}_{record['dimensions']['FacetValue']}"
        values[name] = record["value"]
    return values
