"""``moorage models ENDPOINT``: what a multi-model endpoint has loaded, where.

Per host (an instance of the variant, with its memory budget): each loaded model's size (the
resident memory of its process), last use, hits and requests in flight, and the host's hit rate,
loads and evictions, from ``GET /moorage/v1/endpoints/NAME/models``.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from urllib.parse import quote

import click
from rich.table import Table

from moorage.cli.common import fail, home_option, make_session, reports_errors, stdout_console, url_option


@click.command("models")
@click.argument("endpoint")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
@home_option
@url_option
@reports_errors
def models(endpoint: str, as_json: bool, home: Path | None, url: str | None) -> None:
    """The models a multi-model ENDPOINT has loaded on each host."""
    doc = make_session(home, url).connection.native("GET", f"/moorage/v1/endpoints/{quote(endpoint, safe='')}/models")
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    if not doc["Variants"]:
        fail(f"endpoint {endpoint} has no multi-model variant in service")
    console = stdout_console()
    for variant in doc["Variants"]:
        for host in variant["Hosts"]:
            rate = host["HitRate"]
            console.print(f"{variant['VariantName']} / {host['HostId']}: {_mib(host['UsedBytes'])} of "
                          f"{_mib(host['BudgetBytes'])} used, hit rate {'-' if rate is None else f'{rate:.1%}'}, "
                          f"{host['Loads']} load(s), {host['Evictions']} eviction(s)")
            table = Table("model", "size", "last use", "hits", "invocations", "in flight")
            for model in sorted(host["Models"], key=lambda m: -m["LastUsed"]):
                table.add_row(model["TargetModel"], _mib(model["SizeBytes"]),
                              dt.datetime.fromtimestamp(model["LastUsed"]).strftime("%H:%M:%S"), str(model["Hits"]),
                              str(model["Invocations"]), str(model["InFlight"]))
            console.print(table)


def _mib(size: float | None) -> str:
    return "-" if size is None else f"{size / 2**20:.0f} MiB"
