"""Model-quality metrics and constraints against scikit-learn's values and SageMaker's own files and docs.

SageMaker's files are in tests/data/sagemaker/model_quality (copied, Apache-2.0, sources in its
README); the docs' example numbers ("Model quality metrics and Amazon CloudWatch monitoring") are
quoted where used.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk

from moorage.monitor.model_quality.constraints import (
    check_constraints,
    constraint_violations_document,
    suggest_constraints,
    violation_metric_name,
)
from moorage.monitor.model_quality.metrics import (
    CURVE_MAX_POINTS,
    PROBLEM_TYPES,
    java_double,
    metric_values,
    model_quality_statistics,
)

SAGEMAKER = Path(__file__).parents[1] / "data" / "sagemaker" / "model_quality"
BINARY = "binary_classification_metrics"
MULTICLASS = "multiclass_classification_metrics"
REGRESSION = "regression_metrics"

# The order SageMaker writes them in (its docs' examples; the example file has the same keys, sorted)
DOCS_BINARY_ORDER = [
    "confusion_matrix", "recall", "precision", "accuracy", "recall_best_constant_classifier",
    "precision_best_constant_classifier", "accuracy_best_constant_classifier", "true_positive_rate",
    "true_negative_rate", "false_positive_rate", "false_negative_rate", "receiver_operating_characteristic_curve",
    "precision_recall_curve", "auc", "f0_5", "f1", "f2", "f0_5_best_constant_classifier",
    "f1_best_constant_classifier", "f2_best_constant_classifier",
]
DOCS_MULTICLASS_ORDER = [
    "confusion_matrix", "accuracy", "weighted_recall", "weighted_precision", "weighted_f0_5", "weighted_f1",
    "weighted_f2", "accuracy_best_constant_classifier", "weighted_recall_best_constant_classifier",
    "weighted_precision_best_constant_classifier", "weighted_f0_5_best_constant_classifier",
    "weighted_f1_best_constant_classifier", "weighted_f2_best_constant_classifier",
]
CURVES = ("receiver_operating_characteristic_curve", "precision_recall_curve")


def load(name: str) -> dict:
    return json.loads((SAGEMAKER / name).read_text())


def binary_pairs(n: int, seed: int, skill: float = 1.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.35).astype(int)
    probabilities = 1 / (1 + np.exp(-(skill * (2 * labels - 1) + rng.normal(0, 1.2, n))))
    return labels, (probabilities > 0.5).astype(int), np.round(probabilities, 3)  # rounded: tied scores too


def values(section: dict) -> dict[str, float]:
    return {name: metric["value"] for name, metric in section.items() if isinstance(metric, dict) and "value" in metric}


# -- the same numbers as scikit-learn -------------------------------------------------------------------
def test_binary_metrics_equal_scikit_learns() -> None:
    labels, predictions, probabilities = binary_pairs(500, seed=1)
    section = model_quality_statistics("BinaryClassification", labels, predictions, probabilities)[BINARY]
    got = values(section)
    everything = np.ones_like(labels)  # the best constant classifier answers positive
    negative_recall = sk.recall_score(labels, predictions, pos_label=0)
    expected = {
        "recall": sk.recall_score(labels, predictions),
        "precision": sk.precision_score(labels, predictions),
        "accuracy": sk.accuracy_score(labels, predictions),
        "recall_best_constant_classifier": sk.recall_score(labels, everything),
        "precision_best_constant_classifier": sk.precision_score(labels, everything),
        "accuracy_best_constant_classifier": sk.accuracy_score(labels, everything),
        "true_positive_rate": sk.recall_score(labels, predictions),
        "true_negative_rate": negative_recall,
        "false_positive_rate": 1 - negative_recall,
        "false_negative_rate": 1 - sk.recall_score(labels, predictions),
        "auc": sk.roc_auc_score(labels, probabilities),
        **{name: sk.fbeta_score(labels, predictions, beta=beta) for name, beta in
           (("f0_5", 0.5), ("f1", 1.0), ("f2", 2.0))},
        **{f"{name}_best_constant_classifier": sk.fbeta_score(labels, everything, beta=beta) for name, beta in
           (("f0_5", 0.5), ("f1", 1.0), ("f2", 2.0))},
    }
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-15)
    matrix = sk.confusion_matrix(labels, predictions, labels=[0, 1])
    assert section["confusion_matrix"] == {"0": {"0": matrix[0, 0], "1": matrix[0, 1]},
                                           "1": {"0": matrix[1, 0], "1": matrix[1, 1]}}


def test_binary_curves_are_scikit_learns_points_with_sparks_end_points() -> None:
    labels, predictions, probabilities = binary_pairs(300, seed=2)
    section = model_quality_statistics("BinaryClassification", labels, predictions, probabilities)[BINARY]
    roc = section["receiver_operating_characteristic_curve"]
    false_rates, true_rates, _ = sk.roc_curve(labels, probabilities, drop_intermediate=False)
    assert roc["false_positive_rates"][:-1] == pytest.approx(false_rates.tolist())
    assert roc["true_positive_rates"][:-1] == pytest.approx(true_rates.tolist())
    assert (roc["false_positive_rates"][-1], roc["true_positive_rates"][-1]) == (1.0, 1.0)  # Spark appends (1, 1)
    pr = section["precision_recall_curve"]
    precisions, recalls, _ = sk.precision_recall_curve(labels, probabilities, drop_intermediate=False)
    assert pr["precisions"][1:] == pytest.approx(precisions[:-1][::-1].tolist())  # highest threshold first
    assert pr["recalls"][1:] == pytest.approx(recalls[:-1][::-1].tolist())
    assert (pr["recalls"][0], pr["precisions"][0]) == (0.0, pr["precisions"][1])  # Spark prepends (0, p)


def test_long_curves_are_thinned_but_auc_uses_every_threshold() -> None:
    labels, predictions, _ = binary_pairs(5_000, seed=3)
    scores = np.random.default_rng(3).random(5_000) * 0.5 + 0.5 * labels  # 5000 distinct scores
    section = model_quality_statistics("BinaryClassification", labels, predictions, scores)[BINARY]
    roc = section["receiver_operating_characteristic_curve"]
    assert len(roc["true_positive_rates"]) <= CURVE_MAX_POINTS + 2
    assert roc["false_positive_rates"][0] == 0.0 and roc["true_positive_rates"][-2:] == [1.0, 1.0]
    assert np.all(np.diff(roc["false_positive_rates"]) >= 0) and np.all(np.diff(roc["true_positive_rates"]) >= 0)
    assert len(section["precision_recall_curve"]["recalls"]) <= CURVE_MAX_POINTS + 1
    assert section["auc"]["value"] == pytest.approx(sk.roc_auc_score(labels, scores), rel=1e-12)


def test_string_labels_and_positive_label_match_scikit_learns_pos_label() -> None:
    rng = np.random.default_rng(4)
    labels = rng.choice(["churn", "stay"], 400, p=[0.3, 0.7])
    predictions = np.where(rng.random(400) < 0.8, labels, rng.choice(["churn", "stay"], 400))
    section = model_quality_statistics("BinaryClassification", labels.tolist(), predictions.tolist(),
                                       positive_label="churn")[BINARY]
    assert section["recall"]["value"] == pytest.approx(sk.recall_score(labels, predictions, pos_label="churn"))
    assert section["precision"]["value"] == pytest.approx(sk.precision_score(labels, predictions, pos_label="churn"))
    assert section["f2"]["value"] == pytest.approx(sk.fbeta_score(labels, predictions, beta=2, pos_label="churn"))
    assert list(section["confusion_matrix"]) == ["churn", "stay"]
    # without positive_label the larger label is positive
    default = model_quality_statistics("BinaryClassification", labels, predictions)[BINARY]
    assert default["recall"]["value"] == pytest.approx(sk.recall_score(labels, predictions, pos_label="stay"))


def test_labels_are_compared_by_value() -> None:
    section = model_quality_statistics("BinaryClassification", ["1", 0, 1.0, " 0 ", True],
                                       [1, "0.0", True, False, "1"])[BINARY]
    assert section["confusion_matrix"] == {"0": {"0": 2, "1": 0}, "1": {"0": 0, "1": 3}}
    only_negatives = model_quality_statistics("BinaryClassification", [0, 0, 0], [0, 0, 1])[BINARY]
    assert only_negatives["confusion_matrix"] == {"0": {"0": 2, "1": 1}, "1": {"0": 0, "1": 0}}
    assert only_negatives["precision"]["value"] == 0.0  # 1 is positive although no label is 1


def test_multiclass_metrics_equal_scikit_learns() -> None:
    rng = np.random.default_rng(5)
    classes = np.array(["ant", "bee", "cat", "dog"])
    labels = rng.choice(classes, 600, p=[0.1, 0.2, 0.3, 0.4])
    predictions = np.where(rng.random(600) < 0.6, labels, rng.choice([*classes, "elk"], 600))  # elk: never a label
    section = model_quality_statistics("MulticlassClassification", labels, predictions)[MULTICLASS]
    majority = np.full_like(labels, "dog")

    def weighted(answers: np.ndarray) -> dict[str, float]:
        return {
            "weighted_recall": sk.recall_score(labels, answers, average="weighted", zero_division=0),
            "weighted_precision": sk.precision_score(labels, answers, average="weighted", zero_division=0),
            **{f"weighted_{name}": sk.fbeta_score(labels, answers, beta=beta, average="weighted", zero_division=0)
               for name, beta in (("f0_5", 0.5), ("f1", 1.0), ("f2", 2.0))},
        }

    expected = {"accuracy": sk.accuracy_score(labels, predictions), **weighted(predictions),
                "accuracy_best_constant_classifier": sk.accuracy_score(labels, majority),
                **{f"{k}_best_constant_classifier": v for k, v in weighted(majority).items()}}
    assert values(section) == pytest.approx(expected, rel=1e-12)
    order = [*classes, "elk"]
    matrix = sk.confusion_matrix(labels, predictions, labels=order)
    assert section["confusion_matrix"] == {a: {p: int(matrix[i, j]) for j, p in enumerate(order)}
                                           for i, a in enumerate(order)}


def test_regression_metrics_equal_scikit_learns() -> None:
    rng = np.random.default_rng(6)
    labels = rng.normal(10, 3, 400)
    predictions = labels + rng.normal(0.5, 1.5, 400)
    section = model_quality_statistics("Regression", labels, predictions)[REGRESSION]
    assert values(section) == pytest.approx({
        "mae": sk.mean_absolute_error(labels, predictions),
        "mse": sk.mean_squared_error(labels, predictions),
        "rmse": math.sqrt(sk.mean_squared_error(labels, predictions)),
        "r2": sk.r2_score(labels, predictions),
    }, rel=1e-12)


# -- SageMaker's shape and numbers ------------------------------------------------------------------
def test_binary_keys_are_sagemakers_in_its_order() -> None:
    example = load("examples_binary-classification-statistics.json")[BINARY]
    labels, predictions, probabilities = binary_pairs(250, seed=7)
    body = model_quality_statistics("BinaryClassification", labels, predictions, probabilities)
    section = body[BINARY]
    assert set(section) == set(example)
    assert list(section) == DOCS_BINARY_ORDER
    for name, metric in example.items():
        assert set(section[name]) == set(metric), name
        if name not in CURVES and name != "confusion_matrix":
            assert list(section[name]) == ["value", "standard_deviation"]
    # without probabilities: no curves and no auc, the rest in the same order
    without = model_quality_statistics("BinaryClassification", labels, predictions)[BINARY]
    assert list(without) == [k for k in DOCS_BINARY_ORDER if k not in (*CURVES, "auc")]


def test_regression_body_is_shaped_like_the_sdks_file() -> None:
    sdk = load("sdk-tests_regression-statistics.json")
    rng = np.random.default_rng(8)
    labels = rng.normal(size=100)
    body = model_quality_statistics("Regression", labels, labels + rng.normal(size=100),
                                    evaluation_time=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert list(body) == list(sdk)
    assert body["version"] == sdk["version"] == 0.0
    assert body["dataset"] == {"item_count": 100, "evaluation_time": "2024-01-02T03:04:05Z"}
    assert list(body[REGRESSION]) == list(sdk[REGRESSION])
    for name, metric in body[REGRESSION].items():
        assert list(metric) == list(sdk[REGRESSION][name])
        assert metric["standard_deviation"] == sdk[REGRESSION][name]["standard_deviation"] == "NaN"  # 100 < 200
    json.dumps(body, allow_nan=False)  # as formats.save_json writes it


def test_multiclass_keys_are_the_docs_in_their_order() -> None:
    body = model_quality_statistics("MulticlassClassification", [0, 1, 2, 2], [0, 2, 2, 1], dataset_name="holdout")
    assert list(body[MULTICLASS]) == DOCS_MULTICLASS_ORDER
    assert body["dataset"]["name"] == "holdout" and body["dataset"]["item_count"] == 4


def test_the_docs_binary_example_comes_out_to_the_last_bit() -> None:
    # its confusion matrix: actual 0 -> predicted 0 once and 1 twice; actual 1 -> predicted 1 once
    section = model_quality_statistics("BinaryClassification", [0, 0, 0, 1], [0, 1, 1, 1])[BINARY]
    example = load("examples_binary-classification-statistics.json")[BINARY]
    assert section["confusion_matrix"] == example["confusion_matrix"]
    for name in set(example) - {"confusion_matrix", "auc", *CURVES}:  # those come from probabilities
        assert section[name]["value"] == pytest.approx(example[name]["value"], abs=1e-13), name
        assert section[name]["standard_deviation"] == "NaN"
    # the docs' digits (the example file rounds to 14 places)
    assert section["true_negative_rate"]["value"] == 0.33333333333333337  # 1 - false_positive_rate
    assert section["f0_5"]["value"] == 0.3846153846153846
    assert section["f0_5_best_constant_classifier"]["value"] == 0.29411764705882354
    assert section["f2"]["value"] == 0.7142857142857143


def test_the_docs_multiclass_and_regression_examples_come_out_to_the_last_bit() -> None:
    # the docs' multiclass confusion matrix; its regression example is the same pairs (mae = 1 - accuracy)
    labels = np.repeat([0, 0, 1, 1], [1180, 510, 268, 138])
    predictions = np.repeat([0, 1, 0, 1], [1180, 510, 268, 138])
    section = model_quality_statistics("MulticlassClassification", labels, predictions)[MULTICLASS]
    assert section["confusion_matrix"] == {"0": {"0": 1180, "1": 510}, "1": {"0": 268, "1": 138}}
    docs = {"accuracy": 0.6288167938931297, "weighted_recall": 0.6288167938931297,
            "weighted_precision": 0.6983172269629505, "weighted_f0_5": 0.6803947317178771,
            "weighted_f1": 0.6571162346664904, "weighted_f2": 0.6384024354394601}
    assert {name: section[name]["value"] for name in docs} == docs
    # our best constant classifier answers the majority (the docs' numbers answer class 1: 406 / 2096)
    assert section["accuracy_best_constant_classifier"]["value"] == 1690 / 2096
    regression = model_quality_statistics("Regression", labels, predictions)[REGRESSION]
    assert {name: regression[name]["value"] for name in ("mae", "mse", "rmse")} == {
        "mae": 0.3711832061068702, "mse": 0.3711832061068702, "rmse": 0.609248066149471}
    assert regression["r2"]["value"] == pytest.approx(-1.3766111872212665, rel=1e-14)


# -- standard deviations ----------------------------------------------------------------------------
def test_standard_deviation_is_nan_under_200_pairs_and_a_number_from_200() -> None:
    labels, predictions, probabilities = binary_pairs(200, seed=9)
    below = model_quality_statistics("BinaryClassification", labels[:199], predictions[:199], probabilities[:199])
    assert {m["standard_deviation"] for m in values_of(below[BINARY])} == {"NaN"}
    at = model_quality_statistics("BinaryClassification", labels, predictions, probabilities, seed=1)
    deviations = [m["standard_deviation"] for m in values_of(at[BINARY])]
    assert all(isinstance(d, float) and d >= 0 for d in deviations)
    assert any(d > 0 for d in deviations)
    again = model_quality_statistics("BinaryClassification", labels, predictions, probabilities, seed=1)
    other = model_quality_statistics("BinaryClassification", labels, predictions, probabilities, seed=2)
    assert again[BINARY] == at[BINARY]
    assert other[BINARY] != at[BINARY]


def values_of(section: dict) -> list[dict]:
    return [metric for metric in section.values() if isinstance(metric, dict) and "standard_deviation" in metric]


def test_standard_deviation_is_over_five_subsets_of_80_percent() -> None:
    rng = np.random.default_rng(10)
    labels = rng.normal(size=250)
    predictions = labels + rng.normal(size=250)
    section = model_quality_statistics("Regression", labels, predictions, seed=42)[REGRESSION]
    draw = np.random.default_rng(42)
    maes = []
    for _ in range(5):
        rows = draw.choice(250, size=200, replace=False)
        maes.append(sk.mean_absolute_error(labels[rows], predictions[rows]))
    assert section["mae"]["standard_deviation"] == pytest.approx(float(np.std(maes, ddof=1)), rel=1e-12)


# -- constraints --------------------------------------------------------------------------------------
def read_pandas_constraints() -> dict[str, tuple[float, str]]:
    lines = (SAGEMAKER / "examples_binary-constraints.pandas-output.txt").read_text().splitlines()[1:]
    return {name: (float(threshold), operator) for name, threshold, operator in (line.split() for line in lines)}


def test_suggested_constraints_are_sagemakers_metrics_and_operators() -> None:
    labels, predictions, probabilities = binary_pairs(300, seed=11)
    statistics = model_quality_statistics("BinaryClassification", labels, predictions, probabilities)
    constraints = suggest_constraints(statistics)
    sagemaker = read_pandas_constraints()
    assert list(constraints) == ["version", "binary_classification_constraints"]
    section = constraints["binary_classification_constraints"]
    assert list(section) == list(sagemaker)
    assert {name: c["comparison_operator"] for name, c in section.items()} == {
        name: operator for name, (_, operator) in sagemaker.items()}
    assert all(c["threshold"] == statistics[BINARY][name]["value"] for name, c in section.items())
    sdk = load("sdk-tests_regression-constraints.json")
    regression = suggest_constraints(load("sdk-tests_regression-statistics.json"))
    assert regression == sdk  # SageMaker's own baseline, suggested again from its statistics


@pytest.mark.parametrize("problem", PROBLEM_TYPES)
def test_a_baseline_checked_against_itself_has_no_violations(problem: str) -> None:
    labels, predictions, probabilities = binary_pairs(300, seed=12)
    if problem == "Regression":
        statistics = model_quality_statistics(problem, labels * 2.0, predictions + probabilities)
    else:
        statistics = model_quality_statistics(problem, labels, predictions,
                                              probabilities if problem == "BinaryClassification" else None)
    assert check_constraints(statistics, suggest_constraints(statistics)) == []


def test_a_degraded_model_violates_with_sagemakers_wording() -> None:
    labels, predictions, probabilities = binary_pairs(1_000, seed=13, skill=2.0)
    constraints = suggest_constraints(
        model_quality_statistics("BinaryClassification", labels, predictions, probabilities))
    labels, predictions, probabilities = binary_pairs(400, seed=14, skill=0.2)
    current = model_quality_statistics("BinaryClassification", labels, predictions, probabilities)
    violations = check_constraints(current, constraints)
    flagged = {v["metric_name"] for v in violations}
    assert {"auc", "accuracy", "f1", "recall", "truePositiveRate", "falseNegativeRate"} <= flagged
    section = current[BINARY]
    for violation in violations:
        assert list(violation) == ["constraint_check_type", "description", "metric_name"]
        name = re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), violation["metric_name"])
        metric, bound = section[name], constraints["binary_classification_constraints"][name]
        assert violation["constraint_check_type"] == bound["comparison_operator"]
        assert violation["description"] == (
            f"Metric {violation['metric_name']} with {java_double(metric['value'])} +/- "
            f"{java_double(metric['standard_deviation'])} was {bound['comparison_operator']} "
            f"'{java_double(bound['threshold'])}'")
    document = constraint_violations_document(violations)
    assert document == {"violations": violations}
    json.dumps(document, allow_nan=False)


def test_sagemakers_violation_descriptions_come_out_word_for_word() -> None:
    text = (SAGEMAKER / "examples_violations.pandas-output.txt").read_text()
    found = re.findall(r"(Metric (\w+) with (\S+) \+/- (\S+) was (\w+) '([^']+)')", text)
    assert len(found) == 10
    statistics: dict = {"version": 0.0, "dataset": {"item_count": 747}, BINARY: {}}
    constraints: dict = {"version": 0.0, "binary_classification_constraints": {}}
    for _, metric, value, deviation, comparison, threshold in found:
        name = re.sub(r"[A-Z]", lambda m: "_" + m.group(0).lower(), metric)  # the files' snake_case
        statistics[BINARY][name] = {"value": float(value), "standard_deviation": float(deviation)}
        constraints["binary_classification_constraints"][name] = {"threshold": float(threshold),
                                                                   "comparison_operator": comparison}
    violations = check_constraints(statistics, constraints)
    assert [v["description"] for v in violations] == [description for description, *_ in found]
    assert [v["metric_name"] for v in violations] == [metric for _, metric, *_ in found]
    assert [v["constraint_check_type"] for v in violations] == [comparison for *_, comparison, _ in found]


def test_sagemakers_regression_constraints_check_our_statistics() -> None:
    constraints = load("sdk-tests_regression-constraints.json")
    assert check_constraints(load("sdk-tests_regression-statistics.json"), constraints) == []
    rng = np.random.default_rng(15)
    labels = rng.normal(0, 1, 300)
    good = model_quality_statistics("Regression", labels, labels + rng.normal(0, 0.1, 300))
    assert check_constraints(good, constraints) == []
    bad = model_quality_statistics("Regression", labels * 0.1, labels * 0.1 + rng.normal(0.5, 1.0, 300))
    violations = check_constraints(bad, constraints)
    assert [(v["metric_name"], v["constraint_check_type"]) for v in violations] == [
        ("mae", "GreaterThanThreshold"), ("mse", "GreaterThanThreshold"), ("rmse", "GreaterThanThreshold"),
        ("r2", "LessThanThreshold")]
    assert violations[0]["description"].endswith("was GreaterThanThreshold '0.5040653554420981'")


def test_a_nan_standard_deviation_prints_as_nan() -> None:
    constraints = load("sdk-tests_regression-constraints.json")
    small = model_quality_statistics("Regression", [0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 0.0, 3.5])
    mae = small[REGRESSION]["mae"]["value"]
    assert check_constraints(small, constraints)[0]["description"] == (
        f"Metric mae with {mae!r} +/- NaN was GreaterThanThreshold '0.5040653554420981'")


def test_every_comparison_operator_and_unknown_metrics() -> None:
    statistics = {"version": 0.0, "dataset": {"item_count": 3}, REGRESSION: {
        "mae": {"value": 0.5, "standard_deviation": "NaN"}, "r2": {"value": 0.5, "standard_deviation": 0.01}}}

    def flagged(operator: str) -> list[str]:
        constraints = {"regression_constraints": {
            "mae": {"threshold": 0.5, "comparison_operator": operator},
            "mape": {"threshold": 0.1, "comparison_operator": operator}}}  # a metric we do not compute: skipped
        return [v["metric_name"] for v in check_constraints(statistics, constraints)]

    assert flagged("GreaterThanThreshold") == [] and flagged("LessThanThreshold") == []
    assert flagged("GreaterThanOrEqualToThreshold") == ["mae"] and flagged("LessThanOrEqualToThreshold") == ["mae"]
    # auc constrained by a baseline with probabilities, checked against statistics without them
    labels, predictions, probabilities = binary_pairs(300, seed=16)
    constraints = suggest_constraints(
        model_quality_statistics("BinaryClassification", labels, predictions, probabilities))
    without = model_quality_statistics("BinaryClassification", labels, predictions)
    assert check_constraints(without, constraints) == []


def test_metric_values_are_the_numeric_metrics_by_their_published_names() -> None:
    assert metric_values(load("sdk-tests_regression-statistics.json")) == {
        "mae": 0.5040653554420981, "mse": 0.33364933609800973, "rmse": 0.5776238707827177, "r2": -3.208758170289026}
    labels, predictions, probabilities = binary_pairs(300, seed=17)
    published = metric_values(model_quality_statistics("BinaryClassification", labels, predictions, probabilities))
    assert list(published) == [k for k in DOCS_BINARY_ORDER if k not in ("confusion_matrix", *CURVES)]
    assert all(isinstance(v, float) for v in published.values())
    example = metric_values(load("examples_binary-classification-statistics.json"))
    assert example["auc"] == 1.0 and "confusion_matrix" not in example


def test_java_double_and_metric_names() -> None:
    assert [java_double(x) for x in (0.0, 1.0, 0.001, 0.5127590160341251, 1234567.5, 1e7, 1e-5, -2.5e-4,
                                      12345678.9, float("nan"))] == [
        "0.0", "1.0", "0.001", "0.5127590160341251", "1234567.5", "1.0E7", "1.0E-5", "-2.5E-4", "1.23456789E7", "NaN"]
    assert [violation_metric_name(n) for n in ("true_positive_rate", "f0_5", "weighted_f0_5", "r2", "auc")] == [
        "truePositiveRate", "f0_5", "weightedF0_5", "r2", "auc"]


# -- bad inputs ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(("call", "message"), [
    (lambda: model_quality_statistics("Ranking", [1], [1]), "unknown problem type"),
    (lambda: model_quality_statistics("Regression", [], []), "no labels"),
    (lambda: model_quality_statistics("Regression", [1.0, 2.0], [1.0]), "2 labels but 1 predictions"),
    (lambda: model_quality_statistics("BinaryClassification", [0, 1], [0, 1], [0.2, 1.5]), r"in \[0, 1\]"),
    (lambda: model_quality_statistics("BinaryClassification", [0, 1], [0, 1], [-0.1, 0.5]), r"in \[0, 1\]"),
    (lambda: model_quality_statistics("BinaryClassification", [0, 1], [0, 1], [0.5]), "1 probabilities"),
    (lambda: model_quality_statistics("BinaryClassification", [0, 1, 2], [0, 1, 1]), "two classes"),
    (lambda: model_quality_statistics("BinaryClassification", [0, None], [0, 1]), "missing"),
    (lambda: model_quality_statistics("MulticlassClassification", [0.0, float("nan")], [0, 1]), "missing"),
    (lambda: model_quality_statistics("BinaryClassification", [0, 1], [0, 1], positive_label=7), "positive_label"),
    (lambda: model_quality_statistics("Regression", ["a", "b"], [1, 2]), "must be numbers"),
    (lambda: model_quality_statistics("Regression", [1.0, 2.0], [1.0, np.inf]), "missing or infinite"),
    (lambda: model_quality_statistics("Regression", [1.0], [1.0], [0.5]), "no probabilities"),
    (lambda: model_quality_statistics("Regression", [[1, 2], [3, 4]], [1, 2]), "one value per pair"),
    (lambda: check_constraints(load("sdk-tests_regression-statistics.json"),
                               {"regression_constraints": {"mae": {"threshold": 1, "comparison_operator": "Near"}}}),
     "comparison_operator"),
    (lambda: check_constraints(load("sdk-tests_regression-statistics.json"),
                               {"binary_classification_constraints": {}}), "regression_metrics"),
    (lambda: check_constraints(load("sdk-tests_regression-statistics.json"),
                               {"regression_constraints": {"mae": {"comparison_operator": "LessThanThreshold"}}}),
     "threshold"),
    (lambda: metric_values({"version": 0.0}), "exactly one of"),
])
def test_bad_inputs_raise_value_error(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_error_messages_name_the_dataset() -> None:
    with pytest.raises(ValueError, match=r"^holdout: 2 labels but 1 predictions"):
        model_quality_statistics("Regression", [1.0, 2.0], [1.0], dataset_name="holdout")
