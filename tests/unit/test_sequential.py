"""The mSPRT's promise, by simulation: peeking every 100 rewards does not inflate its false positives.

Each simulation draws the rewards of many runs at once (runs x looks arrays of cumulative sufficient
statistics) and feeds them to ``sequential_test``, the vectorised code ``compare`` itself calls. Run
with ``-s`` to see the measured shares printed side by side.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from moorage.experiments.rewards import BINARY, CONTINUOUS, ArmStats
from moorage.experiments.sequential import (
    MIN_SAMPLES,
    NO_DIFFERENCE_YET,
    NOT_ENOUGH_DATA,
    compare,
    log_mixture_likelihood_ratio,
    mean_bounds,
    mean_interval,
    samples_still_needed,
    sequential_test,
)

ALPHA = 0.05
RUNS = 1000
BATCH = 100  # a look after every 100 rewards per arm ...
HORIZON = 20_000  # ... up to 20,000 rewards per arm: 200 looks
LOOKS = HORIZON // BATCH
# the simulation's own error: a share of runs measured on RUNS runs is within 2 standard errors
SLACK = 2.0 * math.sqrt(ALPHA * (1.0 - ALPHA) / RUNS)

Arms = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _looks_n() -> np.ndarray:
    return np.broadcast_to(np.arange(1, LOOKS + 1, dtype=float) * BATCH, (RUNS, LOOKS))


def _binary_runs(p_a: float, p_b: float, seed: int) -> Arms:
    """n, total_a, total_sq_a, total_b, total_sq_b at each look of each run (0/1 rewards: sq == total)."""
    rng = np.random.default_rng(seed)
    total_a = np.cumsum(rng.binomial(BATCH, p_a, (RUNS, LOOKS)), axis=1).astype(float)
    total_b = np.cumsum(rng.binomial(BATCH, p_b, (RUNS, LOOKS)), axis=1).astype(float)
    return _looks_n(), total_a, total_a, total_b, total_b


def _exponential_runs(mean_a: float, mean_b: float, seed: int) -> Arms:
    """Skewed continuous rewards; drawn one look at a time so memory stays at runs x batch."""
    rng = np.random.default_rng(seed)
    sums = np.empty((4, RUNS, LOOKS))
    for look in range(LOOKS):
        a = rng.exponential(mean_a, (RUNS, BATCH))
        b = rng.exponential(mean_b, (RUNS, BATCH))
        sums[:, :, look] = a.sum(axis=1), (a * a).sum(axis=1), b.sum(axis=1), (b * b).sum(axis=1)
    total_a, total_sq_a, total_b, total_sq_b = np.cumsum(sums, axis=2)
    return _looks_n(), total_a, total_sq_a, total_b, total_sq_b


def _naive_z_rejects(arms: Arms, reward: str) -> np.ndarray:
    """The fixed-horizon two-sample z-test, wrongly applied at every look (pooled variance for rates)."""
    n, total_a, total_sq_a, total_b, total_sq_b = arms
    mean_a, mean_b = total_a / n, total_b / n
    if reward == BINARY:
        pooled = (total_a + total_b) / (2 * n)
        se2 = 2 * pooled * (1 - pooled) / n
    else:
        se2 = ((total_sq_a - n * mean_a**2) + (total_sq_b - n * mean_b**2)) / ((n - 1) * n)
    z = (mean_b - mean_a) / np.sqrt(se2)
    return np.abs(z) > NormalDist().inv_cdf(1 - ALPHA / 2)


@pytest.mark.parametrize(
    ("reward", "arms"),
    [
        pytest.param(BINARY, lambda: _binary_runs(0.1, 0.1, seed=1), id="binary-p0.1"),
        pytest.param(CONTINUOUS, lambda: _exponential_runs(1.0, 1.0, seed=2), id="exponential"),
    ],
)
def test_an_a_a_test_peeked_at_200_times_declares_a_winner_at_most_alpha_of_the_time(reward, arms) -> None:
    runs = arms()
    n, total_a, total_sq_a, total_b, total_sq_b = runs
    looks = sequential_test(n, total_a, total_sq_a, n, total_b, total_sq_b, alpha=ALPHA, reward=reward)
    msprt = float((looks.p_value <= ALPHA).any(axis=1).mean())
    naive = float(_naive_z_rejects(runs, reward).any(axis=1).mean())
    print(f"\nA/A {reward}, {LOOKS} looks x {RUNS} runs: ever declared a winner: "
          f"mSPRT {msprt:.3f}   naive z-test at every look {naive:.3f}   (alpha {ALPHA})")
    assert msprt <= ALPHA + SLACK
    assert naive > 0.15
    # the confidence sequence is the same test inverted: 0 stays inside at every look in the same runs
    covered = ((looks.low <= 0.0) & (looks.high >= 0.0)).all(axis=1).mean()
    assert covered == pytest.approx(1.0 - msprt)


def test_a_real_lift_is_found_in_most_runs_and_the_intervals_cover_it_at_every_look() -> None:
    p_a, p_b = 0.10, 0.13
    n, total_a, total_sq_a, total_b, total_sq_b = _binary_runs(p_a, p_b, seed=3)
    looks = sequential_test(n, total_a, total_sq_a, n, total_b, total_sq_b, alpha=ALPHA, reward=BINARY)
    rejected = looks.p_value <= ALPHA
    better = (rejected & (looks.difference > 0)).any(axis=1)
    worse = (rejected & (looks.difference < 0)).any(axis=1)
    stop = np.where(rejected.any(axis=1), (rejected.argmax(axis=1) + 1) * BATCH, math.inf)
    covered = ((looks.low <= p_b - p_a) & (p_b - p_a <= looks.high)).all(axis=1).mean()
    print(f"\n0.10 vs 0.13: 'B better' by {HORIZON} per arm in {better.mean():.3f} of runs, 'B worse' in "
          f"{worse.mean():.3f}; median stop {np.median(stop):.0f} per arm; intervals cover 0.03 at all looks "
          f"in {covered:.3f}")
    assert better.mean() >= 0.9
    assert worse.mean() <= ALPHA + SLACK
    assert np.median(stop) < HORIZON / 4
    assert covered >= 1.0 - ALPHA - SLACK


def test_continuous_rewards_find_a_small_effect() -> None:
    n, total_a, total_sq_a, total_b, total_sq_b = _exponential_runs(1.0, 1.1, seed=4)
    looks = sequential_test(n, total_a, total_sq_a, n, total_b, total_sq_b, alpha=ALPHA, reward=CONTINUOUS)
    rejected = looks.p_value <= ALPHA
    assert (rejected & (looks.difference > 0)).any(axis=1).mean() >= 0.9
    assert ((looks.low <= 0.1) & (looks.high >= 0.1)).all(axis=1).mean() >= 1.0 - ALPHA - SLACK


def test_the_mean_interval_covers_the_rate_at_every_look() -> None:
    n, total_a, _, _, _ = _binary_runs(0.1, 0.1, seed=5)
    low, high = mean_bounds(n, total_a, total_a, alpha=ALPHA, reward=BINARY)
    assert ((low <= 0.1) & (high >= 0.1)).all(axis=1).mean() >= 1.0 - ALPHA - SLACK
    # and it is the scalar API's interval
    run, look = 7, 42
    arm = ArmStats(int(n[run, look]), float(total_a[run, look]), float(total_a[run, look]))
    interval = mean_interval(arm)
    assert (interval.low, interval.high) == (pytest.approx(low[run, look]), pytest.approx(high[run, look]))


def test_compare_is_the_vectorised_test_on_one_look() -> None:
    n, total_a, total_sq_a, total_b, total_sq_b = _binary_runs(0.10, 0.13, seed=3)
    looks = sequential_test(n, total_a, total_sq_a, n, total_b, total_sq_b)
    for run, look in [(0, 0), (1, 9), (2, 30), (3, 199)]:
        control = ArmStats(int(n[run, look]), float(total_a[run, look]), float(total_sq_a[run, look]))
        treatment = ArmStats(int(n[run, look]), float(total_b[run, look]), float(total_sq_b[run, look]))
        result = compare(control, treatment, treatment_name="v2")
        assert result.difference == pytest.approx(looks.difference[run, look])
        assert result.p_value == pytest.approx(looks.p_value[run, look])
        assert result.interval.low == pytest.approx(looks.low[run, look])
        assert result.interval.high == pytest.approx(looks.high[run, look])
        decided = looks.p_value[run, look] <= ALPHA
        assert result.verdict == ("v2 better" if decided else NO_DIFFERENCE_YET)
        # the p-value at alpha and the interval excluding 0 are one decision
        assert decided == (result.interval.low > 0.0 or result.interval.high < 0.0)


def test_the_helper_is_the_closed_form_normal_mixture_ratio() -> None:
    n_a, mean_a, var_a, n_b, mean_b, var_b, tau2 = 400, 0.5, 2.0, 600, 0.8, 3.0, 0.04
    s2 = var_a / n_a + var_b / n_b
    expected = math.log(math.sqrt(s2 / (s2 + tau2)) * math.exp(tau2 * 0.3**2 / (2 * s2 * (s2 + tau2))))
    got = log_mixture_likelihood_ratio(n_a, mean_a, var_a, n_b, mean_b, var_b, tau2)
    assert float(got) == pytest.approx(expected)
    # at theta0 = the observed difference the data speak against nothing: Lambda < 1
    assert float(log_mixture_likelihood_ratio(n_a, mean_a, var_a, n_b, mean_b, var_b, tau2, theta0=0.3)) < 0


def test_too_few_rewards_declare_nothing() -> None:
    few = compare(ArmStats(MIN_SAMPLES - 1, 0, 0), ArmStats(MIN_SAMPLES - 1, 9, 9))
    assert few.verdict == NOT_ENOUGH_DATA
    assert few.p_value == 1.0 and few.needed_per_variant is None
    assert (few.interval.low, few.interval.high) == (-1.0, 1.0)
    # binary: no success at all yet (or no failure) is no information about a difference
    assert compare(ArmStats(500, 0, 0), ArmStats(500, 0, 0)).verdict == NOT_ENOUGH_DATA
    assert compare(ArmStats(500, 500, 500), ArmStats(500, 500, 500)).verdict == NOT_ENOUGH_DATA
    # continuous: all rewards equal leaves the variance unknown
    same = ArmStats.of([2.0] * 50)
    assert compare(same, same, reward=CONTINUOUS).verdict == NOT_ENOUGH_DATA
    # a single arm's interval with too few data is the whole range, never NaN
    assert mean_interval(ArmStats(3, 1, 1)) == mean_interval(ArmStats(3, 1, 1), reward=BINARY)
    assert (mean_interval(ArmStats(3, 1, 1)).low, mean_interval(ArmStats(3, 1, 1)).high) == (0.0, 1.0)
    unbounded = mean_interval(ArmStats.of([1.0, 2.0]), reward=CONTINUOUS)
    assert (unbounded.low, unbounded.high) == (-math.inf, math.inf)


def test_the_p_value_is_a_running_minimum() -> None:
    control, treatment = ArmStats(1000, 100, 100), ArmStats(1000, 101, 101)
    alone = compare(control, treatment)
    assert alone.p_value == 1.0 and alone.verdict == NO_DIFFERENCE_YET
    kept = compare(control, treatment, previous_p_value=0.01)
    assert kept.p_value == 0.01
    assert kept.verdict == "B better"  # decided at an earlier look, and that decision stays valid
    assert compare(control, treatment, previous_p_value=0.9).p_value == 0.9
    # a smaller p-value now replaces the previous one
    strong = compare(ArmStats(5000, 500, 500), ArmStats(5000, 650, 650), previous_p_value=0.5)
    assert strong.p_value == compare(ArmStats(5000, 500, 500), ArmStats(5000, 650, 650)).p_value < 0.5


def test_lift_is_relative_to_the_control_and_nan_when_the_control_mean_is_zero() -> None:
    result = compare(ArmStats(2000, 200, 200), ArmStats(2000, 260, 260), treatment_name="new")
    assert result.difference == pytest.approx(0.03)
    assert result.lift == pytest.approx(0.3)
    assert result.verdict in {"new better", NO_DIFFERENCE_YET}
    zero = compare(ArmStats(100, 0, 0), ArmStats(100, 10, 10))
    assert math.isnan(zero.lift)
    assert zero.difference == pytest.approx(0.1)


def test_a_worse_treatment_is_called_worse() -> None:
    result = compare(ArmStats(5000, 1000, 1000), ArmStats(5000, 800, 800), treatment_name="C")
    assert result.verdict == "C worse"
    assert result.interval.high < 0.0 and result.needed_per_variant == 0


def test_needed_per_variant_is_where_the_observed_effect_would_cross_the_boundary() -> None:
    start = compare(ArmStats(100, 10, 10), ArmStats(100, 13, 13))
    needed = start.needed_per_variant
    assert needed is not None and needed > 0
    # the same means on the larger sample: rejected exactly from there on
    at = 100 + needed
    assert compare(ArmStats(at, 0.10 * at, 0.10 * at), ArmStats(at, 0.13 * at, 0.13 * at)).verdict == "B better"
    before = at - 1
    assert compare(ArmStats(before, 0.10 * before, 0.10 * before),
                   ArmStats(before, 0.13 * before, 0.13 * before)).verdict == NO_DIFFERENCE_YET
    assert compare(ArmStats(100, 10, 10), ArmStats(100, 10, 10)).needed_per_variant is None
    assert samples_still_needed(0.0, 1e-3, 1e-3, 100, 100, ALPHA) is None
    assert samples_still_needed(math.nan, 1e-3, 1e-3, 100, 100, ALPHA) is None


def test_mixture_variance_overrides_the_default() -> None:
    control, treatment = ArmStats(3000, 300, 300), ArmStats(3000, 345, 345)
    default = compare(control, treatment)
    tuned = compare(control, treatment, mixture_variance=0.015**2)
    assert tuned.p_value != default.p_value
    assert tuned.interval.high - tuned.interval.low != pytest.approx(default.interval.high - default.interval.low)


@pytest.mark.parametrize(
    "call",
    [
        lambda: compare(ArmStats(100, 10, 10), ArmStats(100, 12, 12), reward="count"),
        lambda: mean_interval(ArmStats(100, 10, 10), reward="ratings"),
        lambda: compare(ArmStats(100, 10, 10), ArmStats(100, 12, 12), alpha=1.5),
        lambda: compare(ArmStats(100, 10, 10), ArmStats(100, 12, 12), mixture_variance=0.0),
        lambda: compare(ArmStats(100, 10, 10), ArmStats(100, 12, 12), previous_p_value=1.5),
    ],
    ids=["compare-reward", "mean-interval-reward", "alpha", "mixture-variance", "previous-p-value"],
)
def test_bad_arguments_raise_value_error(call) -> None:
    with pytest.raises(ValueError):
        call()
