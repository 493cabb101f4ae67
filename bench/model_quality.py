"""Model-quality monitor at scale: 1,000,000 captured predictions merged with their labels, timed.

    .venv/bin/python bench/model_quality.py                      # 1,000,000 predictions, one run of each
    .venv/bin/python bench/model_quality.py --predictions 100000 --repeat 3
    .venv/bin/python bench/model_quality.py --keep --profile     # keep the data; cProfile the execution after
    .venv/bin/python bench/model_quality.py --data DIR           # reuse (or make once) the data under DIR

The data, made before anything is timed, in a temporary folder:

* **capture**: a binary classifier's predictions as ``moorage.capture.records.RecordEncoder`` writes
  them (one line per invocation, SageMaker's record byte for byte): CSV input of 6 features, CSV
  output = the positive class's probability, ``eventMetadata`` with ``eventId`` and the caller's
  ``inferenceId`` (uuid4s), ``inferenceTime`` spread over a 4-hour window (4 hour folders), files
  rotated as the capture writer does (every 300 s of traffic or 16 MiB);
* **ground truth**: a label for 98 % of the predictions (2 % never labelled), 2 % of them sent a
  second time later, collected after their prediction (exponential delay, mean 20 min, until the
  execution's time), written with ``moorage.monitor.common.ground_truth.write_labels`` in batches
  of 5,000, shuffled within a batch: 1,000,000 label records in all;
* **baseline**: ``suggest_baseline`` on a 5,000-row validation CSV of the same model
  (``constraints.json``, ``statistics.json`` and the CBPE calibration ``cbpe.json``).

Each measured run is a fresh child process (``python bench/model_quality.py --child MODE``), so its
peak RSS (its ``VmHWM`` at exit, see ``_high_water_mark``) is its own; wall time is the child's whole life,
interpreter start and imports included (an execution runs in its own process in production too);
the work alone (after imports) is shown beside it:

1. **execution**: ``run_execution`` of a BinaryClassification ``ExecutionSpec`` (ProbabilityAttribute
   ``0``, threshold 0.5, the baseline's constraints): list and read the capture files, read the
   labels, merge, statistics, merged records to ``merge/``, constraint violations, CBPE estimate,
   ``report.html``;
2. **merge + metrics**: ``capture_files`` + ``read_records``, ``ground_truth_files`` + ``read_labels``,
   ``merge(keep_merged=False)``, ``model_quality_statistics``;
3. **reference**: plain Python + numpy + scikit-learn: every capture and label line through
   ``orjson.loads``, labels into a dict (last wins), ids/probabilities into arrays, the join by a
   dict lookup, accuracy / precision / recall / F1 / AUC with scikit-learn.

Targets (the issue): (1) and (2) under 15 s wall and 1.5 GB peak RSS for 1,000,000 predictions.
The accuracy and AUC of (1) and (2) are checked against (3)'s. Results print as a table and go to
bench/results/model-quality-<timestamp>.json. ``--profile`` then runs (1) once more under cProfile
and prints the top functions by own time and by cumulative time.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "src"))

SEED = 20261206
TARGET_SECONDS = 15.0
TARGET_BYTES = 1.5e9
FEATURES = 6
MISSING = 0.02  # predictions never labelled
RESENT = 0.02  # labels sent a second time (as many as the missing ones: n label records in all)
LABEL_BATCH = 5_000
WINDOW_HOURS = 4
WINDOW_START = dt.datetime(2026, 12, 6, 8, tzinfo=dt.UTC)
WINDOW_END = WINDOW_START + dt.timedelta(hours=WINDOW_HOURS)
SCHEDULED = WINDOW_END + dt.timedelta(hours=1)  # labels collected until then count
ENDPOINT, VARIANT = "bench-mq", "AllTraffic"
FILE_SECONDS, FILE_BYTES = 300, 16 * 2**20  # the capture writer's rotation defaults
MODES = ("execution", "merge", "reference")
LABELS = {"execution": "(1) moorage run_execution (whole execution)",
          "merge": "(2) moorage merge + metrics",
          "reference": "(3) reference: orjson lines + dict join + scikit-learn"}


# -- the data ------------------------------------------------------------------------------------------
def _uuids(rng: np.random.Generator, n: int) -> list[str]:
    raw = rng.bytes(16 * n)
    return [str(uuid.UUID(bytes=raw[16 * i:16 * i + 16], version=4)) for i in range(n)]


def _model(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(labels 0/1, probability of 1): a fair classifier, ~30 % positives, AUC ~0.85."""
    y = (rng.random(n) < 0.3).astype(np.int64)
    score = np.where(y == 1, rng.normal(0.9, 1.0, n), rng.normal(-0.7, 1.0, n))
    return y, 1.0 / (1.0 + np.exp(-score))


def write_capture(root: Path, n: int, rng: np.random.Generator) -> tuple[list[str], np.ndarray, np.ndarray]:
    """n capture records of the window; returns (inference ids, labels, inference epoch seconds)."""
    from moorage.capture.config import CaptureConfig
    from moorage.capture.records import RecordEncoder, stamp

    config = CaptureConfig.parse({"EnableCapture": True, "InitialSamplingPercentage": 100,
                                  "DestinationS3Uri": str(root), "CaptureOptions": [
                                      {"CaptureMode": "Input"}, {"CaptureMode": "Output"}]})
    encoder = RecordEncoder(config)
    y, p = _model(rng, n)
    start = int(WINDOW_START.timestamp())
    seconds = np.sort(rng.integers(start, int(WINDOW_END.timestamp()), n))
    features = rng.normal(size=(n, FEATURES)) * [1.0, 10.0, 100.0, 0.1, 3.0, 1.0]
    inference_ids = _uuids(rng, n)
    event_ids = _uuids(rng, n)
    stamps: dict[int, bytes] = {}
    base = root / ENDPOINT / VARIANT
    handle = None
    opened_at = written = -1
    hour = None
    for i in range(n):
        second = int(seconds[i])
        if handle is None or second // 3600 != hour or second - opened_at >= FILE_SECONDS or written >= FILE_BYTES:
            if handle is not None:
                handle.close()
            moment = dt.datetime.fromtimestamp(second, tz=dt.UTC)
            folder = base / f"{moment:%Y/%m/%d/%H}"
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / f"{moment:%M-%S}-{i % 1000:03d}-{uuid.UUID(bytes=rng.bytes(16), version=4)}.jsonl",  # noqa: SIM115
                          "wb")
            opened_at, written, hour = second, 0, second // 3600
        end = stamps.get(second)
        if end is None:
            end = stamps[second] = stamp(second)
        headers = (b"content-type: text/csv\r\naccept: text/csv\r\nx-amzn-sagemaker-inference-id: "
                   + inference_ids[i].encode() + b"\r\n")
        row = ",".join(f"{v:.4f}" for v in features[i].tolist()).encode()
        line = encoder.line(headers, row, "text/csv", f"{p[i]:.12f}".encode(), event_ids[i].encode(), end)
        handle.write(line)
        written += len(line)
    if handle is not None:
        handle.close()
    return inference_ids, y, seconds


def write_ground_truth(root: Path, ids: list[str], y: np.ndarray, seconds: np.ndarray,
                       rng: np.random.Generator) -> dict[str, int]:
    from moorage.monitor.common.ground_truth import write_labels

    n = len(ids)
    order = rng.permutation(n)
    missing = int(n * MISSING)
    labelled = np.sort(order[missing:])
    resent = rng.choice(labelled, size=int(n * RESENT), replace=False)
    last = SCHEDULED.timestamp() - 1
    delay = rng.exponential(1200.0, len(labelled))
    first_at = np.minimum(seconds[labelled] + 1 + delay, last)
    again_at = np.minimum(first_at[np.searchsorted(labelled, resent)] + rng.exponential(1800.0, len(resent)), last)
    rows = np.concatenate([labelled, resent])
    at = np.concatenate([first_at, again_at])
    chronological = np.argsort(at, kind="stable")
    files = 0
    for begin in range(0, len(rows), LABEL_BATCH):
        chunk = chronological[begin:begin + LABEL_BATCH]
        picked = rows[chunk][rng.permutation(len(chunk))]  # out of order within the file too
        when = dt.datetime.fromtimestamp(float(at[chunk].max()), tz=dt.UTC)
        write_labels(str(root), ((ids[i], int(y[i])) for i in picked.tolist()), when=when)
        files += 1
    return {"label_records": len(rows), "labelled": len(labelled), "missing": missing, "resent": len(resent),
            "label_files": files}


def write_baseline(folder: Path, rng: np.random.Generator) -> str:
    from moorage.monitor.model_quality.suggest import suggest_baseline

    y, p = _model(rng, 5_000)
    folder.mkdir(parents=True, exist_ok=True)
    csv = folder / "validation.csv"
    csv.write_text("label,probability\n" + "".join(f"{a},{b:.12f}\n" for a, b in zip(y.tolist(), p.tolist(),
                                                                                      strict=True)))
    baseline = suggest_baseline(csv, folder / "baseline", "BinaryClassification", ground_truth_attribute="label",
                                probability_attribute="probability", probability_threshold=0.5, header=True)
    return baseline.constraints_uri


def make_data(workdir: Path, n: int) -> dict[str, Any]:
    marker = workdir / "data.json"
    if marker.exists():
        info = json.loads(marker.read_text())
        if info.get("predictions") == n:
            return info
    for sub in ("capture", "ground-truth", "baseline"):
        shutil.rmtree(workdir / sub, ignore_errors=True)
    rng = np.random.default_rng(SEED)
    started = time.perf_counter()
    ids, y, seconds = write_capture(workdir / "capture", n, rng)
    capture_s = time.perf_counter() - started
    labels = write_ground_truth(workdir / "ground-truth", ids, y, seconds, rng)
    constraints = write_baseline(workdir / "baseline", rng)
    capture_files = sorted((workdir / "capture").rglob("*.jsonl"))
    info = {"predictions": n, "capture_files": len(capture_files),
            "capture_bytes": sum(f.stat().st_size for f in capture_files),
            "label_bytes": sum(f.stat().st_size for f in (workdir / "ground-truth").rglob("*.jsonl")),
            "constraints_uri": constraints, "capture_seconds": round(capture_s, 1),
            "generation_seconds": round(time.perf_counter() - started, 1), **labels}
    marker.write_text(json.dumps(info, indent=1))
    return info


# -- the measured children -----------------------------------------------------------------------------
def _spec(workdir: Path, constraints_uri: str, out: Path) -> Any:
    from moorage.monitor.model_quality.execution import ExecutionSpec

    return ExecutionSpec(
        execution_name="bench", schedule_name="bench-schedule", endpoint_name=ENDPOINT,
        capture_uri=str(workdir / "capture"), scheduled_time=SCHEDULED.timestamp(),
        window_start=WINDOW_START.timestamp(), window_end=WINDOW_END.timestamp(), output_uri=str(out),
        problem_type="BinaryClassification", ground_truth_uri=str(workdir / "ground-truth"),
        constraints_uri=constraints_uri, probability_attribute="0", probability_threshold=0.5)


def child_execution(workdir: Path, info: dict[str, Any], out: Path) -> dict[str, Any]:
    # what run_execution imports when called: imported before the clock, as in (2) and (3)
    import importlib

    for module in ("common.capture_reader", "common.ground_truth", "model_quality.cbpe", "model_quality.constraints",
                   "model_quality.metrics", "model_quality.report", "model_quality.suggest"):
        importlib.import_module(f"moorage.monitor.{module}")
    from moorage.monitor.model_quality.execution import run_execution

    spec = _spec(workdir, info["constraints_uri"], out)
    started = time.perf_counter()
    result = run_execution(spec)
    seconds = time.perf_counter() - started
    if result.get("Status") not in ("Completed", "CompletedWithViolations"):
        raise SystemExit(f"execution {result.get('Status')}: {result.get('FailureReason')}")
    metrics = result["Metrics"]
    return {"seconds": seconds, "accuracy": metrics.get("accuracy"), "auc": metrics.get("auc"),
            "rows": result["Merge"]["Rows"], "status": result["Status"], "merge": result["Merge"],
            "ground_truth": {k: v for k, v in result["GroundTruth"].items() if k != "Examples"},
            "violations": result.get("ViolatedFeatures")}


def child_merge(workdir: Path, info: dict[str, Any], out: Path) -> dict[str, Any]:
    from moorage.monitor.common.capture_reader import CaptureScan, capture_files, read_records
    from moorage.monitor.common.ground_truth import ground_truth_files, merge, read_labels
    from moorage.monitor.model_quality.metrics import model_quality_statistics

    started = time.perf_counter()
    files = capture_files(str(workdir / "capture"), ENDPOINT, WINDOW_START, WINDOW_END)
    labels = read_labels(ground_truth_files(str(workdir / "ground-truth"), SCHEDULED, since=WINDOW_START))
    merged = merge(read_records(files, WINDOW_START, WINDOW_END, CaptureScan(files=len(files))), labels,
                   probability_attribute="0", probability_threshold=0.5, problem_type="BinaryClassification",
                   keep_merged=False)
    stats = model_quality_statistics("BinaryClassification", merged.labels, merged.predictions,
                                     merged.probabilities, seed=0)
    seconds = time.perf_counter() - started
    section = stats["binary_classification_metrics"]
    return {"seconds": seconds, "accuracy": section["accuracy"]["value"], "auc": section["auc"]["value"],
            "rows": merged.rows, "merge": merged.counts()}


def child_reference(workdir: Path, info: dict[str, Any], out: Path) -> dict[str, Any]:
    import orjson
    from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score, roc_auc_score

    started = time.perf_counter()
    labels: dict[str, str] = {}
    for path in sorted((workdir / "ground-truth").rglob("*.jsonl")):  # hour folder, then name: last wins
        with open(path, "rb") as fh:
            for line in fh:
                record = orjson.loads(line)
                labels[record["eventMetadata"]["eventId"]] = record["groundTruthData"]["data"]
    truth: list[float] = []
    scores: list[float] = []
    for path in sorted((workdir / "capture" / ENDPOINT).rglob("*.jsonl")):
        with open(path, "rb") as fh:
            for line in fh:
                record = orjson.loads(line)
                metadata = record["eventMetadata"]
                label = labels.get(metadata.get("inferenceId") or metadata["eventId"])
                if label is not None:
                    truth.append(float(label))
                    scores.append(float(record["captureData"]["endpointOutput"]["data"]))
    y = np.asarray(truth)
    p = np.asarray(scores)
    predicted = (p >= 0.5).astype(np.float64)
    result = {"accuracy": float(accuracy_score(y, predicted)), "precision": float(precision_score(y, predicted)),
              "recall": float(recall_score(y, predicted)), "f1": float(f1_score(y, predicted)),
              "auc": float(roc_auc_score(y, p))}
    return {"seconds": time.perf_counter() - started, "rows": len(y), **result}


CHILDREN = {"execution": child_execution, "merge": child_merge, "reference": child_reference}


def child_main(args: argparse.Namespace) -> None:
    workdir = Path(args.data)
    info = json.loads((workdir / "data.json").read_text())
    out = Path(args.out)
    if args.profile_to:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
        result = CHILDREN[args.child](workdir, info, out)
        profiler.disable()
        profiler.dump_stats(args.profile_to)
    else:
        result = CHILDREN[args.child](workdir, info, out)
    result["peak_rss"] = _high_water_mark()
    (out / "result.json").write_text(json.dumps(result, default=str))


def _high_water_mark() -> int:
    """This process's peak RSS in bytes: ``VmHWM``, which belongs to the memory of the program exec'd.

    Not ``ru_maxrss``: Linux carries the peak of the memory replaced at exec into it, and a child
    that subprocess vforks from the parent reports the parent's peak (the data generation's) then.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def run_child(mode: str, workdir: Path, out: Path, profile_to: Path | None = None) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--child", mode, "--data", str(workdir),
               "--out", str(out)]
    if profile_to is not None:
        command += ["--profile-to", str(profile_to)]
    started = time.perf_counter()
    proc = subprocess.Popen(command)
    _, status, usage = os.wait4(proc.pid, 0)  # this child's own CPU time
    wall = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} child failed with exit status {proc.returncode}")
    result = json.loads((out / "result.json").read_text())
    result.update(mode=mode, wall=wall, cpu=usage.ru_utime + usage.ru_stime)
    return result


# -- the parent ----------------------------------------------------------------------------------------
def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--predictions", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each mode (interleaved); the median is shown")
    parser.add_argument("--keep", action="store_true", help="keep the data folder (its path is printed)")
    parser.add_argument("--data", default=None, help="the data folder: reused when it holds this many predictions")
    parser.add_argument("--profile", action="store_true", help="then cProfile one run of (1) and print the top")
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--profile-to", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_main(args)
        return 0

    workdir = Path(args.data) if args.data else Path(tempfile.mkdtemp(prefix="moorage-bench-mq-"))
    workdir.mkdir(parents=True, exist_ok=True)
    keep = args.keep or args.data is not None
    try:
        print(f"data: {workdir} ({args.predictions:,} predictions) ...", flush=True)
        info = make_data(workdir, args.predictions)
        print(f"  {info['capture_files']} capture files ({info['capture_bytes'] / 2**20:,.0f} MiB), "
              f"{info['label_records']:,} label records in {info['label_files']} files "
              f"({info['label_bytes'] / 2**20:,.0f} MiB): {info['missing']:,} predictions unlabelled, "
              f"{info['resent']:,} labels sent twice; made in {info['generation_seconds']} s", flush=True)
        runs: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for k in range(args.repeat):
            for mode in MODES:
                out = workdir / "runs" / f"{mode}-{k}"
                shutil.rmtree(out, ignore_errors=True)
                result = run_child(mode, workdir, out)
                runs[mode].append(result)
                print(f"  [{k + 1}/{args.repeat}] {mode}: {result['wall']:.2f} s wall ({result['seconds']:.2f} s "
                      f"work), peak RSS {gb(result['peak_rss'])}", flush=True)
                shutil.rmtree(out, ignore_errors=True)

        summary = {mode: {"wall": statistics.median(r["wall"] for r in rs),
                          "seconds": statistics.median(r["seconds"] for r in rs),
                          "cpu": statistics.median(r["cpu"] for r in rs),
                          "peak_rss": max(r["peak_rss"] for r in rs), "rows": rs[0]["rows"],
                          "accuracy": rs[0]["accuracy"], "auc": rs[0]["auc"]} for mode, rs in runs.items()}
        ref = summary["reference"]
        for mode in ("execution", "merge"):
            s = summary[mode]
            s["pass"] = s["wall"] < TARGET_SECONDS and s["peak_rss"] < TARGET_BYTES
            s["agrees"] = (s["rows"] == ref["rows"] and abs(s["accuracy"] - ref["accuracy"]) < 1e-9
                           and abs(s["auc"] - ref["auc"]) < 1e-6)

        n = args.predictions
        lines = [f"{n:,} predictions ({info['capture_files']} capture files, "
                 f"{info['capture_bytes'] / 2**20:,.0f} MiB), {info['label_records']:,} label records "
                 f"({info['label_files']} files), {ref['rows']:,} matched; {os.cpu_count()} CPUs, "
                 f"median of {args.repeat}", "",
                 "| run | wall s (process) | work s (after imports) | CPU s | peak RSS | wall / ref | RSS / ref "
                 "| predictions/s | target (< 15 s, < 1.5 GB) |",
                 "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for mode in MODES:
            s = summary[mode]
            verdict = "" if mode == "reference" else ("**PASS**" if s["pass"] else "**FAIL**")
            lines.append(f"| {LABELS[mode]} | {s['wall']:.2f} | {s['seconds']:.2f} | {s['cpu']:.2f} | "
                         f"{gb(s['peak_rss'])} | {s['wall'] / ref['wall']:.2f}x | "
                         f"{s['peak_rss'] / ref['peak_rss']:.2f}x | {n / s['wall']:,.0f} | {verdict} |")
        lines.append("")
        for mode in ("execution", "merge"):
            s = summary[mode]
            lines.append(f"{LABELS[mode]}: accuracy {s['accuracy']:.6f}, AUC {s['auc']:.6f}, {s['rows']:,} rows: "
                         + ("same as the reference" if s["agrees"] else
                            f"DIFFERS from the reference (accuracy {ref['accuracy']:.6f}, AUC {ref['auc']:.6f}, "
                            f"{ref['rows']:,} rows)"))
        print("\n" + "\n".join(lines))

        stamp = time.strftime("%Y%m%d-%H%M%S")
        results = BENCH / "results" / f"model-quality-{stamp}.json"
        results.parent.mkdir(parents=True, exist_ok=True)
        from serving import host_info

        results.write_text(json.dumps({"timestamp": stamp, "settings": {k: str(v) for k, v in vars(args).items()},
                                       "host": host_info(), "data": info, "summary": summary, "runs": runs,
                                       "report": lines}, indent=1, default=str))
        print(f"\nresults: {results}")

        if args.profile:
            profile(workdir)
        if keep:
            print(f"data kept: {workdir}")
        ok = all(summary[m]["pass"] and summary[m]["agrees"] for m in ("execution", "merge"))
        return 0 if ok else 1
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)


def profile(workdir: Path) -> None:
    import pstats

    out = workdir / "runs" / "profile"
    shutil.rmtree(out, ignore_errors=True)
    prof = workdir / "execution.prof"
    result = run_child("execution", workdir, out, profile_to=prof)
    print(f"\ncProfile of (1), {result['seconds']:.2f} s of work under the profiler ({prof}):")
    stats = pstats.Stats(str(prof))
    stats.sort_stats("tottime").print_stats(20)
    stats.sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    sys.path.insert(0, str(BENCH))
    raise SystemExit(main())
