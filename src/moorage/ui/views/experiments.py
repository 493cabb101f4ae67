"""Routing experiments and shadow variants as the experiments page shows them.

The numbers are those of the report ``moorage experiment report`` prints
(``RoutingExperiments.report``: per variant the mean reward with its always-valid interval, each
treatment against the control with its verdict and the sample still needed); this adds where each
interval sits on a common scale, so the page draws them as bands side by side. Shadow variants are
read from the live snapshot (``shadow_stats``), as ``moorage shadow report`` reads them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG, Context
from moorage.control.routing_experiments import policy_of
from moorage.serving.snapshot import EndpointSnapshot


def experiment_endpoints(ctx: Context) -> list[dict[str, Any]]:
    """Every endpoint that runs an experiment (its config has routing tags) or has shadow variants."""
    out = []
    for row in ctx.store.list(ENDPOINT):
        config = ctx.store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", ""))
        policy = policy_of(ctx, config.name, config.body) if config is not None else None
        shadows = [v["VariantName"] for v in row.body.get("ShadowProductionVariants") or []]
        if (policy is None or not policy.tagged) and not shadows:
            continue
        out.append({"name": row.name, "status": row.status, "config": row.body.get("EndpointConfigName"),
                    "policy": policy.policy if policy is not None and policy.tagged else None,
                    "reward": policy.reward if policy is not None and policy.tagged else None,
                    "bandit": bool(policy is not None and policy.tagged and policy.bandit), "shadows": shadows})
    return out


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _scale(intervals: list[tuple[float | None, float | None, float | None]]) -> tuple[float, float]:
    points = [v for triple in intervals for v in triple if v is not None]
    if not points:
        return 0.0, 1.0
    low, high = min(points), max(points)
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    pad = (high - low) * 0.05
    return low - pad, high + pad


def _percent(value: float | None, low: float, high: float) -> float | None:
    return None if value is None else round(100 * (value - low) / (high - low), 2)


def report_view(report: Mapping[str, Any]) -> dict[str, Any]:
    """The report with each variant's interval placed on one scale (``band``: left and width in percent,
    the mean's position) and the comparisons ready to print."""
    variants = report.get("Variants") or []
    triples = []
    for v in variants:
        low, high = [*(v.get("MeanRewardInterval") or []), None, None][:2]
        triples.append((_finite(low), _finite(v.get("MeanReward")), _finite(high)))
    lo, hi = _scale(triples)
    rows = []
    for v, (low, mean, high) in zip(variants, triples, strict=True):
        guard = v.get("Guardrails") or {}
        p99 = _finite(guard.get("ModelLatencyP99Microseconds"))
        band = None
        if mean is not None:
            left = _percent(low if low is not None else lo, lo, hi) or 0.0
            right = _percent(high if high is not None else hi, lo, hi) or 0.0
            band = {"left": left, "width": max(0.5, right - left), "mean": _percent(mean, lo, hi)}
        rows.append({"name": v.get("VariantName"), "weight": _finite(v.get("CurrentWeight")),
                     "desired_weight": _finite(v.get("DesiredWeight")), "invocations": _finite(v.get("Invocations")),
                     "rewards": v.get("Rewards", 0), "mean": mean, "low": low, "high": high, "band": band,
                     "p99_ms": p99 / 1000 if p99 is not None else None,
                     "error_rate": _finite(guard.get("ErrorRate"))})
    comparisons = [{"control": c.get("Control"), "treatment": c.get("Treatment"), "verdict": c.get("Verdict"),
                    "difference": _finite(c.get("Difference")), "lift": _finite(c.get("Lift")),
                    "low": _finite((c.get("Interval") or [None, None])[0]),
                    "high": _finite((c.get("Interval") or [None, None])[1]),
                    "p_value": _finite(c.get("PValue")), "needed": c.get("NeededPerVariant")}
                   for c in report.get("Comparisons") or []]
    routing = report.get("Routing") or {}
    return {"endpoint": report.get("EndpointName"), "config": report.get("EndpointConfigName"),
            "policy": routing.get("Policy"), "reward": routing.get("Reward"),
            "reward_source": routing.get("RewardSource"), "sticky": routing.get("Sticky"),
            "rules": routing.get("Rules") or [], "experiment": bool(routing.get("Experiment")),
            "alpha": report.get("Alpha"), "method": report.get("Method"), "scale": [lo, hi],
            "variants": rows, "comparisons": comparisons, "dropped": report.get("AssignmentsDropped", 0)}


def shadow_view(snapshot: EndpointSnapshot | None) -> list[dict[str, Any]]:
    """Each shadow variant beside production: copies sampled, sent, failed; agreement; both latencies."""
    out = []
    for variant in (snapshot.variants.values() if snapshot is not None else ()):
        if not variant.shadow:
            continue
        stats: dict[str, Any] = dict(variant.shadow_stats or {})
        sent = int(stats.get("Sent", 0) or 0)
        errors = int(stats.get("Errors", 0) or 0)
        out.append({"name": variant.name, "instances": variant.in_service,
                    "sampled": int(stats.get("Sampled", 0) or 0), "dropped": int(stats.get("Dropped", 0) or 0),
                    "sent": sent, "errors": errors, "error_rate": errors / sent if sent else None,
                    "compared": int(stats.get("Compared", 0) or 0),
                    "agree_exact": _finite(stats.get("AgreementExact")),
                    "agree_tolerance": _finite(stats.get("AgreementWithinTolerance")),
                    "shadow_latency": stats.get("ShadowModelLatencyMs") or None,
                    "production_latency": stats.get("ProductionModelLatencyMs") or None})
    return out
