"""Bandit routing on a real endpoint: each policy's cumulative regret over 20,000 delayed-reward requests.

    .venv/bin/python bench/bandits.py                                  # 4 variants, 20,000 requests, 3 seeds
    .venv/bin/python bench/bandits.py --seeds 1 --requests 4000 --policies weights,thompson
    .venv/bin/python bench/bandits.py --rates 0.04,0.05,0.07,0.10,0.12 --delay 500 --batch 100

One ``moorage serve`` (temp home, ``MOORAGE_EXPERIMENTS_UPDATE_INTERVAL`` = ``--interval``, 0.1 s)
serves an environment of variants with known reward rates (default A 0.04, B 0.05, C 0.07, D 0.10):
each variant is a model that answers its own name. For every seed and policy (``weights``: the plain
SageMaker split, here uniform; ``epsilon-greedy``, ``ucb1``, ``thompson``) a fresh endpoint is created
with the ``moorage:routing`` tags (so it starts from the prior), driven by ``--threads`` boto3 clients
calling ``invoke_endpoint(..., InferenceId=...)``, and deleted after its run. Request i's reward is
Bernoulli(rate of ``InvokedProductionVariant``), drawn from the seed's own stream (the one
``simulate_regret`` uses, so real and simulated runs of a seed meet the same reward noise), and is
sent with ``moorage.sdk.Session.send_feedback`` once ``--delay`` more requests have been answered,
in batches of ``--batch`` (so 200 to 250 requests late by default). The server recomputes the
weights from the rewards every interval; the bench polls DescribeEndpoint's ``CurrentWeight`` once
a second and keeps the timeline in the JSON.

Regret is the pseudo-regret: per request, the best rate minus the served variant's rate, summed in
request order. The best-arm oracle has regret 0 by definition and an expected reward of best rate x
requests; each policy's expected reward is that minus its regret (the realized reward, the sum of
the drawn 0/1 rewards, is shown too). Beside each real regret is ``simulate_regret`` (the pure
simulator in ``moorage.experiments.bandits``) with the same rates, seeds, epsilon and floor, the
measured mean lateness of the rewards as its delay (about ``--delay`` + ``--batch``/2) and an update
every ``max(batch, interval x measured req/s)`` requests: the server's updates happen on a clock, the
simulator's every so many requests. The simulator's Thompson draws are seeded, the server's are not.
``/uniform`` ratios are against the ``weights`` runs of the same bench run.

Target: Thompson sampling's mean regret at the last request at least 5x below uniform, and growing
sub-linearly (its regret over the second half of the requests at most 0.7x that of the first half).
Prints a table and PASS/FAIL; results go to bench/results/bandits-<timestamp>.json and the regret
curves (mean over seeds, simulator dashed) to bench/results/bandits-<timestamp>.png when matplotlib
is importable.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import signal
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from servers import Moorage, Unavailable  # noqa: E402
from serving import host_info, log  # noqa: E402

from moorage.experiments.bandits import POLICIES, simulate_regret  # noqa: E402
from moorage.sdk import Session  # noqa: E402

TARGET_FACTOR = 5.0  # Thompson's regret at least this many times below uniform's
SUBLINEAR = 0.7  # ... and its second half's regret at most this fraction of the first half's
MAX_FEEDBACK = 1000  # items per feedback call (the server's limit)
VARIANT_MODEL = b'''
import json, os


def model_fn(model_dir, context=None):
    with open(os.path.join(model_dir, "variant.txt")) as fh:
        return fh.read().strip()


def transform_fn(name, body, content_type, accept):
    return json.dumps({"variant": name}), "application/json"
'''


def variant_archive(path: Path, name: str) -> Path:
    """A model that answers ``{"variant": name}`` to anything."""
    with tarfile.open(path, "w:gz") as tar:
        for member, data in (("code/inference.py", VARIANT_MODEL), ("variant.txt", name.encode())):
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


class BanditMoorage(Moorage):
    """moorage with the experiments' update interval set, no models deployed at start."""

    detail = "router + 1 instance per variant; moorage:routing tags on each endpoint config"

    def __init__(self, workdir: Path, cpu: int | None, interval: float):
        super().__init__(workdir, cpu)
        self.extra_env = {"MOORAGE_EXPERIMENTS_UPDATE_INTERVAL": f"{interval:g}s"}

    def _spawn(self, cmd, log_name, env=None, cwd=None):
        return super()._spawn(cmd, log_name, env={**(env if env is not None else os.environ), **self.extra_env},
                              cwd=cwd)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service: str, pool: int = 10) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(service, endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(max_pool_connections=pool, retries={"max_attempts": 2, "mode": "standard"}))

    def session(self) -> Session:
        return Session(url=self.url, access_key_id=self.access_key, secret_access_key=self.secret_key,
                       region=self.region)


def environment(seed: int, requests: int) -> np.ndarray:
    """The seed's reward noise: request i earns 1 if noise[i] < its variant's rate (simulate_regret's draw)."""
    env_rng, _ = np.random.default_rng(seed).spawn(2)
    env_rng.random(requests)  # simulate_regret's routing picks: the server routes here
    return env_rng.random(requests)


def deploy(sm: Any, name: str, models: dict[str, str], policy: str, args) -> float:
    start = time.monotonic()
    tags = [{"Key": "moorage:routing", "Value": policy}]
    if policy != "weights":
        tags += [{"Key": "moorage:routing:epsilon", "Value": f"{args.epsilon:g}"},
                 {"Key": "moorage:routing:min-weight", "Value": f"{args.min_weight:g}"}]
    sm.create_endpoint_config(
        EndpointConfigName=name, Tags=tags,
        ProductionVariants=[{"VariantName": variant, "ModelName": model, "InitialInstanceCount": 1,
                             "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0}
                            for variant, model in models.items()])
    sm.create_endpoint(EndpointName=name, EndpointConfigName=name)
    sm.get_waiter("endpoint_in_service").wait(EndpointName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 180})
    return time.monotonic() - start


def delete(sm: Any, name: str, timeout: float = 60.0) -> None:
    """Delete the endpoint and its config; wait until the endpoint is gone (its instances stopping)."""
    from botocore.exceptions import ClientError

    try:
        sm.delete_endpoint(EndpointName=name)
    except ClientError:
        pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sm.describe_endpoint(EndpointName=name)
        except ClientError:
            break
        time.sleep(0.5)
    try:
        sm.delete_endpoint_config(EndpointConfigName=name)
    except ClientError:
        pass


def drive(server: BanditMoorage, runtimes: list[Any], sm: Any, endpoint: str, variants: list[str],
          rates: np.ndarray, noise: np.ndarray, args) -> dict[str, Any]:
    """Send the requests with the client threads and the rewards from a feedback thread."""
    n = args.requests
    index = {name: i for i, name in enumerate(variants)}
    served = np.full(n, -1, dtype=np.int16)
    counter = itertools.count()
    failed: list[str] = []
    stop = threading.Event()
    feedback = {"calls": 0, "accepted": 0, "unknown": 0, "duplicate": 0, "late": []}

    def client(rt: Any) -> None:
        while not stop.is_set():
            i = next(counter)  # atomic in CPython
            if i >= n:
                return
            try:
                reply = rt.invoke_endpoint(EndpointName=endpoint, Body=b"1", ContentType="text/csv",
                                           InferenceId=f"r{i}")
                name = reply["InvokedProductionVariant"]
                answered = json.loads(reply["Body"].read())["variant"]
                if answered != name:
                    raise RuntimeError(f"InvokedProductionVariant {name} but {answered} answered")
                served[i] = index[name]
            except Exception as exc:
                failed.append(f"request {i}: {type(exc).__name__}: {exc}"[:300])
                stop.set()
                return

    def send(session: Session, start: int, end: int, ready: int) -> None:
        items = [(f"r{j}", float(noise[j] < rates[served[j]])) for j in range(start, end)]
        answer = session.send_feedback(endpoint, items)
        feedback["calls"] += 1
        feedback["accepted"] += int(answer["Accepted"])
        feedback["unknown"] += len(answer["Unknown"])
        feedback["duplicate"] += len(answer["Duplicate"])
        feedback["late"].append(ready - (start + end) / 2)

    def rewards() -> None:
        session = server.session()
        ready = sent = 0
        try:
            while sent < n and not stop.is_set():
                while ready < n and served[ready] >= 0:
                    ready += 1
                if ready >= n:  # all answered: the rest of the rewards (they no longer change the regret)
                    for start in range(sent, n, MAX_FEEDBACK):
                        send(session, start, min(start + MAX_FEEDBACK, n), ready)
                    return
                if ready - args.delay >= sent + args.batch:
                    send(session, sent, sent + args.batch, ready)
                    sent += args.batch
                else:
                    time.sleep(0.002)
        except Exception as exc:
            failed.append(f"feedback: {type(exc).__name__}: {exc}"[:300])
            stop.set()

    threads = [threading.Thread(target=client, args=(rt,), daemon=True) for rt in runtimes]
    feeder = threading.Thread(target=rewards, daemon=True)
    timeline: list[dict[str, Any]] = []
    began = time.monotonic()
    for thread in [*threads, feeder]:
        thread.start()
    next_log = began + 30
    while any(t.is_alive() for t in threads):
        time.sleep(args.poll)
        done = int(np.count_nonzero(served >= 0))
        try:
            desc = sm.describe_endpoint(EndpointName=endpoint)
            timeline.append({"t": round(time.monotonic() - began, 2), "answered": done,
                             "weights": {v["VariantName"]: round(v["CurrentWeight"], 4)
                                         for v in desc["ProductionVariants"]}})
        except Exception as exc:  # the timeline is a by-product: a failed poll is not a failed run
            log(f"  describe_endpoint failed: {exc}")
        if time.monotonic() >= next_log:
            next_log += 30
            log(f"  {done:,}/{n:,} answered")
    seconds = time.monotonic() - began
    feeder.join(120)
    if failed:
        tail = server.procs[0].log_tail() if server.procs else ""
        raise RuntimeError("; ".join(failed[:3]) + f" (server log: {tail})")
    if feeder.is_alive():
        raise RuntimeError("the feedback thread did not finish")
    return {"served": served, "seconds": seconds, "feedback": feedback, "timeline": timeline}


def one_run(server: BanditMoorage, runtimes: list[Any], sm: Any, models: dict[str, str], policy: str, seed: int,
            rates: np.ndarray, stamp: str, args) -> dict[str, Any]:
    variants = list(models)
    name = f"bandit-{policy}-s{seed}-{stamp}"
    deploy_s = deploy(sm, name, models, policy, args)
    try:
        noise = environment(seed, args.requests)
        out = drive(server, runtimes, sm, name, variants, rates, noise, args)
        final = {v["VariantName"]: v["CurrentWeight"]
                 for v in sm.describe_endpoint(EndpointName=name)["ProductionVariants"]}
        report = server.session().experiment_report(name)
    finally:
        delete(sm, name)
    served = out["served"].astype(np.intp)
    regret = np.cumsum(rates.max() - rates[served])
    realized = float(np.sum(noise < rates[served]))
    fb = out["feedback"]
    rewarded = {v["VariantName"]: v["Rewards"] for v in report["Variants"]}
    if fb["accepted"] != args.requests or sum(rewarded.values()) != args.requests:
        raise RuntimeError(f"{name}: {fb['accepted']} rewards accepted, the report counts {rewarded} "
                           f"(unknown {fb['unknown']}, duplicate {fb['duplicate']})")
    rps = args.requests / out["seconds"]
    late = fb["late"][:-1] or [float(args.delay)]  # the last call carries the leftovers after the last request
    tick = rps * args.interval
    # The simulator's terms: a reward is known ``delay`` requests after its own (here: the mean lateness at
    # sending, about delay + batch/2), and the weights change every ``update_every`` requests (here: on
    # the server's clock, so interval x req/s, but never more often than rewards arrive).
    sim_delay, sim_every = round(float(np.mean(late))), max(args.batch, round(tick))
    simulated = simulate_regret(policy, rates.tolist(), args.requests, delay=sim_delay, update_every=sim_every,
                                seed=seed, epsilon=args.epsilon, min_weight=args.min_weight)
    half = args.requests // 2
    return {
        "policy": policy, "seed": seed, "endpoint": name, "deploy_s": round(deploy_s, 2),
        "seconds": round(out["seconds"], 2), "rps": round(rps, 1),
        "regret": float(regret[-1]), "first_half": float(regret[half - 1]),
        "second_half": float(regret[-1] - regret[half - 1]),
        "expected_reward": float(rates.max() * args.requests - regret[-1]), "realized_reward": realized,
        "served": {v: int(np.count_nonzero(served == i)) for i, v in enumerate(variants)},
        "best_share_last_10pct": float(np.mean(served[-args.requests // 10:] == int(np.argmax(rates)))),
        "final_weights": final, "report_rewards": rewarded,
        "feedback": {k: v for k, v in fb.items() if k != "late"} | {"mean_lateness": round(float(np.mean(late)), 1)},
        "simulated": {"delay": sim_delay, "update_every": sim_every, "regret": float(simulated[-1]),
                      "first_half": float(simulated[half - 1])},
        "curve": regret, "sim_curve": simulated, "timeline": out["timeline"],
    }


def summarize(runs: list[dict[str, Any]], policies: list[str], rates: np.ndarray, args) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for policy in policies:
        mine = [r for r in runs if r["policy"] == policy]
        if not mine:
            continue
        final = np.array([r["regret"] for r in mine])
        sim = np.array([r["simulated"]["regret"] for r in mine])
        out[policy] = {
            "seeds": len(mine), "regret": float(final.mean()), "sd": float(final.std(ddof=1)) if len(mine) > 1 else 0.0,
            "min": float(final.min()), "max": float(final.max()),
            "first_half": float(np.mean([r["first_half"] for r in mine])),
            "second_half": float(np.mean([r["second_half"] for r in mine])),
            "expected_reward": float(np.mean([r["expected_reward"] for r in mine])),
            "realized_reward": float(np.mean([r["realized_reward"] for r in mine])),
            "best_share_last_10pct": float(np.mean([r["best_share_last_10pct"] for r in mine])),
            "sim_regret": float(sim.mean()), "sim_sd": float(sim.std(ddof=1)) if len(mine) > 1 else 0.0,
            "rps": float(np.mean([r["rps"] for r in mine])),
        }
    uniform = out.get("weights", {}).get("regret")
    for row in out.values():
        row["vs_uniform"] = row["regret"] / uniform if uniform else None
    return out


def table(summary: dict[str, dict], rates: np.ndarray, args) -> tuple[list[str], bool | None]:
    oracle = float(rates.max() * args.requests)
    head = (f"{'policy':15} {'regret@' + format(args.requests, ','):>13} {'sd':>6} {'min-max':>13} "
            f"{'/uniform':>8} {'1st half':>8} {'2nd half':>8} {'2nd/1st':>7} {'exp. reward':>17} "
            f"{'realized':>8} {'best 10%':>8} {'sim regret (sd)':>15} {'real/sim':>8} {'req/s':>6}")
    lines = [head, f"{'oracle (best)':15} {0:>13.1f} {'':>6} {'':>13} {0:>8.3f} {0:>8.1f} {0:>8.1f} {'':>7} "
                   f"{oracle:>9.0f} (100%) {'':>8} {1:>8.0%}"]
    for policy, row in summary.items():
        ratio = row["second_half"] / row["first_half"] if row["first_half"] else float("nan")
        vs = f"{row['vs_uniform']:.3f}" if row["vs_uniform"] is not None else "-"
        sim = f"{row['sim_regret']:.1f} ({row['sim_sd']:.1f})"
        real_sim = row["regret"] / row["sim_regret"] if row["sim_regret"] else float("nan")
        lines.append(
            f"{policy:15} {row['regret']:>13.1f} {row['sd']:>6.1f} {row['min']:>6.0f}-{row['max']:<6.0f} {vs:>8} "
            f"{row['first_half']:>8.1f} {row['second_half']:>8.1f} {ratio:>7.2f} "
            f"{row['expected_reward']:>9.0f} ({row['expected_reward'] / oracle:>4.0%}) {row['realized_reward']:>8.0f} "
            f"{row['best_share_last_10pct']:>8.0%} {sim:>15} {real_sim:>8.2f} {row['rps']:>6.0f}")
    thompson, uniform = summary.get("thompson"), summary.get("weights")
    if thompson is None or uniform is None:
        lines.append("target: needs both thompson and weights runs: not checked")
        return lines, None
    factor = uniform["regret"] / thompson["regret"] if thompson["regret"] else float("inf")
    growth = thompson["second_half"] / thompson["first_half"] if thompson["first_half"] else float("inf")
    passed = factor >= TARGET_FACTOR and growth <= SUBLINEAR
    lines.append(f"target: Thompson's regret at {args.requests:,} at least {TARGET_FACTOR:g}x below uniform "
                 f"({factor:.1f}x) and sub-linear (2nd half / 1st half {growth:.2f} <= {SUBLINEAR}): "
                 + ("PASS" if passed else "FAIL"))
    return lines, passed


def plot(runs: list[dict[str, Any]], policies: list[str], rates: np.ndarray, path: Path, args) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib is not importable: no plot")
        return None
    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=110)
    x = np.arange(1, args.requests + 1)
    for color, policy in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], policies, strict=False):
        mine = [r for r in runs if r["policy"] == policy]
        if not mine:
            continue
        curves = np.stack([r["curve"] for r in mine])
        ax.plot(x, curves.mean(axis=0), color=color, lw=2, label=f"{policy} (endpoint)")
        if len(mine) > 1:
            ax.fill_between(x, curves.min(axis=0), curves.max(axis=0), color=color, alpha=0.15, lw=0)
        ax.plot(x, np.stack([r["sim_curve"] for r in mine]).mean(axis=0), color=color, lw=1, ls="--",
                label=f"{policy} (simulate_regret)")
    ax.set_xlabel("requests")
    ax.set_ylabel("cumulative regret (best rate - served rate)")
    rates_text = ", ".join(f"{r:g}" for r in rates)
    seeds = len({r["seed"] for r in runs})
    ax.set_title(f"bandit routing on a moorage endpoint: rates {rates_text}; rewards {args.delay}+ requests late, "
                 f"mean of {seeds} seed(s), band = min-max", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def parse_args(argv: list[str] | None = None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rates", default="0.04,0.05,0.07,0.10", help="reward rate per variant (A, B, ...), 2 to 8")
    p.add_argument("--requests", type=int, default=20_000, help="requests per run")
    p.add_argument("--seeds", type=int, default=3, help="runs per policy (seeds 0, 1, ...)")
    p.add_argument("--policies", default=",".join(POLICIES), help=f"subset of {','.join(POLICIES)}")
    p.add_argument("--delay", type=int, default=200, help="a reward is sent once this many more requests answered")
    p.add_argument("--batch", type=int, default=50, help="rewards per feedback call (<= 1000)")
    p.add_argument("--threads", type=int, default=4, help="boto3 client threads")
    p.add_argument("--interval", type=float, default=0.1, help="MOORAGE_EXPERIMENTS_UPDATE_INTERVAL, seconds")
    p.add_argument("--epsilon", type=float, default=0.1, help="moorage:routing:epsilon (epsilon-greedy)")
    p.add_argument("--min-weight", type=float, default=0.01, help="moorage:routing:min-weight, the floor")
    p.add_argument("--poll", type=float, default=0.5, help="seconds between DescribeEndpoint weight polls")
    p.add_argument("--server-cpu", type=int, default=None, help="pin the server to this core (default: no pin)")
    p.add_argument("--out", type=Path, default=None, help="results JSON (default bench/results/bandits-<ts>.json)")
    p.add_argument("--plot", type=Path, default=None, help="PNG of the curves (default beside the JSON)")
    args = p.parse_args(argv)
    args.rates = [float(r) for r in args.rates.split(",") if r.strip()]
    args.policies = [s.strip() for s in args.policies.split(",") if s.strip()]
    if not 2 <= len(args.rates) <= 8 or any(not 0 <= r <= 1 for r in args.rates):
        p.error("--rates: 2 to 8 rates in [0, 1]")
    if unknown := [s for s in args.policies if s not in POLICIES]:
        p.error(f"--policies: unknown {unknown}, expected some of {', '.join(POLICIES)}")
    if args.requests < 2 or args.seeds < 1 or args.threads < 1 or args.delay < 0 or not 1 <= args.batch <= MAX_FEEDBACK:
        p.error("need --requests >= 2, --seeds >= 1, --threads >= 1, --delay >= 0, 1 <= --batch <= 1000")
    return args


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    signal.signal(signal.SIGHUP, _exit_on_signal)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rates = np.array(args.rates)
    names = [chr(ord("A") + i) for i in range(len(rates))]
    began = time.monotonic()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="moorage-bandit-bench-") as tmp:
        workdir = Path(tmp)
        server = BanditMoorage(workdir / "server", cpu=args.server_cpu, interval=args.interval)
        try:
            server.prepare()
            server.start([])
            sm = server.client("sagemaker")
            runtimes = [server.client("sagemaker-runtime", pool=2) for _ in range(args.threads)]
            models = {}
            for name in names:
                tarball = variant_archive(workdir / f"variant-{name}.tar.gz", name)
                models[name] = f"bandit-variant-{name.lower()}-{stamp}"
                sm.create_model(ModelName=models[name],
                                PrimaryContainer={"Image": "sklearn", "ModelDataUrl": tarball.resolve().as_uri()})
            for seed in range(args.seeds):
                for policy in args.policies:
                    run = one_run(server, runtimes, sm, models, policy, seed, rates, stamp, args)
                    runs.append(run)
                    log(f"seed {seed} {policy:14}: regret {run['regret']:7.1f} (sim {run['simulated']['regret']:7.1f}) "
                        f"halves {run['first_half']:.1f}/{run['second_half']:.1f}, {run['rps']:.0f} req/s, "
                        f"{run['seconds']:.0f}s + deploy {run['deploy_s']:.0f}s, final weights "
                        + " ".join(f"{k}={v:.3f}" for k, v in run["final_weights"].items()))
            for model in models.values():
                sm.delete_model(ModelName=model)
        except Unavailable as exc:
            print(f"error: moorage unavailable: {exc}", file=sys.stderr)
            return 2
        finally:
            server.stop()
    wall = time.monotonic() - began
    summary = summarize(runs, args.policies, rates, args)
    print(f"\nbandits bench {stamp}: variants " + ", ".join(f"{n} {r:g}" for n, r in zip(names, rates, strict=True))
          + f"; {args.requests:,} requests x {args.seeds} seed(s); rewards sent {args.delay} requests late in batches"
          f" of {args.batch}; update interval {args.interval:g}s; {args.threads} client threads; wall {wall:.0f}s")
    lines, passed = table(summary, rates, args)
    print("\n".join(lines))
    out = args.out or BENCH / "results" / f"bandits-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    step = max(1, args.requests // 200)
    stored = [{**{k: v for k, v in r.items() if k not in ("curve", "sim_curve")},
               "curve_every": step, "curve": np.round(r["curve"][step - 1::step], 2).tolist(),
               "sim_curve": np.round(r["sim_curve"][step - 1::step], 2).tolist()} for r in runs]
    out.write_text(json.dumps({"host": host_info(), "args": {k: str(v) for k, v in vars(args).items()},
                               "wall_s": round(wall, 1), "summary": summary, "passed": passed, "runs": stored},
                              indent=1))
    print(f"results: {out}")
    if (png := plot(runs, args.policies, rates, args.plot or out.with_suffix(".png"), args)) is not None:
        print(f"plot: {png}")
    return 0 if passed or passed is None else 1


if __name__ == "__main__":
    sys.exit(main())
