"""Timestamps as the JSON protocol carries them: epoch seconds in, timezone-aware datetimes out."""

from __future__ import annotations

import datetime as dt
from typing import Any

from moorage.errors import ValidationException


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
