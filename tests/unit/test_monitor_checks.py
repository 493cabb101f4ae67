"""Verification: SageMaker's files drive checks; injected drift is found exactly where it was put."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moorage.monitor import check, evaluate, load_json, profile_batches, shape_errors, suggest_constraints
from moorage.monitor.common.distributions import CategoricalDistribution
from moorage.monitor.data_quality.verify import chi_squared_p_value

SAGEMAKER = Path(__file__).parents[1] / "data" / "sagemaker" / "data_quality"
CATEGORIES = ["north", "south", "east", "west"]


def make_frame(rows: int, seed: int, drift: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "age": rng.normal(40, 10, rows).round(1),
        "income": rng.lognormal(10, 0.5, rows),
        "visits": rng.poisson(3, rows),
        "score": rng.uniform(0, 1, rows),
        "region": rng.choice(CATEGORIES, rows, p=[0.4, 0.3, 0.2, 0.1]),
        "plan": rng.choice(["free", "pro", "team"], rows, p=[0.6, 0.3, 0.1]),
    })
    frame.loc[rng.random(rows) < 0.05, "score"] = np.nan
    if drift:
        frame["income"] = rng.lognormal(10.4, 0.5, rows)  # incomes up by half
        frame["region"] = rng.choice(CATEGORIES, rows, p=[0.15, 0.3, 0.25, 0.3])
    return frame


def _batches(frame: pd.DataFrame, size: int = 4_000) -> list[pd.DataFrame]:
    return [frame.iloc[i:i + size] for i in range(0, len(frame), size)]


@pytest.fixture(scope="module")
def baseline() -> tuple[dict, dict]:
    statistics = profile_batches(_batches(make_frame(20_000, seed=1))).to_statistics()
    return statistics, suggest_constraints(statistics)


def _flagged(violations: dict) -> set[tuple[str, str]]:
    return {(v["feature_name"], v["constraint_check_type"]) for v in violations["violations"]}


def test_drift_injected_into_two_features_is_found_there_and_nowhere_else(baseline: tuple[dict, dict]) -> None:
    statistics, constraints = baseline
    current = profile_batches(_batches(make_frame(5_000, seed=2, drift=True)))
    report = evaluate(current, statistics, constraints)
    assert _flagged(report.to_dict()) == {("income", "baseline_drift_check"), ("region", "baseline_drift_check")}
    metrics = report.metrics()
    assert metrics["feature_baseline_drift_income"] > 0.1 and metrics["feature_baseline_drift_region"] > 0.1
    assert metrics["feature_baseline_drift_age"] == 0.0  # Robust: within what two samples differ by
    assert metrics["feature_non_null_score"] == pytest.approx(0.95, abs=0.01)
    assert metrics["constraint_violations_baseline_drift_check"] == 2.0


def test_undrifted_data_from_the_same_distribution_has_no_violations(baseline: tuple[dict, dict]) -> None:
    statistics, constraints = baseline
    for seed in (3, 4):
        current = profile_batches(_batches(make_frame(5_000, seed=seed)))
        assert check(current, statistics, constraints) == {"violations": []}


def test_the_files_alone_give_the_same_verdict(baseline: tuple[dict, dict]) -> None:
    """Statistics written to JSON and read back (no profile, no raw data) check the same."""
    statistics, constraints = baseline
    current = profile_batches(_batches(make_frame(5_000, seed=2, drift=True)))
    from_files = check(json.loads(json.dumps(current.to_statistics())), json.loads(json.dumps(statistics)),
                       json.loads(json.dumps(constraints)))
    assert _flagged(from_files) == _flagged(check(current, statistics, constraints))
    assert shape_errors(from_files, "constraint_violations") == []


def test_simple_comparison_counts_sampling_noise_robust_does_not(baseline: tuple[dict, dict]) -> None:
    statistics, constraints = baseline
    small = profile_batches([make_frame(60, seed=5)])
    simple = copy.deepcopy(constraints)
    simple["monitoring_config"]["distribution_constraints"]["comparison_method"] = "Simple"
    robust_report, simple_report = evaluate(small, statistics, constraints), evaluate(small, statistics, simple)
    assert robust_report.features["age"].drift < simple_report.features["age"].drift
    assert not any(v["constraint_check_type"] == "baseline_drift_check" for v in robust_report.violations)


def test_schema_type_completeness_and_domain_checks(baseline: tuple[dict, dict]) -> None:
    statistics, constraints = baseline
    frame = make_frame(2_000, seed=6).drop(columns=["plan"])
    frame["visits"] = frame["visits"].astype(str)
    frame.loc[:99, "visits"] = "unknown"  # 5% of a numeric feature is text now
    frame.loc[:599, "age"] = np.nan  # 30% missing where the baseline had none
    frame.loc[:199, "region"] = "mars"  # outside the domain
    frame["session"] = "s"  # not in the baseline
    flagged = _flagged(check(profile_batches([frame]), statistics, constraints))
    assert ("plan", "missing_column_check") in flagged
    assert ("session", "extra_column_check") in flagged
    assert ("visits", "data_type_check") in flagged
    assert ("age", "completeness_check") in flagged
    assert ("region", "categorical_values_check") in flagged
    description = next(v["description"] for v in check(profile_batches([frame]), statistics, constraints)["violations"]
                       if v["constraint_check_type"] == "data_type_check")
    assert description.startswith("Value: 0.95 does not meet the constraint requirement!")


def test_per_feature_overrides_and_disabled_comparisons(baseline: tuple[dict, dict]) -> None:
    statistics, constraints = baseline
    current = profile_batches(_batches(make_frame(5_000, seed=2, drift=True)))
    quiet = copy.deepcopy(constraints)
    for feature in quiet["features"]:
        if feature["name"] == "income":
            feature["monitoring_config_overrides"] = {"evaluate_constraints": "Disabled"}
        if feature["name"] == "region":
            feature["string_constraints"]["monitoring_config_overrides"] = {
                "distribution_constraints": {"categorical_comparison_threshold": 0.5}}
    assert check(current, statistics, quiet) == {"violations": []}
    off = copy.deepcopy(constraints)
    off["monitoring_config"]["distribution_constraints"] = {"enable_comparisons": False}  # the older key
    assert check(current, statistics, off) == {"violations": []}


def test_chi_squared_categorical_method(baseline: tuple[dict, dict]) -> None:
    statistics, constraints = baseline
    chi = copy.deepcopy(constraints)
    chi["monitoring_config"]["distribution_constraints"]["categorical_drift_method"] = "ChiSquared"
    chi["monitoring_config"]["distribution_constraints"]["categorical_comparison_threshold"] = 0.001
    drifted = evaluate(profile_batches([make_frame(5_000, seed=2, drift=True)]), statistics, chi)
    assert ("region", "baseline_drift_check") in _flagged(drifted.to_dict())
    assert drifted.features["region"].drift < 1e-6  # a p-value
    calm = evaluate(profile_batches([make_frame(5_000, seed=3)]), statistics, chi)
    assert ("region", "baseline_drift_check") not in _flagged(calm.to_dict())


def test_chi_squared_regroups_small_categories_as_deequ_does() -> None:
    expected = CategoricalDistribution({"a": 500, "b": 480, "c": 2, "d": 1})
    assert chi_squared_p_value(CategoricalDistribution({"a": 50, "b": 50, "c": 1, "d": 0}), expected) > 0.5
    assert chi_squared_p_value(CategoricalDistribution({"a": 1}), CategoricalDistribution({"a": 5})) is None


# -- SageMaker's own files ------------------------------------------------------------------------
def test_sagemaker_files_have_their_shapes() -> None:
    for name, kind in [("sdk-tests_statistics-numeric-kll.json", "statistics"),
                       ("sdk-tests_statistics-string.json", "statistics"),
                       ("sdk-tests_constraints-numeric.json", "constraints"),
                       ("sdk-tests_constraints-string.json", "constraints"),
                       ("sdk-tests_constraint_violations.json", "constraint_violations")]:
        assert shape_errors(load_json(SAGEMAKER / name), kind) == [], name


def test_sagemaker_numeric_baseline_drives_a_check() -> None:
    statistics = load_json(SAGEMAKER / "sdk-tests_statistics-numeric-kll.json")
    constraints = load_json(SAGEMAKER / "sdk-tests_constraints-numeric.json")
    # SageMaker's constraints are what our suggestion rules make of its statistics
    assert suggest_constraints(statistics)["features"] == constraints["features"]
    # the baseline's own values (its sketch holds all 100) pass; shifted ones drift; negatives fail nothing else
    values = {f["name"]: f["numerical_statistics"]["distribution"]["kll"]["sketch"]["data"][0]
              for f in statistics["features"]}
    same = pd.DataFrame(values).astype(float)
    assert check(profile_batches([same]), statistics, constraints) == {"violations": []}
    shifted = same.copy()
    shifted["_c2"] = shifted["_c2"] + 3
    assert _flagged(check(profile_batches([shifted]), statistics, constraints)) == {("_c2", "baseline_drift_check")}


def test_sagemaker_string_baseline_with_overrides_and_older_keys_drives_a_check() -> None:
    statistics = load_json(SAGEMAKER / "sdk-tests_statistics-string.json")
    constraints = load_json(SAGEMAKER / "sdk-tests_constraints-string.json")
    value = "preproc-not-YET-supported-for-csv-json"
    good = pd.DataFrame({"message": [value] * 50, "second_message": [value] * 50})
    assert check(profile_batches([good]), statistics, constraints) == {"violations": []}
    bad = pd.DataFrame({"message": [value] * 40 + ["other"] * 10, "second_message": [value] * 50})
    flagged = _flagged(check(profile_batches([bad]), statistics, constraints))
    # min_domain_mass 1.0 (older key) -> 80% inside the domain fails; comparison_threshold 1.0 never drifts
    assert flagged == {("message", "categorical_values_check")}
    only_one = pd.DataFrame({"message": [value] * 5})
    assert _flagged(check(profile_batches([only_one]), statistics, constraints)) == {
        ("second_message", "missing_column_check")}
