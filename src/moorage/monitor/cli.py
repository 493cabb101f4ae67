"""``moorage monitor ...``: baselines and checks from the command line, no server needed."""

from __future__ import annotations

import click

from moorage.cli.common import fail, stdout_console
from moorage.cli.monitoring import report_command, run_command

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
@click.option("--header/--no-header", default=True, show_default=True,
              help="Whether a CSV dataset's first line names the columns (without: _c0, _c1, ...).")
@click.option("--format", "fmt", type=_FORMATS, default=None, help="Dataset format (default: from the file name).")
def baseline(dataset: str, output: str, header: bool, fmt: str | None) -> None:
    """Profile a dataset and suggest constraints, as SageMaker's suggest_baseline does."""
    _require_extra()
    from moorage.monitor.baseline import suggest_baseline
    from moorage.monitor.datasets import DatasetError

    try:
        result = suggest_baseline(dataset, output, fmt, header)
    except DatasetError as exc:
        fail(str(exc))
    _print_features(result.statistics.body_dict, result.constraints.body_dict)
    click.echo(f"wrote {result.statistics.file_s3_uri} and {result.constraints.file_s3_uri}")


@monitor.command("check")
@click.option("--dataset", required=True, help="The current data: CSV, JSON Lines or Parquet.")
@click.option("--baseline", "baseline_dir", required=True,
              help="Folder (or URI) holding the baseline's statistics.json and constraints.json.")
@click.option("--output", required=True, help="Where to write statistics.json and constraint_violations.json.")
@click.option("--header/--no-header", default=True, show_default=True)
@click.option("--format", "fmt", type=_FORMATS, default=None)
def check_command(dataset: str, baseline_dir: str, output: str, header: bool, fmt: str | None) -> None:
    """Check a dataset against a baseline; exit code 0 either way, the violations are printed."""
    _require_extra()
    from moorage.monitor.checks import evaluate
    from moorage.monitor.datasets import Dataset, DatasetError
    from moorage.monitor.formats import (
        CONSTRAINTS_FILE,
        STATISTICS_FILE,
        VIOLATIONS_FILE,
        Constraints,
        Statistics,
        join,
        save_json,
    )
    from moorage.monitor.statistics import profile_dataset

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


# Executions on a running server: `moorage monitor run SCHEDULE`, `moorage monitor report EXECUTION`.
monitor.add_command(run_command)
monitor.add_command(report_command)
