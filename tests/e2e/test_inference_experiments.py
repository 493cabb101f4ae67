"""SageMaker's shadow tests (CreateInferenceExperiment & co.) through boto3: an experiment puts a shadow
beside production through a zero-downtime endpoint update, the shadow's copies are compared, and
StopInferenceExperiment promotes the shadow (no request fails meanwhile) or removes it; bad input
changes nothing on the endpoint.

The models answer which model they are ({"model": "blue"}), so who served is what callers saw.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    INSTANCE_TYPE,
    ROLE_ARN,
    Deployer,
    MoorageServer,
    SteadyTraffic,
    err_code,
    err_message,
    new_name,
    pack_model,
    variant,
    wait_until,
)

pytestmark = pytest.mark.e2e

NAMED_MODEL = '''
import json, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "name.txt")) as fh:
        return fh.read().strip()


def transform_fn(name, body, content_type, accept):
    return json.dumps({"model": name}), "application/json"
'''


def _model(dep: Deployer, workdir: Path, name: str) -> str:
    tarball = pack_model(workdir / name, None, inference_py=NAMED_MODEL, extra_files={"name.txt": name})
    return dep.model(new_name(name), tarball.as_uri())


def _model_variant(name: str, model: str) -> dict[str, Any]:
    return {"ModelName": model, "VariantName": name,
            "InfrastructureConfig": {"InfrastructureType": "RealTimeInference",
                                     "RealTimeInferenceConfig": {"InstanceType": INSTANCE_TYPE, "InstanceCount": 1}}}


def _experiment(name: str, endpoint: str, source: tuple[str, str], shadow: tuple[str, str], percentage: int,
                **extra: Any) -> dict[str, Any]:
    return {"Name": name, "Type": "ShadowMode", "RoleArn": ROLE_ARN, "EndpointName": endpoint,
            "ModelVariants": [_model_variant(*source), _model_variant(*shadow)],
            "ShadowModeConfig": {"SourceModelVariantName": source[0],
                                 "ShadowModelVariants": [{"ShadowModelVariantName": shadow[0],
                                                          "SamplingPercentage": percentage}]}, **extra}


def _answer(rt: Any, endpoint: str) -> tuple[str, str]:
    reply = rt.invoke_endpoint(EndpointName=endpoint, Body=b"1,2", ContentType="text/csv")
    return json.loads(reply["Body"].read())["model"], reply["InvokedProductionVariant"]


def _refused(call: Callable[[], Any], code: str, *words: str) -> None:
    with pytest.raises(ClientError) as caught:
        call()
    assert err_code(caught.value) == code, err_message(caught.value)
    for word in words:
        assert word in err_message(caught.value)


def test_a_shadow_test_runs_then_promotes_or_removes_its_shadow(
        fresh_server: Callable[..., MoorageServer], tmp_path: Path) -> None:
    srv = fresh_server()
    dep = Deployer(srv)
    sm, rt = srv.sm(), srv.rt()
    blue, green = _model(dep, tmp_path, "blue"), _model(dep, tmp_path, "green")
    endpoint = dep.endpoint(new_name("shadowed"), dep.config(new_name("blue"), [variant("AllTraffic", blue)]))
    before = dep.wait_in_service(endpoint)

    # Bad input: the right error, and nothing changes on the endpoint.
    name = new_name("shadowtest")
    _refused(lambda: sm.create_inference_experiment(**_experiment(
        name, endpoint, ("AllTraffic", blue), ("Shadow", "no-such-model"), 100)),
        "ValidationException", "ModelVariants[1].ModelName", "no-such-model")
    _refused(lambda: sm.create_inference_experiment(**_experiment(
        name, "no-such-endpoint", ("AllTraffic", blue), ("Shadow", green), 100)), "ValidationException", "EndpointName")
    _refused(lambda: sm.create_inference_experiment(**_experiment(
        name, endpoint, ("AllTraffic", blue), ("Shadow", green), 150)), "ValidationException", "samplingPercentage")
    _refused(lambda: sm.create_inference_experiment(**_experiment(
        name, endpoint, ("Elsewhere", blue), ("Shadow", green), 100)), "ValidationException", "Elsewhere")
    _refused(lambda: sm.describe_inference_experiment(Name=name), "ResourceNotFound")
    assert sm.list_inference_experiments()["InferenceExperiments"] == []
    unchanged = sm.describe_endpoint(EndpointName=endpoint)
    assert unchanged["EndpointStatus"] == "InService" and "ShadowProductionVariants" not in unchanged
    assert unchanged["EndpointConfigName"] == before["EndpointConfigName"]
    assert unchanged["LastModifiedTime"] == before["LastModifiedTime"]

    # A shadow at 100%, starting now: the endpoint is updated to a config named after the experiment.
    arn = sm.create_inference_experiment(**_experiment(name, endpoint, ("AllTraffic", blue), ("Shadow", green), 100,
                                                       Description="green beside blue"))["InferenceExperimentArn"]
    assert arn.endswith(f":inference-experiment/{name}")
    _refused(lambda: sm.create_inference_experiment(**_experiment(
        name, endpoint, ("AllTraffic", blue), ("Shadow", green), 100)), "ResourceInUse")
    desc = wait_until(lambda: (d := sm.describe_inference_experiment(Name=name))["Status"] == "Running" and d, 120,
                      what="the experiment to run")
    assert desc["EndpointMetadata"]["EndpointConfigName"] == name
    assert desc["EndpointMetadata"]["EndpointStatus"] == "InService"
    assert [(v["VariantName"], v["Status"]) for v in desc["ModelVariants"]] == [
        ("AllTraffic", "InService"), ("Shadow", "InService")]
    assert desc["ShadowModeConfig"]["ShadowModelVariants"][0]["SamplingPercentage"] == 100
    assert desc["Schedule"]["EndTime"] - desc["Schedule"]["StartTime"] == dt.timedelta(days=7)
    assert desc["Description"] == "green beside blue"
    shadowed = sm.describe_endpoint(EndpointName=endpoint)
    assert [v["VariantName"] for v in shadowed["ShadowProductionVariants"]] == ["Shadow"]

    # Production answers; the shadow's copies are compared (and disagree: they are different models).
    calls = 10
    for _ in range(calls):
        assert _answer(rt, endpoint) == ("blue", "AllTraffic")

    def shadow_stats() -> dict[str, Any]:
        (shadow,) = srv.native_endpoint(endpoint)["ShadowVariants"]
        return shadow["Shadow"]

    wait_until(lambda: shadow_stats()["Compared"] == calls, 60, what="the shadow's copies to be compared")
    assert shadow_stats()["AgreementExact"] == 0.0 and shadow_stats()["Errors"] == 0

    listed = sm.list_inference_experiments(StatusEquals="Running")["InferenceExperiments"]
    assert [(e["Name"], e["Type"], e["Status"]) for e in listed] == [(name, "ShadowMode", "Running")]

    # Promote under steady traffic: the shadow's model becomes production, and no request fails.
    with SteadyTraffic(srv, endpoint, "model", body=b"1,2") as traffic:
        wait_until(lambda: len(traffic.answers) > 5, 30, what="traffic to flow")
        sm.stop_inference_experiment(Name=name, ModelVariantActions={"AllTraffic": "Remove", "Shadow": "Promote"})
        done = wait_until(lambda: (d := sm.describe_inference_experiment(Name=name))["Status"] == "Completed" and d,
                          120, what="the promotion to complete")
        seen = len(traffic.answers)
        wait_until(lambda: len(traffic.answers) > seen + 5, 30, what="traffic after the promotion")
    assert traffic.failures == []
    assert traffic.answers[0] == "blue" and traffic.answers[-1] == "green"
    assert [(v["VariantName"], v["Status"]) for v in done["ModelVariants"]] == [
        ("AllTraffic", "Deleted"), ("Shadow", "InService")]
    assert done["CompletionTime"] >= done["CreationTime"]
    promoted = sm.describe_endpoint(EndpointName=endpoint)
    assert [v["VariantName"] for v in promoted["ProductionVariants"]] == ["Shadow"]
    assert "ShadowProductionVariants" not in promoted
    assert _answer(rt, endpoint) == ("green", "Shadow")
    _refused(lambda: sm.stop_inference_experiment(Name=name, ModelVariantActions={"Shadow": "Retain"}),
             "ConflictException")

    # A second experiment, scheduled for later: Created; updated (sampling, description); started by hand.
    second = new_name("shadowtest")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    sm.create_inference_experiment(**_experiment(second, endpoint, ("Shadow", green), ("Challenger", blue), 100,
                                                 Schedule={"StartTime": later}))
    assert sm.describe_inference_experiment(Name=second)["Status"] == "Created"
    assert sm.describe_endpoint(EndpointName=endpoint)["EndpointStatus"] == "InService"  # untouched until it starts
    sm.update_inference_experiment(Name=second, Description="half of the traffic", ShadowModeConfig={
        "SourceModelVariantName": "Shadow",
        "ShadowModelVariants": [{"ShadowModelVariantName": "Challenger", "SamplingPercentage": 50}]})
    sm.start_inference_experiment(Name=second)
    running = wait_until(lambda: (d := sm.describe_inference_experiment(Name=second))["Status"] == "Running" and d,
                         120, what="the second experiment to run")
    assert running["Description"] == "half of the traffic"
    (challenger,) = sm.describe_endpoint(EndpointName=endpoint)["ShadowProductionVariants"]
    assert challenger["VariantName"] == "Challenger" and challenger["CurrentWeight"] == 0.5

    # Remove: back to production alone.
    sm.stop_inference_experiment(Name=second, ModelVariantActions={"Shadow": "Retain", "Challenger": "Remove"},
                                 DesiredState="Cancelled", Reason="enough seen")
    ended = wait_until(lambda: (d := sm.describe_inference_experiment(Name=second))["Status"] == "Cancelled" and d,
                       120, what="the shadow's removal")
    assert ended["StatusReason"] == "enough seen"
    assert [(v["VariantName"], v["Status"]) for v in ended["ModelVariants"]] == [
        ("Shadow", "InService"), ("Challenger", "Deleted")]
    final = sm.describe_endpoint(EndpointName=endpoint)
    assert "ShadowProductionVariants" not in final and final["EndpointStatus"] == "InService"
    assert [v["VariantName"] for v in final["ProductionVariants"]] == ["Shadow"]
    assert _answer(rt, endpoint) == ("green", "Shadow")

    # An EndTime that passes ends the experiment (whatever state it has reached): the shadow is removed.
    third = new_name("shadowtest")
    sm.create_inference_experiment(**_experiment(third, endpoint, ("Shadow", green), ("Challenger", blue), 100,
                                                 Schedule={"EndTime": dt.datetime.now(dt.UTC)
                                                           + dt.timedelta(seconds=3)}))
    expired = wait_until(lambda: (d := sm.describe_inference_experiment(Name=third))["Status"] == "Completed" and d,
                         120, what="the EndTime to end the experiment")
    assert "EndTime" in expired["StatusReason"]
    assert "ShadowProductionVariants" not in sm.describe_endpoint(EndpointName=endpoint)
    assert _answer(rt, endpoint) == ("green", "Shadow")

    # Listing: filters and pages.
    first_page = sm.list_inference_experiments(MaxResults=2, SortBy="Name", SortOrder="Ascending")
    second_page = sm.list_inference_experiments(MaxResults=2, SortBy="Name", SortOrder="Ascending",
                                                NextToken=first_page["NextToken"])
    assert [e["Name"] for e in first_page["InferenceExperiments"] + second_page["InferenceExperiments"]] == sorted(
        [name, second, third])
    assert "NextToken" not in second_page
    completed = sm.list_inference_experiments(StatusEquals="Completed", SortBy="Name", SortOrder="Ascending")
    assert [e["Name"] for e in completed["InferenceExperiments"]] == sorted([name, third])
    assert sm.delete_inference_experiment(Name=third)["InferenceExperimentArn"].endswith(third)
    _refused(lambda: sm.describe_inference_experiment(Name=third), "ResourceNotFound")
    dep.cleanup()
