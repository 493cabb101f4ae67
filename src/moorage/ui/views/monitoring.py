"""Monitoring as the monitoring page shows it: schedules, their executions, an execution's violations
and each feature's distribution, baseline against current.

An execution's row (``control/monitoring_scheduler.py``) says where its files are (``StatisticsUri``,
``ConstraintViolationsUri``, ``ReportUri``, all under ``OutputLocation``) and which features it found
drifted; the baseline is the ``statistics.json`` the schedule's job definition names. Both files carry
each numeric feature's distribution as KLL buckets (``monitor/common/formats.py``) over ranges of their
own, so both are spread onto one set of bins to be drawn together; string features carry their
values' counts. Files are read only from an execution's own output location (``report_location``).
"""

from __future__ import annotations

import datetime as dt
import posixpath
from collections.abc import Mapping
from typing import Any

from moorage.control.context import Context
from moorage.control.monitoring_scheduler import EXECUTION, SCHEDULE, MonitoringScheduler
from moorage.errors import ValidationException
from moorage.monitor.common.formats import load_json
from moorage.store import locations
from moorage.store.metadata import Resource

BINS = 24
TOP_VALUES = 12
FINISHED = ("Completed", "CompletedWithViolations", "Failed", "Stopped")


def _clock(epoch: Any) -> str:
    """Epoch seconds (or the ISO-8601 time a finished execution keeps instead) as UTC wall time."""
    if isinstance(epoch, str) and epoch:
        return epoch.replace("T", " ").removesuffix("Z")
    if not isinstance(epoch, int | float):
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def schedule_rows(ctx: Context) -> list[dict[str, Any]]:
    """Every monitoring schedule: status, endpoint, type, expression and its last execution."""
    out = []
    for row in ctx.store.list(SCHEDULE):
        config = row.body.get("MonitoringScheduleConfig") or {}
        last = ctx.store.get(EXECUTION, row.body.get("LastExecutionName") or "")
        inline = config.get("MonitoringJobDefinition") or {}
        endpoint = next((i["EndpointInput"].get("EndpointName") for i in inline.get("MonitoringInputs") or []
                         if "EndpointInput" in i), None) or (last.body.get("EndpointName") if last else None)
        out.append({"name": row.name, "status": row.status, "endpoint": endpoint,
                    "type": config.get("MonitoringType") or "DataQuality",
                    "expression": (config.get("ScheduleConfig") or {}).get("ScheduleExpression") or "on demand",
                    "last_execution": last.name if last else None, "last_status": last.status if last else None})
    return out


def execution_rows(ctx: Context, schedule: str, limit: int = 50) -> list[dict[str, Any]]:
    """A schedule's executions, newest first."""
    rows = [r for r in ctx.store.list(EXECUTION) if r.body.get("MonitoringScheduleName") == schedule]
    rows.sort(key=lambda r: (r.body.get("ScheduledTime", 0.0), r.created_at), reverse=True)
    return [execution_summary(r) for r in rows[:limit]]


def execution_summary(row: Resource) -> dict[str, Any]:
    body = row.body
    return {"name": row.name, "status": row.status, "schedule": body.get("MonitoringScheduleName"),
            "endpoint": body.get("EndpointName"), "type": body.get("MonitoringType") or "DataQuality",
            "scheduled": _clock(body.get("ScheduledTime")),
            "window": f"{_clock(body.get('WindowStart'))} to {_clock(body.get('WindowEnd'))}",
            "violations": body.get("Violations"), "violated": list(body.get("ViolatedFeatures") or []),
            "failure_reason": body.get("FailureReason"), "output": body.get("OutputLocation"),
            "files": [name for name, key in (("report.html", "ReportUri"), ("statistics.json", "StatisticsUri"),
                                             ("constraint_violations.json", "ConstraintViolationsUri"))
                      if body.get(key)],
            "finished": row.status in FINISHED}


def baseline_statistics_uri(scheduler: MonitoringScheduler | None, schedule: Resource | None) -> str | None:
    """Where the schedule's baseline statistics.json is (data quality only; None without one)."""
    if scheduler is None or schedule is None:
        return None
    try:
        definition, _ = scheduler.job_definition(schedule.body)
    except (ValidationException, KeyError):
        return None
    return definition.statistics_uri


def read_document(location: str | None) -> dict[str, Any] | None:
    """A JSON file, or None when there is none or it cannot be read (the page says so)."""
    if not location:
        return None
    try:
        return load_json(location)
    except (OSError, ValueError):
        return None


def violation_rows(document: Mapping[str, Any] | None) -> list[dict[str, str]]:
    return [{"feature": str(v.get("feature_name", "")), "check": str(v.get("constraint_check_type", "")),
             "description": str(v.get("description", ""))}
            for v in (document or {}).get("violations") or [] if isinstance(v, dict)]


def drifted_features(document: Mapping[str, Any] | None) -> set[str]:
    """The features constraint_violations.json names."""
    return {row["feature"] for row in violation_rows(document) if row["feature"]}


# -- distributions ------------------------------------------------------------------------------------
def _buckets(feature: Mapping[str, Any] | None) -> list[tuple[float, float, float]]:
    stats = (feature or {}).get("numerical_statistics") or {}
    kll = ((stats.get("distribution") or {}).get("kll") or {}).get("buckets") or []
    out = []
    for b in kll:
        try:
            out.append((float(b["lower_bound"]), float(b["upper_bound"]), float(b["count"])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def rebin(buckets: list[tuple[float, float, float]], edges: list[float]) -> list[float]:
    """Each bucket's count spread evenly over its range onto ``edges``' bins, as fractions of the total
    (a bucket of no width falls in the bin that holds its bound)."""
    counts = [0.0] * (len(edges) - 1)
    for low, high, count in buckets:
        if count <= 0:
            continue
        if high <= low:
            index = max(0, min(len(counts) - 1, next((i for i in range(len(counts)) if low < edges[i + 1]),
                                                     len(counts) - 1)))
            counts[index] += count
            continue
        for i in range(len(counts)):
            overlap = min(high, edges[i + 1]) - max(low, edges[i])
            if overlap > 0:
                counts[i] += count * overlap / (high - low)
    total = sum(counts)
    return [c / total for c in counts] if total > 0 else counts


def _categories(feature: Mapping[str, Any] | None) -> dict[str, float]:
    stats = (feature or {}).get("string_statistics") or {}
    buckets = ((stats.get("distribution") or {}).get("categorical") or {}).get("buckets") or []
    out: dict[str, float] = {}
    for b in buckets:
        if isinstance(b, dict) and isinstance(b.get("count"), int | float):
            out[str(b.get("value"))] = out.get(str(b.get("value")), 0.0) + float(b["count"])
    return out


def _fractions(counts: dict[str, float], keys: list[str]) -> list[float]:
    total = sum(counts.values())
    return [counts.get(k, 0.0) / total if total else 0.0 for k in keys]


def feature_distributions(baseline: Mapping[str, Any] | None, current: Mapping[str, Any] | None,
                          drifted: set[str], bins: int = BINS) -> list[dict[str, Any]]:
    """Per feature of the current statistics (then those only the baseline has): its distribution and
    the baseline's on the same bins (numbers) or values (strings), and whether it drifted. Drifted
    features come first."""
    base = {f.get("name"): f for f in (baseline or {}).get("features") or [] if isinstance(f, dict)}
    cur = {f.get("name"): f for f in (current or {}).get("features") or [] if isinstance(f, dict)}
    names = list(dict.fromkeys([*cur, *base]))
    out = []
    for name in names:
        b, c = base.get(name), cur.get(name)
        entry: dict[str, Any] = {"name": name, "drifted": name in drifted,
                                 "type": (c or b or {}).get("inferred_type", "Unknown"),
                                 "in_baseline": b is not None, "in_current": c is not None}
        b_buckets, c_buckets = _buckets(b), _buckets(c)
        if b_buckets or c_buckets:
            low = min(x[0] for x in (*b_buckets, *c_buckets))
            high = max(x[1] for x in (*b_buckets, *c_buckets))
            if high <= low:
                high = low + 1.0
            edges = [low + (high - low) * i / bins for i in range(bins + 1)]
            entry.update(kind="numeric", labels=[f"{e:.3g}" for e in edges[:-1]], edges=edges,
                         baseline=rebin(b_buckets, edges), current=rebin(c_buckets, edges))
        else:
            b_counts, c_counts = _categories(b), _categories(c)
            keys = sorted(set(b_counts) | set(c_counts), key=lambda k: (-(b_counts.get(k, 0) + c_counts.get(k, 0)), k))
            keys = keys[:TOP_VALUES]
            entry.update(kind="categorical" if keys else "none", labels=keys, edges=None,
                         baseline=_fractions(b_counts, keys), current=_fractions(c_counts, keys))
        entry["bars"] = bars(entry["baseline"], entry["current"]) if entry["kind"] != "none" else []
        entry["peak"] = max([*entry["baseline"], *entry["current"], 0.0])
        out.append(entry)
    out.sort(key=lambda e: not e["drifted"])
    return out


def bars(baseline: list[float], current: list[float], width: float = 320.0,
         height: float = 90.0) -> list[dict[str, Any]]:
    """Rectangles for an SVG of ``width`` x ``height``: per bin a baseline bar and a current one beside it,
    heights relative to the tallest."""
    count = max(len(baseline), len(current))
    peak = max([*baseline, *current, 0.0]) or 1.0
    slot = width / count if count else width
    rects = []
    for i in range(count):
        for j, (series, values) in enumerate((("baseline", baseline), ("current", current))):
            value = values[i] if i < len(values) else 0.0
            h = round(height * value / peak, 2)
            rects.append({"series": series, "x": round(i * slot + j * slot / 2, 2), "y": round(height - h, 2),
                          "width": round(max(slot / 2 - 0.5, 0.5), 2), "height": h, "value": value})
    return rects


# -- report files ---------------------------------------------------------------------------------------
def report_location(execution: Resource, relative: str) -> str:
    """Where ``relative`` is under the execution's output location; ValidationException for a path that
    would leave it (absolute, ``..``, empty) or an execution with no output."""
    output = execution.body.get("OutputLocation")
    if not output:
        raise ValidationException(f"Monitoring execution {execution.name} has no output location.")
    clean = posixpath.normpath(relative.replace("\\", "/"))
    if (not relative or relative.startswith("/") or clean.startswith("..") or clean in (".", "")
            or any(part == ".." for part in relative.replace("\\", "/").split("/"))
            or any(ch in relative for ch in "?#%\x00")):
        raise ValidationException(f"{relative!r} is not a file of the execution's output.")
    return locations.join(str(output), clean)
