"""The human-readable page of one model-quality execution (``report.html``, beside the JSON files).

The window and its merge (captured, with ground truth), the violations, the metrics of this
execution (with the label-free estimate beside them when there is one), the metrics over the
schedule's earlier executions (read back from their ``statistics.json``), and the confusion matrix
of a classifier or the residuals of a regression. Self-contained, like the data-quality page
(``monitor/common/report.py``, whose style and writer it shares).
"""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np

from moorage.monitor.common import formats
from moorage.monitor.common.report import STYLE, figure_png, write_page
from moorage.store.locations import filesystem

SECTIONS = ("binary_classification_metrics", "multiclass_classification_metrics", "regression_metrics")
PLOTTED = ("accuracy", "f1", "auc", "weighted_f1", "rmse", "mae", "r2")


def _metrics(statistics: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for section in SECTIONS:
        if section in statistics:
            return section, statistics[section]
    return "", {}


def _scalar(entry: Any) -> float | None:
    if isinstance(entry, dict) and isinstance(entry.get("value"), int | float):
        return float(entry["value"])
    return None


def history(root: str, limit: int) -> list[tuple[str, dict[str, float]]]:
    """(hour folder, {metric: value}) of the schedule's earlier executions, oldest first."""
    try:
        fs, path = filesystem(root)
        found = sorted(fs.glob(f"{path.rstrip('/')}/*/*/*/*/{formats.STATISTICS_FILE}"))[-limit:]
    except Exception:
        return []
    out = []
    for item in found:
        try:
            with fs.open(item, "rb") as handle:
                doc = json.loads(handle.read())
        except Exception:
            continue
        _, metrics = _metrics(doc)
        hour = "/".join(item.rsplit("/", 5)[1:5])
        out.append((hour, {k: v for k, e in metrics.items() if (v := _scalar(e)) is not None}))
    return out


def _plot_history(points: list[tuple[str, dict[str, float]]]) -> str | None:
    names = [n for n in PLOTTED if any(n in m for _, m in points)]
    if len(points) < 2 or not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 3.2), dpi=90)
    x = np.arange(len(points))
    for name in names:
        axis.plot(x, [m.get(name, np.nan) for _, m in points], marker="o", label=name)
    axis.set_xticks(x, [h for h, _ in points], rotation=45, ha="right", fontsize=7)
    axis.set_title("metrics over this schedule's executions")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure_png(figure)


def _plot_confusion(matrix: dict[str, dict[str, float]]) -> str | None:
    labels = list(matrix)
    if not labels:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    predicted = list(dict.fromkeys(p for row in matrix.values() for p in row))
    grid = np.array([[float(matrix[a].get(p, 0)) for p in predicted] for a in labels])
    figure, axis = plt.subplots(figsize=(4.2, 3.6), dpi=90)
    axis.imshow(grid, cmap="Blues")
    for i in range(len(labels)):
        for j in range(len(predicted)):
            axis.text(j, i, f"{grid[i, j]:.0f}", ha="center", va="center", fontsize=8)
    axis.set_xticks(range(len(predicted)), predicted, fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.set_xlabel("predicted")
    axis.set_ylabel("actual")
    axis.set_title("confusion matrix")
    figure.tight_layout()
    return figure_png(figure)


def _plot_residuals(residuals: np.ndarray) -> str | None:
    if residuals is None or len(residuals) == 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.2, 3.0), dpi=90)
    axis.hist(residuals, bins=40, color="#57606a")
    axis.set_title("residuals (label - prediction)")
    figure.tight_layout()
    return figure_png(figure)


def render_report(*, statistics: dict[str, Any], violations: list[dict[str, Any]], estimates: dict[str, Any],
                  history_root: str, history_limit: int, residuals: Any, meta: dict[str, Any]) -> str:
    esc = html.escape
    section, metrics = _metrics(statistics)
    verdict = (f"<span class=bad>{len(violations)} violation(s)</span>" if violations
               else "<span class=ok>no violations</span>")
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>moorage model quality: "
             f"{esc(str(meta.get('schedule', '')))} {esc(str(meta.get('window_end', '')))}</title>"
             f"<style>{STYLE}</style></head><body>",
             f"<h1>Model quality: {esc(str(meta.get('endpoint', '')))} / {esc(str(meta.get('schedule', '')))}</h1>",
             f"<p>{verdict}</p><table>"]
    parts += [f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in meta.items()]
    parts.append("</table><h2>Violations</h2>")
    if violations:
        parts.append("<table><tr><th>Metric</th><th>Check</th><th>Description</th></tr>")
        parts += [f"<tr><td>{esc(str(v.get('metric_name')))}</td><td>{esc(str(v.get('constraint_check_type')))}"
                  f"</td><td>{esc(str(v.get('description')))}</td></tr>" for v in violations]
        parts.append("</table>")
    else:
        parts.append("<p class=ok>None.</p>")
    parts.append(f"<h2>Metrics ({esc(section)})</h2><table><tr><th>Metric</th><th>Value</th>"
                 "<th>Standard deviation</th><th>Estimated without labels</th></tr>")
    for name, entry in metrics.items():
        value = _scalar(entry)
        if value is None:
            continue
        estimate = estimates.get(name) or estimates.get("roc_auc" if name == "auc" else "")
        shown = (f"{estimate['value']:.4f} [{estimate['low']:.4f}, {estimate['high']:.4f}]" if estimate else "")
        parts.append(f"<tr><td>{esc(name)}</td><td>{value:.4f}</td>"
                     f"<td>{esc(str(entry.get('standard_deviation')))}</td><td>{esc(shown)}</td></tr>")
    parts.append("</table>")
    images = [("metrics over time", _plot_history(history(history_root, history_limit))),
              ("confusion matrix", _plot_confusion(metrics.get("confusion_matrix") or {})),
              ("residuals", _plot_residuals(residuals) if section == "regression_metrics" else None)]
    shown_images = [(title, image) for title, image in images if image]
    if shown_images:
        parts.append("<h2>Plots</h2><div class=plots>")
        parts += [f"<figure><img alt=\"{esc(title)}\" src=\"data:image/png;base64,{image}\">"
                  f"<figcaption>{esc(title)}</figcaption></figure>" for title, image in shown_images]
        parts.append("</div>")
    parts.append("<p class=muted>The machine-readable results are statistics.json and "
                 "constraint_violations.json beside this page; the merged records are under merge/.</p>"
                 "</body></html>")
    return "\n".join(parts)


def write_report(location: str, name: str, **kwargs: Any) -> str:
    return write_page(location, name, render_report(**kwargs))
