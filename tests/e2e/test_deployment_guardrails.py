"""Blue/green updates through boto3 under steady traffic: canary, linear, all at once with baking, a
rollback on an alarm, a green fleet that cannot start; every steady request must succeed.

The models answer which fleet they are ({"fleet": "blue"}), so the traffic split is what the
callers saw, not what the server says it did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import Deployer, MoorageServer, SteadyTraffic, err_code, new_name, pack_model, variant, wait_until

pytestmark = pytest.mark.e2e

FLEET_MODEL = '''
import json, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "fleet.txt")) as fh:
        return fh.read().strip()


def transform_fn(fleet, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    if "boom" in text and fleet.endswith("-fails-on-boom"):
        raise RuntimeError("this fleet fails on boom")
    return json.dumps({"fleet": fleet.split("-")[0]}), "application/json"
'''
BROKEN_MODEL = '''
def model_fn(model_dir, context=None):
    raise RuntimeError("the new model cannot load")
'''
ENV = {"MOORAGE_METRICS_PERIOD": "1"}


@pytest.fixture
def guarded(fresh_server: Callable[..., MoorageServer]) -> Iterator[MoorageServer]:
    yield fresh_server(env=ENV)


def _fleet_model(dep: Deployer, workdir: Path, fleet: str, source: str = FLEET_MODEL) -> str:
    tarball = pack_model(workdir / fleet, None, inference_py=source, extra_files={"fleet.txt": fleet})
    return dep.model(new_name(fleet.split("-")[0]), tarball.as_uri())


def _blue_endpoint(dep: Deployer, workdir: Path, count: int = 1) -> str:
    model = _fleet_model(dep, workdir, "blue")
    config = dep.config(new_name("blue"), [variant("AllTraffic", model, count=count)])
    endpoint = dep.endpoint(new_name("guarded"), config)
    dep.wait_in_service(endpoint)
    return endpoint


def _green_config(dep: Deployer, workdir: Path, count: int, fleet: str = "green", source: str = FLEET_MODEL) -> str:
    model = _fleet_model(dep, workdir, fleet, source)
    return dep.config(new_name("green"), [variant("AllTraffic", model, count=count)])


def _policy(routing: dict[str, Any], termination: int = 1, alarms: list[str] | None = None) -> dict[str, Any]:
    routing = {"WaitIntervalInSeconds": 0, **routing}
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": routing,
                                                        "TerminationWaitInSeconds": termination,
                                                        "MaximumExecutionTimeoutInSeconds": 600}}
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
    return config


def _history(srv: MoorageServer, endpoint: str) -> list[dict[str, Any]]:
    return srv.native_endpoint(endpoint)["Update"]["History"]


def _poke_until_rolled_back(srv: MoorageServer, endpoint: str) -> None:
    """Send requests the green fleet fails (the steady traffic never does), so Invocation5XXErrors > 0
    and the rollback alarm fires, until the update is no longer Updating."""
    sm, rt = srv.sm(), srv.rt()

    def poke() -> bool:
        try:
            rt.invoke_endpoint(EndpointName=endpoint, Body=b"boom", ContentType="text/csv")
        except ClientError as exc:
            assert err_code(exc) == "ModelError"
        return sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] != "Updating"

    wait_until(poke, 60, interval=0.2, what="the alarm to roll the update back")


def _wait_done(dep: Deployer, endpoint: str, timeout: float = 180) -> dict[str, Any]:
    return dep.wait_status(endpoint, {"InService", "Failed", "UpdateRollbackFailed"}, timeout=timeout)


def test_canary_moves_a_share_then_everything_with_no_failed_request(guarded: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path)
    old_config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    green = _green_config(dep, tmp_path, count=2)
    deployment = _policy({"Type": "CANARY", "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 1},
                          "WaitIntervalInSeconds": 4})
    with SteadyTraffic(guarded, endpoint, "fleet") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig=deployment)

        def baking_canary() -> dict[str, Any] | None:
            desc = sm.describe_endpoint(EndpointName=endpoint)
            pending = desc.get("PendingDeploymentSummary") or {}
            statuses = [s["Status"] for v in pending.get("ProductionVariants", []) for s in v["VariantStatus"]]
            return desc if statuses == ["Baking"] else None

        desc = wait_until(baking_canary, 120, interval=0.1, what="the canary's baking period")
        # SageMaker's view mid-update: Updating, still the old config, the new one pending.
        assert desc["EndpointStatus"] == "Updating" and desc["EndpointConfigName"] == old_config
        assert desc["PendingDeploymentSummary"]["EndpointConfigName"] == green
        assert desc["PendingDeploymentSummary"]["ProductionVariants"][0]["DesiredInstanceCount"] == 2
        done = _wait_done(dep, endpoint)
        finished = time.time()
        wait_until(lambda: sum(traffic.between(finished, time.time() + 1).values()) >= 5, 30,
                   what="requests after the update")
    assert traffic.failures == []
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == green
    assert "FailureReason" not in done and "PendingDeploymentSummary" not in done
    assert done["LastDeploymentConfig"]["BlueGreenUpdatePolicy"]["TrafficRoutingConfiguration"]["Type"] == "CANARY"

    history = _history(guarded, endpoint)
    steps = [(h["Phase"], h["GreenShare"]) for h in history]
    assert steps == [("Creating", 0.0), ("ActivatingTraffic", 0.0), ("Baking", 0.5), ("ActivatingTraffic", 0.5),
                     ("Baking", 1.0), ("Completed", 1.0)]
    canary_start = next(h["Time"] for h in history if h["Phase"] == "Baking")
    canary_end = next(h["Time"] for h in history[3:] if h["Phase"] == "ActivatingTraffic")
    during = traffic.between(canary_start, canary_end)
    assert during["blue"] > 0 and during["green"] > 0, during  # both fleets served the canary period
    assert set(traffic.between(finished, time.time() + 1)) == {"green"}
    assert set(traffic.between(0, history[0]["Time"])) == {"blue"}

    # The command line shows the same story.
    env = {k: v for k, v in os.environ.items() if k not in ("MOORAGE_HOME", "AWS_PROFILE")}
    shown = subprocess.run([sys.executable, "-m", "moorage", "rollout", "status", endpoint, "--home",
                            str(guarded.home)], capture_output=True, timeout=120, env=env)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout.decode()
    assert f"update to {green}: Completed, new fleet at 100% of the traffic" in out
    assert all(phase in out for phase in ("Creating", "ActivatingTraffic", "Baking", "Completed"))
    dep.cleanup()


def test_capture_goes_on_through_an_update_saying_which_fleet_served(guarded: MoorageServer,
                                                                     tmp_path: Path) -> None:
    """SageMaker falls back to all-at-once for endpoints with data capture; moorage keeps the guardrails
    and each record made while both fleets serve names the fleet (and its config) that served it."""
    dep = Deployer(guarded)
    sm = guarded.sm()
    destination = tmp_path / "captured"
    capture = {"EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": str(destination),
               "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
    configs = {}
    for fleet in ("blue", "green"):
        model = _fleet_model(dep, tmp_path, fleet)
        configs[fleet] = new_name(fleet)
        sm.create_endpoint_config(EndpointConfigName=configs[fleet], DataCaptureConfig=capture,
                                  ProductionVariants=[variant("AllTraffic", model, count=2)])
        dep.configs.append(configs[fleet])
    endpoint = dep.endpoint(new_name("captured"), configs["blue"])
    dep.wait_in_service(endpoint)
    deployment = _policy({"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                          "WaitIntervalInSeconds": 3}, termination=0)
    with SteadyTraffic(guarded, endpoint, "fleet") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=configs["green"], DeploymentConfig=deployment)
        done = _wait_done(dep, endpoint)
        finished = time.time()
        wait_until(lambda: sum(traffic.between(finished, time.time() + 1).values()) >= 5, 30,
                   what="requests after the update")
    assert traffic.failures == []
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == configs["green"]

    def records() -> list[dict[str, Any]]:
        return [json.loads(line) for path in sorted(destination.rglob("*.jsonl"))
                for line in path.read_text().splitlines()]

    wait_until(lambda: len(records()) == len(traffic.answered), 30, what="every answered request captured")
    noted: dict[str, int] = {"blue": 0, "green": 0}
    plain = []
    for record in records():
        served = json.loads(record["captureData"]["endpointOutput"]["data"])["fleet"]
        note = record["eventMetadata"].get("moorage")
        if note is None:
            plain.append(served)
            continue
        assert note == {"fleet": served, "endpointConfigName": configs[served]}, record
        assert list(record["eventMetadata"])[-2:] == ["moorage", "inferenceTime"]
        noted[served] += 1
    assert noted["blue"] > 0 and noted["green"] > 0, noted  # the canary: both fleets, each named
    assert "blue" in plain and "green" in plain  # before and after the update: SageMaker's records as they are
    dep.cleanup()


def test_linear_steps_follow_capacity(guarded: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path)
    green = _green_config(dep, tmp_path, count=4)
    deployment = _policy({"Type": "LINEAR", "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 25},
                          "WaitIntervalInSeconds": 1}, termination=0)
    with SteadyTraffic(guarded, endpoint, "fleet") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig=deployment)
        done = _wait_done(dep, endpoint, timeout=240)
    assert traffic.failures == []
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == green
    bakes = [h["GreenShare"] for h in _history(guarded, endpoint) if h["Phase"] == "Baking"]
    assert bakes == [0.25, 0.5, 0.75, 1.0]  # 25% of 4 instances: one more instance's share each step
    assert done["ProductionVariants"][0]["CurrentInstanceCount"] == 4
    dep.cleanup()


def test_alarm_during_baking_rolls_everything_back(guarded: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path)
    old_config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    green = _green_config(dep, tmp_path, count=1, fleet="green-fails-on-boom")
    alarm = _error_alarm(guarded, endpoint)
    deployment = _policy({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 120}, alarms=[alarm])
    with SteadyTraffic(guarded, endpoint, "fleet") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig=deployment)
        wait_until(lambda: _history(guarded, endpoint)[-1]["Phase"] == "Baking", 120, interval=0.1,
                   what="the green fleet to bake")

        _poke_until_rolled_back(guarded, endpoint)
        done = _wait_done(dep, endpoint)
        rolled_back = time.time()
        wait_until(lambda: sum(traffic.between(rolled_back, time.time() + 1).values()) >= 5, 30,
                   what="requests after the rollback")
    assert traffic.failures == []
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == old_config
    assert alarm in done["FailureReason"] and "rolled back" in done["FailureReason"]
    assert "PendingDeploymentSummary" not in done
    phases = [h["Phase"] for h in _history(guarded, endpoint)]
    assert phases[-2:] == ["RollingBack", "RolledBack"]
    assert set(traffic.between(rolled_back, time.time() + 1)) == {"blue"}
    assert traffic.between(0, rolled_back)["green"] > 0  # green did serve before the alarm
    dep.cleanup()


def test_a_green_fleet_that_cannot_start_leaves_blue_serving(guarded: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path)
    old_config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    broken = _green_config(dep, tmp_path, count=1, fleet="broken", source=BROKEN_MODEL)
    deployment = _policy({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 1})
    with SteadyTraffic(guarded, endpoint, "fleet") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=broken, DeploymentConfig=deployment)
        wait_until(lambda: sm.describe_endpoint(EndpointName=endpoint).get("FailureReason"), 120, interval=0.2,
                   what="the update to fail")
        done = _wait_done(dep, endpoint)
    assert traffic.failures == [] and set(traffic.answers) == {"blue"}
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == old_config
    assert "cannot load" in done["FailureReason"]

    # The next successful update clears the reason.
    green = _green_config(dep, tmp_path, count=1)
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green)
    wait_until(lambda: sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == green, 120,
               interval=0.2, what="the second update")
    assert "FailureReason" not in _wait_done(dep, endpoint)
    dep.cleanup()


def test_bad_deployment_configs_change_nothing(guarded: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path)
    green = _green_config(dep, tmp_path, count=2)
    before = sm.describe_endpoint(EndpointName=endpoint)
    bad = {
        "CanarySize": _policy({"Type": "CANARY", "CanarySize": {"Type": "INSTANCE_COUNT", "Value": 2}}),
        "LinearStepSize": _policy({"Type": "LINEAR", "LinearStepSize": {"Type": "CAPACITY_PERCENT", "Value": 75}}),
        "does not exist": _policy({"Type": "ALL_AT_ONCE"}, alarms=["no-such-alarm"]),
        "CanarySize is required": _policy({"Type": "CANARY"}),
    }
    for words, deployment in bad.items():
        with pytest.raises(ClientError) as caught:
            sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig=deployment)
        assert err_code(caught.value) == "ValidationException" and words in str(caught.value), words
    after = sm.describe_endpoint(EndpointName=endpoint)
    assert (after["EndpointStatus"], after["EndpointConfigName"]) == ("InService", before["EndpointConfigName"])

    # One update at a time, as SageMaker refuses a second while the first is in flight.
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green,
                       DeploymentConfig=_policy({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 5}))
    with pytest.raises(ClientError) as caught:
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green)
    assert err_code(caught.value) == "ValidationException"
    assert _wait_done(dep, endpoint)["EndpointConfigName"] == green
    dep.cleanup()


def test_a_restart_mid_update_comes_back_on_the_old_config_and_a_finished_one_on_the_new(
        guarded: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path)
    old_config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    green = _green_config(dep, tmp_path, count=2)
    canary = _policy({"Type": "CANARY", "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 50},
                      "WaitIntervalInSeconds": 600})
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig=canary)
    wait_until(lambda: _history(guarded, endpoint)[-1]["Phase"] == "Baking", 120, interval=0.1,
               what="the canary to bake")

    guarded.stop(timeout=30)  # mid-update: the row still names the old config
    guarded.start(timeout=90)
    sm = guarded.sm()
    done = _wait_done(Deployer(guarded, sm), endpoint)
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == old_config
    assert "server stopped" in done["FailureReason"] and "PendingDeploymentSummary" not in done
    rt = guarded.rt()
    wait_until(lambda: json.loads(rt.invoke_endpoint(EndpointName=endpoint, Body=b"1", ContentType="text/csv")
                                  ["Body"].read())["fleet"] == "blue", 60, what="blue to serve again")

    # The same update, finished this time; the new config and its deployment config survive a restart.
    quick = _policy({"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 0}, termination=0)
    sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig=quick)
    wait_until(lambda: sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"] == green, 120,
               interval=0.2, what="the update")
    guarded.stop(timeout=30)
    guarded.start(timeout=90)
    sm = guarded.sm()
    done = _wait_done(Deployer(guarded, sm), endpoint)
    assert done["EndpointConfigName"] == green and "FailureReason" not in done
    assert done["LastDeploymentConfig"] == quick
    rt = guarded.rt()
    wait_until(lambda: json.loads(rt.invoke_endpoint(EndpointName=endpoint, Body=b"1", ContentType="text/csv")
                                  ["Body"].read())["fleet"] == "green", 60, what="green to serve after the restart")
    wait_until(lambda: sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]["CurrentInstanceCount"]
               == 2, 60, what="both green instances back")
    Deployer(guarded, sm).cleanup()


def _error_alarm(srv: MoorageServer, endpoint: str) -> str:
    """An alarm on SageMaker's error metric of the endpoint, made with boto3's CloudWatch client, as a
    SageMaker user makes the alarms AutoRollbackConfiguration names."""
    alarm = new_name("errors")
    srv.client("cloudwatch").put_metric_alarm(
        AlarmName=alarm, Namespace="AWS/SageMaker", MetricName="Invocation5XXErrors", Statistic="Sum", Period=1,
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}],
        EvaluationPeriods=1, Threshold=0, ComparisonOperator="GreaterThanThreshold", TreatMissingData="notBreaching")
    return alarm


def _rolling(batch: int, wait: int, alarms: list[str] | None = None) -> dict[str, Any]:
    config: dict[str, Any] = {"RollingUpdatePolicy": {
        "MaximumBatchSize": {"Type": "INSTANCE_COUNT", "Value": batch}, "WaitIntervalInSeconds": wait,
        "MaximumExecutionTimeoutInSeconds": 600}}
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
    return config


def test_rolling_update_replaces_the_fleet_batch_by_batch(guarded: MoorageServer, tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path, count=2)
    green = _green_config(dep, tmp_path, count=2)
    with SteadyTraffic(guarded, endpoint, "fleet") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green, DeploymentConfig=_rolling(1, 1))
        done = _wait_done(dep, endpoint, timeout=240)
    assert traffic.failures == []
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == green
    history = _history(guarded, endpoint)
    assert [h["Phase"] for h in history] == ["Creating", "Creating", "ActivatingTraffic", "Baking", "Creating",
                                             "ActivatingTraffic", "Baking", "Completed"]
    assert [h["GreenShare"] for h in history if h["Phase"] == "Baking"] == [0.5, 1.0]  # one of two, then both
    assert "RollingUpdatePolicy" in done["LastDeploymentConfig"]
    dep.cleanup()


def test_rolling_update_rolled_back_by_an_alarm_gets_its_old_capacity_back(guarded: MoorageServer,
                                                                            tmp_path: Path) -> None:
    dep = Deployer(guarded)
    sm = guarded.sm()
    endpoint = _blue_endpoint(dep, tmp_path, count=2)
    old_config = sm.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    green = _green_config(dep, tmp_path, count=2, fleet="green-fails-on-boom")
    alarm = _error_alarm(guarded, endpoint)
    with SteadyTraffic(guarded, endpoint, "fleet") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.update_endpoint(EndpointName=endpoint, EndpointConfigName=green,
                           DeploymentConfig=_rolling(1, 120, alarms=[alarm]))
        wait_until(lambda: _history(guarded, endpoint)[-1]["Phase"] == "Baking", 120, interval=0.1,
                   what="the first batch to bake")

        _poke_until_rolled_back(guarded, endpoint)
        done = _wait_done(dep, endpoint)
    assert traffic.failures == []
    assert done["EndpointStatus"] == "InService" and done["EndpointConfigName"] == old_config
    assert alarm in done["FailureReason"]
    wait_until(lambda: sm.describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]["CurrentInstanceCount"]
               == 2, 60, what="blue back at two instances")
    assert len(guarded.instances(endpoint)) == 2
    dep.cleanup()
