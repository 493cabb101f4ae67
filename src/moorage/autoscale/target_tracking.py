"""Target-tracking and step-scaling decisions, following Application Auto Scaling's documented semantics.

A policy keeps a metric near its target value:

* **Scale out** when the metric is above the target for ``scale_out_datapoints`` consecutive periods
  (AWS's "AlarmHigh": 3 datapoints). Desired capacity is ``ceil(capacity x metric / target)``, where
  capacity is the one that produced the metric.
* **Scale out during the scale-out cooldown** only when the need grows: the capacity added by the
  last scale-out counts as already there, so a further scale-out happens only if the newly computed
  desired capacity exceeds the capacity already asked for.
* **Scale in** when the metric stays below ``scale_in_margin x target`` for ``scale_in_datapoints``
  consecutive periods (AWS's "AlarmLow": 15 datapoints below 90% of the target), never during the
  scale-in cooldown, never with ``DisableScaleIn``. The desired capacity is computed from the highest
  value in that window, so scale-in is both later and gentler than scale-out.
* Always clamped to [min, max]; with several policies, scale out if any asks, scale in only if all do.
* A target whose MinCapacity is 0 (an asynchronous endpoint) scales in to 0, and out from 0 when the
  metric passes the target (read as one instance's).

Step scaling (``propose_step``): a policy run by an alarm in ALARM picks the step whose interval holds
the breach (metric - threshold) and changes capacity by it (ChangeInCapacity, PercentChangeInCapacity,
ExactCapacity), minding its cooldown as AWS does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

SCALE_OUT, SCALE_IN = "out", "in"


@dataclass(frozen=True)
class Rules:
    scale_out_datapoints: int = 3
    scale_in_datapoints: int = 15
    scale_in_margin: float = 0.9


@dataclass(frozen=True)
class PolicyView:
    """What the decision needs of one target-tracking policy."""

    name: str
    metric: str  # a readable name for causes, e.g. "SageMakerVariantInvocationsPerInstance"
    target: float
    scale_out_cooldown: float
    scale_in_cooldown: float
    disable_scale_in: bool


@dataclass(frozen=True)
class History:
    """The last scaling activities of a target (epoch seconds; None when there was none)."""

    last_scale_out: float | None = None
    capacity_before_scale_out: int | None = None
    last_scale_in: float | None = None


@dataclass(frozen=True)
class Proposal:
    policy: str
    direction: str
    desired: int
    cause: str


def ceil_ratio(capacity: int, value: float, target: float) -> int:
    # A tiny epsilon keeps 2 x 1.5 / 1.5 at 2 despite floating-point noise.
    return math.ceil(capacity * value / target - 1e-9)


def propose(policy: PolicyView, values: Sequence[float], capacity: int, history: History, now: float,
            rules: Rules, floor: int = 1) -> Proposal | None:
    """What ``policy`` asks for, given its most recent datapoints (oldest first) and the capacity.

    ``floor`` is the least a scale-in asks for: 1, or 0 where the target may scale to zero (an
    asynchronous endpoint's MinCapacity 0). At zero capacity the metric is read as one instance's
    (asynchronous inference's backlog per instance is the whole backlog then), so a metric above
    the target scales out from zero as SageMaker documents.
    """
    if policy.target <= 0 or capacity < 0:
        return None
    out_window = values[-rules.scale_out_datapoints:]
    if len(out_window) == rules.scale_out_datapoints and all(v > policy.target for v in out_window):
        latest = out_window[-1]
        in_cooldown = (history.last_scale_out is not None
                       and now - history.last_scale_out < policy.scale_out_cooldown)
        # In the cooldown the metric still reflects the capacity before the last scale-out: the
        # instances it added may not carry traffic yet.
        basis = history.capacity_before_scale_out if in_cooldown and history.capacity_before_scale_out else capacity
        basis = max(basis, 1)
        desired = ceil_ratio(basis, latest, policy.target)
        if desired <= capacity:
            return None
        cause = (f"{policy.metric} {latest:g} > target {policy.target:g} for {len(out_window)} consecutive "
                 f"period(s): policy {policy.name} asks ceil({basis} x {latest:g} / {policy.target:g}) = {desired}")
        if in_cooldown:
            cause += " (in the scale-out cooldown, and the need grew beyond the capacity already added)"
        return Proposal(policy.name, SCALE_OUT, desired, cause)
    if policy.disable_scale_in or capacity == 0:
        return None
    in_window = values[-rules.scale_in_datapoints:]
    low = rules.scale_in_margin * policy.target
    if len(in_window) < rules.scale_in_datapoints or not all(v < low for v in in_window):
        return None
    if history.last_scale_in is not None and now - history.last_scale_in < policy.scale_in_cooldown:
        return None
    highest = max(in_window)
    desired = max(floor, ceil_ratio(capacity, highest, policy.target))
    if desired >= capacity:
        return None
    cause = (f"{policy.metric} below {low:g} (90% of target {policy.target:g}) for {len(in_window)} consecutive "
             f"period(s), at most {highest:g}: policy {policy.name} asks ceil({capacity} x {highest:g} / "
             f"{policy.target:g}) = {desired}")
    return Proposal(policy.name, SCALE_IN, desired, cause)


@dataclass(frozen=True)
class Decision:
    desired: int
    direction: str
    cause: str
    clamped_reason: str | None = None  # "AlreadyAtMaxCapacity" etc. when the bounds stopped it


def decide(proposals: Sequence[Proposal | None], policies: int, capacity: int, minimum: int,
           maximum: int) -> Decision | None:
    """Combine the policies' proposals: out if any asks, in only if all do; clamp to [min, max].

    Bounds are enforced even without proposals: a target registered with a minimum above the current
    capacity scales out to it at once, as Application Auto Scaling does.
    """
    if capacity < minimum:
        return Decision(minimum, SCALE_OUT, f"current capacity {capacity} is below the minimum {minimum}")
    if capacity > maximum:
        return Decision(maximum, SCALE_IN, f"current capacity {capacity} is above the maximum {maximum}")
    outs = [p for p in proposals if p is not None and p.direction == SCALE_OUT]
    if outs:
        best = max(outs, key=lambda p: p.desired)
        desired = min(best.desired, maximum)
        if desired <= capacity:
            return Decision(capacity, SCALE_OUT, best.cause, "AlreadyAtMaxCapacity")
        note = f", limited to the maximum {maximum}" if best.desired > maximum else ""
        return Decision(desired, SCALE_OUT, best.cause + note)
    ins = [p for p in proposals if p is not None and p.direction == SCALE_IN]
    if ins and len(ins) == policies:
        best = max(ins, key=lambda p: p.desired)  # the policy that wants the most capacity wins
        desired = max(best.desired, minimum)
        if desired >= capacity:
            return Decision(capacity, SCALE_IN, best.cause, "AlreadyAtMinCapacity")
        note = f", limited to the minimum {minimum}" if best.desired < minimum else ""
        return Decision(desired, SCALE_IN, "; ".join(p.cause for p in ins) + note)
    return None


# -- step scaling --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepAdjustment:
    lower: float | None  # of the breach (metric - threshold); None: no bound
    upper: float | None
    adjustment: float


@dataclass(frozen=True)
class StepPolicyView:
    """What the decision needs of one step-scaling policy (Application Auto Scaling's StepScaling)."""

    name: str
    adjustment_type: str  # ChangeInCapacity | PercentChangeInCapacity | ExactCapacity
    steps: tuple[StepAdjustment, ...]
    cooldown: float
    min_adjustment_magnitude: int | None = None


def step_for(policy: StepPolicyView, breach: float) -> StepAdjustment | None:
    """The step whose interval holds ``breach``: the lower bound inclusive and the upper exclusive above
    the threshold, the other way round below it (AWS's rule)."""
    for step in policy.steps:
        low = -math.inf if step.lower is None else step.lower
        high = math.inf if step.upper is None else step.upper
        if (low <= breach < high) if breach >= 0 else (low < breach <= high):
            return step
    return None


def propose_step(policy: StepPolicyView, alarm: str, value: float, threshold: float, capacity: int,
                 history: History, now: float) -> Proposal | None:
    """What a step policy asks for when its alarm (in ALARM, its metric ``value`` against ``threshold``)
    runs it. In the cooldown after a scale-out, the capacity that scale-out added counts as there, so
    the alarm firing again adds only what a larger step asks beyond it; scale-in waits out the cooldown."""
    step = step_for(policy, value - threshold)
    if step is None:
        return None
    in_cooldown_out = history.last_scale_out is not None and now - history.last_scale_out < policy.cooldown
    in_cooldown_in = history.last_scale_in is not None and now - history.last_scale_in < policy.cooldown
    basis = capacity
    if step.adjustment > 0 and in_cooldown_out and history.capacity_before_scale_out is not None:
        basis = history.capacity_before_scale_out
    if policy.adjustment_type == "ExactCapacity":
        desired = int(step.adjustment)
    elif policy.adjustment_type == "PercentChangeInCapacity":
        change = basis * step.adjustment / 100.0
        # AWS rounds a percent change toward zero, but a change between -1 and 1 (not 0) is one instance.
        whole = int(change) if abs(change) >= 1 else (1 if change > 0 else -1 if change < 0 else 0)
        if policy.min_adjustment_magnitude and abs(whole) < policy.min_adjustment_magnitude:
            whole = policy.min_adjustment_magnitude if whole > 0 else -policy.min_adjustment_magnitude
        desired = basis + whole
    else:
        desired = basis + int(step.adjustment)
    desired = max(desired, 0)
    if desired > capacity:
        cause = (f"alarm {alarm} in ALARM ({value:g} against threshold {threshold:g}) ran step policy "
                 f"{policy.name}: {policy.adjustment_type} {step.adjustment:g} from {basis} = {desired}")
        return Proposal(policy.name, SCALE_OUT, desired, cause)
    if desired < capacity and not in_cooldown_in:
        cause = (f"alarm {alarm} in ALARM ({value:g} against threshold {threshold:g}) ran step policy "
                 f"{policy.name}: {policy.adjustment_type} {step.adjustment:g} from {capacity} = {desired}")
        return Proposal(policy.name, SCALE_IN, desired, cause)
    return None
