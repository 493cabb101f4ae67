"""The human-readable page of one attribution-drift execution (``report.html``, beside analysis.json):
the window, the violations, and the baseline's global SHAP values beside the current ones (a bar
per feature) with the NDCG of the current ranking. Shares the look and writer of the other pages."""

from __future__ import annotations

import html
from typing import Any

import numpy as np

from moorage.monitor.common.report import STYLE, figure_png, write_page


def _values(analysis: dict[str, Any] | None) -> dict[str, float]:
    labels = ((analysis or {}).get("explanations") or {}).get("kernel_shap") or {}
    first = next(iter(labels.values()), {})
    return {str(k): float(v) for k, v in (first.get("global_shap_values") or {}).items()}


def _plot(baseline: dict[str, float], current: dict[str, float]) -> str | None:
    names = list(dict.fromkeys([*baseline, *current]))
    if not names:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(max(5.0, 0.5 * len(names) + 2), 3.2), dpi=90)
    axis.bar(x - 0.2, [baseline.get(n, 0.0) for n in names], width=0.4, label="baseline", color="#8c959f")
    axis.bar(x + 0.2, [current.get(n, 0.0) for n in names], width=0.4, label="current", color="#cf222e")
    axis.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
    axis.set_ylabel("global SHAP value")
    axis.legend()
    figure.tight_layout()
    return figure_png(figure)


def render_report(*, analysis: dict[str, Any], baseline: dict[str, Any] | None, violations: list[dict[str, Any]],
                  ndcg: float | None, meta: dict[str, Any]) -> str:
    esc = html.escape
    verdict = (f"<span class=bad>{len(violations)} violation(s)</span>" if violations
               else "<span class=ok>no violations</span>")
    parts = [f"<!doctype html><html><head><meta charset=utf-8><title>moorage attribution drift: "
             f"{esc(str(meta.get('schedule', '')))}</title><style>{STYLE}</style></head><body>",
             f"<h1>Feature attribution: {esc(str(meta.get('endpoint', '')))} / {esc(str(meta.get('schedule', '')))}"
             f"</h1><p>{verdict}" + (f"; NDCG against the baseline {ndcg:.4f}" if ndcg is not None else "") +
             "</p><table>"]
    parts += [f"<tr><th>{esc(str(k))}</th><td>{esc(str(v))}</td></tr>" for k, v in meta.items()]
    parts.append("</table><h2>Violations</h2>")
    if violations:
        parts += [f"<p>{esc(str(v.get('description')))}</p>" for v in violations]
    else:
        parts.append("<p class=ok>None.</p>")
    current, base = _values(analysis), _values(baseline)
    image = _plot(base, current)
    if image:
        parts.append(f'<h2>Baseline and current attributions</h2><img alt="attributions" '
                     f'src="data:image/png;base64,{image}">')
    parts.append("<table><tr><th>Feature</th><th>Baseline</th><th>Current</th></tr>")
    for name in dict.fromkeys([*base, *current]):
        parts.append(f"<tr><td>{esc(name)}</td><td>{base.get(name, float('nan')):.5g}</td>"
                     f"<td>{current.get(name, float('nan')):.5g}</td></tr>")
    parts.append("</table></body></html>")
    return "\n".join(parts)


def write_report(location: str, name: str, **kwargs: Any) -> str:
    return write_page(location, name, render_report(**kwargs))
