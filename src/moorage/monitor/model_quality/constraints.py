"""Model-quality constraints: a baseline's metrics -> SageMaker's ``constraints.json``; later metrics checked
against them -> ``constraint_violations.json``.

A constraint is ``{"threshold": t, "comparison_operator": op}`` under the metric's name, in a
``<problem>_constraints`` section (``binary_classification_constraints``,
``multiclass_classification_constraints``, ``regression_constraints``). The operator names the
comparison that *is* the violation: ``LessThanThreshold`` (a metric where higher is better fell
below the baseline), ``GreaterThanThreshold`` (an error rate rose above it), and
``LessThanOrEqualToThreshold`` / ``GreaterThanOrEqualToThreshold`` for hand-written constraints.
Files written by SageMaker load and check unchanged.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterable
from typing import Any

from moorage.monitor.model_quality.metrics import METRICS_SECTIONS, is_number, java_double, problem_type_of

CONSTRAINTS_SECTIONS = {
    "BinaryClassification": "binary_classification_constraints",
    "MulticlassClassification": "multiclass_classification_constraints",
    "Regression": "regression_constraints",
}
COMPARISON_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": operator.gt,
    "LessThanThreshold": operator.lt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanOrEqualToThreshold": operator.le,
}

_LOWER = "LessThanThreshold"  # higher is better: a value under the baseline's is the violation
_HIGHER = "GreaterThanThreshold"  # an error: a value over the baseline's is the violation
# What SageMaker's baselines constrain, in its order (its churn example's binary constraints and its SDK's
# regression constraints; multiclass, which no published file shows, by the same rule): the model's own
# metrics, not the best constant classifier's, which describe the labels rather than the model.
SUGGESTED_CONSTRAINTS: dict[str, dict[str, str]] = {
    "BinaryClassification": {
        "recall": _LOWER, "precision": _LOWER, "accuracy": _LOWER, "true_positive_rate": _LOWER,
        "true_negative_rate": _LOWER, "false_positive_rate": _HIGHER, "false_negative_rate": _HIGHER, "auc": _LOWER,
        "f0_5": _LOWER, "f1": _LOWER, "f2": _LOWER,
    },
    "MulticlassClassification": {
        "accuracy": _LOWER, "weighted_recall": _LOWER, "weighted_precision": _LOWER, "weighted_f0_5": _LOWER,
        "weighted_f1": _LOWER, "weighted_f2": _LOWER,
    },
    "Regression": {"mae": _HIGHER, "mse": _HIGHER, "rmse": _HIGHER, "r2": _LOWER},
}


def suggest_constraints(statistics: dict[str, Any]) -> dict[str, Any]:
    """The ``constraints.json`` body for a baseline's ``statistics``: each model metric's value is its threshold.

    Metrics the statistics lack (``auc`` without probabilities) get no constraint.
    """
    problem = problem_type_of(statistics)
    metrics = statistics[METRICS_SECTIONS[problem]]
    section = {
        name: {"threshold": float(metrics[name]["value"]), "comparison_operator": comparison}
        for name, comparison in SUGGESTED_CONSTRAINTS[problem].items()
        if isinstance(metrics.get(name), dict) and is_number(metrics[name].get("value"))
    }
    return {"version": 0.0, CONSTRAINTS_SECTIONS[problem]: section}


def check_constraints(statistics: dict[str, Any], constraints: dict[str, Any]) -> list[dict[str, str]]:
    """The violations of ``constraints`` by ``statistics``, one per constraint whose comparison holds.

    Each is ``{"constraint_check_type": op, "description": ..., "metric_name": ...}`` as SageMaker
    writes it: ``Metric auc with 0.5127590160341251 +/- 0.007142408259978924 was LessThanThreshold
    '0.9395127993393898'``, numbers as Java prints doubles, ``NaN`` for a standard deviation below 200
    pairs, and the metric named as SageMaker's code names it (``truePositiveRate`` for the file's
    ``true_positive_rate``; ``f0_5`` stays ``f0_5``). Violations follow the constraints' order
    (SageMaker's follow a hash map's).

    A constraint on a metric the statistics lack (``auc`` from a baseline with probabilities, checked
    against data without them, or a name this version does not compute) is skipped, not reported:
    there is nothing to compare. Raises ValueError when the constraints hold no section, are for
    another problem type than the statistics, or a constraint has no numeric threshold or an unknown
    operator.
    """
    problem = problem_type_of(statistics)
    present = [name for name in CONSTRAINTS_SECTIONS.values() if isinstance(constraints.get(name), dict)]
    if not present:
        raise ValueError(f"the constraints hold none of {', '.join(CONSTRAINTS_SECTIONS.values())}")
    expected = CONSTRAINTS_SECTIONS[problem]
    if expected not in present:
        raise ValueError(f"the constraints are {', '.join(present)}, "
                         f"but the statistics are {METRICS_SECTIONS[problem]}")
    metrics = statistics[METRICS_SECTIONS[problem]]
    violations: list[dict[str, str]] = []
    for name, constraint in constraints[expected].items():
        comparison, threshold = _parse(name, constraint)
        observed = metrics.get(name)
        if not isinstance(observed, dict) or not is_number(observed.get("value")):
            continue
        value = float(observed["value"])
        if not COMPARISON_OPERATORS[comparison](value, threshold):
            continue
        deviation = observed.get("standard_deviation")
        spread = java_double(float(deviation)) if is_number(deviation) else "NaN"
        metric = violation_metric_name(name)
        violations.append({
            "constraint_check_type": comparison,
            "description": f"Metric {metric} with {java_double(value)} +/- {spread} was {comparison} "
                           f"'{java_double(threshold)}'",
            "metric_name": metric,
        })
    return violations


def constraint_violations_document(violations: Iterable[dict[str, str]]) -> dict[str, Any]:
    """The ``constraint_violations.json`` body."""
    return {"violations": list(violations)}


def violation_metric_name(name: str) -> str:
    """A metric's name as SageMaker's violations give it: the statistics' snake_case name in camelCase.

    Its files are its Scala fields written in snake_case (``truePositiveRate`` ->
    ``true_positive_rate``; ``f0_5`` has no capital and stays), and violations use the fields' names.
    """
    return re.sub(r"_([a-z])", lambda match: match.group(1).upper(), name)


def _parse(name: str, constraint: Any) -> tuple[str, float]:
    if not isinstance(constraint, dict):
        raise ValueError(f"the constraint on {name} should be an object with threshold and comparison_operator")
    comparison = constraint.get("comparison_operator")
    if comparison not in COMPARISON_OPERATORS:
        raise ValueError(f"the constraint on {name} has comparison_operator {comparison!r}; expected one of "
                         f"{', '.join(COMPARISON_OPERATORS)}")
    threshold = constraint.get("threshold")
    if not is_number(threshold):
        raise ValueError(f"the constraint on {name} has threshold {threshold!r}, not a number")
    return comparison, float(threshold)
