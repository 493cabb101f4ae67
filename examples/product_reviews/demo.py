"""``make demo``: a product-review sentiment endpoint with a champion and a challenger, driven by boto3.

1. trains two models on a synthetic review corpus and packages them as SageMaker model.tar.gz files;
2. starts ``moorage serve`` on a free local port with a fresh home (``.demo-home/``);
3. with plain boto3 (only ``endpoint_url`` differs from AWS): create_model x2, create_endpoint_config
   (variant A: 2 instances, weight 0.9; variant B: 1 instance, weight 0.1), create_endpoint, wait;
4. sends held-out reviews through ``invoke_endpoint`` from a thread pool and reports traffic split,
   accuracy and latency per variant, plus negative reviews per vendor;
5. deletes what it created and stops the server, so it can be run again.

Run from the repository root: ``.venv/bin/python examples/product_reviews/demo.py [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import boto3
import numpy as np
import psutil
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, WaiterError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from moorage.config import SERVER_FILE, read_credentials

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from train import VARIANT_DESCRIPTIONS, TrainResult, train_variants  # noqa: E402

ROOT = HERE.parents[1]
HOME = ROOT / ".demo-home"
REGION = "us-east-1"
IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::000000000000:role/moorage-demo"
ENDPOINT = "product-reviews"
ENDPOINT_CONFIG = "product-reviews-config"
MODELS = {"A": "product-reviews-a", "B": "product-reviews-b"}
SHORT_NAMES = {"A": "tfidf + logistic regression", "B": "tfidf + complement NB"}
VARIANTS = {"A": {"instances": 2, "weight": 0.9}, "B": {"instances": 1, "weight": 0.1}}
N_REQUESTS = 300
THREADS = 8
HEALTH_TIMEOUT_S = 30.0

# Outside a terminal (CI logs, a pipe) rich would wrap at 80 columns; the tables need more.
console = Console(width=None if sys.stdout.isatty() else 130)


class DemoError(Exception):
    """A step failed; the message says which and why."""


@dataclass
class Result:
    review: dict
    variant: str | None = None
    label: str | None = None
    latency_ms: float = 0.0
    error: str | None = None

    @property
    def correct(self) -> bool:
        return self.label == self.review["sentiment"]


# ------------------------------------------------------------------------------------------- server


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def start_server(home: Path, port: int) -> subprocess.Popen:
    env = dict(os.environ)
    # No key in the environment: the server generates one and writes it to home/credentials.
    for name in ("MOORAGE_ACCESS_KEY_ID", "MOORAGE_SECRET_ACCESS_KEY", "MOORAGE_HOME", "MOORAGE_DATABASE_URL"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "moorage", "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--home", str(home)]
    with (home / "server.log").open("wb") as log:
        # The child keeps its own copy of the log's file descriptor.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)


def wait_healthy(proc: subprocess.Popen, url: str, home: Path) -> None:
    deadline = time.monotonic() + HEALTH_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(
                f"the server exited with code {proc.returncode}; "
                f"{home / 'server.log'} ends with:\n{log_tail(home / 'server.log')}"
            )
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise DemoError(
        f"the server did not answer GET /healthz within {HEALTH_TIMEOUT_S:.0f} s; "
        f"{home / 'server.log'} ends with:\n{log_tail(home / 'server.log')}"
    )


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        console.print("[yellow]the server did not stop within 20 s of SIGTERM; killing it[/]")
        proc.kill()
        proc.wait(timeout=5)


# ------------------------------------------------------------------------------------------ SageMaker


def deploy(sm, artifacts: dict[str, Path]) -> None:
    for variant, tar in artifacts.items():
        sm.create_model(
            ModelName=MODELS[variant],
            ExecutionRoleArn=ROLE,
            PrimaryContainer={
                "Image": IMAGE,
                "ModelDataUrl": "file://" + str(tar.resolve()),
                "Environment": {
                    "SAGEMAKER_PROGRAM": "inference.py",
                    "SAGEMAKER_SUBMIT_DIRECTORY": "/opt/ml/model/code",
                },
            },
        )
    sm.create_endpoint_config(
        EndpointConfigName=ENDPOINT_CONFIG,
        ProductionVariants=[
            {
                "VariantName": variant,
                "ModelName": MODELS[variant],
                "InstanceType": "ml.m5.large",
                "InitialInstanceCount": spec["instances"],
                "InitialVariantWeight": spec["weight"],
            }
            for variant, spec in VARIANTS.items()
        ],
    )
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName=ENDPOINT_CONFIG)
    try:
        sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    except WaiterError as exc:
        try:
            described = sm.describe_endpoint(EndpointName=ENDPOINT)
            status, reason = described.get("EndpointStatus"), described.get("FailureReason", "(none given)")
        except (ClientError, BotoCoreError) as inner:
            status, reason = "unknown", f"describe_endpoint failed too: {inner}"
        raise DemoError(f"endpoint {ENDPOINT} did not come InService ({status}): {reason}") from exc


def teardown(sm) -> None:
    """Delete what deploy created; a resource that is already gone is fine."""
    steps = [("delete_endpoint", {"EndpointName": ENDPOINT})]
    steps.append(("delete_endpoint_config", {"EndpointConfigName": ENDPOINT_CONFIG}))
    steps += [("delete_model", {"ModelName": name}) for name in MODELS.values()]
    for op, kwargs in steps:
        try:
            getattr(sm, op)(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            message = exc.response.get("Error", {}).get("Message", "")
            if "NotFound" not in code and "Could not find" not in message:
                console.print(f"[yellow]{op}({kwargs}) failed:[/] {escape(f'{code} {message}')}", soft_wrap=True)
        except BotoCoreError as exc:
            console.print(f"[yellow]{op}({kwargs}) failed:[/] {escape(str(exc))}", soft_wrap=True)


def invoke(runtime, review: dict) -> Result:
    result = Result(review)
    start = time.perf_counter()
    try:
        resp = runtime.invoke_endpoint(
            EndpointName=ENDPOINT, ContentType="text/csv", Accept="application/json", Body=review["text"]
        )
        body = json.loads(resp["Body"].read())
        result.latency_ms = (time.perf_counter() - start) * 1000
        result.variant = resp.get("InvokedProductionVariant")
        result.label = body["predictions"][0]["label"]
    except (ClientError, BotoCoreError, ValueError, KeyError, IndexError) as exc:
        result.latency_ms = (time.perf_counter() - start) * 1000
        result.error = f"{type(exc).__name__}: {exc}"
    return result


# ---------------------------------------------------------------------------------------------- report


def pct(values: list[float], q: float) -> str:
    return f"{np.percentile(values, q):.1f}" if values else "-"


def report(results: list[Result], trained: TrainResult, url: str, home: Path, wall_s: float) -> None:
    ok = [r for r in results if r.error is None]
    table = Table(title=f"{len(results)} invocations of endpoint {ENDPOINT!r} in {wall_s:.1f} s ({THREADS} threads)")
    for column in ("variant", "model", "requests", "share", "weight", "served acc."):
        table.add_column(column, justify="left" if column in ("variant", "model") else "right", no_wrap=True)
    for column in ("held-out acc.", "p50 ms", "p90 ms", "p99 ms"):
        table.add_column(column, justify="right")
    for variant, spec in VARIANTS.items():
        rows = [r for r in ok if r.variant == variant]
        latencies = [r.latency_ms for r in rows]
        accuracy = f"{sum(r.correct for r in rows) / len(rows):.1%}" if rows else "-"
        table.add_row(
            variant, SHORT_NAMES[variant], str(len(rows)), f"{len(rows) / max(len(ok), 1):.0%}",
            f"{spec['weight']:.0%}", accuracy, f"{trained.accuracy[variant]:.1%}",
            pct(latencies, 50), pct(latencies, 90), pct(latencies, 99),
        )  # fmt: skip
    latencies = [r.latency_ms for r in ok]
    accuracy = f"{sum(r.correct for r in ok) / len(ok):.1%}" if ok else "-"
    table.add_section()
    table.add_row(
        "total", "", str(len(ok)), "100%", "100%", accuracy, "", pct(latencies, 50), pct(latencies, 90),
        pct(latencies, 99), style="bold",
    )  # fmt: skip
    console.print(table)
    errors = [r for r in results if r.error]
    if errors:
        console.print(f"[red]{len(errors)} invocations failed[/], e.g. {escape(str(errors[0].error))}", soft_wrap=True)

    samples = Table(title="Sample predictions", show_lines=False)
    for column in ("review", "predicted", "truth", "variant"):
        samples.add_column(column, overflow="fold" if column == "review" else "ellipsis")
    for r in ok[:: max(1, len(ok) // 6)][:6]:
        text = r.review["text"]
        mark = "green" if r.correct else "red"
        samples.add_row(
            escape(text if len(text) <= 90 else text[:87] + "..."),
            f"[{mark}]{r.label}[/]",
            str(r.review["sentiment"]),
            str(r.variant),
        )
    console.print(samples)

    per_vendor = Counter(r.review["vendor"] for r in ok)
    negative = Counter(r.review["vendor"] for r in ok if r.label == "negative")
    truly_negative = Counter(r.review["vendor"] for r in ok if r.review["sentiment"] == "negative")
    vendors = Table(title="Vendors with the most reviews predicted negative (served traffic)")
    for column in ("vendor", "negative", "reviews", "share negative", "truly negative"):
        vendors.add_column(column, justify="left" if column == "vendor" else "right")
    for vendor, count in negative.most_common(5):
        vendors.add_row(
            vendor, str(count), str(per_vendor[vendor]), f"{count / per_vendor[vendor]:.0%}",
            str(truly_negative[vendor]),
        )  # fmt: skip
    console.print(vendors)

    measured = server_metrics(url)
    if measured:
        metrics = Table(title=f"What the server measured (GET {url}/metrics)")
        for column in ("variant", "invocations", "errors", "mean model latency ms", "mean overhead ms"):
            metrics.add_column(column, justify="left" if column == "variant" else "right")
        for variant, m in sorted(measured.items()):
            metrics.add_row(variant, f"{m['invocations']:.0f}", f"{m['errors']:.0f}",
                            f"{1000 * m['model_sum'] / max(m['model_count'], 1):.2f}",
                            f"{1000 * m['overhead_sum'] / max(m['overhead_count'], 1):.2f}")
        console.print(metrics)

    rel_home = os.path.relpath(home, Path.cwd())
    console.print("\n[bold]Where to look[/]")
    console.print(f"  server URL        {url}   (GET {url}/healthz)")
    console.print(f"  metrics           GET {url}/metrics (Prometheus); stored per minute: "
                  f".venv/bin/moorage metrics {ENDPOINT} --home {rel_home}")
    console.print(f"  credentials       {home / 'credentials'}   (AWS shared-credentials INI, profile default)")
    console.print(f"  home directory    {home}")
    console.print(f"  server log        {home / 'server.log'}")
    console.print(f"  instance logs     {home / 'logs'}/")
    console.print(f"  model artifacts   {home / 'artifacts'}/  (held-out accuracy in metrics.json)")
    console.print("  by hand           " + f".venv/bin/moorage serve --home {rel_home}")
    console.print("                    " + f".venv/bin/moorage endpoints --home {rel_home}")


def server_metrics(url: str) -> dict[str, dict[str, float]]:
    """Per variant: invocations, errors and latency sums from the server's Prometheus exposition."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return {}
    wanted = {"moorage_invocations_total": "invocations", "moorage_invocation_5xx_errors_total": "errors",
              "moorage_model_latency_seconds_sum": "model_sum", "moorage_model_latency_seconds_count": "model_count",
              "moorage_overhead_latency_seconds_sum": "overhead_sum",
              "moorage_overhead_latency_seconds_count": "overhead_count"}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get(sample.name)
            if key and sample.labels.get("endpoint") == ENDPOINT and sample.labels.get("instance_id"):
                row = out.setdefault(sample.labels["variant"], dict.fromkeys(wanted.values(), 0.0))
                row[key] += sample.value
    return out


# ------------------------------------------------------------------------------------------------ main


def refuse_if_running(home: Path) -> None:
    """Wiping the home under a live server (say one started by hand) would break it; ask instead."""
    try:
        pid = json.loads((home / SERVER_FILE).read_text())["pid"]
        proc = psutil.Process(pid)
        running = proc.is_running() and "moorage" in " ".join(proc.cmdline())
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return
    if running:
        raise DemoError(f"a moorage server (pid {pid}) is still using {home}; stop it first (kill {pid})")


def run(keep: bool) -> int:
    started = time.perf_counter()
    refuse_if_running(HOME)
    if HOME.exists():
        shutil.rmtree(HOME)
    HOME.mkdir(parents=True)

    with console.status("training variants A and B"):
        trained = train_variants(HOME / "artifacts")
    for variant, path in trained.artifacts.items():
        console.print(
            f"trained variant {variant} ({VARIANT_DESCRIPTIONS[variant]}): held-out accuracy "
            f"{trained.accuracy[variant]:.1%} -> {os.path.relpath(path)}",
            soft_wrap=True,
        )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(HOME, port)
    console.print(f"started moorage serve (pid {proc.pid}) on {url}, log in {os.path.relpath(HOME / 'server.log')}")
    sm = None
    try:
        wait_healthy(proc, url, HOME)
        creds = read_credentials(HOME)
        if creds is None:
            raise DemoError(f"the server is up but wrote no credentials to {HOME / 'credentials'}")
        session = boto3.session.Session(
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            region_name=REGION,
        )
        config = Config(max_pool_connections=THREADS * 2, retries={"max_attempts": 2, "mode": "standard"})
        sm = session.client("sagemaker", endpoint_url=url, config=config)
        runtime = session.client("sagemaker-runtime", endpoint_url=url, config=config)

        t0 = time.perf_counter()
        with console.status(f"creating endpoint {ENDPOINT!r} (A: 2 instances, weight 0.9; B: 1, weight 0.1)"):
            deploy(sm, trained.artifacts)
        console.print(f"endpoint {ENDPOINT!r} is InService after {time.perf_counter() - t0:.1f} s")

        reviews = trained.test[:N_REQUESTS]
        t0 = time.perf_counter()
        with console.status(f"sending {len(reviews)} held-out reviews"), ThreadPoolExecutor(THREADS) as pool:
            results = list(pool.map(lambda review: invoke(runtime, review), reviews))
        wall_s = time.perf_counter() - t0
        console.print()
        report(results, trained, url, HOME, wall_s)
        failed = sum(r.error is not None for r in results)
        if failed:
            raise DemoError(f"{failed} of {len(results)} invocations failed; see {HOME / 'server.log'}")
    finally:
        if sm is not None and not keep:
            teardown(sm)
        stop_server(proc)
        how = ".venv/bin/moorage serve --home .demo-home"
        kept = " (the endpoint was kept: it comes back when the server starts)" if keep and sm else ""
        console.print(
            f"\nstopped the server (pid {proc.pid}, exit code {proc.returncode}){kept}. "
            f"Start it again with: [bold]{how}[/]",
            soft_wrap=True,
        )
    console.print(f"demo finished in {time.perf_counter() - started:.1f} s")
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description="The product-review sentiment demo (make demo).")
    parser.add_argument(
        "--keep", action="store_true", help="keep the endpoint and models in .demo-home (the server still stops)"
    )
    args = parser.parse_args()
    try:
        code = run(args.keep)
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {escape(str(exc))}", soft_wrap=True)
        code = 1
    except (ClientError, BotoCoreError) as exc:
        console.print(f"[bold red]demo failed: a SageMaker call was refused:[/] {escape(str(exc))}", soft_wrap=True)
        code = 1
    except KeyboardInterrupt:
        console.print("[red]interrupted[/]")
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
