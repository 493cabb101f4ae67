"""Processing jobs for Model Monitor, through boto3 against a real server.

Requests are built as the SageMaker Python SDK (2.257.7) builds them for
``DefaultModelMonitor.suggest_baseline`` and ``ModelQualityMonitor.suggest_baseline``
(``sagemaker/model_monitor/model_monitoring.py`` ``_generate_env_map``, ``sagemaker/processing.py``
``_get_process_args``): the analyzer image, the ``baseline_dataset_input`` under
``/opt/ml/processing/input``, the ``monitoring_output`` from ``/opt/ml/processing/output``. The
files they write are read with moorage's own formats; a monitoring execution's processing job points
at the files the SDK's ``latest_monitoring_statistics`` reads.
"""

from __future__ import annotations

import datetime as dt
import json
import os
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
from moorage.monitor.common.formats import Constraints, Statistics

pytestmark = pytest.mark.e2e

ANALYZER = "156813124566.dkr.ecr.us-east-1.amazonaws.com/sagemaker-model-monitor-analyzer"
FEATURES = ["a", "b", "c", "d"]


def suggest_request(name: str, dataset_uri: str, output_uri: str, *, image: str = ANALYZER,
                    **environment: str) -> dict[str, Any]:
    """CreateProcessingJob as DefaultModelMonitor.suggest_baseline sends it (dataset_format csv with a header)."""
    env = {"dataset_format": json.dumps({"csv": {"header": True, "output_columns_position": "START"}}),
           "output_path": "/opt/ml/processing/output", "publish_cloudwatch_metrics": "Disabled",
           "dataset_source": "/opt/ml/processing/input/baseline_dataset_input", **environment}
    return {
        "ProcessingJobName": name,
        "ProcessingInputs": [{"InputName": "baseline_dataset_input", "AppManaged": False, "S3Input": {
            "S3Uri": dataset_uri, "LocalPath": "/opt/ml/processing/input/baseline_dataset_input",
            "S3DataType": "S3Prefix", "S3InputMode": "File", "S3DataDistributionType": "FullyReplicated",
            "S3CompressionType": "None"}}],
        "ProcessingOutputConfig": {"Outputs": [{"OutputName": "monitoring_output", "AppManaged": False, "S3Output": {
            "S3Uri": output_uri, "LocalPath": "/opt/ml/processing/output", "S3UploadMode": "EndOfJob"}}]},
        "ProcessingResources": {"ClusterConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1,
                                                  "VolumeSizeInGB": 20}},
        "StoppingCondition": {"MaxRuntimeInSeconds": 3600},
        "AppSpecification": {"ImageUri": image},
        "Environment": env,
        "RoleArn": ROLE_ARN,
    }


def wait_job(sm: Any, name: str, timeout: float = 120) -> dict[str, Any]:
    return wait_until(lambda: (lambda d: d if d["ProcessingJobStatus"] not in ("InProgress", "Stopping") else None)(
        sm.describe_processing_job(ProcessingJobName=name)), timeout, interval=0.3, what=f"processing job {name}")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding one CSV with a header (the SDK uploads a file under a prefix of its own)."""
    folder = tmp_path_factory.mktemp("baseline-input") / "baseline_dataset_input"
    folder.mkdir()
    data = np.random.default_rng(3).normal(size=(500, 4))
    (folder / "train.csv").write_text(",".join(FEATURES) + "\n"
                                      + "\n".join(",".join(f"{v:.5f}" for v in row) for row in data) + "\n")
    return folder


def test_suggest_baseline_writes_statistics_and_constraints(server: MoorageServer, dataset: Path,
                                                             tmp_path: Path) -> None:
    sm, logs = server.sm(), server.client("logs")
    name = new_name("baseline")
    output = tmp_path / "results"
    sm.create_processing_job(**suggest_request(name, dataset.as_uri(), output.as_uri()))
    desc = wait_job(sm, name)
    assert desc["ProcessingJobStatus"] == "Completed", desc.get("FailureReason")
    assert desc["ExitMessage"].startswith("Completed:")
    assert desc["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"] == output.as_uri()
    assert desc["AppSpecification"]["ImageUri"] == ANALYZER
    assert desc["ProcessingStartTime"] <= desc["ProcessingEndTime"]

    statistics = Statistics.from_file_path(output / "statistics.json").body_dict
    constraints = Constraints.from_file_path(output / "constraints.json").body_dict
    assert statistics["dataset"]["item_count"] == 500
    assert [f["name"] for f in statistics["features"]] == FEATURES
    assert [f["name"] for f in constraints["features"]] == FEATURES
    assert not list(output.rglob("*.partial"))

    summaries = sm.list_processing_jobs(NameContains=name)["ProcessingJobSummaries"]
    assert [(s["ProcessingJobName"], s["ProcessingJobStatus"]) for s in summaries] == [(name, "Completed")]

    # its log: the algo-1 stream the SDK tails
    streams = logs.describe_log_streams(logGroupName="/aws/sagemaker/ProcessingJobs",
                                        logStreamNamePrefix=f"{name}/")["logStreams"]
    epoch = int(desc["CreationTime"].timestamp())
    assert [s["logStreamName"] for s in streams] == [f"{name}/algo-1-{epoch}"]
    events = logs.get_log_events(logGroupName="/aws/sagemaker/ProcessingJobs",
                                 logStreamName=streams[0]["logStreamName"], startFromHead=True)["events"]
    messages = "\n".join(e["message"] for e in events)
    assert "data quality: 4 feature(s) over 500 row(s)" in messages and "ended: Completed" in messages


def test_model_quality_baseline(server: MoorageServer, tmp_path: Path) -> None:
    sm = server.sm()
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 400)
    probability = np.clip(labels * 0.6 + rng.uniform(0, 0.4, 400), 0, 1)
    folder = tmp_path / "validation"
    folder.mkdir()
    (folder / "validation.csv").write_text("probability,prediction,label\n" + "\n".join(
        f"{p:.4f},{int(p >= 0.5)},{y}" for p, y in zip(probability, labels, strict=True)) + "\n")
    name = new_name("mq-baseline")
    output = tmp_path / "mq-results"
    sm.create_processing_job(**suggest_request(
        name, folder.as_uri(), output.as_uri(), analysis_type="MODEL_QUALITY", problem_type="BinaryClassification",
        inference_attribute="prediction", probability_attribute="probability", ground_truth_attribute="label"))
    desc = wait_job(sm, name)
    assert desc["ProcessingJobStatus"] == "Completed", desc.get("FailureReason")
    statistics = json.loads((output / "statistics.json").read_text())
    assert "binary_classification_metrics" in statistics
    assert json.loads((output / "constraints.json").read_text())["binary_classification_constraints"]


def test_other_images_and_unsupported_requests_are_refused(server: MoorageServer, dataset: Path,
                                                           tmp_path: Path) -> None:
    sm = server.sm()
    name = new_name("byo")
    with pytest.raises(ClientError) as refused:
        sm.create_processing_job(**suggest_request(
            name, dataset.as_uri(), tmp_path.as_uri(),
            image="123456789012.dkr.ecr.us-east-1.amazonaws.com/my-preprocessing:latest"))
    assert err_code(refused.value) == "ValidationException"
    assert "sagemaker-model-monitor-analyzer" in err_message(refused.value)
    with pytest.raises(ClientError):
        sm.describe_processing_job(ProcessingJobName=name)  # nothing was created

    # the analyzer's image from another region's registry, with a tag, is the analyzer
    request = suggest_request(new_name("tagged"), dataset.as_uri(), (tmp_path / "t").as_uri(),
                              image="709848358524.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-model-monitor-analyzer:1")
    sm.create_processing_job(**request)
    assert wait_job(sm, request["ProcessingJobName"])["ProcessingJobStatus"] == "Completed"

    for env, word in (({"record_preprocessor_script": "/opt/ml/processing/code/pre.py"}, "record_preprocessor"),
                      ({"dataset_source": "/somewhere/else"}, "dataset_source"),
                      ({"analysis_type": "MODEL_QUALITY"}, "problem_type"),
                      ({"dataset_format": json.dumps({"json": {"lines": False}})}, "JSON Lines")):
        with pytest.raises(ClientError) as bad:
            sm.create_processing_job(**suggest_request(new_name("bad"), dataset.as_uri(), tmp_path.as_uri(), **env))
        assert err_code(bad.value) == "ValidationException" and word in err_message(bad.value), err_message(bad.value)

    existing = new_name("twice")
    sm.create_processing_job(**suggest_request(existing, dataset.as_uri(), (tmp_path / "x").as_uri()))
    with pytest.raises(ClientError) as twice:
        sm.create_processing_job(**suggest_request(existing, dataset.as_uri(), (tmp_path / "x").as_uri()))
    assert err_code(twice.value) == "ResourceInUse"
    wait_job(sm, existing)
    with pytest.raises(ClientError) as missing:
        sm.describe_processing_job(ProcessingJobName="no-such-processing-job")
    assert err_code(missing.value) == "ResourceNotFound"


def test_a_bad_input_location_fails_the_job_with_a_reason(server: MoorageServer, tmp_path: Path) -> None:
    sm = server.sm()
    name = new_name("noinput")
    missing = (tmp_path / "nothing-here").as_uri()
    sm.create_processing_job(**suggest_request(name, missing, (tmp_path / "out").as_uri()))
    desc = wait_job(sm, name)
    assert desc["ProcessingJobStatus"] == "Failed"
    assert missing in desc["FailureReason"], desc["FailureReason"]
    assert not (tmp_path / "out").exists()
    assert server.healthz() == 200

    # a dataset that is not CSV at all fails by what is wrong with it
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "data.csv").write_bytes(b"a,b\n1,2,3,4\n\x00\x01")
    name = new_name("garbage")
    sm.create_processing_job(**suggest_request(name, (tmp_path / "garbage").as_uri(), (tmp_path / "out2").as_uri()))
    desc = wait_job(sm, name)
    assert desc["ProcessingJobStatus"] == "Failed" and "data.csv" in desc["FailureReason"], desc.get("FailureReason")


def test_stop_ends_a_running_job_stopped(server: MoorageServer, tmp_path: Path) -> None:
    sm = server.sm()
    folder = tmp_path / "blocked"
    folder.mkdir()
    os.mkfifo(folder / "train.csv")  # nobody writes it: the job's copy of its input waits until it is stopped
    name = new_name("stopme")
    sm.create_processing_job(**suggest_request(name, folder.as_uri(), (tmp_path / "out").as_uri()))
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "InProgress"
    sm.stop_processing_job(ProcessingJobName=name)
    desc = wait_job(sm, name)
    assert desc["ProcessingJobStatus"] == "Stopped", desc
    assert "ProcessingEndTime" in desc and not (tmp_path / "out").exists()
    sm.stop_processing_job(ProcessingJobName=name)  # stopping a stopped job is a no-op
    assert sm.describe_processing_job(ProcessingJobName=name)["ProcessingJobStatus"] == "Stopped"
    listed = sm.list_processing_jobs(NameContains=name, StatusEquals="Stopped")["ProcessingJobSummaries"]
    assert [s["ProcessingJobName"] for s in listed] == [name]


def test_jobs_survive_a_restart_and_one_cut_off_ends_failed(fresh_server: Any, dataset: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    srv = fresh_server(home=home)
    sm = srv.sm()
    done = new_name("kept")
    sm.create_processing_job(**suggest_request(done, dataset.as_uri(), (tmp_path / "kept").as_uri()))
    before = wait_job(sm, done)
    assert before["ProcessingJobStatus"] == "Completed"
    folder = tmp_path / "blocked"
    folder.mkdir()
    os.mkfifo(folder / "train.csv")
    cut = new_name("cut")
    sm.create_processing_job(**suggest_request(cut, folder.as_uri(), (tmp_path / "cut").as_uri()))
    srv.stop()

    srv = fresh_server(home=home)
    sm = srv.sm()
    after = sm.describe_processing_job(ProcessingJobName=done)
    assert {k: after[k] for k in ("ProcessingJobStatus", "ExitMessage", "ProcessingOutputConfig", "CreationTime")} \
        == {k: before[k] for k in ("ProcessingJobStatus", "ExitMessage", "ProcessingOutputConfig", "CreationTime")}
    failed = sm.describe_processing_job(ProcessingJobName=cut)
    assert failed["ProcessingJobStatus"] == "Failed" and "server stopped" in failed["FailureReason"]


# -- a monitoring execution's processing job ------------------------------------------------------------
@pytest.fixture(scope="module")
def monitored(server: MoorageServer, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        dict[str, Any]]:
    """An endpoint capturing its traffic, a baseline, and an on-demand schedule over them."""
    from e2e_support import train_classifier
    from moorage.monitor.data_quality.suggest import suggest_baseline

    root = tmp_path_factory.mktemp("processing-monitoring")
    sm = server.sm()
    deployer = Deployer(server, sm)
    model, _ = train_classifier()
    name = new_name("pj-mon")
    deployer.model(name, pack_model(root / "clf", model).resolve().as_uri())
    sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", name)],
                              DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                                                 "DestinationS3Uri": (root / "capture").as_uri(),
                                                 "CaptureOptions": [{"CaptureMode": "Input"}]})
    deployer.configs.append(name)
    deployer.endpoint(name, name)
    deployer.wait_in_service(name)
    suggest_baseline(next(dataset.iterdir()), root / "baseline")
    output = root / "monitoring"
    definition = {
        "MonitoringInputs": [{"EndpointInput": {"EndpointName": name, "LocalPath": "/opt/ml/processing/input"}}],
        "MonitoringOutputConfig": {"MonitoringOutputs": [{"S3Output": {
            "S3Uri": output.as_uri(), "LocalPath": "/opt/ml/processing/output"}}]},
        "MonitoringResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                                  "VolumeSizeInGB": 1}},
        "MonitoringAppSpecification": {"ImageUri": ANALYZER}, "RoleArn": ROLE_ARN,
        "BaselineConfig": {"ConstraintsResource": {"S3Uri": (root / "baseline" / "constraints.json").as_uri()},
                           "StatisticsResource": {"S3Uri": (root / "baseline" / "statistics.json").as_uri()}}}
    schedule = new_name("pj-sched")
    sm.create_monitoring_schedule(MonitoringScheduleName=schedule,
                                  MonitoringScheduleConfig={"MonitoringJobDefinition": definition})
    wait_until(lambda: sm.describe_monitoring_schedule(MonitoringScheduleName=schedule)[
        "MonitoringScheduleStatus"] == "Scheduled", 15, what="schedule Scheduled")
    try:
        yield {"endpoint": name, "schedule": schedule, "output": output, "capture": root / "capture"}
    finally:
        sm.delete_monitoring_schedule(MonitoringScheduleName=schedule)
        deployer.cleanup()


def test_a_monitoring_executions_processing_job_points_at_its_files(server: MoorageServer,
                                                                    monitored: dict[str, Any]) -> None:
    sm, rt = server.sm(), server.rt()
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    rows = np.random.default_rng(9).normal(size=(200, 4))
    for i in range(0, 200, 50):
        rt.invoke_endpoint(EndpointName=monitored["endpoint"], ContentType="text/csv",
                           Body="\n".join(",".join(f"{v:.5f}" for v in row) for row in rows[i:i + 50]).encode())
    wait_until(lambda: sum(len(p.read_bytes().splitlines()) for p in monitored["capture"].rglob("*.jsonl")) >= 4, 20,
               what="capture flushed")
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1)
    status, _, body = server.signed_request(
        "POST", f"/moorage/v1/monitoring-schedules/{monitored['schedule']}/executions",
        json.dumps({"StartTime": f"{start:%Y-%m-%dT%H:%M:%SZ}", "EndTime": f"{end:%Y-%m-%dT%H:%M:%SZ}"}).encode(),
        {"content-type": "application/json"})
    assert status == 202, body

    def finished() -> dict[str, Any] | None:
        [summary] = sm.list_monitoring_executions(MonitoringScheduleName=monitored["schedule"])[
            "MonitoringExecutionSummaries"]
        return summary if summary["MonitoringExecutionStatus"] not in ("Pending", "InProgress") else None

    summary = wait_until(finished, 90, interval=0.3, what="the execution")
    assert summary["MonitoringExecutionStatus"] in ("Completed", "CompletedWithViolations"), summary
    # what the SDK's MonitoringExecution.from_processing_arn does with the arn
    job_name = summary["ProcessingJobArn"].split(":")[5][len("processing-job/"):]
    desc = sm.describe_processing_job(ProcessingJobName=job_name)
    assert desc["ProcessingJobStatus"] == "Completed"
    assert desc["ExitMessage"].startswith(summary["MonitoringExecutionStatus"])
    assert desc["MonitoringScheduleArn"].endswith(f"monitoring-schedule/{monitored['schedule']}")
    uri = desc["ProcessingOutputConfig"]["Outputs"][0]["S3Output"]["S3Uri"]
    folder = Path(uri.removeprefix("file://"))
    assert folder.is_relative_to(monitored["output"] / monitored["endpoint"] / monitored["schedule"])
    statistics = Statistics.from_file_path(folder / "statistics.json").body_dict
    assert statistics["dataset"]["item_count"] == 200
    assert (folder / "constraint_violations.json").exists()
    assert {i["InputName"] for i in desc["ProcessingInputs"]} >= {"endpoint_input_1", "constraints", "baseline"}
    assert all(i["S3Input"]["LocalPath"] for i in desc["ProcessingInputs"])

    listed = sm.list_processing_jobs(NameContains=job_name)["ProcessingJobSummaries"]
    assert [(s["ProcessingJobName"], s["ProcessingJobStatus"]) for s in listed] == [(job_name, "Completed")]
    with pytest.raises(ClientError) as refused:
        sm.stop_processing_job(ProcessingJobName=job_name)
    assert "StopMonitoringSchedule" in err_message(refused.value)

    # the execution's log is its processing job's stream
    logs = server.client("logs")
    [stream] = logs.describe_log_streams(logGroupName="/aws/sagemaker/ProcessingJobs",
                                         logStreamNamePrefix=f"{job_name}/")["logStreams"]
    events = logs.get_log_events(logGroupName="/aws/sagemaker/ProcessingJobs", logStreamName=stream["logStreamName"],
                                 startFromHead=True)["events"]
    assert any("ended: " + summary["MonitoringExecutionStatus"] in e["message"] for e in events), events


def test_suggest_baseline_over_s3_uris_of_the_servers_object_store(server: MoorageServer, dataset: Path) -> None:
    """As the SDK runs it: the dataset uploaded under a prefix of the default bucket, the results read back
    through the S3 API."""
    sm, s3 = server.sm(), server.client("s3")
    bucket = new_name("pj-bucket")
    s3.create_bucket(Bucket=bucket)
    name = new_name("s3-baseline")
    prefix = f"model-monitor/baselining/{name}/input/baseline_dataset_input"
    s3.put_object(Bucket=bucket, Key=f"{prefix}/train.csv", Body=(dataset / "train.csv").read_bytes())
    output = f"s3://{bucket}/model-monitor/baselining/{name}/results"
    sm.create_processing_job(**suggest_request(name, f"s3://{bucket}/{prefix}", output))
    desc = wait_job(sm, name)
    assert desc["ProcessingJobStatus"] == "Completed", desc.get("FailureReason")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"model-monitor/baselining/{name}/results/")["Contents"]
    keys = sorted(o["Key"] for o in listed)
    assert keys == [f"model-monitor/baselining/{name}/results/{f}" for f in ("constraints.json", "statistics.json")]
    statistics = Statistics(json.loads(s3.get_object(Bucket=bucket, Key=keys[1])["Body"].read())).body_dict
    assert statistics["dataset"]["item_count"] == 500
    Constraints(json.loads(s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read()))

    missing = new_name("s3-missing")
    sm.create_processing_job(**suggest_request(missing, f"s3://{bucket}/no/such/prefix", f"s3://{bucket}/out"))
    failed = wait_job(sm, missing)
    assert failed["ProcessingJobStatus"] == "Failed" and f"s3://{bucket}/no/such/prefix" in failed["FailureReason"]
