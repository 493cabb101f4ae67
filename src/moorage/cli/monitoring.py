"""``moorage monitor ...``: data- and model-quality monitoring from the command line.

``baseline`` and ``check`` run the library (:mod:`moorage.monitor`) on this machine, no server
needed. ``run SCHEDULE`` starts a monitoring execution on a running server now (SageMaker's
StartMonitoringSchedule only resumes a schedule, so this uses moorage's native route), waits for it
and prints its outcome; exit code 0 when it completed (with or without violations), 1 when it
failed. ``report EXECUTION`` prints where the execution's report.html is (``--open`` shows it in a
browser); EXECUTION is a processing job name or ARN from ListMonitoringExecutions, or a schedule
name for its latest execution.
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

from moorage.cli.common import fail, home_option, stdout_console, url_option
from moorage.connection import ClientError, Connection

_FORMATS = click.Choice(["csv", "jsonl", "json", "parquet"])


def _require_extra() -> None:
    try:
        import datasketches  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError as exc:
        fail(f"monitoring needs the monitor extra ({exc.name} is missing): pip install 'moorage[monitor]'")


@click.group()
def monitor() -> None:
    """Data-quality monitoring: baselines (statistics + suggested constraints) and checks."""


@monitor.command()
@click.option("--dataset", required=True, help="CSV, JSON Lines or Parquet file (or a folder of them).")
@click.option("--output", required=True, help="Folder (or file:// / s3:// URI) for statistics.json and "
              "constraints.json.")
@click.option("--header/--no-header", default=None,
              help="Whether a CSV dataset's first line names the columns (without: _c0, _c1, ...). Default: "
              "detected; a first line of numbers above lines of numbers is data, anything else a header.")
@click.option("--format", "fmt", type=_FORMATS, default=None, help="Dataset format (default: from the file name).")
@click.option("--problem-type", type=click.Choice(["BinaryClassification", "MulticlassClassification", "Regression"]),
              default=None, help="A model-quality baseline (the dataset holds predictions and labels); without it, "
              "a data-quality baseline.")
@click.option("--inference-attribute", default=None, help="Model quality: the column of the model's prediction.")
@click.option("--probability-attribute", default=None, help="Model quality: the column of its probability.")
@click.option("--ground-truth-attribute", default=None, help="Model quality: the column of the true label.")
@click.option("--probability-threshold", type=float, default=None,
              help="Binary model quality: the probability from which the prediction is positive (0.5).")
@click.option("--kind", type=click.Choice(["bias", "explainability"]), default=None,
              help="A Clarify baseline (analysis.json) for a bias-drift or attribution-drift schedule.")
@click.option("--config", "config_path", default=None, help="Bias/explainability: Clarify's analysis_config.json.")
@click.option("--predicted-column", default=None, help="Bias: the dataset's column of the model's predictions.")
@click.option("--endpoint", default=None,
              help="Bias/explainability: the endpoint whose model predicts the dataset's rows (CSV in, a score out).")
@home_option
@url_option
def baseline(dataset: str, output: str, header: bool | None, fmt: str | None, problem_type: str | None,
             inference_attribute: str | None, probability_attribute: str | None, ground_truth_attribute: str | None,
             probability_threshold: float | None, kind: str | None, config_path: str | None,
             predicted_column: str | None, endpoint: str | None, home: Path | None, url: str | None) -> None:
    """Profile a dataset and suggest constraints, as SageMaker's suggest_baseline does (data quality, model
    quality with --problem-type, bias or explainability with --kind)."""
    _require_extra()
    from moorage.monitor.common.datasets import DatasetError
    from moorage.monitor.data_quality.suggest import suggest_baseline

    if kind is not None:
        _clarify_baseline(kind, dataset, output, header, fmt, config_path, predicted_column, endpoint,
                          probability_attribute or inference_attribute, home, url)
        return
    if problem_type is not None:
        _model_quality_baseline(dataset, output, header, fmt, problem_type, inference_attribute,
                                probability_attribute, ground_truth_attribute, probability_threshold)
        return
    try:
        result = suggest_baseline(dataset, output, fmt, header)
    except DatasetError as exc:
        fail(str(exc))
    _print_features(result.statistics.body_dict, result.constraints.body_dict)
    click.echo(f"wrote {result.statistics.file_s3_uri} and {result.constraints.file_s3_uri}")


def _clarify_baseline(kind: str, dataset: str, output: str, header: bool | None, fmt: str | None,
                      config_path: str | None, predicted_column: str | None, endpoint: str | None,
                      attribute: str | None, home: Path | None, url: str | None) -> None:
    from moorage.monitor.common.datasets import DatasetError

    if not config_path:
        fail(f"a {kind} baseline needs --config (Clarify's analysis_config.json)")
    config = json.loads(Path(config_path).read_text())
    predict = _endpoint_predictor(endpoint, attribute, home, url) if endpoint else None
    try:
        if kind == "bias":
            from moorage.monitor.model_bias.suggest import suggest_baseline as bias_baseline

            if predicted_column is None and predict is None:
                fail("a bias baseline needs the model's predictions: --predicted-column or --endpoint")
            written = bias_baseline(dataset, config, output, predicted_column=predicted_column, predict=predict,
                                    fmt=fmt, header=header)
        else:
            from moorage.monitor.model_explainability.suggest import suggest_baseline as shap_baseline

            if predict is None:
                fail("an explainability baseline calls the model: give --endpoint")
            written = shap_baseline(dataset, config, output, predict, fmt=fmt, header=header)
    except (DatasetError, ValueError, RuntimeError) as exc:
        fail(str(exc))
    click.echo(f"wrote {written}")


def _endpoint_predictor(endpoint: str, attribute: str | None, home: Path | None, url: str | None) -> Any:
    """Rows -> one number a row, from the endpoint (CSV in)."""
    from moorage.cli.common import make_session
    from moorage.monitor.common.model_client import ModelClient

    return ModelClient.for_endpoint(make_session(home, url).sagemaker_runtime_client, endpoint, attribute).predict


def _model_quality_baseline(dataset: str, output: str, header: bool | None, fmt: str | None, problem_type: str,
                            inference_attribute: str | None, probability_attribute: str | None,
                            ground_truth_attribute: str | None, probability_threshold: float | None) -> None:
    from moorage.monitor.common.datasets import DatasetError
    from moorage.monitor.model_quality.suggest import suggest_baseline

    if not ground_truth_attribute:
        fail("a model-quality baseline needs --ground-truth-attribute (the column of the true label)")
    try:
        result = suggest_baseline(dataset, output, problem_type, ground_truth_attribute=ground_truth_attribute,
                                  inference_attribute=inference_attribute, probability_attribute=probability_attribute,
                                  probability_threshold=probability_threshold, fmt=fmt, header=header)
    except (DatasetError, ValueError) as exc:
        fail(str(exc))
    section = next(iter(k for k in result.statistics if k.endswith("_metrics")))
    for name, entry in result.statistics[section].items():
        if isinstance(entry, dict) and isinstance(entry.get("value"), int | float):
            click.echo(f"{name:40} {entry['value']:.4f}")
    written = [result.statistics_uri, result.constraints_uri, *([result.cbpe_uri] if result.cbpe_uri else [])]
    click.echo(f"wrote {', '.join(written)}")


@monitor.command("check")
@click.option("--dataset", required=True, help="The current data: CSV, JSON Lines or Parquet.")
@click.option("--baseline", "baseline_dir", required=True,
              help="Folder (or URI) holding the baseline's statistics.json and constraints.json.")
@click.option("--output", required=True, help="Where to write statistics.json and constraint_violations.json.")
@click.option("--header/--no-header", default=None, help="As for baseline (default: detected).")
@click.option("--format", "fmt", type=_FORMATS, default=None)
def check_command(dataset: str, baseline_dir: str, output: str, header: bool | None, fmt: str | None) -> None:
    """Check a dataset against a baseline; exit code 0 either way, the violations are printed."""
    _require_extra()
    from moorage.monitor.common.datasets import Dataset, DatasetError
    from moorage.monitor.common.formats import (
        CONSTRAINTS_FILE,
        STATISTICS_FILE,
        VIOLATIONS_FILE,
        Constraints,
        Statistics,
        join,
        save_json,
    )
    from moorage.monitor.data_quality.profile import profile_dataset
    from moorage.monitor.data_quality.verify import evaluate

    try:
        baseline_statistics = Statistics.from_file_path(join(baseline_dir, STATISTICS_FILE))
        constraints = Constraints.from_file_path(join(baseline_dir, CONSTRAINTS_FILE))
        profile = profile_dataset(Dataset.open(dataset, fmt, header))
    except (DatasetError, OSError, ValueError) as exc:
        fail(str(exc))
    report = evaluate(profile, baseline_statistics, constraints)
    save_json(profile.to_statistics(), join(output, STATISTICS_FILE))
    save_json(report.to_dict(), join(output, VIOLATIONS_FILE))
    console = stdout_console()
    if not report.violations:
        console.print("no violations")
    for violation in report.violations:
        console.print(f"{violation['feature_name']}: {violation['constraint_check_type']}: "
                      f"{violation['description']}", markup=False, highlight=False)
    click.echo(f"wrote {join(output, STATISTICS_FILE)} and {join(output, VIOLATIONS_FILE)}")


def _print_features(statistics: dict, constraints: dict) -> None:
    from rich.table import Table

    by_name = {c["name"]: c for c in constraints.get("features", [])}
    table = Table(title=f"{statistics['dataset']['item_count']} rows")
    for column in ("feature", "type", "completeness", "mean / distinct", "min", "max", "constraints"):
        table.add_column(column)
    for feature in statistics.get("features", []):
        constraint = by_name.get(feature["name"], {})
        numeric = feature.get("numerical_statistics")
        text = feature.get("string_statistics") or {}
        notes = []
        if constraint.get("num_constraints", {}).get("is_non_negative"):
            notes.append("non-negative")
        domain = constraint.get("string_constraints", {}).get("domains")
        if domain:
            notes.append(f"domain of {len(domain)}")
        table.add_row(
            feature["name"], feature["inferred_type"], f"{constraint.get('completeness', 0):.4g}",
            f"{numeric['mean']:.6g}" if numeric and "mean" in numeric else f"{text.get('distinct_count', 0):g}",
            f"{numeric['min']:.6g}" if numeric and "min" in numeric else "",
            f"{numeric['max']:.6g}" if numeric and "max" in numeric else "", ", ".join(notes))
    stdout_console().print(table)


# -- executions on a running server ---------------------------------------------------------------
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


@monitor.command("run")
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


@monitor.command("report")
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
