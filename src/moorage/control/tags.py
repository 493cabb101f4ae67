"""Tags on any resource, addressed by ARN (AddTags, ListTags, DeleteTags)."""

from __future__ import annotations

from typing import Any

from moorage.control.context import ENDPOINT_CONFIG, Context
from moorage.control.routing_experiments import check_routing_tags
from moorage.errors import ValidationException


class Tags:
    def __init__(self, ctx: Context):
        self.ctx = ctx

    def _require(self, arn: str) -> None:
        if self.ctx.store.get_by_arn(arn) is None:
            raise ValidationException(f"Resource {arn} not found.")

    async def add_tags(self, req: dict[str, Any]) -> dict[str, Any]:
        self._require(req["ResourceArn"])
        pairs = [(t["Key"], t.get("Value", "")) for t in req["Tags"]]
        row = self.ctx.store.get_by_arn(req["ResourceArn"])
        if row is not None and row.kind == ENDPOINT_CONFIG:
            # Routing tags are read when a fleet of the config is built: refuse ones it could not use.
            merged = dict(self.ctx.store.get_tags(req["ResourceArn"]))
            merged.update(pairs)
            check_routing_tags(list(merged.items()), row.body)
        self.ctx.store.put_tags(req["ResourceArn"], pairs)
        return {"Tags": [{"Key": k, "Value": v} for k, v in self.ctx.store.get_tags(req["ResourceArn"])]}

    async def list_tags(self, req: dict[str, Any]) -> dict[str, Any]:
        self._require(req["ResourceArn"])
        return {"Tags": [{"Key": k, "Value": v} for k, v in self.ctx.store.get_tags(req["ResourceArn"])]}

    async def delete_tags(self, req: dict[str, Any]) -> dict[str, Any]:
        self._require(req["ResourceArn"])
        self.ctx.store.delete_tags(req["ResourceArn"], req["TagKeys"])
        return {}
