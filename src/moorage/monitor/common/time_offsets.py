"""ISO-8601 offsets and times: where a monitoring job's data window starts and ends.

``EndpointInput.StartTimeOffset``/``EndTimeOffset`` (``-PT1H``) and ``DataAnalysisStartTime``/
``DataAnalysisEndTime`` (an offset or a time) give it. The window is part of what a job analyses,
so it lives with the library; when a schedule fires is :mod:`moorage.control.schedule_expressions`'.
"""

from __future__ import annotations

import datetime as dt
import re

from moorage.errors import ValidationException

_DURATION = re.compile(
    r"^(?P<sign>[-+])?P(?:(?P<weeks>\d+(?:\.\d+)?)W)?(?:(?P<days>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<hours>\d+(?:\.\d+)?)H)?(?:(?P<minutes>\d+(?:\.\d+)?)M)?(?:(?P<seconds>\d+(?:\.\d+)?)S)?)?$",
    re.IGNORECASE)


def parse_offset(text: str) -> dt.timedelta:
    """``-PT1H`` -> minus one hour; ``-P1D``, ``-PT30M``, ``-PT0H``, ``PT5S``..."""
    match = _DURATION.match((text or "").strip())
    if not match or not any(match.group(k) for k in ("weeks", "days", "hours", "minutes", "seconds")):
        raise ValidationException(f"Invalid time offset {text!r}: give an ISO-8601 duration such as -PT1H or -P1D.")
    parts = {k: float(match.group(k) or 0) for k in ("weeks", "days", "hours", "minutes", "seconds")}
    delta = dt.timedelta(**parts)
    return -delta if match.group("sign") == "-" else delta


def parse_time_or_offset(text: str, reference: dt.datetime) -> dt.datetime:
    """``DataAnalysisStartTime``-like: an offset from ``reference`` (-PT1H) or an ISO-8601 UTC time."""
    stripped = (text or "").strip()
    if stripped.lstrip("+-").upper().startswith("P"):
        return reference + parse_offset(stripped)
    try:
        parsed = dt.datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValidationException(f"Invalid time {text!r}: give an ISO-8601 duration (-PT1H) or time.") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
