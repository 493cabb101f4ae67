"""The autoscaling loop: every metrics period, each scalable target's policies look at their metric and
the target's pool is resized through the same path as UpdateEndpointWeightsAndCapacities.

Each decision becomes a scaling activity (InProgress -> Successful | Failed) whose cause says which
metric, value, target and formula led to it; a decision the bounds stopped is recorded once as a
"not scaled" activity (``IncludeNotScaledActivities``). New instances take traffic only once their
``/ping`` says ready and removed ones drain first: that is the pool's job (``InstancePool.scale_to``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from moorage.autoscale.target_tracking import (
    SCALE_IN,
    SCALE_OUT,
    Decision,
    History,
    PolicyView,
    Proposal,
    Rules,
    StepAdjustment,
    StepPolicyView,
    decide,
    propose,
    propose_step,
)
from moorage.control.context import ENDPOINT, Context
from moorage.control.endpoints import IN_SERVICE, Endpoints
from moorage.control.scaling import (
    INVOCATIONS_PER_INSTANCE,
    SCALABLE_TARGET,
    SCALING_ACTIVITY,
    SCALING_POLICY,
    STEP_SCALING,
    TARGET_TRACKING,
    parse_resource_id,
)
from moorage.errors import ApiError
from moorage.serving.snapshot import VariantSnapshot
from moorage.store.metadata import ListQuery, Resource

log = logging.getLogger("moorage.autoscale")

SAGEMAKER_NAMESPACE = "AWS/SageMaker"
KEEP_ACTIVITIES = 500


class Datapoint(Protocol):
    timestamp: float
    value: float


class MetricReader(Protocol):
    def statistics(self, namespace: str, metric_name: str, dimensions: dict[str, str], statistic: str,
                   start: float, end: float, period: int) -> Sequence[Datapoint]: ...

    def publish_period(self, endpoint: str) -> int: ...


@dataclass
class _TargetState:
    history: History
    not_scaled: str | None = None  # the last "not scaled" reason recorded, to record each streak once
    busy: bool = False  # an activity is in progress
    evaluated_through: float | None = None  # the start of the last period its policies looked at


class ScalingController:
    def __init__(self, ctx: Context, endpoints: Endpoints, reader: MetricReader, period: int,
                 rules: Rules | None = None, settle_timeout: float = 600.0):
        self.ctx = ctx
        self.endpoints = endpoints
        self.reader = reader
        self.period = max(1, int(period))
        self.rules = rules or Rules()
        self.settle_timeout = settle_timeout
        self._states: dict[str, _TargetState] = {}
        self._live_since: dict[str, tuple[int, float]] = {}  # endpoint -> (its fleet, first seen)
        self._task: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    # Running ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._watchers) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _loop(self) -> None:
        while True:
            # Half a period past each boundary: the metrics of the period that just ended are flushed.
            now = time.time()
            await asyncio.sleep(self.period - (now % self.period) + self.period / 2)
            try:
                await self.tick(time.time())
            except Exception:
                log.exception("autoscaling pass failed")

    async def tick(self, now: float) -> None:
        for target in self.ctx.store.list(SCALABLE_TARGET, ListQuery(sort_by="created_at", descending=False)):
            try:
                await self._evaluate(target, now)
            except Exception:
                log.exception("autoscaling of %s failed", target.name)

    # One target -------------------------------------------------------------------------------------
    def _state(self, target: Resource) -> _TargetState:
        state = self._states.get(target.name)
        if state is None:
            state = _TargetState(self._history_from_store(target))
            self._states[target.name] = state
        return state

    def _history_from_store(self, target: Resource) -> History:
        """Cooldowns survive a restart: they are read back from the recorded activities."""
        history = History()
        for row in self._activities(target):
            private = row.body.get("moorage") or {}
            if row.body.get("StatusCode") not in ("Successful", "InProgress"):
                continue
            if private.get("direction") == SCALE_OUT and history.last_scale_out is None:
                history = replace(history, last_scale_out=row.body["StartTime"],
                                  capacity_before_scale_out=private.get("capacity_before"))
            elif private.get("direction") == SCALE_IN and history.last_scale_in is None:
                history = replace(history, last_scale_in=row.body["StartTime"])
        return history

    def _activities(self, target: Resource) -> list[Resource]:
        return self.ctx.store.list(SCALING_ACTIVITY, ListQuery(name_contains=target.name + "|", sort_by="created_at",
                                                               descending=True))

    async def _evaluate(self, target: Resource, now: float) -> None:
        state = self._state(target)
        if state.busy:
            return
        variant_id = parse_resource_id(target.body["ResourceId"])
        endpoint = self.ctx.store.get(ENDPOINT, variant_id.endpoint)
        snapshot = self.ctx.routes.snapshot(variant_id.endpoint)
        if endpoint is None or endpoint.status != IN_SERVICE or snapshot is None:
            return  # being created, updated or deleted: nothing to scale yet
        goal = next((d for d in self.ctx.store.desired(variant_id.endpoint) if d.variant == variant_id.variant), None)
        if goal is None or variant_id.variant not in snapshot.variants:
            return
        # A new fleet (a restart, an update) starts its own history of zero-invocation periods.
        seen = self._live_since.get(variant_id.endpoint)
        if seen is None or seen[0] != snapshot.fleet:
            self._live_since[variant_id.endpoint] = seen = (snapshot.fleet, now)
        capacity = goal.instance_count
        # An endpoint publishing less often than this loop runs (MetricPublishFrequencyInSeconds) is
        # looked at once per period of its own, never twice on the same data.
        period = math.lcm(self.period, self.reader.publish_period(variant_id.endpoint))
        last = self._last_complete(now, period)
        if state.evaluated_through == last:
            return
        state.evaluated_through = last
        policies = self.ctx.store.list(SCALING_POLICY, ListQuery(name_contains=target.name + "|", sort_by="created_at",
                                                                 descending=False))
        policies = [p for p in policies if p.body["ResourceId"] == target.body["ResourceId"]]
        suspended = target.body.get("SuspendedState") or {}
        floor = 0 if int(target.body["MinCapacity"]) == 0 else 1
        proposals: list[Proposal | None] = []
        tracking = [p for p in policies if p.body.get("PolicyType", TARGET_TRACKING) == TARGET_TRACKING]
        for policy in tracking:
            view = _policy_view(policy)
            values = self._values(policy, variant_id.endpoint, variant_id.variant, last, period, seen[1])
            proposals.append(propose(view, values, capacity, state.history, now, self.rules, floor))
        # Step policies act when an alarm naming them in its AlarmActions is in ALARM; a step that scales
        # in counts as its own agreement, so target tracking's "in only if all agree" is not blocked by
        # a step policy that has nothing to say.
        steps = [p for p in self._step_proposals(policies, capacity, state.history, now) if p is not None]
        proposals += steps
        voters = len(tracking) + sum(1 for p in steps if p.direction == SCALE_IN)
        proposals = [None if p is not None and suspended.get(
            "DynamicScalingOutSuspended" if p.direction == SCALE_OUT else "DynamicScalingInSuspended") else p
                     for p in proposals]
        decision = decide(proposals, voters, capacity, int(target.body["MinCapacity"]),
                          int(target.body["MaxCapacity"]))
        if decision is None:
            return
        if decision.clamped_reason is not None:
            if state.not_scaled != decision.clamped_reason:
                state.not_scaled = decision.clamped_reason
                self._record(target, decision, capacity, now, status="Failed",
                             not_scaled=True)
            return
        state.not_scaled = None
        await self._scale(target, state, variant_id.endpoint, variant_id.variant, decision, capacity, now)

    def _step_proposals(self, policies: list[Resource], capacity: int, history: History,
                        now: float) -> list[Proposal | None]:
        """What each step policy asks for, run by the alarms in ALARM whose actions name its ARN."""
        steps = [p for p in policies if p.body.get("PolicyType") == STEP_SCALING]
        if not steps or self.ctx.metrics is None:
            return []
        alarms = [a for a in self.ctx.metrics.alarms.list_alarms(state="ALARM") if a.get("ActionsEnabled", True)]
        out: list[Proposal | None] = []
        for policy in steps:
            for alarm in alarms:
                if policy.body["PolicyARN"] not in (alarm.get("AlarmActions") or []):
                    continue
                recent = (alarm.get("StateReasonData") or {}).get("recentDatapoints") or []
                threshold = float(alarm.get("Threshold", 0.0))
                value = float(recent[-1]) if recent else threshold
                out.append(propose_step(_step_view(policy), alarm["AlarmName"], value, threshold, capacity,
                                        history, now))
        return out

    @staticmethod
    def _last_complete(now: float, period: int) -> float:
        """The start of the last period whose metrics are written (a quarter period's grace)."""
        return math.floor((now - period / 4) / period) * period - period

    def _values(self, policy: Resource, endpoint: str, variant: str, last: float, period: int,
                live_since: float) -> list[float]:
        """The policy's metric, one value per period, oldest first, up to the last complete one (``last``)."""
        config = policy.body["TargetTrackingScalingPolicyConfiguration"]
        wanted = max(self.rules.scale_out_datapoints, self.rules.scale_in_datapoints)
        first = last - (wanted - 1) * period
        dimensions = {"EndpointName": endpoint, "VariantName": variant}
        predefined = config.get("PredefinedMetricSpecification")
        if predefined:
            points = self.reader.statistics(SAGEMAKER_NAMESPACE, "InvocationsPerInstance", dimensions, "Sum",
                                            first, last + period, period)
            by_start = {round(p.timestamp): p.value for p in points}
            values = []
            for start in range(int(first), int(last) + 1, period):
                if start in by_start:
                    # AWS's target for this metric is invocations per instance per minute.
                    values.append(by_start[start] * 60.0 / period)
                elif start >= live_since:
                    values.append(0.0)  # the variant was serving and nobody called it
            return values
        custom = config["CustomizedMetricSpecification"]
        custom_dims = {d["Name"]: d["Value"] for d in custom.get("Dimensions") or []}
        points = self.reader.statistics(custom["Namespace"], custom["MetricName"], custom_dims, custom["Statistic"],
                                        first, last + period, period)
        return [p.value for p in sorted(points, key=lambda p: p.timestamp)]

    async def _scale(self, target: Resource, state: _TargetState, endpoint: str, variant: str, decision: Decision,
                     capacity: int, now: float) -> None:
        activity = self._record(target, decision, capacity, now, status="InProgress")
        try:
            await self.endpoints.update_endpoint_weights_and_capacities({
                "EndpointName": endpoint,
                "DesiredWeightsAndCapacities": [{"VariantName": variant, "DesiredInstanceCount": decision.desired}]})
        except ApiError as exc:
            self._finish(activity, "Failed", f"Failed to set desired instance count to {decision.desired}. "
                                             f"Reason: {exc.message}")
            return
        if decision.direction == SCALE_OUT:
            state.history = replace(state.history, last_scale_out=now, capacity_before_scale_out=capacity)
        else:
            state.history = replace(state.history, last_scale_in=now)
        log.info("scaling %s from %d to %d instance(s): %s", target.body["ResourceId"], capacity, decision.desired,
                 decision.cause)
        state.busy = True
        watcher = asyncio.get_running_loop().create_task(self._settle(activity, state, endpoint, variant,
                                                                      decision.desired))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _settle(self, activity: Resource, state: _TargetState, endpoint: str, variant: str,
                      desired: int) -> None:
        """Wait (bounded) for the endpoint to finish the change, then close the activity."""
        deadline = time.monotonic() + self.settle_timeout
        try:
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                row = self.ctx.store.get(ENDPOINT, endpoint)
                if row is None:
                    self._finish(activity, "Failed", "The endpoint was deleted while scaling.")
                    return
                snapshot = self.ctx.routes.snapshot(endpoint)
                live = snapshot.variants.get(variant) if snapshot is not None else None
                activity = self._pending(activity, live, desired)
                if row.status != IN_SERVICE:
                    continue
                ready = live.in_service if live is not None else 0
                if row.body.get("FailureReason"):
                    self._finish(activity, "Failed", f"Failed to set desired instance count to {desired}. "
                                                     f"Reason: {row.body['FailureReason']}")
                    return
                if ready == desired:
                    self._finish(activity, "Successful", f"Successfully set desired instance count to {desired}. "
                                                         f"Change successfully fulfilled by sagemaker.")
                    return
            self._finish(activity, "Failed", f"Desired instance count {desired} not reached within "
                                             f"{self.settle_timeout:g} s.")
        finally:
            state.busy = False

    # Activities -------------------------------------------------------------------------------------
    def _record(self, target: Resource, decision: Decision, capacity: int, now: float, status: str,
                not_scaled: bool = False) -> Resource:
        activity_id = str(uuid.uuid4())
        body: dict[str, Any] = {
            "ActivityId": activity_id, "ServiceNamespace": target.body["ServiceNamespace"],
            "ResourceId": target.body["ResourceId"], "ScalableDimension": target.body["ScalableDimension"],
            "Description": f"Setting desired instance count to {decision.desired}.",
            "Cause": decision.cause, "StartTime": now, "StatusCode": status,
            "moorage": {"direction": decision.direction, "capacity_before": capacity, "desired": decision.desired},
        }
        if not_scaled:
            bound = "MaxCapacity" if decision.clamped_reason == "AlreadyAtMaxCapacity" else "MinCapacity"
            body.update(Description=f"Not scaling: desired instance count stays {capacity}.",
                        StatusMessage=f"The target is already at its {bound}.", EndTime=now,
                        NotScaledReasons=[{"Code": decision.clamped_reason, bound: int(target.body[bound]),
                                           "CurrentCapacity": capacity}])
        row = self.ctx.store.create(SCALING_ACTIVITY, f"{target.name}|{activity_id}", f"activity:{activity_id}", body,
                                    status=status)
        self._trim(target)
        return row

    def _pending(self, activity: Resource, live: VariantSnapshot | None, desired: int) -> Resource:
        """The activity Pending while instances wait for room on the cluster (cluster mode), InProgress again
        once they are placed: a scale-out the cluster cannot hold yet says so instead of waiting silently."""
        waiting = [i.waiting for i in (live.instances if live is not None else ()) if i.waiting]
        status = "Pending" if waiting else "InProgress"
        if activity.body.get("StatusCode") == status:
            return activity
        message = (f"Waiting for capacity to set desired instance count to {desired}: {len(waiting)} instance(s) "
                   f"{waiting[0]}" if waiting else None)
        body = {k: v for k, v in activity.body.items() if k != "StatusMessage"}
        body["StatusCode"] = status
        if message:
            body["StatusMessage"] = message
            log.warning("scaling activity %s: %s", activity.body["ActivityId"], message)
        with contextlib.suppress(Exception):
            activity = self.ctx.store.update(SCALING_ACTIVITY, activity.name, status=status, body=body) or activity
        return activity

    def _finish(self, activity: Resource, status: str, message: str) -> None:
        body = dict(activity.body, StatusCode=status, StatusMessage=message, EndTime=time.time())
        with contextlib.suppress(Exception):
            self.ctx.store.update(SCALING_ACTIVITY, activity.name, status=status, body=body)
        (log.info if status == "Successful" else log.warning)("scaling activity %s: %s", activity.body["ActivityId"],
                                                               message)

    def _trim(self, target: Resource) -> None:
        for row in self._activities(target)[KEEP_ACTIVITIES:]:
            self.ctx.store.delete(SCALING_ACTIVITY, row.name)


def _step_view(policy: Resource) -> StepPolicyView:
    config = policy.body["StepScalingPolicyConfiguration"]
    return StepPolicyView(
        name=policy.body["PolicyName"], adjustment_type=config["AdjustmentType"],
        steps=tuple(StepAdjustment(s.get("MetricIntervalLowerBound"), s.get("MetricIntervalUpperBound"),
                                   float(s["ScalingAdjustment"])) for s in config["StepAdjustments"]),
        cooldown=float(config.get("Cooldown", 0)), min_adjustment_magnitude=config.get("MinAdjustmentMagnitude"))


def _policy_view(policy: Resource) -> PolicyView:
    config = policy.body["TargetTrackingScalingPolicyConfiguration"]
    predefined = config.get("PredefinedMetricSpecification")
    metric = (INVOCATIONS_PER_INSTANCE if predefined
              else config["CustomizedMetricSpecification"]["MetricName"])
    return PolicyView(name=policy.body["PolicyName"], metric=metric, target=float(config["TargetValue"]),
                      scale_out_cooldown=float(config["ScaleOutCooldown"]),
                      scale_in_cooldown=float(config["ScaleInCooldown"]),
                      disable_scale_in=bool(config["DisableScaleIn"]))
