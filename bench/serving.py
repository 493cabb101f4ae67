"""Serving benchmark: moorage against a raw-ASGI floor and two peer model servers, in one run.

    .venv/bin/python bench/serving.py                      # everything, 10 s per measured run
    .venv/bin/python bench/serving.py --servers a,b --models tabular --duration 5

Servers: (a) baseline raw ASGI app, (b) moorage (router + 1 instance, SigV4-signed requests),
(c) KServe, (d) MLServer; (c) and (d) live in their own virtualenvs under bench/.envs/, made on
first use. Every server process runs pinned to one core (default 0), wrk to another (default 1).
Each server's answer is checked against a local predict before it is loaded. The large-payload
models (image1mb, image5mb: raw 1 MiB / 5 MB bodies) also report MB/s. Then moorage serves each
other model with a shadow variant at 100% (a fast one, and one that sleeps 200 ms) beside no
shadow, in interleaved runs (shadow_overhead.py). Results print as tables and go to
bench/results/serving-<timestamp>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import psutil  # noqa: E402
from hotspots import format_profile, profile_run  # noqa: E402
from loadgen import HttpRequest, LoadgenError, WrkResult, ensure_wrk, run_wrk, wrk_version  # noqa: E402
from models import BUILDERS, BenchModel, build  # noqa: E402
from servers import SERVERS, Baseline, Moorage, MoorageWorkers, Server, Unavailable, http_call  # noqa: E402

PEERS = ("c", "d")
# moorage's targets against the floor (a), the fast-path issue's: p50 at concurrency 1 within +0.2 ms of
# (a), and throughput at concurrency 32 above (a)'s (moorage batches what arrives together; (a) calls
# predict once per request)
P50_BUDGET_MS = 0.2
RPS_FLOOR = 1.0
# ... except on the microsecond ONNX model, where (a) is little more than uvicorn itself and a request
# to moorage crosses two servers (router + instance) with SigV4 verification: p50 within +0.1 ms and
# at least half of (a)'s throughput
P50_BUDGET_BY_MODEL_MS = {"onnx": 0.1}
RPS_FLOOR_BY_MODEL = {"onnx": 0.5}
# large payloads (the image models' raw 1 MiB / 5 MB bodies): MB/s at concurrency 32 >= 0.7x (a);
# c=1 is reported beside it. The p50 budget does not apply: moving megabytes through two servers
# costs more than 0.5 ms by itself
MBPS_FLOOR = 0.7
# cluster mode (--ray: (r) against (b), same models, same run): the TCP link to a Ray actor's instance
RAY_P50_BUDGET_MS = 0.15  # p50 at concurrency 1 within +0.15 ms of local mode
RAY_RPS_FLOOR = 0.9  # throughput at concurrency 32 >= 0.9x local mode
# machine-wide CPU % (of all cores) under which the machine counts as quiet before a run
QUIET_PCT = 8.0
# a run during which other processes used more than this % of one core is marked in the table
BUSY_NOTE_PCT = 25.0
RETRIES = 2  # such a run is measured again, at most this many times


@dataclass
class Outcome:
    """What happened to one server on one model: measured runs, or why not."""

    server: str
    model: str
    runs: list[WrkResult] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _norm(values: list) -> list:
    out = []
    for v in values:
        try:
            out.append(float(v))
        except (TypeError, ValueError):
            out.append(str(v))
    return out


def verify(server: Server, model: BenchModel, request: HttpRequest) -> None:
    """Send the exact request wrk will replay; the answer must equal a local predict."""
    status, body = http_call(server.base_url(model) + request.path, request, timeout=30)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body[:300].decode(errors='replace')}")
    try:
        got = server.predictions(model, body)
    except Exception as exc:
        raise RuntimeError(f"undecodable answer {body[:200]!r}: {exc}") from exc
    if _norm(got) != _norm(model.expected):
        raise RuntimeError(f"wrong prediction {got!r}, local predict gives {model.expected!r}")


def wait_for_quiet(limit_s: float, threshold_pct: float = QUIET_PCT) -> float | None:
    """Wait until nothing else is using the CPU (another tenant's test run, say).

    Returns the seconds waited, or None if the machine never went quiet within ``limit_s``.
    """
    start = time.monotonic()
    said = False
    while True:
        busy = psutil.cpu_percent(interval=1.0)
        waited = time.monotonic() - start
        if busy < threshold_pct:
            return waited
        if waited >= limit_s:
            log(f"machine still busy ({busy:.0f}% CPU) after {waited:.0f}s; measuring anyway")
            return None
        if not said:
            log(f"machine busy ({busy:.0f}% CPU used by other processes); waiting up to {limit_s:.0f}s")
            said = True
        time.sleep(2.0)


def _busy_cpu_s() -> float:
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def _reaped_children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(server: Server, model: BenchModel, request: HttpRequest, conns: int, args) -> WrkResult:
    """A measured run; redone (up to RETRIES times) when other processes took a core's share during it."""
    for attempt in range(RETRIES + 1):
        run = measure_once(server, model, request, conns, args)
        if run.others_cpu_pct is None or run.others_cpu_pct <= BUSY_NOTE_PCT or attempt == RETRIES:
            return run
        log(f"  other processes used {run.others_cpu_pct:.0f}% of a core during the run; measuring again")
    raise AssertionError("unreachable")


def measure_once(server: Server, model: BenchModel, request: HttpRequest, conns: int, args) -> WrkResult:
    """One measured wrk run, with the server's CPU per request and the CPU others used meanwhile."""
    waited = wait_for_quiet(args.quiet_wait)
    load_before = os.getloadavg()[0]
    cpu_before, busy_before, wrk_before = server.cpu_snapshot(), _busy_cpu_s(), _reaped_children_cpu_s()
    run = run_wrk(server.base_url(model), request, conns, args.duration, cpu=args.client_cpu)
    cpu_after, busy_after, wrk_after = server.cpu_snapshot(), _busy_cpu_s(), _reaped_children_cpu_s()
    run.server_cpu = cpu_per_request(cpu_before, cpu_after, run.requests)
    server_s = run.server_cpu["total_ms"] * run.requests / 1000
    # machine-wide busy time not spent by the server or wrk (includes loopback softirq, a few %)
    others = (busy_after - busy_before) - server_s - (wrk_after - wrk_before)
    run.others_cpu_pct = round(max(0.0, 100.0 * others / run.duration_s), 1)
    run.loadavg = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    run.quiet_wait_s = None if waited is None else round(waited, 1)
    return run


def cpu_per_request(before: dict, after: dict, requests: int) -> dict:
    """Server CPU milliseconds per request over a run, in all and per process."""
    per = {}
    for pid, (label, secs) in after.items():
        per[label] = (secs - before.get(pid, (label, 0.0))[1]) * 1000 / max(requests, 1)
    return {"total_ms": round(sum(per.values()), 4), "by_process_ms": {k: round(v, 4) for k, v in per.items()}}


def profile_model(server: Server, model: BenchModel, request: HttpRequest, info: dict, args) -> None:
    """An extra (unreported) run at the highest concurrency with py-spy on every server process."""
    conns = max(args.concurrency)
    log(f"({server.key}) {server.name}/{model.name}: profiling with py-spy at c={conns}")
    profiles = info.setdefault("profiles", {})
    try:
        prof = profile_run(
            server, server.base_url(model), request, conns, args.duration,
            args.profile_dir / f"{server.name}-{model.name}", args.client_cpu,
        )  # fmt: skip
    except Exception as exc:
        profiles[model.name] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"profiling failed: {exc}")
        return
    profiles[model.name] = prof
    for line in format_profile(server.name, model.name, prof):
        print(line, flush=True)


def bench_server(server: Server, models: list[BenchModel], args) -> tuple[dict, list[Outcome]]:
    info: dict = {"name": server.name, "detail": server.detail, "status": "ok"}
    outcomes: list[Outcome] = []
    served = []
    for model in models:
        reason = server.supports(model)
        if reason:
            outcomes.append(Outcome(server.key, model.name, skipped=reason))
        else:
            served.append(model)
    if not served:
        return info, outcomes
    try:
        log(f"({server.key}) {server.name}: preparing")
        server.prepare()
        info["versions"] = server.versions()
        log(f"({server.key}) {server.name}: starting with {', '.join(m.name for m in served)}")
        t0 = time.monotonic()
        server.start(served)
        info["start_s"] = round(time.monotonic() - t0, 2)
    except Unavailable as exc:
        server.stop()
        info.update(status="unavailable", reason=str(exc))
        log(f"({server.key}) {server.name}: UNAVAILABLE: {exc}")
        return info, outcomes + [Outcome(server.key, m.name, error=str(exc)) for m in served]
    except Exception as exc:
        server.stop()
        info.update(status="unavailable", reason=f"{type(exc).__name__}: {exc}")
        log(f"({server.key}) {server.name}: UNAVAILABLE: {info['reason']}")
        return info, outcomes + [Outcome(server.key, m.name, error=info["reason"]) for m in served]
    try:
        for model in served:
            outcome = Outcome(server.key, model.name)
            outcomes.append(outcome)
            try:
                request = server.request(model)
                verify(server, model, request)
            except Exception as exc:
                outcome.error = f"check failed: {exc}"[:400]
                log(f"({server.key}) {server.name}/{model.name}: {outcome.error}")
                continue
            info["affinity"] = {str(pid): cpus for pid, cpus in server.affinity().items()}
            pinned = sorted(int(c) for c in str(args.server_cpu).split(",")) if args.server_cpu is not None else []
            stray = {pid: cpus for pid, cpus in info["affinity"].items() if sorted(cpus) != pinned}
            if stray and args.server_cpu is not None:
                log(f"({server.key}) WARNING: processes not pinned to core {args.server_cpu}: {stray}")
            for conns in args.concurrency:
                try:
                    if args.warmup > 0:
                        run_wrk(server.base_url(model), request, conns, args.warmup, cpu=args.client_cpu)
                    repeats = [measure(server, model, request, conns, args) for _ in range(args.repeat)]
                    # with --repeat N, report the run with the median throughput; the JSON keeps all
                    result = sorted(repeats, key=lambda r: r.rps)[len(repeats) // 2]
                    if len(repeats) > 1:
                        result.repeats = [r.as_dict() for r in repeats]
                except LoadgenError as exc:
                    outcome.error = str(exc)
                    break
                outcome.runs.append(result)
                errs = f" ERRORS {result.errors}" if result.errors else ""
                log(
                    f"({server.key}) {server.name}/{model.name} c={conns}: {result.rps:8.1f} req/s "
                    f"p50 {result.p50_ms:.3f} ms p99 {result.p99_ms:.3f} ms{errs}"
                )
            if not server.processes() or not all(p.alive() for p in server.procs):
                outcome.error = "server died during the run"
                continue
            try:  # still right after the load (and, for moorage, the signature still accepted)
                verify(server, model, request)
            except Exception as exc:
                outcome.error = f"check after load failed: {exc}"[:400]
                log(f"({server.key}) {server.name}/{model.name}: {outcome.error}")
                continue
            if server.key in args.profile and outcome.runs:
                profile_model(server, model, request, info, args)
        info["processes"] = len(server.processes())
    finally:
        server.stop()
    return info, outcomes


# -- report -------------------------------------------------------------------------------------


def _short(reason: str | None, width: int = 150) -> str:
    """The table gets the gist (the last traceback line); the JSON keeps the whole reason."""
    reason = reason or ""
    parts = [p.strip() for p in reason.split(" | ") if p.strip()]
    if len(parts) > 1:
        reason = f"{parts[0].split(':')[0]}: ... {parts[-1]}"
    return reason if len(reason) <= width else reason[: width - 3] + "..."


def _fmt_table(model: BenchModel, outcomes: list[Outcome], names: dict[str, str]) -> list[str]:
    base = {r.connections: r for o in outcomes if o.server == "a" for r in o.runs}
    cost = f"{model.predict_us:.1f} us" if model.predict_us < 100 else f"{model.predict_us / 1000:.3f} ms"
    # large-payload models get an MB/s column (request bodies: req/s x body size; x(a) is then the
    # MB/s ratio too, the bodies being the same)
    mb = f" {'MB/s':>8}" if model.is_binary else ""
    lines = [
        f"model {model.name}: {model.description} (local predict {cost})",
        f"{'server':<14} {'conc':>4} {'req/s':>9}{mb} {'p50 ms':>8} {'p99 ms':>8} {'x(a) req/s':>10} "
        f"{'p50-(a) ms':>10} {'cpu ms/req':>10}  note",
    ]
    for o in outcomes:
        label = f"({o.server}) {names[o.server]}"
        if o.skipped or (o.error and not o.runs):
            lines.append(f"{label:<14} {'-':>4} {'n/a' if o.skipped else 'FAILED':>9}  {_short(o.skipped or o.error)}")
            continue
        for r in o.runs:
            b = base.get(r.connections)
            ratio = f"{r.rps / b.rps:.2f}x" if b and b.rps else "-"
            diff = f"{r.p50_ms - b.p50_ms:+.3f}" if b else "-"
            notes = [f"errors {r.errors}"] if r.errors else []
            if r.others_cpu_pct is not None and r.others_cpu_pct > BUSY_NOTE_PCT:
                notes.append(f"others used {r.others_cpu_pct:.0f}% of a core")
            note = "; ".join(notes)
            cpu = f"{r.server_cpu['total_ms']:.3f}" if r.server_cpu else "-"
            mbps = f" {r.rps * model.body_mb:>8.1f}" if model.is_binary else ""
            lines.append(
                f"{label:<14} {r.connections:>4} {r.rps:>9.1f}{mbps} {r.p50_ms:>8.3f} {r.p99_ms:>8.3f} "
                f"{ratio:>10} {diff:>10} {cpu:>10}  {note}"
            )
        if o.error:
            lines.append(f"{label:<14} {'':>4} {'':>9}  {_short(o.error)}")
    return lines


def moorage_check(model: BenchModel, outcomes: list[Outcome]) -> dict | None:
    runs = {(o.server, r.connections): r for o in outcomes for r in o.runs if not r.errors}
    a1, b1, a32, b32 = runs.get(("a", 1)), runs.get(("b", 1)), runs.get(("a", 32)), runs.get(("b", 32))
    if not any(o.server == "b" for o in outcomes):
        return None
    check: dict = {"model": model.name}
    if model.is_binary:
        return _mbps_check(model, check, {1: (a1, b1), 32: (a32, b32)})
    if a1 and b1:
        d = b1.p50_ms - a1.p50_ms
        budget = P50_BUDGET_BY_MODEL_MS.get(model.name, P50_BUDGET_MS)
        check["p50_c1"] = {
            "moorage_ms": b1.p50_ms,
            "baseline_ms": a1.p50_ms,
            "diff_ms": round(d, 3),
            "target_ms": budget,
            "pass": d <= budget,
        }
    if a32 and b32:
        ratio = b32.rps / a32.rps if a32.rps else 0.0
        floor = RPS_FLOOR_BY_MODEL.get(model.name, RPS_FLOOR)
        check["rps_c32"] = {
            "moorage": round(b32.rps, 1),
            "baseline": round(a32.rps, 1),
            "ratio": round(ratio, 3),
            "target": floor,
            "pass": ratio >= floor,
        }
    return check


def _mbps_check(model: BenchModel, check: dict, pairs: dict) -> dict:
    """Large payloads: MB/s against (a), the target at c=32 (c=1 reported beside it)."""
    check["body_bytes"] = len(model.body or b"")
    for conns, (a, b) in pairs.items():
        if not (a and b):
            continue
        ratio = b.rps / a.rps if a.rps else 0.0
        row = {
            "moorage_mbps": round(b.rps * model.body_mb, 1),
            "baseline_mbps": round(a.rps * model.body_mb, 1),
            "ratio": round(ratio, 3),
            "target": MBPS_FLOOR,
        }
        if conns == 32:
            row["pass"] = ratio >= MBPS_FLOOR
        check[f"mbps_c{conns}"] = row
    return check


def ray_check(model: BenchModel, outcomes: list[Outcome]) -> dict | None:
    """Cluster mode (r) against local mode (b), measured in the same run."""
    runs = {(o.server, r.connections): r for o in outcomes for r in o.runs if not r.errors}
    b1, r1, b32, r32 = runs.get(("b", 1)), runs.get(("r", 1)), runs.get(("b", 32)), runs.get(("r", 32))
    if not (r1 or r32):
        return None
    check: dict = {"model": model.name}
    if b1 and r1:
        d = r1.p50_ms - b1.p50_ms
        check["p50_c1"] = {"ray_ms": r1.p50_ms, "local_ms": b1.p50_ms, "diff_ms": round(d, 3),
                           "target_ms": RAY_P50_BUDGET_MS, "pass": d <= RAY_P50_BUDGET_MS}
    if b32 and r32:
        ratio = r32.rps / b32.rps if b32.rps else 0.0
        check["rps_c32"] = {"ray": round(r32.rps, 1), "local": round(b32.rps, 1), "ratio": round(ratio, 3),
                            "target": RAY_RPS_FLOOR, "pass": ratio >= RAY_RPS_FLOOR}
    return check


def _fmt_ray_check(check: dict) -> str:
    parts = []
    if "p50_c1" in check:
        c = check["p50_c1"]
        parts.append(f"c=1 p50 {c['diff_ms']:+.3f} ms vs local (target <= +{c['target_ms']} ms: "
                     f"{'PASS' if c['pass'] else 'FAIL'})")
    if "rps_c32" in check:
        c = check["rps_c32"]
        verdict = "PASS" if c["pass"] else "FAIL"
        parts.append(f"c=32 {c['ratio']:.2f}x local req/s (target >= {c['target']}x: {verdict})")
    return "cluster mode (r) vs local (b): " + "; ".join(parts)


def _fmt_check(check: dict) -> str:
    parts = []
    if "body_bytes" in check:  # large payloads: MB/s
        for conns in (1, 32):
            c = check.get(f"mbps_c{conns}")
            if c is None:
                parts.append(f"MB/s@{conns} not measured")
                continue
            verdict = (" PASS" if c["pass"] else " FAIL") if "pass" in c else " (reported)"
            parts.append(
                f"MB/s@{conns} {c['moorage_mbps']:.1f} vs (a) {c['baseline_mbps']:.1f} = {c['ratio']:.2f}x"
                + (f" (target >= {c['target']}x){verdict}" if "pass" in c else verdict)
            )
        return f"check moorage [{check['model']}]: " + "; ".join(parts)
    if "p50_c1" in check:
        c = check["p50_c1"]
        parts.append(
            f"p50@1 {c['moorage_ms']:.3f} ms vs (a) {c['baseline_ms']:.3f} ms = {c['diff_ms']:+.3f} ms "
            f"(target <= +{c['target_ms']}) {'PASS' if c['pass'] else 'FAIL'}"
        )
    else:
        parts.append("p50@1 not measured")
    if "rps_c32" in check:
        c = check["rps_c32"]
        parts.append(
            f"req/s@32 {c['moorage']:.0f} vs (a) {c['baseline']:.0f} = {c['ratio']:.2f}x "
            f"(target >= {c['target']}x) {'PASS' if c['pass'] else 'FAIL'}"
        )
    else:
        parts.append("req/s@32 not measured")
    return f"check moorage [{check['model']}]: " + "; ".join(parts)


def host_info() -> dict:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "machine": platform.machine(),
    }


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default 10)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up before each measured run")
    p.add_argument("--servers", default="a,b,c,d",
                   help="subset of a,b,w,c,d (a=baseline b=moorage w=moorage+workers c=kserve d=mlserver)")
    p.add_argument("--models", default=",".join(BUILDERS), help=f"subset of {','.join(BUILDERS)} (default: all)")
    p.add_argument("--skip-peers", action="store_true", help="leave out (c) KServe and (d) MLServer")
    p.add_argument("--ray", action="store_true",
                   help="also (r): moorage in cluster mode, its instance a Ray actor on a Ray node started here")
    p.add_argument("--concurrency", default="1,32", help="wrk connections per run, comma-separated")
    p.add_argument("--server-cpu", default="0",
                   help="core(s) every server process is pinned to, as taskset takes them (0, or 0,1)")
    p.add_argument("--client-cpu", default="1", help="core(s) wrk is pinned to")
    p.add_argument("--router-workers", type=int, default=2,
                   help="(w) moorage+workers: its MOORAGE_ROUTER_WORKERS")
    p.add_argument("--baseline-workers", type=int, default=1,
                   help="(a) baseline: processes sharing its port (for runs on several cores)")
    p.add_argument("--repeat", type=int, default=1, help="measured runs per point; the median is reported")
    p.add_argument(
        "--quiet-wait", type=float, default=120.0,
        help="before each point, wait up to this many seconds for other processes to leave the CPU",
    )  # fmt: skip
    p.add_argument("--profile", default="", help="servers to profile with py-spy after measuring, e.g. b")
    p.add_argument("--no-pin", action="store_true", help="do not pin (for machines with one core)")
    p.add_argument("--out", type=Path, default=None, help="JSON results path (default bench/results/...)")
    p.add_argument("--workdir", type=Path, default=None, help="keep models/logs here (default: temp dir)")
    p.add_argument("--shadow-repeat", type=int, default=6,
                   help="interleaved runs per shadow arm (moorage with no shadow, a fast and a 200 ms shadow at "
                        "100%%; shadow_overhead.py); 0 leaves them out")
    p.add_argument("--shadow-duration", type=float, default=3.0, help="seconds per shadow-arm run")
    p.add_argument("--routing", default="", help="(b) with two variants of the model and this moorage:routing "
                                                  "policy (thompson, ucb1, epsilon-greedy, weights)")
    args = p.parse_args(argv)
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    bad = [s for s in args.servers if s not in SERVERS]
    if bad:
        p.error(f"unknown server(s) {bad}; choose from {','.join(SERVERS)}")
    if args.skip_peers:
        args.servers = [s for s in args.servers if s not in PEERS]
    if args.ray and "r" not in args.servers:
        at = args.servers.index("b") + 1 if "b" in args.servers else len(args.servers)
        args.servers.insert(at, "r")
    args.profile = [s.strip() for s in args.profile.split(",") if s.strip()]
    return split_common_args(args)


def split_common_args(args: argparse.Namespace) -> argparse.Namespace:
    """The options every serving-style bench shares: --models and --concurrency lists, --no-pin."""
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.no_pin:
        args.server_cpu = args.client_cpu = None
    return args


def paired_estimate(values: list[float], level: float = 0.9, resamples: int = 4000) -> dict:
    """The median of per-pair values (each run next to the other arm's run beside it, so the
    machine's drift cancels within a pair) and a bootstrap interval for it: on a shared VM whose
    speed wanders by tens of percent between seconds, one median alone says little."""
    import random
    import statistics

    if not values:
        return {"median": None, "low": None, "high": None, "pairs": 0}
    draw = random.Random(20240607)
    medians = sorted(statistics.median(draw.choices(values, k=len(values))) for _ in range(resamples))
    tail = (1 - level) / 2
    return {"median": statistics.median(values), "low": medians[int(tail * resamples)],
            "high": medians[min(resamples - 1, int((1 - tail) * resamples))], "pairs": len(values), "level": level}


def _exit_on_signal(signum, frame) -> None:
    # SystemExit unwinds through the `finally` blocks that stop the servers under test
    raise SystemExit(128 + signum)


def bench_start() -> str | None:
    """What every serving-style bench does first: stop cleanly on SIGTERM/SIGHUP (the servers under
    test are stopped by the `finally` blocks) and find wrk; None (after saying why) when there is none."""
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    try:
        return ensure_wrk()
    except LoadgenError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (wrk := bench_start()) is None:
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.profile_dir = BENCH / "results" / f"profile-{stamp}"
    tmp = None
    if args.workdir:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="moorage-bench-")
        workdir = Path(tmp.name)
    try:
        log(f"training models {args.models} in {workdir}")
        models = build(args.models, workdir / "models")
        for m in models:
            log(f"  {m.name}: local predict {m.predict_us:.0f} us, expected {m.expected}")
        servers_info: dict[str, dict] = {}
        outcomes: list[Outcome] = []
        for key in args.servers:
            server = SERVERS[key](workdir / f"server-{key}", cpu=args.server_cpu)
            if isinstance(server, MoorageWorkers):
                server.workers = args.router_workers
            if isinstance(server, Baseline):
                server.workers = args.baseline_workers
            if args.routing and isinstance(server, Moorage):
                server.routing = args.routing
            info, outs = bench_server(server, models, args)
            servers_info[key] = info
            outcomes += outs
        shadow_rows: list[dict] = []
        # the shadow stage (and its target) is about the small-request models; large payloads are not in it
        shadowed = [m for m in models if not m.is_binary]
        if "b" in args.servers and args.shadow_repeat > 0 and shadowed:
            from shadow_overhead import shadow_rows as measure_shadows  # imports this module: not at the top

            log("shadow variants: moorage with no shadow, a fast one and a 200 ms one at 100%, interleaved")
            shadow_rows = measure_shadows(shadowed, workdir, argparse.Namespace(
                **{**vars(args), "duration": args.shadow_duration, "repeat": args.shadow_repeat,
                   "warmup": min(args.warmup, 2.0)}))
    finally:
        if tmp is not None:
            tmp.cleanup()

    names = {k: SERVERS[k].name for k in SERVERS}
    report: list[str] = [
        f"serving bench {stamp}: {args.duration:g}s measured (+{args.warmup:g}s warm-up) per run, "
        f"wrk {wrk_version(wrk)} -t1 on core {args.client_cpu}, servers on core {args.server_cpu}"
    ]
    checks = []
    for model in models:
        mine = [o for o in outcomes if o.model == model.name]
        report.append("")
        report += _fmt_table(model, mine, names)
        check = moorage_check(model, mine)
        if check:
            checks.append(check)
            report.append(_fmt_check(check))
        cluster = ray_check(model, mine)
        if cluster:
            checks.append({"cluster_mode": cluster})
            report.append(_fmt_ray_check(cluster))
    if shadow_rows:
        from shadow_overhead import shadow_table

        lines, _ = shadow_table(shadow_rows)
        report += ["", f"moorage with a shadow variant at 100% ({args.shadow_duration:g}s x {args.shadow_repeat} "
                       f"interleaved runs per arm; each arm against the no-shadow run beside it)", *lines]
    print("\n" + "\n".join(report))

    by_name = {m.name: m for m in models}
    out = args.out or BENCH / "results" / f"serving-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "timestamp": stamp,
        "settings": {
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "repeat": args.repeat,
            "quiet_wait_s": args.quiet_wait,
            "concurrency": args.concurrency,
            "server_cpu": args.server_cpu,
            "client_cpu": args.client_cpu,
            "wrk": wrk_version(wrk),
            "servers": args.servers,
            "models": args.models,
        },
        "host": host_info(),
        "models": [
            {
                "name": m.name,
                "description": m.description,
                "runtime": m.runtime,
                "predict_us": round(m.predict_us, 1),
                "record": m.record,
                "body_bytes": len(m.body) if m.is_binary else None,
                "expected": m.expected,
            }
            for m in models
        ],
        "servers": servers_info,
        "results": [
            {
                "server": o.server,
                "server_name": names[o.server],
                "model": o.model,
                "error": o.error,
                "skipped": o.skipped,
                "runs": [
                    {
                        **r.as_dict(),
                        **({"mbps": round(r.rps * by_name[o.model].body_mb, 2)} if by_name[o.model].is_binary else {}),
                    }
                    for r in o.runs
                ],
            }
            for o in outcomes
        ],
        "moorage_checks": checks,
        "shadow": shadow_rows,
        "report": report,
    }
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
