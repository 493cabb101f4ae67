"""Routing experiments through boto3 and the SDK: a chosen group's canary by rule, sticky assignment,
rewards that move a Thompson-sampling endpoint's weights and survive a restart, the report, and
bad input (tags, feedback) refused without changing anything.

The models answer which variant they are ({"variant": "A"}), so routing is what callers saw.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import Deployer, MoorageServer, err_code, err_message, new_name, pack_model, variant, wait_until
from moorage.sdk import Predictor, Session

pytestmark = pytest.mark.e2e

VARIANT_MODEL = '''
import json, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "variant.txt")) as fh:
        return fh.read().strip()


def transform_fn(name, body, content_type, accept):
    # "label": what a classifier would predict; B predicts the class the ground truth says (1).
    return json.dumps({"variant": name, "label": 1 if name == "B" else 0}), "application/json"
'''
ENV = {"MOORAGE_EXPERIMENTS_UPDATE_INTERVAL": "0.2s", "MOORAGE_METRICS_PERIOD": "1"}


def _models(dep: Deployer, workdir: Path, names: list[str]) -> dict[str, str]:
    out = {}
    for name in names:
        tarball = pack_model(workdir / name, None, inference_py=VARIANT_MODEL, extra_files={"variant.txt": name})
        out[name] = dep.model(new_name(f"model-{name.lower()}"), tarball.as_uri())
    return out


def _config(dep: Deployer, models: dict[str, str], tags: dict[str, str], weights: dict[str, float] | None = None,
            name: str | None = None) -> str:
    name = name or new_name("exp-config")
    dep.sm.create_endpoint_config(
        EndpointConfigName=name, Tags=[{"Key": k, "Value": v} for k, v in tags.items()],
        ProductionVariants=[variant(v, m, weight=(weights or {}).get(v, 1.0)) for v, m in models.items()])
    dep.configs.append(name)
    return name


def _invoke(rt: Any, endpoint: str, *, attributes: str | None = None, inference_id: str | None = None) -> str:
    extra: dict[str, str] = {}
    if attributes:
        extra["CustomAttributes"] = attributes
    if inference_id:
        extra["InferenceId"] = inference_id
    reply = rt.invoke_endpoint(EndpointName=endpoint, Body=b"1", ContentType="text/csv", **extra)
    answered = json.loads(reply["Body"].read())["variant"]
    assert reply["InvokedProductionVariant"] == answered
    return str(answered)


@pytest.fixture
def experiments(fresh_server: Callable[..., MoorageServer]) -> MoorageServer:
    return fresh_server(env=ENV)


def test_rules_send_a_group_to_its_variant_and_sticky_users_keep_theirs(experiments: MoorageServer,
                                                                         tmp_path: Path) -> None:
    dep = Deployer(experiments)
    models = _models(dep, tmp_path, ["A", "B"])
    config = _config(dep, models, {"moorage:rule:1": "beta=true -> B", "moorage:rule:2": "region=eu -> A",
                                   "moorage:sticky": "user"}, weights={"A": 1.0, "B": 3.0})
    endpoint = dep.endpoint(new_name("sticky"), config)
    dep.wait_in_service(endpoint)
    rt = experiments.rt()

    # The chosen group always gets its variant, whatever the weights and the sticky key say.
    assert {_invoke(rt, endpoint, attributes=f"beta=true;user=u{i}") for i in range(30)} == {"B"}
    assert {_invoke(rt, endpoint, attributes=f"user=u{i}, region=eu") for i in range(30)} == {"A"}
    # Not a key=value list: passed through untouched, routed by the weights.
    assert {_invoke(rt, endpoint, attributes="just some text") for _ in range(40)} == {"A", "B"}

    users, calls = 1000, 20

    def one_user(i: int) -> set[str]:
        return {_invoke(rt, endpoint, attributes=f"user=u{i}") for _ in range(calls)}

    with ThreadPoolExecutor(4) as pool:
        seen = list(pool.map(one_user, range(users)))
    assert all(len(variants) == 1 for variants in seen)  # every user kept one variant over 20 requests
    shares = Counter(next(iter(v)) for v in seen)
    # B has 3/4 of the weight: 750 users expected, sd 13.7; a band of 4 sd.
    assert abs(shares["B"] - 750) <= 55, shares
    dep.cleanup()


def test_rewards_move_a_thompson_endpoint_and_survive_a_restart(experiments: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(experiments)
    models = _models(dep, tmp_path, ["A", "B"])
    config = _config(dep, models, {"moorage:routing": "thompson", "moorage:routing:min-weight": "0.02"})
    endpoint = dep.endpoint(new_name("bandit"), config)
    dep.wait_in_service(endpoint)
    sm, rt = experiments.sm(), experiments.rt()
    session = Session(home=experiments.home)
    predictor = Predictor(endpoint, sagemaker_session=session)
    rates = {"A": 0.2, "B": 0.8}
    draw = random.Random(7)

    def round_of(n: int, start: int) -> list[tuple[str, float]]:
        out = []
        for i in range(start, start + n):
            inference_id = f"req-{i}"
            served = _invoke(rt, endpoint, inference_id=inference_id)
            out.append((inference_id, 1.0 if draw.random() < rates[served] else 0.0))
        return out

    sent = 0
    for start in range(0, 400, 100):
        answer = predictor.send_feedback_batch(round_of(100, start))
        assert answer == {"Accepted": 100, "Unknown": [], "Duplicate": []}
        sent += 100

    def weights() -> dict[str, tuple[float, float]]:
        desc = sm.describe_endpoint(EndpointName=endpoint)
        return {v["VariantName"]: (v["CurrentWeight"], v["DesiredWeight"]) for v in desc["ProductionVariants"]}

    learned = wait_until(lambda: (w := weights())["B"][0] > 0.9 and w, 30, interval=0.2,
                         what="B's weight to rise with its rewards")
    assert learned["A"][0] >= 0.02 - 1e-9  # the exploration floor
    report = session.experiment_report(endpoint)
    rewards = {v["VariantName"]: v["Rewards"] for v in report["Variants"]}
    assert sum(rewards.values()) == sent and report["Routing"]["Policy"] == "thompson"

    # A reward counts once; an id never served is unknown.
    assert predictor.send_feedback("req-0", 1.0) == {"Accepted": 0, "Unknown": [], "Duplicate": ["req-0"]}
    assert predictor.send_feedback("req-never", 1.0) == {"Accepted": 0, "Unknown": ["req-never"], "Duplicate": []}

    experiments.stop(timeout=30)
    experiments.start(timeout=90)
    dep.wait_in_service(endpoint)
    after = weights()
    assert after["B"][1] == pytest.approx(learned["B"][1])  # the desired weight came back from the store
    wait_until(lambda: weights()["B"][0] == pytest.approx(after["B"][1]), 30, interval=0.2,
               what="the live weight back at the learned one")
    again = Session(home=experiments.home).experiment_report(endpoint)
    assert {v["VariantName"]: v["Rewards"] for v in again["Variants"]} == rewards
    # What was served before the restart still takes its reward, once.
    assert Predictor(endpoint, sagemaker_session=Session(home=experiments.home)).send_feedback("req-0", 1.0)[
        "Duplicate"] == ["req-0"]
    served = _invoke(rt, endpoint, inference_id="after-restart")
    assert Session(home=experiments.home).send_feedback(endpoint, [("after-restart", 1.0)])["Accepted"] == 1
    final = Session(home=experiments.home).experiment_report(endpoint)
    assert {v["VariantName"]: v["Rewards"] for v in final["Variants"]}[served] == rewards[served] + 1

    # The command line shows the same report.
    env = {k: v for k, v in os.environ.items() if k not in ("MOORAGE_HOME", "AWS_PROFILE")}
    shown = subprocess.run([sys.executable, "-m", "moorage", "experiment", "report", endpoint, "--home",
                            str(experiments.home)], capture_output=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode()
    assert "routing thompson" in out and "B vs A:" in out
    dep.cleanup()


def test_an_ab_test_reports_a_verdict_and_keeps_learning_across_an_update(experiments: MoorageServer,
                                                                          tmp_path: Path) -> None:
    dep = Deployer(experiments)
    models = _models(dep, tmp_path, ["A", "B", "C"])
    ab = {k: models[k] for k in ("A", "B")}
    config = _config(dep, ab, {"moorage:routing": "weights"})
    endpoint = dep.endpoint(new_name("abtest"), config)
    dep.wait_in_service(endpoint)
    rt = experiments.rt()
    session = Session(home=experiments.home)
    feedback = []
    for i in range(600):
        served = _invoke(rt, endpoint, inference_id=f"ab-{i}")
        feedback.append((f"ab-{i}", 1.0 if served == "B" or i % 10 == 0 else 0.0))  # B: 1.0, A: 0.1
    for start in range(0, len(feedback), 250):
        session.send_feedback(endpoint, feedback[start:start + 250])
    report = session.experiment_report(endpoint)
    (comparison,) = report["Comparisons"]
    assert comparison["Control"] == "A" and comparison["Treatment"] == "B"
    assert comparison["Verdict"] == "B better" and comparison["PValue"] < 0.05
    assert {v["VariantName"] for v in report["Variants"]} == {"A", "B"}
    # Invocations come from the metrics, published once a period.
    wait_until(lambda: sum(v["Invocations"] or 0 for v in session.experiment_report(endpoint)["Variants"]) == 600,
               30, interval=0.3, what="the invocations in the report")
    before = {v["VariantName"]: v["Rewards"] for v in report["Variants"]}

    # A third variant joins: it starts from the prior, A and B keep what they learned.
    sm = experiments.sm()
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=_config(dep, models, {"moorage:routing": "weights"}))
    wait_until(lambda: len(sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"]) == 3
               and sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService", 90, interval=0.5,
               what="the update to three variants")
    after = {v["VariantName"]: v["Rewards"] for v in session.experiment_report(endpoint)["Variants"]}
    assert after == {**before, "C": 0}
    dep.cleanup()


def test_bad_routing_tags_and_feedback_are_refused(experiments: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(experiments)
    models = _models(dep, tmp_path, ["A", "B"])
    sm = experiments.sm()
    for tags, named in [({"moorage:routing": "greedy"}, "moorage:routing"),
                        ({"moorage:routing:epsilon": "2"}, "moorage:routing:epsilon"),
                        ({"moorage:routing:epsilon": "lots"}, "moorage:routing:epsilon"),
                        ({"moorage:routing:reward": "stars"}, "moorage:routing:reward"),
                        ({"moorage:routing:epsilom": "0.2"}, "moorage:routing:epsilom"),
                        ({"moorage:rule:1": "beta -> B"}, "moorage:rule:1"),
                        ({"moorage:rule:1": "beta=true -> Z"}, "moorage:rule:1"),
                        ({"moorage:rule:first": "beta=true -> B"}, "moorage:rule:first"),
                        ({"moorage:routing:reward-source": "metrics:Shop"}, "moorage:routing:reward-source"),
                        ({"moorage:routing:reward-source": "metric:Shop/Sales", "moorage:routing:reward": "continuous"},
                         "moorage:routing:reward-source"),
                        ({"moorage:routing:reward-attribute": "label"}, "moorage:routing:reward-attribute")]:
        name = new_name("bad-config")
        with pytest.raises(ClientError) as exc:
            _config(dep, models, tags, name=name)
        assert err_code(exc.value) == "ValidationException" and named in err_message(exc.value), tags
        with pytest.raises(ClientError):
            sm.describe_endpoint_config(EndpointConfigName=name)  # nothing was created

    plain = _config(dep, models, {})
    with pytest.raises(ClientError) as exc:
        sm.add_tags(ResourceArn=sm.describe_endpoint_config(EndpointConfigName=plain)["EndpointConfigArn"],
                    Tags=[{"Key": "moorage:routing", "Value": "ucb2"}])
    assert err_code(exc.value) == "ValidationException" and "moorage:routing" in err_message(exc.value)

    # Feedback to an endpoint that is no experiment, and malformed feedback to one that is.
    session = Session(home=experiments.home)
    not_experiment = dep.endpoint(new_name("plain"), plain)
    experiment = dep.endpoint(new_name("exp"), _config(dep, models, {"moorage:routing": "epsilon-greedy"}))
    dep.wait_in_service(not_experiment)
    dep.wait_in_service(experiment)
    status, _, body = experiments.signed_request("POST", f"/moorage/v1/endpoints/{not_experiment}/feedback",
                                                 json.dumps({"Feedback": [{"InferenceId": "x", "Reward": 1}]}).encode())
    assert status == 400 and b"not an experiment" in body
    _invoke(experiments.rt(), experiment, inference_id="good")
    for document, words in [({"Feedback": [{"InferenceId": "good", "Reward": 0.5}]}, b"binary"),
                            ({"Feedback": [{"InferenceId": "good", "Reward": 1}, {"InferenceId": "x",
                                                                                  "Reward": "yes"}]},
                             b"Feedback[1].Reward"),
                            ({"Feedback": [{"Reward": 1}]}, b"Feedback[0].InferenceId"),
                            ({"Feedback": [{"InferenceId": str(i), "Reward": 1} for i in range(1001)]}, b"1000"),
                            ({"Rewards": []}, b"Feedback")]:
        status, _, body = experiments.signed_request("POST", f"/moorage/v1/endpoints/{experiment}/feedback",
                                                     json.dumps(document).encode())
        assert status == 400 and words in body, (document, body)
    status, _, body = experiments.signed_request("POST", f"/moorage/v1/endpoints/{experiment}/feedback", b"{nope")
    assert status == 400
    # Nothing of the refused calls was credited: "good" still takes its reward, once.
    assert session.send_feedback(experiment, [("good", 1.0)]) == {"Accepted": 1, "Unknown": [], "Duplicate": []}
    status, _, _ = experiments.signed_request("POST", "/moorage/v1/endpoints/no-such-endpoint/feedback",
                                              json.dumps({"Feedback": [{"InferenceId": "x", "Reward": 1}]}).encode())
    assert status == 404
    dep.cleanup()


def test_rewards_from_ground_truth_and_from_a_business_metric(experiments: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(experiments)
    models = _models(dep, tmp_path, ["A", "B"])
    session = Session(home=experiments.home)
    rt = experiments.rt()

    # Ground truth: the label says 1 every time; B predicts 1, A predicts 0.
    labelled = dep.endpoint(new_name("gt"), _config(dep, models, {
        "moorage:routing": "thompson", "moorage:routing:reward-source": "ground-truth",
        "moorage:routing:reward-attribute": "label"}))
    dep.wait_in_service(labelled)
    served = Counter(_invoke(rt, labelled, inference_id=f"gt-{i}") for i in range(200))
    answer = session.send_ground_truth(labelled, [(f"gt-{i}", 1) for i in range(200)] + [("gt-unknown", 1)])
    assert answer["Written"] == 201 and str(experiments.home / "ground-truth" / labelled) in answer["Location"]
    assert answer["Rewards"]["Accepted"] == 200 and answer["Rewards"]["Unknown"] == ["gt-unknown"]
    report = session.experiment_report(labelled)
    by_variant = {v["VariantName"]: v for v in report["Variants"]}
    assert {name: v["Rewards"] for name, v in by_variant.items()} == {"A": served["A"], "B": served["B"]}
    assert by_variant["B"]["MeanReward"] == 1.0 and by_variant["A"]["MeanReward"] == 0.0
    assert report["Routing"]["RewardSource"] == "ground-truth"
    sm = experiments.sm()
    wait_until(lambda: next(v["CurrentWeight"] for v in sm.describe_endpoint(EndpointName=labelled)[
        "ProductionVariants"] if v["VariantName"] == "B") > 0.9, 30, interval=0.2, what="B's weight to rise")

    # A business metric put with the variant's dimensions: a purchase (1) or none (0) per request.
    tags = {"moorage:routing": "weights", "moorage:routing:reward-source": "metric:Shop/Purchase"}
    bought = dep.endpoint(new_name("shop"), _config(dep, models, tags))
    dep.wait_in_service(bought)
    calls: Counter[str] = Counter()
    for _ in range(60):
        variant_name = _invoke(rt, bought)
        value = 1.0 if variant_name == "B" else 0.0
        calls[variant_name] += 1
        session.put_metric("Purchase", value, {"EndpointName": bought, "VariantName": variant_name},
                           namespace="Shop")

    def rewards() -> dict[str, tuple[int, float | None]]:
        doc = session.experiment_report(bought)
        return {v["VariantName"]: (v["Rewards"], v["MeanReward"]) for v in doc["Variants"]}

    wait_until(lambda: {k: n for k, (n, _) in rewards().items()} == dict(calls), 30, interval=0.3,
               what="the metric's values credited as rewards")
    assert rewards()["B"][1] == 1.0 and rewards()["A"][1] == 0.0
    experiments.stop(timeout=30)
    experiments.start(timeout=90)
    time.sleep(1.5)  # a few ticks: nothing is read twice after a restart
    assert {k: n for k, (n, _) in rewards().items()} == dict(calls)
    dep.cleanup()
