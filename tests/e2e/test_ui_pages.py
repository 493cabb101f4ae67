"""The dashboard's rollouts, experiments, monitoring and batch pages in a real headless chromium against a
real ``moorage serve``: a canary UpdateEndpoint's traffic steps on the rollout page (and the page's own
update and roll-back buttons), a viewer who cannot press them, a drift report that marks the drifted
features, a bandit experiment's bands and verdict, a transform job's progress. Screenshots go to
test-artifacts/ui/.
"""
# ruff: noqa: F811 - the fixtures imported from ui_support are parameters of the tests by the same names

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from batch_support import job_request
from e2e_support import (
    ROLE_ARN,
    Deployer,
    MoorageServer,
    new_name,
    pack_model,
    train_classifier,
    variant,
    wait_until,
)
from moorage.monitor.data_quality.suggest import suggest_baseline
from ui_support import browser, http_session, login, screenshot, ui_page  # noqa: F401 - fixtures

pytestmark = pytest.mark.e2e

ENV = {"MOORAGE_METRICS_PERIOD": "1", "MOORAGE_EXPERIMENTS_UPDATE_INTERVAL": "0.2s"}
VARIANT_MODEL = '''
import json, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "variant.txt")) as fh:
        return fh.read().strip()


def transform_fn(name, body, content_type, accept):
    return json.dumps({"variant": name}), "application/json"
'''
FEATURES = ["a", "b", "c", "d"]
DRIFTED = {"b", "d"}


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    server = MoorageServer(tmp_path_factory.mktemp("ui-pages-home"), env=ENV)
    server.start(timeout=90)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model, _ = train_classifier()
    return pack_model(tmp_path_factory.mktemp("ui-pages-model"), model)


@pytest.fixture(scope="module")
def rollout(srv: MoorageServer, classifier: Path) -> Iterator[tuple[str, str, str]]:
    """An endpoint on blue (one instance), and green (two instances) to update it to; (endpoint, blue, green)."""
    dep = Deployer(srv)
    try:
        model = dep.model(new_name("ui-roll"), classifier.as_uri())
        blue = dep.config(new_name("blue"), [variant("AllTraffic", model)])
        green = dep.config(new_name("green"), [variant("AllTraffic", model, count=2)])
        endpoint = dep.endpoint(new_name("ui-roll"), blue)
        dep.wait_in_service(endpoint)
        yield endpoint, blue, green
    finally:
        dep.cleanup()


@pytest.fixture(scope="module")
def canaried(srv: MoorageServer, rollout: tuple[str, str, str]) -> tuple[str, str, str]:
    """The endpoint once a canary update to green has ended (started by the first test that asks)."""
    endpoint, _, green = rollout
    sm = srv.sm()
    if sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] != green:
        start_canary(srv, endpoint, green)
    wait_until(lambda: sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService", 120,
               what="the canary update to end")
    return rollout


def start_canary(srv: MoorageServer, endpoint: str, green: str) -> None:
    """UpdateEndpoint through boto3: a canary of one instance of two, baking 6 seconds."""
    srv.sm().update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig={
        "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
            "Type": "CANARY", "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1}, "WaitIntervalInSeconds": 6},
            "TerminationWaitInSeconds": 0, "MaximumExecutionTimeoutInSeconds": 600}})


def make_key(server: MoorageServer, role: str) -> tuple[str, str]:
    status, _, reply = server.signed_request("POST", "/moorage/v1/access-keys", json.dumps({"Role": role}).encode())
    assert status == 200, reply
    doc = json.loads(reply)
    return doc["AccessKeyId"], doc["SecretAccessKey"]


def steps_shown(page: Any) -> list[tuple[str, str]]:
    return [(row.get_attribute("data-phase"), row.get_attribute("data-share"))
            for row in page.query_selector_all("#steps tr.step")]


def reload_until(page: Any, predicate: Any, timeout: float, what: str) -> Any:
    """Reload the page until ``predicate(page)`` holds (the pages are rendered on the server)."""
    def check() -> Any:
        page.reload()
        return predicate(page)

    try:
        return wait_until(check, timeout, interval=0.5, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page said: {page.inner_text('main')[:3000]}") from None


def test_a_canary_rollouts_traffic_steps_show(srv: MoorageServer, rollout: tuple[str, str, str],
                                              ui_page: Any) -> None:
    endpoint, _, green = rollout
    page = ui_page
    login(page, srv, srv.access_key_id, srv.secret_access_key)
    page.goto(f"{srv.url}/ui/rollouts/{endpoint}")
    assert "no update has run" in page.inner_text("#update-outcome")
    start_canary(srv, endpoint, green)
    # While the canary bakes: Updating, half the traffic on the new fleet, the step in the table.
    reload_until(page, lambda p: ("Baking", "50") in steps_shown(p) and "Updating" in p.inner_text(
        "#endpoint-status"), 120, "the canary's baking step on the page")
    assert page.inner_text("#update-target") == green
    assert page.query_selector("#pending") is not None  # PendingDeploymentSummary while it runs
    screenshot(page, "rollout-canary-baking")
    reload_until(page, lambda p: p.inner_text("#update-outcome") == "completed", 120, "the update to complete")
    assert steps_shown(page) == [("Creating", "0"), ("ActivatingTraffic", "0"), ("Baking", "50"),
                                 ("ActivatingTraffic", "50"), ("Baking", "100"), ("Completed", "100")]
    assert srv.sm().describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == green
    # The chart of the share over time got its points from the page's JSON.
    wait_until(lambda: int(page.get_attribute("#traffic-chart .chart-plot", "data-points") or 0) > 0, 30,
               what="the traffic chart drawn")
    traffic = page.request.get(f"{srv.url}/ui/rollouts/{endpoint}/traffic.json").json()
    assert max(traffic["series"][0]["values"]) == 100 and 50 in traffic["series"][0]["values"]
    screenshot(page, "rollout")
    page.goto(f"{srv.url}/ui/rollouts")
    assert endpoint in page.inner_text("#rollouts")
    screenshot(page, "rollouts")


def test_the_rollout_pages_buttons_update_and_roll_back(srv: MoorageServer, canaried: tuple[str, str, str],
                                                        ui_page: Any) -> None:
    endpoint, blue, green = canaried
    sm = srv.sm()
    wait_until(lambda: sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService", 120,
               what="the canary update to end")
    page = ui_page
    login(page, srv, srv.access_key_id, srv.secret_access_key)
    page.goto(f"{srv.url}/ui/rollouts/{endpoint}")
    # The canary update came through boto3; the update itself noted the config it left: roll back targets it.
    assert not page.is_disabled("#roll-back") and blue in page.inner_text("#rollback-form")
    # A step larger than the new fleet's capacity allows is refused, saying why, and changes nothing.
    page.select_option("#update-form select[name=config]", blue)
    page.select_option("#update-form select[name=policy]", "LINEAR")
    page.fill("#update-form input[name=size]", "50")
    with page.expect_navigation():
        page.click("#start-update")
    assert "LinearStepSize" in page.inner_text("#form-error")
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == green
    # An update back to blue from the form (admin: allowed), all at once after a second's wait, watched by
    # two rollback alarms (on a metric with no data: they stay out of ALARM).
    alarms = [new_name("ui-alarm") for _ in range(2)]
    cloudwatch = srv.client("cloudwatch")
    for alarm in alarms:
        cloudwatch.put_metric_alarm(AlarmName=alarm, Namespace="ui/Test", MetricName=f"{alarm}-errors",
                                    Statistic="Sum", Period=60, EvaluationPeriods=1, Threshold=1.0,
                                    ComparisonOperator="GreaterThanOrEqualToThreshold")
    page.reload()
    page.select_option("#update-form select[name=config]", blue)
    page.select_option("#update-form select[name=policy]", "ALL_AT_ONCE")
    page.fill("#update-form input[name=wait]", "1")
    for alarm in alarms:
        page.check(f"#update-form input[name=alarm][value='{alarm}']")
    with page.expect_navigation():
        page.click("#start-update")
    reload_until(page, lambda p: p.inner_text("#update-outcome") == "completed"
                 and p.inner_text("#update-target") == blue, 120, "the dashboard's update to complete")
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == blue
    routing = sm.describe_endpoint(EndpointName=endpoint)["LastDeploymentConfig"]["BlueGreenUpdatePolicy"][
        "TrafficRoutingConfiguration"]
    assert routing == {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1}
    assert sm.describe_endpoint(EndpointName=endpoint)["LastDeploymentConfig"]["AutoRollbackConfiguration"] == {
        "Alarms": [{"AlarmName": a} for a in alarms]}
    watched = {row.inner_text().split("\t")[0]: row.inner_text().split("\t")[1].strip()
               for row in page.query_selector_all("#baking-alarms tbody tr")}
    assert watched == dict.fromkeys(alarms, "INSUFFICIENT_DATA"), watched
    # Roll back: an update back to the config the dashboard's update left.
    assert not page.is_disabled("#roll-back") and green in page.inner_text("#rollback-form")
    with page.expect_navigation():
        page.click("#roll-back")
    reload_until(page, lambda p: p.inner_text("#update-outcome") == "completed"
                 and p.inner_text("#update-target") == green, 120, "the roll back to complete")
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == green
    # A bad form changes nothing and says why.
    page.select_option("#update-form select[name=policy]", "CANARY")
    page.fill("#update-form input[name=size]", "")
    page.eval_on_selector("#update-form input[name=size]", "e => e.removeAttribute('min')")
    with page.expect_navigation():
        page.click("#start-update")
    assert "size is required" in page.inner_text("#form-error")
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"


def test_a_viewer_cannot_press_the_rollout_buttons(srv: MoorageServer, canaried: tuple[str, str, str],
                                                   ui_page: Any) -> None:
    endpoint, blue, _ = canaried
    viewer = make_key(srv, "viewer")
    page = ui_page
    login(page, srv, *viewer)
    page.goto(f"{srv.url}/ui/rollouts/{endpoint}")
    for button in ("#start-update", "#roll-back"):
        assert page.is_disabled(button), button
    assert "viewer" in (page.get_attribute("#start-update", "title") or "")
    assert page.is_disabled("#update-form select[name=config]")
    screenshot(page, "rollout-viewer")
    # The form's POST forced with the viewer's session and a valid CSRF token is refused all the same.
    before = srv.sm().describe_endpoint(EndpointName=endpoint)
    session, csrf = http_session(srv, *viewer)
    for action, data in (("update", {"config": blue, "policy": "ALL_AT_ONCE"}), ("rollback", {})):
        reply = session.post(f"{srv.url}/ui/rollouts/{endpoint}/{action}", data={"csrf_token": csrf, **data},
                             allow_redirects=False, timeout=10)
        assert reply.status_code == 403, (action, reply.status_code, reply.text[:500])
    after = srv.sm().describe_endpoint(EndpointName=endpoint)
    assert (after["EndpointStatus"], after["EndpointConfigName"]) == (before["EndpointStatus"],
                                                                      before["EndpointConfigName"])


# -- monitoring ---------------------------------------------------------------------------------------
def _send(rt: Any, endpoint: str, rows: np.ndarray, per_request: int = 50) -> None:
    for i in range(0, len(rows), per_request):
        body = "\n".join(",".join(f"{v:.5f}" for v in row) for row in rows[i:i + per_request])
        rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=body.encode())


def _next_second() -> dt.datetime:
    """The start of the next whole second, once it has come (captured inferenceTime has one-second resolution)."""
    boundary = dt.datetime.now(dt.UTC).replace(microsecond=0) + dt.timedelta(seconds=1)
    wait_until(lambda: dt.datetime.now(dt.UTC) >= boundary, 5, interval=0.02, what="the next second")
    return boundary


def test_a_drift_report_highlights_the_drifted_features(srv: MoorageServer, classifier: Path, tmp_path: Path,
                                                         ui_page: Any) -> None:
    sm, rt, dep = srv.sm(), srv.rt(), Deployer(srv)
    capture, output, baseline = tmp_path / "capture", tmp_path / "monitoring", tmp_path / "baseline"
    data = np.random.default_rng(7).normal(size=(3000, 4))
    (tmp_path / "train.csv").write_text(",".join(FEATURES) + "\n" + "\n".join(",".join(f"{v:.5f}" for v in r)
                                                                               for r in data))
    suggest_baseline(tmp_path / "train.csv", baseline)
    schedule = new_name("ui-drift")
    try:
        name = new_name("ui-mon")
        dep.model(name, classifier.as_uri())
        sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant("AllTraffic", name)],
                                  DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                                                     "DestinationS3Uri": capture.as_uri(),
                                                     "CaptureOptions": [{"CaptureMode": "Input"},
                                                                        {"CaptureMode": "Output"}]})
        dep.configs.append(name)
        endpoint = dep.endpoint(name, name)
        dep.wait_in_service(endpoint)
        sm.create_monitoring_schedule(MonitoringScheduleName=schedule, MonitoringScheduleConfig={
            "MonitoringJobDefinition": {
                "MonitoringInputs": [{"EndpointInput": {"EndpointName": endpoint,
                                                        "LocalPath": "/opt/ml/processing/input"}}],
                "MonitoringOutputConfig": {"MonitoringOutputs": [{"S3Output": {
                    "S3Uri": output.as_uri(), "LocalPath": "/opt/ml/processing/output"}}]},
                "MonitoringResources": {"ClusterConfig": {"InstanceCount": 1, "InstanceType": "ml.m5.large",
                                                          "VolumeSizeInGB": 1}},
                "MonitoringAppSpecification": {"ImageUri": "moorage/model-monitor"}, "RoleArn": ROLE_ARN,
                "BaselineConfig": {"ConstraintsResource": {"S3Uri": (baseline / "constraints.json").as_uri()},
                                   "StatisticsResource": {"S3Uri": (baseline / "statistics.json").as_uri()}}}})
        drifted = np.random.default_rng(11).normal(size=(1000, 4))
        drifted[:, 1] += 1.5
        drifted[:, 3] *= 3.0
        start = _next_second()
        _send(rt, endpoint, drifted)
        end = _next_second()
        wait_until(lambda: sum(len(p.read_bytes().splitlines()) for p in capture.rglob("*.jsonl")) >= 20, 30,
                   what="the capture files flushed")
        status, _, body = srv.signed_request(
            "POST", f"/moorage/v1/monitoring-schedules/{schedule}/executions",
            json.dumps({"StartTime": f"{start:%Y-%m-%dT%H:%M:%SZ}", "EndTime": f"{end:%Y-%m-%dT%H:%M:%SZ}"}).encode(),
            {"content-type": "application/json"})
        assert status == 202, body
        execution = json.loads(body)["ExecutionName"]

        page = ui_page
        login(page, srv, srv.access_key_id, srv.secret_access_key)
        page.goto(f"{srv.url}/ui/monitoring/executions/{execution}")
        reload_until(page, lambda p: "CompletedWithViolations" in p.inner_text("#execution-status"), 120,
                     "the execution to find the drift")
        marked = {f.get_attribute("data-feature") for f in page.query_selector_all(".feature.drifted")}
        assert marked == DRIFTED
        assert {f.get_attribute("data-feature") for f in page.query_selector_all(".feature")} == set(FEATURES)
        # the drifted first, each drawn against its baseline
        order = [f.get_attribute("data-feature") for f in page.query_selector_all(".feature")]
        assert set(order[:2]) == DRIFTED
        assert page.query_selector_all(".feature[data-feature=b] rect.baseline")
        assert page.query_selector_all(".feature[data-feature=b] rect.current")
        violated = {row.inner_text().split("\t")[0] for row in page.query_selector_all("#violations tbody tr")}
        assert violated == DRIFTED
        screenshot(page, "monitoring-execution")
        # The report file is served from the execution's output, and nothing outside it.
        with page.expect_navigation():
            page.click("#report-links a:text('report.html')")
        assert "baseline vs current" in page.content()
        escape = page.request.get(f"{srv.url}/ui/monitoring/executions/{execution}/files/..%2F..%2Fbaseline%2F"
                                  f"statistics.json")
        assert escape.status == 404
        page.goto(f"{srv.url}/ui/monitoring/schedules/{schedule}")
        assert execution in page.inner_text("#executions")
        screenshot(page, "monitoring-schedule")
        page.goto(f"{srv.url}/ui/monitoring")
        assert schedule in page.inner_text("#schedules")
        screenshot(page, "monitoring")
    finally:
        with contextlib.suppress(ClientError):  # not created when an earlier step failed
            sm.delete_monitoring_schedule(MonitoringScheduleName=schedule)
        dep.cleanup()


# -- experiments and batch ----------------------------------------------------------------------------
def test_the_experiments_page_shows_a_bandits_bands_and_verdict(srv: MoorageServer, tmp_path: Path,
                                                                ui_page: Any) -> None:
    dep = Deployer(srv)
    try:
        models = {}
        for name in ("A", "B"):
            tarball = pack_model(tmp_path / name, None, inference_py=VARIANT_MODEL, extra_files={"variant.txt": name})
            models[name] = dep.model(new_name(f"ui-exp-{name.lower()}"), tarball.as_uri())
        config = new_name("ui-exp")
        srv.sm().create_endpoint_config(
            EndpointConfigName=config, Tags=[{"Key": "moorage:routing", "Value": "thompson"}],
            ProductionVariants=[variant(v, m) for v, m in models.items()])
        dep.configs.append(config)
        endpoint = dep.endpoint(new_name("ui-exp"), config)
        dep.wait_in_service(endpoint)
        rt = srv.rt()
        feedback = []
        for i in range(120):
            reply = rt.invoke_endpoint(EndpointName=endpoint, Body=b"1", ContentType="text/csv",
                                       InferenceId=f"ui-{i}")
            served = json.loads(reply["Body"].read())["variant"]
            feedback.append({"InferenceId": f"ui-{i}", "Reward": 1.0 if served == "B" or i % 10 == 0 else 0.0})
        status, _, body = srv.signed_request("POST", f"/moorage/v1/endpoints/{endpoint}/feedback",
                                             json.dumps({"Feedback": feedback}).encode(),
                                             {"content-type": "application/json"})
        assert status == 200 and json.loads(body)["Accepted"] == 120, body

        page = ui_page
        login(page, srv, srv.access_key_id, srv.secret_access_key)
        page.goto(f"{srv.url}/ui/experiments")
        assert endpoint in page.inner_text("#experiments")
        screenshot(page, "experiments")
        page.goto(f"{srv.url}/ui/experiments/{endpoint}")
        assert {r.get_attribute("data-variant") for r in page.query_selector_all("#variants tbody tr")} == {"A", "B"}
        assert page.query_selector_all("#variants .band .ci")  # the intervals drawn
        verdict = page.inner_text("#comparisons tbody tr td.verdict")
        report = json.loads(srv.signed_request("GET", f"/moorage/v1/endpoints/{endpoint}/experiment")[2])
        assert verdict == report["Comparisons"][0]["Verdict"]
        # The bandit's weights, written at each look, reach the chart.
        wait_until(lambda: int(page.get_attribute("#weights-chart .chart-plot", "data-points") or 0) > 0, 30,
                   what="the weights chart drawn")
        screenshot(page, "experiment")
    finally:
        dep.cleanup()


def test_the_batch_page_shows_a_transform_jobs_progress(srv: MoorageServer, classifier: Path, tmp_path: Path,
                                                        ui_page: Any) -> None:
    dep = Deployer(srv)
    sm = srv.sm()
    try:
        model = dep.model(new_name("ui-batch"), classifier.as_uri())
        rows = np.random.default_rng(5).normal(size=(400, 4))
        (tmp_path / "in").mkdir()
        (tmp_path / "in" / "rows.csv").write_text("\n".join(",".join(f"{v:.4f}" for v in r) for r in rows))
        job = new_name("ui-job")
        sm.create_transform_job(**job_request(job, model, (tmp_path / "in").as_uri(), (tmp_path / "out").as_uri()))
        wait_until(lambda: sm.describe_transform_job(TransformJobName=job)["TransformJobStatus"] not in
                   ("InProgress", "Stopping"), 120, what="the transform job to finish")
        assert sm.describe_transform_job(TransformJobName=job)["TransformJobStatus"] == "Completed"
        page = ui_page
        login(page, srv, srv.access_key_id, srv.secret_access_key)
        page.goto(f"{srv.url}/ui/jobs")
        row = page.inner_text(f"#transform-jobs tr[data-job='{job}']")
        assert "Completed" in row and "100.0%" in row and "1 / 1" in row, row
        screenshot(page, "batch")
        page.goto(f"{srv.url}/ui/jobs/{job}")
        assert page.inner_text("#job-records").startswith("400 ")
        screenshot(page, "batch-job")
    finally:
        dep.cleanup()


MME_MODEL = '''
import json, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "name.txt")) as fh:
        return fh.read().strip()


def transform_fn(name, body, content_type, accept):
    return json.dumps({"model": name}), "application/json"
'''


def test_the_batch_page_shows_what_each_multi_model_host_loaded(srv: MoorageServer, tmp_path: Path,
                                                                ui_page: Any) -> None:
    prefix = tmp_path / "models"
    prefix.mkdir()
    for name in ("m1", "m2"):
        with tarfile.open(prefix / f"{name}.tar.gz", "w:gz") as tar:
            for member, data in (("name.txt", name.encode()), ("code/inference.py", MME_MODEL.encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    dep = Deployer(srv)
    try:
        endpoint = new_name("ui-mme")
        srv.sm().create_model(ModelName=endpoint, ExecutionRoleArn=ROLE_ARN, PrimaryContainer={
            "Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix.as_uri()})
        dep.models.append(endpoint)
        dep.config(endpoint, [variant("AllTraffic", endpoint)])
        dep.endpoint(endpoint, endpoint)
        dep.wait_in_service(endpoint)
        rt = srv.rt()
        for target in ("m1.tar.gz", "m2.tar.gz", "m2.tar.gz"):
            reply = rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=b"1", TargetModel=target)
            assert json.loads(reply["Body"].read())["model"] == target.split(".")[0]
        page = ui_page
        login(page, srv, srv.access_key_id, srv.secret_access_key)
        page.goto(f"{srv.url}/ui/jobs")
        section = f"section.mme[data-endpoint='{endpoint}']"
        loaded = {row.get_attribute("data-model"): row.inner_text()
                  for row in page.query_selector_all(f"{section} tr[data-model]")}
        assert set(loaded) == {"m1.tar.gz", "m2.tar.gz"}, page.inner_text("main")
        assert loaded["m2.tar.gz"].split("\t")[2] == "1"  # hits: the second request found it loaded
        screenshot(page, "batch-multi-model")
    finally:
        dep.cleanup()


def test_the_experiments_page_compares_a_shadow_with_production(srv: MoorageServer, classifier: Path,
                                                                ui_page: Any) -> None:
    dep = Deployer(srv)
    try:
        production = dep.model(new_name("ui-prod"), classifier.as_uri())
        shadow = dep.model(new_name("ui-shadow"), classifier.as_uri())
        config = new_name("ui-shadowed")
        srv.sm().create_endpoint_config(EndpointConfigName=config,
                                        ProductionVariants=[variant("AllTraffic", production)],
                                        ShadowProductionVariants=[variant("Shadow", shadow)])
        dep.configs.append(config)
        endpoint = dep.endpoint(new_name("ui-shadowed"), config)
        dep.wait_in_service(endpoint)
        rows = np.random.default_rng(2).normal(size=(20, 4))
        rt = srv.rt()
        for row in rows:
            rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv",
                               Body=",".join(f"{v:.4f}" for v in row).encode())

        def compared() -> bool:
            shadows = srv.native_endpoint(endpoint)["ShadowVariants"]
            return bool(shadows) and (shadows[0]["Shadow"] or {}).get("Compared") == len(rows)

        wait_until(compared, 60, what="the shadow's answers compared")
        page = ui_page
        login(page, srv, srv.access_key_id, srv.secret_access_key)
        page.goto(f"{srv.url}/ui/experiments")
        assert "Shadow" in page.inner_text(f"#experiments tr[data-endpoint='{endpoint}']")
        page.goto(f"{srv.url}/ui/experiments/{endpoint}")
        cells = page.inner_text("#shadows tr[data-shadow='Shadow']").split("\t")
        # sent, errors, compared, agreement exact: the same model agrees with itself on every request
        assert (cells[4], cells[5], cells[6], cells[7]) == ("20", "0 (0.0%)", "20", "100.0%"), cells
        screenshot(page, "experiment-shadow")
    finally:
        dep.cleanup()
