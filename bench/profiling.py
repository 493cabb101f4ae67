"""Baseline profiling speed: moorage vs whylogs' profile vs Evidently's data-drift report, same data, same run.

    .venv/bin/python bench/profiling.py [--rows 1000000] [--skip-peers]

Data: ``--rows`` rows x 20 columns, fixed seed: 10 floats (normal, log-normal, uniform; two with 5%
missing), 4 integers (one with 5% missing), 5 low-cardinality strings (one with 5% missing) and one
high-cardinality id; written once as Parquet and CSV (reference) plus a drifted Parquet (current).

Each task runs in its own fresh process, which reports its work time (from the first read of the
file to the finished result, imports excluded) and its peak RSS (``ru_maxrss``); the process's whole
wall time, imports included, is measured outside.

- moorage baseline: ``suggest_baseline`` (profile + constraints, files written) over CSV and Parquet;
- whylogs: ``why.log(pandas.read_parquet(reference)).view()``, its standard profile;
- moorage baseline + check: baseline of the reference, then the current data profiled and checked
  (SageMaker's checks and the per-feature drift tests);
- Evidently: ``Report([DataDriftPreset()]).run(current, reference)`` with both read from Parquet.

The peers are not project dependencies: each runs from its own ``bench/.envs/<name>`` virtualenv,
made with ``python3.11 -m venv`` and pip on first use (see ``bench/envs.py`` for the same pattern).
Target: the moorage baseline of 1,000,000 rows under 10 s and faster than both peers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ENVS = BENCH / ".envs"
RESULTS = BENCH / "results"

PEERS = {
    # Evidently 0.7 imports pandas internals that pandas 3 removed; whylogs needs pandas but does not require it
    "evidently": (["evidently==0.7.*", "pandas<3", "pyarrow"], "from evidently.presets import DataDriftPreset"),
    "whylogs": (["whylogs==1.6.*", "pandas<3", "pyarrow"], "import whylogs, pandas, pyarrow"),
}

# Each task is a script run with `python -c`; it prints one JSON line: work seconds and peak RSS.
_FOOTER = """
import json as _json, resource as _resource
_peak = _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + _json.dumps({"work_s": _work, "peak_rss_mb": _peak}))
"""

TASKS = {
    "moorage-baseline-csv": ("project", """
        import time
        from moorage.monitor import suggest_baseline
        start = time.perf_counter()
        suggest_baseline(DATA + "/reference.csv", OUT + "/csv", "csv", True)
        _work = time.perf_counter() - start
    """),
    "moorage-baseline-parquet": ("project", """
        import time
        from moorage.monitor import suggest_baseline
        start = time.perf_counter()
        suggest_baseline(DATA + "/reference.parquet", OUT + "/parquet", "parquet", True)
        _work = time.perf_counter() - start
    """),
    "moorage-baseline+check": ("project", """
        import time
        from moorage.monitor import Dataset, evaluate, profile_dataset, run_drift_tests, suggest_baseline
        start = time.perf_counter()
        baseline = suggest_baseline(DATA + "/reference.parquet", OUT + "/check-baseline", "parquet", True)
        current = profile_dataset(Dataset.open(DATA + "/current.parquet"))
        report = evaluate(current, baseline.statistics, baseline.constraints)
        verdict = run_drift_tests(current, baseline.statistics)
        _work = time.perf_counter() - start
        print("violations", len(report.violations), "drifted", verdict.drifted_features)
    """),
    "whylogs-profile": ("whylogs", """
        import time
        import pandas as pd
        import whylogs as why
        start = time.perf_counter()
        view = why.log(pd.read_parquet(DATA + "/reference.parquet")).view()
        view.to_pandas()
        _work = time.perf_counter() - start
    """),
    "evidently-drift": ("evidently", """
        import time
        import pandas as pd
        from evidently import Report
        from evidently.presets import DataDriftPreset
        start = time.perf_counter()
        reference = pd.read_parquet(DATA + "/reference.parquet")
        current = pd.read_parquet(DATA + "/current.parquet")
        snapshot = Report([DataDriftPreset()]).run(current, reference)
        snapshot.dict()
        _work = time.perf_counter() - start
    """),
}

# (task, the moorage task it is compared with)
COMPARISONS = {
    "moorage-baseline-csv": None,
    "moorage-baseline-parquet": None,
    "whylogs-profile": "moorage-baseline-parquet",
    "moorage-baseline+check": None,
    "evidently-drift": "moorage-baseline+check",
}


def make_data(rows: int, folder: Path) -> None:
    import numpy as np
    import pandas as pd

    def frame(seed: int, drift: bool) -> pd.DataFrame:
        rng = np.random.default_rng(seed)
        data: dict[str, object] = {}
        for i in range(4):
            data[f"normal_{i}"] = rng.normal(10 * i + (3 if drift and i == 0 else 0), 1 + i, rows)
        for i in range(3):
            data[f"lognormal_{i}"] = rng.lognormal(1 + i * 0.2, 0.5, rows)
        for i in range(3):
            data[f"uniform_{i}"] = rng.uniform(0, 100 * (i + 1), rows)
        for i in range(4):
            data[f"count_{i}"] = rng.poisson(2 + 3 * i, rows)
        for i in range(5):
            categories = [f"cat_{i}_{j}" for j in range(3 + 4 * i)]
            weights = np.linspace(1, 3, len(categories))
            if drift and i == 1:
                weights = weights[::-1]
            data[f"category_{i}"] = rng.choice(categories, rows, p=weights / weights.sum())
        data["user_id"] = np.char.add("u", rng.integers(0, 10**9, rows).astype(str))
        out = pd.DataFrame(data)
        for column in ("normal_1", "uniform_2", "count_3", "category_4"):
            out.loc[rng.random(rows) < 0.05, column] = None
        return out

    reference = frame(0, drift=False)
    reference.to_parquet(folder / "reference.parquet", index=False)
    reference.to_csv(folder / "reference.csv", index=False)
    frame(1, drift=True).to_parquet(folder / "current.parquet", index=False)


def ensure_peer(name: str) -> Path:
    """Make (or reuse) ``bench/.envs/<name>``; returns its python."""
    requirements, smoke = PEERS[name]
    root = ENVS / name
    python = root / "bin" / "python"
    marker = root / ".bench-installed.json"
    if python.exists() and marker.exists() and json.loads(marker.read_text()) == requirements:
        return python
    ENVS.mkdir(parents=True, exist_ok=True)
    log = ENVS / f"{name}-install.log"
    print(f"[env] building {root} ({' '.join(requirements)}); log: {log}", file=sys.stderr)
    if root.exists():
        shutil.rmtree(root)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    with open(log, "w") as out:
        for command in ([shutil.which("python3.11") or sys.executable, "-m", "venv", str(root)],
                        [str(python), "-m", "pip", "install", "--disable-pip-version-check", *requirements],
                        [str(python), "-c", smoke]):
            if subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env) != 0:
                raise RuntimeError(f"`{' '.join(command)}` failed; see {log}")
    marker.write_text(json.dumps(requirements))
    return python


def run_task(name: str, python: Path, data: Path, out: Path, timeout: float) -> dict[str, object]:
    _, body = TASKS[name]
    script = f"DATA = {str(data)!r}\nOUT = {str(out)!r}\n" + textwrap.dedent(body) + _FOOTER
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    start = time.perf_counter()
    try:
        done = subprocess.run([str(python), "-c", script], capture_output=True, text=True, timeout=timeout,
                              env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"task": name, "error": f"timed out after {timeout:.0f} s"}
    wall = time.perf_counter() - start
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        return {"task": name, "error": (done.stderr.strip().splitlines() or ["no output"])[-1][:200]}
    result = json.loads(lines[-1].removeprefix("RESULT "))
    notes = [line for line in done.stdout.splitlines() if not line.startswith("RESULT ")]
    return {"task": name, "process_s": wall, **result, "note": " ".join(notes)[:120]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-peers", action="store_true", help="Only moorage's tasks.")
    parser.add_argument("--timeout", type=float, default=900.0, help="Seconds one task may take.")
    parser.add_argument("--make-data", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_data is not None:
        make_data(args.rows, args.make_data)
        return 0

    pythons: dict[str, Path | None] = {"project": Path(sys.executable)}
    for peer in PEERS:
        try:
            pythons[peer] = None if args.skip_peers else ensure_peer(peer)
        except RuntimeError as exc:
            print(f"{peer}: {exc}", file=sys.stderr)
            pythons[peer] = None

    results = []
    with tempfile.TemporaryDirectory(prefix="moorage-bench-profiling-") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "out"
        data.mkdir()
        out.mkdir()
        started = time.perf_counter()
        # in a child process, so this one stays small: a child's ru_maxrss starts from its parent's
        subprocess.run([sys.executable, __file__, "--make-data", str(data), "--rows", str(args.rows)], check=True)
        print(f"data: {args.rows:,} rows x 20 columns in {time.perf_counter() - started:.1f} s "
              f"(csv {(data / 'reference.csv').stat().st_size / 1e6:.0f} MB, "
              f"parquet {(data / 'reference.parquet').stat().st_size / 1e6:.0f} MB)", file=sys.stderr)
        for name in COMPARISONS:
            python = pythons[TASKS[name][0]]
            if python is None:
                results.append({"task": name, "error": "skipped"})
                continue
            print(f"running {name} ...", file=sys.stderr)
            results.append(run_task(name, python, data, out, args.timeout))

    by_name = {r["task"]: r for r in results}
    print(f"\nprofiling {args.rows:,} rows x 20 columns (work: read + profile; process: with imports)")
    print(f"{'task':<26}{'work s':>9}{'process s':>11}{'peak RSS MB':>13}   {'vs moorage':<32}note")
    for name, against in COMPARISONS.items():
        row = by_name[name]
        if "error" in row:
            print(f"{name:<26}{'FAILED':>9}{'':>11}{'':>13}   {'':<32}{row['error']}")
            continue
        ratio = ""
        if against and "work_s" in by_name.get(against, {}):
            base = by_name[against]
            ratio = (f"{row['work_s'] / base['work_s']:.1f}x time, "
                     f"{row['peak_rss_mb'] / base['peak_rss_mb']:.1f}x memory")
        print(f"{name:<26}{row['work_s']:>9.2f}{row['process_s']:>11.2f}{row['peak_rss_mb']:>13.0f}   "
              f"{ratio:<32}{row.get('note', '')}")
    target = by_name.get("moorage-baseline-csv", {})
    if "work_s" in target:
        peers_ok = all(by_name[p].get("work_s", float("inf")) > by_name[a]["work_s"]
                       for p, a in COMPARISONS.items() if a and "work_s" in by_name.get(p, {}))
        print(f"\ntarget: baseline under 10 s -> {'met' if target['work_s'] < 10 else 'MISSED'} "
              f"({target['work_s']:.2f} s from CSV); faster than the peers that ran -> {'yes' if peers_ok else 'NO'}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"profiling-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"rows": args.rows, "results": results}, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
