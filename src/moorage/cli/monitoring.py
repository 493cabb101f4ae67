"""``moorage monitor run`` and ``moorage monitor report``: monitoring executions on a running server.

``run SCHEDULE`` starts an execution now (SageMaker's StartMonitoringSchedule only resumes a
schedule, so this uses moorage's native route), waits for it and prints its outcome; exit code 0
when it completed (with or without violations), 1 when it failed. ``report EXECUTION`` prints
where the execution's report.html is (``--open`` shows it in a browser); EXECUTION is a processing
job name or ARN from ListMonitoringExecutions, or a schedule name for its latest execution.
"""

from __future__ import annotations

import json
import os
import time
import webbrowser
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlparse

import click

from moorage.cli.common import fail, home_option, url_option
from moorage.connection import ClientError, Connection

_ACTIVE = ("Pending", "InProgress")


def _print_execution(doc: dict[str, Any]) -> None:
    click.echo(f"execution {doc['ExecutionName']}: {doc['MonitoringExecutionStatus']}")
    click.echo(f"  window   {doc.get('WindowStart')} to {doc.get('WindowEnd')}")
    if doc.get("FailureReason"):
        click.echo(f"  reason   {doc['FailureReason']}")
    if doc.get("Capture"):
        click.echo(f"  records  {doc['Capture'].get('Records')} ({doc['Capture'].get('Rows')} rows)")
    if "Violations" in doc:
        features = ", ".join(doc.get("ViolatedFeatures") or []) or "none"
        click.echo(f"  violations {doc['Violations']} (features: {features})")
    for key, label in (("StatisticsUri", "statistics"), ("ConstraintViolationsUri", "violations"),
                       ("ReportUri", "report")):
        if doc.get(key):
            click.echo(f"  {label:<9}{doc[key]}")


@click.command("run")
@click.argument("schedule")
@click.option("--start", default=None, help="Window start: ISO-8601 time or an offset from now (-PT1H). "
              "Default: the job's own window (its offsets, else the hour before now).")
@click.option("--end", default=None, help="Window end: ISO-8601 time or an offset from now (-PT0H).")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the execution to end.")
@click.option("--timeout", default=600.0, show_default=True, help="Seconds to wait at most.")
@home_option
@url_option
def run_command(schedule: str, start: str | None, end: str | None, wait: bool, timeout: float,
                home: Path | None, url: str | None) -> None:
    """Run a monitoring schedule's job now, over captured traffic."""
    connection = Connection.discover(home, url)
    options = {k: v for k, v in (("StartTime", start), ("EndTime", end)) if v}
    try:
        doc = connection.native("POST", f"/moorage/v1/monitoring-schedules/{quote(schedule)}/executions",
                                json.dumps(options).encode())
        deadline = time.monotonic() + timeout
        while wait and doc["MonitoringExecutionStatus"] in _ACTIVE:
            if time.monotonic() > deadline:
                fail(f"execution {doc['ExecutionName']} still {doc['MonitoringExecutionStatus']} after {timeout:g} s")
            time.sleep(0.5)
            doc = connection.native("GET", f"/moorage/v1/monitoring-executions/{doc['ExecutionName']}")
    except ClientError as exc:
        fail(str(exc))
    _print_execution(doc)
    if doc["MonitoringExecutionStatus"] == "Failed":
        raise SystemExit(1)


def _latest_of_schedule(connection: Connection, schedule: str) -> str | None:
    client = connection.boto3_client("sagemaker")
    try:
        found = client.list_monitoring_executions(MonitoringScheduleName=schedule, MaxResults=1)
    except Exception:
        return None
    summaries = found.get("MonitoringExecutionSummaries") or []
    arn = summaries[0].get("ProcessingJobArn") if summaries else None
    return arn.rsplit("/", 1)[-1] if arn else None


@click.command("report")
@click.argument("execution")
@click.option("--open", "open_it", is_flag=True, help="Open the report in a web browser.")
@click.option("--output", type=click.Path(path_type=Path), default=None,
              help="Save the page here (default: use the server's file when it is on this machine).")
@home_option
@url_option
def report_command(execution: str, open_it: bool, output: Path | None, home: Path | None, url: str | None) -> None:
    """Show where a monitoring execution's HTML report is, or open it."""
    connection = Connection.discover(home, url)
    name = execution.rsplit("/", 1)[-1]
    try:
        doc = connection.native("GET", f"/moorage/v1/monitoring-executions/{quote(name)}")
    except ClientError as first:
        latest = _latest_of_schedule(connection, execution)
        if latest is None:
            fail(str(first))
        doc = connection.native("GET", f"/moorage/v1/monitoring-executions/{latest}")
    location = doc.get("ReportUri")
    if not location:
        reason = f": {doc['FailureReason']}" if doc.get("FailureReason") else ""
        fail(f"execution {doc['ExecutionName']} has no report ({doc['MonitoringExecutionStatus']}{reason})")
    parsed = urlparse(location)
    local = Path(parsed.path) if parsed.scheme in ("", "file") else None
    if output is not None or local is None or not local.exists():
        # the page lives elsewhere (s3://, another machine): fetch it through the server
        target = output or Path(os.environ.get("TMPDIR", "/tmp")) / f"{doc['ExecutionName']}.html"
        try:
            page = _fetch(connection, doc["ExecutionName"])
        except ClientError as exc:
            fail(str(exc))
        target.write_bytes(page)
        local = target
    click.echo(str(local.resolve()))
    if open_it:
        webbrowser.open(local.resolve().as_uri())


def _fetch(connection: Connection, name: str) -> bytes:
    return connection.native_bytes("GET", f"/moorage/v1/monitoring-executions/{name}/report", timeout=60)
