"""The ModelExplainability monitor: Clarify's SHAP configuration, attributions (Kernel SHAP, TreeSHAP, linear),
analysis.json, and the NDCG attribution-drift check against SageMaker's documented numbers and files."""

from __future__ import annotations

import copy
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from moorage.monitor.model_explainability.attributions import (
    PredictError,
    ShapConfig,
    compute_attributions,
    explainability_analysis,
    global_shap,
    load_shap_config,
)
from moorage.monitor.model_explainability.drift import (
    check_attribution_drift,
    drift_scores,
    metric_values,
    ndcg,
    violations_document,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "sagemaker" / "explainability"


def _load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def _config(baseline: np.ndarray, **shap: Any) -> ShapConfig:
    names = [f"x{i}" for i in range(baseline.shape[1])]
    return load_shap_config({"headers": names, "methods": {"shap": {"baseline": baseline.tolist(), **shap}}})


def _exact_shapley(f: Any, x: np.ndarray, baseline: np.ndarray, logit: bool = False) -> np.ndarray:
    """Shapley values of v(S) = link(mean_b f(x_S, b_rest)) by enumerating every coalition (small m only)."""
    m = len(x)

    def value(subset: tuple[int, ...]) -> float:
        mixed = baseline.copy()
        mixed[:, list(subset)] = x[list(subset)]
        mean = float(np.mean(f(mixed)))
        return math.log(mean / (1 - mean)) if logit else mean

    phi = np.zeros(m)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for size in range(m):
            weight = math.factorial(size) * math.factorial(m - size - 1) / math.factorial(m)
            for subset in itertools.combinations(others, size):
                phi[j] += weight * (value((*subset, j)) - value(subset))
    return phi


# -- NDCG -------------------------------------------------------------------------------------------------
def test_ndcg_reproduces_sagemakers_documented_example() -> None:
    # "Monitor Feature Attribution Drift for Models in Production": training SAT 0.70, GPA 0.50,
    # class rank 0.05; live 0.10, 0.20, 0.70 (the ranking reversed); "the NDCG value is 0.69".
    training = {"SAT score": 0.70, "GPA": 0.50, "Class rank": 0.05}
    live = {"SAT score": 0.10, "GPA": 0.20, "Class rank": 0.70}
    value = ndcg(training, live)
    # DCG = sum a(f'_i) / log2(i + 1) over F' = [Class rank, GPA, SAT score]; iDCG over F = [SAT, GPA, rank]
    dcg = 0.05 / math.log2(2) + 0.50 / math.log2(3) + 0.70 / math.log2(4)
    idcg = 0.70 / math.log2(2) + 0.50 / math.log2(3) + 0.05 / math.log2(4)
    assert value == dcg / idcg == 0.6876396241226223
    assert round(value, 2) == 0.69
    assert value < 0.90  # SageMaker raises an alert below 0.90
    assert ndcg(training, training) == 1.0


def test_ndcg_is_scikit_learns_ndcg_score_ties_included() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(7)
    for _ in range(300):
        m = int(rng.integers(2, 15))
        relevance = rng.random(m)
        scores = rng.integers(0, 4, m).astype(float) if rng.random() < 0.5 else rng.random(m)
        ours = ndcg({f"f{i}": v for i, v in enumerate(relevance)}, {f"f{i}": v for i, v in enumerate(scores)})
        assert ours == pytest.approx(sklearn_metrics.ndcg_score([relevance], [scores]), abs=1e-12)


def test_ndcg_edge_cases() -> None:
    # a feature missing on one side has attribution 0 there
    assert ndcg({"a": 1.0, "b": 0.5}, {"a": 1.0}) == 1.0
    assert ndcg({"a": 1.0}, {"a": 0.1, "b": 0.9}) == pytest.approx(1 / math.log2(3))
    # nothing attributed in the baseline: nothing to rank
    assert ndcg({"a": 0.0, "b": 0.0}, {"a": 0.0, "b": 0.0}) == 1.0
    assert ndcg({"a": 0.0, "b": 0.0}, {"a": 0.3, "b": 0.0}) == 0.0
    # numpy scalars are numbers
    assert ndcg({"a": np.float32(0.5), "b": np.float64(0.1)}, {"a": np.float64(0.1), "b": 0.2}) < 1.0
    for bad in ({}, {"a": float("nan")}, {"a": "0.5"}, {"a": True}):
        with pytest.raises(ValueError):
            ndcg(bad, {"a": 1.0})
        with pytest.raises(ValueError):
            ndcg({"a": 1.0}, bad)


# -- configuration --------------------------------------------------------------------------------------
def test_clarifys_example_analysis_config_loads() -> None:
    doc = _load("examples_explainability_analysis_config.json")
    config = load_shap_config(doc)
    assert config.features == tuple(h for h in doc["headers"] if h != "Target")  # the label is not a feature
    assert len(config.features) == 14
    assert config.baseline is not None and config.baseline.shape == (1, 14)
    assert config.baseline[0, 2] == 189794.0
    assert (config.num_samples, config.agg_method, config.use_logit, config.save_local_shap_values) == (
        15, "mean_abs", False, True)
    assert config.baseline_uri is None and config.label == "Target"


def test_config_variants() -> None:
    # a label given by index, JSON Lines baseline rows, numeric strings as a CSV gives them
    config = load_shap_config({"headers": ["y", "a", "b"], "label": 0, "methods": {"shap": {
        "baseline": [{"features": [1, "2.5"]}], "agg_method": "MEDIAN", "seed": 3}}})
    assert config.features == ("a", "b") and config.baseline.tolist() == [[1.0, 2.5]]
    assert (config.agg_method, config.seed, config.num_samples) == ("median", 3, None)
    # the monitor's configuration: headers are the features, no label; a predictor's label_headers
    config = load_shap_config({"headers": ["a", "b"], "methods": {"shap": {"baseline": [[0, 0]]}},
                               "predictor": {"label_headers": ["no", "yes"]}})
    assert config.features == ("a", "b") and config.label_headers == ("no", "yes")
    # no headers: features named by position
    assert load_shap_config({"methods": {"shap": {"baseline": [[0, 1, 2]]}}}).features == ("0", "1", "2")


def test_a_baseline_uri_is_left_to_the_caller() -> None:
    config = load_shap_config({"headers": ["a", "b"], "methods": {"shap": {"baseline": "s3://bucket/baseline.csv"}}})
    assert config.baseline is None and config.baseline_uri == "s3://bucket/baseline.csv"
    with pytest.raises(ValueError, match=r"methods\.shap\.baseline.*s3://bucket/baseline\.csv.*with_baseline"):
        global_shap(config, np.zeros((2, 2)), lambda rows: rows.sum(axis=1))
    resolved = config.with_baseline([[1.0, 2.0], [3.0, 4.0]])
    assert resolved.baseline.shape == (2, 2)
    with pytest.raises(ValueError, match="baseline: rows have 3 values but there are 2 features"):
        config.with_baseline([[1.0, 2.0, 3.0]])


@pytest.mark.parametrize(("doc", "field"), [
    ([], "analysis configuration"),
    ({"headers": ["a"]}, "methods"),
    ({"methods": {"report": {}}}, "methods.shap"),
    ({"methods": {"shap": {}}}, r"methods\.shap\.baseline: required"),
    ({"methods": {"shap": {"baseline": []}}}, r"methods\.shap\.baseline: needs at least one row"),
    ({"methods": {"shap": {"baseline": [[1, 2], [1]]}}}, r"methods\.shap\.baseline: the rows have different"),
    ({"methods": {"shap": {"baseline": [[1, "abc"]]}}}, r"methods\.shap\.baseline\[0\]\[1\]: 'abc' is not a number"),
    ({"methods": {"shap": {"baseline": [[1, None]]}}}, r"methods\.shap\.baseline\[0\]\[1\]"),
    ({"methods": {"shap": {"baseline": [5]}}}, r"methods\.shap\.baseline\[0\]"),
    ({"headers": ["y", "a", "b"], "label": "y", "methods": {"shap": {"baseline": [[1, 2, 3]]}}},
     r"methods\.shap\.baseline: rows have 3 values but there are 2 features \(a, b\)"),
    ({"methods": {"shap": {"baseline": [[1]], "agg_method": "max"}}}, r"methods\.shap\.agg_method: 'max'"),
    ({"methods": {"shap": {"baseline": [[1]], "num_samples": 0}}}, r"methods\.shap\.num_samples"),
    ({"methods": {"shap": {"baseline": [[1]], "num_samples": "15"}}}, r"methods\.shap\.num_samples"),
    ({"methods": {"shap": {"baseline": [[1]], "num_samples": True}}}, r"methods\.shap\.num_samples"),
    ({"methods": {"shap": {"baseline": [[1]], "use_logit": "yes"}}}, r"methods\.shap\.use_logit"),
    ({"methods": {"shap": {"baseline": [[1]], "seed": 1.5}}}, r"methods\.shap\.seed"),
    ({"methods": {"shap": {"num_clusters": 3}}}, r"methods\.shap\.num_clusters"),
    ({"methods": {"shap": {"baseline": [[1]], "text_config": {"granularity": "token"}}}}, r"shap\.text_config"),
    ({"headers": "a,b", "methods": {"shap": {"baseline": [[1, 2]]}}}, "headers"),
    ({"headers": ["a", "a"], "methods": {"shap": {"baseline": [[1, 2]]}}}, "headers: .* not unique"),
    ({"label": True, "methods": {"shap": {"baseline": [[1]]}}}, "label"),
    ({"methods": {"shap": {"baseline": [[1]]}}, "predictor": {"label_headers": "yes"}}, "predictor.label_headers"),
])
def test_bad_configurations_name_the_field(doc: Any, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        load_shap_config(doc)


# -- attributions -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def shap_module() -> Any:
    return pytest.importorskip("shap")


@pytest.fixture
def linear_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    scale = np.array([1.0, 2.0, 0.5, 3.0])
    coef = np.array([3.0, -1.0, 0.5, 0.2])
    x = rng.normal(size=(400, 4)) * scale
    return x, x @ coef + 1.0, x[:8], x[100:140]


def test_linear_attributions_are_the_coefficients_times_the_spread(shap_module: Any, linear_data: Any) -> None:
    from sklearn.linear_model import LinearRegression

    x, y, baseline, rows = linear_data
    model = LinearRegression().fit(x, y)
    spread = model.coef_ * (rows - baseline.mean(axis=0))  # the exact SHAP values of a linear model
    for agg, expected in (("mean_abs", np.mean(np.abs(spread), axis=0)), ("median", np.median(spread, axis=0)),
                          ("mean_sq", np.mean(spread**2, axis=0))):
        config = _config(baseline, agg_method=agg, num_samples=14)
        exact = compute_attributions(config, rows, model=model)  # the exact linear explainer
        assert exact.method == "linear"
        np.testing.assert_allclose(exact.local_values, spread, rtol=0, atol=1e-12)
        np.testing.assert_allclose(list(exact.global_values.values()), expected, rtol=0, atol=1e-12)
        assert exact.expected_value == pytest.approx(float(np.mean(model.predict(baseline))), abs=1e-12)
        # Kernel SHAP through a predict callable: every coalition of 4 features (14) is enumerated
        kernel = compute_attributions(config, rows, model.predict)
        assert kernel.method == "kernel"
        np.testing.assert_allclose(list(kernel.global_values.values()), expected, rtol=0, atol=1e-9)
        assert list(global_shap(config, rows, model.predict)) == ["x0", "x1", "x2", "x3"]


def test_kernel_shap_is_exact_for_a_linear_model_even_when_sampling(shap_module: Any) -> None:
    # an additive game is fitted exactly by Kernel SHAP's regression from any coalitions: 8 features,
    # 60 of the 254 coalitions
    rng = np.random.default_rng(1)
    coef = rng.normal(size=8)
    baseline, rows = rng.normal(size=(5, 8)), rng.normal(size=(10, 8))
    config = _config(baseline, num_samples=60)
    values = global_shap(config, rows, lambda r: r @ coef - 2.0)
    expected = np.mean(np.abs(coef * (rows - baseline.mean(axis=0))), axis=0)
    np.testing.assert_allclose(list(values.values()), expected, rtol=0, atol=1e-8)


def test_treeshap_and_kernel_shap_agree_on_a_small_forest(shap_module: Any) -> None:
    from sklearn.ensemble import RandomForestRegressor

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 4))
    y = 2 * x[:, 0] + np.sin(3 * x[:, 1]) + x[:, 2] * x[:, 3]
    model = RandomForestRegressor(n_estimators=20, max_depth=5, random_state=0).fit(x, y)
    baseline, rows = x[:6], x[200:230]
    config = _config(baseline, num_samples=14)
    tree = compute_attributions(config, rows, model=model)
    kernel = compute_attributions(config, rows, model.predict)
    assert (tree.method, kernel.method) == ("tree", "kernel")
    np.testing.assert_allclose(tree.local_values, kernel.local_values, rtol=0, atol=1e-6)
    assert tree.expected_value == pytest.approx(kernel.expected_value, abs=1e-6)
    # both are the exact Shapley values of the baseline game
    for i in (0, 7):
        np.testing.assert_allclose(tree.local_values[i], _exact_shapley(model.predict, rows[i], baseline), atol=1e-6)
    # and with the model object and the endpoint both given, they must be the same model
    assert compute_attributions(config, rows, model.predict, model=model).method == "tree"


def test_classifiers_explain_the_second_class_probability(shap_module: Any, linear_data: Any) -> None:
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y, baseline, rows = linear_data
    labels = (y > 1.0).astype(int)
    rows = rows[:15]
    forest = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0).fit(x, labels)
    config = _config(baseline, num_samples=14)
    tree = compute_attributions(config, rows, model=forest)
    kernel = compute_attributions(config, rows, lambda r: forest.predict_proba(r)[:, 1])
    assert tree.method == "tree"
    np.testing.assert_allclose(tree.local_values, kernel.local_values, atol=1e-6)

    # boosting's trees give log-odds: no exact fast path for the probability, Kernel SHAP instead
    boosting = GradientBoostingClassifier(n_estimators=30, random_state=0).fit(x, labels)
    fallback = compute_attributions(config, rows, model=boosting)
    assert fallback.method == "kernel"
    np.testing.assert_allclose(fallback.local_values[:3], _exact_rows(lambda r: boosting.predict_proba(r)[:, 1],
                                                                  rows[:3], baseline), atol=1e-9)

    # with use_logit and Clarify's usual single baseline row, the log-odds are the trees' and the
    # logistic regression's own output: exact fast paths
    one_row = _config(baseline.mean(axis=0, keepdims=True), num_samples=14, use_logit=True)
    for model, method in ((boosting, "tree"), (LogisticRegression().fit(x, labels), "linear")):
        fast = compute_attributions(one_row, rows, model=model)
        kernel = compute_attributions(one_row, rows, lambda r, m=model: m.predict_proba(r)[:, 1])
        assert fast.method == method
        np.testing.assert_allclose(fast.local_values, kernel.local_values, atol=1e-6)
        assert fast.expected_value == pytest.approx(kernel.expected_value, abs=1e-6)


def _exact_rows(f: Any, rows: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    return np.array([_exact_shapley(f, row, baseline) for row in rows])


def test_a_model_object_that_is_not_the_endpoints_is_refused(shap_module: Any, linear_data: Any) -> None:
    from sklearn.linear_model import LinearRegression

    x, y, baseline, rows = linear_data
    model = LinearRegression().fit(x, y)
    with pytest.raises(ValueError, match="not the endpoint's model"):
        compute_attributions(_config(baseline), rows, lambda r: model.predict(r) + 1.0, model=model)
    with pytest.raises(ValueError, match="give predict"):
        compute_attributions(_config(baseline), rows)
    with pytest.raises(ValueError, match="have 3 features but the configuration names 4"):
        compute_attributions(_config(baseline), rows[:, :3], model.predict)


def test_a_seed_makes_sampling_repeatable_and_leaves_numpys_state_alone(shap_module: Any) -> None:
    rng = np.random.default_rng(3)
    baseline, rows = rng.normal(size=(4, 8)), rng.normal(size=(5, 8))
    config = _config(baseline, num_samples=40)

    def predict(r: np.ndarray) -> np.ndarray:
        return np.tanh(r[:, 0] * r[:, 1]) + r[:, 2] ** 2

    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    first = compute_attributions(config, rows, predict, seed=5)
    assert np.random.random() == before  # the global generator is where it was
    again = compute_attributions(config, rows, predict, seed=5)
    np.testing.assert_array_equal(first.local_values, again.local_values)
    other = compute_attributions(config, rows, predict, seed=6)
    assert not np.array_equal(first.local_values, other.local_values)


# -- a failing model ---------------------------------------------------------------------------------------
def test_a_predict_that_fails_for_some_baseline_rows_says_which(shap_module: Any) -> None:
    baseline = np.arange(20.0).reshape(5, 4)
    config = _config(baseline, num_samples=14)

    def predict(rows: np.ndarray) -> np.ndarray:
        if np.any(rows[:, 0] == 8.0):
            raise ValueError("the model rejects x0 = 8")
        return rows.sum(axis=1)

    with pytest.raises(PredictError, match=r"baseline rows \(row 2 of 5 fails alone\): ValueError: the model rejects"):
        global_shap(config, baseline + 0.5, predict)
    assert issubclass(PredictError, RuntimeError)


@pytest.mark.parametrize(("answer", "message"), [
    (lambda r: np.where(r[:, 0] == 4.0, np.nan, r.sum(axis=1)), r"predict gave nan for row 1 of the baseline rows"),
    (lambda r: np.c_[r.sum(axis=1), r.sum(axis=1)], r"one number a row .* shape \(5, 2\)"),
    (lambda r: r.sum(axis=1)[:-1], r"one number a row .* shape \(4,\)"),
    (lambda r: ["x"] * len(r), "not numbers"),
])
def test_unusable_answers_are_value_errors(shap_module: Any, answer: Any, message: str) -> None:
    baseline = np.arange(20.0).reshape(5, 4)
    with pytest.raises(ValueError, match=message):
        global_shap(_config(baseline, num_samples=14), baseline + 0.5, answer)


def test_a_predict_failing_while_sampling_names_the_row(shap_module: Any) -> None:
    baseline = np.arange(20.0).reshape(5, 4)
    calls = 0

    def flaky(rows: np.ndarray) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls > 4:
            raise ConnectionError("the model could not be reached")
        return rows.sum(axis=1)

    with pytest.raises(PredictError, match=r"rows made to explain row \d+: ConnectionError: the model could not"):
        global_shap(_config(baseline, num_samples=14), baseline + 0.5, flaky)


def test_use_logit_needs_probabilities_inside_zero_one(shap_module: Any) -> None:
    baseline = np.zeros((2, 3))
    config = _config(baseline, use_logit=True, num_samples=6)
    with pytest.raises(ValueError, match="use_logit needs probabilities strictly between 0 and 1"):
        global_shap(config, np.ones((2, 3)), lambda r: np.clip(r.sum(axis=1), 0.0, 1.0))
    values = global_shap(config, np.ones((3, 3)), lambda r: 1 / (1 + np.exp(-(r @ [1.0, 2.0, 3.0]))))
    np.testing.assert_allclose(list(values.values()), [1.0, 2.0, 3.0], atol=1e-9)  # log-odds units


# -- analysis.json, drift, metrics -------------------------------------------------------------------------
def test_analysis_json_has_clarifys_shape(shap_module: Any, linear_data: Any) -> None:
    from sklearn.linear_model import LinearRegression

    x, y, baseline, rows = linear_data
    config = _config(baseline)
    result = compute_attributions(config, rows, model=LinearRegression().fit(x, y))
    analysis = explainability_analysis(config, dict(reversed(result.global_values.items())),
                                       expected_value=result.expected_value)
    example = _load("examples_fraud_explainability-analysis.json")
    assert analysis.keys() == example.keys() and analysis["version"] == example["version"]
    body = analysis["explanations"]["kernel_shap"]["label0"]
    assert body.keys() == example["explanations"]["kernel_shap"]["label0"].keys()
    assert list(body["global_shap_values"]) == ["x0", "x1", "x2", "x3"]  # the configuration's order
    assert json.loads(json.dumps(analysis)) == analysis
    assert metric_values(analysis) == {**{f"feature_{k}": v for k, v in result.global_values.items()},
                                       "expected_value": result.expected_value}
    named = explainability_analysis(config, result.global_values, label="yes")
    assert list(named["explanations"]["kernel_shap"]) == ["yes"]
    assert "expected_value" not in named["explanations"]["kernel_shap"]["yes"]
    with pytest.raises(ValueError, match=r"missing \['x3'\]"):
        explainability_analysis(config, {"x0": 1.0, "x1": 1.0, "x2": 1.0})
    with pytest.raises(ValueError, match="x1 is nan"):
        explainability_analysis(config, {"x0": 1.0, "x1": float("nan"), "x2": 1.0, "x3": 0.0})


def test_a_shift_of_reliance_is_a_violation_and_an_unchanged_model_is_not(shap_module: Any) -> None:
    # One model, y = 3 x0 + 1 x1 + 0.5 x2 + 0.1 x3, explained by Kernel SHAP through its predict: in
    # production x0 barely moves and x1 spreads out, so the model now relies on x1 instead of x0.
    coef = np.array([3.0, 1.0, 0.5, 0.1])

    def predict(rows: np.ndarray) -> np.ndarray:
        return rows @ coef

    rng = np.random.default_rng(4)
    baseline_rows = rng.normal(size=(8, 4))
    config = _config(baseline_rows.mean(axis=0, keepdims=True), num_samples=14)
    reference = explainability_analysis(config, global_shap(config, rng.normal(size=(60, 4)), predict))
    same = explainability_analysis(config, global_shap(config, rng.normal(size=(60, 4)), predict))
    shifted_rows = rng.normal(size=(60, 4)) * np.array([0.02, 8.0, 1.0, 1.0])
    shifted = explainability_analysis(config, global_shap(config, shifted_rows, predict))

    assert check_attribution_drift(same, reference) == []
    assert drift_scores(same, reference)["label0"] > 0.99
    violations = check_attribution_drift(shifted, reference)
    score = drift_scores(shifted, reference)["label0"]
    assert score < 0.90
    assert violations == [{"label": "label0", "metric_name": "shap",
                           "constraint_check_type": "feature_attribution_drift_check",
                           "description": f"Feature attribution drift {score!r} exceeds threshold 0.9"}]
    # a looser threshold lets it pass
    assert check_attribution_drift(shifted, reference, threshold=score - 1e-9) == []


def test_clarifys_example_files_drive_a_check() -> None:
    baseline = _load("examples_shap-baseline-constraints-analysis.json")
    documented = _load("docs_feature-attribution-violations.json")
    assert check_attribution_drift(baseline, baseline) == []
    assert drift_scores(baseline, baseline) == {"label0": 1.0}

    # the live ranking reversed: each feature takes the attribution of its mirror in the ranking
    values = baseline["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
    ranked = sorted(values, key=values.get, reverse=True)
    current = copy.deepcopy(baseline)
    current["explanations"]["kernel_shap"]["label0"]["global_shap_values"] = {
        name: values[mirror] for name, mirror in zip(ranked, reversed(ranked), strict=True)}
    violations = check_attribution_drift(current, baseline)
    assert len(violations) == 1
    # SageMaker's fields, in its order, and its wording
    assert list(violations[0]) == list(documented["violations"][0])
    assert {k: violations[0][k] for k in ("label", "metric_name", "constraint_check_type")} == {
        k: documented["violations"][0][k] for k in ("label", "metric_name", "constraint_check_type")}
    pattern = r"Feature attribution drift (0\.\d+) exceeds threshold 0\.9"
    for violation in documented["violations"]:
        assert re.fullmatch(pattern, violation["description"])
    score = float(re.fullmatch(pattern, violations[0]["description"]).group(1))
    assert score == ndcg(values, current["explanations"]["kernel_shap"]["label0"]["global_shap_values"]) < 0.9
    document = violations_document(violations)
    assert document.keys() == documented.keys() and document["version"] == documented["version"]

    # the fraud model's analysis: its values are CloudWatch's feature_<name>, with the expected value
    fraud = _load("examples_fraud_explainability-analysis.json")
    metrics = metric_values(fraud)
    assert len(metrics) == 46
    assert metrics["feature_customer_gender_male"] == 0.01089049476601324
    assert metrics["expected_value"] == 0.021365880966186523
    assert check_attribution_drift(fraud, fraud) == []
    # another model's baseline: its label is there, its features are not (attribution 0 here)
    assert check_attribution_drift(fraud, baseline)[0]["description"].startswith("Feature attribution drift 0.")


def test_analyses_that_cannot_be_compared_are_value_errors() -> None:
    baseline = _load("examples_shap-baseline-constraints-analysis.json")
    other_label = copy.deepcopy(baseline)
    other_label["explanations"]["kernel_shap"] = {"yes": other_label["explanations"]["kernel_shap"]["label0"]}
    with pytest.raises(ValueError, match="no global SHAP values for label 'label0'"):
        check_attribution_drift(other_label, baseline)
    with pytest.raises(ValueError, match="no explanations"):
        check_attribution_drift({"version": "1.0"}, baseline)
    with pytest.raises(ValueError, match="threshold"):
        check_attribution_drift(baseline, baseline, threshold=float("nan"))
    two = copy.deepcopy(baseline)
    two["explanations"]["kernel_shap"]["label1"] = two["explanations"]["kernel_shap"]["label0"]
    with pytest.raises(ValueError, match="2 labels"):
        metric_values(two)
    assert metric_values(two, label="label1")["feature_Age"] == 0.05962069398767555


@pytest.mark.filterwarnings("ignore:Linear regression equation is singular")
def test_clarifys_example_configuration_end_to_end(shap_module: Any) -> None:
    # the example's 14 features, its single baseline row and num_samples 15 (sampled: 2**14 - 2
    # coalitions), against a stand-in model scoring like the adult-income one
    config = load_shap_config(_load("examples_explainability_analysis_config.json"))
    rng = np.random.default_rng(5)
    rows = config.baseline * rng.uniform(0.5, 1.5, size=(6, 14))
    weights = rng.normal(size=14) / np.maximum(config.baseline[0], 1.0)

    def score(r: np.ndarray) -> np.ndarray:
        return 1 / (1 + np.exp(-(r - config.baseline[0]) @ weights))

    values = global_shap(config, rows, score)
    assert list(values) == list(config.features) and all(v >= 0 for v in values.values())
    analysis = explainability_analysis(config, values)
    assert check_attribution_drift(analysis, analysis) == []
