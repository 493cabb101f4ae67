"""What every control-plane resource shares: its context, ARNs, times, list paging, tags."""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from moorage.config import Settings
from moorage.errors import ValidationException
from moorage.serving.manager import ServingManager
from moorage.store.artifacts import ArtifactStore
from moorage.store.metadata import ListQuery, MetadataStore, Resource

if TYPE_CHECKING:
    from moorage.metrics.service import MetricsService

MODEL = "model"
ENDPOINT_CONFIG = "endpoint-config"
ENDPOINT = "endpoint"


@dataclass
class Context:
    settings: Settings
    store: MetadataStore
    artifacts: ArtifactStore
    manager: ServingManager
    # Time series, business metrics and alarms (``ctx.metrics.statistics(...)``); set by the app.
    metrics: MetricsService | None = None

    def arn(self, kind: str, name: str) -> str:
        # SageMaker lower-cases resource names inside ARNs.
        return f"arn:aws:sagemaker:{self.settings.region}:{self.settings.account_id}:{kind}/{name.lower()}"


def timestamp(epoch: float | None) -> dt.datetime | None:
    return None if epoch is None else dt.datetime.fromtimestamp(epoch, tz=dt.UTC)


def epoch(value: Any) -> float | None:
    """A request timestamp (epoch number or ISO string, as the JSON protocol allows) in epoch seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.datetime):
        parsed = value
    else:
        try:
            parsed = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise ValidationException(f"Invalid timestamp: {value!r}") from exc
    # Like botocore, a timestamp without an offset is UTC, never the server's local time.
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)).timestamp()


_SORT_COLUMNS = {"Name": "name", "CreationTime": "created_at", "Status": "status"}


def list_query(req: dict[str, Any], default_max: int = 10) -> ListQuery:
    """The filters, order and page that a SageMaker List* request asks for."""
    sort_by = _SORT_COLUMNS.get(req.get("SortBy", "CreationTime"), "created_at")
    max_results = int(req.get("MaxResults") or default_max)
    offset = 0
    if req.get("NextToken"):
        try:
            offset = int(orjson.loads(base64.urlsafe_b64decode(req["NextToken"].encode()))["offset"])
            if offset < 0:
                raise ValueError(offset)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValidationException("Invalid pagination token: NextToken is not one this server issued.") from exc
    return ListQuery(
        name_contains=req.get("NameContains"),
        status=req.get("StatusEquals"),
        created_after=epoch(req.get("CreationTimeAfter")),
        created_before=epoch(req.get("CreationTimeBefore")),
        modified_after=epoch(req.get("LastModifiedTimeAfter")),
        modified_before=epoch(req.get("LastModifiedTimeBefore")),
        sort_by=sort_by,
        descending=req.get("SortOrder", "Descending") == "Descending",
        offset=offset,
        limit=max_results + 1,  # one more than a page tells whether there is a next page
    )


def page(rows: list[Resource], query: ListQuery) -> tuple[list[Resource], str | None]:
    assert query.limit is not None
    size = query.limit - 1
    if len(rows) <= size:
        return rows, None
    token = base64.urlsafe_b64encode(orjson.dumps({"offset": query.offset + size})).decode()
    return rows[:size], token


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
