"""The Application Auto Scaling API (``X-Amz-Target: AnyScaleFrontendService.*``) for endpoint variants.

Scalable targets, target-tracking scaling policies and scaling activities are resources in the
store; ``autoscale/controller.py`` reads them every metrics period and resizes instance pools. Only
what SageMaker hosting uses is accepted: namespace ``sagemaker``, dimension
``sagemaker:variant:DesiredInstanceCount``, resource ids ``endpoint/NAME/variant/VARIANT`` and
``TargetTrackingScaling`` and ``StepScaling`` policies (a step policy runs while a CloudWatch alarm
whose ``AlarmActions`` name its ARN is in ALARM: SageMaker's pattern for bringing an asynchronous
endpoint back from zero instances on ``HasBacklogWithoutCapacity``). ``MinCapacity`` 0 is allowed for
endpoints with ``AsyncInferenceConfig``, as SageMaker allows it.
"""

from __future__ import annotations

import base64
import itertools
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, Context
from moorage.control.resources import check_instance_quota
from moorage.control.times import timestamp
from moorage.errors import ObjectNotFound, ScalingResourceNotFound, ValidationException
from moorage.store.metadata import AlreadyExists, ListQuery, Resource

SCALABLE_TARGET = "scalable-target"
SCALING_POLICY = "scaling-policy"
SCALING_ACTIVITY = "scaling-activity"

NAMESPACE = "sagemaker"
DIMENSION = "sagemaker:variant:DesiredInstanceCount"
TARGET_TRACKING = "TargetTrackingScaling"
STEP_SCALING = "StepScaling"  # run by CloudWatch alarms whose AlarmActions name the policy's ARN
ADJUSTMENT_TYPES = ("ChangeInCapacity", "PercentChangeInCapacity", "ExactCapacity")
INVOCATIONS_PER_INSTANCE = "SageMakerVariantInvocationsPerInstance"
# Application Auto Scaling's defaults for SageMaker variants when a policy leaves them out.
DEFAULT_COOLDOWN = 300
_STATISTICS = ("Average", "Minimum", "Maximum", "SampleCount", "Sum")


@dataclass(frozen=True)
class VariantId:
    endpoint: str
    variant: str

    @property
    def resource_id(self) -> str:
        return f"endpoint/{self.endpoint}/variant/{self.variant}"


def parse_resource_id(resource_id: str) -> VariantId:
    parts = resource_id.split("/")
    if len(parts) != 4 or parts[0] != "endpoint" or parts[2] != "variant" or not parts[1] or not parts[3]:
        raise ValidationException(
            f"Unsupported resource ID '{resource_id}': a SageMaker variant is 'endpoint/<endpoint>/variant/<variant>'.")
    return VariantId(parts[1], parts[3])


def target_key(resource_id: str, dimension: str = DIMENSION) -> str:
    return f"{resource_id}|{dimension}"


def policy_key(resource_id: str, policy_name: str, dimension: str = DIMENSION) -> str:
    return f"{resource_id}|{dimension}|{policy_name}"


def _page(items: list[dict[str, Any]], req: dict[str, Any], default_max: int = 50) -> tuple[list[dict], str | None]:
    offset = 0
    if req.get("NextToken"):
        try:
            offset = int(orjson.loads(base64.urlsafe_b64decode(req["NextToken"].encode()))["offset"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationException("Invalid NextToken: not one this server issued.") from exc
    size = int(req.get("MaxResults") or default_max)
    if not 1 <= size <= 50:
        raise ValidationException(f"MaxResults must be between 1 and 50, not {size}.")
    chunk = items[offset:offset + size]
    token = None
    if offset + size < len(items):
        token = base64.urlsafe_b64encode(orjson.dumps({"offset": offset + size})).decode()
    return chunk, token


class Scaling:
    """Handlers of the Application Auto Scaling operations moorage implements."""

    def __init__(self, ctx: Context):
        self.ctx = ctx

    def _autoscaling_arn(self, kind: str, rest: str) -> str:
        return f"arn:aws:{kind}:{self.ctx.settings.region}:{self.ctx.settings.account_id}:{rest}"

    @staticmethod
    def _check_namespace(req: dict[str, Any]) -> None:
        if req["ServiceNamespace"] != NAMESPACE:
            raise ValidationException(
                f"moorage scales SageMaker endpoint variants only: ServiceNamespace must be '{NAMESPACE}', "
                f"not '{req['ServiceNamespace']}'.")
        if req.get("ScalableDimension", DIMENSION) != DIMENSION:
            raise ValidationException(
                f"Unsupported scalable dimension '{req['ScalableDimension']}' for a SageMaker variant: "
                f"use '{DIMENSION}'.")

    def _require_target(self, resource_id: str) -> Resource:
        row = self.ctx.store.get(SCALABLE_TARGET, target_key(resource_id))
        if row is None:
            raise ObjectNotFound(
                f"No scalable target registered for service namespace: {NAMESPACE}, resource ID: {resource_id}, "
                f"scalable dimension: {DIMENSION}")
        return row

    def _require_variant(self, variant: VariantId) -> None:
        row = self.ctx.store.get(ENDPOINT, variant.endpoint)
        if row is None:
            raise ValidationException(f"The endpoint '{variant.endpoint}' does not exist.")
        names = {v["VariantName"] for v in row.body.get("ProductionVariants", [])}
        names |= {d.variant for d in self.ctx.store.desired(variant.endpoint)}
        if variant.variant not in names:
            raise ValidationException(
                f"The variant '{variant.variant}' does not exist in endpoint '{variant.endpoint}' "
                f"(it has {', '.join(sorted(names)) or 'no variants yet'}).")

    def _scales_to_zero(self, variant: VariantId) -> bool:
        """An asynchronous endpoint may go down to zero instances: its requests wait in its queue."""
        row = self.ctx.store.get(ENDPOINT, variant.endpoint)
        config = self.ctx.store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", "")) if row else None
        return bool(config and config.body.get("AsyncInferenceConfig"))

    def _refuse_serverless(self, variant: VariantId) -> None:
        row = self.ctx.store.get(ENDPOINT, variant.endpoint)
        config = self.ctx.store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", "")) if row else None
        for summary in (config.body.get("ProductionVariants") if config else None) or []:
            if summary["VariantName"] == variant.variant and summary.get("ServerlessConfig"):
                raise ValidationException(
                    f"The variant '{variant.variant}' of endpoint '{variant.endpoint}' is serverless: it has no "
                    f"instance count to scale ({DIMENSION}).")

    # Scalable targets -------------------------------------------------------------------------------
    async def register_scalable_target(self, req: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(req)
        resource_id = req["ResourceId"]
        variant = parse_resource_id(resource_id)
        key = target_key(resource_id)
        existing = self.ctx.store.get(SCALABLE_TARGET, key)
        body = dict(existing.body) if existing else {}
        if existing is None:
            self._require_variant(variant)
            self._refuse_serverless(variant)
            if "MinCapacity" not in req or "MaxCapacity" not in req:
                raise ValidationException(
                    "MinCapacity and MaxCapacity are required to register a scalable target for the first time.")
        for field in ("MinCapacity", "MaxCapacity", "RoleARN"):
            if field in req:
                body[field] = req[field]
        if "SuspendedState" in req:
            body["SuspendedState"] = {**body.get("SuspendedState", {}), **req["SuspendedState"]}
        if body["MinCapacity"] < 0 or (body["MinCapacity"] == 0 and not self._scales_to_zero(variant)):
            raise ValidationException(
                f"MinCapacity must be at least 1 for a SageMaker variant, not {body['MinCapacity']} (0 only for an "
                f"endpoint with AsyncInferenceConfig).")
        check_instance_quota(self.ctx, body["MaxCapacity"], "MaxCapacity")
        if body["MinCapacity"] > body["MaxCapacity"]:
            raise ValidationException(
                f"Minimum capacity {body['MinCapacity']} cannot be greater than maximum capacity "
                f"{body['MaxCapacity']}.")
        body.update(ServiceNamespace=NAMESPACE, ResourceId=resource_id, ScalableDimension=DIMENSION)
        if existing is None:
            arn = self._autoscaling_arn("application-autoscaling", f"scalable-target/{uuid.uuid4().hex[:24]}")
            body["ScalableTargetARN"] = arn
            try:
                self.ctx.store.create(SCALABLE_TARGET, key, arn, body)
            except AlreadyExists:  # registered concurrently: this call updates it instead
                self.ctx.store.update(SCALABLE_TARGET, key, body=body)
        else:
            self.ctx.store.update(SCALABLE_TARGET, key, body=body)
        if req.get("Tags"):
            self.ctx.store.put_tags(body["ScalableTargetARN"], list(req["Tags"].items()))
        return {"ScalableTargetARN": body["ScalableTargetARN"]}

    async def describe_scalable_targets(self, req: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(req)
        wanted = set(req.get("ResourceIds") or [])
        rows = [r for r in self.ctx.store.list(SCALABLE_TARGET, ListQuery(sort_by="created_at", descending=False))
                if not wanted or r.body["ResourceId"] in wanted]
        items = [{**r.body, "CreationTime": timestamp(r.created_at)} for r in rows]
        chunk, token = _page(items, req)
        out: dict[str, Any] = {"ScalableTargets": chunk}
        if token:
            out["NextToken"] = token
        return out

    async def deregister_scalable_target(self, req: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(req)
        row = self._require_target(req["ResourceId"])
        for policy in self._policies(req["ResourceId"]):
            self.ctx.store.delete(SCALING_POLICY, policy.name)
        self.ctx.store.delete(SCALABLE_TARGET, row.name)
        return {}

    # Scaling policies -------------------------------------------------------------------------------
    def _policies(self, resource_id: str | None = None) -> list[Resource]:
        rows = self.ctx.store.list(SCALING_POLICY, ListQuery(sort_by="created_at", descending=False))
        return [r for r in rows if resource_id is None or r.body["ResourceId"] == resource_id]

    async def put_scaling_policy(self, req: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(req)
        resource_id, name = req["ResourceId"], req["PolicyName"]
        variant = parse_resource_id(resource_id)
        self._require_target(resource_id)
        policy_type = req.get("PolicyType", STEP_SCALING)
        if policy_type == TARGET_TRACKING:
            config = req.get("TargetTrackingScalingPolicyConfiguration")
            if not config:
                raise ValidationException(
                    "TargetTrackingScalingPolicyConfiguration is required for a TargetTrackingScaling policy.")
            configuration = {"TargetTrackingScalingPolicyConfiguration": validated_target_tracking(config, variant)}
        elif policy_type == STEP_SCALING:
            config = req.get("StepScalingPolicyConfiguration")
            if not config:
                raise ValidationException("StepScalingPolicyConfiguration is required for a StepScaling policy.")
            configuration = {"StepScalingPolicyConfiguration": validated_step_scaling(config)}
        else:
            raise ValidationException(f"moorage supports PolicyType {TARGET_TRACKING} and {STEP_SCALING} for "
                                      f"SageMaker variants, not {policy_type}.")
        key = policy_key(resource_id, name)
        existing = self.ctx.store.get(SCALING_POLICY, key)
        body = {"PolicyName": name, "ServiceNamespace": NAMESPACE, "ResourceId": resource_id,
                "ScalableDimension": DIMENSION, "PolicyType": policy_type, **configuration, "Alarms": []}
        if existing is None:
            arn = self._autoscaling_arn(
                "autoscaling", f"scalingPolicy:{uuid.uuid4()}:resource/{NAMESPACE}/{resource_id}:policyName/{name}")
            body["PolicyARN"] = arn
            try:
                self.ctx.store.create(SCALING_POLICY, key, arn, body)
            except AlreadyExists:
                existing = self.ctx.store.get(SCALING_POLICY, key)
        if existing is not None:
            body["PolicyARN"] = existing.body["PolicyARN"]
            self.ctx.store.update(SCALING_POLICY, key, body=body)
        return {"PolicyARN": body["PolicyARN"], "Alarms": []}

    async def describe_scaling_policies(self, req: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(req)
        names = set(req.get("PolicyNames") or [])
        rows = [r for r in self._policies(req.get("ResourceId"))
                if not names or r.body["PolicyName"] in names]
        items = [{**r.body, "CreationTime": timestamp(r.created_at)} for r in rows]
        chunk, token = _page(items, req, default_max=10)
        out: dict[str, Any] = {"ScalingPolicies": chunk}
        if token:
            out["NextToken"] = token
        return out

    async def delete_scaling_policy(self, req: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(req)
        key = policy_key(req["ResourceId"], req["PolicyName"])
        if not self.ctx.store.delete(SCALING_POLICY, key):
            raise ObjectNotFound(
                f"No scaling policy found for service namespace: {NAMESPACE}, resource ID: {req['ResourceId']}, "
                f"scalable dimension: {DIMENSION}, policy name: {req['PolicyName']}")
        return {}

    # Scaling activities -----------------------------------------------------------------------------
    async def describe_scaling_activities(self, req: dict[str, Any]) -> dict[str, Any]:
        self._check_namespace(req)
        resource_id = req.get("ResourceId")
        query = ListQuery(name_contains=target_key(resource_id) + "|" if resource_id else None,
                          sort_by="created_at", descending=True)
        include_not_scaled = bool(req.get("IncludeNotScaledActivities"))
        items = []
        for row in self.ctx.store.list(SCALING_ACTIVITY, query):
            if resource_id and row.body["ResourceId"] != resource_id:
                continue
            if row.body.get("NotScaledReasons") and not include_not_scaled:
                continue
            item = dict(row.body)
            item["StartTime"] = timestamp(item["StartTime"])
            if item.get("EndTime") is not None:
                item["EndTime"] = timestamp(item["EndTime"])
            items.append(item)
        chunk, token = _page(items, req)
        out: dict[str, Any] = {"ScalingActivities": chunk}
        if token:
            out["NextToken"] = token
        return out

    # Tags on scalable targets -----------------------------------------------------------------------
    def _require_arn(self, arn: str) -> None:
        row = self.ctx.store.get_by_arn(arn)
        if row is None or row.kind != SCALABLE_TARGET:
            raise ScalingResourceNotFound(f"No scalable target found for ARN {arn}.", ResourceName=arn)

    async def tag_resource(self, req: dict[str, Any]) -> dict[str, Any]:
        self._require_arn(req["ResourceARN"])
        self.ctx.store.put_tags(req["ResourceARN"], list(req["Tags"].items()))
        return {}

    async def untag_resource(self, req: dict[str, Any]) -> dict[str, Any]:
        self._require_arn(req["ResourceARN"])
        self.ctx.store.delete_tags(req["ResourceARN"], req["TagKeys"])
        return {}

    async def list_tags_for_resource(self, req: dict[str, Any]) -> dict[str, Any]:
        self._require_arn(req["ResourceARN"])
        return {"Tags": dict(self.ctx.store.get_tags(req["ResourceARN"]))}


def validated_target_tracking(config: dict[str, Any], variant: VariantId) -> dict[str, Any]:
    """The policy configuration with AWS's defaults filled in, or a ValidationException saying why not."""
    predefined = config.get("PredefinedMetricSpecification")
    customized = config.get("CustomizedMetricSpecification")
    if bool(predefined) == bool(customized):
        raise ValidationException(
            "Specify exactly one of PredefinedMetricSpecification and CustomizedMetricSpecification.")
    if predefined and predefined["PredefinedMetricType"] != INVOCATIONS_PER_INSTANCE:
        raise ValidationException(
            f"Unsupported predefined metric {predefined['PredefinedMetricType']} for a SageMaker variant: "
            f"use {INVOCATIONS_PER_INSTANCE} or a CustomizedMetricSpecification.")
    if customized:
        if customized.get("Metrics"):
            raise ValidationException("Metric math (CustomizedMetricSpecification.Metrics) is not supported; "
                                      "name one metric with MetricName, Namespace, Dimensions and Statistic.")
        missing = [f for f in ("MetricName", "Namespace", "Statistic") if not customized.get(f)]
        if missing:
            raise ValidationException(f"CustomizedMetricSpecification needs {', '.join(missing)}.")
        if customized["Statistic"] not in _STATISTICS:
            raise ValidationException(f"Statistic must be one of {', '.join(_STATISTICS)}.")
    if config["TargetValue"] <= 0:
        raise ValidationException(f"TargetValue must be greater than 0, not {config['TargetValue']}.")
    out = dict(config)
    out.setdefault("ScaleOutCooldown", DEFAULT_COOLDOWN)
    out.setdefault("ScaleInCooldown", DEFAULT_COOLDOWN)
    out.setdefault("DisableScaleIn", False)
    for field in ("ScaleOutCooldown", "ScaleInCooldown"):
        if out[field] < 0:
            raise ValidationException(f"{field} must not be negative.")
    return out


def validated_step_scaling(config: dict[str, Any]) -> dict[str, Any]:
    """A StepScalingPolicyConfiguration with AWS's defaults, or a ValidationException saying what is wrong:
    an adjustment type, at least one step, intervals that do not overlap and leave at most one bound open
    on each side."""
    if config.get("AdjustmentType") not in ADJUSTMENT_TYPES:
        raise ValidationException(f"StepScalingPolicyConfiguration.AdjustmentType must be one of "
                                  f"{', '.join(ADJUSTMENT_TYPES)}, not {config.get('AdjustmentType')!r}.")
    steps = config.get("StepAdjustments") or []
    if not steps:
        raise ValidationException("StepScalingPolicyConfiguration.StepAdjustments needs at least one step.")
    bounds = []
    for step in steps:
        low, high = step.get("MetricIntervalLowerBound"), step.get("MetricIntervalUpperBound")
        if low is None and high is None and len(steps) > 1:
            raise ValidationException("A step with neither bound must be the only step adjustment.")
        if low is not None and high is not None and low >= high:
            raise ValidationException(f"Step adjustment bounds: the lower bound {low} must be less than the upper "
                                      f"bound {high}.")
        bounds.append((float("-inf") if low is None else low, float("inf") if high is None else high))
    bounds.sort()
    for (_, high), (low, _) in itertools.pairwise(bounds):
        if low < high:
            raise ValidationException("Step adjustments must not overlap.")
    if config.get("MinAdjustmentMagnitude") is not None and config["AdjustmentType"] != "PercentChangeInCapacity":
        raise ValidationException("MinAdjustmentMagnitude applies only to PercentChangeInCapacity.")
    if config.get("Cooldown", 0) < 0:
        raise ValidationException("Cooldown must not be negative.")
    out = dict(config)
    out.setdefault("Cooldown", DEFAULT_COOLDOWN)
    out.setdefault("MetricAggregationType", "Average")
    return out
