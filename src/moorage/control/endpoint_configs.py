"""Endpoint configs: which models serve an endpoint, as production variants with weights and sizes."""

from __future__ import annotations

from typing import Any

from moorage.capture import CaptureConfig
from moorage.control.async_config import AsyncConfig
from moorage.control.context import ENDPOINT_CONFIG, MODEL, Context
from moorage.control.paging import list_query, page
from moorage.control.resources import check_instance_quota, put_tags
from moorage.control.routing_experiments import check_routing_tags
from moorage.control.times import timestamp
from moorage.errors import ValidationException
from moorage.metrics.service import PUBLISH_FREQUENCIES
from moorage.serving.serverless import MAX_CONCURRENCY, MEMORY_SIZES_MB
from moorage.store.metadata import AlreadyExists


class EndpointConfigs:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def create_endpoint_config(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointConfigName"]
        variants = [dict(v) for v in req["ProductionVariants"]]
        shadows = [dict(v) for v in req.get("ShadowProductionVariants") or []]
        seen: set[str] = set()
        for variant in (*variants, *shadows):
            vname = variant["VariantName"]
            if vname in seen:
                raise ValidationException(
                    f"Duplicate VariantName '{vname}' in ProductionVariants and ShadowProductionVariants.")
            seen.add(vname)
            if not variant.get("ModelName"):
                raise ValidationException(f"Variant '{vname}' needs a ModelName.")
            if self.ctx.store.get(MODEL, variant["ModelName"]) is None:
                raise ValidationException(
                    f'Could not find model "{self.ctx.arn(MODEL, variant["ModelName"])}".')
            if variant.get("ServerlessConfig"):
                check_serverless(variant, shadow=variant in shadows)
                if req.get("AsyncInferenceConfig"):
                    raise ValidationException(
                        "AsyncInferenceConfig is not supported for an endpoint configuration with serverless "
                        f"variants (variant '{vname}' has a ServerlessConfig).")
            elif not variant.get("InitialInstanceCount"):
                raise ValidationException(f"Variant '{vname}' needs an InitialInstanceCount of at least 1.")
            else:
                check_instance_quota(self.ctx, variant["InitialInstanceCount"],
                                     f"Variant '{vname}': InitialInstanceCount")
            if variant.get("InitialVariantWeight") is None:  # absent, or null in a hand-written request
                variant["InitialVariantWeight"] = 1.0
            weight = variant["InitialVariantWeight"]
            if not isinstance(weight, int | float) or weight < 0:
                raise ValidationException(f"Variant '{vname}' has a negative InitialVariantWeight.")
        frequency = (req.get("MetricsConfig") or {}).get("MetricPublishFrequencyInSeconds")
        if frequency is not None and frequency not in PUBLISH_FREQUENCIES:
            raise ValidationException(
                f"MetricsConfig.MetricPublishFrequencyInSeconds: {frequency} is not one of "
                f"{', '.join(map(str, PUBLISH_FREQUENCIES))}.")
        if req.get("DataCaptureConfig"):
            CaptureConfig.parse(req["DataCaptureConfig"])  # raises ValidationException saying what is wrong
        if req.get("AsyncInferenceConfig"):
            AsyncConfig.parse(req["AsyncInferenceConfig"])  # likewise
        check_routing_tags([(t["Key"], t.get("Value", "")) for t in req.get("Tags") or []], req)
        arn = self.ctx.arn(ENDPOINT_CONFIG, name)
        body = {k: v for k, v in req.items() if k != "Tags"}
        body["ProductionVariants"] = variants
        if shadows:
            body["ShadowProductionVariants"] = shadows
        try:
            self.ctx.store.create(ENDPOINT_CONFIG, name, arn, body)
        except AlreadyExists as exc:
            raise ValidationException(f'Cannot create already existing endpoint configuration "{arn}".') from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        return {"EndpointConfigArn": arn}

    def get(self, name: str) -> dict[str, Any]:
        row = self.ctx.store.get(ENDPOINT_CONFIG, name)
        if row is None:
            raise ValidationException(
                f'Could not find endpoint configuration "{self.ctx.arn(ENDPOINT_CONFIG, name)}".')
        return row.body

    async def describe_endpoint_config(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointConfigName"]
        row = self.ctx.store.get(ENDPOINT_CONFIG, name)
        if row is None:
            raise ValidationException(
                f'Could not find endpoint configuration "{self.ctx.arn(ENDPOINT_CONFIG, name)}".')
        return {**row.body, "EndpointConfigArn": row.arn, "CreationTime": timestamp(row.created_at)}

    async def list_endpoint_configs(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query(req)
        rows, token = page(self.ctx.store.list(ENDPOINT_CONFIG, query), query)
        out: dict[str, Any] = {"EndpointConfigs": [
            {"EndpointConfigName": r.name, "EndpointConfigArn": r.arn, "CreationTime": timestamp(r.created_at)}
            for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    async def delete_endpoint_config(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["EndpointConfigName"]
        if not self.ctx.store.delete(ENDPOINT_CONFIG, name):
            raise ValidationException(
                f'Could not find endpoint configuration "{self.ctx.arn(ENDPOINT_CONFIG, name)}".')
        return {}


def check_serverless(variant: dict[str, Any], shadow: bool = False) -> None:
    """A serverless variant as SageMaker checks it: ServerlessConfig instead of InstanceType and
    InitialInstanceCount, memory in whole gigabytes, provisioned concurrency within the maximum."""
    vname = variant["VariantName"]
    config = variant["ServerlessConfig"]
    if shadow:
        raise ValidationException(f"Shadow variant '{vname}': ServerlessConfig is not supported for shadow variants.")
    given = [f for f in ("InstanceType", "InitialInstanceCount") if variant.get(f) is not None]
    if given:
        raise ValidationException(
            f"Variant '{vname}': {' and '.join(given)} must not be specified together with ServerlessConfig.")
    memory = config["MemorySizeInMB"]
    if memory not in MEMORY_SIZES_MB:
        raise ValidationException(
            f"Variant '{vname}': ServerlessConfig.MemorySizeInMB {memory} is not one of "
            f"{', '.join(map(str, MEMORY_SIZES_MB))}.")
    maximum = config["MaxConcurrency"]
    if not 1 <= maximum <= MAX_CONCURRENCY:
        raise ValidationException(
            f"Variant '{vname}': ServerlessConfig.MaxConcurrency {maximum} must be between 1 and {MAX_CONCURRENCY}.")
    provisioned = config.get("ProvisionedConcurrency")
    if provisioned is not None and not 1 <= provisioned <= maximum:
        raise ValidationException(
            f"Variant '{vname}': ServerlessConfig.ProvisionedConcurrency {provisioned} must be between 1 and "
            f"MaxConcurrency ({maximum}).")
