"""``moorage transform``: batch transform jobs from the command line, with a progress bar.

    moorage transform start MODEL INPUT OUTPUT --content-type text/csv --split-type Line --instances 2
    moorage transform watch NAME        # progress bar: objects and records done, rate, ETA
    moorage transform stop NAME
    moorage transform list

Progress comes from ``GET /moorage/v1/transform-jobs/NAME`` (DescribeTransformJob has no such fields).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeRemainingColumn
from rich.table import Table

from moorage.cli.common import (
    fail,
    home_option,
    key_values,
    make_session,
    reports_errors,
    stdout_console,
    url_option,
)

_TERMINAL = ("Completed", "Failed", "Stopped")


def _input_location(value: str) -> str:
    """URLs as given; local paths made absolute (the server resolves them on its own machine)."""
    return value if "://" in value else str(Path(value).expanduser().resolve())


@click.group()
def transform() -> None:
    """Batch transform jobs: start one, watch its progress, stop it, list them."""


@transform.command("start")
@click.argument("model")
@click.argument("input_location", metavar="INPUT")
@click.argument("output_location", metavar="OUTPUT")
@click.option("--name", default=None, help="Job name (default: MODEL and a timestamp).")
@click.option("--manifest", is_flag=True, help="INPUT is a manifest file (S3DataType ManifestFile).")
@click.option("--content-type", default=None, help="ContentType of the records, e.g. text/csv.")
@click.option("--split-type", type=click.Choice(["None", "Line", "RecordIO", "TFRecord"]), default=None)
@click.option("--compression", type=click.Choice(["None", "Gzip"]), default=None)
@click.option("--strategy", type=click.Choice(["SingleRecord", "MultiRecord"]), default=None,
              help="BatchStrategy (default: the container's).")
@click.option("--max-payload", type=click.IntRange(0, 100), default=None, help="MaxPayloadInMB.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="MaxConcurrentTransforms per instance.")
@click.option("--accept", default=None, help="Accept: the output type to ask the model for.")
@click.option("--assemble-with", type=click.Choice(["None", "Line"]), default=None)
@click.option("--input-filter", default=None, help="JSONPath InputFilter, e.g. '$[1:]'.")
@click.option("--output-filter", default=None, help="JSONPath OutputFilter, e.g. '$[0,-1]'.")
@click.option("--join-source", type=click.Choice(["None", "Input"]), default=None)
@click.option("--instances", "instance_count", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--instance-type", default="ml.m5.large", show_default=True)
@click.option("--env", "env", multiple=True, callback=key_values, metavar="KEY=VALUE",
              help="Environment for the job's containers (repeatable).")
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None,
              help="Where the job runs (default: the server's setting, else local).")
@click.option("--ray-address", default=None, help="Ray cluster address for --backend ray.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Follow the job until it ends.")
@home_option
@url_option
@reports_errors
def start(model: str, input_location: str, output_location: str, name: str | None, manifest: bool,
          content_type: str | None, split_type: str | None, compression: str | None, strategy: str | None,
          max_payload: int | None, max_concurrent: int | None, accept: str | None, assemble_with: str | None,
          input_filter: str | None, output_filter: str | None, join_source: str | None, instance_count: int,
          instance_type: str, env: dict[str, str], backend: str | None, ray_address: str | None, wait: bool,
          home: Path | None, url: str | None) -> None:
    """Transform every object under INPUT with MODEL into OUTPUT (one NAME.out per object)."""
    from moorage.sdk.transformer import Transformer

    session = make_session(home, url)
    transformer = Transformer(model, instance_count=instance_count, instance_type=instance_type, strategy=strategy,
                              assemble_with=assemble_with, output_path=_input_location(output_location),
                              accept=accept, max_concurrent_transforms=max_concurrent, max_payload=max_payload,
                              env=env, sagemaker_session=session, backend=backend, ray_address=ray_address)
    job = transformer.transform(_input_location(input_location),
                                data_type="ManifestFile" if manifest else "S3Prefix", content_type=content_type,
                                compression_type=compression, split_type=split_type, job_name=name,
                                input_filter=input_filter, output_filter=output_filter, join_source=join_source,
                                wait=False)
    click.echo(f"transform job {job} started")
    if wait:
        _follow(session, job)


@transform.command("watch")
@click.argument("name")
@home_option
@url_option
@reports_errors
def watch(name: str, home: Path | None, url: str | None) -> None:
    """Show a job's progress until it ends."""
    _follow(make_session(home, url), name)


@transform.command("stop")
@click.argument("name")
@click.option("--wait/--no-wait", default=True, show_default=True)
@home_option
@url_option
@reports_errors
def stop(name: str, wait: bool, home: Path | None, url: str | None) -> None:
    """Stop a running job: its instances are stopped, unfinished outputs removed."""
    sm = make_session(home, url).sagemaker_client
    sm.stop_transform_job(TransformJobName=name)
    if wait:
        sm.get_waiter("transform_job_completed_or_stopped").wait(
            TransformJobName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 300})
    click.echo(f"transform job {name}: {sm.describe_transform_job(TransformJobName=name)['TransformJobStatus']}")


@transform.command("list")
@click.option("--status", default=None, type=click.Choice(["InProgress", "Completed", "Failed", "Stopping", "Stopped"]))
@click.option("--max", "max_results", default=20, show_default=True, type=click.IntRange(1, 100))
@home_option
@url_option
@reports_errors
def list_jobs(status: str | None, max_results: int, home: Path | None, url: str | None) -> None:
    """The most recent transform jobs."""
    request: dict[str, Any] = {"MaxResults": max_results, "SortBy": "CreationTime", "SortOrder": "Descending"}
    if status:
        request["StatusEquals"] = status
    jobs = make_session(home, url).sagemaker_client.list_transform_jobs(**request)["TransformJobSummaries"]
    console = stdout_console()
    if not jobs:
        console.print("no transform jobs")
        return
    table = Table(title="transform jobs")
    for column in ("job", "status", "created", "ended", "reason"):
        table.add_column(column)
    for job in jobs:
        ended = job.get("TransformEndTime")
        table.add_row(job["TransformJobName"], job["TransformJobStatus"], f"{job['CreationTime']:%Y-%m-%d %H:%M:%S}",
                      f"{ended:%H:%M:%S}" if ended else "", (job.get("FailureReason") or "")[:120])
    console.print(table)


def _rate(records: int, since: float | None) -> str:
    if not since or records <= 0:
        return "-"
    elapsed = max(1e-3, time.time() - since)
    return f"{records / elapsed:,.0f}"


def _follow(session: Any, name: str, poll: float = 0.5) -> None:
    """Progress bar over the input bytes done, with objects and records done, records/s and ETA."""
    err = Console(stderr=True)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TaskProgressColumn(),
               TextColumn("{task.fields[files]} objects"), TextColumn("{task.fields[records]} records"),
               TextColumn("{task.fields[rate]} rec/s"), TextColumn("ETA"), TimeRemainingColumn())
    state: dict[str, Any] = {}
    with Progress(*columns, console=err, disable=not err.is_terminal, transient=False) as bar:
        task = bar.add_task(name, total=None, files="0/?", records="0", rate="-")
        while True:
            state = session.connection.native("GET", f"/moorage/v1/transform-jobs/{name}")
            progress = state.get("Progress") or {}
            bar.update(task, total=progress.get("BytesTotal") or None, completed=progress.get("BytesDone", 0),
                       files=f"{progress.get('FilesDone', 0)}/{progress.get('FilesTotal', '?')}",
                       records=f"{progress.get('RecordsDone', 0):,}",
                       rate=_rate(progress.get("RecordsDone", 0), progress.get("InstancesReadyAt")))
            if state["TransformJobStatus"] in _TERMINAL:
                break
            time.sleep(poll)
    progress = state.get("Progress") or {}
    summary = (f"transform job {name}: {state['TransformJobStatus']}, {progress.get('FilesDone', 0)}/"
               f"{progress.get('FilesTotal', '?')} objects, {progress.get('RecordsDone', 0):,} records")
    click.echo(summary)
    if state["TransformJobStatus"] != "Completed":
        fail(state.get("FailureReason") or state["TransformJobStatus"])
    if not err.is_terminal:
        sys.stderr.flush()
