"""Verify (Deequ's third step): current statistics against a baseline's statistics and constraints -> violations.

The checks and their meaning are SageMaker's (``constraint_violations.json``); each works from
statistics only, so a baseline made by SageMaker works as well as ours:

- ``missing_column_check`` / ``extra_column_check``: a baseline feature absent from the current
  data / a current feature the constraints do not know;
- ``data_type_check``: the share of present values that fit the baseline's type (an Integral fits
  a Fractional feature; anything fits a String one) is below ``datatype_check_threshold``. From a
  profile the share is exact; from a statistics file (which has no per-type counts) it is 1 when
  the inferred types agree and 0 when not;
- ``completeness_check``: the share of present values is below the constraint's ``completeness``
  by more than sampling noise (``COMPLETENESS_Z`` binomial standard errors; 0 when the baseline
  was complete, so a complete feature must stay complete);
- ``categorical_values_check``: the share of values inside ``string_constraints.domains`` is below
  ``domain_content_threshold``;
- ``baseline_drift_check``: numeric features, the L-infinity distance between the baseline's and
  the current KLL CDFs, ``Simple`` (the largest gap) or ``Robust`` (Deequ's linf_robust, the gap
  less ``1.8 * sqrt((n + m) / (n m))``, what two samples differ by at alpha = 0.003), above
  ``comparison_threshold``; String features, the L-infinity distance between the frequency
  tables (``LInfinity``, same Simple/Robust choice) above ``categorical_comparison_threshold``, or
  the chi-squared test (``ChiSquared``, categories regrouped as Deequ does) with a p-value below it.

``monitoring_config`` is the default for every feature; a feature's ``monitoring_config_overrides``
(in the feature, or in its ``string_constraints``/``num_constraints``, as SageMaker's files put
it; ``monitoringConfigOverrides`` as its docs spell it) replaces parts of it. Older files' keys are
understood: ``distribution_constraints.enable_comparisons`` (a boolean) for ``perform_comparison``
and ``min_domain_mass`` for ``domain_content_threshold``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from moorage.monitor.common.distributions import (
    CategoricalDistribution,
    NumericDistribution,
    linf_simple_categorical,
    linf_simple_numeric,
    robust,
)
from moorage.monitor.common.type_inference import TypeCounts
from moorage.monitor.data_quality.profile import DatasetProfile, statistics_of
from moorage.monitor.data_quality.suggest import DEFAULT_MONITORING_CONFIG

COMPLETENESS_Z = 3.0
CHECK_TYPES = ("data_type_check", "completeness_check", "baseline_drift_check", "missing_column_check",
               "extra_column_check", "categorical_values_check")
NUMERIC = ("Integral", "Fractional")


@dataclass
class FeatureCheck:
    """What the checks measured for one feature (drift is None when it was not compared)."""

    name: str
    completeness: float | None = None
    drift: float | None = None
    drift_method: str | None = None
    emit_metrics: bool = True


@dataclass
class CheckReport:
    violations: list[dict[str, str]] = field(default_factory=list)
    features: dict[str, FeatureCheck] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``constraint_violations.json`` body."""
        return {"violations": list(self.violations)}

    def metrics(self) -> dict[str, float]:
        """Values ready to emit: ``feature_baseline_drift_{f}``, ``feature_non_null_{f}`` for each feature
        whose ``emit_metrics`` is enabled, and violation counts (total and per check type)."""
        values: dict[str, float] = {}
        for feature in self.features.values():
            if not feature.emit_metrics:
                continue
            if feature.drift is not None:
                values[f"feature_baseline_drift_{feature.name}"] = feature.drift
            if feature.completeness is not None:
                values[f"feature_non_null_{feature.name}"] = feature.completeness
        values["constraint_violations"] = float(len(self.violations))
        for check_type in CHECK_TYPES:
            values[f"constraint_violations_{check_type}"] = float(
                sum(1 for v in self.violations if v["constraint_check_type"] == check_type))
        return values


def check(current: Any, baseline_statistics: Any, constraints: Any) -> dict[str, Any]:
    """The ``constraint_violations.json`` body for ``current`` (a profile or statistics)."""
    return evaluate(current, baseline_statistics, constraints).to_dict()


def evaluate(current: Any, baseline_statistics: Any, constraints: Any) -> CheckReport:
    """Run every check; the report holds the violations and the per-feature values behind the metrics."""
    type_counts = current.type_counts() if isinstance(current, DatasetProfile) else {}
    current_body = statistics_of(current)
    baseline_body = statistics_of(baseline_statistics) or {}
    constraints_body = statistics_of(constraints)
    current_features = {f["name"]: f for f in current_body.get("features", [])}
    baseline_features = {f["name"]: f for f in baseline_body.get("features", [])}
    constrained = constraints_body.get("features", [])
    global_config = normalized_config(constraints_body.get("monitoring_config"))
    report = CheckReport()
    known = {feature["name"] for feature in constrained}

    for feature in constrained:
        name = feature["name"]
        config = feature_config(global_config, feature)
        enabled = _enabled(config.get("evaluate_constraints", "Enabled"))
        observed = current_features.get(name)
        outcome = report.features[name] = FeatureCheck(name, emit_metrics=_enabled(config.get("emit_metrics")))
        if observed is not None:
            outcome.completeness = _completeness(observed)
        if not enabled:
            continue
        if observed is None:
            report.violations.append(_violation(
                name, "missing_column_check",
                f"There are missing columns in current dataset. Number of columns in current dataset: "
                f"{len(current_features)}, Number of columns in baseline constraints: {len(constrained)}"))
            continue
        _check_type(report, feature, observed, type_counts.get(name), config)
        _check_completeness(report, feature, observed)
        _check_domain(report, feature, observed, config)
        _check_drift(report, outcome, feature, baseline_features.get(name), observed, config)

    if _enabled(global_config.get("evaluate_constraints", "Enabled")):
        for name in current_features:
            if name not in known:
                report.violations.append(_violation(
                    name, "extra_column_check",
                    f"There are extra columns in current dataset. Number of columns in current dataset: "
                    f"{len(current_features)}, Number of columns in baseline constraints: {len(constrained)}"))
    return report


# -- configuration ----------------------------------------------------------------------------------
def normalized_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """A monitoring config with SageMaker's defaults filled in and older keys translated."""
    merged = copy.deepcopy(DEFAULT_MONITORING_CONFIG)
    _deep_update(merged, _translate(config or {}))
    return merged


def feature_config(global_config: dict[str, Any], feature: dict[str, Any]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for holder in (feature, feature.get("string_constraints") or {}, feature.get("num_constraints") or {}):
        for key in ("monitoring_config_overrides", "monitoringConfigOverrides"):
            if isinstance(holder.get(key), dict):
                _deep_update(overrides, holder[key])
    if not overrides:
        return global_config
    config = copy.deepcopy(global_config)
    _deep_update(config, _translate(overrides))
    return config


def _translate(config: dict[str, Any]) -> dict[str, Any]:
    config = copy.deepcopy(config)
    distribution = config.get("distribution_constraints")
    if isinstance(distribution, dict):
        if "enable_comparisons" in distribution and "perform_comparison" not in distribution:
            distribution["perform_comparison"] = "Enabled" if _enabled(distribution["enable_comparisons"]) \
                else "Disabled"
        if "comparion_method" in distribution and "comparison_method" not in distribution:  # the docs' typo
            distribution["comparison_method"] = distribution["comparion_method"]
        if "min_domain_mass" in distribution and "domain_content_threshold" not in config:
            config["domain_content_threshold"] = distribution["min_domain_mass"]
        if "comparison_threshold" in distribution and "categorical_comparison_threshold" not in distribution:
            # SageMaker: the categorical threshold defaults to comparison_threshold
            distribution["categorical_comparison_threshold"] = distribution["comparison_threshold"]
    return config


def _deep_update(target: dict[str, Any], source: dict[str, Any]) -> None:
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = copy.deepcopy(value)


def _enabled(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in ("enabled", "true", "1", "yes")


# -- the checks -------------------------------------------------------------------------------------
def _violation(name: str, check_type: str, description: str) -> dict[str, str]:
    return {"feature_name": name, "constraint_check_type": check_type, "description": description}


def _requirement(value: float, detail: str) -> str:
    # SageMaker's own wording first (tools parse "Value: X"), then what it means
    return f"Value: {value} does not meet the constraint requirement! {detail}"


def _common(feature: dict[str, Any]) -> dict[str, Any]:
    stats = feature.get("numerical_statistics") or feature.get("string_statistics") or {}
    return stats.get("common", {})


def _completeness(feature: dict[str, Any]) -> float | None:
    common = _common(feature)
    present, missing = float(common.get("num_present", 0)), float(common.get("num_missing", 0))
    return present / (present + missing) if present + missing else None


def _check_type(report: CheckReport, constraint: dict[str, Any], observed: dict[str, Any],
                counts: TypeCounts | None, config: dict[str, Any]) -> None:
    expected = constraint.get("inferred_type", "Unknown")
    if expected in ("String", "Unknown"):
        return
    if counts is not None:
        if counts.present == 0:
            return
        value = counts.conforming(expected) / counts.present
    else:
        if float(_common(observed).get("num_present", 0)) == 0:
            return
        actual = observed.get("inferred_type", "Unknown")
        value = 1.0 if actual == expected or (expected == "Fractional" and actual == "Integral") else 0.0
    threshold = float(config.get("datatype_check_threshold", 1.0))
    if value < threshold:
        report.violations.append(_violation(constraint["name"], "data_type_check", _requirement(
            value, f"{value:.2%} of the present values are {expected}, the baseline's type "
                   f"(found {observed.get('inferred_type')}); threshold {threshold}.")))


def _check_completeness(report: CheckReport, constraint: dict[str, Any], observed: dict[str, Any]) -> None:
    if "completeness" not in constraint:
        return
    expected = float(constraint["completeness"])
    common = _common(observed)
    n = float(common.get("num_present", 0)) + float(common.get("num_missing", 0))
    if n == 0:
        return
    value = float(common.get("num_present", 0)) / n
    allowance = COMPLETENESS_Z * math.sqrt(max(expected * (1 - expected), 0.0) / n)
    if value < expected - allowance - 1e-12:
        report.violations.append(_violation(constraint["name"], "completeness_check", _requirement(
            value, f"{value:.2%} of {int(n)} values are present; the baseline's completeness is {expected:.2%}.")))


def _check_domain(report: CheckReport, constraint: dict[str, Any], observed: dict[str, Any],
                  config: dict[str, Any]) -> None:
    domain = (constraint.get("string_constraints") or {}).get("domains")
    if not domain:
        return
    distribution = CategoricalDistribution.from_feature(observed)
    present = float(_common(observed).get("num_present", 0))
    if distribution is None or present == 0:
        return
    allowed = set(map(str, domain))
    inside = sum(count for value, count in distribution.counts.items() if value in allowed)
    value = inside / present
    threshold = float(config.get("domain_content_threshold", 1.0))
    if value < threshold:
        unknown = [v for v, _ in sorted(distribution.counts.items(), key=lambda kv: -kv[1]) if v not in allowed]
        report.violations.append(_violation(constraint["name"], "categorical_values_check", _requirement(
            value, f"{value:.2%} of the values are in the baseline's domain of {len(allowed)}; threshold "
                   f"{threshold}; values outside it include {', '.join(map(repr, unknown[:5]))}.")))


def _check_drift(report: CheckReport, outcome: FeatureCheck, constraint: dict[str, Any],
                 baseline: dict[str, Any] | None, observed: dict[str, Any], config: dict[str, Any]) -> None:
    distribution_config = config.get("distribution_constraints") or {}
    if baseline is None or not _enabled(distribution_config.get("perform_comparison", "Enabled")):
        return
    method = str(distribution_config.get("comparison_method", "Robust"))
    use_robust = method.lower() in ("robust", "linf_robust")
    kind = baseline.get("inferred_type", constraint.get("inferred_type"))
    if kind in NUMERIC:
        if observed.get("inferred_type") not in NUMERIC:
            return
        base, cur = NumericDistribution.from_feature(baseline), NumericDistribution.from_feature(observed)
        if base is None or cur is None:
            return
        distance = linf_simple_numeric(base, cur)
        if use_robust:
            distance = robust(distance, base.count, cur.count)
        threshold = float(distribution_config.get("comparison_threshold", 0.1))
        outcome.drift, outcome.drift_method = distance, f"{'Robust' if use_robust else 'Simple'} L-infinity"
        exceeded = distance > threshold
    elif kind == "String":
        base_c, cur_c = CategoricalDistribution.from_feature(baseline), CategoricalDistribution.from_feature(observed)
        if base_c is None or cur_c is None:
            return
        threshold = float(distribution_config.get("categorical_comparison_threshold",
                                                  distribution_config.get("comparison_threshold", 0.1)))
        if str(distribution_config.get("categorical_drift_method", "LInfinity")).lower() == "chisquared":
            p_value = chi_squared_p_value(cur_c, base_c)
            if p_value is None:
                return
            outcome.drift, outcome.drift_method = p_value, "ChiSquared p-value"
            exceeded = p_value < threshold
            if exceeded:
                report.violations.append(_violation(
                    constraint["name"], "baseline_drift_check",
                    f"Baseline drift p-value: {p_value} is below threshold: {threshold} (chi-squared test of the "
                    f"current categories against the baseline's)."))
            return
        distance = linf_simple_categorical(base_c, cur_c)
        if use_robust:
            distance = robust(distance, base_c.total, cur_c.total)
        outcome.drift, outcome.drift_method = distance, f"{'Robust' if use_robust else 'Simple'} L-infinity"
        exceeded = distance > threshold
    else:
        return
    if exceeded:
        report.violations.append(_violation(
            constraint["name"], "baseline_drift_check",
            f"Baseline drift distance: {outcome.drift} exceeds threshold: {threshold} ({outcome.drift_method} "
            f"distance between the baseline and current distributions)."))


# -- chi-squared, as Deequ runs it ------------------------------------------------------------------
# Yates, Moore & McCabe (1999): for tables larger than 2x2, at most 20% of expected counts under 5;
# Cochran (1952): for 2x2 tables, every expected count at least 10.
_YATES_MIN, _YATES_SHARE, _COCHRAN_MIN = 5.0, 0.2, 10.0


def chi_squared_p_value(sample: CategoricalDistribution, expected: CategoricalDistribution) -> float | None:
    """p-value of the current counts against the baseline's shares; None when under 2 categories remain."""
    from scipy import stats

    keys = list(expected.counts)
    observed = {k: sample.counts.get(k, 0.0) for k in keys}
    sample_total = sum(observed.values())
    expected_total = expected.total
    if sample_total == 0 or expected_total == 0:
        return None
    wanted = {k: expected.counts[k] / expected_total * sample_total for k in keys}
    while len(wanted) >= 2:
        floor, allowed_below = (_COCHRAN_MIN, 0) if len(wanted) == 2 else (_YATES_MIN, int(_YATES_SHARE * len(wanted)))
        if sum(1 for v in wanted.values() if v < floor) <= allowed_below:
            break
        smallest = min(wanted, key=wanted.__getitem__)
        moved_expected, moved_observed = wanted.pop(smallest), observed.pop(smallest)
        second = min(wanted, key=wanted.__getitem__)
        wanted[second] += moved_expected
        observed[second] += moved_observed
    if len(wanted) < 2:
        return None
    f_obs = np.array([observed[k] for k in wanted])
    f_exp = np.array(list(wanted.values()))
    f_exp = f_exp * f_obs.sum() / f_exp.sum()
    return float(stats.chisquare(f_obs, f_exp).pvalue)
