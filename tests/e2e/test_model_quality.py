"""The model-quality monitor through boto3 and the SDK: 1,000 captured predictions whose labels arrive
late, out of order, some twice (the last wins) and some never, merged exactly; every metric equal to
scikit-learn's on the same pairs, for a binary, a multiclass and a regression model; labels flipped
for a segment (concept drift) give an accuracy violation in SageMaker's words and an alarm on the
published metric, while the label-free estimate stays high.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm

from e2e_support import ROLE_ARN, Deployer, MoorageServer, new_name, pack_model, variant, wait_until
from moorage.monitor.model_quality.suggest import suggest_baseline
from moorage.sdk import Predictor, Session

pytestmark = pytest.mark.e2e

MODEL = '''
import json, math, os


def model_fn(model_dir, context=None):
    return os.environ["MODE"]


def transform_fn(mode, body, content_type, accept):
    x = float((body.decode() if isinstance(body, bytes) else body).strip().split(",")[0])
    if mode == "binary":
        return f"{1 / (1 + math.exp(-3 * x)):.6f}", "text/csv"
    if mode == "multiclass":
        label = 0 if x < -0.5 else 1 if x < 0.5 else 2
        return json.dumps({"prediction": {"label": label}}), "application/json"
    return json.dumps({"value": 2 * x + 1}), "application/json"
'''
CALLS = 1000
NAMESPACE = "aws/sagemaker/Endpoints/model-metrics"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-3 * x))


def _truth(mode: str, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Labels close to what the model predicts, with some noise."""
    if mode == "binary":
        return (rng.random(len(x)) < _sigmoid(x)).astype(int)
    if mode == "multiclass":
        base = np.where(x < -0.5, 0, np.where(x < 0.5, 1, 2))
        return np.where(rng.random(len(x)) < 0.15, rng.integers(0, 3, len(x)), base)
    return 2 * x + 1 + rng.normal(0, 0.3, len(x))


def _local(mode: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(prediction, probability) as the endpoint gives them (the probability rounded as its CSV output)."""
    if mode == "binary":
        probability = np.round(_sigmoid(x), 6)
        return (probability >= 0.5).astype(int), probability
    if mode == "multiclass":
        return np.where(x < -0.5, 0, np.where(x < 0.5, 1, 2)), None
    return 2 * x + 1, None


ATTRIBUTES = {"binary": {"ProbabilityAttribute": "0", "ProbabilityThresholdAttribute": 0.5},
              "multiclass": {"InferenceAttribute": "prediction.label"},
              "regression": {"InferenceAttribute": "value"}}
PROBLEMS = {"binary": "BinaryClassification", "multiclass": "MulticlassClassification", "regression": "Regression"}


class Monitored:
    """One endpoint with capture, its predictions and labels, and its model-quality schedule."""

    def __init__(self, server: MoorageServer, root: Path, mode: str, seed: int):
        self.server, self.mode, self.root = server, mode, root
        self.sm = server.sm()
        self.deployer = Deployer(server, self.sm)
        self.capture, self.ground_truth, self.output = root / "capture", root / "ground-truth", root / "monitoring"
        tarball = pack_model(root / "model", None, inference_py=MODEL)
        self.endpoint = name = new_name(f"mq-{mode}")
        self.deployer.model(name, tarball.as_uri(), env={"MODE": mode})
        self.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", name)],
                                       DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                                                          "DestinationS3Uri": self.capture.as_uri(),
                                                          "CaptureOptions": [{"CaptureMode": "Input"},
                                                                             {"CaptureMode": "Output"}]})
        self.deployer.configs.append(name)
        self.deployer.endpoint(name, name)
        self.deployer.wait_in_service(name)
        self.rng = np.random.default_rng(seed)
        self.predictor = Predictor(name, sagemaker_session=Session(home=server.home))
        self.captured = 0

    def baseline(self) -> Path:
        """A baseline from a validation set the same model scored (the CLI's and SDK's library)."""
        x = self.rng.normal(size=2000)
        prediction, probability = _local(self.mode, x)
        truth = _truth(self.mode, x, self.rng)
        path = self.root / "validation.csv"
        columns = ["label", "prediction"] + (["probability"] if probability is not None else [])
        rows = zip(truth, prediction, *([probability] if probability is not None else []), strict=True)
        path.write_text(",".join(columns) + "\n" + "\n".join(",".join(str(v) for v in row) for row in rows))
        folder = self.root / "baseline"
        suggest_baseline(path, folder, PROBLEMS[self.mode], ground_truth_attribute="label",
                         inference_attribute="prediction",
                         probability_attribute="probability" if probability is not None else None, header=True)
        return folder

    def traffic(self, drift: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """CALLS invocations; labels sent late, shuffled, in batches, 5% twice (first wrong), 5% never.
        Returns what the merge must produce: (labels, predictions, probabilities) of the labelled ones."""
        x = np.round(self.rng.normal(size=CALLS), 4)
        rt = self.server.rt()
        answers = []
        for i, value in enumerate(x):
            reply = rt.invoke_endpoint(EndpointName=self.endpoint, Body=f"{value}".encode(), ContentType="text/csv",
                                       InferenceId=f"{self.mode}-{i}")
            answers.append(reply["Body"].read())
        truth = _truth(self.mode, x, self.rng)
        if drift:  # the relationship changed for x > 0: the truth is the other class there
            truth = np.where(x > 0, 1 - truth, truth)
        prediction, probability = _local(self.mode, x)
        # The endpoint's own answers are what is captured: check the local copy matches them.
        if self.mode == "binary":
            assert [float(a) for a in answers] == pytest.approx(list(probability))
        order = list(range(CALLS))
        random.Random(3).shuffle(order)
        missing = set(order[:50])
        twice = order[50:100]
        first = [(f"{self.mode}-{i}", self._wrong(truth[i])) for i in twice]
        labelled = [(f"{self.mode}-{i}", self._label(truth[i])) for i in order if i not in missing]
        destination = self.ground_truth.as_uri()
        self.predictor.send_ground_truth_batch(first, s3_uri=destination)
        for start in range(0, len(labelled), 300):
            time.sleep(0.01)  # label files are named by the millisecond: later calls sort later
            self.predictor.send_ground_truth_batch(labelled[start:start + 300], s3_uri=destination)
        # Capture reaches its files within a flush interval: the execution must see every prediction.
        wait_until(lambda: sum(len(f.read_bytes().splitlines()) for f in self.capture.rglob("*.jsonl"))
                   >= self.captured + CALLS, 30, interval=0.2, what="every prediction captured")
        self.captured += CALLS
        keep = np.array(sorted(set(range(CALLS)) - missing))
        return truth[keep], prediction[keep], None if probability is None else probability[keep]

    def _label(self, value: Any) -> Any:
        return float(value) if self.mode == "regression" else int(value)

    def _wrong(self, value: Any) -> Any:
        return self._label(value) + 7 if self.mode == "regression" else int(value) + 1

    def schedule(self, baseline: Path) -> str:
        definition = new_name(f"mq-def-{self.mode}")
        self.sm.create_model_quality_job_definition(
            JobDefinitionName=definition, RoleArn=ROLE_ARN,
            ModelQualityAppSpecification={"ImageUri": "moorage/model-monitor", "ProblemType": PROBLEMS[self.mode]},
            ModelQualityJobInput={"EndpointInput": {"EndpointName": self.endpoint, "LocalPath": "/opt/ml/input",
                                                    **ATTRIBUTES[self.mode]},
                                  "GroundTruthS3Input": {"S3Uri": self.ground_truth.as_uri()}},
            ModelQualityJobOutputConfig={"MonitoringOutputs": [{"S3Output": {"S3Uri": self.output.as_uri(),
                                                                             "LocalPath": "/opt/ml/output"}}]},
            ModelQualityBaselineConfig={"ConstraintsResource": {"S3Uri": (baseline / "constraints.json").as_uri()}},
            JobResources={"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                            "VolumeSizeInGB": 1}})
        described = self.sm.describe_model_quality_job_definition(JobDefinitionName=definition)
        assert described["ModelQualityAppSpecification"]["ProblemType"] == PROBLEMS[self.mode]
        schedule = new_name(f"mq-{self.mode}")
        self.sm.create_monitoring_schedule(MonitoringScheduleName=schedule, MonitoringScheduleConfig={
            "MonitoringJobDefinitionName": definition, "MonitoringType": "ModelQuality",
            "ScheduleConfig": {"ScheduleExpression": "NOW", "DataAnalysisStartTime": "-PT1H",
                               "DataAnalysisEndTime": "-PT0H"}})
        return schedule

    def execution(self, schedule: str) -> dict[str, Any]:
        def done() -> dict[str, Any] | None:
            found = self.sm.list_monitoring_executions(MonitoringScheduleName=schedule)["MonitoringExecutionSummaries"]
            if found and found[0]["MonitoringExecutionStatus"] in ("Completed", "CompletedWithViolations", "Failed"):
                return found[0]
            return None

        summary = wait_until(done, 120, interval=0.5, what=f"the execution of {schedule}")
        assert summary["MonitoringType"] == "ModelQuality"
        name = summary["ProcessingJobArn"].rsplit("/", 1)[-1]
        status, _, body = self.server.signed_request("GET", f"/moorage/v1/monitoring-executions/{name}")
        assert status == 200, body
        return json.loads(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """This module's own server (named `server` so a failure shows its log): 1-second metric periods."""
    srv = MoorageServer(tmp_path_factory.mktemp("model-quality-home"),
                        env={"MOORAGE_METRICS_PERIOD": "1", "MOORAGE_MONITOR_TICK_SECONDS": "0.2"})
    srv.start(timeout=90)
    try:
        yield srv
    finally:
        srv.stop()


def _statistics(execution: dict[str, Any]) -> dict[str, Any]:
    return json.loads(Path(execution["StatisticsUri"].removeprefix("file://")).read_text())


def _value(section: dict[str, Any], name: str) -> float:
    return float(section[name]["value"])


@pytest.mark.parametrize("mode", ["binary", "multiclass", "regression"])
def test_metrics_equal_scikit_learn_on_the_merged_pairs(server: MoorageServer, tmp_path: Path, mode: str) -> None:
    monitored = Monitored(server, tmp_path, mode, seed={"binary": 1, "multiclass": 2, "regression": 3}[mode])
    baseline = monitored.baseline()
    labels, predictions, probabilities = monitored.traffic()
    execution = monitored.execution(monitored.schedule(baseline))
    assert execution["MonitoringExecutionStatus"] in ("Completed", "CompletedWithViolations"), execution
    merge = execution["Merge"]
    assert (merge["Captured"], merge["Matched"], merge["MissingLabel"]) == (CALLS, CALLS - 50, 50)
    assert execution["GroundTruth"]["Duplicates"] == 50  # the second label of each id sent twice won
    statistics = _statistics(execution)
    assert statistics["dataset"]["item_count"] == CALLS - 50
    if mode == "binary":
        section = statistics["binary_classification_metrics"]
        assert _value(section, "accuracy") == pytest.approx(skm.accuracy_score(labels, predictions))
        assert _value(section, "precision") == pytest.approx(skm.precision_score(labels, predictions))
        assert _value(section, "recall") == pytest.approx(skm.recall_score(labels, predictions))
        assert _value(section, "f1") == pytest.approx(skm.f1_score(labels, predictions))
        assert _value(section, "f2") == pytest.approx(skm.fbeta_score(labels, predictions, beta=2))
        assert _value(section, "auc") == pytest.approx(skm.roc_auc_score(labels, probabilities))
        matrix = skm.confusion_matrix(labels, predictions)
        assert section["confusion_matrix"]["1"]["0"] == matrix[1][0]  # actual, then predicted
        assert isinstance(section["accuracy"]["standard_deviation"], float)  # 950 pairs: resampled
        assert execution["Estimated"]["accuracy"]["value"] == pytest.approx(_value(section, "accuracy"), abs=0.06)
    elif mode == "multiclass":
        section = statistics["multiclass_classification_metrics"]
        assert _value(section, "accuracy") == pytest.approx(skm.accuracy_score(labels, predictions))
        assert _value(section, "weighted_f1") == pytest.approx(skm.f1_score(labels, predictions, average="weighted"))
        assert _value(section, "weighted_recall") == pytest.approx(
            skm.recall_score(labels, predictions, average="weighted"))
    else:
        section = statistics["regression_metrics"]
        assert _value(section, "mae") == pytest.approx(skm.mean_absolute_error(labels, predictions))
        assert _value(section, "mse") == pytest.approx(skm.mean_squared_error(labels, predictions))
        assert _value(section, "rmse") == pytest.approx(math.sqrt(skm.mean_squared_error(labels, predictions)))
        assert _value(section, "r2") == pytest.approx(skm.r2_score(labels, predictions))
    # The merged records, like SageMaker's: the capture plus its groundTruthData.
    merged = [json.loads(line) for path in Path(execution["OutputLocation"].removeprefix("file://")).rglob(
        "merged*.jsonl") for line in path.read_text().splitlines()]
    assert len(merged) == CALLS - 50 and all("groundTruthData" in m and "captureData" in m for m in merged)
    assert Path(execution["ReportUri"].removeprefix("file://")).read_text().startswith("<!doctype html>")
    monitored.deployer.cleanup()


def test_concept_drift_violates_accuracy_and_fires_an_alarm(server: MoorageServer, tmp_path: Path) -> None:
    monitored = Monitored(server, tmp_path, "binary", seed=4)
    baseline = monitored.baseline()
    monitored.traffic(drift=True)
    cw = server.client("cloudwatch")
    schedule = monitored.schedule(baseline)
    alarm = new_name("accuracy-drop")
    cw.put_metric_alarm(AlarmName=alarm, Namespace=NAMESPACE, MetricName="accuracy", Statistic="Minimum",
                        Dimensions=[{"Name": "Endpoint", "Value": monitored.endpoint},
                                    {"Name": "MonitoringSchedule", "Value": schedule}],
                        Period=10, EvaluationPeriods=1, Threshold=0.7, ComparisonOperator="LessThanThreshold",
                        TreatMissingData="ignore")
    # With a job definition naming it, labels go where it reads them without being told.
    written = monitored.predictor.send_ground_truth("not-a-served-id", 1)
    assert written["Written"] == 1 and written["Location"].startswith(monitored.ground_truth.as_uri())
    execution = monitored.execution(schedule)
    assert execution["MonitoringExecutionStatus"] == "CompletedWithViolations", execution
    violations = json.loads(Path(execution["ConstraintViolationsUri"].removeprefix("file://")).read_text())
    accuracy = next(v for v in violations["violations"] if v["metric_name"] == "accuracy")
    assert accuracy["constraint_check_type"] == "LessThanThreshold"
    assert accuracy["description"].startswith("Metric accuracy with ") and "was LessThanThreshold '" in \
        accuracy["description"]
    # Without labels the estimate stays where the baseline was: the gap is the concept-drift signal.
    drift = execution["ConceptDrift"]["accuracy"]
    assert drift["outside_band"] and drift["direction"] == "below" and drift["gap"] > 0.15
    wait_until(lambda: cw.describe_alarms(AlarmNames=[alarm])["MetricAlarms"][0]["StateValue"] == "ALARM", 60,
               interval=0.5, what="the accuracy alarm")
    monitored.deployer.cleanup()


def test_no_traffic_or_no_ground_truth_fail_saying_which(server: MoorageServer, tmp_path: Path) -> None:
    monitored = Monitored(server, tmp_path, "binary", seed=5)
    baseline = monitored.baseline()
    quiet = monitored.execution(monitored.schedule(baseline))
    assert quiet["MonitoringExecutionStatus"] == "Failed"
    assert "no captured predictions" in quiet["FailureReason"]
    rt = server.rt()
    for i in range(20):
        rt.invoke_endpoint(EndpointName=monitored.endpoint, Body=b"0.5", ContentType="text/csv",
                           InferenceId=f"unlabelled-{i}")
    wait_until(lambda: sum(len(f.read_bytes().splitlines()) for f in monitored.capture.rglob("*.jsonl")) >= 20,
               30, interval=0.2, what="the predictions captured")
    # Labels that name no captured prediction, and one that is not a label record at all, are counted.
    monitored.predictor.send_ground_truth_batch([("someone-else", 1)], s3_uri=monitored.ground_truth.as_uri())
    unlabelled = monitored.execution(monitored.schedule(baseline))
    assert unlabelled["MonitoringExecutionStatus"] == "Failed"
    assert "No ground truth for the 20 captured prediction(s)" in unlabelled["FailureReason"]
    monitored.deployer.cleanup()
