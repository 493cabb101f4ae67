"""Data-capture overhead: one moorage server, the same model behind two endpoints, capture off vs 100 %.

    .venv/bin/python bench/capture_overhead.py                          # tabular + onnx, c=1 and c=32
    .venv/bin/python bench/capture_overhead.py --models onnx --concurrency 32 --repeat 5 --duration 8

Both endpoints live in the same `moorage serve` (pinned to one core, wrk on another), so they share
the process, the machine and the moment: ``bench-<model>-off`` has no DataCaptureConfig,
``bench-<model>-on`` captures 100 % of its traffic (Input and Output) to a local folder. The measured
runs are interleaved (off, on, on, off, off, on, ...), so drift in the machine's speed hits both arms
alike; each arm's median run by req/s is reported, with its p50/p99 and the server's CPU per request.
Target: capture at 100 % costs under 5 % of throughput. After the runs the bench stops the server
(SIGTERM) and checks that every invocation of the capturing endpoint is in its capture files (and
none was dropped), so the "on" numbers are for capture that really kept up. Results print as a
table and go to bench/results/capture-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import HttpRequest, LoadgenError, WrkResult, ensure_wrk, run_wrk, wrk_version  # noqa: E402
from models import BUILDERS, BenchModel, build  # noqa: E402
from servers import Moorage  # noqa: E402
from serving import _exit_on_signal, host_info, log, measure, split_common_args, verify  # noqa: E402

TARGET_LOSS = 0.05  # capture at 100 % may cost at most 5 % of the throughput without it
ARMS = ("off", "on")


class CapturingMoorage(Moorage):
    """moorage with each model deployed twice: without capture and with capture at 100 %."""

    detail = "router + 1 instance per endpoint; endpoint -off without capture, -on with DataCaptureConfig 100%"

    def __init__(self, workdir: Path, cpu: int | None = 0):
        super().__init__(workdir, cpu)
        self.capture_dir = workdir / "capture"
        self.arm = "off"

    def _deploy(self, client, model: BenchModel) -> None:
        container = {"Image": model.runtime, "ModelDataUrl": model.tarball.resolve().as_uri()}
        if model.environment:
            container["Environment"] = dict(model.environment)
        for arm in ARMS:
            name = self.endpoint_name(model, arm)
            client.create_model(ModelName=name, PrimaryContainer=container)
            extra = {}
            if arm == "on":
                extra["DataCaptureConfig"] = {
                    "EnableCapture": True, "InitialSamplingPercentage": 100,
                    "DestinationS3Uri": self.capture_dir.resolve().as_uri(),
                    "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}],
                    "CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"],
                                                 "JsonContentTypes": ["application/json"]},
                }
            client.create_endpoint_config(
                EndpointConfigName=name,
                ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                                     "InstanceType": "ml.m5.large"}],
                **extra,
            )
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

    def captured_lines(self, model: BenchModel) -> int:
        root = self.capture_dir / self.endpoint_name(model, "on")
        return sum(p.read_bytes().count(b"\n") for p in root.rglob("*.jsonl"))


def order(repeat: int) -> list[str]:
    """off, on, on, off, off, on, ...: each arm goes first as often as the other."""
    out: list[str] = []
    for i in range(repeat):
        out += list(ARMS) if i % 2 == 0 else list(reversed(ARMS))
    return out


def median(runs: list[WrkResult]) -> WrkResult:
    return sorted(runs, key=lambda r: r.rps)[len(runs) // 2]


def median_router_us(runs: list[WrkResult]) -> float:
    """The router process's CPU microseconds per request (where all of capture's work happens)."""
    values = sorted(sum(ms for label, ms in (r.server_cpu or {}).get("by_process_ms", {}).items()
                        if label.startswith("moorage serve")) * 1000 for r in runs)
    return values[len(values) // 2] if values else 0.0


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tabular,onnx", help=f"subset of {','.join(BUILDERS)}")
    p.add_argument("--concurrency", default="1,32", help="wrk connections per run, comma-separated")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per arm before its runs")
    p.add_argument("--repeat", type=int, default=5, help="measured runs per arm and point (interleaved)")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="wait up to this long for a quiet machine")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    return split_common_args(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        wrk = ensure_wrk()
    except LoadgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict] = []
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="moorage-capture-bench-") as tmp:
        workdir = Path(tmp)
        log(f"training models {args.models} in {workdir}")
        models = build(args.models, workdir / "models")
        server = CapturingMoorage(workdir / "server", cpu=args.server_cpu)
        server.prepare()
        log("starting moorage with two endpoints per model (capture off / on)")
        server.start(models)
        invocations_on = {m.name: 0 for m in models}
        try:
            for model in models:
                requests = {arm: server.request_for(model, arm) for arm in ARMS}
                for arm in ARMS:
                    verify(server, model, requests[arm])
                invocations_on[model.name] += 1
                for conns in args.concurrency:
                    if args.warmup > 0:
                        for arm in ARMS:
                            warm = run_wrk(server.base_url(model), requests[arm], conns, args.warmup,
                                           cpu=args.client_cpu)
                            if arm == "on":
                                invocations_on[model.name] += warm.requests
                    runs: dict[str, list[WrkResult]] = {arm: [] for arm in ARMS}
                    for arm in order(args.repeat):
                        run = measure(server, model, requests[arm], conns, args)
                        runs[arm].append(run)
                        if arm == "on":
                            invocations_on[model.name] += run.requests
                        errs = f" ERRORS {run.errors}" if run.errors else ""
                        log(f"{model.name} c={conns} capture {arm:>3}: {run.rps:8.1f} req/s p50 {run.p50_ms:.3f} ms "
                            f"p99 {run.p99_ms:.3f} ms cpu {run.server_cpu['total_ms']:.3f} ms/req{errs}")
                    off, on = median(runs["off"]), median(runs["on"])
                    loss = 1 - on.rps / off.rps if off.rps else 1.0
                    # Each off run next to the on run measured right after (or before) it: the machine's
                    # drift cancels within a pair, so the median pair is the steadier estimate.
                    pairs = sorted(1 - b.rps / a.rps for a, b in zip(runs["off"], runs["on"], strict=True) if a.rps)
                    paired = pairs[len(pairs) // 2] if pairs else 1.0
                    results.append({"model": model.name, "connections": conns, "loss": round(loss, 4),
                                    "paired_loss": round(paired, 4),
                                    "router_us": {arm: round(median_router_us(runs[arm]), 2) for arm in ARMS},
                                    "pass": paired < TARGET_LOSS,
                                    "off": off.as_dict(), "on": on.as_dict(),
                                    "runs": {arm: [r.as_dict() for r in rs] for arm, rs in runs.items()}})
                for arm in ARMS:
                    verify(server, model, requests[arm])
                invocations_on[model.name] += 1
        finally:
            server.stop()  # SIGTERM: the capture writer writes what is queued before the server exits
        log_text = (server.workdir / "logs" / "moorage.log").read_text(errors="replace")
        for model in models:
            written = server.captured_lines(model)
            counts = re.search(rf"data capture of {re.escape(server.endpoint_name(model, 'on'))}/AllTraffic: "
                               r"captured (\d+), dropped (\d+), written (\d+), failed (\d+)", log_text)
            summary[model.name] = {
                "invocations": invocations_on[model.name], "lines_on_disk": written,
                "writer": dict(zip(("captured", "dropped", "written", "failed"),
                                   (int(g) for g in counts.groups()), strict=True)) if counts else None,
            }
            writer = summary[model.name]["writer"]
            # wrk does not count requests still in flight when a run ends, so disk may hold a few more
            summary[model.name]["complete"] = bool(
                writer and writer["dropped"] == 0 and writer["failed"] == 0 and writer["written"] == written
                and written >= invocations_on[model.name])

    lines = [f"capture overhead {stamp}: {args.duration:g}s x {args.repeat} interleaved runs per arm, "
             f"wrk {wrk_version(wrk)} -t1 on core {args.client_cpu}, moorage on core {args.server_cpu}",
             f"{'model':<8} {'conc':>4} {'off req/s':>10} {'on req/s':>10} {'loss':>7} {'paired':>7} {'off p50':>8} "
             f"{'on p50':>8} {'off p99':>8} {'on p99':>8} {'router us off':>13} {'on':>6}  target (paired loss)"]
    for r in results:
        off, on = r["off"], r["on"]
        lines.append(
            f"{r['model']:<8} {r['connections']:>4} {off['rps']:>10.1f} {on['rps']:>10.1f} {r['loss'] * 100:>6.2f}% "
            f"{r['paired_loss'] * 100:>6.2f}% {off['p50_ms']:>8.3f} {on['p50_ms']:>8.3f} {off['p99_ms']:>8.3f} "
            f"{on['p99_ms']:>8.3f} {r['router_us']['off']:>13.1f} {r['router_us']['on']:>6.1f}  "
            f"<{TARGET_LOSS * 100:.0f}% {'PASS' if r['pass'] else 'FAIL'}")
    lines.append("(req/s and p50/p99 ms: each arm's median run; loss: of those medians; paired: median over adjacent "
                 "off/on runs; router us: the router process's CPU microseconds per request, median)")
    for name, s in summary.items():
        lines.append(f"{name}: at least {s['invocations']} invocations of the capturing endpoint (wrk's counts of the "
                     f"reported runs), {s['lines_on_disk']} records "
                     f"on disk ({'all' if s['complete'] else 'INCOMPLETE'}); writer counters {s['writer']}")
    print("\n" + "\n".join(lines))
    out = args.out or BENCH / "results" / f"capture-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"timestamp": stamp, "settings": {k: str(v) for k, v in vars(args).items()},
                               "host": host_info(), "results": results, "capture": summary, "report": lines},
                              indent=2))
    print(f"\nresults: {out}")
    return 0 if all(r["pass"] for r in results) and all(s["complete"] for s in summary.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
