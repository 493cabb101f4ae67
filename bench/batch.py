"""Batch transform benchmark: 1,000,000 CSV rows through a moorage transform job vs. the model's own
vectorised ``predict`` over the same file in one process (the floor).

Both read the same CSV file and write one prediction per line:

* **floor**: one Python process: ``pandas.read_csv`` the whole file, ``model.predict`` once, write the
  predictions (the fastest a user gets with the whole file in memory and no platform). Timed cold
  (process start to exit: imports and model load included, as a job's instances pay them) and warm
  (read + predict + write only).
* **transform**: ``moorage serve`` (a subprocess) and boto3: ``create_model`` (scikit-learn,
  ``file://model.tar.gz``), ``create_transform_job`` with InstanceCount 2, MultiRecord, a large
  MaxPayloadInMB, SplitType Line, Accept text/csv, AssembleWith Line; timed from the create call to
  Completed (instance start-up included), polling DescribeTransformJob every 0.1 s; and from the
  moment its instances were ready (``InstancesReadyAt`` of ``GET /moorage/v1/transform-jobs/NAME``).

Reported: rows/s of both, their ratio (target >= 0.6x), and the peak resident memory of the floor
process and of the moorage server with all its instances (sampled every 50 ms over the process
tree): the job streams the file, so its memory stays far below the input's size.
The transform's output is checked line by line against the floor's predictions.

    .venv/bin/python bench/batch.py [--rows 1000000] [--instances 2] [--max-payload-mb 16]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from e2e_support import MoorageServer  # noqa: E402

SEED = 20240607
FEATURES = 10
ROLE = "arn:aws:iam::000000000000:role/bench"

FLOOR_SCRIPT = """
import sys, time, joblib, pandas as pd
model = joblib.load(sys.argv[1])
started = time.perf_counter()
X = pd.read_csv(sys.argv[2], header=None, dtype="float64").to_numpy()
predictions = model.predict(X)
with open(sys.argv[3], "w") as fh:
    fh.write("\\n".join(map(str, predictions.tolist())) + "\\n")
print(time.perf_counter() - started)
"""


class PeakRss:
    """Peak of the summed RSS of a process tree, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.05):
        self.pid, self.interval = pid, interval
        self.peak_tree = self.peak_root = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
                rss = [p.memory_info().rss for p in procs if p.is_running()]
            except psutil.Error:
                rss = []
            if rss:
                self.peak_root = max(self.peak_root, rss[0])
                self.peak_tree = max(self.peak_tree, sum(rss))
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def train(workdir: Path) -> tuple[Path, Path]:
    import joblib
    from sklearn.datasets import make_classification
    from sklearn.ensemble import GradientBoostingClassifier

    X, y = make_classification(n_samples=4000, n_features=FEATURES, n_informative=6, random_state=SEED)
    model = GradientBoostingClassifier(n_estimators=50, max_depth=3, random_state=SEED).fit(X, y)
    artifact = workdir / "model.joblib"
    joblib.dump(model, artifact)
    tarball = workdir / "model.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(artifact, arcname="model.joblib")
    return artifact, tarball


def write_input(path: Path, rows: int) -> None:
    rng = np.random.default_rng(SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        for start in range(0, rows, 100_000):
            block = rng.normal(size=(min(100_000, rows - start), FEATURES))
            fh.write("\n".join(",".join(f"{v:.6f}" for v in row) for row in block.tolist()) + "\n")


def run_floor(artifact: Path, data: Path, out: Path) -> tuple[float, float, int]:
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SCRIPT, str(artifact), str(data), str(out)],
                            stdout=subprocess.PIPE, text=True)
    with PeakRss(proc.pid) as rss:
        stdout, _ = proc.communicate(timeout=600)
    cold = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"floor process failed with {proc.returncode}")
    return cold, float(stdout.strip().splitlines()[-1]), rss.peak_tree


def run_transform(home: Path, tarball: Path, data_dir: Path, out_dir: Path, args: argparse.Namespace
                  ) -> tuple[float, float, int, int]:
    server = MoorageServer(home).start(timeout=90)
    try:
        sm = server.sm(read_timeout=120)
        sm.create_model(ModelName="bench-batch", ExecutionRoleArn=ROLE,
                        PrimaryContainer={"Image": "sklearn", "ModelDataUrl": tarball.resolve().as_uri()})
        assert server.pid is not None
        with PeakRss(server.pid) as rss:
            started = time.perf_counter()
            sm.create_transform_job(
                TransformJobName="bench-batch", ModelName="bench-batch", BatchStrategy="MultiRecord",
                MaxPayloadInMB=args.max_payload_mb, MaxConcurrentTransforms=args.max_concurrent,
                TransformInput={"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": str(data_dir)}},
                                "ContentType": "text/csv", "SplitType": "Line"},
                TransformOutput={"S3OutputPath": str(out_dir), "Accept": "text/csv", "AssembleWith": "Line"},
                TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": args.instances})
            while True:
                desc = sm.describe_transform_job(TransformJobName="bench-batch")
                if desc["TransformJobStatus"] not in ("InProgress", "Stopping"):
                    break
                time.sleep(0.1)
            elapsed = time.perf_counter() - started
            ended = time.time()
        if desc["TransformJobStatus"] != "Completed":
            raise SystemExit(f"transform job {desc['TransformJobStatus']}: {desc.get('FailureReason')}")
        _, _, body = server.signed_request("GET", "/moorage/v1/transform-jobs/bench-batch")
        ready = json.loads(body)["Progress"]["InstancesReadyAt"]
        return elapsed, ended - ready, rss.peak_tree, rss.peak_root
    finally:
        server.stop()


def same_lines(a: Path, b: Path) -> int:
    count = 0
    with open(a, "rb") as fa, open(b, "rb") as fb:
        for la, lb in zip(fa, fb, strict=True):
            if la.strip() != lb.strip():
                raise SystemExit(f"line {count + 1} differs: {la!r} vs {lb!r}")
            count += 1
    return count


def _line_count(path: Path) -> int:
    with open(path, "rb") as fh:
        return sum(1 for _ in fh)


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--max-payload-mb", type=int, default=16)
    parser.add_argument("--max-concurrent", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and outputs here")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="moorage-bench-batch-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        artifact, tarball = train(workdir)
        data = workdir / "input" / "rows.csv"
        if not data.exists() or _line_count(data) != args.rows:
            print(f"writing {args.rows:,} rows x {FEATURES} features ...", flush=True)
            write_input(data, args.rows)
        size = data.stat().st_size
        print(f"input: {data} ({mib(size)}); cpus: {os.cpu_count()}", flush=True)

        floor_out = workdir / "floor.out"
        floor_cold, floor_warm, floor_rss = run_floor(artifact, data, floor_out)
        out_dir = workdir / "output"
        shutil.rmtree(out_dir, ignore_errors=True)
        home = workdir / "home"
        shutil.rmtree(home, ignore_errors=True)
        job_s, after_ready_s, tree_rss, server_rss = run_transform(home, tarball, data.parent, out_dir, args)
        checked = same_lines(floor_out, out_dir / "rows.csv.out")
        assert checked == args.rows, f"{checked} output lines for {args.rows} rows"

        def rate(seconds: float) -> float:
            return args.rows / seconds

        job = f"{args.instances} instances, MultiRecord {args.max_payload_mb} MB, {args.max_concurrent} concurrent"
        rows = [
            ("floor, cold: python start to exit (imports, model load, read_csv, predict, write)", floor_cold,
             floor_cold, mib(floor_rss)),
            ("transform job, end to end: create_transform_job to Completed (instances start included)", job_s,
             floor_cold, f"{mib(tree_rss)} server + instances ({mib(server_rss)} server alone)"),
            ("floor, warm: read_csv + predict + write only", floor_warm, floor_warm, ""),
            ("transform job after its instances were ready", after_ready_s, floor_warm, ""),
        ]
        print(f"\n{args.rows:,} rows x {FEATURES} features ({mib(size)} CSV); transform job: {job}; "
              f"{os.cpu_count()} CPUs\n")
        print("| run | seconds | rows/s | ratio to its floor | peak RSS |")
        print("|---|---:|---:|---:|---|")
        for label, seconds, floor, memory in rows:
            print(f"| {label} | {seconds:.2f} | {rate(seconds):,.0f} | {floor / seconds:.2f}x | {memory} |")
        print(f"\noutputs identical to the floor's on all {checked:,} rows; target: end to end >= 0.6x the floor")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
