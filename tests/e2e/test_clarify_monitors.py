"""Bias drift and feature-attribution drift through boto3 against a real server: Clarify's analysis
configuration at the job's ConfigUri, real capture, ground truth through the SDK, baselines made by
the library; a group whose outcomes flip mid-stream raises a bias violation, and a model whose
reliance moves from one feature to another raises an attribution-drift violation (the model is
explained on an instance of its own, through the container contract).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    ROLE_ARN,
    Deployer,
    MoorageServer,
    err_code,
    err_message,
    new_name,
    pack_model,
    variant,
    wait_until,
)
from moorage.monitor.model_explainability.attributions import (
    compute_attributions,
    explainability_analysis,
    load_shap_config,
)
from moorage.sdk import Predictor, Session
from moorage.sdk.monitor import ModelExplainabilityMonitor

pytestmark = pytest.mark.e2e

# p = sigmoid(a * x0 + b * x1), the weights from the model's weights.json: one CSV line a row.
MODEL = '''
import json, math, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "weights.json")) as fh:
        return json.load(fh)


def transform_fn(w, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    out = []
    for line in text.strip().splitlines():
        x = [float(v) for v in line.split(",")]
        out.append(f"{1 / (1 + math.exp(-(w[0] * x[0] + w[1] * x[1] + w[2] * x[2]))):.6f}")
    return "\\n".join(out) + "\\n", "text/csv"
'''
HEADERS = ["label", "x0", "x1", "x2"]


def _probability(weights: list[float], rows: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-(rows @ np.asarray(weights))))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """This module's own server (named `server` so a failure shows its log)."""
    srv = MoorageServer(tmp_path_factory.mktemp("clarify-home"),
                        env={"MOORAGE_METRICS_PERIOD": "1", "MOORAGE_MONITOR_TICK_SECONDS": "0.2"})
    srv.start(timeout=90)
    try:
        yield srv
    finally:
        srv.stop()


class Captured:
    """An endpoint with capture and a model of given weights."""

    def __init__(self, server: MoorageServer, root: Path, weights: list[float]):
        self.server, self.root = server, root
        self.sm = server.sm()
        self.deployer = Deployer(server, self.sm)
        self.capture, self.output = root / "capture", root / "monitoring"
        self.endpoint = new_name("clarify")
        self.deployer.endpoint(self.endpoint, self.config(weights))
        self.deployer.wait_in_service(self.endpoint)
        self.sent = 0

    def config(self, weights: list[float]) -> str:
        name = new_name("clarify-model")
        tarball = pack_model(self.root / name, None, inference_py=MODEL,
                             extra_files={"weights.json": json.dumps(weights)})
        self.deployer.model(name, tarball.as_uri())
        self.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", name)],
                                       DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                                                          "DestinationS3Uri": self.capture.as_uri(),
                                                          "CaptureOptions": [{"CaptureMode": "Input"},
                                                                             {"CaptureMode": "Output"}]})
        self.deployer.configs.append(name)
        return name

    def send(self, rows: np.ndarray, prefix: str) -> list[float]:
        rt = self.server.rt()
        out = []
        for i, row in enumerate(rows):
            reply = rt.invoke_endpoint(EndpointName=self.endpoint, ContentType="text/csv", InferenceId=f"{prefix}-{i}",
                                       Body=",".join(f"{v:.6f}" for v in row).encode())
            out.append(float(reply["Body"].read()))
        self.sent += len(rows)
        wait_until(lambda: sum(len(f.read_bytes().splitlines()) for f in self.capture.rglob("*.jsonl")) >= self.sent,
                   30, interval=0.2, what="every request captured")
        return out

    def schedule(self, kind: str, definition: dict[str, Any]) -> str:
        name = new_name(f"{kind.lower()}-def")
        getattr(self.sm, f"create_{'model_bias' if kind == 'ModelBias' else 'model_explainability'}_job_definition")(
            JobDefinitionName=name, RoleArn=ROLE_ARN,
            JobResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}},
            **definition)
        schedule = new_name(kind.lower())
        self.sm.create_monitoring_schedule(MonitoringScheduleName=schedule, MonitoringScheduleConfig={
            "MonitoringJobDefinitionName": name, "MonitoringType": kind,
            "ScheduleConfig": {"ScheduleExpression": "NOW", "DataAnalysisStartTime": "-PT1H",
                               "DataAnalysisEndTime": "-PT0H"}})
        return schedule

    def execution(self, schedule: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found = self.sm.list_monitoring_executions(MonitoringScheduleName=schedule)["MonitoringExecutionSummaries"]
            if found and found[0]["MonitoringExecutionStatus"] in ("Completed", "CompletedWithViolations", "Failed"):
                return found[0]
            return None

        summary = wait_until(done, 180, interval=0.5, what=f"the execution of {schedule}")
        status, _, body = self.server.signed_request(
            "GET", f"/moorage/v1/monitoring-executions/{summary['ProcessingJobArn'].rsplit('/', 1)[-1]}")
        assert status == 200, body
        return json.loads(body)


def _cli(*args: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("MOORAGE_HOME", "AWS_PROFILE")}
    done = subprocess.run([sys.executable, "-m", "moorage", *args], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _output(endpoint: str, output: Path) -> dict[str, Any]:
    return {"MonitoringOutputs": [{"S3Output": {"S3Uri": output.as_uri(), "LocalPath": "/opt/ml/processing/output"}}]}


def test_attribution_drift_when_the_models_reliance_moves(server: MoorageServer, tmp_path: Path) -> None:
    before, after = [3.0, 0.2, 0.0], [0.2, 3.0, 0.0]
    captured = Captured(server, tmp_path, before)
    config = {"dataset_type": "text/csv", "headers": HEADERS, "label": "label",
              "methods": {"shap": {"baseline": [[0.0, 0.0, 0.0]], "num_samples": 40, "agg_method": "mean_abs",
                                   "use_logit": False}}}
    config_path = tmp_path / "analysis_config.json"
    config_path.write_text(json.dumps(config))
    rng = np.random.default_rng(3)
    # The baseline: the first model, through its endpoint, explained on a validation set (the command line's
    # baseline job), checked against the library on the same rows with the model computed here.
    validation = rng.normal(size=(200, 3))
    dataset = tmp_path / "validation.csv"
    dataset.write_text("\n".join(",".join(f"{v:.6f}" for v in [0.0, *row]) for row in validation) + "\n")
    _cli("monitor", "baseline", "--kind", "explainability", "--config", str(config_path), "--dataset", str(dataset),
         "--no-header", "--output", str(tmp_path / "baseline"), "--endpoint", captured.endpoint, "--home",
         str(server.home))
    baseline = json.loads((tmp_path / "baseline" / "analysis.json").read_text())
    # The SDK's ModelExplainabilityMonitor makes the same baseline.
    monitor = ModelExplainabilityMonitor(role=ROLE_ARN, sagemaker_session=Session(home=server.home))
    monitor.suggest_baseline(str(dataset), config_path, captured.endpoint, str(tmp_path / "sdk-baseline"),
                             dataset_format={"csv": {"header": False}})
    sdk_values = monitor.latest_analysis()["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
    assert sdk_values == pytest.approx(baseline["explanations"]["kernel_shap"]["label0"]["global_shap_values"])
    shap_config = load_shap_config(config)
    explained = compute_attributions(shap_config, np.round(validation, 6), lambda rows: _probability(before, rows))
    local = explainability_analysis(shap_config, explained.global_values)
    for feature, value in local["explanations"]["kernel_shap"]["label0"]["global_shap_values"].items():
        assert baseline["explanations"]["kernel_shap"]["label0"]["global_shap_values"][feature] == \
            pytest.approx(value, abs=1e-4)
    assert baseline["explanations"]["kernel_shap"]["label0"]["global_shap_values"]["x0"] > \
        baseline["explanations"]["kernel_shap"]["label0"]["global_shap_values"]["x1"]

    # The endpoint moves to a model that relies on x1 instead; its traffic is explained.
    captured.sm.update_endpoint(EndpointName=captured.endpoint, EndpointConfigName=captured.config(after))
    wait_until(lambda: captured.sm.describe_endpoint(EndpointName=captured.endpoint)["EndpointStatus"] == "InService"
               and "PendingDeploymentSummary" not in captured.sm.describe_endpoint(EndpointName=captured.endpoint),
               120, interval=0.5, what="the update")
    rows = rng.normal(size=(60, 3))
    answers = captured.send(rows, "explain")
    assert answers == pytest.approx(list(_probability(after, rows)), abs=1e-5)
    schedule = captured.schedule("ModelExplainability", {
        "ModelExplainabilityAppSpecification": {"ImageUri": "moorage/clarify", "ConfigUri": config_path.as_uri()},
        "ModelExplainabilityJobInput": {"EndpointInput": {"EndpointName": captured.endpoint,
                                                          "LocalPath": "/opt/ml/processing/input"}},
        "ModelExplainabilityJobOutputConfig": _output(captured.endpoint, captured.output),
        "ModelExplainabilityBaselineConfig": {"ConstraintsResource": {
            "S3Uri": (tmp_path / "baseline" / "analysis.json").as_uri()}}})
    execution = captured.execution(schedule)
    assert execution["MonitoringExecutionStatus"] == "CompletedWithViolations", execution
    violations = json.loads(Path(execution["ConstraintViolationsUri"].removeprefix("file://")).read_text())
    (violation,) = violations["violations"]
    assert "exceeds threshold 0.9" in violation["description"]
    analysis = json.loads(Path(execution["AnalysisUri"].removeprefix("file://")).read_text())
    current = analysis["explanations"]["kernel_shap"]["label0"]["global_shap_values"]
    assert current["x1"] > current["x0"] and not math.isnan(current["x2"])
    page = Path(execution["ReportUri"].removeprefix("file://")).read_text()
    assert "Baseline and current attributions" in page and "NDCG" in page
    captured.deployer.cleanup()


def test_bias_drift_when_one_groups_outcomes_flip(server: MoorageServer, tmp_path: Path) -> None:
    from moorage.monitor.model_bias.analysis import bias_analysis

    weights = [0.0, 2.0, 0.5]  # the model ignores the group (column 0)
    captured = Captured(server, tmp_path, weights)
    config = {"dataset_type": "text/csv", "headers": ["label", "group", "x1", "x2"], "label": "label",
              "label_values_or_threshold": [1], "facet": [{"name_or_index": "group", "value_or_threshold": [1]}],
              "probability_threshold": 0.5, "methods": {"pre_training_bias": {"methods": "all"},
                                                        "post_training_bias": {"methods": "all"}}}
    config_path = tmp_path / "bias_config.json"
    config_path.write_text(json.dumps(config))
    rng = np.random.default_rng(5)

    def rows(n: int) -> np.ndarray:
        return np.column_stack([rng.integers(0, 2, n), rng.normal(size=n), rng.normal(size=n)]).astype(float)

    # The baseline: labels drawn from the model's own probabilities, in both groups alike.
    validation = rows(600)
    probability = _probability(weights, validation)
    import pandas as pd

    frame = pd.DataFrame(validation, columns=["group", "x1", "x2"]).astype({"group": int})
    frame["label"] = (rng.random(600) < probability).astype(int)
    frame["predicted"] = (probability > 0.5).astype(int)
    dataset = tmp_path / "validation.csv"
    frame[["label", "group", "x1", "x2", "predicted"]].to_csv(dataset, index=False)
    # The baseline job from the command line: pre- and post-training metrics of the validation set.
    _cli("monitor", "baseline", "--kind", "bias", "--config", str(config_path), "--dataset", str(dataset),
         "--header", "--predicted-column", "predicted", "--output", str(tmp_path / "baseline"))
    baseline = json.loads((tmp_path / "baseline" / "analysis.json").read_text())
    expected = bias_analysis(config, frame.drop(columns="predicted"), frame["predicted"].to_numpy())
    def values(analysis: dict[str, Any]) -> dict[str, Any]:
        return {m["name"]: m["value"] if m["value"] is not None else m.get("error")
                for m in analysis["post_training_bias_metrics"]["facets"]["group"][0]["metrics"]}

    assert set(values(baseline)) == set(values(expected)) and "pre_training_bias_metrics" in baseline
    for name, value in values(expected).items():
        assert values(baseline)[name] == (value if isinstance(value, str) else pytest.approx(value, rel=1e-9)), name

    # Live traffic whose labels, for group 1 only, are the opposite of what the model predicts.
    # An analysis configuration that cannot work is refused at creation, naming the field.
    broken = tmp_path / "broken_config.json"
    broken.write_text(json.dumps({**config, "facet": [{"name_or_index": "group", "value_or_threshold": "one"}]}))
    with pytest.raises(ClientError) as refused:
        captured.sm.create_model_bias_job_definition(
            JobDefinitionName=new_name("bad-bias"), RoleArn=ROLE_ARN,
            JobResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}},
            ModelBiasAppSpecification={"ImageUri": "moorage/clarify", "ConfigUri": broken.as_uri()},
            ModelBiasJobInput={"EndpointInput": {"EndpointName": captured.endpoint, "LocalPath": "/opt/ml/input"},
                               "GroundTruthS3Input": {"S3Uri": (tmp_path / "gt").as_uri()}},
            ModelBiasJobOutputConfig=_output(captured.endpoint, captured.output))
    assert err_code(refused.value) == "ValidationException" and "value_or_threshold" in err_message(refused.value)

    live = rows(400)
    scores = np.asarray(captured.send(live, "bias"))
    truth = (rng.random(400) < scores).astype(int)
    truth = np.where(live[:, 0] == 1, 1 - truth, truth)
    predictor = Predictor(captured.endpoint, sagemaker_session=Session(home=server.home))
    ground_truth = tmp_path / "ground-truth"
    predictor.send_ground_truth_batch([(f"bias-{i}", int(y)) for i, y in enumerate(truth)],
                                      s3_uri=ground_truth.as_uri())
    schedule = captured.schedule("ModelBias", {
        "ModelBiasAppSpecification": {"ImageUri": "moorage/clarify", "ConfigUri": config_path.as_uri()},
        "ModelBiasJobInput": {"EndpointInput": {"EndpointName": captured.endpoint,
                                                "LocalPath": "/opt/ml/processing/input",
                                                "ProbabilityAttribute": "0", "ProbabilityThresholdAttribute": 0.5},
                              "GroundTruthS3Input": {"S3Uri": ground_truth.as_uri()}},
        "ModelBiasJobOutputConfig": _output(captured.endpoint, captured.output),
        "ModelBiasBaselineConfig": {"ConstraintsResource": {
            "S3Uri": (tmp_path / "baseline" / "analysis.json").as_uri()}}})
    execution = captured.execution(schedule)
    assert execution["MonitoringExecutionStatus"] == "CompletedWithViolations", execution
    assert execution["Merge"]["Matched"] == 400
    violations = json.loads(Path(execution["ConstraintViolationsUri"].removeprefix("file://")).read_text())
    flagged = {v["metric_name"] for v in violations["violations"]}
    assert flagged & {"AD", "RD", "DAR", "DRR", "DCA", "DCR", "SD", "TE"}, violations
    analysis = json.loads(Path(execution["AnalysisUri"].removeprefix("file://")).read_text())
    assert analysis["post_training_bias_metrics"]["facets"]["group"]
    cw = server.client("cloudwatch")
    wait_until(lambda: cw.list_metrics(Namespace="aws/sagemaker/Endpoints/bias-metrics")["Metrics"], 30,
               interval=0.3, what="the bias metrics in CloudWatch")
    captured.deployer.cleanup()
