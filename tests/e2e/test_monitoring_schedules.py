"""Monitoring schedules and executions end to end: boto3 against a real server, real capture, real files."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.parse
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
    new_name,
    pack_model,
    train_classifier,
    variant,
    wait_until,
)
from moorage.monitor.data_quality.suggest import suggest_baseline

pytestmark = pytest.mark.e2e

FORMATS = Path(__file__).parents[1] / "data" / "sagemaker"
FEATURES = ["a", "b", "c", "d"]
DRIFTED = {"b", "d"}
NAMESPACE = "aws/sagemaker/Endpoints/data-metrics"


def _resources() -> dict[str, Any]:
    return {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large", "VolumeSizeInGB": 1}}


def job_definition(endpoint: str, output: Path, baseline: Path | None, **endpoint_input: str) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "MonitoringInputs": [{"EndpointInput": {"EndpointName": endpoint, "LocalPath": "/opt/ml/processing/input",
                                                **endpoint_input}}],
        "MonitoringOutputConfig": {"MonitoringOutputs": [{"S3Output": {
            "S3Uri": output.as_uri(), "LocalPath": "/opt/ml/processing/output"}}]},
        "MonitoringResources": _resources(),
        "MonitoringAppSpecification": {"ImageUri": "moorage/model-monitor"},
        "RoleArn": ROLE_ARN,
    }
    if baseline is not None:
        definition["BaselineConfig"] = {
            "ConstraintsResource": {"S3Uri": (baseline / "constraints.json").as_uri()},
            "StatisticsResource": {"S3Uri": (baseline / "statistics.json").as_uri()}}
    return definition


class Setup:
    def __init__(self, server: MoorageServer, root: Path) -> None:
        self.server, self.root = server, root
        self.sm = server.sm()
        self.rt = server.rt()
        self.deployer = Deployer(server, self.sm)
        self.capture = root / "capture"
        self.output = root / "monitoring"
        self.baseline = root / "baseline"
        self.endpoint = ""
        self.schedules: list[str] = []

    def deploy(self) -> None:
        model, _ = train_classifier()
        tar = pack_model(self.root / "clf", model)
        name = new_name("mon")
        self.deployer.model(name, tar.resolve().as_uri())
        self.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", name)],
                                       DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                                                          "DestinationS3Uri": self.capture.as_uri(),
                                                          "CaptureOptions": [{"CaptureMode": "Input"},
                                                                             {"CaptureMode": "Output"}]})
        self.deployer.configs.append(name)
        self.endpoint = self.deployer.endpoint(name, name)
        self.deployer.wait_in_service(name)

    def make_baseline(self) -> None:
        data = np.random.default_rng(7).normal(size=(3000, 4))
        dataset = self.root / "train.csv"
        dataset.write_text(",".join(FEATURES) + "\n" + "\n".join(",".join(f"{v:.5f}" for v in row) for row in data))
        suggest_baseline(dataset, self.baseline)

    def schedule(self, suffix: str, expression: str | None = None, baseline: Path | None = None,
                 **endpoint_input: str) -> str:
        name = new_name(f"sched-{suffix}")
        config: dict[str, Any] = {"MonitoringJobDefinition": job_definition(
            self.endpoint, self.output, baseline or self.baseline, **endpoint_input)}
        if expression:
            config["ScheduleConfig"] = {"ScheduleExpression": expression}
        self.sm.create_monitoring_schedule(MonitoringScheduleName=name, MonitoringScheduleConfig=config)
        self.schedules.append(name)
        wait_until(lambda: self.sm.describe_monitoring_schedule(MonitoringScheduleName=name)[
            "MonitoringScheduleStatus"] == "Scheduled", 15, what=f"{name} Scheduled")
        return name

    def send(self, rows: np.ndarray, per_request: int = 50) -> None:
        for i in range(0, len(rows), per_request):
            body = "\n".join(",".join(f"{v:.5f}" for v in row) for row in rows[i:i + per_request])
            self.rt.invoke_endpoint(EndpointName=self.endpoint, ContentType="text/csv", Body=body.encode())

    def captured_records(self) -> int:
        return sum(len(p.read_bytes().splitlines()) for p in self.capture.rglob("*.jsonl"))

    def run(self, schedule: str, start: dt.datetime | str | None = None, end: dt.datetime | str | None = None,
            timeout: float = 90) -> dict[str, Any]:
        options = {k: (v.strftime("%Y-%m-%dT%H:%M:%SZ") if isinstance(v, dt.datetime) else v)
                   for k, v in (("StartTime", start), ("EndTime", end)) if v is not None}
        status, _, body = self.server.signed_request(
            "POST", f"/moorage/v1/monitoring-schedules/{schedule}/executions", json.dumps(options).encode(),
            {"content-type": "application/json"})
        assert status == 202, body
        name = json.loads(body)["ExecutionName"]
        return wait_until(lambda: self._finished(name), timeout, interval=0.3, what=f"execution {name}")

    def _finished(self, name: str) -> dict[str, Any] | None:
        status, _, body = self.server.signed_request("GET", f"/moorage/v1/monitoring-executions/{name}")
        assert status == 200, body
        doc = json.loads(body)
        return doc if doc["MonitoringExecutionStatus"] not in ("Pending", "InProgress") else None

    def cleanup(self) -> None:
        for name in self.schedules:
            try:
                self.sm.delete_monitoring_schedule(MonitoringScheduleName=name)
            except ClientError:
                pass
        self.deployer.cleanup()


@pytest.fixture(scope="module")
def setup(server: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    s = Setup(server, tmp_path_factory.mktemp("monitoring"))
    try:
        s.make_baseline()
        s.deploy()
        yield s
    finally:
        s.cleanup()


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _next_second() -> dt.datetime:
    """The start of the next whole second, once it has come (inferenceTime has one-second resolution)."""
    boundary = _utc_now().replace(microsecond=0) + dt.timedelta(seconds=1)
    time.sleep(max(0.0, (boundary - _utc_now()).total_seconds()) + 0.05)
    return boundary


# -- executions over captured traffic ---------------------------------------------------------------------
def test_drift_in_two_features_is_found_and_only_there(setup: Setup) -> None:
    schedule = setup.schedule("drift")
    rng = np.random.default_rng(11)
    before = setup.captured_records()
    t0 = _next_second()
    setup.send(rng.normal(size=(1000, 4)))
    t1 = _next_second()
    drifted = rng.normal(size=(1000, 4))
    drifted[:, 1] += 1.5
    drifted[:, 3] = drifted[:, 3] * 3.0
    setup.send(drifted)
    t2 = _next_second()
    wait_until(lambda: setup.captured_records() >= before + 40, 20, what="capture files flushed")

    clean = setup.run(schedule, t0, t1)
    assert clean["MonitoringExecutionStatus"] == "Completed", clean
    assert clean["Violations"] == 0 and clean["Capture"]["Rows"] == 1000
    out = Path(urllib.parse.urlparse(clean["OutputLocation"]).path)
    hour = dt.datetime.fromisoformat(clean["ScheduledTime"].replace("Z", "+00:00"))
    assert out == setup.output / setup.endpoint / schedule / f"{hour:%Y/%m/%d/%H}"
    statistics = json.loads((out / "statistics.json").read_text())
    assert statistics["dataset"]["item_count"] == 1000
    assert [f["name"] for f in statistics["features"]] == FEATURES
    assert json.loads((out / "constraint_violations.json").read_text()) == {"violations": []}

    found = setup.run(schedule, t1, t2)
    assert found["MonitoringExecutionStatus"] == "CompletedWithViolations", found
    violations = json.loads((out / "constraint_violations.json").read_text())["violations"]
    assert {v["feature_name"] for v in violations} == DRIFTED
    assert {v["constraint_check_type"] for v in violations} == {"baseline_drift_check"}
    assert set(found["ViolatedFeatures"]) == DRIFTED

    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    for feature in DRIFTED:
        assert f'alt="{feature}: baseline vs current"' in page

    status, _, body = setup.server.signed_request(
        "GET", f"/moorage/v1/monitoring-executions/{found['ExecutionName']}/report")
    assert status == 200 and body.decode() == page

    # boto3 sees both executions, newest first, and the last one on the schedule
    listed = setup.sm.list_monitoring_executions(MonitoringScheduleName=schedule)["MonitoringExecutionSummaries"]
    assert [e["MonitoringExecutionStatus"] for e in listed] == ["CompletedWithViolations", "Completed"]
    assert all(e["ProcessingJobArn"].endswith(("/" + found["ExecutionName"], "/" + clean["ExecutionName"]))
               for e in listed)
    described = setup.sm.describe_monitoring_schedule(MonitoringScheduleName=schedule)
    assert described["LastMonitoringExecutionSummary"]["MonitoringExecutionStatus"] == "CompletedWithViolations"

    # metrics an alarm can watch: drift of each feature, completeness, violation counts
    def metric(name: str) -> list[dict[str, Any]]:
        query = urllib.parse.urlencode([("Namespace", NAMESPACE), ("MetricName", name), ("Statistic", "Maximum"),
                                        ("Period", "60"), ("Dimension", f"Endpoint={setup.endpoint}"),
                                        ("Dimension", f"MonitoringSchedule={schedule}")])
        status, _, body = setup.server.signed_request("GET", f"/moorage/v1/metrics?{query}")
        assert status == 200, body
        return json.loads(body)["Datapoints"]

    drift_b = wait_until(lambda: metric("feature_baseline_drift_b"), 10, what="drift metric")
    assert max(p["Value"] for p in drift_b) > 0.1
    assert max(p["Value"] for p in metric("constraint_violations")) == 2
    assert max(p["Value"] for p in metric("feature_non_null_a")) == 1.0


def test_sagemaker_baseline_files_drive_an_execution(setup: Setup, tmp_path: Path) -> None:
    """SageMaker's own statistics/constraints (6 Fractional features _c0.._c5) as the baseline."""
    baseline = tmp_path / "sagemaker-baseline"
    baseline.mkdir()
    statistics = json.loads((FORMATS / "data_quality" / "sdk-tests_statistics-numeric-kll.json").read_text())
    (baseline / "statistics.json").write_text(json.dumps(statistics))
    (baseline / "constraints.json").write_bytes(
        (FORMATS / "data_quality" / "sdk-tests_constraints-numeric.json").read_bytes())
    schedule = setup.schedule("smbase", baseline=baseline)
    # traffic drawn from the baseline's own sketches, written where the endpoint captures, two hours ago
    rng = np.random.default_rng(3)
    columns = []
    for feature in statistics["features"]:
        levels = feature["numerical_statistics"]["distribution"]["kll"]["sketch"]["data"]
        values = np.array([v for level in levels for v in level])
        weights = np.array([2.0 ** i for i, level in enumerate(levels) for _ in level])
        columns.append(rng.choice(values, size=600, p=weights / weights.sum()))
    hour = (_utc_now() - dt.timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)
    folder = setup.capture / setup.endpoint / "AllTraffic" / f"{hour:%Y/%m/%d/%H}"
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i, row in enumerate(np.column_stack(columns)):
        lines.append(json.dumps({"captureData": {"endpointInput": {
            "observedContentType": "text/csv", "mode": "INPUT", "data": ",".join(f"{v:.6g}" for v in row),
            "encoding": "CSV"}}, "eventMetadata": {"eventId": f"id-{i}",
            "inferenceTime": (hour + dt.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%SZ")},
            "eventVersion": "0"}, separators=(",", ":")))
    (folder / "00-00-000-sagemaker-shaped.jsonl").write_text("\n".join(lines) + "\n")

    result = setup.run(schedule, hour, hour + dt.timedelta(hours=1))
    assert result["MonitoringExecutionStatus"] == "Completed", result
    out = Path(urllib.parse.urlparse(result["OutputLocation"]).path)
    current = json.loads((out / "statistics.json").read_text())
    assert [f["name"] for f in current["features"]] == [f"_c{i}" for i in range(6)]
    assert {f["inferred_type"] for f in current["features"]} <= {"Integral", "Fractional"}

    # the same traffic, one column shifted far: SageMaker's baseline catches exactly that one
    shifted = [line.replace('"data":"', '"data":"1000', 1) for line in lines]
    (folder / "00-00-000-sagemaker-shaped.jsonl").write_text("\n".join(shifted) + "\n")
    result = setup.run(schedule, hour, hour + dt.timedelta(hours=1))
    assert result["MonitoringExecutionStatus"] == "CompletedWithViolations", result
    assert result["ViolatedFeatures"] == ["_c0"]


def test_window_without_data_fails_with_a_reason(setup: Setup) -> None:
    schedule = setup.schedule("empty")
    long_ago = dt.datetime(2021, 3, 4, 5, tzinfo=dt.UTC)
    result = setup.run(schedule, long_ago, long_ago + dt.timedelta(hours=1))
    assert result["MonitoringExecutionStatus"] == "Failed"
    assert result["FailureReason"].startswith("Job inputs had no data")
    assert "2021-03-04T05:00:00Z" in result["FailureReason"]
    summary = setup.sm.list_monitoring_executions(MonitoringScheduleName=schedule)["MonitoringExecutionSummaries"][0]
    assert summary["MonitoringExecutionStatus"] == "Failed"
    assert summary["FailureReason"] == result["FailureReason"]


def test_unreadable_baseline_fails_the_execution(setup: Setup, tmp_path: Path) -> None:
    schedule = setup.schedule("nobase", baseline=tmp_path / "missing")
    result = setup.run(schedule, "-PT1H", "-PT0S")
    assert result["MonitoringExecutionStatus"] == "Failed"
    assert "baseline statistics" in result["FailureReason"] and "missing" in result["FailureReason"]


def test_rate_schedule_fires_until_stopped(setup: Setup) -> None:
    before = setup.captured_records()
    setup.send(np.random.default_rng(5).normal(size=(100, 4)))
    wait_until(lambda: setup.captured_records() >= before + 2, 20, what="capture flushed")
    schedule = setup.schedule("rate", expression="rate(2 seconds)", StartTimeOffset="-PT1M", EndTimeOffset="-PT0S")

    def executions() -> list[dict[str, Any]]:
        return setup.sm.list_monitoring_executions(MonitoringScheduleName=schedule,
                                                   SortOrder="Ascending")["MonitoringExecutionSummaries"]

    fired = wait_until(lambda: (e := executions()) and len(e) >= 2 and e, 30, what="two fires")
    times = [e["ScheduledTime"].timestamp() for e in fired]
    assert all(t % 2 == 0 for t in times) and times == sorted(times)
    setup.sm.stop_monitoring_schedule(MonitoringScheduleName=schedule)
    assert setup.sm.describe_monitoring_schedule(MonitoringScheduleName=schedule)[
        "MonitoringScheduleStatus"] == "Stopped"
    done = wait_until(lambda: all(e["MonitoringExecutionStatus"] not in ("Pending", "InProgress")
                                  for e in executions()) and executions(), 60, what="executions finish")
    assert {e["MonitoringExecutionStatus"] for e in done} <= {"Completed", "CompletedWithViolations"}
    time.sleep(2.5)
    assert len(executions()) == len(done)  # no fires while stopped
    setup.sm.start_monitoring_schedule(MonitoringScheduleName=schedule)
    wait_until(lambda: len(executions()) > len(done), 20, what="fires again after start")
    setup.sm.stop_monitoring_schedule(MonitoringScheduleName=schedule)


# -- the API: lifecycle and errors ---------------------------------------------------------------------------
def test_lifecycle_with_a_data_quality_job_definition(setup: Setup) -> None:
    sm = setup.sm
    definition = new_name("dq")
    sm.create_data_quality_job_definition(
        JobDefinitionName=definition,
        DataQualityBaselineConfig={
            "ConstraintsResource": {"S3Uri": (setup.baseline / "constraints.json").as_uri()},
            "StatisticsResource": {"S3Uri": (setup.baseline / "statistics.json").as_uri()}},
        DataQualityAppSpecification={"ImageUri": "moorage/model-monitor"},
        DataQualityJobInput={"EndpointInput": {"EndpointName": setup.endpoint, "LocalPath": "/opt/ml/processing/in"}},
        DataQualityJobOutputConfig={"MonitoringOutputs": [{"S3Output": {
            "S3Uri": setup.output.as_uri(), "LocalPath": "/opt/ml/processing/out"}}]},
        JobResources=_resources(), RoleArn=ROLE_ARN)
    described = sm.describe_data_quality_job_definition(JobDefinitionName=definition)
    assert described["DataQualityJobInput"]["EndpointInput"]["EndpointName"] == setup.endpoint
    listed = sm.list_data_quality_job_definitions(EndpointName=setup.endpoint)["JobDefinitionSummaries"]
    assert definition in [d["MonitoringJobDefinitionName"] for d in listed]

    name = new_name("sched-dq")
    arn = sm.create_monitoring_schedule(MonitoringScheduleName=name, MonitoringScheduleConfig={
        "ScheduleConfig": {"ScheduleExpression": "cron(0 * ? * * *)"},
        "MonitoringJobDefinitionName": definition, "MonitoringType": "DataQuality"})["MonitoringScheduleArn"]
    setup.schedules.append(name)
    assert arn.endswith(f":monitoring-schedule/{name.lower()}")
    desc = wait_until(lambda: (d := sm.describe_monitoring_schedule(MonitoringScheduleName=name))[
        "MonitoringScheduleStatus"] == "Scheduled" and d, 15, what="Scheduled")
    assert desc["MonitoringType"] == "DataQuality" and desc["EndpointName"] == setup.endpoint
    assert desc["MonitoringScheduleConfig"]["MonitoringJobDefinitionName"] == definition
    assert "LastMonitoringExecutionSummary" not in desc

    summaries = sm.list_monitoring_schedules(EndpointName=setup.endpoint)["MonitoringScheduleSummaries"]
    mine = next(s for s in summaries if s["MonitoringScheduleName"] == name)
    assert mine["MonitoringJobDefinitionName"] == definition and mine["MonitoringScheduleStatus"] == "Scheduled"
    assert name in [s["MonitoringScheduleName"] for s in sm.list_monitoring_schedules(
        MonitoringJobDefinitionName=definition)["MonitoringScheduleSummaries"]]

    with pytest.raises(ClientError) as used:
        sm.delete_data_quality_job_definition(JobDefinitionName=definition)
    assert err_code(used.value) == "ResourceInUse"

    sm.stop_monitoring_schedule(MonitoringScheduleName=name)
    assert sm.list_monitoring_schedules(StatusEquals="Stopped", NameContains=name)[
        "MonitoringScheduleSummaries"][0]["MonitoringScheduleName"] == name
    sm.start_monitoring_schedule(MonitoringScheduleName=name)
    wait_until(lambda: sm.describe_monitoring_schedule(MonitoringScheduleName=name)[
        "MonitoringScheduleStatus"] == "Scheduled", 15, what="Scheduled again")

    sm.update_monitoring_schedule(MonitoringScheduleName=name, MonitoringScheduleConfig={
        "ScheduleConfig": {"ScheduleExpression": "cron(0 0 ? * * *)"},
        "MonitoringJobDefinition": job_definition(setup.endpoint, setup.output, setup.baseline)})
    desc = wait_until(lambda: (d := sm.describe_monitoring_schedule(MonitoringScheduleName=name))[
        "MonitoringScheduleStatus"] == "Scheduled" and d, 15, what="Scheduled after update")
    assert desc["MonitoringScheduleConfig"]["ScheduleConfig"]["ScheduleExpression"] == "cron(0 0 ? * * *)"
    assert "MonitoringJobDefinitionName" not in desc["MonitoringScheduleConfig"]

    sm.delete_monitoring_schedule(MonitoringScheduleName=name)
    sm.delete_data_quality_job_definition(JobDefinitionName=definition)
    with pytest.raises(ClientError) as gone:
        sm.describe_monitoring_schedule(MonitoringScheduleName=name)
    assert err_code(gone.value) == "ResourceNotFound"
    with pytest.raises(ClientError) as gone:
        sm.describe_data_quality_job_definition(JobDefinitionName=definition)
    assert err_code(gone.value) == "ResourceNotFound"


def test_errors(setup: Setup) -> None:
    sm = setup.sm
    config = {"ScheduleConfig": {"ScheduleExpression": "cron(0 * ? * * *)"},
              "MonitoringJobDefinition": job_definition(setup.endpoint, setup.output, setup.baseline)}
    name = new_name("sched-err")
    sm.create_monitoring_schedule(MonitoringScheduleName=name, MonitoringScheduleConfig=config)
    setup.schedules.append(name)
    with pytest.raises(ClientError) as duplicate:
        sm.create_monitoring_schedule(MonitoringScheduleName=name, MonitoringScheduleConfig=config)
    assert err_code(duplicate.value) == "ResourceInUse"

    bad_cron = {**config, "ScheduleConfig": {"ScheduleExpression": "cron(0 * * * *)"}}
    no_endpoint = {**config, "MonitoringJobDefinition": job_definition("nope-" + name, setup.output, setup.baseline)}
    both = {**config, "MonitoringJobDefinitionName": "x", "MonitoringType": "DataQuality"}
    inline_bias = {**config, "MonitoringType": "ModelBias"}
    for bad, words in ((bad_cron, "6 fields"), (no_endpoint, "Could not find endpoint"), (both, "exactly one"),
                       (inline_bias, "data-quality job")):
        with pytest.raises(ClientError) as refused:
            sm.create_monitoring_schedule(MonitoringScheduleName=new_name("bad"), MonitoringScheduleConfig=bad)
        assert err_code(refused.value) == "ValidationException" and words in str(refused.value)

    for call in (sm.describe_monitoring_schedule, sm.delete_monitoring_schedule, sm.start_monitoring_schedule,
                 sm.stop_monitoring_schedule):
        with pytest.raises(ClientError) as missing:
            call(MonitoringScheduleName="no-such-schedule")
        assert err_code(missing.value) == "ResourceNotFound"
    assert sm.list_monitoring_executions(MonitoringScheduleName="no-such-schedule")[
        "MonitoringExecutionSummaries"] == []
    status, _, body = setup.server.signed_request("POST", "/moorage/v1/monitoring-schedules/no-such/executions")
    assert status == 404 and b"ResourceNotFound" in body


def test_schedules_survive_a_restart(fresh_server: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = fresh_server(home=home, env={"MOORAGE_MONITOR_TICK_SECONDS": "0.2"})
    s = Setup(server, tmp_path)
    s.make_baseline()
    s.deploy()
    schedule = s.schedule("restart", expression="rate(1 hour)")
    stopped = s.schedule("stopped", expression="rate(1 hour)")
    s.sm.stop_monitoring_schedule(MonitoringScheduleName=stopped)
    server.stop()
    server.start(timeout=90)
    sm = server.sm()
    assert sm.describe_monitoring_schedule(MonitoringScheduleName=schedule)["MonitoringScheduleStatus"] == "Scheduled"
    assert sm.describe_monitoring_schedule(MonitoringScheduleName=stopped)["MonitoringScheduleStatus"] == "Stopped"
    s.sm = sm
    result = s.run(schedule, "-PT1H", "-PT0S")
    assert result["MonitoringExecutionStatus"] == "Failed" and "no data" in result["FailureReason"]


def test_cli_run_and_report(setup: Setup, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from moorage.cli.main import cli

    schedule = setup.schedule("cli")
    runner = CliRunner()
    home = ["--home", str(setup.server.home), "--url", setup.server.url]
    ran = runner.invoke(cli, ["monitor", "run", schedule, "--start", "2021-03-04T05:00:00Z",
                              "--end", "2021-03-04T06:00:00Z", "--timeout", "90", *home])
    assert ran.exit_code == 1 and "Failed" in ran.output and "Job inputs had no data" in ran.output
    no_report = runner.invoke(cli, ["monitor", "report", schedule, *home])  # a schedule: its latest execution
    assert no_report.exit_code == 1 and "has no report" in no_report.output

    before = setup.captured_records()
    setup.send(np.random.default_rng(9).normal(size=(200, 4)))
    wait_until(lambda: setup.captured_records() >= before + 4, 20, what="capture flushed")
    ran = runner.invoke(cli, ["monitor", "run", schedule, "--start", "-PT10M", "--end", "-PT0S", *home])
    assert ran.exit_code == 0, ran.output
    assert "Completed" in ran.output and "report.html" in ran.output
    execution = ran.output.split()[1].rstrip(":")
    shown = runner.invoke(cli, ["monitor", "report", execution, *home])
    assert shown.exit_code == 0 and shown.output.strip().endswith("report.html")
    assert Path(shown.output.strip()).read_text().startswith("<!doctype html>")
    saved = runner.invoke(cli, ["monitor", "report", execution, "--output", str(tmp_path / "r.html"), *home])
    assert saved.exit_code == 0 and (tmp_path / "r.html").read_text() == Path(shown.output.strip()).read_text()
