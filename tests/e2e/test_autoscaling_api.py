"""The Application Auto Scaling API with boto3: scalable targets, policies, activities, tags, errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import Deployer, MoorageServer, err_code, err_message, file_url, pack_model

pytestmark = pytest.mark.e2e

DIM = "sagemaker:variant:DesiredInstanceCount"


@pytest.fixture(scope="module")
def aas(server: MoorageServer) -> Any:
    return server.client("application-autoscaling")


@pytest.fixture(scope="module")
def endpoint(module_deployer: Deployer, artifacts: Path, classifier: tuple[Any, Any]) -> str:
    tar = pack_model(artifacts / "aas-clf", classifier[0])
    return module_deployer.deploy("aas", file_url(tar))


def _rid(endpoint: str, variant: str = "AllTraffic") -> str:
    return f"endpoint/{endpoint}/variant/{variant}"


def _policy(target: float = 70.0) -> dict[str, Any]:
    return {"TargetValue": target,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"},
            "ScaleOutCooldown": 60, "ScaleInCooldown": 300}


def _error(exc: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    return err_code(exc.value), err_message(exc.value)


def test_register_describe_update_deregister(aas: Any, endpoint: str) -> None:
    rid = _rid(endpoint)
    arn = aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                       MinCapacity=1, MaxCapacity=2)["ScalableTargetARN"]
    assert arn.startswith("arn:aws:application-autoscaling:")
    targets = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"]
    assert len(targets) == 1
    assert targets[0]["MinCapacity"] == 1 and targets[0]["MaxCapacity"] == 2
    assert targets[0]["ScalableTargetARN"] == arn and targets[0]["CreationTime"]
    # Registering again updates the bounds given and keeps the rest (and the ARN).
    again = aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                         MaxCapacity=3)["ScalableTargetARN"]
    assert again == arn
    target = aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"][0]
    assert (target["MinCapacity"], target["MaxCapacity"]) == (1, 3)

    policy_arn = aas.put_scaling_policy(PolicyName="seed", ServiceNamespace="sagemaker", ResourceId=rid,
                                        ScalableDimension=DIM, PolicyType="TargetTrackingScaling",
                                        TargetTrackingScalingPolicyConfiguration=_policy())["PolicyARN"]
    assert "policyName/seed" in policy_arn
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"]
    assert [p["PolicyName"] for p in policies] == ["seed"]
    config = policies[0]["TargetTrackingScalingPolicyConfiguration"]
    assert config["TargetValue"] == 70.0 and config["ScaleOutCooldown"] == 60 and config["DisableScaleIn"] is False
    # Put again with the same name: updated in place, same ARN.
    assert aas.put_scaling_policy(PolicyName="seed", ServiceNamespace="sagemaker", ResourceId=rid,
                                  ScalableDimension=DIM, PolicyType="TargetTrackingScaling",
                                  TargetTrackingScalingPolicyConfiguration=_policy(90))["PolicyARN"] == policy_arn
    policies = aas.describe_scaling_policies(ServiceNamespace="sagemaker", PolicyNames=["seed"],
                                             ResourceId=rid)["ScalingPolicies"]
    assert policies[0]["TargetTrackingScalingPolicyConfiguration"]["TargetValue"] == 90.0

    aas.delete_scaling_policy(PolicyName="seed", ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []
    aas.put_scaling_policy(PolicyName="again", ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                           PolicyType="TargetTrackingScaling", TargetTrackingScalingPolicyConfiguration=_policy())
    # Deregistering removes the target and its policies.
    aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)
    assert aas.describe_scalable_targets(ServiceNamespace="sagemaker", ResourceIds=[rid])["ScalableTargets"] == []
    assert aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingPolicies"] == []


def test_customized_metric_policy_is_accepted(aas: Any, endpoint: str) -> None:
    rid = _rid(endpoint)
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                 MinCapacity=1, MaxCapacity=2)
    try:
        aas.put_scaling_policy(
            PolicyName="cpu", ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
            PolicyType="TargetTrackingScaling",
            TargetTrackingScalingPolicyConfiguration={
                "TargetValue": 50.0,
                "CustomizedMetricSpecification": {
                    "MetricName": "CPUUtilization", "Namespace": "/aws/sagemaker/Endpoints", "Statistic": "Average",
                    "Dimensions": [{"Name": "EndpointName", "Value": endpoint},
                                   {"Name": "VariantName", "Value": "AllTraffic"}]},
                "ScaleInCooldown": 10, "ScaleOutCooldown": 5, "DisableScaleIn": True})
        policy = aas.describe_scaling_policies(ServiceNamespace="sagemaker", ResourceId=rid,
                                               PolicyNames=["cpu"])["ScalingPolicies"][0]
        spec = policy["TargetTrackingScalingPolicyConfiguration"]["CustomizedMetricSpecification"]
        assert spec["MetricName"] == "CPUUtilization" and len(spec["Dimensions"]) == 2
    finally:
        aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)


def test_errors_are_the_ones_boto3_expects(aas: Any, endpoint: str) -> None:
    rid = _rid(endpoint)
    with pytest.raises(ClientError) as exc:
        aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=_rid("no-such-endpoint"),
                                     ScalableDimension=DIM, MinCapacity=1, MaxCapacity=2)
    assert _error(exc)[0] == "ValidationException" and "no-such-endpoint" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=_rid(endpoint, "Nope"),
                                     ScalableDimension=DIM, MinCapacity=1, MaxCapacity=2)
    assert "Nope" in _error(exc)[1] and "AllTraffic" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                     MinCapacity=3, MaxCapacity=2)
    assert "greater than maximum" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)
    assert "required" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        aas.register_scalable_target(ServiceNamespace="ecs", ResourceId="service/c/s",
                                     ScalableDimension="ecs:service:DesiredCount", MinCapacity=1, MaxCapacity=2)
    assert "sagemaker" in _error(exc)[1]
    with pytest.raises(ClientError) as exc:
        aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId="endpoint/x", ScalableDimension=DIM,
                                     MinCapacity=1, MaxCapacity=2)
    assert "endpoint/<endpoint>/variant/<variant>" in _error(exc)[1]
    # Policies need a registered target: ObjectNotFoundException, as AWS says it.
    with pytest.raises(ClientError) as exc:
        aas.put_scaling_policy(PolicyName="p", ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                               PolicyType="TargetTrackingScaling", TargetTrackingScalingPolicyConfiguration=_policy())
    assert _error(exc)[0] == "ObjectNotFoundException"
    with pytest.raises(ClientError) as exc:
        aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)
    assert _error(exc)[0] == "ObjectNotFoundException"
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                 MinCapacity=1, MaxCapacity=2)
    try:
        with pytest.raises(ClientError) as exc:
            aas.put_scaling_policy(PolicyName="p", ServiceNamespace="sagemaker", ResourceId=rid,
                                   ScalableDimension=DIM, PolicyType="StepScaling",
                                   StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity"})
        assert "StepAdjustments" in _error(exc)[1]  # a step policy needs its steps
        with pytest.raises(ClientError) as exc:  # zero instances: only for asynchronous endpoints
            aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                         MinCapacity=0, MaxCapacity=2)
        assert "AsyncInferenceConfig" in _error(exc)[1]
        with pytest.raises(ClientError) as exc:
            aas.put_scaling_policy(PolicyName="p", ServiceNamespace="sagemaker", ResourceId=rid,
                                   ScalableDimension=DIM, PolicyType="TargetTrackingScaling",
                                   TargetTrackingScalingPolicyConfiguration={"TargetValue": 5.0})
        assert "exactly one" in _error(exc)[1]
        with pytest.raises(ClientError) as exc:
            aas.delete_scaling_policy(PolicyName="missing", ServiceNamespace="sagemaker", ResourceId=rid,
                                      ScalableDimension=DIM)
        assert _error(exc)[0] == "ObjectNotFoundException"
    finally:
        aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)


def test_tags_and_paging(aas: Any, module_deployer: Deployer, endpoint: str) -> None:
    rid = _rid(endpoint)
    arn = aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM,
                                       MinCapacity=1, MaxCapacity=2, Tags={"team": "search"})["ScalableTargetARN"]
    try:
        aas.tag_resource(ResourceARN=arn, Tags={"env": "dev"})
        assert aas.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"team": "search", "env": "dev"}
        aas.untag_resource(ResourceARN=arn, TagKeys=["team"])
        assert aas.list_tags_for_resource(ResourceARN=arn)["Tags"] == {"env": "dev"}
        with pytest.raises(ClientError) as exc:
            aas.list_tags_for_resource(ResourceARN=arn + "x")
        assert _error(exc)[0] == "ResourceNotFoundException"
        for i in range(3):
            aas.put_scaling_policy(PolicyName=f"p{i}", ServiceNamespace="sagemaker", ResourceId=rid,
                                   ScalableDimension=DIM, PolicyType="TargetTrackingScaling",
                                   TargetTrackingScalingPolicyConfiguration=_policy(50 + i))
        paginator = aas.get_paginator("describe_scaling_policies")
        pages = list(paginator.paginate(ServiceNamespace="sagemaker", ResourceId=rid,
                                        PaginationConfig={"PageSize": 2}))
        assert [len(p["ScalingPolicies"]) for p in pages] == [2, 1]
        assert sorted(p["PolicyName"] for page in pages for p in page["ScalingPolicies"]) == ["p0", "p1", "p2"]
        assert aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=rid)["ScalingActivities"] == []
    finally:
        aas.deregister_scalable_target(ServiceNamespace="sagemaker", ResourceId=rid, ScalableDimension=DIM)
