"""Models: a container (image + model data + environment) that endpoint configs refer to by name."""

from __future__ import annotations

from typing import Any

from moorage.control.common import MODEL, Context, list_query, page, put_tags, timestamp
from moorage.errors import ValidationException
from moorage.runtimes.frameworks import FRAMEWORK_CLASSES
from moorage.runtimes.registry import UnsupportedImage, missing_packages, resolve_image, supported_images
from moorage.store.artifacts import ArtifactError, describe
from moorage.store.metadata import AlreadyExists


def primary_container(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("PrimaryContainer"):
        return body["PrimaryContainer"]
    containers = body.get("Containers") or []
    if len(containers) == 1:
        return containers[0]
    raise ValidationException("A model needs a PrimaryContainer (or exactly one entry in Containers).")


def model_data_url(container: dict[str, Any]) -> str | None:
    if container.get("ModelDataUrl"):
        return container["ModelDataUrl"]
    source = (container.get("ModelDataSource") or {}).get("S3DataSource")
    return source.get("S3Uri") if source else None


class Models:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    async def create_model(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ModelName"]
        containers = req.get("Containers") or []
        if req.get("PrimaryContainer") and containers:
            raise ValidationException("Specify either PrimaryContainer or Containers, not both.")
        if len(containers) > 1:
            raise ValidationException(
                "Serial inference pipelines (more than one entry in Containers) are not supported yet.")
        container = primary_container(req)
        if container.get("Mode") == "MultiModel":
            raise ValidationException("Multi-model endpoints (Mode MultiModel) are not supported yet.")
        if not container.get("Image"):
            raise ValidationException("The container needs an Image (for example 'sklearn' or a SageMaker "
                                      "framework image URI).")
        try:
            spec = resolve_image(container["Image"])
        except UnsupportedImage as exc:
            raise ValidationException(str(exc)) from exc
        if spec.name not in FRAMEWORK_CLASSES:
            raise ValidationException(f"The {spec.name} runtime is not available in this moorage version. "
                                      f"Supported images: {supported_images()}.")
        missing = missing_packages(spec)
        if missing:
            raise ValidationException(missing)
        url = model_data_url(container)
        if url:
            try:
                describe(url)
            except ArtifactError as exc:
                raise ValidationException(str(exc)) from exc
        arn = self.ctx.arn(MODEL, name)
        body = {k: v for k, v in req.items() if k != "Tags"}
        try:
            self.ctx.store.create(MODEL, name, arn, body)
        except AlreadyExists as exc:
            raise ValidationException(f'Cannot create already existing model "{arn}".') from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        return {"ModelArn": arn}

    def get(self, name: str) -> dict[str, Any]:
        row = self.ctx.store.get(MODEL, name)
        if row is None:
            raise ValidationException(f'Could not find model "{self.ctx.arn(MODEL, name)}".')
        return row.body

    async def describe_model(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ModelName"]
        row = self.ctx.store.get(MODEL, name)
        if row is None:
            raise ValidationException(f'Could not find model "{self.ctx.arn(MODEL, name)}".')
        return {**row.body, "ModelArn": row.arn, "CreationTime": timestamp(row.created_at),
                "DeploymentRecommendation": {"RecommendationStatus": "NOT_APPLICABLE"}}

    async def list_models(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query(req)
        rows, token = page(self.ctx.store.list(MODEL, query), query)
        out: dict[str, Any] = {"Models": [
            {"ModelName": r.name, "ModelArn": r.arn, "CreationTime": timestamp(r.created_at)} for r in rows]}
        if token:
            out["NextToken"] = token
        return out

    async def delete_model(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["ModelName"]
        if not self.ctx.store.delete(MODEL, name):
            raise ValidationException(f'Could not find model "{self.ctx.arn(MODEL, name)}".')
        return {}
