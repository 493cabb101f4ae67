"""Shadow-variant overhead: production's latency and throughput with a shadow at 100 % beside none.

    .venv/bin/python bench/shadow_overhead.py                       # tabular + onnx, c=1 and c=32
    .venv/bin/python bench/shadow_overhead.py --models onnx --repeat 10 --duration 2

``make bench`` (bench/serving.py) runs the same arms after its own tables (``--shadow-repeat``,
``--shadow-duration``; 0 repeats to leave them out); this script runs them alone.

One moorage server (pinned to one core, wrk on another) serves each model behind three endpoints:
``-off`` without a shadow, ``-fast`` with the same model as a shadow at 100 % (every request copied,
the copies as quick as production), ``-slow`` with a shadow at 100 % that sleeps 200 ms per request
(it falls behind at once: its queue fills and copies are dropped and counted). The runs are short
and interleaved (off, fast, slow, slow, fast, off, ...), and each shadow arm is compared with the
adjacent ``-off`` run: the median pair difference of production's p50 at c=1 and the median pair
loss of throughput at c=32, with bootstrap 90 % intervals. Target (issue 12): production's p50
within +0.2 ms of no shadow, for both shadows. Results print as a table and go to
bench/results/shadow-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from capture_overhead import median  # noqa: E402
from loadgen import HttpRequest, WrkResult, run_wrk, wrk_version  # noqa: E402
from models import BUILDERS, BenchModel, build  # noqa: E402
from servers import Moorage  # noqa: E402
from serving import (  # noqa: E402
    bench_start,
    host_info,
    log,
    measure,
    paired_estimate,
    split_common_args,
    verify,
)

P50_BUDGET_MS = 0.2
ARMS = ("off", "fast", "slow")
SLOW_SHADOW = b'''
import time


def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    time.sleep(0.2)
    return "0", "text/csv"
'''


def slow_shadow_archive(path: Path) -> Path:
    """A model whose every answer takes 200 ms: the shadow that cannot keep up."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("code/inference.py")
        info.size = len(SLOW_SHADOW)
        tar.addfile(info, io.BytesIO(SLOW_SHADOW))
    return path


class ShadowedMoorage(Moorage):
    """moorage with each model behind three endpoints: no shadow, a fast shadow, a slow shadow."""

    detail = "router + 1 production instance per endpoint; -fast/-slow add a shadow variant at 100%"

    def __init__(self, workdir: Path, cpu: int | None = 0):
        super().__init__(workdir, cpu)
        self.arm = ARMS[0]
        workdir.mkdir(parents=True, exist_ok=True)
        self.slow = slow_shadow_archive(workdir / "slow-shadow.tar.gz")

    def _deploy(self, client, model: BenchModel) -> None:
        container = {"Image": model.runtime, "ModelDataUrl": model.tarball.resolve().as_uri()}
        if model.environment:
            container["Environment"] = dict(model.environment)
        slow = {"Image": "sklearn", "ModelDataUrl": self.slow.resolve().as_uri()}
        for arm in ARMS:
            name = self.endpoint_name(model, arm)
            client.create_model(ModelName=name, PrimaryContainer=container)
            variant = {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                       "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0}
            extra = {}
            if arm != "off":
                client.create_model(ModelName=f"{name}-shadow", PrimaryContainer=container if arm == "fast" else slow)
                extra["ShadowProductionVariants"] = [dict(variant, VariantName="Shadow", ModelName=f"{name}-shadow")]
            client.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[variant], **extra)
            client.create_endpoint(EndpointName=name, EndpointConfigName=name)
        for arm in ARMS:
            client.get_waiter("endpoint_in_service").wait(EndpointName=self.endpoint_name(model, arm),
                                                          WaiterConfig={"Delay": 1, "MaxAttempts": 180})

    @staticmethod
    def endpoint_name(model: BenchModel, arm: str) -> str:
        return f"bench-{model.name}-{arm}"

    def endpoint(self, model: BenchModel) -> str:  # what Moorage.request signs: the current arm's endpoint
        return self.endpoint_name(model, self.arm)

    def request_for(self, model: BenchModel, arm: str) -> HttpRequest:
        self.arm = arm
        return self.request(model)


def order(repeat: int) -> list[str]:
    """off, fast, slow, slow, fast, off, ...: each arm in each position as often as the others."""
    out: list[str] = []
    for i in range(repeat):
        out += list(ARMS) if i % 2 == 0 else list(reversed(ARMS))
    return out


def compare(runs: dict[str, list[WrkResult]], arm: str) -> dict:
    """Against the -off run of the same round: p50 difference (ms) and throughput loss."""
    pairs = list(zip(runs["off"], runs[arm], strict=True))
    return {"p50_extra_ms": paired_estimate([b.p50_ms - a.p50_ms for a, b in pairs]),
            "loss": paired_estimate([1 - b.rps / a.rps for a, b in pairs if a.rps])}


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tabular,onnx", help=f"subset of {','.join(BUILDERS)}")
    p.add_argument("--concurrency", default="1,32", help="wrk connections per run, comma-separated")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured run (whole seconds)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of warm-up per arm before its runs")
    p.add_argument("--repeat", type=int, default=8, help="measured runs per arm and point (interleaved)")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="wait up to this long for a quiet machine")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    return split_common_args(p.parse_args(argv))


def shadow_rows(models: list[BenchModel], workdir: Path, args) -> list[dict]:
    """Every model behind the three arms, interleaved runs per connection count: one row per arm.
    ``args``: duration, warmup, repeat, concurrency, quiet_wait, server_cpu, client_cpu (serving.py's
    names, so serving.py runs this for ``make bench`` too)."""
    rows: list[dict] = []
    server = ShadowedMoorage(workdir / "shadow-server", cpu=args.server_cpu)
    try:
        server.prepare()
        server.start(models)
        for model in models:
            requests = {arm: server.request_for(model, arm) for arm in ARMS}
            for arm in ARMS:
                verify(server, model, requests[arm])
            for conns in args.concurrency:
                for arm in ARMS:
                    if args.warmup > 0:
                        run_wrk(server.base_url(model), requests[arm], conns, args.warmup, cpu=args.client_cpu)
                runs: dict[str, list[WrkResult]] = {arm: [] for arm in ARMS}
                for arm in order(args.repeat):
                    runs[arm].append(measure(server, model, requests[arm], conns, args))
                    run = runs[arm][-1]
                    log(f"{model.name} c={conns} {arm:>4}: {run.rps:8.1f} req/s p50 {run.p50_ms:.3f} ms")
                for arm in ARMS:
                    best = median(runs[arm])
                    row = {"model": model.name, "connections": conns, "arm": arm, "rps": round(best.rps, 1),
                           "p50_ms": round(best.p50_ms, 3), "p99_ms": round(best.p99_ms, 3),
                           "errors": sum(r.error_count for r in runs[arm])}
                    if arm != "off":
                        row["vs_off"] = compare(runs, arm)
                    rows.append(row)
    finally:
        server.stop()
    return rows


def shadow_table(rows: list[dict]) -> tuple[list[str], bool]:
    """The rows as a table, and whether the target is met."""
    lines = [f"{'model':8} {'conc':>4} {'shadow':>6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'p50 vs off (90% CI)':>26} {'loss vs off (90% CI)':>26}"]
    verdicts = []
    for row in rows:
        extra = row.get("vs_off")
        p50 = loss = ""
        if extra:
            e, lo = extra["p50_extra_ms"], extra["loss"]
            p50 = f"{e['median']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
            loss = f"{lo['median']:+.1%} [{lo['low']:+.1%}, {lo['high']:+.1%}]"
            if row["connections"] == 1:
                ok = e["median"] <= P50_BUDGET_MS
                verdicts.append(ok)
                p50 += " PASS" if ok else " FAIL"
        lines.append(f"{row['model']:8} {row['connections']:>4} {row['arm']:>6} {row['rps']:>9.1f} "
                     f"{row['p50_ms']:>8.3f} {row['p99_ms']:>8.3f} {p50:>26} {loss:>26}"
                     + (f"  ERRORS {row['errors']}" if row["errors"] else ""))
    passed = bool(verdicts) and all(verdicts)
    lines.append(f"target: production's p50 at c=1 within +{P50_BUDGET_MS} ms of no shadow, for both shadows: "
                 + ("PASS" if passed else "FAIL"))
    return lines, passed


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (wrk := bench_start()) is None:
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="moorage-shadow-bench-") as tmp:
        workdir = Path(tmp)
        rows = shadow_rows(build(args.models, workdir / "models"), workdir, args)
    print(f"\nshadow bench {stamp}: {args.duration:g}s x {args.repeat} interleaved runs per arm, "
          f"wrk {wrk_version(wrk)} on core {args.client_cpu}, server on core {args.server_cpu}")
    lines, passed = shadow_table(rows)
    print("\n".join(lines))
    out = args.out or BENCH / "results" / f"shadow-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"host": host_info(), "args": {k: str(v) for k, v in vars(args).items()},
                               "rows": rows}, indent=1))
    print(f"results: {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
