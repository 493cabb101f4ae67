"""What SageMaker's Model Monitor analyzer container does in a baselining processing job, done by moorage.

A processing job of the ``sagemaker-model-monitor-analyzer`` image (``control/processing_jobs.py``)
runs :func:`run_spec` in a process of its own (``monitor/common/jobs.py``), with the container's
contract kept: each ``ProcessingInputs[].S3Input`` is copied to its ``LocalPath`` under
``/opt/ml/processing/`` (here, the same path under the job's work folder), the environment says
what to do (``dataset_source``, ``dataset_format``, ``output_path``, and for a model-quality
baseline ``analysis_type=MODEL_QUALITY`` with ``problem_type`` and the attributes), moorage's own
baseline runs (``monitor/data_quality/suggest.py`` or ``monitor/model_quality/suggest.py``), and
each ``ProcessingOutputConfig.Outputs[].S3Output`` is uploaded from its ``LocalPath`` when the job
ends, where the SDK then reads ``statistics.json`` and ``constraints.json``.

Copies stream (bounded memory); an uploaded object appears whole or not at all (a local file is
written beside its name and renamed; an object store's PUT is whole by itself).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger("moorage.analyzer")

RUNNER = "moorage.control.analyzer:run_spec"
CONTAINER_ROOT = "/opt/ml/processing"
DEFAULT_OUTPUT = f"{CONTAINER_ROOT}/output"
COPY_CHUNK = 1024 * 1024


class AnalyzerError(Exception):
    """Why the job cannot do its work; the job's FailureReason."""


def local_path(work_dir: str, container_path: str) -> Path:
    """The job's own folder for a path under ``/opt/ml/processing`` (the caller checked it is one)."""
    relative = container_path.rstrip("/")[len(CONTAINER_ROOT):].lstrip("/")
    return Path(work_dir) / "opt-ml-processing" / relative


def reader_options(dataset_format: str | None) -> tuple[str | None, bool | None]:
    """The dataset's format and whether a CSV has a header, from SageMaker's ``dataset_format`` environment
    (``{"csv": {"header": true}}``, ``{"json": {"lines": true}}``, ``{"parquet": {}}``); none: from the files."""
    if not dataset_format:
        return None, None
    try:
        described = json.loads(dataset_format)
    except ValueError as exc:
        raise AnalyzerError(f"dataset_format is not JSON: {dataset_format!r}") from exc
    if not isinstance(described, dict):
        raise AnalyzerError(f"dataset_format must be a JSON object, not {dataset_format!r}")
    if "csv" in described:
        return "csv", bool((described["csv"] or {}).get("header", True))
    if "json" in described:
        if not (described["json"] or {}).get("lines", True):
            raise AnalyzerError('Only JSON Lines datasets can be baselined: dataset_format {"json": {"lines": true}}.')
        return "jsonl", True
    if "parquet" in described:
        return "parquet", True
    raise AnalyzerError(f"dataset_format {dataset_format}: use csv, json (lines) or parquet.")


def _download(uri: str, target: Path) -> int:
    """Copy the object, or every object under the prefix, at ``uri`` into ``target``; the number of files."""
    from moorage.store.locations import StorageError, filesystem

    try:
        fs, path = filesystem(uri)
        if fs.isfile(path):
            files = [(path, Path(path.rstrip("/")).name)]
        elif fs.isdir(path):
            base = path.rstrip("/") + "/"
            files = [(found, found[len(base):]) for found in sorted(fs.find(path)) if found.startswith(base)]
        else:
            files = []
    except StorageError as exc:
        raise AnalyzerError(str(exc)) from exc
    except OSError as exc:
        raise AnalyzerError(f"cannot read {uri}: {exc}") from exc
    if not files:
        raise AnalyzerError(f"No objects at the input location {uri}.")
    target.mkdir(parents=True, exist_ok=True)
    for source, relative in files:
        parts = Path(relative).parts
        if not parts or any(p in ("", ".", "..") for p in parts):
            raise AnalyzerError(f"The input object {source} has a name that leaves its folder.")
        destination = target.joinpath(*parts)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with fs.open(source, "rb") as src, open(destination, "wb") as dst:
                shutil.copyfileobj(src, dst, COPY_CHUNK)
        except OSError as exc:
            raise AnalyzerError(f"cannot copy {source}: {exc}") from exc
    return len(files)


def _upload(source: Path, uri: str) -> list[str]:
    """Every file under ``source`` to the same relative names under ``uri``; the locations written."""
    from moorage.store.locations import StorageError, filesystem, is_local, join

    written = []
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else []
    for file in files:
        location = join(uri, file.relative_to(source).as_posix())
        try:
            fs, path = filesystem(location)
            parent = path.rsplit("/", 1)[0] if "/" in path else ""
            if parent:
                fs.makedirs(parent, exist_ok=True)
            if is_local(fs):
                partial = f"{path}.{uuid.uuid4().hex[:8]}.partial"
                with open(file, "rb") as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, COPY_CHUNK)
                os.replace(partial, path)
            else:
                with open(file, "rb") as src, fs.open(path, "wb") as dst:
                    shutil.copyfileobj(src, dst, COPY_CHUNK)
        except (StorageError, OSError) as exc:
            raise AnalyzerError(f"cannot write {location}: {exc}") from exc
        written.append(location)
    return written


def run_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The job's process: inputs in, baseline, outputs out. Returns the job's result (Status, ExitMessage or
    FailureReason, Outputs)."""
    started = time.time()
    work_dir = spec["work_dir"]
    environment: dict[str, str] = spec.get("environment") or {}
    try:
        for item in spec["inputs"]:
            count = _download(item["uri"], local_path(work_dir, item["local_path"]))
            log.info("input %s: %d file(s) from %s to %s", item["name"], count, item["uri"], item["local_path"])
        output_dir = local_path(work_dir, environment.get("output_path") or DEFAULT_OUTPUT)
        output_dir.mkdir(parents=True, exist_ok=True)
        summary = _baseline(work_dir, environment, output_dir)
        written: list[str] = []
        for item in spec["outputs"]:
            written += _upload(local_path(work_dir, item["local_path"]), item["uri"])
            log.info("output %s: uploaded to %s", item["name"], item["uri"])
    except AnalyzerError as exc:
        log.error("the job failed: %s", exc)
        return {"Status": "Failed", "FailureReason": str(exc)[:1024], "Seconds": time.time() - started}
    except Exception as exc:  # the dataset's own errors (unreadable rows, a missing column) say what is wrong
        log.exception("the job failed")
        return {"Status": "Failed", "FailureReason": f"{type(exc).__name__}: {exc}"[:1024],
                "Seconds": time.time() - started}
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(Path(work_dir) / "opt-ml-processing")
    log.info("Completed: %s", summary)
    return {"Status": "Completed", "ExitMessage": f"Completed: {summary}"[:1024], "Outputs": written,
            "Seconds": time.time() - started}


def _baseline(work_dir: str, environment: dict[str, str], output_dir: Path) -> str:
    source = environment.get("dataset_source")
    if not source:
        raise AnalyzerError("The environment has no dataset_source (the dataset's path under /opt/ml/processing).")
    dataset = local_path(work_dir, source)
    if not dataset.exists():
        raise AnalyzerError(f"dataset_source {source} is not the LocalPath of any input (nothing was copied there).")
    fmt, header = reader_options(environment.get("dataset_format"))
    if (environment.get("analysis_type") or "").upper() == "MODEL_QUALITY":
        from moorage.monitor.model_quality.suggest import suggest_baseline as model_quality_baseline

        threshold = environment.get("probability_threshold_attribute")
        result = model_quality_baseline(
            dataset, output_dir, environment["problem_type"],
            ground_truth_attribute=environment["ground_truth_attribute"],
            inference_attribute=environment.get("inference_attribute") or None,
            probability_attribute=environment.get("probability_attribute") or None,
            probability_threshold=float(threshold) if threshold not in (None, "") else None, fmt=fmt, header=header)
        log.info("model quality (%s): statistics at %s", environment["problem_type"], result.statistics_uri)
        return f"model-quality baseline ({environment['problem_type']}) of {source}"
    from moorage.monitor.data_quality.suggest import DEFAULT_MONITORING_CONFIG, suggest_baseline

    config = None
    if environment.get("categorical_drift_method"):
        config = json.loads(json.dumps(DEFAULT_MONITORING_CONFIG))
        config["distribution_constraints"]["categorical_drift_method"] = environment["categorical_drift_method"]
    baseline = suggest_baseline(dataset, output_dir, fmt, header, monitoring_config=config)
    statistics = baseline.statistics.body_dict
    features = len(statistics.get("features") or [])
    rows = (statistics.get("dataset") or {}).get("item_count")
    log.info("data quality: %s feature(s) over %s row(s)", features, rows)
    return f"data-quality baseline of {features} feature(s) over {rows} row(s) of {source}"
