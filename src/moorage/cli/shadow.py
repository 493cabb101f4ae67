"""``moorage shadow report ENDPOINT``: each shadow variant beside production.

What the shadow's copies did (sampled, dropped, sent, failed), how often its answers agreed with
production's (exactly, and number by number within a tolerance) and both models' latency
percentiles, from ``GET /moorage/v1/endpoints/NAME`` (its ``ShadowVariants``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.table import Table

from moorage.cli.common import fail, home_option, make_session, reports_errors, stdout_console, url_option


@click.group()
def shadow() -> None:
    """Shadow variants: how they compare with production."""


@shadow.command("report")
@click.argument("endpoint")
@home_option
@url_option
@reports_errors
def report(endpoint: str, home: Path | None, url: str | None) -> None:
    """Each shadow variant of ENDPOINT beside production."""
    state = make_session(home, url).connection.native("GET", f"/moorage/v1/endpoints/{quote(endpoint, safe='')}")
    shadows = state.get("ShadowVariants") or []
    if not shadows:
        fail(f"endpoint {endpoint} has no shadow variant in service")
    table = Table("shadow", "sampled", "dropped", "sent", "errors", "compared", "agree exact", "agree ~",
                  "shadow p50/p99 ms", "production p50/p99 ms")
    for item in shadows:
        stats: dict[str, Any] = item.get("Shadow") or {}
        table.add_row(item["VariantName"], *(str(stats.get(k, 0)) for k in ("Sampled", "Dropped", "Sent", "Errors",
                                                                             "Compared")),
                      f"{stats.get('AgreementExact', 0):.1%}", f"{stats.get('AgreementWithinTolerance', 0):.1%}",
                      _latency(stats.get("ShadowModelLatencyMs")), _latency(stats.get("ProductionModelLatencyMs")))
    stdout_console().print(table)


def _latency(quantiles: dict[str, float] | None) -> str:
    return f"{quantiles['p50']:.2f} / {quantiles['p99']:.2f}" if quantiles else "-"
