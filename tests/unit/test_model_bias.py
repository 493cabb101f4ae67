"""The ModelBias monitor: Clarify's bias metrics, analysis.json, bias-drift violations and CloudWatch values.

Expected numbers are worked out by hand from the metrics' definitions on a ten-row table (facet a:
rows a1-a6, facet d: rows d1-d4), written down below; SageMaker's own files (tests/data/sagemaker/bias)
check the configuration, the analysis shape and the violations.
"""

from __future__ import annotations

import ast
import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from moorage.monitor.model_bias import metrics as m
from moorage.monitor.model_bias.analysis import (
    CLOUDWATCH_INFINITY,
    AnalysisConfig,
    FacetConfig,
    bias_analysis,
    check_bias_drift,
    load_analysis_config,
    metric_records,
    metric_values,
    violations_document,
)

SAGEMAKER = Path(__file__).parents[1] / "data" / "sagemaker" / "bias"

# The hand-worked table. Facet a (6 rows): TP, TP, FN, FP, TN, TN; facet d (4 rows): TP, FN, FN, TN.
#        a1 a2 a3 a4 a5 a6 d1 d2 d3 d4
FACET = [0, 0, 0, 0, 0, 0, 1, 1, 1, 1]
LABEL = [1, 1, 1, 0, 0, 0, 1, 1, 1, 0]
PRED = [1, 1, 0, 1, 0, 0, 1, 0, 0, 0]
GROUP = [1, 1, 1, 2, 2, 2, 1, 1, 2, 2]
X = [0, 1, 2, 3, 4, 5, 0.1, 3.1, 4.9, 1.9]  # a feature for the flip test
# Counts: a: TP 2, FN 1, FP 1, TN 2 (n_a 6); d: TP 1, FN 2, FP 0, TN 1 (n_d 4).
# Label distributions (negative, positive): P_a = (1/2, 1/2), P_d = (1/4, 3/4); their mean P = (3/8, 5/8).
P_A, P_D = (0.5, 0.5), (0.25, 0.75)
P_MEAN = (0.375, 0.625)
HAND = {
    "CI": (6 - 4) / 10,
    "DPL": 3 / 6 - 3 / 4,
    "KL": sum(a * math.log(a / d) for a, d in zip(P_A, P_D, strict=True)),
    "JS": 0.5 * (sum(a * math.log(a / p) for a, p in zip(P_A, P_MEAN, strict=True))
                 + sum(d * math.log(d / p) for d, p in zip(P_D, P_MEAN, strict=True))),
    "LP": math.sqrt(0.25**2 + 0.25**2),
    "TVD": 0.5 * (0.25 + 0.25),
    "KS": 0.25,
    # group 1 (a1 a2 a3 d1 d2): labels all positive, 2 of 5 in d -> DD = 0 - 2/5;
    # group 2 (a4 a5 a6 d3 d4): positive d3 only (in d) -> 1, negatives 4 with d4 in d -> 1/4: DD = 1/4 - 1
    "CDDL": (5 * (0 - 2 / 5) + 5 * (1 / 4 - 1)) / 10,
    "DPPL": 3 / 6 - 1 / 4,  # predicted positives: a1 a2 a4 of 6, d1 of 4
    "DI": (1 / 4) / (3 / 6),
    "DCA": (3 / 3) - (3 / 1),  # c = (TP + FN) / (TP + FP)
    "DCR": (1 / 3) - (3 / 3),  # r_d - r_a, r = (TN + FP) / (TN + FN)
    "RD": 2 / 3 - 1 / 3,  # recall TP / (TP + FN)
    "SD": 1 / 1 - 2 / 3,  # specificity TN / (TN + FP), d minus a
    "DAR": 2 / 3 - 1 / 1,  # precision TP / (TP + FP), a minus d
    "DRR": 1 / 3 - 2 / 3,  # TN / (TN + FN), d minus a
    "AD": 4 / 6 - 2 / 4,
    "TE": math.inf,  # FN_d / FP_d = 2 / 0
    # group 1 predictions: a1 a2 d1 positive (d1 in d: 1/3), a3 d2 negative (d2 in d: 1/2) -> 1/2 - 1/3;
    # group 2: a4 positive (none in d: 0), a5 a6 d3 d4 negative (2 of 4 in d) -> 1/2 - 0
    "CDDPL": (5 * (1 / 2 - 1 / 3) + 5 * (1 / 2 - 0)) / 10,
    # k = 1 (facet a has 6 rows); over (x, group): d1 -> a1 (predicted 1), d2 -> a4 (1), d3 -> a6 (0),
    # d4 -> a3 (0). The model predicts d2 negative where its neighbour is positive: one flip down of 4.
    "FT": (0 - 1) / 4,
    # benefits predicted - label + 1: TP 1, FN 0, FP 2, TN 1 -> a: 1 1 0 2 1 1, d: 1 0 0 1; mean 8/10,
    # sum of squares 10: GE = (10 / 0.64 - 10) / (2 * 10)
    "GE": (10 / 0.64 - 10) / 20,
}


def _inputs(**changes: Any) -> m.MetricInputs:
    values: dict[str, Any] = {
        "facet": np.array(FACET, dtype=bool), "label": np.array(LABEL, dtype=bool),
        "predicted": np.array(PRED, dtype=bool), "group": np.array(GROUP),
        "features": np.column_stack([X, GROUP]).astype(float),
    }
    values.update(changes)
    return m.MetricInputs(**values)


def _load(name: str) -> Any:
    text = (SAGEMAKER / name).read_text()
    if name.endswith(".pprint.txt"):
        return ast.literal_eval(text)
    return json.loads(text[text.index("{"):])  # the baseline notebook output starts with a status line


def _values(section: dict[str, Any], facet: str, position: int = 0) -> dict[str, Any]:
    return {metric["name"]: metric["value"] for metric in section["facets"][facet][position]["metrics"]}


# -- metrics -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(HAND))
def test_every_metric_matches_its_hand_computed_value(name: str) -> None:
    value = m.compute_metrics([name], _inputs())[name]
    assert value == pytest.approx(HAND[name], rel=1e-12, abs=1e-15)


def test_the_registry_has_clarifys_metrics_and_descriptions() -> None:
    assert sorted(m.PRE_TRAINING_METRICS) == ["CDDL", "CI", "DPL", "JS", "KL", "KS", "LP", "TVD"]
    assert sorted(m.POST_TRAINING_METRICS) == ["AD", "CDDPL", "DAR", "DCA", "DCR", "DI", "DPPL", "DRR", "FT", "GE",
                                               "RD", "SD", "TE"]
    baseline = _load("examples_bias-baseline-constraints-analysis.txt")
    for section, registry in (("pre_training_bias_metrics", m.PRE_TRAINING_METRICS),
                              ("post_training_bias_metrics", m.POST_TRAINING_METRICS)):
        entry = baseline[section]["facets"]["Sex"][0]
        published = {metric["name"]: metric["description"] for metric in entry["metrics"]}
        assert published == {name: metric.description for name, metric in registry.items()}


def test_divide_is_clarifys_ratio() -> None:
    assert m.divide(0, 0) == 0.0
    assert m.divide(3, 0) == math.inf
    assert m.divide(-3, 0) == -math.inf
    assert m.divide(1, 4) == 0.25


def test_an_empty_facet_leaves_the_two_facet_metrics_undefined() -> None:
    results = m.compute_metrics(list(m.ALL_METRICS), _inputs(facet=np.zeros(10, dtype=bool)))
    undefined = {name for name, value in results.items() if isinstance(value, m.MetricError)}
    assert undefined == set(m.ALL_METRICS) - {"CDDL", "CDDPL", "GE"}
    # the conditional disparities count facet d's share of each group: nothing of nothing is 0
    assert results["CDDL"] == 0.0 and results["CDDPL"] == 0.0
    assert results["GE"] == pytest.approx(HAND["GE"])  # GE is over all rows, whatever the facet
    everyone = m.compute_metrics(["CI", "DPPL"], _inputs(facet=np.ones(10, dtype=bool)))
    assert all(isinstance(value, m.MetricError) for value in everyone.values())


def test_ratios_of_nothing_are_infinite_or_zero_where_clarify_says() -> None:
    facet = np.array([0, 0, 1, 1], dtype=bool)
    # facet a: no positive prediction, facet d: one -> DI = (1/2) / 0
    assert m.di(facet, [0, 0, 1, 0]) == math.inf
    assert m.di(facet, [0, 0, 0, 0]) == 0.0  # 0 / 0
    # facet a has a positive label but no positive prediction: c_a = 1 / 0 -> DCA = +inf
    assert m.dca(facet, [1, 0, 1, 0], [0, 0, 1, 0]) == math.inf
    # both facets so: inf - inf is 0, not NaN
    assert m.dca(facet, [1, 0, 1, 0], [0, 0, 0, 0]) == 0.0
    # facet a has a negative label but no negative prediction: r_a = 1 / 0 -> DCR = r_d - inf
    assert m.dcr(facet, [1, 0, 1, 0], [1, 1, 1, 0]) == -math.inf
    # false negatives without false positives in facet a: TE = FN_d / FP_d - 1 / 0
    assert m.te(facet, [1, 0, 0, 1], [0, 0, 1, 1]) == -math.inf
    assert m.te(facet, [1, 0, 1, 0], [0, 0, 0, 0]) == 0.0  # inf - inf
    # rates of empty cells are 0, not undefined
    assert m.rd(facet, [0, 0, 1, 1], [0, 0, 1, 0]) == 0 - 1 / 2
    assert m.ad(facet, [1, 1, 1, 1], [1, 1, 0, 0]) == 1.0


def test_label_distributions_keep_only_outcomes_both_facets_have() -> None:
    facet = np.array([0, 0, 1, 1], dtype=bool)
    label = np.array([1, 0, 1, 1], dtype=bool)  # facet d has no negative label: only "positive" is compared
    assert m.kl(facet, label) == pytest.approx(0.5 * math.log(0.5 / 1.0))  # negative, as in Clarify
    assert m.ks(facet, label) == pytest.approx(0.5)
    assert m.lp(facet, label) == pytest.approx(0.5)
    assert m.tvd(facet, label) == pytest.approx(0.25)
    with pytest.raises(m.MetricError, match="no outcome"):
        m.js(facet, np.array([0, 0, 1, 1], dtype=bool))  # a all negative, d all positive


def test_conditional_and_entropy_metrics_need_their_inputs() -> None:
    with pytest.raises(m.MetricError, match="group variable"):
        m.cddl(FACET, LABEL, None)
    with pytest.raises(m.MetricError, match="no negative outcome"):
        m.cdd(FACET, np.ones(10, dtype=bool), GROUP)
    # a row without a group belongs to none: d4 leaves group 2, which keeps d3 as its only d row
    group = np.array([1, 1, 1, 2, 2, 2, 1, 1, 2, np.nan])
    expected = (5 * (0 - 2 / 5) + 4 * (0 - 1)) / 9
    assert m.cddl(FACET, LABEL, group) == pytest.approx(expected)
    with pytest.raises(m.MetricError, match="false negative"):
        m.ge([1, 1, 1], [0, 0, 0])
    assert m.ge(LABEL, LABEL) == 0.0  # every benefit 1


def test_flip_test_without_scikit_learn_votes_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def no_sklearn(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("sklearn"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_sklearn)
    assert m.ft(FACET, PRED, np.column_stack([X, GROUP])) == HAND["FT"]
    with pytest.raises(m.MetricError, match="numeric"):
        m.ft(FACET, PRED, np.array([["u"]] * 10, dtype=object))


def test_selection_helpers() -> None:
    assert m.select_values(["a", "b", "c", "a"], ["a", "c"]).tolist() == [True, False, True, True]
    assert m.select_interval([0.5, 1.0, 2.0, float("nan")], 0.5, 2.0).tolist() == [False, True, True, False]
    # a score above the threshold is the label 1; at the threshold it is not
    assert m.labels_from_probabilities([0.81, 0.8, 0.2], 0.8).tolist() == [1, 0, 0]


# -- the analysis configuration ----------------------------------------------------------------------
def test_clarifys_example_configuration_loads() -> None:
    config = load_analysis_config(_load("examples_bias_analysis_config.json"))
    assert config.label == "Target"
    assert config.label_values_or_threshold == (1,)
    assert config.facets == (FacetConfig("Sex", (0,)),)
    assert config.group_variable == "Age"
    assert config.probability_threshold == 0.8
    assert config.headers is not None and config.headers[0] == "Target"
    assert config.pre_training_methods == tuple(sorted(m.PRE_TRAINING_METRICS))
    assert config.post_training_methods == tuple(sorted(m.POST_TRAINING_METRICS))


@pytest.mark.parametrize(("change", "field"), [
    ({"label": None}, "label"),
    ({"label": ["Target"]}, "label"),
    ({"label": 99}, "label"),  # past the headers
    ({"label_values_or_threshold": None}, "label_values_or_threshold"),
    ({"label_values_or_threshold": "1"}, "label_values_or_threshold"),
    ({"label_values_or_threshold": []}, "label_values_or_threshold"),
    ({"label_values_or_threshold": [{"v": 1}]}, "label_values_or_threshold"),
    ({"facet": None}, "facet"),
    ({"facet": []}, "facet"),
    ({"facet": [{"value_or_threshold": [0]}]}, r"facet\[0\]\.name_or_index"),
    ({"facet": [{"name_or_index": "Sex", "value_or_threshold": []}]}, r"facet\[0\]\.value_or_threshold"),
    ({"facet": [{"name_or_index": "Sex", "value_or_threshold": "0"}]}, r"facet\[0\]\.value_or_threshold"),
    ({"probability_threshold": "high"}, "probability_threshold"),
    ({"probability_threshold": True}, "probability_threshold"),
    ({"group_variable": 2.5}, "group_variable"),
    ({"headers": "Target,Age"}, "headers"),
    ({"methods": {"post_training_bias": {"methods": ["DPPL", "XYZ"]}}}, r"methods\.post_training_bias\.methods"),
    ({"methods": {"pre_training_bias": {"methods": ["DPPL"]}}}, r"methods\.pre_training_bias\.methods"),
])
def test_a_bad_configuration_names_its_field(change: dict[str, Any], field: str) -> None:
    doc = _load("examples_bias_analysis_config.json")
    doc.update(change)
    with pytest.raises(ValueError, match=rf"^{field}:"):
        load_analysis_config(doc)


def test_a_bare_threshold_is_a_one_value_list() -> None:
    config = load_analysis_config({"label": "y", "label_values_or_threshold": 0.5,
                                   "facet": [{"name_or_index": 1, "value_or_threshold": 40}]})
    assert config.label_values_or_threshold == (0.5,)
    assert config.facets == (FacetConfig(1, (40,)),)
    assert config.pre_training_methods is None and config.post_training_methods is None


# -- the analysis ------------------------------------------------------------------------------------
def _hand_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "sex": ["a"] * 6 + ["d"] * 4,
        "y": ["yes" if value else "no" for value in LABEL],
        "g": GROUP,
        "x": X,
    })


HAND_CONFIG = {"label": "y", "label_values_or_threshold": ["yes"], "facet": [{"name_or_index": "sex",
               "value_or_threshold": ["d"]}], "group_variable": "g"}


def test_the_analysis_of_the_hand_table_has_clarifys_shape_and_the_hand_values() -> None:
    predicted = ["yes" if value else "no" for value in PRED]
    analysis = bias_analysis(HAND_CONFIG, _hand_frame(), predicted)
    assert list(analysis) == ["version", "post_training_bias_metrics", "pre_training_bias_metrics"]
    assert analysis["version"] == "1.0"
    for section, registry in (("pre_training_bias_metrics", m.PRE_TRAINING_METRICS),
                              ("post_training_bias_metrics", m.POST_TRAINING_METRICS)):
        body = analysis[section]
        assert list(body) == ["label", "facets", "label_value_or_threshold"]
        assert body["label"] == "y" and body["label_value_or_threshold"] == "yes"
        assert list(body["facets"]) == ["sex"]
        (entry,) = body["facets"]["sex"]
        assert entry["value_or_threshold"] == "d"
        assert [metric["name"] for metric in entry["metrics"]] == sorted(registry)
        for metric in entry["metrics"]:
            assert list(metric) == ["name", "description", "value"]
            assert metric["description"] == registry[metric["name"]].description
            if metric["name"] == "TE":
                assert metric["value"] == "Infinity"  # as Clarify writes an infinity
            else:
                assert metric["value"] == pytest.approx(HAND[metric["name"]], rel=1e-12, abs=1e-15)
    json.dumps(analysis, allow_nan=False)  # plain JSON


def test_an_empty_facet_writes_null_values_with_errors() -> None:
    config = {**HAND_CONFIG, "facet": [{"name_or_index": "sex", "value_or_threshold": ["z"]}]}
    analysis = bias_analysis(config, _hand_frame(), ["yes" if value else "no" for value in PRED])
    post = analysis["post_training_bias_metrics"]["facets"]["sex"][0]["metrics"]
    dppl = next(metric for metric in post if metric["name"] == "DPPL")
    assert dppl["value"] is None and "facet" in dppl["error"]
    assert list(dppl) == ["name", "description", "value", "error"]
    assert _values(analysis["post_training_bias_metrics"], "sex")["GE"] == pytest.approx(HAND["GE"])
    assert metric_values(analysis).get("bias_metric_DPPL") is None  # undefined: not published


def test_scores_are_thresholded_into_labels_before_the_label_values_apply() -> None:
    frame = pd.DataFrame({"sex": ["a"] * 6 + ["d"] * 4, "y": LABEL, "x": X})
    scores = [0.9 if value else 0.2 for value in PRED]
    scores[0] = 0.8  # a1 exactly at the threshold: negative
    config = {"label": "y", "label_values_or_threshold": [1], "facet": [{"name_or_index": "sex",
              "value_or_threshold": ["d"]}], "probability_threshold": 0.8}
    pins = {"y": "categorical"}  # ten 0/1 rows would be continuous by Clarify's 5% rule
    analysis = bias_analysis(config, frame, scores, methods=["DPPL"], column_types=pins)
    assert _values(analysis["post_training_bias_metrics"], "sex")["DPPL"] == pytest.approx(2 / 6 - 1 / 4)
    # the fraud example's "label 0 is positive": predicted 0 where the score is at most the threshold
    config["label_values_or_threshold"] = [0]
    analysis = bias_analysis(config, frame, scores, methods=["DPPL"], column_types=pins)
    assert _values(analysis["post_training_bias_metrics"], "sex")["DPPL"] == pytest.approx(4 / 6 - 3 / 4)
    assert analysis["post_training_bias_metrics"]["label_value_or_threshold"] == "0"
    # a monitoring job's own threshold replaces the configuration's: over 0.95 nothing is predicted 1
    analysis = bias_analysis(config, frame, scores, methods=["DPPL"], column_types=pins, probability_threshold=0.95)
    assert _values(analysis["post_training_bias_metrics"], "sex")["DPPL"] == pytest.approx(0.0)


def test_column_kinds_follow_clarifys_inference() -> None:
    # ten rows of 0/1: 20% distinct values, so Clarify reads the facet as continuous and [0] as a
    # threshold: the facet is (0, 1], the rows equal to 1
    frame = pd.DataFrame({"f": [0, 0, 0, 0, 0, 0, 1, 1, 1, 1], "y": ["yes" if v else "no" for v in LABEL]})
    config = {"label": "y", "label_values_or_threshold": ["yes"], "facet": [{"name_or_index": "f",
              "value_or_threshold": [0]}]}
    analysis = bias_analysis(config, frame, None, methods=["CI"])
    entry = analysis["pre_training_bias_metrics"]["facets"]["f"][0]
    assert entry["value_or_threshold"] == "(0, 1]"
    assert entry["metrics"][0]["value"] == pytest.approx(0.2)
    # pinned categorical, [0] is the value 0
    analysis = bias_analysis(config, frame, None, methods=["CI"], column_types={"f": "categorical"})
    entry = analysis["pre_training_bias_metrics"]["facets"]["f"][0]
    assert entry["value_or_threshold"] == "0" and entry["metrics"][0]["value"] == pytest.approx(-0.2)
    # floats are continuous: the interval ends at the data's maximum
    frame["f"] = [18.0, 25.5, 33.0, 41.0, 52.0, 60.0, 30.0, 35.0, 70.5, 39.0]
    config["facet"][0]["value_or_threshold"] = [40]
    analysis = bias_analysis(config, frame, None, methods=["CI"])
    entry = analysis["pre_training_bias_metrics"]["facets"]["f"][0]
    assert entry["value_or_threshold"] == "(40.0, 70.5]"
    assert entry["metrics"][0]["value"] == pytest.approx((6 - 4) / 10)  # 41, 52, 60, 70.5 are over 40


def test_a_facet_without_values_is_analysed_value_by_value() -> None:
    frame = _hand_frame()
    frame.loc[9, "sex"] = "c"
    config = {**HAND_CONFIG, "facet": [{"name_or_index": "sex"}]}
    analysis = bias_analysis(config, frame, None, methods=["CI"])
    entries = analysis["pre_training_bias_metrics"]["facets"]["sex"]
    assert [entry["value_or_threshold"] for entry in entries] == ["a", "d", "c"]
    assert [entry["metrics"][0]["value"] for entry in entries] == pytest.approx([-0.2, 0.4, 0.8])


def test_clarifys_published_report_is_reproduced() -> None:
    # smclarify's tests/unit/bias/test_report.py, test_report_continuous_data: its table and its numbers
    rows = [
        [0, 0, 0, 0, True, 1, 1, 1], [3, 0, 0, 0, True, 0, 1, 1], [3, 0, 1, 0, True, 0, 1, 1],
        [0, 0, 0, 0, False, 1, 1, 0], [4, 0, 0, 1, True, 0, 1, 1], [0, 0, 1, 0, True, 1, 1, 1],
        [3, 0, 0, 0, True, 1, 1, 1], [3, 1, 0, 0, True, 1, 1, 1], [0, 0, 1, 0, True, 1, 1, 1],
        [3, 0, 1, 1, True, 1, 0, 1], [4, 0, 0, 0, True, 1, 0, 1], [3, 0, 1, 0, True, 1, 1, 1],
        [3, 0, 0, 0, False, 1, 1, 0], [0, 0, 0, 0, True, 1, 1, 1], [0, 0, 1, 0, True, 0, 1, 1],
        [0, 0, 1, 0, True, 1, 1, 1], [0, 1, 0, 1, False, 0, 1, 0], [3, 0, 0, 0, False, 1, 1, 0],
        [0, 0, 1, 0, False, 1, 1, 1], [3, 0, 0, 0, True, 1, 0, 1], [3, 0, 1, 0, False, 1, 1, 0],
        [0, 1, 0, 0, False, 1, 1, 0], [3, 0, 1, 0, True, 0, 1, 1], [0, 0, 0, 1, True, 1, 0, 1],
    ]
    frame = pd.DataFrame(rows, columns=["x", "y", "z", "a", "b", "c", "d", "yhat"])
    config = {"label": "y", "label_values_or_threshold": [0], "facet": [{"name_or_index": "x",
              "value_or_threshold": [2]}], "group_variable": "z"}
    analysis = bias_analysis(config, frame.drop(columns="yhat"), frame["yhat"].to_numpy(), methods="all")
    post = analysis["post_training_bias_metrics"]
    pre = analysis["pre_training_bias_metrics"]
    assert post["facets"]["x"][0]["value_or_threshold"] == "(2, 4]"
    assert _values(pre, "x") == {
        "CDDL": 0.3851010101010101, "CI": -0.08333333333333333, "DPL": 0.1048951048951049,
        "JS": 0.01252420207928287, "KL": 0.057704603668062765, "KS": 0.1048951048951049,
        "LP": 0.14834407996920576, "TVD": 0.1048951048951049,
    }
    assert _values(post, "x") == {
        "AD": -0.2167832167832168, "CDDPL": 0.07592592592592595, "DAR": -0.1, "DCA": 0.15, "DCR": 1.0,
        "DI": 1.0576923076923077, "DPPL": -0.04195804195804198, "DRR": 0.6666666666666667,
        "FT": -0.23076923076923078, "GE": 0.07593688362919139, "RD": -1.0, "SD": 0.1388888888888889, "TE": -0.25,
    }


def test_what_clarify_rejects_is_a_value_error() -> None:
    frame = _hand_frame()
    predicted = ["yes" if value else "no" for value in PRED]
    with pytest.raises(ValueError, match="predictions"):
        bias_analysis(HAND_CONFIG, frame, None, methods=["DPPL"])
    with pytest.raises(ValueError, match=r"facet\[0\]\.name_or_index: column 'age'"):
        bias_analysis({**HAND_CONFIG, "facet": [{"name_or_index": "age"}]}, frame, predicted)
    with pytest.raises(ValueError, match="no predicted label is positive"):
        bias_analysis(HAND_CONFIG, frame, ["no"] * 10)
    with pytest.raises(ValueError, match="needs a threshold"):
        bias_analysis({**HAND_CONFIG, "facet": [{"name_or_index": "x"}]}, frame, predicted)
    with pytest.raises(ValueError, match="10 rows"):
        bias_analysis(HAND_CONFIG, frame, predicted[:5])
    with pytest.raises(ValueError, match=r"^methods: unknown metrics XYZ"):
        bias_analysis(HAND_CONFIG, frame, predicted, methods=["XYZ"])


def test_an_analysis_config_object_and_a_dict_of_columns_work_too() -> None:
    config = AnalysisConfig(label="y", label_values_or_threshold=("yes",), facets=(FacetConfig("sex", ("d",)),))
    analysis = bias_analysis(config, _hand_frame().to_dict(orient="list"), None)
    assert list(analysis) == ["version", "pre_training_bias_metrics"]
    assert _values(analysis["pre_training_bias_metrics"], "sex")["CI"] == pytest.approx(HAND["CI"])


# -- drift -------------------------------------------------------------------------------------------
def _census_like(n_d: int = 80, n_a: int = 120, flip_d: bool = False) -> tuple[pd.DataFrame, list[float]]:
    """Rows with the example configuration's headers; half of each Sex group has the positive label."""
    config = _load("examples_bias_analysis_config.json")
    rng = np.random.default_rng(7)
    n = n_d + n_a
    frame = pd.DataFrame({header: rng.integers(0, 5, n) for header in config["headers"]})
    frame["Sex"] = [0] * n_d + [1] * n_a
    frame["Target"] = [i % 2 for i in range(n)]
    frame["Age"] = rng.integers(20, 70, n)
    scores = [0.9 if label else 0.1 for label in frame["Target"]]
    if flip_d:  # the model stops predicting the positive outcome for Sex 0
        scores = [0.1 if sex == 0 else score for sex, score in zip(frame["Sex"], scores, strict=True)]
    return frame, scores


def test_the_example_configuration_gives_the_example_baselines_shape() -> None:
    config = _load("examples_bias_analysis_config.json")
    baseline = _load("examples_bias-baseline-constraints-analysis.txt")
    frame, scores = _census_like()
    analysis = bias_analysis(config, frame, scores)
    assert list(analysis) == list(baseline)
    for section in ("pre_training_bias_metrics", "post_training_bias_metrics"):
        ours, theirs = analysis[section], baseline[section]
        assert list(ours) == list(theirs)
        for key in ("label", "label_value_or_threshold"):
            assert ours[key] == theirs[key]
        assert [entry["value_or_threshold"] for entry in ours["facets"]["Sex"]] == ["0"]
        assert ([(metric["name"], metric["description"]) for metric in ours["facets"]["Sex"][0]["metrics"]]
                == [(metric["name"], metric["description"]) for metric in theirs["facets"]["Sex"][0]["metrics"]])


def test_flipping_one_groups_outcomes_violates_the_example_baseline() -> None:
    config = _load("examples_bias_analysis_config.json")
    baseline = _load("examples_bias-baseline-constraints-analysis.txt")
    frame, scores = _census_like()
    fair = bias_analysis(config, frame, scores)
    assert _values(fair["post_training_bias_metrics"], "Sex")["DPPL"] == pytest.approx(0.0)
    assert "DPPL" not in {violation["metric_name"] for violation in check_bias_drift(fair, baseline)}

    frame, scores = _census_like(flip_d=True)
    current = bias_analysis(config, frame, scores)
    post = _values(current["post_training_bias_metrics"], "Sex")
    assert post["DPPL"] == pytest.approx(0.5) and post["DI"] == pytest.approx(0.0)
    violations = {violation["metric_name"]: violation for violation in check_bias_drift(current, baseline)}
    assert violations["DPPL"] == {
        "facet": "Sex", "facet_value": "0", "metric_name": "DPPL", "constraint_check_type": "bias_drift_check",
        "description": f"Metric value {post['DPPL']!r} doesn't meet the baseline constraint requirement "
                       "0.2199248120300752",
    }
    assert "DI" in violations  # 0 is farther from parity (1) than the baseline's 0.178


def test_the_notebooks_violations_are_reproduced_from_its_values() -> None:
    baseline = _load("examples_bias-baseline-constraints-analysis.txt")
    expected = _load("examples_bias-drift-violations.pprint.txt")
    current = copy.deepcopy(baseline)
    # the values the notebook's violations report for the execution; the other metrics kept the baseline's
    reported = {"CDDPL": 0.3748947825295131, "DAR": -0.34693877551020413, "DCA": -36.69387755102041,
                "DCR": -0.07650793650793647, "FT": -0.13636363636363635, "GE": 0.9454985573866702,
                "RD": 0.17253086419753086, "SD": 0.27419354838709675, "TE": "Infinity"}
    for metric in current["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"]:
        metric["value"] = reported.get(metric["name"], metric["value"])
    violations = check_bias_drift(current, baseline)
    assert violations == expected["violations"]
    docs = _load("docs_bias-drift-violations.json")
    assert [list(violation) for violation in violations] == [list(docs["violations"][0])] * len(violations)
    assert violations_document(violations) == {"version": "1.0", "violations": violations}


def test_drift_is_distance_from_balance() -> None:
    baseline = _load("examples_bias-baseline-constraints-analysis.txt")
    assert check_bias_drift(baseline, baseline) == []

    def with_value(name: str, value: Any) -> dict[str, Any]:
        current = copy.deepcopy(baseline)
        for section in ("pre_training_bias_metrics", "post_training_bias_metrics"):
            for metric in current[section]["facets"]["Sex"][0]["metrics"]:
                if metric["name"] == name:
                    metric["value"] = value
        return current

    def violated(current: dict[str, Any]) -> list[str]:
        return [violation["metric_name"] for violation in check_bias_drift(current, baseline)]

    # the docs' example: against DPPL 0.2, 0.1 is closer to 0 and passes, -0.3 is farther and violates
    assert violated(with_value("DPPL", -0.1)) == []
    assert violated(with_value("DPPL", -0.3)) == ["DPPL"]
    assert violated(with_value("DPPL", -0.2199248120300752)) == []  # as far as the baseline
    assert violated(with_value("CI", -0.5)) == ["CI"]
    # DI is balanced at 1: 1.5 is nearer parity than the baseline's 0.178, 0.1 is farther
    assert violated(with_value("DI", 1.5)) == []
    assert violated(with_value("DI", 0.1)) == ["DI"]
    assert violated(with_value("TE", "-Infinity")) == ["TE"]
    assert violated(with_value("TE", None)) == []  # undefined: not compared
    # pre-training violations come before post-training ones
    both = with_value("CI", 0.9)
    for metric in both["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"]:
        if metric["name"] == "AD":
            metric["value"] = -0.9
    assert violated(both) == ["CI", "AD"]


def test_drift_against_the_other_published_analyses() -> None:
    fraud = _load("examples_fraud_pre-and-post-training-analysis.json")
    assert check_bias_drift(fraud, fraud) == []  # the null CDDL/CDDPL are not compared
    current = copy.deepcopy(fraud)
    current["pre_training_bias_metrics"]["facets"]["customer_gender_female"][0]["metrics"][1]["value"] = 0.25  # CI
    assert check_bias_drift(current, fraud) == [{
        "facet": "customer_gender_female", "facet_value": "1", "metric_name": "CI",
        "constraint_check_type": "bias_drift_check",
        "description": "Metric value 0.25 doesn't meet the baseline constraint requirement 0.0",
    }]
    # a continuous facet's interval ends at the data's maximum, which moves: the single values pair up
    sdk = _load("sdk-tests_pretraining-analysis.json")
    current = copy.deepcopy(sdk)
    entry = current["pre_training_bias_metrics"]["facets"]["F1"][0]
    entry["value_or_threshold"] = "(0.5, 0.97]"
    entry["metrics"][1]["value"] = -0.2  # CI, baseline -0.08
    (violation,) = check_bias_drift(current, sdk)
    assert (violation["metric_name"], violation["facet_value"]) == ("CI", "(0.5, 0.97]")
    with pytest.raises(ValueError, match="neither"):
        check_bias_drift({"version": "1.0"}, sdk)


# -- CloudWatch --------------------------------------------------------------------------------------
def test_metric_values_are_sagemakers_cloudwatch_names() -> None:
    baseline = _load("examples_bias-baseline-constraints-analysis.txt")
    values = metric_values(baseline)
    assert values["bias_metric_CI"] == 0.36936936936936937
    assert values["bias_metric_DPPL"] == 0.2199248120300752
    assert len(values) == 8 + 13
    infinite = copy.deepcopy(baseline)
    for metric in infinite["post_training_bias_metrics"]["facets"]["Sex"][0]["metrics"]:
        if metric["name"] == "TE":
            metric["value"] = "Infinity"
        if metric["name"] == "DCA":
            metric["value"] = "-Infinity"
    values = metric_values(infinite)
    assert values["bias_metric_TE"] == CLOUDWATCH_INFINITY and values["bias_metric_DCA"] == -CLOUDWATCH_INFINITY
    fraud = metric_values(_load("examples_fraud_pre-and-post-training-analysis.json"))
    assert "bias_metric_CDDL" not in fraud and "bias_metric_CDDPL" not in fraud  # nulls are not published
    (record,) = [r for r in metric_records(baseline) if r["name"] == "bias_metric_CI"]
    assert record["dimensions"] == {"BiasStage": "Pre-training", "Label": "Target", "LabelValue": "1",
                                    "Facet": "Sex", "FacetValue": "0"}


def test_several_facet_values_carry_their_facet_in_the_flat_name() -> None:
    frame = _hand_frame()
    frame.loc[9, "sex"] = "c"
    analysis = bias_analysis({**HAND_CONFIG, "facet": [{"name_or_index": "sex"}]}, frame, None, methods=["CI"])
    assert metric_values(analysis) == pytest.approx({"bias_metric_CI_sex_a": -0.2, "bias_metric_CI_sex_d": 0.4,
                                                     "bias_metric_CI_sex_c": 0.8})


def test_column_indexes_count_in_the_headers() -> None:
    frame = _hand_frame()[["x", "g", "sex", "y"]]  # the data's own column order differs from the headers'
    config = {"headers": ["y", "sex", "g", "x"], "label": 0, "label_values_or_threshold": ["yes"],
              "facet": [{"name_or_index": 1, "value_or_threshold": ["d"]}], "group_variable": 2}
    analysis = bias_analysis(config, frame, None, methods=["CI", "CDDL"])
    section = analysis["pre_training_bias_metrics"]
    assert section["label"] == "y" and list(section["facets"]) == ["sex"]
    assert _values(section, "sex") == pytest.approx({"CI": HAND["CI"], "CDDL": HAND["CDDL"]})
    # a CSV read without its header row: the headers name the columns
    unnamed = _hand_frame()[["y", "sex", "g", "x"]].set_axis(range(4), axis=1)
    assert bias_analysis(config, unnamed, None, methods=["CI", "CDDL"]) == analysis
