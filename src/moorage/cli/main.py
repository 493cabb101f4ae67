"""The ``moorage`` command line."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from moorage.client import ClientError, Connection
from moorage.config import DEFAULT_HOST, DEFAULT_PORT, Settings, default_home

home_option = click.option("--home", type=click.Path(path_type=Path), default=None,
                           help="moorage home directory (default: $MOORAGE_HOME or ~/.moorage).")


@click.group()
@click.version_option(package_name="moorage")
def cli() -> None:
    """moorage: serve and watch ML models on your own machines, with SageMaker's APIs."""


@cli.command()
@click.option("--host", default=DEFAULT_HOST, show_default=True, help="Address to bind (loopback by default).")
@click.option("--port", default=DEFAULT_PORT, show_default=True, type=int)
@home_option
@click.option("--database-url", default=None, help="SQLAlchemy URL (default: SQLite file in the home; "
              "$MOORAGE_DATABASE_URL).")
def serve(host: str, port: int, home: Path | None, database_url: str | None) -> None:
    """Run the server: SageMaker API, runtime and native API on one port."""
    from moorage.server import serve as run

    run(Settings(home=home or default_home(), host=host, port=port, database_url=database_url))


@cli.command()
@home_option
@click.option("--url", default=None, help="Server URL (default: the one recorded in the home).")
def endpoints(home: Path | None, url: str | None) -> None:
    """List endpoints with their variants, weights, instance counts and status."""
    # Off a terminal rich would squeeze the table to 80 columns and truncate names.
    console = Console() if sys.stdout.isatty() else Console(width=200)
    try:
        data = Connection.discover(home, url).native("GET", "/moorage/v1/endpoints")
    except ClientError as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)
    if not data["Endpoints"]:
        console.print("no endpoints")
        return
    table = Table(title="endpoints")
    for column in ("endpoint", "status", "variant", "weight", "instances", "runtime", "restarts", "config"):
        table.add_column(column)
    for endpoint in data["Endpoints"]:
        first = True
        for variant in endpoint["Variants"] or [{}]:
            instances = (f"{variant.get('CurrentInstanceCount', 0)}/{variant.get('DesiredInstanceCount', 0)}"
                         if variant else "")
            table.add_row(
                endpoint["EndpointName"] if first else "",
                _status(endpoint["EndpointStatus"]) if first else "",
                variant.get("VariantName", ""),
                f"{variant['CurrentWeight']:g}" if "CurrentWeight" in variant else "",
                instances, variant.get("Runtime", ""), str(variant.get("Restarts", "")),
                endpoint.get("EndpointConfigName") or "" if first else "",
            )
            first = False
        if endpoint.get("FailureReason"):
            table.add_row("", f"[red]{endpoint['FailureReason'][:200]}[/red]", "", "", "", "", "", "")
    console.print(table)


def _status(status: str) -> str:
    color = {"InService": "green", "Failed": "red"}.get(status, "yellow")
    return f"[{color}]{status}[/{color}]"


def main() -> None:
    cli(prog_name="moorage")
