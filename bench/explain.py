"""Feature-attribution baseline: SHAP values of 10,000 rows x 20 features, our fast paths vs naive Kernel SHAP.

    .venv/bin/python bench/explain.py                                  # 10,000 rows, 20 features
    .venv/bin/python bench/explain.py --rows 2000 --kernel-rows 10     # quicker

The data: 20 standard-normal features (a few correlated pairs), a target that depends non-linearly
on 8 of them; the models are fitted on 5,000 other rows (fit time is not measured), single-threaded
(``n_jobs=1``) so the two paths get the same core:

* **RandomForestRegressor** (100 trees, depth 8) and **GradientBoostingRegressor** (200 trees,
  depth 4): ``compute_attributions(config, rows, model=model)``, interventional TreeSHAP;
* **LinearRegression**: the same call, the exact linear explainer.

Both paths explain the same thing: the Shapley values of the game "features outside the coalition
take the baseline rows' values" with a baseline of ``--baseline`` rows (20) drawn from the training
data, ``agg_method`` mean_abs. "ours" is the whole call on every row (the additivity check that
guards the fast path included). "naive" is the same call with ``predict=model.predict`` (Kernel
SHAP, ``num_samples`` = shap's auto, 2 x 20 + 2048 = 2088 coalitions, each evaluated on every
baseline row: 41,760 model rows per explained row). Kernel SHAP on all 10,000 rows would take tens
of minutes, so it runs on the first ``--kernel-rows`` rows (30) and its time is **extrapolated**
linearly to all rows (its cost is per explained row: one ``predict`` of 41,760 rows and one weighted
regression each); the table says which numbers are measured and which extrapolated. The agreement
column compares the two on those rows: the largest difference of a per-row SHAP value, relative to
the largest absolute value (Kernel SHAP samples 2,088 of the 2**20 coalitions, so it is an estimate;
the fast paths are exact).

Target (the issue): our tree path under 30 s for 10,000 rows. Results print as a table and go to
bench/results/explain-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))

SEED = 20261206
TRAIN_ROWS = 5000
TREE_TARGET_S = 30.0


def make_data(rows: int, features: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training rows, their targets, rows to explain)."""
    total = TRAIN_ROWS + rows
    x = rng.normal(size=(total, features))
    for a, b in ((0, 10), (1, 11), (2, 12)):  # a few correlated pairs, as real features have
        x[:, b] = 0.7 * x[:, a] + 0.3 * x[:, b]
    y = (3 * x[:, 0] + 2 * x[:, 1] * (x[:, 2] > 0) + np.sin(2 * x[:, 3]) + 0.5 * x[:, 4] ** 2
         - x[:, 5] * x[:, 6] + 0.3 * x[:, 7] + 0.1 * rng.normal(size=total))
    return x[:TRAIN_ROWS], y[:TRAIN_ROWS], x[TRAIN_ROWS:]


def models() -> dict[str, Any]:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import LinearRegression

    return {
        "RandomForestRegressor (100 trees, depth 8)": RandomForestRegressor(
            n_estimators=100, max_depth=8, random_state=0, n_jobs=1),
        "GradientBoostingRegressor (200 trees, depth 4)": GradientBoostingRegressor(
            n_estimators=200, max_depth=4, random_state=0),
        "LinearRegression": LinearRegression(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    import shap  # imported before anything is timed: its import (numba) is not part of either path

    from moorage.monitor.model_explainability.attributions import compute_attributions, load_shap_config

    rng = np.random.default_rng(SEED)
    train_x, train_y, rows = make_data(args.rows, args.features, rng)
    baseline = train_x[rng.choice(TRAIN_ROWS, args.baseline, replace=False)]
    names = [f"f{i}" for i in range(args.features)]
    shap_doc: dict[str, Any] = {"baseline": baseline.tolist(), "agg_method": "mean_abs"}
    if args.num_samples:
        shap_doc["num_samples"] = args.num_samples
    config = load_shap_config({"headers": names, "methods": {"shap": shap_doc}})
    nsamples = args.num_samples or 2 * args.features + 2048
    kernel_rows = rows[:args.kernel_rows]

    results: dict[str, Any] = {"shap": shap.__version__, "models": {}}
    for name, model in models().items():
        started = time.perf_counter()
        model.fit(train_x, train_y)
        fit_s = time.perf_counter() - started

        started = time.perf_counter()
        ours = compute_attributions(config, rows, model=model)
        ours_s = time.perf_counter() - started

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            started = time.perf_counter()
            naive = compute_attributions(config, kernel_rows, model.predict)
            naive_s = time.perf_counter() - started
        per_row = naive_s / len(kernel_rows)
        extrapolated = per_row * len(rows)
        scale = float(np.max(np.abs(ours.local_values[:len(kernel_rows)])))
        difference = float(np.max(np.abs(ours.local_values[:len(kernel_rows)] - naive.local_values)))
        results["models"][name] = {
            "method": ours.method, "fit_s": fit_s, "ours_s": ours_s, "ours_rows_per_s": len(rows) / ours_s,
            "naive_rows": len(kernel_rows), "naive_measured_s": naive_s, "naive_per_row_s": per_row,
            "naive_extrapolated_s": extrapolated, "speedup": extrapolated / ours_s,
            "max_abs_difference": difference, "relative_difference": difference / scale if scale else 0.0,
            "expected_value": {"ours": ours.expected_value, "naive": naive.expected_value},
            "top_features": sorted(ours.global_values, key=ours.global_values.get, reverse=True)[:5],
        }
        print(f"{name}: ours ({ours.method}) {ours_s:.2f} s; naive {naive_s:.2f} s for {len(kernel_rows)} rows "
              f"-> {extrapolated:,.0f} s extrapolated", flush=True)
    results["nsamples"] = nsamples
    return results


def table(results: dict[str, Any], args: argparse.Namespace) -> list[str]:
    lines = [f"| model | our path | ours: {args.rows:,} rows, s (measured) | rows/s | naive Kernel SHAP: "
             f"{args.kernel_rows} rows, s (measured) | naive: {args.rows:,} rows, s (extrapolated) | "
             f"naive / ours | max diff (rel.) | target (tree < {TREE_TARGET_S:.0f} s) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for name, r in results["models"].items():
        verdict = ("**PASS**" if r["ours_s"] < TREE_TARGET_S else "**FAIL**") if r["method"] == "tree" else ""
        lines.append(f"| {name} | {r['method']} | {r['ours_s']:.3f} | {r['ours_rows_per_s']:,.0f} | "
                     f"{r['naive_measured_s']:.1f} | {r['naive_extrapolated_s']:,.0f} | {r['speedup']:,.0f}x | "
                     f"{r['max_abs_difference']:.2g} ({r['relative_difference']:.1%}) | {verdict} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000, help="rows explained (default 10,000)")
    parser.add_argument("--features", type=int, default=20, help="features (default 20)")
    parser.add_argument("--baseline", type=int, default=20, help="baseline (background) rows (default 20)")
    parser.add_argument("--kernel-rows", type=int, default=30, help="rows naive Kernel SHAP explains (default 30)")
    parser.add_argument("--num-samples", type=int, default=0, help="Kernel SHAP's num_samples (default: shap's auto)")
    args = parser.parse_args()
    if args.features < 13:
        parser.error("--features: at least 13 (the target uses f0-f7; f10-f12 are correlated with f0-f2)")

    results = run(args)
    lines = table(results, args)
    lines.append("")
    lines.append(f"Kernel SHAP: num_samples {results['nsamples']:,}, {args.baseline} baseline rows; "
                 f"shap {results['shap']}.")
    print("\n" + "\n".join(lines))

    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = BENCH / "results" / f"explain-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(BENCH))
    from serving import host_info

    out.write_text(json.dumps({"timestamp": stamp, "settings": vars(args), "host": host_info(),
                               "results": results, "report": lines}, indent=1, default=str))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
