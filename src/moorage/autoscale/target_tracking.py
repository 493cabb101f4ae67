"""Target-tracking decisions, following Application Auto Scaling's documented semantics.

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
            rules: Rules) -> Proposal | None:
    """What ``policy`` asks for, given its most recent datapoints (oldest first) and the capacity."""
    if policy.target <= 0 or capacity <= 0:
        return None
    out_window = values[-rules.scale_out_datapoints:]
    if len(out_window) == rules.scale_out_datapoints and all(v > policy.target for v in out_window):
        latest = out_window[-1]
        in_cooldown = (history.last_scale_out is not None
                       and now - history.last_scale_out < policy.scale_out_cooldown)
        # In the cooldown the metric still reflects the capacity before the last scale-out: the
        # instances it added may not carry traffic yet.
        basis = history.capacity_before_scale_out if in_cooldown and history.capacity_before_scale_out else capacity
        desired = ceil_ratio(basis, latest, policy.target)
        if desired <= capacity:
            return None
        cause = (f"{policy.metric} {latest:g} > target {policy.target:g} for {len(out_window)} consecutive "
                 f"period(s): policy {policy.name} asks ceil({basis} x {latest:g} / {policy.target:g}) = {desired}")
        if in_cooldown:
            cause += " (in the scale-out cooldown, and the need grew beyond the capacity already added)"
        return Proposal(policy.name, SCALE_OUT, desired, cause)
    if policy.disable_scale_in:
        return None
    in_window = values[-rules.scale_in_datapoints:]
    low = rules.scale_in_margin * policy.target
    if len(in_window) < rules.scale_in_datapoints or not all(v < low for v in in_window):
        return None
    if history.last_scale_in is not None and now - history.last_scale_in < policy.scale_in_cooldown:
        return None
    highest = max(in_window)
    desired = max(1, ceil_ratio(capacity, highest, policy.target))
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
