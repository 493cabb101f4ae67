"""``moorage alarms``: list, put, describe (with history), set-state and delete metric alarms."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import click
import orjson
from rich.table import Table

from moorage.cli.common import fail, home_option, key_values, stdout_console, url_option
from moorage.cli.metrics import _UTILIZATION, _statistic
from moorage.connection import ClientError, Connection
from moorage.metrics.vocabulary import (
    ALARM_STATES,
    COMPARISON_WORDS,
    ENDPOINT_NAME,
    INVOCATION_NAMESPACE,
    MISSING_DATA_TREATMENTS,
    SIMPLE_STATISTICS,
    UTILIZATION_NAMESPACE,
    VARIANT_NAME,
    dimension_pairs,
)

COMPARISONS = COMPARISON_WORDS
STATES = ALARM_STATES
TREATMENTS = MISSING_DATA_TREATMENTS

_SYMBOLS = {">": "GreaterThanThreshold", ">=": "GreaterThanOrEqualToThreshold", "<": "LessThanThreshold",
            "<=": "LessThanOrEqualToThreshold"}
_COLORS = {"OK": "green", "ALARM": "red", "INSUFFICIENT_DATA": "yellow"}


def _call(home: Path | None, url: str | None, method: str, path: str, body: Any = None) -> Any:
    try:
        return Connection.discover(home, url).native(method, path, orjson.dumps(body) if body is not None else b"")
    except ClientError as exc:
        fail(str(exc))


def _path(name: str) -> str:
    return f"/moorage/v1/alarms/{quote(name, safe='')}"


def _state(state: str) -> str:
    color = _COLORS.get(state, "white")
    return f"[{color}]{state}[/{color}]"


def _condition(alarm: dict[str, Any]) -> str:
    statistic = alarm.get("Statistic") or alarm.get("ExtendedStatistic")
    words = COMPARISONS.get(alarm["ComparisonOperator"], alarm["ComparisonOperator"])
    return (f"{statistic} {words} {alarm['Threshold']:g} for {alarm['DatapointsToAlarm']} of "
            f"{alarm['EvaluationPeriods']} x {alarm['Period']} s (missing: {alarm['TreatMissingData']})")


@click.group(invoke_without_command=True)
@home_option
@url_option
@click.pass_context
def alarms(ctx: click.Context, home: Path | None, url: str | None) -> None:
    """Metric alarms (CloudWatch semantics). Without a subcommand: list them."""
    ctx.ensure_object(dict)
    ctx.obj.update(home=home, url=url)
    if ctx.invoked_subcommand is None:
        ctx.invoke(list_alarms)


def _where(ctx: click.Context, home: Path | None, url: str | None) -> tuple[Path | None, str | None]:
    parent = ctx.obj or {}
    return home or parent.get("home"), url or parent.get("url")


@alarms.command("list")
@click.option("--state", type=click.Choice(STATES), default=None, help="Only alarms in this state.")
@click.option("--prefix", default=None, help="Only alarms whose name starts with this.")
@home_option
@url_option
@click.pass_context
def list_alarms(ctx: click.Context, state: str | None = None, prefix: str | None = None, home: Path | None = None,
                url: str | None = None) -> None:
    """List alarms with their state and condition."""
    home, url = _where(ctx, home, url)
    params = [(k, v) for k, v in (("StateValue", state), ("AlarmNamePrefix", prefix)) if v]
    found = _call(home, url, "GET", "/moorage/v1/alarms" + (f"?{urlencode(params)}" if params else ""))
    console = stdout_console()
    if not found["MetricAlarms"]:
        console.print("no alarms")
        return
    table = Table(title="alarms")
    for column in ("alarm", "state", "metric", "dimensions", "condition", "since"):
        table.add_column(column)
    for alarm in found["MetricAlarms"]:
        dims = ", ".join(f"{d['Name']}={d['Value']}" for d in alarm["Dimensions"])
        table.add_row(alarm["AlarmName"], _state(alarm["StateValue"]),
                      f"{alarm['Namespace']} {alarm['MetricName']}", dims, _condition(alarm),
                      alarm["StateUpdatedTimestamp"])
    console.print(table)


@alarms.command("put")
@click.argument("name")
@click.option("--metric", required=True, help="Metric name, e.g. Invocation5XXErrors, ModelLatency, CPUUtilization.")
@click.option("--endpoint", default=None, help="EndpointName dimension.")
@click.option("--variant", default=None, help="VariantName dimension.")
@click.option("--dimension", "dimensions", multiple=True, callback=key_values, metavar="NAME=VALUE",
              help="Another dimension (repeatable).")
@click.option("--namespace", default=None,
              help="Default: /aws/sagemaker/Endpoints for utilisation metrics, else AWS/SageMaker.")
@click.option("--stat", "statistic", default="Average", show_default=True, callback=_statistic)
@click.option("--period", default=60, show_default=True, type=click.IntRange(min=1), help="Seconds.")
@click.option("--threshold", required=True, type=float)
@click.option("--comparison", default="GreaterThanThreshold", show_default=True,
              type=click.Choice([*COMPARISONS, *_SYMBOLS]), help="CloudWatch's operator name, or > >= < <=.")
@click.option("--evaluation-periods", default=1, show_default=True, type=click.IntRange(min=1))
@click.option("--datapoints-to-alarm", default=None, type=click.IntRange(min=1),
              help="M of the evaluation periods that must breach (default: all of them).")
@click.option("--treat-missing-data", default="missing", show_default=True, type=click.Choice(TREATMENTS))
@click.option("--webhook", "alarm_actions", multiple=True, help="URL POSTed when the alarm goes to ALARM.")
@click.option("--ok-webhook", "ok_actions", multiple=True, help="URL POSTed when it goes back to OK.")
@click.option("--insufficient-data-webhook", "insufficient_actions", multiple=True,
              help="URL POSTed when it goes to INSUFFICIENT_DATA.")
@click.option("--description", default="")
@home_option
@url_option
@click.pass_context
def put_alarm(ctx: click.Context, name: str, metric: str, endpoint: str | None, variant: str | None,
              dimensions: dict[str, str], namespace: str | None, statistic: str, period: int, threshold: float,
              comparison: str, evaluation_periods: int, datapoints_to_alarm: int | None, treat_missing_data: str,
              alarm_actions: tuple[str, ...], ok_actions: tuple[str, ...], insufficient_actions: tuple[str, ...],
              description: str, home: Path | None, url: str | None) -> None:
    """Create or replace alarm NAME."""
    home, url = _where(ctx, home, url)
    dims = dict(dimensions)
    if endpoint:
        dims[ENDPOINT_NAME] = endpoint
    if variant:
        dims[VARIANT_NAME] = variant
    body: dict[str, Any] = {
        "Namespace": namespace or (UTILIZATION_NAMESPACE if metric in _UTILIZATION else INVOCATION_NAMESPACE),
        "MetricName": metric, "Dimensions": dimension_pairs(dims),
        ("Statistic" if statistic in SIMPLE_STATISTICS else "ExtendedStatistic"): statistic,
        "Period": period, "Threshold": threshold, "ComparisonOperator": _SYMBOLS.get(comparison, comparison),
        "EvaluationPeriods": evaluation_periods, "DatapointsToAlarm": datapoints_to_alarm or evaluation_periods,
        "TreatMissingData": treat_missing_data, "AlarmDescription": description,
        "AlarmActions": list(alarm_actions), "OKActions": list(ok_actions),
        "InsufficientDataActions": list(insufficient_actions),
    }
    alarm = _call(home, url, "PUT", _path(name), body)
    click.echo(f"alarm {alarm['AlarmName']}: {alarm['StateValue']} ({_condition(alarm)})")


@alarms.command("describe")
@click.argument("name")
@click.option("--history", default=20, show_default=True, type=click.IntRange(min=1), help="History items to show.")
@home_option
@url_option
@click.pass_context
def describe_alarm(ctx: click.Context, name: str, history: int, home: Path | None, url: str | None) -> None:
    """Show alarm NAME: definition, state and reason, and its history (newest first)."""
    home, url = _where(ctx, home, url)
    alarm = _call(home, url, "GET", f"{_path(name)}?{urlencode({'HistoryMaxRecords': history})}")
    console = stdout_console()
    console.print(f"[bold]{alarm['AlarmName']}[/bold]: {_state(alarm['StateValue'])} since "
                  f"{alarm['StateUpdatedTimestamp']}")
    console.print(f"  reason: {alarm['StateReason']}", highlight=False)
    dims = ", ".join(f"{d['Name']}={d['Value']}" for d in alarm["Dimensions"])
    console.print(f"  metric: {alarm['Namespace']} {alarm['MetricName']} [{dims}]", highlight=False)
    console.print(f"  condition: {_condition(alarm)}", highlight=False)
    for key, label in (("AlarmActions", "on ALARM"), ("OKActions", "on OK"),
                       ("InsufficientDataActions", "on INSUFFICIENT_DATA")):
        if alarm.get(key):
            console.print(f"  {label}: {', '.join(alarm[key])}", highlight=False)
    table = Table(title="history")
    for column in ("time", "type", "summary"):
        table.add_column(column)
    for item in alarm.get("AlarmHistoryItems", []):
        table.add_row(item["Timestamp"], item["HistoryItemType"], item["HistorySummary"])
    console.print(table)


@alarms.command("set-state")
@click.argument("name")
@click.argument("state", type=click.Choice(STATES))
@click.option("--reason", default="set from the command line", show_default=True)
@home_option
@url_option
@click.pass_context
def set_state(ctx: click.Context, name: str, state: str, reason: str, home: Path | None, url: str | None) -> None:
    """Force alarm NAME into STATE (runs its actions; the next evaluation may set it back)."""
    home, url = _where(ctx, home, url)
    alarm = _call(home, url, "POST", f"{_path(name)}/state", {"StateValue": state, "StateReason": reason})
    click.echo(f"alarm {alarm['AlarmName']}: {alarm['StateValue']}")


@alarms.command("delete")
@click.argument("name")
@home_option
@url_option
@click.pass_context
def delete_alarm(ctx: click.Context, name: str, home: Path | None, url: str | None) -> None:
    """Delete alarm NAME and its history."""
    home, url = _where(ctx, home, url)
    _call(home, url, "DELETE", _path(name))
    click.echo(f"deleted alarm {name}")
