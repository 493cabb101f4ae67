"""An endpoint's rollout: where its update is, the traffic steps so far, its baking alarms, and the
DeploymentConfig a form asks for.

The update's own record is the endpoint row's ``UpdateHistory`` (``control/blue_green.py``): its
target config, phase, the new fleet's share of the traffic and every phase it went through; the row's
status says whether it is still running (``Updating``, ``RollingBack``) and ``PendingDeploymentSummary``
what DescribeEndpoint shows of it. A rollback is shown as one: the ``RollingBack`` and ``RolledBack``
phases, and the FailureReason the update left.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import Any

from moorage.control.deployment_config import ALL_AT_ONCE, CANARY, CAPACITY_PERCENT, INSTANCE_COUNT, LINEAR
from moorage.errors import ValidationException
from moorage.store.metadata import Resource

IN_FLIGHT = ("Updating", "RollingBack")
ROLLBACK_PHASES = ("RollingBack", "RolledBack")
# The note the dashboard keeps in an endpoint's row of the config it left when it started an update
# there, so that "roll back" knows where to go back to (UpdateHistory names only the target).
PREVIOUS_CONFIG = "PreviousEndpointConfigName"
MAX_WAIT_S = 3600  # botocore's model bounds WaitIntervalInSeconds to 3600; the form is not shaped by it
POLICIES = (ALL_AT_ONCE, CANARY, LINEAR)


def _clock(epoch: float | None) -> str:
    if not epoch:
        return "-"
    return dt.datetime.fromtimestamp(float(epoch), tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def outcome(status: str, update: Mapping[str, Any] | None) -> str:
    """In words: running, rolling back, rolled back, completed, or none."""
    if not update:
        return "no update has run"
    phase = update.get("Phase")
    if status == "RollingBack" or phase == "RollingBack":
        return "rolling back"
    if status in IN_FLIGHT:
        return "in progress"
    if phase == "RolledBack":
        return "rolled back"
    if phase == "Completed":
        return "completed"
    return str(phase or "unknown").lower()


def rollout_summary(row: Resource) -> dict[str, Any]:
    """One line of the rollouts list."""
    update = row.body.get("UpdateHistory") or {}
    return {"name": row.name, "status": row.status, "config": row.body.get("EndpointConfigName"),
            "target": update.get("EndpointConfigName"), "phase": update.get("Phase"),
            "green_share": float(update.get("GreenShare") or 0.0), "outcome": outcome(row.status, update),
            "started": _clock(update.get("StartTime")), "in_flight": row.status in IN_FLIGHT}


def rollout_view(row: Resource, alarm_state: Callable[[str], str | None]) -> dict[str, Any]:
    """Everything the rollout page shows of ``row``'s last (or running) update."""
    body = row.body
    update = body.get("UpdateHistory") or {}
    pending = body.get("PendingDeploymentSummary") or {}
    steps = [{"time": _clock(h.get("Time")), "epoch": h.get("Time"), "phase": h.get("Phase"),
              "share": float(h.get("GreenShare") or 0.0), "message": h.get("Message", ""),
              "rollback": h.get("Phase") in ROLLBACK_PHASES}
             for h in update.get("History") or []]
    alarms = [{"name": name, "state": alarm_state(name) or "missing"} for name in update.get("Alarms") or []]
    pending_variants = [{"name": v.get("VariantName"),
                         "statuses": [s.get("Status") for s in v.get("VariantStatus") or []],
                         "desired": v.get("DesiredInstanceCount"), "current": v.get("CurrentInstanceCount")}
                        for v in pending.get("ProductionVariants") or []]
    routing = (((body.get("LastDeploymentConfig") or {}).get("BlueGreenUpdatePolicy") or {})
               .get("TrafficRoutingConfiguration") or {})
    return {"name": row.name, "status": row.status, "config": body.get("EndpointConfigName"),
            "failure_reason": body.get("FailureReason"), "in_flight": row.status in IN_FLIGHT,
            "current_update": {"target": update.get("EndpointConfigName"), "phase": update.get("Phase"),
                       "green_share": float(update.get("GreenShare") or 0.0),
                       "started": _clock(update.get("StartTime"))} if update else None,
            "outcome": outcome(row.status, update), "rolled_back": any(s["rollback"] for s in steps),
            "steps": steps, "alarms": alarms,
            "pending": {"config": pending.get("EndpointConfigName"), "variants": pending_variants} if pending
            else None,
            "last_policy": routing.get("Type"), "previous_config": body.get(PREVIOUS_CONFIG)}


def traffic_series(update: Mapping[str, Any] | None, now: float | None = None) -> dict[str, Any]:
    """The new fleet's share of the traffic (percent) over the update, as a chart's JSON: a step at each
    phase (the share it had up to that moment, then the new one), and, while it runs, now."""
    xs: list[float] = []
    values: list[float | None] = []
    share = 0.0
    for step in (update or {}).get("History") or []:
        t, new = float(step["Time"]), float(step.get("GreenShare") or 0.0) * 100
        if xs and new != share:
            xs.append(t)
            values.append(share)
        xs.append(t)
        values.append(new)
        share = new
    if xs and now is not None and now > xs[-1]:
        xs.append(now)
        values.append(share)
    return {"x": xs, "series": [{"label": "new fleet's share of the traffic", "values": values}]}


def _whole(form: Mapping[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    raw = str(form.get(key) or "").strip()
    if not raw:
        if default is None:
            raise ValidationException(f"{key} is required.")
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ValidationException(f"{key} must be a whole number, not {raw!r}.") from exc
    if not low <= value <= high:
        raise ValidationException(f"{key} must be between {low} and {high}.")
    return value


def deployment_config(form: Mapping[str, Any], alarms: list[str]) -> dict[str, Any]:
    """UpdateEndpoint's DeploymentConfig from the update form: the policy (all at once, canary with its
    size, linear with its step), the wait between steps, the final bake and the rollback alarms.

    The update's own check (``DeploymentPlan.parse``) still runs; this only turns fields into the document."""
    policy = str(form.get("policy") or ALL_AT_ONCE)
    if policy not in POLICIES:
        raise ValidationException(f"policy must be one of {', '.join(POLICIES)}.")
    routing: dict[str, Any] = {"Type": policy, "WaitIntervalInSeconds": _whole(form, "wait", 0, MAX_WAIT_S, 0)}
    if policy in (CANARY, LINEAR):
        size_type = str(form.get("size_type") or CAPACITY_PERCENT)
        if size_type not in (INSTANCE_COUNT, CAPACITY_PERCENT):
            raise ValidationException(f"size_type must be {INSTANCE_COUNT} or {CAPACITY_PERCENT}.")
        size = {"Type": size_type, "Value": _whole(form, "size", 1, 100 if size_type == CAPACITY_PERCENT else 10_000)}
        routing["CanarySize" if policy == CANARY else "LinearStepSize"] = size
    config: dict[str, Any] = {"BlueGreenUpdatePolicy": {
        "TrafficRoutingConfiguration": routing,
        "TerminationWaitInSeconds": _whole(form, "termination_wait", 0, MAX_WAIT_S, 0)}}
    if alarms:
        config["AutoRollbackConfiguration"] = {"Alarms": [{"AlarmName": a} for a in alarms]}
    return config
