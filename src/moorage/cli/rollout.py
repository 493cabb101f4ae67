"""``moorage rollout``: where an endpoint's update is, and how it went.

    moorage rollout status ENDPOINT            # phase, traffic split, alarms, the steps so far
    moorage rollout status ENDPOINT --watch    # again every second until the update ends

DescribeEndpoint says what SageMaker says (status, the pending config, each variant's VariantStatus);
this adds the update's own history from ``GET /moorage/v1/endpoints/NAME`` (its ``Update``): every
phase with the new fleet's share of the traffic, and the state of each rollback alarm now.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.table import Table

from moorage.cli.common import home_option, make_session, reports_errors, stdout_console, url_option
from moorage.connection import ClientError

_IN_FLIGHT = ("Updating", "RollingBack")


@click.group()
def rollout() -> None:
    """Endpoint updates (blue/green): where one is, and its history."""


@rollout.command("status")
@click.argument("endpoint")
@click.option("--watch", is_flag=True, help="Show it again every second until the update ends.")
@home_option
@url_option
@reports_errors
def status(endpoint: str, watch: bool, home: Path | None, url: str | None) -> None:
    """The last (or running) update of ENDPOINT."""
    connection = make_session(home, url).connection
    while True:
        state = connection.native("GET", f"/moorage/v1/endpoints/{quote(endpoint, safe='')}")
        _show(connection, state)
        if not watch or state["EndpointStatus"] not in _IN_FLIGHT:
            return
        time.sleep(1.0)


def _alarm_state(connection: Any, name: str) -> str:
    try:
        return str(connection.native("GET", f"/moorage/v1/alarms/{quote(name, safe='')}").get("StateValue", "?"))
    except ClientError:
        return "missing"


def _show(connection: Any, state: dict[str, Any]) -> None:
    console = stdout_console()
    update = state.get("Update")
    console.print(f"endpoint {state['EndpointName']}: {state['EndpointStatus']} on config "
                  f"{state.get('EndpointConfigName')}")
    if state.get("FailureReason"):
        console.print(f"  failure reason: {state['FailureReason']}")
    if not update:
        console.print("  no update has run on this endpoint")
        return
    console.print(f"  update to {update['EndpointConfigName']}: {update['Phase']}, new fleet at "
                  f"{update['GreenShare']:.0%} of the traffic")
    for alarm in update.get("Alarms") or []:
        console.print(f"  rollback alarm {alarm}: {_alarm_state(connection, alarm)}")
    table = Table("time", "phase", "new fleet", "message")
    for step in update.get("History") or []:
        when = dt.datetime.fromtimestamp(step["Time"], tz=dt.UTC).strftime("%H:%M:%S")
        table.add_row(when, step["Phase"], f"{step['GreenShare']:.0%}", step["Message"])
    console.print(table)
