"""Multi-armed bandits over production variants, expressed as traffic shares.

The router only makes a cheap weighted random choice per request. About once a second, off the
request path, the control plane reads each variant's rewards so far (``ArmStats``) and asks
:func:`bandit_weights` for a new share per variant, which it stores and applies as the variants'
weights. The policy is therefore a map *statistics -> shares*, never a per-request decision:

* rewards arrive late (a click, a conversion, a label minutes later), so between two updates many
  requests are routed on the same statistics anyway, and a per-request decision would not know more;
* the router stays a weighted choice with no shared state to lock, whatever the policy.

The policies, as shares (k arms):

``epsilon-greedy``
    the arm with the best mean gets ``1 - epsilon + epsilon/k``, every other arm ``epsilon/k``.
    Arms tied for the best mean split the greedy part ``1 - epsilon``. An arm with no reward yet
    joins the tie for the best (its mean is unknown, so it might be the best): a new variant is
    tried at once, next to the current leader rather than instead of it, so a variant that gets no
    feedback for a while cannot take nearly all traffic just by being unmeasured.
``ucb1``
    Auer, Cesa-Bianchi & Fischer (2002): index ``mean_i + c * sqrt(2 ln N / n_i)`` with N the rewards
    over all arms. Arms with no reward have an infinite index, so they come first. The arm(s) with the
    highest index share all traffic left above the floors. ``c = 1`` for binary rewards (UCB1's
    bonus is for rewards in [0, 1], i.e. sub-Gaussian with scale 1/2); for continuous rewards the
    range is unknown and the bonus is that of a sigma-sub-Gaussian reward, ``c = 2 * sigma``, with
    sigma plugged in as the within-arm standard deviation pooled over arms (the standard deviation
    of all rewards together while no arm has two; 0 if the rewards do not vary, then the index is
    the mean). Recomputed once a second on delayed rewards, this is a *batched* UCB: every request
    in a batch goes where the index pointed at its start, which is what the delayed feedback allows.
``thompson``
    each arm's share is the posterior probability that it is the best, estimated from ``draws``
    joint Monte Carlo draws of the arms' means (the Thompson sampling choice probabilities, so a
    router that picks by these shares *is* Thompson sampling with statistics a batch old).
    Binary rewards: Beta(1 + successes, 1 + failures), a uniform prior. Continuous rewards: a Normal
    model with unknown mean and variance, Normal-Inverse-Gamma prior, whose posterior for the mean
    is a Student t. The prior is weak and scale-free (rewards may be in any unit): mean mu0 = the
    mean of all rewards over all arms with kappa0 = 1 (one pseudo-reward, so it only shrinks arms
    with very few rewards toward the common mean, and the same for every arm); variance alpha0 = 1,
    beta0 = the pooled within-arm variance (as for UCB1; 1 when there is no variation at all), i.e.
    about two pseudo-rewards of the usual spread. An arm with no reward samples its mean from a
    t with 2 degrees of freedom around mu0: heavy tails, so it gets tried.

Shares of every policy then get a floor, ``min_weight``, so that no variant ever stops receiving
traffic: the policy might be wrong (few rewards, a variant that changed, rewards that drift), and
an arm with no traffic never gets the chance to show it. Arms below the floor are raised to it and
the mass is taken from the arms above it in proportion to how far above they are, so shares that
already respect the floor are kept exactly (the epsilon-greedy shares above, whenever
``epsilon / k >= min_weight``) and no arm drops below it. If ``k * min_weight > 1`` no such shares
exist and every arm gets ``1 / k``.

:func:`simulate_regret` is a small pure simulator with delayed rewards and batched updates, for
the tests and as a reference for the endpoint benchmark.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from moorage.experiments.rewards import BINARY, REWARD_KINDS, ArmStats

POLICIES = ("weights", "epsilon-greedy", "ucb1", "thompson")
BANDIT_POLICIES = ("epsilon-greedy", "ucb1", "thompson")

__all__ = ["BANDIT_POLICIES", "POLICIES", "bandit_weights", "simulate_regret"]


def bandit_weights(
    policy: str,
    arms: Mapping[str, ArmStats],
    *,
    reward: str = BINARY,
    epsilon: float = 0.1,
    min_weight: float = 0.01,
    rng: np.random.Generator | None = None,
    draws: int = 4000,
) -> dict[str, float]:
    """A traffic share per arm (same keys, same order) summing to 1, each at least ``min_weight``.

    ``policy`` is one of ``BANDIT_POLICIES``; ``"weights"`` means no bandit (the configured weights
    stay), so it is refused here rather than silently replaced by some shares. ``rng`` is used by
    Thompson sampling only (a fresh ``np.random.default_rng()`` by default). Raises ``ValueError``
    naming the parameter that is wrong.
    """
    _check_common(policy, reward, epsilon, min_weight)
    if policy == "weights":
        raise ValueError(
            "policy: 'weights' is not a bandit policy (the configured weights stay); "
            f"bandit weights are computed for {', '.join(BANDIT_POLICIES)}"
        )
    if not arms:
        raise ValueError("arms: at least one arm is needed")
    if isinstance(draws, bool) or not isinstance(draws, int | np.integer) or draws < 1:
        raise ValueError(f"draws: must be a positive integer, got {draws!r}")
    names = list(arms)
    stats = [arms[name] for name in names]
    for name, arm in zip(names, stats, strict=True):
        _check_stats(name, arm, reward)
    k = len(names)
    if k * min_weight >= 1.0:
        # Also k * min_weight == 1: then equal shares are the only ones that respect the floor.
        return dict.fromkeys(names, 1.0 / k)

    n = np.array([arm.n for arm in stats], dtype=float)
    total = np.array([arm.total for arm in stats], dtype=float)
    total_sq = np.array([arm.total_sq for arm in stats], dtype=float)
    if policy == "epsilon-greedy":
        shares = _epsilon_greedy(n, total, epsilon)
    elif policy == "ucb1":
        shares = _ucb1(n, total, total_sq, reward)
    else:
        generator = rng if rng is not None else np.random.default_rng()
        shares = _thompson(n, total, total_sq, reward, generator, draws)
    floored = _floor(shares, min_weight)
    return {name: float(share) for name, share in zip(names, floored, strict=True)}


def simulate_regret(
    policy: str,
    rates: Sequence[float],
    requests: int,
    *,
    delay: int = 200,
    update_every: int = 100,
    reward: str = BINARY,
    seed: int = 0,
    epsilon: float = 0.1,
    min_weight: float = 0.01,
) -> np.ndarray:
    """Cumulative (pseudo-)regret after each of ``requests`` requests, routed as the router would.

    Arm i's rewards have expected value ``rates[i]``: Bernoulli(rates[i]) for binary rewards, and
    for continuous ones Normal with the same mean and variance (``rates[i] * (1 - rates[i])`` when
    the rate is in [0, 1], else 1), so both kinds are equally hard. The weights start uniform and are
    recomputed every ``update_every`` requests from the rewards known by then; request i's reward is
    known from request ``i + delay + 1`` on (``delay = 0``: known before the next request).
    ``"weights"`` is the uniform split throughout. Regret counts, per request, the best rate minus
    the chosen arm's rate (expected rewards, so the curve is not noisy from the rewards themselves).
    """
    _check_common(policy, reward, epsilon, min_weight)
    means = np.asarray(rates, dtype=float)
    if means.ndim != 1 or means.size == 0 or not np.all(np.isfinite(means)):
        raise ValueError("rates: need at least one finite expected reward")
    if reward == BINARY and (np.any(means < 0) or np.any(means > 1)):
        raise ValueError("rates: binary rewards need rates in [0, 1]")
    for label, value, low in (("requests", requests, 0), ("delay", delay, 0), ("update_every", update_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{label}: must be an integer >= {low}, got {value!r}")

    k = means.size
    # Separate streams: the environment (which arm, which reward) does not shift when a policy
    # consumes random numbers, so the policies meet the same requests.
    env_rng, policy_rng = np.random.default_rng(seed).spawn(2)
    pick = env_rng.random(requests)
    noise = env_rng.random(requests) if reward == BINARY else env_rng.standard_normal(requests)
    inside = (means >= 0) & (means <= 1)
    spread = np.where(inside, np.sqrt(np.where(inside, means * (1 - means), 1.0)), 1.0)

    chosen = np.empty(requests, dtype=np.intp)
    gained = np.empty(requests, dtype=float)
    names = [f"arm{i}" for i in range(k)]
    counts = np.zeros(k)
    sums = np.zeros(k)
    sums_sq = np.zeros(k)
    known = 0
    shares = np.full(k, 1.0 / k)
    for start in range(0, requests, update_every):
        stop = min(start + update_every, requests)
        visible = max(0, start - delay)
        if visible > known:
            arm_ids, values = chosen[known:visible], gained[known:visible]
            counts += np.bincount(arm_ids, minlength=k)
            sums += np.bincount(arm_ids, weights=values, minlength=k)
            sums_sq += np.bincount(arm_ids, weights=values * values, minlength=k)
            known = visible
        if policy != "weights":
            stats = {
                name: ArmStats(int(c), float(s), float(q))
                for name, c, s, q in zip(names, counts, sums, sums_sq, strict=True)
            }
            weights = bandit_weights(
                policy, stats, reward=reward, epsilon=epsilon, min_weight=min_weight, rng=policy_rng
            )
            shares = np.fromiter(weights.values(), dtype=float, count=k)
        edges = np.cumsum(shares)
        block = np.minimum(np.searchsorted(edges, pick[start:stop] * edges[-1], side="right"), k - 1)
        chosen[start:stop] = block
        if reward == BINARY:
            gained[start:stop] = noise[start:stop] < means[block]
        else:
            gained[start:stop] = means[block] + spread[block] * noise[start:stop]
    return np.cumsum(means.max() - means[chosen])


def _check_common(policy: str, reward: str, epsilon: float, min_weight: float) -> None:
    if policy not in POLICIES:
        raise ValueError(f"policy: unknown policy {policy!r}, expected one of {', '.join(POLICIES)}")
    if reward not in REWARD_KINDS:
        raise ValueError(f"reward: unknown reward kind {reward!r}, expected one of {', '.join(REWARD_KINDS)}")
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon: must be in [0, 1], got {epsilon!r}")
    if not 0.0 <= min_weight < 1.0:
        raise ValueError(f"min_weight: must be in [0, 1), got {min_weight!r}")


def _check_stats(name: str, arm: ArmStats, reward: str) -> None:
    if arm.n < 0 or not math.isfinite(arm.total) or not math.isfinite(arm.total_sq) or arm.total_sq < 0:
        raise ValueError(f"arms: arm {name!r} has invalid statistics {arm!r}")
    if reward == BINARY and not 0.0 <= arm.total <= arm.n:
        # total counts successes; more successes than rewards means the stats are not binary ones.
        raise ValueError(f"arms: arm {name!r} has {arm.total} successes out of {arm.n} binary rewards")


def _floor(shares: np.ndarray, min_weight: float) -> np.ndarray:
    """Raise shares below the floor to it, taking the mass from the others' excess over the floor."""
    low = shares < min_weight
    if not low.any():
        return shares
    excess = np.where(low, 0.0, shares - min_weight)
    # The excess sums to at least 1 - k * min_weight > 0 (callers handle k * min_weight >= 1), so the
    # scale is in (0, 1] and no arm above the floor is pushed below it.
    scale = (1.0 - shares.size * min_weight) / excess.sum()
    return min_weight + excess * scale


def _epsilon_greedy(n: np.ndarray, total: np.ndarray, epsilon: float) -> np.ndarray:
    k = n.size
    untried = n == 0
    means = np.divide(total, n, out=np.full(k, -np.inf), where=~untried)
    best = untried | (means == means.max()) if (~untried).any() else untried
    return epsilon / k + (1.0 - epsilon) * best / best.sum()


def _pooled_std(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> float:
    """Within-arm standard deviation pooled over arms; of all rewards together while no arm has two."""
    tried = n > 0
    squares = total_sq[tried] - total[tried] ** 2 / n[tried]
    dof = (n[tried] - 1).sum()
    if dof > 0:
        return math.sqrt(max(0.0, squares.sum() / dof))
    count = n.sum()
    if count >= 2:
        return math.sqrt(max(0.0, (total_sq.sum() - total.sum() ** 2 / count) / (count - 1)))
    return 0.0


def _ucb1(n: np.ndarray, total: np.ndarray, total_sq: np.ndarray, reward: str) -> np.ndarray:
    untried = n == 0
    if untried.any():
        top = untried
    else:
        scale = 1.0 if reward == BINARY else 2.0 * _pooled_std(n, total, total_sq)
        index = total / n + scale * np.sqrt(2.0 * math.log(n.sum()) / n)
        # Exact ties happen (equal statistics); a relative tolerance keeps rounding from breaking them.
        top = index >= index.max() - 1e-12 * max(1.0, abs(index.max()))
    return top / top.sum()


def _thompson(
    n: np.ndarray,
    total: np.ndarray,
    total_sq: np.ndarray,
    reward: str,
    rng: np.random.Generator,
    draws: int,
) -> np.ndarray:
    k = n.size
    if reward == BINARY:
        samples = rng.beta(1.0 + total, 1.0 + n - total, size=(draws, k))
    else:
        count = n.sum()
        mu0 = total.sum() / count if count else 0.0
        kappa0, alpha0 = 1.0, 1.0
        beta0 = _pooled_std(n, total, total_sq) ** 2 or 1.0
        mean = np.divide(total, n, out=np.zeros(k), where=n > 0)
        squares = np.maximum(0.0, total_sq - mean * total)
        kappa = kappa0 + n
        mu = (kappa0 * mu0 + total) / kappa
        alpha = alpha0 + n / 2.0
        beta = beta0 + squares / 2.0 + kappa0 * n * (mean - mu0) ** 2 / (2.0 * kappa)
        # Marginal posterior of the mean: Student t, 2 alpha degrees of freedom, scale^2 beta/(alpha kappa).
        samples = mu + np.sqrt(beta / (alpha * kappa)) * rng.standard_t(2.0 * alpha, size=(draws, k))
    wins = np.bincount(samples.argmax(axis=1), minlength=k)
    return wins / draws
