"""``moorage metrics ENDPOINT``: one statistic of an endpoint's metric per period, as a table or a PNG chart."""

from __future__ import annotations

import datetime as dt
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
from rich.table import Table

from moorage.cli.common import fail, home_option, key_values, stdout_console, url_option
from moorage.connection import ClientError, Connection
from moorage.metrics.vocabulary import (
    CPU_UTILIZATION,
    DISK_UTILIZATION,
    ENDPOINT_NAME,
    INSTANCE_ID,
    INVOCATION_NAMESPACE,
    INVOCATIONS,
    MEMORY_UTILIZATION,
    UTILIZATION_NAMESPACE,
    VARIANT_NAME,
    check_statistic,
    parse_duration,
)

_UTILIZATION = {CPU_UTILIZATION, MEMORY_UTILIZATION, DISK_UTILIZATION}
_BASE_DIMENSIONS = {ENDPOINT_NAME, VARIANT_NAME}


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


def _statistic(ctx: click.Context, param: click.Parameter, value: str) -> str:
    aliases = {"avg": "Average", "average": "Average", "sum": "Sum", "min": "Minimum", "minimum": "Minimum",
               "max": "Maximum", "maximum": "Maximum", "count": "SampleCount", "samplecount": "SampleCount"}
    value = aliases.get(value.lower(), value)
    try:
        return check_statistic(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


@click.command()
@click.argument("endpoint")
@click.option("--metric", default=INVOCATIONS, show_default=True,
              help="Metric name: Invocations, ModelLatency, OverheadLatency, Invocation5XXErrors, CPUUtilization, "
                   "... or a business metric's.")
@click.option("--stat", "statistic", default="Average", show_default=True, callback=_statistic,
              help="Average, Sum, Minimum, Maximum, SampleCount, or a percentile such as p99 or p99.9.")
@click.option("--since", default="15m", show_default=True, callback=_duration,
              help="How far back: 90s, 15m, 2h, 7d.")
@click.option("--period", default=60, show_default=True, type=click.IntRange(min=1), help="Seconds per datapoint.")
@click.option("--variant", default=None, help="Only this production variant (default: every variant).")
@click.option("--instance", default=None, help="One instance's series (its InstanceId) instead of the variant's.")
@click.option("--namespace", default=None,
              help="Metric namespace (default: /aws/sagemaker/Endpoints for utilisation, else AWS/SageMaker).")
@click.option("--dimension", "dimensions", multiple=True, callback=key_values, metavar="NAME=VALUE",
              help="A further dimension of the series (business metrics; repeatable).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also draw the datapoints into this PNG file (needs matplotlib: pip install 'moorage[plot]').")
@home_option
@url_option
def metrics(endpoint: str, metric: str, statistic: str, since: float, period: int, variant: str | None,
            instance: str | None, namespace: str | None, dimensions: dict[str, str], plot: Path | None,
            home: Path | None, url: str | None) -> None:
    """Print one statistic of ENDPOINT's METRIC per period, per variant (or instance)."""
    namespace = namespace or (UTILIZATION_NAMESPACE if metric in _UTILIZATION else INVOCATION_NAMESPACE)
    wanted = {ENDPOINT_NAME: endpoint, **dimensions}
    if variant:
        wanted[VARIANT_NAME] = variant
    if instance:
        wanted[INSTANCE_ID] = instance
    end = time.time()
    # Periods aligned to multiples of their length, as the alarms and the autoscaler see them.
    start = math.floor((end - since) / period) * period
    try:
        conn = Connection.discover(home, url)
        listed = conn.native("GET", "/moorage/v1/metrics/list?" + urlencode(
            [("Namespace", namespace), ("MetricName", metric), *_pairs(wanted)]))["Metrics"]
        allowed = _BASE_DIMENSIONS | set(wanted)
        series = [_dims(m) for m in listed if set(_dims(m)) <= allowed]
        results = []
        for dims in sorted(series, key=lambda d: sorted(d.items())):
            params = [("Namespace", namespace), ("MetricName", metric), ("Statistic", statistic),
                      ("StartTime", repr(start)), ("EndTime", repr(end)), ("Period", str(period)), *_pairs(dims)]
            points = conn.native("GET", "/moorage/v1/metrics?" + urlencode(params))["Datapoints"]
            results.append((_label(dims, endpoint), points))
    except ClientError as exc:
        fail(str(exc))
    if not results:
        fail(f"no {namespace} {metric} data for endpoint {endpoint}"
             + (f" variant {variant}" if variant else "") + (f" instance {instance}" if instance else ""))
    unit = next((p["Unit"] for _, points in results for p in points), "")
    title = (f"{metric} {statistic}{f' ({unit})' if unit and unit != 'None' else ''} of {endpoint}, "
             f"last {_human(since)}, {period} s periods")
    _print_table(title, results)
    if plot is not None:
        _plot(plot, title, results, unit)
        click.echo(f"chart: {plot}", err=True)


def _pairs(dims: dict[str, str]) -> list[tuple[str, str]]:
    return [("Dimension", f"{k}={v}") for k, v in dims.items()]


def _dims(entry: dict[str, Any]) -> dict[str, str]:
    return {d["Name"]: d["Value"] for d in entry["Dimensions"]}


def _label(dims: dict[str, str], endpoint: str) -> str:
    parts = [dims.get(VARIANT_NAME, "")] if VARIANT_NAME in dims else []
    parts += [v for k, v in sorted(dims.items()) if k not in (ENDPOINT_NAME, VARIANT_NAME)]
    return "/".join(p for p in parts if p) or endpoint


def _human(seconds: float) -> str:
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def _when(iso_text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(iso_text).astimezone()


def _value(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _print_table(title: str, results: list[tuple[str, list[dict[str, Any]]]]) -> None:
    table = Table(title=title)
    table.add_column("time")
    for label, _ in results:
        table.add_column(label, justify="right")
        table.add_column("samples", justify="right", style="dim")
    stamps = sorted({p["Timestamp"] for _, points in results for p in points})
    by_series = [{p["Timestamp"]: p for p in points} for _, points in results]
    for stamp in stamps:
        row = [_when(stamp).strftime("%Y-%m-%d %H:%M:%S")]
        for points in by_series:
            point = points.get(stamp)
            row += [_value(point["Value"]), f"{point['SampleCount']:g}"] if point else ["-", ""]
        table.add_row(*row)
    if not stamps:
        table.add_row("no datapoints in this range", *[""] * (2 * len(results)))
    stdout_console().print(table)


def _plot(path: Path, title: str, results: list[tuple[str, list[dict[str, Any]]]], unit: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        fail("--plot needs matplotlib: pip install 'moorage[plot]'")
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=100)
    for label, points in results:
        if points:
            ax.plot([_when(p["Timestamp"]) for p in points], [p["Value"] for p in points], marker="o",
                    markersize=3, label=label)
    ax.set_title(title)
    ax.set_ylabel(unit if unit and unit != "None" else "value")
    ax.grid(True, alpha=0.3)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S" if results and _span(results) < 86400 else
                                                      "%m-%d %H:%M", tz=dt.datetime.now().astimezone().tzinfo))
    if any(points for _, points in results):
        ax.legend(loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)


def _span(results: list[tuple[str, list[dict[str, Any]]]]) -> float:
    stamps = [_when(p["Timestamp"]).timestamp() for _, points in results for p in points]
    return max(stamps) - min(stamps) if stamps else 0.0
