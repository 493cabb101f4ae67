"""The human-readable page of one monitoring execution (``report.html``, beside the JSON files).

One self-contained HTML file: the window and the inputs, the violations table, and for every
feature with a ``baseline_drift_check`` violation a plot of the baseline's distribution against
the current one, drawn from the two ``statistics.json`` files alone (KLL sketches for numbers,
categorical buckets for strings), so a SageMaker baseline draws as well as ours. Plots are PNG
images embedded as base64: the page opens offline, from a file or over HTTP. The JSON files stay
the machine-readable truth; this page is for people.
"""

from __future__ import annotations

import base64
import html
import io
from typing import Any

import numpy as np

from moorage.monitor.common.distributions import CategoricalDistribution, NumericDistribution
from moorage.monitor.common.formats import join
from moorage.store.locations import filesystem

BINS = 24
TOP_CATEGORIES = 15

STYLE = """  # every monitoring page's look (model_quality/report.py too)
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#1d232a;max-width:1100px}
h1{font-size:1.4rem;margin-bottom:.2rem} h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:left}
th{background:#f6f8fa} .ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600}
.plots{display:flex;flex-wrap:wrap;gap:1rem} figure{margin:0} figcaption{font-size:.9rem;color:#57606a}
.muted{color:#57606a}
"""


def _features(statistics: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in (statistics or {}).get("features", [])}


def _plot_numeric(name: str, baseline: NumericDistribution, current: NumericDistribution) -> Any:
    import matplotlib.pyplot as plt

    low = float(min(baseline.values[0], current.values[0]))
    high = float(max(baseline.values[-1], current.values[-1]))
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, BINS + 1)
    figure, axis = plt.subplots(figsize=(5.2, 3.0), dpi=90)
    for dist, label, color in ((baseline, "baseline", "#57606a"), (current, "current", "#cf222e")):
        shares = dist.histogram(edges) / dist.weights.sum()
        axis.stairs(shares, edges, label=label, color=color, fill=label == "baseline", alpha=0.35 if
                    label == "baseline" else 1.0, linewidth=1.8)
    axis.set_title(name)
    axis.set_ylabel("share of values")
    axis.legend()
    figure.tight_layout()
    return figure


def _plot_categorical(name: str, baseline: CategoricalDistribution, current: CategoricalDistribution) -> Any:
    import matplotlib.pyplot as plt

    keys, base, cur = baseline.aligned(current)
    base_share = base / base.sum() if base.sum() else base
    cur_share = cur / cur.sum() if cur.sum() else cur
    order = np.argsort(-(base_share + cur_share), kind="stable")[:TOP_CATEGORIES]
    x = np.arange(len(order))
    figure, axis = plt.subplots(figsize=(5.2, 3.0), dpi=90)
    axis.bar(x - 0.2, base_share[order], width=0.4, label="baseline", color="#8c959f")
    axis.bar(x + 0.2, cur_share[order], width=0.4, label="current", color="#cf222e")
    axis.set_xticks(x, [keys[i][:12] for i in order], rotation=45, ha="right", fontsize=8)
    axis.set_title(name)
    axis.set_ylabel("share of values")
    axis.legend()
    figure.tight_layout()
    return figure


def plot_feature(name: str, baseline: dict[str, Any] | None, current: dict[str, Any] | None) -> str | None:
    """A base64 PNG of baseline vs current for one feature, or None when either side has no distribution."""
    if baseline is None or current is None:
        return None
    try:
        import matplotlib
    except ImportError:  # the page still has the violations and the tables
        return None

    matplotlib.use("Agg")  # no display: the plots are files

    figure = None
    numeric = NumericDistribution.from_feature(baseline), NumericDistribution.from_feature(current)
    if numeric[0] is not None and numeric[1] is not None:
        figure = _plot_numeric(name, numeric[0], numeric[1])
    else:
        categorical = CategoricalDistribution.from_feature(baseline), CategoricalDistribution.from_feature(current)
        if categorical[0] is not None and categorical[1] is not None:
            figure = _plot_categorical(name, categorical[0], categorical[1])
    if figure is None:
        return None
    return figure_png(figure)


def _summary(feature: dict[str, Any] | None) -> str:
    if feature is None:
        return "absent"
    stats = feature.get("numerical_statistics")
    if stats:
        common = stats.get("common", {})
        return (f"{feature.get('inferred_type')}, mean {stats.get('mean', float('nan')):.4g}, "
                f"std {stats.get('std_dev', float('nan')):.4g}, {common.get('num_missing', 0)} missing")
    stats = feature.get("string_statistics") or {}
    common = stats.get("common", {})
    return (f"{feature.get('inferred_type')}, {stats.get('distinct_count', 0):.0f} distinct, "
            f"{common.get('num_missing', 0)} missing")


def render_report(*, statistics: dict[str, Any], baseline: dict[str, Any] | None,
                  violations: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    esc = html.escape
    current_features = _features(statistics)
    baseline_features = _features(baseline)
    drifted = list(dict.fromkeys(v["feature_name"] for v in violations
                                 if v.get("constraint_check_type") == "baseline_drift_check"))
    verdict = (f"<span class=bad>{len(violations)} violation(s)</span>" if violations
               else "<span class=ok>no violations</span>")
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>moorage monitoring: "
             f"{esc(str(meta.get('schedule', '')))} {esc(str(meta.get('window_end', '')))}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Data quality: {esc(str(meta.get('endpoint', '')))} / {esc(str(meta.get('schedule', '')))}</h1>",
             f"<p>{verdict}; drifted features: {esc(', '.join(drifted)) if drifted else 'none'}</p>",
             "<table>"]
    rows = [("Execution", meta.get("execution")), ("Window", f"{meta.get('window_start')} to {meta.get('window_end')}"
                                                     " (UTC, end excluded)"),
            ("Scheduled time", meta.get("scheduled_time")), ("Captured records", meta.get("records")),
            ("Rows analysed", meta.get("rows")), ("Baseline statistics", meta.get("baseline_statistics") or "none"),
            ("Baseline constraints", meta.get("baseline_constraints") or "none")]
    parts += [f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in rows]
    parts.append("</table><h2>Violations</h2>")
    if violations:
        parts.append("<table><tr><th>Feature</th><th>Check</th><th>Description</th></tr>")
        parts += [f"<tr><td>{esc(str(v.get('feature_name')))}</td><td>{esc(str(v.get('constraint_check_type')))}"
                  f"</td><td>{esc(str(v.get('description')))}</td></tr>" for v in violations]
        parts.append("</table>")
    else:
        parts.append("<p class=ok>None.</p>")
    if drifted:
        parts.append("<h2>Drifted features: baseline vs current</h2><div class=plots>")
        for name in drifted:
            image = plot_feature(name, baseline_features.get(name), current_features.get(name))
            if image is None:
                parts.append(f"<figure><figcaption>{esc(name)}: no distribution to draw</figcaption></figure>")
                continue
            parts.append(f"<figure><img alt=\"{esc(name)}: baseline vs current\" src=\"data:image/png;base64,{image}\">"
                         f"<figcaption>{esc(name)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("<h2>Features</h2><table><tr><th>Feature</th><th>Baseline</th><th>Current</th></tr>")
    for name in dict.fromkeys([*baseline_features, *current_features]):
        parts.append(f"<tr><td>{esc(name)}</td><td>{esc(_summary(baseline_features.get(name)))}</td>"
                     f"<td>{esc(_summary(current_features.get(name)))}</td></tr>")
    parts.append("</table><p class=muted>The machine-readable results are statistics.json and "
                 "constraint_violations.json beside this page.</p></body></html>")
    return "\n".join(parts)


def write_report(location: str, name: str, **kwargs: Any) -> str:
    """Render and write the page to ``{location}/{name}``; returns where it is."""
    return write_page(location, name, render_report(**kwargs))


def figure_png(figure: Any) -> str:
    """A matplotlib figure as a base64 PNG (closed after)."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_page(location: str, name: str, page: str) -> str:
    """Write an HTML page to ``{location}/{name}`` (any fsspec location); returns where it is."""
    target = join(location, name)
    fs, path = filesystem(target)
    parent = path.rsplit("/", 1)[0]
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(page.encode("utf-8"))
    return target
