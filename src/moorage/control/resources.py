"""Changing a stored resource: merge fields into its body, attach its tags."""

from __future__ import annotations

from typing import Any

from moorage.control.context import Context
from moorage.errors import ValidationException
from moorage.store.metadata import MetadataStore


def save_changes(store: MetadataStore, kind: str, name: str, status: str | None = None, **changes: Any) -> None:
    """Set ``status`` and merge ``changes`` into a resource's body (a None value removes the key)."""
    row = store.get(kind, name)
    if row is None:
        return
    body = dict(row.body)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    store.update(kind, name, status=status, body=body)


def put_tags(ctx: Context, arn: str, tags: list[dict[str, str]] | None) -> None:
    if tags:
        ctx.store.put_tags(arn, [(t["Key"], t.get("Value", "")) for t in tags])


def check_instance_quota(ctx: Context, count: int, field: str) -> None:
    """ValidationException when ``count`` instances for one variant exceed the server's quota
    (``MOORAGE_MAX_INSTANCES_PER_VARIANT``): a typo of 2**31 must not start processes until the
    machine falls over."""
    quota = ctx.settings.instances.max_per_variant
    if count > quota:
        raise ValidationException(f"{field}: {count} is more than this server allows for one variant ({quota}; "
                                  f"MOORAGE_MAX_INSTANCES_PER_VARIANT).")
