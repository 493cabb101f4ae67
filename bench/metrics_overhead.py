"""Metrics overhead: moorage's throughput with invocation metrics recorded vs. not, in one run.

    .venv/bin/python bench/metrics_overhead.py                       # onnx model, c=32, 12 x 6 s pairs
    .venv/bin/python bench/metrics_overhead.py --models onnx,tabular --repeat 7 --duration 8

Two `moorage serve` processes run side by side, each with one instance of the same model, both
pinned to the same core (wrk on another): one as shipped (metrics on, ``--metrics-period`` seconds
per datapoint: the flushes to the store happen inside the measured runs), one with
``MOORAGE_METRICS=off`` (no recorder, no sampler: the runtime builds no invocation events at all).
Measured runs alternate between them (ABBA order, so drift in the machine's speed hits both alike),
each after a short warm-up; the idle server costs nothing meanwhile. Reported: the median req/s of
each, the loss (1 - on/off) from the medians and from each adjacent pair, p50 latency, and server
CPU per request. The target is a loss under 3%. Results also go to bench/results/metrics-<stamp>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import WrkResult, run_wrk, wrk_version  # noqa: E402
from models import BUILDERS, BenchModel, build  # noqa: E402
from servers import Moorage, Unavailable  # noqa: E402
from serving import bench_start, host_info, log, split_common_args, verify  # noqa: E402
from serving import measure as measure_point  # noqa: E402

TARGET_LOSS = 0.03


@contextmanager
def environment(**values: str):
    """Set variables for a server about to start (servers.py copies os.environ when it spawns)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def start(label: str, workdir: Path, models: list[BenchModel], cpu: int | None, env: dict[str, str]) -> Moorage:
    server = Moorage(workdir / label, cpu=cpu)
    server.prepare()
    log(f"starting moorage ({label}: {' '.join(f'{k}={v}' for k, v in env.items())})")
    with environment(**env):
        server.start(models)
    return server


def measure(server: Moorage, model: BenchModel, conns: int, args: argparse.Namespace) -> WrkResult:
    """Warm-up, then serving.py's measured run: after a quiet machine, with the server's CPU per
    request, and measured again (up to twice) when other processes took a core's quarter meanwhile."""
    request = server.request(model)  # signed now: a signature is valid for 15 minutes
    if args.warmup > 0:
        run_wrk(server.base_url(model), request, conns, args.warmup, cpu=args.client_cpu)
    return measure_point(server, model, request, conns, args)


def bench_model(model: BenchModel, servers: dict[str, Moorage], args: argparse.Namespace) -> dict:
    for label, server in servers.items():
        verify(server, model, server.request(model))
        log(f"{label}: answer checked")
    results: dict[int, dict[str, list[WrkResult]]] = {}
    for conns in args.concurrency:
        runs: dict[str, list[WrkResult]] = {"on": [], "off": []}
        for i in range(args.repeat):
            order = ("on", "off") if i % 2 == 0 else ("off", "on")
            for label in order:
                run = measure(servers[label], model, conns, args)
                errs = f" ERRORS {run.errors}" if run.error_count else ""
                log(f"{model.name} c={conns} #{i + 1} metrics {label:>3}: {run.rps:9.1f} req/s "
                    f"p50 {run.p50_ms:.3f} ms, server {run.server_cpu['total_ms']:.4f} ms CPU/req, "
                    f"others {run.others_cpu_pct:.0f}% of a core{errs}")
                runs[label].append(run)
        results[conns] = runs
    return {"model": model.name, "runs": results}


def summarize(outcome: dict) -> tuple[list[str], list[dict]]:
    lines, rows = [], []
    for conns, runs in outcome["runs"].items():
        on, off = runs["on"], runs["off"]
        on_rps = statistics.median(r.rps for r in on)
        off_rps = statistics.median(r.rps for r in off)
        pair_losses = [1 - a.rps / b.rps for a, b in zip(on, off, strict=True) if b.rps]
        loss = 1 - on_rps / off_rps if off_rps else float("nan")
        # Interference from other processes only ever slows a run down: the best runs estimate each
        # server undisturbed.
        best_loss = 1 - max(r.rps for r in on) / max(r.rps for r in off)
        cpu_on = statistics.median(r.server_cpu["total_ms"] for r in on)
        cpu_off = statistics.median(r.server_cpu["total_ms"] for r in off)
        # Server CPU per request is what recording adds to; under other load it is steadier than req/s.
        cpu_pairs = [a.server_cpu["total_ms"] / b.server_cpu["total_ms"] - 1 for a, b in zip(on, off, strict=True)
                     if b.server_cpu["total_ms"]]
        # The instance process runs the same code for both servers, so its CPU per request measures how
        # fast the (shared, virtual) machine was during a run; the router's CPU in units of it does not
        # drift with that speed. Extra router CPU x instance CPU, over the whole server's: the loss.
        ratio_on = statistics.median(_router_per_instance(r) for r in on)
        ratio_off = statistics.median(_router_per_instance(r) for r in off)
        instance_ms = statistics.median(_process_ms(r, INSTANCE) for r in on + off)
        extra_ms = (ratio_on - ratio_off) * instance_ms
        normalized_loss = extra_ms / (cpu_off + extra_ms) if cpu_off + extra_ms else float("nan")
        row = {
            "model": outcome["model"], "connections": conns, "rps_on": round(on_rps, 1), "rps_off": round(off_rps, 1),
            "loss": round(loss, 4), "best_loss": round(best_loss, 4),
            "pair_loss_median": round(statistics.median(pair_losses), 4),
            "pair_losses": [round(x, 4) for x in pair_losses],
            "p50_ms_on": round(statistics.median(r.p50_ms for r in on), 3),
            "p50_ms_off": round(statistics.median(r.p50_ms for r in off), 3),
            "cpu_ms_per_request_on": round(cpu_on, 4), "cpu_ms_per_request_off": round(cpu_off, 4),
            "cpu_overhead_pair_median": round(statistics.median(cpu_pairs), 4) if cpu_pairs else None,
            "router_ms_per_instance_ms_on": round(ratio_on, 4), "router_ms_per_instance_ms_off": round(ratio_off, 4),
            "router_extra_us_per_request": round(extra_ms * 1000, 2), "normalized_loss": round(normalized_loss, 4),
            "errors": sum(r.error_count for r in on + off), "pass": loss < TARGET_LOSS,
        }
        rows.append(row)
        lines.append(
            f"{outcome['model']:<8} {conns:>4} {off_rps:>10.1f} {on_rps:>10.1f} {100 * loss:>+7.2f}% "
            f"{100 * row['pair_loss_median']:>+8.2f}% {100 * best_loss:>+8.2f}% {row['p50_ms_off']:>9.3f} "
            f"{row['p50_ms_on']:>8.3f} "
            f"{cpu_off:>9.4f} {cpu_on:>8.4f} {100 * (row['cpu_overhead_pair_median'] or 0):>+8.2f}% "
            f"{extra_ms * 1000:>+9.2f} {100 * normalized_loss:>+8.2f}%  "
            f"{'PASS' if row['pass'] else 'FAIL'}"
            + (f"  errors {row['errors']}" if row["errors"] else ""))
    return lines, rows


ROUTER, INSTANCE = "moorage serve", "moorage.runtimes.server"


def _process_ms(run: WrkResult, label: str) -> float:
    assert run.server_cpu is not None
    return sum(ms for name, ms in run.server_cpu["by_process_ms"].items() if name.startswith(label))


def _router_per_instance(run: WrkResult) -> float:
    return _process_ms(run, ROUTER) / _process_ms(run, INSTANCE)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="onnx", help=f"subset of {','.join(BUILDERS)} (default onnx: the fastest "
                   "model, where the router's own cost weighs most)")
    p.add_argument("--concurrency", default="32", help="wrk connections, comma-separated (default 32)")
    p.add_argument("--repeat", type=int, default=12, help="measured runs per server and point (default 12)")
    p.add_argument("--duration", type=float, default=6.0, help="seconds per measured run (default 6)")
    p.add_argument("--warmup", type=float, default=1.5, help="seconds of warm-up before each measured run")
    p.add_argument("--metrics-period", default="60",
                   help="MOORAGE_METRICS_PERIOD of the metrics-on server (default 60 s, as shipped; a shorter one puts "
                        "more flushes inside the measured runs)")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true", help="do not pin (machines with one core)")
    p.add_argument("--quiet-wait", type=float, default=90.0, help="wait up to this long for an idle machine per run")
    p.add_argument("--control", action="store_true",
                   help="A/A check: both servers with metrics off (any 'loss' is then the method's own bias/noise)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    return split_common_args(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (wrk := bench_start()) is None:
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="moorage-metrics-bench-") as tmp:
        workdir = Path(tmp)
        log(f"training models {args.models}")
        models = build(args.models, workdir / "models")
        servers: dict[str, Moorage] = {}
        try:
            servers["on"] = start("on", workdir, models, args.server_cpu,
                                  {"MOORAGE_METRICS": "off" if args.control else "on",
                                   "MOORAGE_METRICS_PERIOD": args.metrics_period})
            servers["off"] = start("off", workdir, models, args.server_cpu, {"MOORAGE_METRICS": "off"})
            for model in models:
                outcomes.append(bench_model(model, servers, args))
        except Unavailable as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        finally:
            for server in servers.values():
                server.stop()
    header = (f"metrics overhead {stamp}: {args.repeat} ABBA-interleaved {args.duration:g} s runs per server "
              f"(+{args.warmup:g} s warm-up), wrk {wrk_version(wrk)} on core {args.client_cpu}, servers on core "
              f"{args.server_cpu}, metrics period {args.metrics_period} s"
              + (" -- CONTROL RUN: both servers have metrics off" if args.control else ""))
    lines = [header, "",
             f"{'model':<8} {'conc':>4} {'off req/s':>10} {'on req/s':>10} {'loss':>8} {'pair loss':>9} "
             f"{'best loss':>9} "
             f"{'p50 off':>9} {'p50 on':>8} {'cpu off':>9} {'cpu on':>8} {'cpu +':>9} {'router us':>9} "
             f"{'norm loss':>9}",
             f"(loss = 1 - on/off req/s of the medians, target < {TARGET_LOSS:.0%}; pair loss: median over adjacent "
             "on/off runs; best loss: of the fastest runs; cpu = server ms per request, cpu +: median extra CPU "
             "per request over pairs; router us: extra router CPU per request, in units of the instance's CPU per "
             "request (machine-speed drift cancels); norm loss: the throughput loss that extra CPU means)"]
    rows = []
    for outcome in outcomes:
        more, found = summarize(outcome)
        lines += more
        rows += found
    print("\n" + "\n".join(lines))
    out = args.out or BENCH / "results" / f"metrics-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "timestamp": stamp, "host": host_info(), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                            for k, v in vars(args).items()},
        "summary": rows, "report": lines,
        "runs": [{"model": o["model"], "connections": c, "server": label, **r.as_dict()}
                 for o in outcomes for c, runs in o["runs"].items() for label, rs in runs.items() for r in rs],
    }, indent=2))
    print(f"\nresults: {out}")
    return 0 if all(r["pass"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
