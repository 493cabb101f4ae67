"""Sequential A/B comparison that stays valid however often the results are looked at.

Why a fixed-horizon test fails when peeked at
---------------------------------------------
A two-sample t-test (or z-test) at level alpha promises a false-positive rate of alpha for *one*
look at a sample size fixed in advance. Looking every day and stopping at the first "significant"
result is a different procedure: the z-statistic of an A/A test wanders like a random walk, and a
random walk crosses +-1.96 sooner or later with probability one (law of the iterated logarithm).
With a look after every 100 rewards per arm up to 20,000 the naive procedure declares a winner in
over 40% of A/A tests instead of 5% (``tests/unit/test_sequential.py`` measures it).

The method: the mixture sequential probability ratio test (mSPRT)
-----------------------------------------------------------------
Johari, Koomen, Pekelis & Walsh, "Peeking at A/B tests: why it matters, and what to do about it"
(KDD 2017) and "Always valid inference" (Operations Research 2022). Let theta be the treatment mean
minus the control mean, theta_hat the observed difference and s2 its variance,
``s2 = var_a / n_a + var_b / n_b``. Averaging the Gaussian likelihood ratio of theta against theta0
over a normal mixing distribution theta ~ N(theta0, tau2) gives, in closed form,

    Lambda(theta0) = sqrt(s2 / (s2 + tau2)) * exp(tau2 * (theta_hat - theta0)^2 / (2 * s2 * (s2 + tau2)))

Under theta = theta0 this is a nonnegative martingale with mean 1 (in the information time 1/s2),
so by Ville's inequality it ever exceeds 1/alpha with probability at most alpha: rejecting the
first time ``Lambda >= 1/alpha`` keeps the error at alpha at *every* look, including at looks chosen
after seeing the data. Hence:

- the always-valid p-value ``p_n = min(1, 1 / Lambda_n(0))``; its running minimum over the looks is
  still always valid (``compare(previous_p_value=...)`` keeps it);
- the always-valid confidence interval (a confidence sequence, the "normal mixture" boundary of
  Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform, nonparametric, nonasymptotic confidence
  sequences", Ann. Statist. 2021): the thetas0 not rejected, ``theta_hat +- h`` with
  ``h^2 = 2 * s2 * (s2 + tau2) / tau2 * (log(1/alpha) + log((s2 + tau2) / s2) / 2)``. It contains the
  true difference at all looks simultaneously with probability at least 1 - alpha. It is wider than
  the fixed-horizon interval (about 2.15 instead of 1.96 standard errors where tau2 is best tuned,
  growing like sqrt(log n) away from there): the price of being allowed to look at any time.

Parameters
----------
``alpha``: the error rate guaranteed over all looks together. ``mixture_variance`` (tau2): the spread
of effects the test is tuned for, in squared reward units. The boundary is tightest where
``s2 ~ tau2 / 8`` (for alpha = 0.05), i.e. about when an effect of size ~tau becomes detectable, and
loses only slowly (like log) elsewhere; a tau2 too small costs much more at small samples than one
too large does at large samples. Johari et al. fit tau2 to the effects seen in past experiments;
without such a history the default here is scale-free: ``tau2 = (0.1 * sigma)^2`` with sigma^2 the
average per-reward variance of the two arms, i.e. the effects of interest are "small" effects of
about 0.1 standard deviation (Cohen's d = 0.1; for a 10% conversion rate that is 3 points). With
that tau2 the interval of the difference is tightest near 1,600 rewards per arm. Pass
``mixture_variance`` to tune it to your own effect sizes.

Assumptions, and where they break
---------------------------------
- Rewards are independent, and each arm's mean does not change over time (no novelty or day-of-week
  effects): the test answers "are the means different", not "is the treatment better on Mondays".
- The arms are assigned at random in proportions that do not depend on the rewards seen so far. A
  bandit that shifts traffic towards the leader makes the sample means biased and the information
  time data-dependent; compare arms on a fixed split (or with a fixed exploration share).
- The variance of a reward is not known and is plugged in from the data at each look, the standard
  practice (Optimizely's Stats Engine does the same): for binary rewards p(1 - p) with p the pooled
  success rate of both arms (the variance under "no difference"), for continuous ones each arm's
  sample variance. The guarantee is then asymptotic rather than exact. The interval uses the same s2
  as the test (for rates the pooled one), so that it is exactly the set the test does not reject;
  pooled and separate variances differ little unless the two rates are far apart.
- The increments are approximately normal (the central limit theorem on the sample means). This is
  poor at very small samples, for binary rates near 0 or 1 (few successes: the plug-in variance is
  noisy and can be near 0), and for heavy-tailed continuous rewards; so nothing is declared below
  ``MIN_SAMPLES`` rewards per arm or, for binary rewards, before at least one success and one failure.
  With a first look at ~100 rewards per arm the simulated false-positive rate stays well below alpha
  for p = 0.1 and for exponential rewards.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from moorage.experiments.rewards import BINARY, REWARD_KINDS, ArmStats

MIN_SAMPLES = 10
"""Rewards each arm needs before anything is declared (the normal approximation's bare minimum)."""

DEFAULT_STANDARDIZED_EFFECT = 0.1
"""The default mixing sd tau, in units of a reward's standard deviation (Cohen's d of a small effect)."""

NOT_ENOUGH_DATA = "not enough data"
NO_DIFFERENCE_YET = "no difference detectable yet"


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Comparison:
    difference: float
    """Treatment mean minus control mean."""
    lift: float
    """difference / control mean; NaN when the control mean is 0 (or undefined)."""
    interval: Interval
    """Always-valid (1 - alpha) confidence interval of the difference."""
    p_value: float
    """Always-valid p-value of "no difference" (the running minimum when previous_p_value was given)."""
    verdict: str
    """"<name> better", "<name> worse", "no difference detectable yet" or "not enough data"."""
    needed_per_variant: int | None
    """More rewards per arm until the current effect would be detected (``samples_still_needed``); 0 once
    decided, None with not enough data or no observed difference."""


class SequentialLooks(NamedTuple):
    """The vectorised state of the test at one or many looks (arrays of one broadcast shape)."""

    difference: np.ndarray
    """Treatment mean minus control mean (NaN where an arm has no reward)."""
    variance: np.ndarray
    """s2, the plug-in variance of the difference (NaN where not enough data)."""
    mixture_variance: np.ndarray
    """tau2 used at each look."""
    log_likelihood_ratio: np.ndarray
    """log Lambda(0); 0 where not enough data (nothing learned yet)."""
    p_value: np.ndarray
    """min(1, 1 / Lambda(0)) at that look alone: take a running minimum along the looks."""
    low: np.ndarray
    high: np.ndarray
    enough: np.ndarray
    """Whether the look has enough data to declare anything."""


def _check(alpha: float, reward: str) -> None:
    if reward not in REWARD_KINDS:
        raise ValueError(f"reward must be one of {REWARD_KINDS}, not {reward!r}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), not {alpha!r}")


def log_mixture_likelihood_ratio(
    n_a: npt.ArrayLike,
    mean_a: npt.ArrayLike,
    var_a: npt.ArrayLike,
    n_b: npt.ArrayLike,
    mean_b: npt.ArrayLike,
    var_b: npt.ArrayLike,
    tau2: npt.ArrayLike,
    theta0: npt.ArrayLike = 0.0,
) -> np.ndarray:
    """log Lambda of the normal-mixture SPRT of ``mean_b - mean_a == theta0``, elementwise.

    The variances are those of one reward of each arm; the mixing distribution is N(theta0, tau2).
    """
    s2 = np.divide(var_a, n_a, dtype=float) + np.divide(var_b, n_b, dtype=float)
    deviation = np.asarray(mean_b, dtype=float) - np.asarray(mean_a, dtype=float) - np.asarray(theta0, dtype=float)
    return _log_lr(deviation, s2, np.asarray(tau2, dtype=float))


def _log_lr(deviation: np.ndarray, s2: np.ndarray, tau2: np.ndarray) -> np.ndarray:
    # log1p keeps precision when s2 >> tau2 (early looks with a small tau2)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -0.5 * np.log1p(tau2 / s2) + tau2 * deviation**2 / (2.0 * s2 * (s2 + tau2))


def _half_width(s2: np.ndarray, tau2: np.ndarray, alpha: float) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.sqrt(2.0 * s2 * (s2 + tau2) / tau2 * (math.log(1.0 / alpha) + 0.5 * np.log1p(tau2 / s2)))


def sequential_test(
    n_a: npt.ArrayLike,
    total_a: npt.ArrayLike,
    total_sq_a: npt.ArrayLike,
    n_b: npt.ArrayLike,
    total_b: npt.ArrayLike,
    total_sq_b: npt.ArrayLike,
    *,
    alpha: float = 0.05,
    reward: str = BINARY,
    mixture_variance: float | None = None,
) -> SequentialLooks:
    """The mSPRT of "no difference" and the confidence interval, from the arms' sufficient statistics.

    Elementwise over arrays (e.g. runs x looks of a simulation); ``compare`` is this on scalars. For
    binary rewards ``total_sq`` is not read (it equals ``total``).
    """
    _check(alpha, reward)
    if mixture_variance is not None and not mixture_variance > 0.0:
        raise ValueError(f"mixture_variance must be positive, not {mixture_variance!r}")
    n_a, n_b = np.asarray(n_a, dtype=float), np.asarray(n_b, dtype=float)
    total_a, total_b = np.asarray(total_a, dtype=float), np.asarray(total_b, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_a, mean_b = total_a / n_a, total_b / n_b
        if reward == BINARY:
            # pooled: the variance under the null being tested, and one estimate from twice the data
            pooled = (total_a + total_b) / (n_a + n_b)
            var_a = var_b = pooled * (1.0 - pooled)
            # one success and one failure overall, else the plug-in variance is 0 and nothing is known
            informative = (total_a + total_b > 0) & (total_a + total_b < n_a + n_b)
        else:
            var_a = np.maximum(0.0, (np.asarray(total_sq_a, dtype=float) - total_a * mean_a) / (n_a - 1.0))
            var_b = np.maximum(0.0, (np.asarray(total_sq_b, dtype=float) - total_b * mean_b) / (n_b - 1.0))
            informative = (var_a + var_b) > 0.0
        enough = (n_a >= MIN_SAMPLES) & (n_b >= MIN_SAMPLES) & informative
        s2 = np.where(enough, var_a / n_a + var_b / n_b, np.nan)
        if mixture_variance is None:
            tau2 = DEFAULT_STANDARDIZED_EFFECT**2 * (var_a + var_b) / 2.0
        else:
            tau2 = np.full_like(s2, mixture_variance)
        tau2 = np.where(enough, tau2, np.nan)
        difference = mean_b - mean_a
        log_lr = np.where(enough, _log_lr(difference, s2, tau2), 0.0)
        half = _half_width(s2, tau2, alpha)
    p_value = np.exp(-np.maximum(log_lr, 0.0))
    # a difference of rates lies in [-1, 1] whatever the data say
    bound = 1.0 if reward == BINARY else math.inf
    low = np.where(enough, np.maximum(difference - half, -bound), -bound)
    high = np.where(enough, np.minimum(difference + half, bound), bound)
    return SequentialLooks(difference, s2, tau2, log_lr, p_value, low, high, enough)


def samples_still_needed(difference: float, s2: float, tau2: float, n_a: int, n_b: int, alpha: float) -> int | None:
    """More rewards per arm until the test would reject "no difference", if the observed effect is real.

    The approximation: the observed ``difference`` is taken as the true effect and as the value the
    difference of means will have at every later look (the expected path), the per-reward variances
    stay at their plug-in values, and traffic keeps the current split. Then s2 shrinks like 1/k when
    both arms grow k-fold; the k solving ``log Lambda = log(1/alpha)`` (a unique root: log Lambda
    decreases in s2 wherever it is positive) gives ``ceil((k - 1) * max(n_a, n_b))``. The real
    stopping time is random around it; the path crosses there in about half the runs, earlier in some.
    0 when already rejected; None when the difference is 0 or an input is not finite/positive.
    """
    if not (math.isfinite(difference) and math.isfinite(s2) and math.isfinite(tau2)):
        return None
    if difference == 0.0 or s2 <= 0.0 or tau2 <= 0.0 or min(n_a, n_b) <= 0:
        return None
    threshold = math.log(1.0 / alpha)

    def excess(u: float) -> float:
        return -0.5 * math.log1p(tau2 / u) + tau2 * difference**2 / (2.0 * u * (u + tau2)) - threshold

    if excess(s2) >= 0.0:
        return 0
    # bisect on log(u) in (lo, s2]: excess > 0 below the root, < 0 above it
    lo = s2
    while excess(lo) < 0.0:
        lo /= 16.0
        if lo < s2 * 1e-30:  # effect too small to matter at any sample size we could represent
            return None
    hi = s2
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if excess(mid) >= 0.0:
            lo = mid
        else:
            hi = mid
        if hi / lo < 1.0 + 1e-12:
            break
    k = s2 / lo
    return max(0, math.ceil((k - 1.0) * max(n_a, n_b) - 1e-9))


def mean_bounds(
    n: npt.ArrayLike, total: npt.ArrayLike, total_sq: npt.ArrayLike, *, alpha: float = 0.05, reward: str = BINARY
) -> tuple[np.ndarray, np.ndarray]:
    """``mean_interval``'s low and high bounds, elementwise over arrays of one arm's sufficient statistics."""
    _check(alpha, reward)
    n, total = np.asarray(n, dtype=float), np.asarray(total, dtype=float)
    low_bound, high_bound = (0.0, 1.0) if reward == BINARY else (-math.inf, math.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / n
        if reward == BINARY:
            variance = mean * (1.0 - mean)
        else:
            variance = np.maximum(0.0, (np.asarray(total_sq, dtype=float) - total * mean) / (n - 1.0))
        enough = (n >= MIN_SAMPLES) & (variance > 0.0)
        half = _half_width(variance / n, DEFAULT_STANDARDIZED_EFFECT**2 * variance, alpha)
    low = np.where(enough, np.maximum(mean - half, low_bound), low_bound)
    high = np.where(enough, np.minimum(mean + half, high_bound), high_bound)
    return low, high


def mean_interval(arm: ArmStats, alpha: float = 0.05, reward: str = BINARY) -> Interval:
    """Always-valid (1 - alpha) confidence interval of one arm's mean (a normal-mixture confidence sequence).

    The same construction as the difference's: ``mean +- h(s2 = var / n, tau2)`` with ``tau2`` the default
    ``(0.1 * sd)^2``, the variance plugged in (binary: p(1 - p) of this arm; continuous: the sample
    variance). With too few data (below ``MIN_SAMPLES`` rewards, a binary arm without both a success
    and a failure, or continuous rewards that are all equal) nothing is known and the interval is the
    whole range: ``(-inf, inf)`` for continuous rewards and ``(0, 1)`` for binary ones (never NaN).
    Binary intervals are clipped to [0, 1].
    """
    low, high = mean_bounds(arm.n, arm.total, arm.total_sq, alpha=alpha, reward=reward)
    return Interval(float(low), float(high))


def compare(
    control: ArmStats,
    treatment: ArmStats,
    *,
    alpha: float = 0.05,
    reward: str = BINARY,
    previous_p_value: float | None = None,
    treatment_name: str = "B",
    mixture_variance: float | None = None,
) -> Comparison:
    """Compare the treatment with the control by the mSPRT; valid at this look and at every other one.

    ``previous_p_value`` is the p-value this comparison returned at the previous look: the returned one
    is then the running minimum (still always valid), so a decision once reached is not lost when the
    difference drifts back. The verdict: "not enough data" below the minimum sample (see the module
    docstring), else "<treatment_name> better"/"worse" (by the sign of the current difference) once the
    p-value is at most alpha, else "no difference detectable yet". ``mixture_variance`` overrides the
    default tau2 (in squared reward units).
    """
    looks = sequential_test(
        control.n, control.total, control.total_sq, treatment.n, treatment.total, treatment.total_sq,
        alpha=alpha, reward=reward, mixture_variance=mixture_variance,
    )
    difference = float(looks.difference)
    control_mean = control.mean
    lift = difference / control_mean if control_mean and math.isfinite(control_mean) else math.nan
    p_value = float(looks.p_value)
    if previous_p_value is not None:
        if not 0.0 <= previous_p_value <= 1.0:
            raise ValueError(f"previous_p_value must be in [0, 1], not {previous_p_value!r}")
        p_value = min(p_value, previous_p_value)
    interval = Interval(float(looks.low), float(looks.high))
    if not bool(looks.enough):
        return Comparison(difference, lift, interval, p_value, NOT_ENOUGH_DATA, None)
    if p_value <= alpha and difference > 0.0:
        verdict = f"{treatment_name} better"
    elif p_value <= alpha and difference < 0.0:
        verdict = f"{treatment_name} worse"
    else:
        verdict = NO_DIFFERENCE_YET
    needed = 0 if verdict != NO_DIFFERENCE_YET else samples_still_needed(
        difference, float(looks.variance), float(looks.mixture_variance), control.n, treatment.n, alpha
    )
    return Comparison(difference, lift, interval, p_value, verdict, needed)
