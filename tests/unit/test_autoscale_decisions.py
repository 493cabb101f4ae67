"""Target-tracking decisions: AWS's documented semantics, as pure functions over datapoints."""

from __future__ import annotations

from moorage.autoscale.target_tracking import (
    SCALE_IN,
    SCALE_OUT,
    History,
    PolicyView,
    Proposal,
    Rules,
    decide,
    propose,
)

RULES = Rules(scale_out_datapoints=3, scale_in_datapoints=5, scale_in_margin=0.9)


def policy(target: float = 100.0, out_cooldown: float = 60.0, in_cooldown: float = 300.0,
           disable_in: bool = False) -> PolicyView:
    return PolicyView("p", "SageMakerVariantInvocationsPerInstance", target, out_cooldown, in_cooldown, disable_in)


def test_scale_out_needs_consecutive_breaches_and_uses_the_ratio() -> None:
    assert propose(policy(), [50, 250, 250], 1, History(), 1000, RULES) is None  # only 2 of 3 above
    proposal = propose(policy(), [50, 150, 250, 250], 1, History(), 1000, RULES)
    assert proposal is not None and proposal.direction == SCALE_OUT
    assert proposal.desired == 3  # ceil(1 x 250 / 100)
    assert "250" in proposal.cause and "target 100" in proposal.cause


def test_exactly_on_target_does_not_scale() -> None:
    assert propose(policy(), [100, 100, 100], 2, History(), 1000, RULES) is None


def test_scale_out_cooldown_lets_only_a_growing_need_scale_further() -> None:
    # Scaled 1 -> 3 at t=1000; the metric still reflects 1 instance (new ones warming up).
    history = History(last_scale_out=1000, capacity_before_scale_out=1)
    same_need = propose(policy(), [250, 250, 250], 3, history, 1030, RULES)
    assert same_need is None  # ceil(1 x 250/100) = 3: already asked for
    grown = propose(policy(), [250, 400, 420], 3, history, 1030, RULES)
    assert grown is not None and grown.desired == 5 and "cooldown" in grown.cause
    # After the cooldown the metric is read against the current capacity.
    after = propose(policy(), [250, 250, 250], 3, history, 1061, RULES)
    assert after is not None and after.desired == 8


def test_scale_in_is_slower_gentler_and_respects_cooldown_and_disable() -> None:
    low = [10, 10, 10, 10, 30]
    assert propose(policy(), low[-4:], 4, History(), 1000, RULES) is None  # too few datapoints
    proposal = propose(policy(), low, 4, History(), 1000, RULES)
    assert proposal is not None and proposal.direction == SCALE_IN
    assert proposal.desired == 2  # from the highest value in the window: ceil(4 x 30 / 100)
    assert propose(policy(), [10, 10, 95, 10, 10], 4, History(), 1000, RULES) is None  # 95 is not below 90%
    assert propose(policy(), low, 4, History(last_scale_in=900), 1000, RULES) is None  # in cooldown
    assert propose(policy(disable_in=True), low, 4, History(), 1000, RULES) is None
    assert propose(policy(), [0, 0, 0, 0, 0], 3, History(), 1000, RULES).desired == 1  # never below one


def test_decide_clamps_to_bounds_and_combines_policies() -> None:
    out = Proposal("a", SCALE_OUT, 7, "a wants 7")
    decision = decide([out], 1, 2, 1, 3)
    assert decision is not None and decision.desired == 3 and "maximum 3" in decision.cause
    at_max = decide([out], 1, 3, 1, 3)
    assert at_max is not None and at_max.clamped_reason == "AlreadyAtMaxCapacity"
    # Scale in only when every policy agrees; the one wanting more capacity wins.
    a_in, b_in = Proposal("a", SCALE_IN, 1, "a"), Proposal("b", SCALE_IN, 2, "b")
    assert decide([a_in, None], 2, 3, 1, 5) is None
    both = decide([a_in, b_in], 2, 3, 1, 5)
    assert both is not None and both.desired == 2
    # Out beats in.
    assert decide([a_in, Proposal("b", SCALE_OUT, 4, "b")], 2, 3, 1, 5).desired == 4


def test_bounds_are_enforced_without_any_proposal() -> None:
    below = decide([None], 1, 1, 2, 4)
    assert below is not None and below.desired == 2 and below.direction == SCALE_OUT
    above = decide([], 0, 5, 1, 3)
    assert above is not None and above.desired == 3 and above.direction == SCALE_IN
    assert decide([None], 1, 2, 1, 3) is None
