"""Multi-model endpoint bench: 200 models behind one endpoint, Zipf traffic, a budget for 10 % of them.

    .venv/bin/python bench/multimodel.py                        # the defaults (~8 minutes on 2 cores)
    .venv/bin/python bench/multimodel.py --requests 5000 --repeat 6 --duration 3
    .venv/bin/python bench/multimodel.py --models 50 --requests 300 --repeat 2 --cold 8   # a quick look

One ``moorage serve`` (pinned to core 0 with everything it starts; this client and wrk on core 1)
serves, in one run:

- ``bench-mme``: a multi-model endpoint (``Mode: MultiModel``) over a prefix of ``--models`` archives
  ``m000.tar.gz`` ... ``m199.tar.gz``, each a ``code/inference.py`` whose ``transform_fn`` returns the
  model's name (so what is measured is the platform, not a model). Its budget
  (``MOORAGE_MODEL_CACHE_BYTES``) is ``--cache-models`` (20, 10 % of 200) and a half times the
  per-model size measured first (the half so that 20 fit although measured sizes differ by some
  KiB): a probe multi-model endpoint with a large budget loads 3 of the archives, the models route
  (``GET /moorage/v1/endpoints/NAME/models``) gives each one's ``SizeBytes``, and the median is the
  per-model size; the probe is then deleted.
- ``bench-single``: the same handler in one archive behind an ordinary endpoint (one instance).

Then:

1. Warm path (wrk): ``bench-mme`` with one hot ``TargetModel`` (``m000.tar.gz``; the
   ``X-Amzn-SageMaker-Target-Model`` header is signed with the request wrk replays) against
   ``bench-single``, at each ``--concurrency``, in interleaved runs (A, B, B, A, A, B, ...) so the
   shared machine's drift cancels within a pair; reported: each arm's median run, the median of the
   pairs' p50 differences with a bootstrap 90 % interval, and the pairs' median throughput ratio.
2. Cold loads (a Python client: one keep-alive ``http.client`` connection, SigV4 per request with
   botocore, the HTTP call timed): the first call of ``--cold`` models that are not loaded, one
   after the other; the models route after each tells whether the load had to evict (the host is
   full) or found room.
3. The Zipf mix: ``--requests`` targets drawn with popularity ~ 1 / rank^s (``--zipf-s`` 1.1; rank 1 =
   ``m000``), sent by the same client in order, one at a time, so the server's LRU sees exactly this
   sequence. Reported: requests/s, latency, the server's hit rate (the host's ``Hits``/``Requests``
   deltas) and the hit rate of an ideal LRU simulated on the same sequence, starting from the
   cache's contents before the run (the models route lists them least recently used first), with a
   capacity of the most models the host held during the run (the models route polled every
   ``--poll`` s by a second connection; the median is reported too: a poll often falls between an
   eviction and the load it makes room for). The requests the simulated LRU calls hits give the
   mix's warm latency.
4. Warm requests only, from the same client, in interleaved rounds: ``bench-single``; ``bench-mme``
   with one target; ``bench-mme`` cycling through every model it holds (all hits, each on another
   model process, as the mix's hits are). The multi-model endpoint's misses meanwhile are counted
   (they must be 0).

Targets (the issue): warm-path p50 at c=1 within +0.3 ms of the one-model endpoint; the hit rate
within 5 points of the simulated LRU's. Results print as a table and go to
bench/results/multimodel-<timestamp>.json. See bench/README.md.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import random
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import HttpRequest, WrkResult, run_wrk, wrk_version  # noqa: E402
from servers import Moorage  # noqa: E402
from serving import bench_start, host_info, log, measure, paired_estimate  # noqa: E402

P50_BUDGET_MS = 0.3  # warm-path p50 at c=1 within +0.3 ms of the one-model endpoint
HIT_RATE_POINTS = 5.0  # the hit rate within 5 points of an ideal LRU on the same sequence
PROBE_MODELS = 3  # models the probe endpoint loads to measure a model's size
PROBE_BUDGET = 8 * 1024**3  # the probe endpoint's budget: room for all of them
MME, SINGLE, PROBE = "bench-mme", "bench-single", "bench-mme-probe"
TARGET_HEADER = "X-Amzn-SageMaker-Target-Model"
BODY = b"hi"

HANDLER = b'''
import os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "name.txt")) as fh:
        return fh.read().strip()


def transform_fn(name, body, content_type, accept):
    return name, "text/csv"
'''


def archive(path: Path, name: str) -> Path:
    """A model archive: ``name.txt`` and the handler that answers every request with that name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for member, data in (("name.txt", name.encode()), ("code/inference.py", HANDLER)):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def model_name(rank: int) -> str:
    return f"m{rank:03d}"


def zipf_sequence(models: int, s: float, n: int, seed: int) -> list[int]:
    """``n`` model ranks (0 = the most popular) with P(rank k) ~ 1 / (k + 1)^s."""
    weights = [1.0 / (k + 1) ** s for k in range(models)]
    return random.Random(seed).choices(range(models), weights=weights, k=n)


def simulate_lru(sequence: list[str], capacity: int, initial: list[str]) -> int:
    """Hits of an ideal LRU cache of ``capacity`` models over ``sequence``, starting with ``initial``
    (least recently used first)."""
    cache: OrderedDict[str, None] = OrderedDict((key, None) for key in initial[-capacity:] if capacity > 0)
    hits = 0
    for key in sequence:
        if key in cache:
            hits += 1
            cache.move_to_end(key)
            continue
        cache[key] = None
        if len(cache) > capacity:
            cache.popitem(last=False)
    return hits


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank) of ``values``; None for none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))]


class MultiModelMoorage(Moorage):
    """moorage serving the multi-model endpoint, its probe and the one-model endpoint."""

    detail = "router + one instance process per loaded model (multi-model) / one instance (one-model)"

    def start(self, models: list) -> None:  # deploys nothing itself: see deploy()
        super().start([])
        import boto3

        self.sm = boto3.client("sagemaker", endpoint_url=self.base_url(None), region_name=self.region,
                               aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)

    def base_url(self, model: Any) -> str:
        return f"http://127.0.0.1:{self.port}"

    def deploy(self, name: str, container: dict[str, Any], wait: bool = True) -> None:
        self.sm.create_model(ModelName=name, PrimaryContainer=container)
        self.sm.create_endpoint_config(EndpointConfigName=name, ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
             "InstanceType": "ml.m5.large"}])
        self.sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
        if wait:
            self.wait(name)

    def wait(self, name: str) -> None:
        self.sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 180})

    def signed(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None) -> HttpRequest:
        """One SigV4-signed request (as Moorage.request signs, with any extra header signed too)."""
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials

        aws = AWSRequest(method=method, url=self.base_url(None) + path, data=body, headers=dict(headers or {}))
        SigV4Auth(Credentials(self.access_key, self.secret_key), "sagemaker", self.region).add_auth(aws)
        return HttpRequest(path, body, dict(aws.headers.items()), method=method)

    def invocation(self, endpoint: str, target: str | None = None) -> HttpRequest:
        headers = {"Content-Type": "text/csv", "Accept": "text/csv"}
        if target is not None:
            headers[TARGET_HEADER] = target
        return self.signed("POST", f"/endpoints/{endpoint}/invocations", BODY, headers)


class Client:
    """One keep-alive connection; each request signed just before it is sent, the HTTP call timed."""

    def __init__(self, server: MultiModelMoorage, timeout: float = 300.0):
        self.server = server
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def send(self, request: HttpRequest) -> tuple[int, bytes, float]:
        for attempt in (0, 1):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=self.timeout)
            began = time.perf_counter()
            try:
                self.conn.request(request.method, request.path, body=request.body or None, headers=request.headers)
                reply = self.conn.getresponse()
                data = reply.read()
            except (http.client.HTTPException, ConnectionError):
                self.close()
                if attempt:
                    raise
                continue
            return reply.status, data, time.perf_counter() - began
        raise AssertionError("unreachable")

    def invoke(self, endpoint: str, target: str | None = None) -> tuple[int, bytes, float]:
        return self.send(self.server.invocation(endpoint, target))

    def models(self, endpoint: str = MME) -> dict[str, Any]:
        """The endpoint's (only) host from the models route."""
        status, data, _ = self.send(self.server.signed("GET", f"/moorage/v1/endpoints/{endpoint}/models"))
        if status != 200:
            raise RuntimeError(f"GET models of {endpoint}: HTTP {status}: {data[:300]!r}")
        (host,) = json.loads(data)["Variants"][0]["Hosts"]
        return host

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def expect(reply: tuple[int, bytes, float], name: str, what: str) -> None:
    status, data, _ = reply
    if status != 200 or data.decode(errors="replace").strip() != name:
        raise RuntimeError(f"{what}: HTTP {status} {data[:300]!r}, expected {name!r}")


# -- the phases ---------------------------------------------------------------------------------


def measure_size(server: MultiModelMoorage, client: Client, prefix: Path) -> dict[str, Any]:
    """A probe multi-model endpoint with room for everything loads PROBE_MODELS models (each called a
    few times) and the models route gives their sizes; the probe is deleted after."""
    server.deploy(PROBE, {"Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix.as_uri(),
                          "Environment": {"MOORAGE_MODEL_CACHE_BYTES": str(PROBE_BUDGET)}})
    for rank in range(PROBE_MODELS):
        name = model_name(rank)
        for _ in range(5):
            expect(client.invoke(PROBE, f"{name}.tar.gz"), name, f"probe {name}")
    sizes = [m["SizeBytes"] for m in client.models(PROBE)["Models"]]
    server.sm.delete_endpoint(EndpointName=PROBE)
    return {"sizes": sizes, "per_model_bytes": int(statistics.median(sizes))}


def order(repeat: int) -> list[str]:
    """single, mme, mme, single, ...: each arm first as often as the other."""
    out: list[str] = []
    for i in range(repeat):
        out += [SINGLE, MME] if i % 2 == 0 else [MME, SINGLE]
    return out


def warm_path(server: MultiModelMoorage, args) -> list[dict[str, Any]]:
    """wrk on the hot TargetModel against the one-model endpoint, interleaved, per concurrency."""
    hot = f"{model_name(0)}.tar.gz"
    rows = []
    for conns in args.concurrency:
        # signed now: a signature is accepted for 15 minutes
        requests = {SINGLE: server.invocation(SINGLE), MME: server.invocation(MME, hot)}
        for arm in (SINGLE, MME):
            if args.warmup > 0:
                run_wrk(server.base_url(None), requests[arm], conns, args.warmup, cpu=args.client_cpu)
        runs: dict[str, list[WrkResult]] = {SINGLE: [], MME: []}
        for arm in order(args.repeat):
            run = measure(server, None, requests[arm], conns, args)
            runs[arm].append(run)
            errs = f" ERRORS {run.errors}" if run.errors else ""
            log(f"warm c={conns} {arm:>12}: {run.rps:8.1f} req/s p50 {run.p50_ms:.3f} ms p99 {run.p99_ms:.3f} ms{errs}")
        pairs = list(zip(runs[SINGLE], runs[MME], strict=True))
        row: dict[str, Any] = {"connections": conns, "target": hot}
        for arm in (SINGLE, MME):
            median = sorted(runs[arm], key=lambda r: r.p50_ms)[len(runs[arm]) // 2]
            row[arm] = {"rps": round(statistics.median(r.rps for r in runs[arm]), 1),
                        "p50_ms": round(median.p50_ms, 3),
                        "p99_ms": round(statistics.median(r.p99_ms for r in runs[arm]), 3),
                        "errors": sum(r.error_count for r in runs[arm]),
                        "runs": [r.as_dict() for r in runs[arm]]}
        row["p50_diff_ms"] = paired_estimate([m.p50_ms - s.p50_ms for s, m in pairs])
        row["p99_diff_ms"] = paired_estimate([m.p99_ms - s.p99_ms for s, m in pairs])
        row["rps_ratio"] = paired_estimate([m.rps / s.rps for s, m in pairs if s.rps])
        rows.append(row)
    return rows


def cold_loads(client: Client, args) -> dict[str, Any]:
    """The first call of ``--cold`` models not loaded, in a row; each marked by whether its load
    evicted a model (a full host) or found room."""
    before = client.models()
    loaded = {m["TargetModel"] for m in before["Models"]}
    targets = [f"{model_name(r)}.tar.gz" for r in range(args.models - 1, -1, -1)
               if f"{model_name(r)}.tar.gz" not in loaded][: args.cold]
    calls = []
    previous = before
    for target in targets:
        reply = client.invoke(MME, target)
        expect(reply, target.removesuffix(".tar.gz"), f"cold {target}")
        host = client.models()
        calls.append({"target": target, "ms": round(reply[2] * 1000, 3),
                      "loads": host["Loads"] - previous["Loads"],
                      "evictions": host["Evictions"] - previous["Evictions"],
                      "hits": host["Hits"] - previous["Hits"], "loaded_after": len(host["Models"])})
        previous = host
    out: dict[str, Any] = {"calls": calls}
    for kind, chosen in (("free room", [c for c in calls if c["evictions"] == 0]),
                         ("with eviction", [c for c in calls if c["evictions"] > 0]), ("all", calls)):
        ms = [c["ms"] for c in chosen]
        out[kind] = {"n": len(ms), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
                     "max_ms": max(ms) if ms else None}
    out["not_cold"] = sum(1 for c in calls if c["loads"] != 1 or c["hits"] != 0)
    return out


class Poller(threading.Thread):
    """The number of models the host holds, every ``interval`` seconds, over a connection of its own."""

    def __init__(self, server: MultiModelMoorage, interval: float):
        super().__init__(daemon=True)
        self.client = Client(server)
        self.interval = interval
        self.counts: list[int] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.counts.append(len(self.client.models()["Models"]))
            except Exception as exc:  # keep polling: one failed read is no reason to lose the rest
                log(f"poll failed: {exc}")
        self.client.close()

    def stop(self) -> list[int]:
        self.stopping.set()
        self.join()
        return self.counts


def zipf_mix(server: MultiModelMoorage, client: Client, args) -> dict[str, Any]:
    ranks = zipf_sequence(args.models, args.zipf_s, args.requests, args.seed)
    targets = [f"{model_name(r)}.tar.gz" for r in ranks]
    before = client.models()
    initial = [m["TargetModel"] for m in before["Models"]]  # least recently used first
    poller = Poller(server, args.poll)
    poller.start()
    latencies, wrong = [], 0
    began = time.perf_counter()
    for i, target in enumerate(targets, 1):
        status, data, seconds = client.invoke(MME, target)
        latencies.append(seconds)
        wrong += status != 200 or data.decode(errors="replace").strip() != target.removesuffix(".tar.gz")
        if i % 250 == 0:
            log(f"zipf: {i}/{len(targets)} requests, {i / (time.perf_counter() - began):.1f} req/s")
    wall = time.perf_counter() - began
    counts = poller.stop()
    after = client.models()
    counts.append(len(after["Models"]))
    requests = after["Requests"] - before["Requests"]
    hits = after["Hits"] - before["Hits"]
    cap_max, cap_median = max(counts), int(statistics.median(counts))
    sim_hits = simulate_lru(targets, cap_max, initial)
    sim_hits_median = simulate_lru(targets, cap_median, initial)
    # each request's hit or miss as the simulated LRU has it (exact when the capacity held throughout)
    uses = _lru_uses(targets, cap_max, {m["TargetModel"]: m["Invocations"] for m in before["Models"]})
    sim_flags = [u > 0 for u in uses]
    by_uses = {}
    for low, high in USE_BUCKETS:
        chosen = [s * 1000 for s, u in zip(latencies, uses, strict=True) if u >= low and (high is None or u <= high)]
        label = f"{low}" if low == high else f"{low}-{high}" if high else f">={low}"
        by_uses[label] = {"n": len(chosen), "p50_ms": percentile(chosen, 50), "p99_ms": percentile(chosen, 99)}
    hit_ms = [s * 1000 for s, h in zip(latencies, sim_flags, strict=True) if h]
    # hits right after a hit: no load or eviction just before them on the server's core
    calm_ms = [latencies[i] * 1000 for i in range(1, len(latencies)) if sim_flags[i] and sim_flags[i - 1]]
    after_miss_ms = [latencies[i] * 1000 for i in range(1, len(latencies)) if sim_flags[i] and not sim_flags[i - 1]]
    miss_ms = [s * 1000 for s, h in zip(latencies, sim_flags, strict=True) if not h]
    ms = [s * 1000 for s in latencies]
    return {
        "requests": len(targets), "distinct": len(set(targets)), "wall_s": round(wall, 2),
        "rps": round(len(targets) / wall, 1), "p50_ms": percentile(ms, 50), "p99_ms": percentile(ms, 99),
        "wrong_or_failed": wrong, "server_requests": requests, "server_hits": hits,
        "hit_rate": hits / requests if requests else None,
        "loads": after["Loads"] - before["Loads"], "evictions": after["Evictions"] - before["Evictions"],
        "failed_loads": after["FailedLoads"] - before["FailedLoads"],
        "loaded_counts": {"max": cap_max, "median": cap_median, "min": min(counts), "samples": len(counts)},
        "sim_capacity": cap_max, "sim_hit_rate": sim_hits / len(targets),
        "sim_hit_rate_median_capacity": sim_hits_median / len(targets),
        "initial_models": len(initial),
        "sim_hits_latency": {"n": len(hit_ms), "p50_ms": percentile(hit_ms, 50), "p99_ms": percentile(hit_ms, 99)},
        "sim_hits_after_hit_latency": {"n": len(calm_ms), "p50_ms": percentile(calm_ms, 50),
                                       "p99_ms": percentile(calm_ms, 99)},
        "sim_hits_after_miss_latency": {"n": len(after_miss_ms), "p50_ms": percentile(after_miss_ms, 50),
                                        "p99_ms": percentile(after_miss_ms, 99)},
        "sim_hits_latency_by_uses_since_load": by_uses,
        "sim_misses_latency": {"n": len(miss_ms), "p50_ms": percentile(miss_ms, 50),
                               "p99_ms": percentile(miss_ms, 99)},
        "budget_bytes": after["BudgetBytes"], "used_bytes_after": after["UsedBytes"],
        "sizes_after": [m["SizeBytes"] for m in after["Models"]],
    }


def _lru_uses(sequence: list[str], capacity: int, initial: dict[str, int]) -> list[int]:
    """For each request of ``sequence``, how many requests its model served since it was loaded, as an
    ideal LRU of ``capacity`` has it (0: a miss, the request that loads it). ``initial``: the models
    held at the start, least recently used first, with the invocations each had served."""
    keys = list(initial)[-capacity:] if capacity > 0 else []
    cache: OrderedDict[str, int] = OrderedDict((key, initial[key]) for key in keys)
    uses = []
    for key in sequence:
        served = cache.get(key, 0)
        uses.append(served)
        cache[key] = served + 1
        cache.move_to_end(key)
        if len(cache) > capacity:
            cache.popitem(last=False)
    return uses


USE_BUCKETS = ((1, 1), (2, 4), (5, 19), (20, None))  # a hit's earlier requests on its model since its load


def warm_client(client: Client, args) -> dict[str, Any]:
    """The Zipf run's client with warm requests only, in interleaved rounds: the one-model endpoint,
    the multi-model endpoint with one hot target, and the multi-model endpoint cycling through every
    model it holds (all hits, but a different model process each time, as the Zipf mix's hits are)."""
    host = client.models()
    loaded = [m["TargetModel"] for m in host["Models"]]
    hot = f"{model_name(0)}.tar.gz"
    if hot not in loaded:  # rank 1 of the Zipf mix: loaded after it, but make sure
        expect(client.invoke(MME, hot), model_name(0), "hot target")
        host = client.models()
        loaded = [m["TargetModel"] for m in host["Models"]]
    arms: dict[str, dict[str, Any]] = {
        "one-model": {"endpoint": SINGLE, "targets": [None]},
        "mme one target": {"endpoint": MME, "targets": [hot]},
        f"mme {len(loaded)} targets": {"endpoint": MME, "targets": loaded},
    }
    for arm in arms.values():
        arm.update(ms=[], wall=0.0, wrong=0, i=0)
    names = list(arms)
    per_round = max(1, args.warm_requests // args.warm_rounds)
    for rnd in range(args.warm_rounds):
        for name in names if rnd % 2 == 0 else reversed(names):
            arm = arms[name]
            began = time.perf_counter()
            for _ in range(per_round):
                target = arm["targets"][arm["i"] % len(arm["targets"])]
                arm["i"] += 1
                status, data, seconds = client.invoke(arm["endpoint"], target)
                arm["ms"].append(seconds * 1000)
                expected = "single" if target is None else target.removesuffix(".tar.gz")
                arm["wrong"] += status != 200 or data.decode(errors="replace").strip() != expected
            arm["wall"] += time.perf_counter() - began
    after = client.models()
    out: dict[str, Any] = {"loads_during": after["Loads"] - host["Loads"],
                           "misses_during": (after["Requests"] - host["Requests"]) - (after["Hits"] - host["Hits"]),
                           "arms": {}}
    for name, arm in arms.items():
        n = len(arm["ms"])
        out["arms"][name] = {"requests": n, "rps": round(n / arm["wall"], 1) if arm["wall"] else None,
                             "p50_ms": percentile(arm["ms"], 50), "p99_ms": percentile(arm["ms"], 99),
                             "wrong_or_failed": arm["wrong"], "targets": len(arm["targets"])}
    return out


# -- report -------------------------------------------------------------------------------------


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 100 else f"{value:.1f}"


def _ci(estimate: dict, fmt: str) -> str:
    if estimate.get("median") is None:
        return "-"
    return f"{estimate['median']:{fmt}} [{estimate['low']:{fmt}}, {estimate['high']:{fmt}}]"


def report(result: dict[str, Any], args) -> tuple[list[str], dict[str, bool]]:
    size = result["size"]["per_model_bytes"]
    lines = [f"multi-model bench {result['timestamp']}: {args.models} models (Zipf s={args.zipf_s:g}), budget "
             f"({args.cache_models} + 0.5) x {size / 2**20:.1f} MiB (median SizeBytes of {PROBE_MODELS} probe "
             "loads) = "
             f"{result['budget_bytes'] / 2**20:.0f} MiB; server on core {args.server_cpu}, client and wrk on core "
             f"{args.client_cpu}", ""]
    hot = result["warm"][0]["target"] if result["warm"] else "-"
    lines.append(f"warm path (wrk {result['wrk']}, hot TargetModel {hot} vs the one-model endpoint; "
                 f"{args.duration:g}s x {args.repeat} interleaved runs per arm; median run, "
                 "median pair difference [90% CI])")
    lines.append(f"{'endpoint':<12} {'conc':>4} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
                 f"{'p50 vs one-model ms':>28} {'req/s vs one-model':>24}")
    verdicts: dict[str, bool] = {}
    for row in result["warm"]:
        for arm, label in ((SINGLE, "one-model"), (MME, "multi-model")):
            r = row[arm]
            extra = ("", "")
            if arm == MME:
                extra = (_ci(row["p50_diff_ms"], "+.3f"), _ci(row["rps_ratio"], ".2f").replace("]", "]x"))
            errs = f"  ERRORS {r['errors']}" if r["errors"] else ""
            lines.append(f"{label:<12} {row['connections']:>4} {r['rps']:>9.1f} {r['p50_ms']:>8.3f} "
                         f"{r['p99_ms']:>8.3f} {extra[0]:>28} {extra[1]:>24}{errs}")
        if row["connections"] == 1 and row["p50_diff_ms"]["median"] is not None:
            verdicts["warm_p50"] = row["p50_diff_ms"]["median"] <= P50_BUDGET_MS and not row[MME]["errors"]
    cold = result["cold"]
    lines += ["", f"cold loads (Python client, first call of {len(cold['calls'])} models not loaded, one at a time)",
              f"{'load':<14} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for kind in ("free room", "with eviction", "all"):
        c = cold[kind]
        lines.append(f"{kind:<14} {c['n']:>4} {_ms(c['p50_ms']):>8} {_ms(c['p99_ms']):>8} {_ms(c['max_ms']):>8}")
    z = result["zipf"]
    lines += ["", f"Zipf mix (Python client, one connection, {z['requests']} requests in order over {z['distinct']} "
                  "models; LRU simulated on the same sequence with capacity = the max of "
                  f"{z['loaded_counts']['samples']} loaded-model counts, {z['sim_capacity']}; median "
                  f"{z['loaded_counts']['median']})",
              f"{'endpoint':<12} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'hit rate':>9} "
              f"{'LRU sim':>8} {'diff pts':>8} {'loads':>6} {'evict':>6}"]
    diff = 100 * (z["hit_rate"] - z["sim_hit_rate"]) if z["hit_rate"] is not None else None
    lines.append(f"{'multi-model':<12} {z['requests']:>8} {z['rps']:>8.1f} {_ms(z['p50_ms']):>8} {_ms(z['p99_ms']):>8} "
                 f"{z['hit_rate']:>9.1%} {z['sim_hit_rate']:>8.1%} {diff:>+8.1f} {z['loads']:>6} {z['evictions']:>6}")
    h, c, m = z["sim_hits_latency"], z["sim_hits_after_hit_latency"], z["sim_misses_latency"]
    a = z["sim_hits_after_miss_latency"]
    lines.append(f"  multi-model requests the simulated LRU calls hits: {h['n']}, p50 {_ms(h['p50_ms'])} ms, p99 "
                 f"{_ms(h['p99_ms'])} ms (right after a hit: {c['n']}, p50 {_ms(c['p50_ms'])} ms, p99 "
                 f"{_ms(c['p99_ms'])} ms; right after a miss: {a['n']}, p50 {_ms(a['p50_ms'])} ms, p99 "
                 f"{_ms(a['p99_ms'])} ms); misses: {m['n']}, p50 {_ms(m['p50_ms'])} ms, p99 {_ms(m['p99_ms'])} ms")
    lines.append("  the hits by how many requests their model had served since it was loaded: " + ", ".join(
        f"{k}: {v['n']} at p50 {_ms(v['p50_ms'])} ms" for k, v in z["sim_hits_latency_by_uses_since_load"].items()))
    lines.append(f"  LRU sim at the median capacity ({z['loaded_counts']['median']}): "
                 f"{z['sim_hit_rate_median_capacity']:.1%}; loaded-model counts min {z['loaded_counts']['min']}, "
                 f"max {z['loaded_counts']['max']}")
    w = result["warm_client"]
    base = w["arms"]["one-model"]
    lines += ["", f"warm requests only (the same client; {args.warm_rounds} interleaved rounds per arm; "
                  f"misses on the multi-model endpoint meanwhile: {w['misses_during']})",
              f"{'endpoint':<22} {'requests':>8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p50 vs one-model':>17}"]
    for name, a in w["arms"].items():
        vs = f"{a['p50_ms'] - base['p50_ms']:+.3f} ms" if name != "one-model" else ""
        lines.append(f"{name:<22} {a['requests']:>8} {a['rps']:>8.1f} {_ms(a['p50_ms']):>8} {_ms(a['p99_ms']):>8} "
                     f"{vs:>17}")
    problems = [f"{k}: {z[k]}" for k in ("wrong_or_failed", "failed_loads") if z[k]]
    problems += [f"{name} wrong_or_failed: {a['wrong_or_failed']}" for name, a in w["arms"].items()
                 if a["wrong_or_failed"]]
    if w["misses_during"]:
        problems.append(f"{w['misses_during']} misses during the warm-only rounds")
    if cold["not_cold"]:
        problems.append(f"{cold['not_cold']} cold calls were not one load each")
    if problems:
        lines.append("  PROBLEMS: " + "; ".join(problems))
    if diff is not None:
        verdicts["hit_rate"] = abs(diff) <= HIT_RATE_POINTS and not z["wrong_or_failed"]
    lines.append("")
    warm1 = next((r for r in result["warm"] if r["connections"] == 1), None)
    if warm1 is not None:
        lines.append(f"target: warm-path p50 at c=1 within +{P50_BUDGET_MS} ms of the one-model endpoint: "
                     f"{warm1['p50_diff_ms']['median']:+.3f} ms "
                     f"{'PASS' if verdicts.get('warm_p50') else 'FAIL'}")
    if diff is not None:
        lines.append(f"target: hit rate within {HIT_RATE_POINTS:g} points of the simulated LRU: "
                     f"{z['hit_rate']:.1%} vs {z['sim_hit_rate']:.1%} = {diff:+.1f} points "
                     f"{'PASS' if verdicts.get('hit_rate') else 'FAIL'}")
    return lines, verdicts


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", type=int, default=200, help="archives under the multi-model prefix")
    p.add_argument("--cache-models", type=int, default=20, help="budget = this many x a measured model size")
    p.add_argument("--zipf-s", type=float, default=1.1, help="Zipf exponent of the models' popularity")
    p.add_argument("--requests", type=int, default=1500, help="requests of the Zipf mix (one client, in order)")
    p.add_argument("--warm-requests", type=int, default=2000, help="Python-client warm requests per arm")
    p.add_argument("--warm-rounds", type=int, default=8, help="interleaved rounds of those")
    p.add_argument("--cold", type=int, default=30, help="first calls of models not loaded, timed one by one")
    p.add_argument("--seed", type=int, default=20261206)
    p.add_argument("--poll", type=float, default=0.5, help="seconds between reads of the loaded-model count")
    p.add_argument("--concurrency", default="1,32", help="wrk connections of the warm-path runs")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per measured wrk run (whole seconds)")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of wrk warm-up per arm and concurrency")
    p.add_argument("--repeat", type=int, default=6, help="measured wrk runs per arm and concurrency (interleaved)")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="wait up to this long for a quiet machine")
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    p.add_argument("--no-pin", action="store_true", help="do not pin (for machines with one core)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    if args.no_pin:
        args.server_cpu = args.client_cpu = None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if (wrk := bench_start()) is None:
        return 2
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})  # this client with wrk; the server keeps its own core
    stamp = time.strftime("%Y%m%d-%H%M%S")
    started = time.monotonic()
    result: dict[str, Any] = {"timestamp": stamp, "wrk": wrk_version(wrk)}
    with tempfile.TemporaryDirectory(prefix="moorage-mme-bench-") as tmp:
        workdir = Path(tmp)
        prefix = workdir / "prefix"
        for rank in range(args.models):
            archive(prefix / f"{model_name(rank)}.tar.gz", model_name(rank))
        single = archive(workdir / "single" / "model.tar.gz", "single")
        log(f"{args.models} archives under {prefix}")
        server = MultiModelMoorage(workdir / "server", cpu=args.server_cpu)
        client = Client(server)
        try:
            server.prepare()
            server.start([])
            server.deploy(SINGLE, {"Image": "sklearn", "ModelDataUrl": single.as_uri()}, wait=False)
            result["size"] = measure_size(server, client, prefix)
            # half a model over N models: N fit although the measured sizes differ by a few KiB
            result["budget_bytes"] = int((args.cache_models + 0.5) * result["size"]["per_model_bytes"])
            log(f"model sizes {[s >> 10 for s in result['size']['sizes']]} KiB: budget "
                f"{args.cache_models + 0.5} x {result['size']['per_model_bytes'] >> 10} KiB")
            server.deploy(MME, {"Image": "sklearn", "Mode": "MultiModel", "ModelDataUrl": prefix.as_uri(),
                                "Environment": {"MOORAGE_MODEL_CACHE_BYTES": str(result["budget_bytes"])}})
            server.wait(SINGLE)
            expect(client.invoke(SINGLE), "single", "one-model endpoint")
            expect(client.invoke(MME, f"{model_name(0)}.tar.gz"), model_name(0), "multi-model endpoint")
            log(f"deployed in {time.monotonic() - started:.0f}s; warm path")
            result["warm"] = warm_path(server, args)
            expect(client.invoke(MME, f"{model_name(0)}.tar.gz"), model_name(0), "multi-model after wrk")
            log("cold loads")
            result["cold"] = cold_loads(client, args)
            log(f"Zipf mix: {args.requests} requests")
            result["zipf"] = zipf_mix(server, client, args)
            log("warm requests from the same client")
            result["warm_client"] = warm_client(client, args)
        finally:
            client.close()
            server.stop()
    result["elapsed_s"] = round(time.monotonic() - started, 1)
    lines, verdicts = report(result, args)
    lines.append(f"elapsed {result['elapsed_s']:.0f}s")
    print("\n" + "\n".join(lines))
    out = args.out or BENCH / "results" / f"multimodel-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**result, "host": host_info(), "verdicts": verdicts, "report": lines,
                               "args": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    print(f"results: {out}")
    return 0 if verdicts and all(verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
