"""SageMaker's List* requests: their filters and sort order as a store query, and NextToken paging."""

from __future__ import annotations

import base64
from typing import Any

import orjson

from moorage.control.times import epoch
from moorage.errors import ApiError, ValidationException
from moorage.store.metadata import ListQuery, Resource

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


def offset_token(offset: int) -> str:
    """A NextToken for the item at ``offset`` of a listing (CloudWatch's lists page this way)."""
    return base64.urlsafe_b64encode(orjson.dumps({"offset": offset})).decode()


def token_offset(token: str | None, error: type[ApiError] = ValidationException) -> int:
    """The offset a NextToken from ``offset_token`` stands for (0 for none); ``error`` for a token not issued here."""
    if not token:
        return 0
    try:
        offset = int(orjson.loads(base64.urlsafe_b64decode(token.encode()))["offset"])
    except (ValueError, KeyError, TypeError) as exc:
        raise error("Invalid NextToken: not one this server issued.") from exc
    if offset < 0:
        raise error("Invalid NextToken: not one this server issued.")
    return offset
