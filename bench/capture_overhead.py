"""Data-capture overhead: one moorage server, the same model behind two endpoints, capture off vs 100 %.

    .venv/bin/python bench/capture_overhead.py                          # tabular + onnx, c=32, 20 x 3 s pairs
    .venv/bin/python bench/capture_overhead.py --models onnx --concurrency 1,32 --repeat 30 --duration 2
    .venv/bin/python bench/capture_overhead.py --simultaneous      # both arms at once, one server each
    .venv/bin/python bench/capture_overhead.py --control       # control: both endpoints without capture

Both endpoints live in the same `moorage serve` (pinned to one core, wrk on another), so they share
the process, the machine and the moment: ``bench-<model>-off`` has no DataCaptureConfig,
``bench-<model>-on`` captures 100 % of its traffic (Input and Output) to a local folder. The measured
runs are short and interleaved (off, on, on, off, off, on, ...): this VM's speed wanders by tens of
percent from one minute to the next, so the estimate is the median over adjacent off/on pairs, with
a bootstrap 90 % interval, and the same for the server's CPU per request (router process, writer
thread included, and instance separately). Each arm's median run is also shown. ``--control`` deploys
both endpoints without capture: the loss it reports is the bench's own noise and bias.
``--simultaneous`` measures differently: one server per arm, both pinned to the same core and each
in its own session (so the kernel's autogroup scheduling gives each half of the core while both are
busy), loaded at the same moment by two wrk processes. Each round compares the arms over the very
same seconds, so the machine's drift cancels exactly and the interval is several times narrower;
the price is that each server runs on half a core, where its CPU per request is higher.
Target: capture at 100 % costs under 5 % of throughput (median pair). After the runs the bench stops the server
(SIGTERM) and checks that every invocation of the capturing endpoint is in its capture files (and
none was dropped), so the "on" numbers are for capture that really kept up. Results print as a
table and go to bench/results/capture-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import HttpRequest, WrkResult, run_wrk, wrk_version  # noqa: E402
from models import BUILDERS, BenchModel, build  # noqa: E402
from servers import Moorage  # noqa: E402
from serving import (  # noqa: E402
    bench_start,
    cpu_per_request,
    host_info,
    log,
    measure,
    paired_estimate,
    split_common_args,
    verify,
    wait_for_quiet,
)

TARGET_LOSS = 0.05  # capture at 100 % may cost at most 5 % of the throughput without it
ARMS = ("off", "on")


class CapturingMoorage(Moorage):
    """moorage with each model deployed twice: without capture and with capture at 100 %."""

    detail = "router + 1 instance per endpoint; endpoint -off without capture, -on with DataCaptureConfig 100%"

    def __init__(self, workdir: Path, cpu: int | None = 0, control: bool = False, arms: tuple[str, ...] = ARMS):
        super().__init__(workdir, cpu)
        self.capture_dir = workdir / "capture"
        self.arm = arms[0]
        self.arms = arms  # the endpoints this server deploys
        self.control = control  # A/A: the "on" endpoint does not capture either

    def _deploy(self, client, model: BenchModel) -> None:
        container = {"Image": model.runtime, "ModelDataUrl": model.tarball.resolve().as_uri()}
        if model.environment:
            container["Environment"] = dict(model.environment)
        for arm in self.arms:
            name = self.endpoint_name(model, arm)
            client.create_model(ModelName=name, PrimaryContainer=container)
            extra = {}
            if arm == "on" and not self.control:
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
        for arm in self.arms:
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


def process_us(run: WrkResult, prefix: str) -> float:
    """CPU microseconds per request of the server's processes whose label starts with ``prefix``."""
    return sum(ms for label, ms in (run.server_cpu or {}).get("by_process_ms", {}).items()
               if label.startswith(prefix)) * 1000


ROUTER = "moorage serve"  # the router process: all of capture's work, its writer thread included
INSTANCE = "moorage.runtimes.server"  # the model instances, whose work capture does not change


def median_router_us(runs: list[WrkResult]) -> float:
    values = sorted(process_us(r, ROUTER) for r in runs)
    return values[len(values) // 2] if values else 0.0


def paired(runs: dict[str, list[WrkResult]]) -> dict:
    """Per adjacent off/on pair: throughput loss, and the extra CPU per request of router and instance."""
    pairs = list(zip(runs["off"], runs["on"], strict=True))
    loss = [1 - on.rps / off.rps for off, on in pairs if off.rps]
    router = [process_us(on, ROUTER) - process_us(off, ROUTER) for off, on in pairs]
    instance = [process_us(on, INSTANCE) - process_us(off, INSTANCE) for off, on in pairs]
    return {"loss": paired_estimate(loss), "router_extra_us": paired_estimate(router),
            "instance_extra_us": paired_estimate(instance), "losses": [round(x, 4) for x in loss]}


def interleaved_runs(servers: dict[str, CapturingMoorage], model: BenchModel, requests: dict[str, HttpRequest],
                     conns: int, args) -> dict[str, list[WrkResult]]:
    """One server, both endpoints: off and on runs one after the other, alternating which goes first."""
    runs: dict[str, list[WrkResult]] = {arm: [] for arm in ARMS}
    for arm in order(args.repeat):
        runs[arm].append(measure(servers[arm], model, requests[arm], conns, args))
        _log_run(model, conns, arm, runs[arm][-1])
    return runs


def simultaneous_runs(servers: dict[str, CapturingMoorage], model: BenchModel, requests: dict[str, HttpRequest],
                      conns: int, args) -> dict[str, list[WrkResult]]:
    """Two servers on the same core, each in its own session (the kernel's autogroup scheduling gives
    each half the core while both are busy), loaded at the same moment by two wrk processes: each
    round compares the arms over the same seconds, so the machine's drift cancels exactly."""
    runs: dict[str, list[WrkResult]] = {arm: [] for arm in ARMS}
    for _ in range(args.repeat):
        wait_for_quiet(args.quiet_wait)
        before = {arm: servers[arm].cpu_snapshot() for arm in ARMS}
        done: dict[str, WrkResult] = {}
        threads = [threading.Thread(target=_load, args=(done, servers[arm], model, requests[arm], arm, conns, args))
                   for arm in ARMS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for arm in ARMS:
            run = done[arm]
            run.server_cpu = cpu_per_request(before[arm], servers[arm].cpu_snapshot(), run.requests)
            runs[arm].append(run)
            _log_run(model, conns, arm, run)
    return runs


def _load(done: dict[str, WrkResult], server: CapturingMoorage, model: BenchModel, request: HttpRequest, arm: str,
          conns: int, args) -> None:
    done[arm] = run_wrk(server.base_url(model), request, conns, args.duration, cpu=args.client_cpu)


def _log_run(model: BenchModel, conns: int, arm: str, run: WrkResult) -> None:
    errs = f" ERRORS {run.errors}" if run.errors else ""
    log(f"{model.name} c={conns} capture {arm:>3}: {run.rps:8.1f} req/s p50 {run.p50_ms:.3f} ms "
        f"p99 {run.p99_ms:.3f} ms cpu {run.server_cpu['total_ms']:.3f} ms/req{errs}")


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="tabular,onnx", help=f"subset of {','.join(BUILDERS)}")
    p.add_argument("--concurrency", default="32", help="wrk connections per run, comma-separated")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured run (whole seconds)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per arm before its runs")
    p.add_argument("--repeat", type=int, default=20, help="measured runs per arm and point (interleaved)")
    p.add_argument("--control", action="store_true",
                   help="A/A check: the 'on' endpoint does not capture either (any 'loss' is the method's own)")
    p.add_argument("--simultaneous", action="store_true",
                   help="one server per arm, both loaded at once on the same core (see simultaneous_runs)")
    p.add_argument("--quiet-wait", type=float, default=60.0, help="wait up to this long for a quiet machine")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    return split_common_args(args)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (wrk := bench_start()) is None:
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results: list[dict] = []
    summary: dict = {}
    with tempfile.TemporaryDirectory(prefix="moorage-capture-bench-") as tmp:
        workdir = Path(tmp)
        log(f"training models {args.models} in {workdir}")
        models = build(args.models, workdir / "models")
        if args.simultaneous:
            servers = {arm: CapturingMoorage(workdir / f"server-{arm}", cpu=args.server_cpu, control=args.control,
                                             arms=(arm,)) for arm in ARMS}
        else:
            both = CapturingMoorage(workdir / "server", cpu=args.server_cpu, control=args.control)
            servers = dict.fromkeys(ARMS, both)
        distinct = list({id(s): s for s in servers.values()}.values())
        invocations_on = {m.name: 0 for m in models}
        try:
            for server in distinct:
                server.prepare()
                log(f"starting moorage with endpoint(s) {', '.join(server.arms)} per model")
                server.start(models)
            for model in models:
                requests = {arm: servers[arm].request_for(model, arm) for arm in ARMS}
                for arm in ARMS:
                    verify(servers[arm], model, requests[arm])
                invocations_on[model.name] += 1
                for conns in args.concurrency:
                    if args.warmup > 0:
                        for arm in ARMS:
                            warm = run_wrk(servers[arm].base_url(model), requests[arm], conns, args.warmup,
                                           cpu=args.client_cpu)
                            if arm == "on":
                                invocations_on[model.name] += warm.requests
                    measure_runs = simultaneous_runs if args.simultaneous else interleaved_runs
                    runs = measure_runs(servers, model, requests, conns, args)
                    invocations_on[model.name] += sum(r.requests for r in runs["on"])
                    off, on = median(runs["off"]), median(runs["on"])
                    loss = 1 - on.rps / off.rps if off.rps else 1.0
                    pairs = paired(runs)
                    results.append({"model": model.name, "connections": conns, "loss": round(loss, 4),
                                    "paired": pairs,
                                    "router_us": {arm: round(median_router_us(runs[arm]), 2) for arm in ARMS},
                                    "pass": pairs["loss"]["median"] < TARGET_LOSS,
                                    "off": off.as_dict(), "on": on.as_dict(),
                                    "runs": {arm: [r.as_dict() for r in rs] for arm, rs in runs.items()}})
                for arm in ARMS:
                    verify(servers[arm], model, requests[arm])
                invocations_on[model.name] += 1
        finally:
            for server in distinct:
                server.stop()  # SIGTERM: the capture writer writes what is queued before the server exits
        capturing = servers["on"]
        log_text = (capturing.workdir / "logs" / "moorage.log").read_text(errors="replace")
        for model in models if not args.control else ():  # the control captures nothing to check
            written = capturing.captured_lines(model)
            counts = re.search(rf"data capture of {re.escape(capturing.endpoint_name(model, 'on'))}/AllTraffic: "
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

    kind = "A/A control (no capture on either endpoint)" if args.control else "capture off vs 100%"
    how = ("simultaneous rounds, one server per arm, both on" if args.simultaneous
           else "interleaved runs per arm, one server with both endpoints on")
    lines = [f"capture overhead {stamp}, {kind}: {args.duration:g}s x {args.repeat} {how} core {args.server_cpu}, "
             f"wrk {wrk_version(wrk)} -t1 on core {args.client_cpu}",
             f"{'model':<8} {'conc':>4} {'off req/s':>10} {'on req/s':>10} {'loss':>7} {'pair loss [90% CI]':>24} "
             f"{'router +us [90% CI]':>21} {'instance +us':>13} {'off p50':>8} {'on p50':>8}  target (pair loss)"]

    def interval(e: dict, scale: float, unit: str, digits: int) -> str:
        return (f"{e['median'] * scale:+.{digits}f}{unit} [{e['low'] * scale:+.{digits}f}, "
                f"{e['high'] * scale:+.{digits}f}]")

    for r in results:
        off, on, pairs = r["off"], r["on"], r["paired"]
        lines.append(
            f"{r['model']:<8} {r['connections']:>4} {off['rps']:>10.1f} {on['rps']:>10.1f} {r['loss'] * 100:>6.2f}% "
            f"{interval(pairs['loss'], 100, '%', 2):>24} {interval(pairs['router_extra_us'], 1, '', 1):>21} "
            f"{pairs['instance_extra_us']['median']:>+13.1f} {off['p50_ms']:>8.3f} {on['p50_ms']:>8.3f}  "
            f"<{TARGET_LOSS * 100:.0f}% {'PASS' if r['pass'] else 'FAIL'}")
    lines.append("(req/s, p50 ms: each arm's median run; loss: of those medians; pair loss: median over "
                 + ("simultaneous off/on rounds" if args.simultaneous else "adjacent off/on runs")
                 + ", with a bootstrap 90% interval; router/instance +us: median extra CPU microseconds per request "
                 "over the same pairs)")
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
