"""UpdateEndpoint's DeploymentConfig: checked once, turned into the steps a blue/green update takes.

SageMaker's deployment guardrails (``BlueGreenUpdatePolicy``): the green fleet is provisioned in
full, then traffic moves to it in steps that follow its capacity (ALL_AT_ONCE: one step; CANARY:
the canary's share, then the rest; LINEAR: equal steps, so 25% of 4 instances is 25/50/75/100%),
each followed by a baking period while the named alarms watch; after the last step a final bake
(``TerminationWaitInSeconds``) before blue is stopped. An update with no DeploymentConfig is the
ALL_AT_ONCE case with no baking: the same machinery, not a second one.

``RollingUpdatePolicy`` instead replaces the fleet batch by batch: each step provisions a batch of
new instances, turns traffic on for them, stops as many old ones and bakes; a rollback brings the
old capacity back (``RollbackMaximumBatchSize`` at a time, by default all at once) before traffic
returns to it. Capacity never drops below the old fleet's.

Limits are SageMaker's documented ones: a canary at most 50% of the green fleet, a linear step
between 10% and 50% of it, a rolling batch between 5% and 50%; what botocore's model already bounds
(wait intervals, timeouts) is checked there before a handler runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from moorage.errors import ValidationException

ALL_AT_ONCE, CANARY, LINEAR = "ALL_AT_ONCE", "CANARY", "LINEAR"
INSTANCE_COUNT, CAPACITY_PERCENT = "INSTANCE_COUNT", "CAPACITY_PERCENT"
DEFAULT_MAX_EXECUTION_S = 28800.0  # MaximumExecutionTimeoutInSeconds' documented maximum


@dataclass(frozen=True)
class CapacitySize:
    type: str
    value: int

    @classmethod
    def parse(cls, doc: Any, field: str) -> CapacitySize:
        if not isinstance(doc, dict) or doc.get("Type") not in (INSTANCE_COUNT, CAPACITY_PERCENT):
            raise ValidationException(f"{field}.Type must be {INSTANCE_COUNT} or {CAPACITY_PERCENT}.")
        value = doc.get("Value")
        if not isinstance(value, int) or value < 1:
            raise ValidationException(f"{field}.Value must be a whole number of at least 1.")
        if doc["Type"] == CAPACITY_PERCENT and value > 100:
            raise ValidationException(f"{field}.Value must be at most 100 (percent).")
        return cls(doc["Type"], value)

    def instances(self, capacity: int) -> int:
        """How many of ``capacity`` instances this size is (a percentage rounds down, to one at least)."""
        if self.type == INSTANCE_COUNT:
            return self.value
        return max(1, math.floor(capacity * self.value / 100))


@dataclass(frozen=True)
class Step:
    """Move green's share of the traffic to ``share``, then bake ``bake_seconds`` while alarms watch."""

    share: float
    bake_seconds: float
    final: bool = False  # the last bake (TerminationWaitInSeconds), after all traffic moved


@dataclass(frozen=True)
class DeploymentPlan:
    routing: str
    wait_seconds: float
    canary: CapacitySize | None
    linear_step: CapacitySize | None
    termination_wait_seconds: float
    max_execution_seconds: float
    alarms: tuple[str, ...]
    document: dict[str, Any] | None  # the DeploymentConfig as given: LastDeploymentConfig after success
    rolling_batch: CapacitySize | None = None  # RollingUpdatePolicy.MaximumBatchSize: a rolling update
    rollback_batch: CapacitySize | None = None  # RollingUpdatePolicy.RollbackMaximumBatchSize

    @classmethod
    def parse(cls, doc: dict[str, Any] | None) -> DeploymentPlan:
        """A DeploymentConfig (or None: all at once, no baking); ValidationException names the field."""
        if not doc:
            return cls(ALL_AT_ONCE, 0.0, None, None, 0.0, DEFAULT_MAX_EXECUTION_S, (), None)
        alarms = []
        for item in ((doc.get("AutoRollbackConfiguration") or {}).get("Alarms") or []):
            name = item.get("AlarmName") if isinstance(item, dict) else None
            if not name:
                raise ValidationException("DeploymentConfig.AutoRollbackConfiguration.Alarms[].AlarmName is required.")
            alarms.append(str(name))
        rolling = doc.get("RollingUpdatePolicy")
        if rolling is not None:
            if doc.get("BlueGreenUpdatePolicy") is not None:
                raise ValidationException(
                    "DeploymentConfig: give BlueGreenUpdatePolicy or RollingUpdatePolicy, not both.")
            where = "DeploymentConfig.RollingUpdatePolicy"
            if not isinstance(rolling, dict) or rolling.get("MaximumBatchSize") is None:
                raise ValidationException(f"{where}.MaximumBatchSize is required.")
            batch = CapacitySize.parse(rolling["MaximumBatchSize"], f"{where}.MaximumBatchSize")
            rollback = (CapacitySize.parse(rolling["RollbackMaximumBatchSize"], f"{where}.RollbackMaximumBatchSize")
                        if rolling.get("RollbackMaximumBatchSize") is not None else None)
            return cls("ROLLING", float(rolling.get("WaitIntervalInSeconds") or 0), None, None, 0.0,
                       float(rolling.get("MaximumExecutionTimeoutInSeconds") or DEFAULT_MAX_EXECUTION_S),
                       tuple(alarms), doc, batch, rollback)
        policy = doc.get("BlueGreenUpdatePolicy")
        if not isinstance(policy, dict):
            raise ValidationException("DeploymentConfig.BlueGreenUpdatePolicy is required.")
        routing = policy.get("TrafficRoutingConfiguration")
        if not isinstance(routing, dict):
            raise ValidationException(
                "DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration is required.")
        where = "DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration"
        kind = routing.get("Type")
        canary = linear = None
        if kind == CANARY:
            if routing.get("CanarySize") is None:
                raise ValidationException(f"{where}.CanarySize is required when Type is CANARY.")
            canary = CapacitySize.parse(routing["CanarySize"], f"{where}.CanarySize")
        elif kind == LINEAR:
            if routing.get("LinearStepSize") is None:
                raise ValidationException(f"{where}.LinearStepSize is required when Type is LINEAR.")
            linear = CapacitySize.parse(routing["LinearStepSize"], f"{where}.LinearStepSize")
        elif kind != ALL_AT_ONCE:
            raise ValidationException(f"{where}.Type must be ALL_AT_ONCE, CANARY or LINEAR.")
        return cls(kind, float(routing.get("WaitIntervalInSeconds") or 0), canary, linear,
                   float(policy.get("TerminationWaitInSeconds") or 0),
                   float(policy.get("MaximumExecutionTimeoutInSeconds") or DEFAULT_MAX_EXECUTION_S),
                   tuple(alarms), doc)

    def check_capacity(self, capacity: int) -> None:
        """SageMaker's bounds on the canary, the linear step and the rolling batch, against the new fleet's size."""
        if self.rolling_batch is not None:
            batch = self.rolling_batch.instances(capacity)
            percent = self.rolling_batch.value if self.rolling_batch.type == CAPACITY_PERCENT else None
            if batch * 2 > capacity or batch * 20 < capacity or (percent is not None and not 5 <= percent <= 50):
                raise ValidationException(
                    f"DeploymentConfig.RollingUpdatePolicy.MaximumBatchSize ({self.rolling_batch.value} "
                    f"{self.rolling_batch.type}) must be between 5% and 50% of the variant's capacity "
                    f"({capacity} instance(s)).")
        where = "DeploymentConfig.BlueGreenUpdatePolicy.TrafficRoutingConfiguration"
        if self.canary is not None and (self.canary.instances(capacity) * 2 > capacity
                                        or (self.canary.type == CAPACITY_PERCENT and self.canary.value > 50)):
            raise ValidationException(
                f"{where}.CanarySize ({self.canary.value} {self.canary.type}) must be at most 50% of the new "
                f"fleet's capacity ({capacity} instance(s)).")
        if self.linear_step is not None:
            step = self.linear_step.instances(capacity)
            percent = self.linear_step.value if self.linear_step.type == CAPACITY_PERCENT else None
            if step * 2 > capacity or step * 10 < capacity or (percent is not None and not 10 <= percent <= 50):
                raise ValidationException(
                    f"{where}.LinearStepSize ({self.linear_step.value} {self.linear_step.type}) must be between "
                    f"10% and 50% of the new fleet's capacity ({capacity} instance(s)).")

    def steps(self, capacity: int) -> list[Step]:
        """The traffic steps for a green fleet of ``capacity`` instances, the final bake last."""
        if self.routing == CANARY:
            assert self.canary is not None
            shares = [self.canary.instances(capacity) / capacity]
        elif self.routing == LINEAR:
            assert self.linear_step is not None
            step = self.linear_step.instances(capacity)
            shares = [active / capacity for active in range(step, capacity, step)]
        else:
            shares = []
        steps = [Step(share, self.wait_seconds) for share in shares]
        if self.routing == ALL_AT_ONCE:
            steps.append(Step(1.0, self.wait_seconds))
            steps.append(Step(1.0, self.termination_wait_seconds, final=True))
        else:
            steps.append(Step(1.0, self.termination_wait_seconds, final=True))
        return steps

