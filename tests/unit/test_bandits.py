"""Bandit traffic shares (experiments/bandits.py): the policies' shares, the floor, and regret under delay."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moorage.experiments.bandits import BANDIT_POLICIES, POLICIES, bandit_weights, simulate_regret
from moorage.experiments.rewards import BINARY, CONTINUOUS, ArmStats

RATES = (0.05, 0.07, 0.10, 0.12)


def _binary(n: int, successes: int) -> ArmStats:
    return ArmStats(n, float(successes), float(successes))


def _continuous(rng: np.random.Generator, n: int, mean: float, std: float) -> ArmStats:
    return ArmStats.of(rng.normal(mean, std, n).tolist())


def _random_arms(rng: np.random.Generator, reward: str, k: int) -> dict[str, ArmStats]:
    arms = {}
    for i in range(k):
        n = int(rng.integers(0, 50))
        if reward == BINARY:
            arms[f"v{i}"] = _binary(n, int(rng.binomial(n, rng.random())))
        else:
            arms[f"v{i}"] = _continuous(rng, n, float(rng.normal()), float(rng.uniform(0.1, 3)))
    return arms


def test_policy_names() -> None:
    assert POLICIES == ("weights", "epsilon-greedy", "ucb1", "thompson")
    assert POLICIES[1:] == BANDIT_POLICIES


@pytest.mark.parametrize("reward", [BINARY, CONTINUOUS])
@pytest.mark.parametrize("policy", BANDIT_POLICIES)
def test_shares_sum_to_one_keep_the_keys_and_respect_the_floor(policy: str, reward: str) -> None:
    rng = np.random.default_rng(7)
    for trial in range(30):
        k = 1 + trial % 6
        arms = _random_arms(rng, reward, k)
        for min_weight in (0.0, 0.01, 0.05, 0.99 / k, *((1 / k,) if k > 1 else ())):
            shares = bandit_weights(policy, arms, reward=reward, min_weight=min_weight, epsilon=0.05, rng=rng)
            assert list(shares) == list(arms)
            assert math.isclose(sum(shares.values()), 1.0, abs_tol=1e-12)
            assert min(shares.values()) >= min_weight - 1e-12


@pytest.mark.parametrize("policy", BANDIT_POLICIES)
def test_a_floor_too_high_for_the_arms_gives_equal_shares(policy: str) -> None:
    arms = {"a": _binary(100, 90), "b": _binary(100, 10), "c": _binary(0, 0)}
    assert bandit_weights(policy, arms, min_weight=0.4, rng=np.random.default_rng(0)) == dict.fromkeys(arms, 1 / 3)


@pytest.mark.parametrize(
    ("kwargs", "parameter"),
    [
        ({"policy": "softmax"}, "policy"),
        ({"policy": "weights"}, "policy"),
        ({"epsilon": -0.1}, "epsilon"),
        ({"epsilon": 1.5}, "epsilon"),
        ({"epsilon": math.nan}, "epsilon"),
        ({"min_weight": -0.01}, "min_weight"),
        ({"min_weight": 1.0}, "min_weight"),
        ({"reward": "ordinal"}, "reward"),
        ({"draws": 0}, "draws"),
        ({"arms": {}}, "arms"),
        ({"arms": {"a": ArmStats(10, 11.0, 11.0)}}, "arms"),  # more successes than rewards
        ({"arms": {"a": ArmStats(10, -1.0, 1.0)}}, "arms"),
        ({"arms": {"a": ArmStats(-1, 0.0, 0.0)}}, "arms"),
        ({"arms": {"a": ArmStats(3, math.inf, 1.0)}, "reward": CONTINUOUS}, "arms"),
    ],
)
def test_invalid_arguments_name_the_parameter(kwargs: dict, parameter: str) -> None:
    call = {"policy": "thompson", "arms": {"a": _binary(10, 3), "b": _binary(5, 1)}} | kwargs
    policy, arms = call.pop("policy"), call.pop("arms")
    with pytest.raises(ValueError, match=rf"^{parameter}:"):
        bandit_weights(policy, arms, **call)


def test_continuous_rewards_may_exceed_the_count() -> None:
    """total <= n is a check on binary statistics only: continuous rewards may be any size."""
    arms = {"a": ArmStats(2, 50.0, 1300.0), "b": ArmStats(2, 10.0, 52.0)}
    shares = bandit_weights("epsilon-greedy", arms, reward=CONTINUOUS, epsilon=0.2)
    assert shares == pytest.approx({"a": 0.9, "b": 0.1})


@pytest.mark.parametrize("reward", [BINARY, CONTINUOUS])
@pytest.mark.parametrize("policy", BANDIT_POLICIES)
def test_no_data_at_all_gives_about_equal_shares(policy: str, reward: str) -> None:
    arms = dict.fromkeys(["a", "b", "c", "d"], ArmStats())
    shares = bandit_weights(policy, arms, reward=reward, rng=np.random.default_rng(1))
    assert shares == pytest.approx(dict.fromkeys(arms, 0.25), abs=0.03)
    if policy != "thompson":
        assert shares == pytest.approx(dict.fromkeys(arms, 0.25), abs=1e-12)


def test_epsilon_greedy_exact_shares() -> None:
    arms = {"a": _binary(100, 10), "b": _binary(100, 30), "c": _binary(100, 20)}
    assert bandit_weights("epsilon-greedy", arms, epsilon=0.3) == pytest.approx({"a": 0.1, "b": 0.8, "c": 0.1})
    # Ties for the best mean split the greedy part.
    tied = {"a": _binary(100, 30), "b": _binary(50, 15), "c": _binary(100, 20)}
    assert bandit_weights("epsilon-greedy", tied, epsilon=0.3) == pytest.approx({"a": 0.45, "b": 0.45, "c": 0.1})
    # epsilon = 0 is pure greedy, and then the floor is what the others get.
    assert bandit_weights("epsilon-greedy", arms, epsilon=0.0, min_weight=0.01) == pytest.approx(
        {"a": 0.01, "b": 0.98, "c": 0.01}
    )
    assert bandit_weights("epsilon-greedy", arms, epsilon=1.0) == pytest.approx(dict.fromkeys(arms, 1 / 3))


def test_epsilon_greedy_tries_a_new_arm_next_to_the_leader() -> None:
    arms = {"a": _binary(100, 10), "b": _binary(100, 30), "new": ArmStats()}
    shares = bandit_weights("epsilon-greedy", arms, epsilon=0.3)
    assert shares == pytest.approx({"a": 0.1, "b": 0.45, "new": 0.45})


def test_ucb1_tries_untried_arms_first() -> None:
    arms = {"a": _binary(1000, 900), "b": ArmStats(), "c": _binary(3, 0), "d": ArmStats()}
    shares = bandit_weights("ucb1", arms, min_weight=0.02)
    assert shares == pytest.approx({"a": 0.02, "b": 0.48, "c": 0.02, "d": 0.48})


def test_ucb1_index_prefers_the_best_and_explores_the_little_tried() -> None:
    # Much data: the bonuses are small and the best mean wins all traffic above the floors.
    arms = {"a": _binary(5000, 500), "b": _binary(5000, 1000), "c": _binary(5000, 600)}
    assert bandit_weights("ucb1", arms, min_weight=0.01) == pytest.approx({"a": 0.01, "b": 0.98, "c": 0.01})
    # A worse mean over few rewards: sqrt(2 ln 1010 / 10) = 1.18 outweighs the gap of 0.05.
    arms = {"a": _binary(1000, 500), "b": _binary(10, 4)}
    log_n = math.log(1010)
    assert 0.4 + math.sqrt(2 * log_n / 10) > 0.5 + math.sqrt(2 * log_n / 1000)
    assert bandit_weights("ucb1", arms, min_weight=0.05) == pytest.approx({"a": 0.05, "b": 0.95})


def test_ucb1_continuous_bonus_does_not_depend_on_the_reward_unit() -> None:
    rng = np.random.default_rng(3)
    rewards = {"a": rng.normal(1.0, 1.0, 40), "b": rng.normal(1.3, 1.0, 8), "c": rng.normal(0.8, 1.0, 200)}
    for scale, shift in ((1.0, 0.0), (1000.0, 0.0), (0.001, 5.0)):
        arms = {name: ArmStats.of((values * scale + shift).tolist()) for name, values in rewards.items()}
        assert bandit_weights("ucb1", arms, reward=CONTINUOUS) == pytest.approx({"a": 0.01, "b": 0.98, "c": 0.01})


def test_thompson_gives_a_clearly_better_arm_all_but_the_floors() -> None:
    arms = {"a": _binary(20000, 1000), "b": _binary(20000, 1400), "c": _binary(20000, 2400), "d": _binary(20000, 2000)}
    shares = bandit_weights("thompson", arms, min_weight=0.01, rng=np.random.default_rng(2))
    assert shares["c"] == pytest.approx(1 - 0.01 * 3, abs=1e-9)
    assert shares == pytest.approx({"a": 0.01, "b": 0.01, "c": 0.97, "d": 0.01})


def test_thompson_shares_are_the_probability_of_being_best() -> None:
    # Two arms with the same statistics: each is best half of the time.
    arms = {"a": _binary(50, 10), "b": _binary(50, 10)}
    shares = bandit_weights("thompson", arms, rng=np.random.default_rng(4), draws=20000)
    assert shares["a"] == pytest.approx(0.5, abs=0.02)
    # A new arm is not starved: with a uniform prior it is best about as often as P(Beta(1,1) > ~0.2).
    arms = {"a": _binary(200, 40), "new": ArmStats()}
    shares = bandit_weights("thompson", arms, rng=np.random.default_rng(4), draws=20000)
    assert shares["new"] == pytest.approx(0.8, abs=0.03)


def test_thompson_is_reproducible_with_a_seeded_rng() -> None:
    arms = {"a": _binary(30, 10), "b": _binary(30, 12), "c": _binary(5, 2)}
    first = bandit_weights("thompson", arms, rng=np.random.default_rng(11))
    assert first == bandit_weights("thompson", arms, rng=np.random.default_rng(11))


def test_continuous_thompson_favours_the_higher_mean() -> None:
    rng = np.random.default_rng(5)
    arms = {"a": _continuous(rng, 300, 10.0, 4.0), "b": _continuous(rng, 300, 12.0, 4.0), "c": ArmStats()}
    shares = bandit_weights("thompson", arms, reward=CONTINUOUS, rng=np.random.default_rng(6))
    assert shares["a"] == pytest.approx(0.01, abs=0.005)
    # The arm with no reward is sampled around the common mean (about 11) with a heavy-tailed t as wide
    # as the rewards' spread, so it is tried a lot (about 0.4 here), though less than the leader.
    assert shares["b"] > 0.5
    assert 0.2 < shares["c"] < shares["b"]
    # A clear gap with much data: everything but the floors.
    arms = {"a": _continuous(rng, 5000, 10.0, 4.0), "b": _continuous(rng, 5000, 12.0, 4.0)}
    shares = bandit_weights("thompson", arms, reward=CONTINUOUS, rng=np.random.default_rng(6))
    assert shares == pytest.approx({"a": 0.01, "b": 0.99})


def test_continuous_thompson_prior_does_not_depend_on_the_reward_unit() -> None:
    rng = np.random.default_rng(8)
    rewards = {"a": rng.normal(0.0, 1.0, 5), "b": rng.normal(0.5, 1.0, 3), "c": np.array([0.2])}
    reference = None
    for scale, shift in ((1.0, 0.0), (1000.0, 0.0), (0.01, -7.0)):
        arms = {name: ArmStats.of((values * scale + shift).tolist()) for name, values in rewards.items()}
        shares = bandit_weights("thompson", arms, reward=CONTINUOUS, rng=np.random.default_rng(9))
        reference = reference or shares
        assert shares == pytest.approx(reference, abs=2e-3)


def test_simulate_regret_shape_and_uniform_baseline() -> None:
    regret = simulate_regret("weights", RATES, 5000, seed=1)
    assert regret.shape == (5000,)
    assert np.all(np.diff(regret) >= 0)
    # The uniform split's expected regret is best - average = 0.035 a request.
    assert regret[-1] == pytest.approx(5000 * (0.12 - np.mean(RATES)), rel=0.1)
    assert simulate_regret("thompson", RATES, 0).shape == (0,)
    with pytest.raises(ValueError, match=r"^rates:"):
        simulate_regret("thompson", (0.5, 1.5), 100)
    with pytest.raises(ValueError, match=r"^update_every:"):
        simulate_regret("thompson", RATES, 100, update_every=0)
    with pytest.raises(ValueError, match=r"^policy:"):
        simulate_regret("greedy", RATES, 100)


def test_simulate_regret_is_deterministic_per_seed() -> None:
    first = simulate_regret("thompson", RATES, 3000, seed=4)
    assert np.array_equal(first, simulate_regret("thompson", RATES, 3000, seed=4))


@pytest.mark.parametrize("reward", [BINARY, CONTINUOUS])
def test_bandits_beat_the_uniform_split_under_delayed_rewards(reward: str) -> None:
    requests, seeds = 20_000, range(8)
    mean = {
        policy: np.mean([simulate_regret(policy, RATES, requests, reward=reward, seed=s) for s in seeds], axis=0)
        for policy in POLICIES
    }
    uniform = mean["weights"][-1]
    for policy, regret in mean.items():
        first, second = regret[requests // 2 - 1], regret[-1] - regret[requests // 2 - 1]
        print(
            f"{reward:10} {policy:14} final regret {regret[-1]:7.1f}  uniform/policy {uniform / regret[-1]:5.1f}x"
            f"  first half {first:6.1f}  second half {second:6.1f}"
        )
    thompson = mean["thompson"]
    assert thompson[-1] * 5 <= uniform
    # Sub-linear: once the best arm is found, the second half costs much less than the first.
    half = thompson[requests // 2 - 1]
    assert thompson[-1] - half < 0.5 * half
    assert mean["epsilon-greedy"][-1] < uniform
    assert mean["ucb1"][-1] < uniform
