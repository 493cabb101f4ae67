"""Step scaling and scaling to zero, as Application Auto Scaling decides them (autoscale/target_tracking.py)."""

from __future__ import annotations

from moorage.autoscale.target_tracking import (
    SCALE_IN,
    SCALE_OUT,
    History,
    PolicyView,
    Rules,
    StepAdjustment,
    StepPolicyView,
    propose,
    propose_step,
    step_for,
)

RULES = Rules(scale_out_datapoints=3, scale_in_datapoints=5)


def tracking(target: float = 5.0) -> PolicyView:
    return PolicyView("backlog", "ApproximateBacklogSizePerInstance", target, 0, 0, False)


def step(kind: str = "ChangeInCapacity", *steps: StepAdjustment, cooldown: float = 60,
         magnitude: int | None = None) -> StepPolicyView:
    return StepPolicyView("from-zero", kind, steps or (StepAdjustment(0, None, 1),), cooldown, magnitude)


def test_a_floor_of_zero_lets_target_tracking_scale_in_to_zero_and_out_again() -> None:
    idle = [0.0] * 5
    assert propose(tracking(), idle, 2, History(), 1000, RULES).desired == 1  # never below one by default
    assert propose(tracking(), idle, 2, History(), 1000, RULES, floor=0).desired == 0
    assert propose(tracking(), idle, 0, History(), 1000, RULES, floor=0) is None  # nothing left to remove
    # At zero instances the backlog per instance is the whole backlog: above the target, out from zero.
    out = propose(tracking(), [6.0, 7.0, 12.0], 0, History(), 1000, RULES, floor=0)
    assert out is not None and out.direction == SCALE_OUT and out.desired == 3  # ceil(1 x 12 / 5)
    assert propose(tracking(), [1.0, 1.0, 1.0], 0, History(), 1000, RULES, floor=0) is None  # below the target


def test_step_intervals_follow_aws_bounds() -> None:
    policy = step("ChangeInCapacity", StepAdjustment(0, 10, 1), StepAdjustment(10, None, 3),
                  StepAdjustment(None, 0, -1))
    assert step_for(policy, 0).adjustment == 1  # the lower bound is inclusive above the threshold
    assert step_for(policy, 10).adjustment == 3  # the upper one exclusive
    assert step_for(policy, -0.5).adjustment == -1
    assert step_for(step("ChangeInCapacity", StepAdjustment(0, 5, 1)), 7) is None


def test_the_scale_from_zero_step_adds_one_and_respects_its_cooldown() -> None:
    first = propose_step(step(), "alarm", 1.0, 1.0, 0, History(), 1000)
    assert first is not None and first.direction == SCALE_OUT and first.desired == 1
    assert "alarm" in first.cause and "from-zero" in first.cause
    # In the cooldown, the instance the last run added counts as there: no second one for the same alarm.
    recent = History(last_scale_out=990, capacity_before_scale_out=0)
    assert propose_step(step(), "alarm", 1.0, 1.0, 1, recent, 1000) is None
    assert propose_step(step(), "alarm", 1.0, 1.0, 1, recent, 1100).desired == 2  # after it


def test_adjustment_types() -> None:
    exact = propose_step(step("ExactCapacity", StepAdjustment(0, None, 4)), "a", 3, 1, 1, History(), 1000)
    assert exact.desired == 4
    half = propose_step(step("PercentChangeInCapacity", StepAdjustment(0, None, 50)), "a", 3, 1, 4, History(), 1000)
    assert half.desired == 6
    small = propose_step(step("PercentChangeInCapacity", StepAdjustment(0, None, 10)), "a", 3, 1, 4, History(), 1000)
    assert small.desired == 5  # 0.4 of an instance is one instance
    floor = propose_step(step("PercentChangeInCapacity", StepAdjustment(0, None, 10), magnitude=2), "a", 3, 1, 4,
                         History(), 1000)
    assert floor.desired == 6
    down = propose_step(step("ChangeInCapacity", StepAdjustment(None, 0, -2)), "a", 0, 1, 3, History(), 1000)
    assert down.direction == SCALE_IN and down.desired == 1
    assert propose_step(step("ChangeInCapacity", StepAdjustment(None, 0, -2)), "a", 0, 1, 3,
                        History(last_scale_in=990), 1000) is None  # scale-in waits out the cooldown
