"""The official SageMaker Python SDK (v2, unmodified, in its own venv) against a moorage server, with
nothing else running: no moto, no AWS. The SDK is pointed at moorage only as a user would point it:
``AWS_ENDPOINT_URL``, the server's key, a region, and the SDK's own config file (the default bucket,
telemetry off). Every scenario is a script under tests/sdk_scripts/ that prints what it saw as JSON.

The scenarios' scripts all start when the module's first test asks (each in its own process, side by
side: most of an SDK script's time is the SDK sleeping between polls), and each test then waits for
its own. Each also shows, from what the script recorded, that the SDK spoke to the moorage server
and looked up no other host.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e_support import REGION, SM_SKLEARN_IMAGE, MoorageServer, new_name, pack_model, train_classifier
from sagemaker_sdk_support import (
    DEFAULT_BUCKET,
    ROLE_ARN,
    SdkEnv,
    SdkRun,
    sdk_env_or_skip,
    sdk_environment,
    write_sdk_config,
)

# The first test may build the SDK's venv (about 30 s with pip's cache warm, minutes without) and then
# waits for its script; the scripts run side by side, so the module's later tests wait little.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sagemaker_sdk"

SCRIPT_OF = {
    "sklearn": "sklearn_endpoint.py", "repacked": "sklearn_endpoint.py", "restart": "sklearn_endpoint.py",
    "transform": "batch_transform.py", "monitor": "model_monitor.py", "async": "async_endpoint.py",
    "serverless": "serverless_endpoint.py", "example": "run_example.py",
}
MONITOR_FEATURES = ["f0", "f1", "f2", "f3"]
DRIFTED_FEATURE = "f1"

# The user's entry point: its own model_fn and predict_fn (probabilities of the positive class), so
# an answer that matches predict_proba shows this file ran, not the container's default handler.
INFERENCE_PY = """\
import os

import joblib


def model_fn(model_dir):
    return joblib.load(os.path.join(model_dir, "model.joblib"))


def predict_fn(data, model):
    return model.predict_proba(data)[:, 1]
"""


class Scenarios:
    """What the scripts share (model, data, environment) and the runs, started side by side."""

    def __init__(self, sdk: SdkEnv, server: MoorageServer, root: Path) -> None:
        self.sdk, self.server, self.root = sdk, server, root
        self.model, X = train_classifier()
        self.rows = np.asarray(X[:8], dtype=np.float64)
        self.model_tar = pack_model(root / "model", self.model)
        self.source_dir = root / "source"
        self.source_dir.mkdir()
        (self.source_dir / "inference.py").write_text(INFERENCE_PY)
        home = root / "user-home"
        home.mkdir()
        config = write_sdk_config(root / "sagemaker-config.yaml")
        self.env = sdk_environment(server.url, server.access_key_id, server.secret_access_key, REGION, config, home)
        self.runs: dict[str, SdkRun] = {}
        self._restart_server: MoorageServer | None = None

    @property
    def restart_server(self) -> MoorageServer:
        """A server of the restart scenario's own (the shared one is never restarted)."""
        if self._restart_server is None:
            self._restart_server = MoorageServer(self.root / "restart-home").start(90)
        return self._restart_server

    def server_of(self, scenario: str) -> MoorageServer:
        return self.restart_server if scenario == "restart" else self.server

    def env_of(self, scenario: str) -> dict[str, str]:
        if scenario == "example":
            return self.example_env()
        if scenario == "restart":
            srv = self.restart_server
            return dict(self.env, AWS_ENDPOINT_URL=srv.url, AWS_ACCESS_KEY_ID=srv.access_key_id,
                        AWS_SECRET_ACCESS_KEY=srv.secret_access_key)
        return self.env

    def expected(self, rows: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(rows)[:, 1]

    def common(self, name: str) -> dict[str, Any]:
        return {"prefix": name, "role": ROLE_ARN, "model_tar": str(self.model_tar),
                "source_dir": str(self.source_dir), "rows": self.rows.tolist()}

    def params(self, scenario: str) -> tuple[str, dict[str, Any]]:
        name = new_name(f"sdk-{scenario}")
        p = self.common(name)
        if scenario in ("sklearn", "repacked", "async", "serverless", "restart"):
            p["endpoint_name"] = name
        if scenario == "restart":
            p["keep"] = p["endpoint_logging"] = True
        if scenario == "repacked":
            p["network_isolation"] = p["endpoint_logging"] = True
        if scenario == "transform":
            p["job_name"] = name
        if scenario == "monitor":
            data = np.random.default_rng(5).normal(size=(400, 4))  # the baseline data set, with a header
            baseline_csv = self.root / f"{name}-train.csv"
            baseline_csv.write_text(",".join(MONITOR_FEATURES) + "\n"
                                    + "\n".join(",".join(f"{v:.6f}" for v in row) for row in data) + "\n")
            traffic = data[:200].copy()
            traffic[:, MONITOR_FEATURES.index(DRIFTED_FEATURE)] += 4.0  # one feature far off its baseline
            p.update(endpoint_name=name, baseline_csv=str(baseline_csv), traffic=traffic.round(6).tolist(),
                     rows_per_request=25, baseline_job=f"{name}-baseline", schedule_name=f"{name}-schedule")
        if scenario == "example":
            p = {"build": str(self.example_build), "endpoint_name": name}
        return SCRIPT_OF[scenario], p

    @property
    def example_build(self) -> Path:
        """What examples/sagemaker_sdk/train.py writes, as its README runs it (with moorage's python)."""
        build = self.root / "example-build"
        if not (build / "model.tar.gz").exists():
            subprocess.run([sys.executable, str(EXAMPLE / "train.py"), str(build)], check=True, timeout=120,
                           capture_output=True)
        return build

    def example_env(self) -> dict[str, str]:
        """The example's README: its own SDK config file, and the server's credentials file."""
        env = dict(self.env, SAGEMAKER_USER_CONFIG_OVERRIDE=str(EXAMPLE / "sagemaker-config.yaml"),
                   SAGEMAKER_ADMIN_CONFIG_OVERRIDE=str(EXAMPLE / "sagemaker-config.yaml"),
                   AWS_SHARED_CREDENTIALS_FILE=str(self.server.home / "credentials"))
        del env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"]
        return env

    def start(self, scenario: str) -> SdkRun:
        if scenario not in self.runs:
            script, params = self.params(scenario)
            self.runs[scenario] = SdkRun(self.sdk.python, script, params, self.env_of(scenario),
                                         self.root / "runs" / scenario, timeout=360)
        return self.runs[scenario]

    def stop_all(self) -> None:
        for run in self.runs.values():
            run.stop()
        if self._restart_server is not None:
            self._restart_server.stop()


# test name -> scenario: the module fixture starts the scenarios of the tests that were selected
SCENARIO_OF = {
    "test_sklearn_model_with_entry_point_deploys_and_predicts": "sklearn",
    "test_sklearn_model_repacked_by_the_sdk_deploys_and_predicts": "repacked",
    "test_transformer_with_default_logging_over_s3": "transform",
    "test_model_monitor_baseline_schedule_and_latest_results": "monitor",
    "test_async_predictor_predicts": "async",
    "test_serverless_endpoint_predicts": "serverless",
    "test_the_example_deploys_predicts_and_transforms": "example",
    "test_what_the_sdk_made_survives_a_restart": "restart",
}


@pytest.fixture(scope="module")
def sdk() -> SdkEnv:
    return sdk_env_or_skip()


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, sdk: SdkEnv, server: MoorageServer,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenarios]:
    s = Scenarios(sdk, server, tmp_path_factory.mktemp("sagemaker-sdk"))
    selected = [SCENARIO_OF[item.name] for item in request.session.items
                if getattr(item, "module", None) is request.module and item.name in SCENARIO_OF]
    # The scenarios share the default bucket and start together: made here first, so no two SDK
    # processes race to create it (HeadBucket 404, then CreateBucket by both). The example, alone
    # on its own bucket, shows the SDK creating one.
    with contextlib.suppress(server.client("s3").exceptions.BucketAlreadyOwnedByYou):
        server.client("s3").create_bucket(Bucket=DEFAULT_BUCKET)
    try:
        for scenario in selected:
            s.start(scenario)
        yield s
    finally:
        s.stop_all()


def assert_only_moorage(outcome: dict[str, Any], server: MoorageServer) -> None:
    """Every AWS call went to the server; no other host was even looked up."""
    assert outcome["endpoints"] == [server.url], outcome["endpoints"]
    assert set(outcome["hosts"]) <= {"127.0.0.1"}, outcome["hosts"]


def result_of(scenarios: Scenarios, scenario: str) -> dict[str, Any]:
    run = scenarios.start(scenario)
    result = run.result()
    assert_only_moorage(run.outcome(), scenarios.server_of(scenario))
    return result


def calls_of(scenarios: Scenarios, scenario: str) -> dict[str, int]:
    return scenarios.start(scenario).outcome()["calls"]


# --------------------------------------------------------------------------------------------------
# (a) SKLearnModel with an entry point
# --------------------------------------------------------------------------------------------------
def test_sklearn_model_with_entry_point_deploys_and_predicts(scenarios: Scenarios) -> None:
    result = result_of(scenarios, "sklearn")
    np.testing.assert_allclose(np.asarray(result["predictions"]), scenarios.expected(scenarios.rows), rtol=1e-9)
    container = result["container"]
    assert container["Image"] == SM_SKLEARN_IMAGE
    assert container["ModelDataUrl"] == result["model_data"]
    assert result["model_data"].startswith(f"s3://{DEFAULT_BUCKET}/")
    # the SDK uploaded the code as sourcedir.tar.gz next to the model and pointed the container at it
    env = container["Environment"]
    assert env["SAGEMAKER_PROGRAM"] == "inference.py"
    assert env["SAGEMAKER_SUBMIT_DIRECTORY"].startswith(f"s3://{DEFAULT_BUCKET}/")
    assert env["SAGEMAKER_SUBMIT_DIRECTORY"].endswith("/sourcedir.tar.gz")
    assert result["endpoint_status"] == "InService"
    calls = calls_of(scenarios, "sklearn")
    assert calls["s3:PutObject"] >= 2  # the model and the code
    assert calls["sagemaker-runtime:InvokeEndpoint"] == 1
    assert calls["sagemaker:DeleteEndpoint"] == 1


def test_sklearn_model_repacked_by_the_sdk_deploys_and_predicts(scenarios: Scenarios) -> None:
    """With network isolation the SDK repacks: it downloads model.tar.gz from S3, adds code/ and
    uploads the new archive; the container is told the code is in /opt/ml/model/code. And
    ``deploy(endpoint_logging=True)`` follows the endpoint's log group while it waits."""
    result = result_of(scenarios, "repacked")
    np.testing.assert_allclose(np.asarray(result["predictions"]), scenarios.expected(scenarios.rows), rtol=1e-9)
    container = result["container"]
    assert container["ModelDataUrl"] != result["model_data"]  # the repacked archive
    assert container["ModelDataUrl"].startswith(f"s3://{DEFAULT_BUCKET}/")
    assert container["Environment"]["SAGEMAKER_SUBMIT_DIRECTORY"] == "/opt/ml/model/code"
    calls = calls_of(scenarios, "repacked")
    assert calls["s3:GetObject"] >= 1 and calls["s3:PutObject"] >= 2
    # endpoint_logging=True: deploy read the instances' log group while it waited
    assert calls.get("logs:FilterLogEvents", 0) >= 1, calls


# --------------------------------------------------------------------------------------------------
# (b) Transformer with the default logging
# --------------------------------------------------------------------------------------------------
def test_transformer_with_default_logging_over_s3(scenarios: Scenarios) -> None:
    result = result_of(scenarios, "transform")
    assert result["status"] == "Completed"
    assert result["input"].startswith(f"s3://{DEFAULT_BUCKET}/")
    assert any(uri.endswith("/output/rows.csv.out") for uri in result["listed"]), result["listed"]
    got = np.asarray([float(cell) for line in result["output"].splitlines() if line.strip()
                      for cell in line.split(",")])
    np.testing.assert_allclose(got, scenarios.expected(scenarios.rows), rtol=1e-9)
    calls = calls_of(scenarios, "transform")
    # logs=True: the SDK looked for the job's log streams in CloudWatch Logs
    assert calls.get("logs:DescribeLogStreams", 0) >= 1, calls


# --------------------------------------------------------------------------------------------------
# (c) Model Monitor: suggest_baseline, a schedule, the latest execution's results
# --------------------------------------------------------------------------------------------------
def test_model_monitor_baseline_schedule_and_latest_results(scenarios: Scenarios) -> None:
    result = result_of(scenarios, "monitor")
    baseline = result["baseline_job"]
    assert baseline["ProcessingJobStatus"] == "Completed", baseline
    assert baseline["AppSpecification"]["ImageUri"].endswith("/sagemaker-model-monitor-analyzer")
    assert result["baseline_statistics"]["dataset"]["item_count"] == 400
    assert [f["name"] for f in result["baseline_statistics"]["features"]] == MONITOR_FEATURES
    assert [f["name"] for f in result["suggested_constraints"]["features"]] == MONITOR_FEATURES

    summary = result["execution_summary"]
    assert summary["MonitoringExecutionStatus"] == "CompletedWithViolations", summary
    assert result["executions"] == 1
    latest = result["latest_processing_job"]
    assert latest["ProcessingJobArn"] == summary["ProcessingJobArn"]
    assert latest["ProcessingJobStatus"] == "Completed", latest
    statistics = result["statistics"]
    assert statistics is not None and statistics["dataset"]["item_count"] == 200
    assert [f["name"] for f in statistics["features"]] == MONITOR_FEATURES
    violations = result["violations"]["violations"]
    assert {v["feature_name"] for v in violations} == {DRIFTED_FEATURE}, violations
    assert {v["constraint_check_type"] for v in violations} == {"baseline_drift_check"}
    calls = calls_of(scenarios, "monitor")
    assert calls["sagemaker:CreateProcessingJob"] == 1
    assert calls.get("logs:DescribeLogStreams", 0) >= 1, calls


# --------------------------------------------------------------------------------------------------
# (d) async inference, (e) serverless
# --------------------------------------------------------------------------------------------------
def test_async_predictor_predicts(scenarios: Scenarios) -> None:
    result = result_of(scenarios, "async")
    expected = scenarios.expected(scenarios.rows)
    np.testing.assert_allclose(np.asarray(result["predictions"]), expected, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(result["later"]), expected[:2], rtol=1e-9)
    assert result["output_path"].startswith(f"s3://{DEFAULT_BUCKET}/")
    assert result["config"]["ClientConfig"]["MaxConcurrentInvocationsPerInstance"] == 2
    calls = calls_of(scenarios, "async")
    assert calls["sagemaker-runtime:InvokeEndpointAsync"] == 2


def test_serverless_endpoint_predicts(scenarios: Scenarios) -> None:
    result = result_of(scenarios, "serverless")
    expected = scenarios.expected(scenarios.rows)
    np.testing.assert_allclose(np.asarray(result["first"]), expected, rtol=1e-9)
    np.testing.assert_allclose(np.asarray(result["second"]), expected, rtol=1e-9)
    assert result["variant"]["ServerlessConfig"] == {"MemorySizeInMB": 2048, "MaxConcurrency": 2}
    assert "InstanceType" not in result["variant"]


# --------------------------------------------------------------------------------------------------
# a restart keeps what the SDK made
# --------------------------------------------------------------------------------------------------
def test_what_the_sdk_made_survives_a_restart(scenarios: Scenarios) -> None:
    """An endpoint the SDK deployed and the objects it uploaded are there after the server restarts:
    a Predictor made by name predicts, and the archive reads back byte for byte."""
    before = result_of(scenarios, "restart")
    srv = scenarios.restart_server
    srv.stop()
    srv.start(90)
    first = scenarios.runs["restart"].params
    params = {"endpoint_name": first["endpoint_name"], "prefix": first["prefix"], "rows": scenarios.rows.tolist(),
              "model_data": before["model_data"]}
    run = SdkRun(scenarios.sdk.python, "after_restart.py", params, scenarios.env_of("restart"),
                 scenarios.root / "runs" / "after-restart", timeout=240)
    after = run.result()
    assert_only_moorage(run.outcome(), srv)
    assert after["status"] == "InService"
    np.testing.assert_allclose(np.asarray(after["predictions"]), scenarios.expected(scenarios.rows), rtol=1e-9)
    assert after["model_sha256"] == hashlib.sha256(scenarios.model_tar.read_bytes()).hexdigest()
    assert before["model_data"] in after["listed"]


# --------------------------------------------------------------------------------------------------
# examples/sagemaker_sdk, as its README runs it
# --------------------------------------------------------------------------------------------------
def test_the_example_deploys_predicts_and_transforms(scenarios: Scenarios) -> None:
    result = result_of(scenarios, "example")
    expected = json.loads((scenarios.example_build / "expected.json").read_text())["predictions"]
    assert len(expected) == 20
    assert result["online"] == expected
    assert result["batch"] == expected
    assert result["matches"] is True
    assert result["model_data"].startswith("s3://moorage-sdk-example/")
    # the bucket named in the example's config file did not exist: the SDK made it
    calls = calls_of(scenarios, "example")
    assert calls["s3:HeadBucket"] == 1 and calls["s3:CreateBucket"] == 1, calls


# --------------------------------------------------------------------------------------------------
# what the docs tell users to avoid
# --------------------------------------------------------------------------------------------------
def test_without_a_default_bucket_the_sdk_asks_sts_outside_moorage(sdk: SdkEnv, server: MoorageServer,
                                                                   tmp_path: Path) -> None:
    """docs/sagemaker-sdk.md's reason to set DefaultS3Bucket and pass the role: with neither, the SDK
    calls STS at its regional endpoint, which it names itself, so AWS_ENDPOINT_URL (even
    AWS_ENDPOINT_URL_STS) does not send it to moorage."""
    config = tmp_path / "telemetry-off.yaml"
    config.write_text(json.dumps({"SchemaVersion": "1.0",
                                  "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}))
    env = sdk_environment(server.url, server.access_key_id, server.secret_access_key, REGION, config, tmp_path)
    env["AWS_ENDPOINT_URL_STS"] = server.url
    run = SdkRun(sdk.python, "unconfigured_session.py", {}, env, tmp_path / "run", timeout=120)
    outcome = run.outcome()
    assert outcome["ok"], outcome
    assert outcome["result"] == {"bucket_error": "EndpointConnectionError", "role_error": "EndpointConnectionError"}
    assert outcome["calls"] == {"sts:GetCallerIdentity": 2}
    assert outcome["endpoints"] == [f"https://sts.{REGION}.amazonaws.com"]
    assert outcome["hosts"] == [f"sts.{REGION}.amazonaws.com"]

