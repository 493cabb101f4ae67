"""Dashboard benchmark: the server time of each page with many endpoints and a week of metrics, and
the serving path's speed with the dashboard open and polling, in one run.

    .venv/bin/python bench/dashboard.py                          # 100 endpoints, 7 days at 300 s
    .venv/bin/python bench/dashboard.py --endpoints 20 --days 1  # a quick look

Part 1 (in one process, no sockets): a server's app (``MoorageApp``) over a fresh home, its store
seeded with ``--endpoints`` endpoints of two variants each (every tenth with an alarm) and, for each
variant, ``--days`` of the metrics the pages chart (invocations, 4xx/5xx, model and overhead latency
as KLL sketches, CPU) at ``--period`` seconds. Each page and chart JSON the dashboard serves is
requested ``--requests`` times through the app with a signed-in session; the table gives the median
and worst server time against the issue's target (a page under 200 ms).

Part 2 (real processes): moorage serving the bench's tabular model (router + instance pinned to one
core, wrk on another, as ``bench/serving.py``), measured in interleaved runs with the dashboard closed
and open: "open" is ``--tabs`` browser tabs, each fetching the endpoint's page and its charts' JSON
every ``--poll`` seconds as ``ui/static/app.js`` does (a tab polls every 5 s; the default, 4 tabs at
1 s, is twenty times that). The table gives p50 at c=1 and throughput at c=32 with the dashboard open
against closed; the target is no measurable effect (the difference within the runs' own spread).
Results also go to bench/results/dashboard-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import re
import statistics
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import numpy as np  # noqa: E402
from loadgen import WrkResult  # noqa: E402
from models import build  # noqa: E402
from servers import Moorage  # noqa: E402
from serving import bench_start, host_info, log, measure_once, paired_estimate, verify  # noqa: E402

PAGE_BUDGET_MS = 200.0
ADMIN = ("AKIADASHBOARDBENCH01", "dashboard-bench-secret")


# -- part 1: server time per page ---------------------------------------------------------------
def seed(app: Any, endpoints: int, days: float, period: int) -> int:
    """Endpoints, desired states, alarms and metrics in the app's store; returns the metric rows written."""
    from moorage.metrics.store import StatisticSet
    from moorage.metrics.vocabulary import (
        CPU_UTILIZATION,
        INVOCATION_4XX,
        INVOCATION_5XX,
        INVOCATION_NAMESPACE,
        INVOCATIONS,
        MICROSECONDS,
        MODEL_LATENCY,
        OVERHEAD_LATENCY,
        PERCENT,
        UTILIZATION_NAMESPACE,
        variant_dimensions,
    )
    from moorage.store.metadata import DesiredVariant

    store, metrics = app.store, app.metrics.store
    for i in range(endpoints):
        name = f"bench-{i:03d}"
        store.create("endpoint-config", name, app.ctx.arn("endpoint-config", name), {"ProductionVariants": [
            {"VariantName": v, "ModelName": name, "InstanceType": "ml.m5.large", "InitialInstanceCount": 1,
             "InitialVariantWeight": 1.0} for v in ("A", "B")]})
        store.create("endpoint", name, app.ctx.arn("endpoint", name),
                     {"EndpointConfigName": name, "DataCaptureConfig": {"EnableCapture": i % 2 == 0}},
                     status="InService")
        store.replace_desired(name, [DesiredVariant("A", 3.0, 1), DesiredVariant("B", 1.0, 1)])
        if i % 10 == 0:
            app.metrics.alarms.put_alarm(f"alarm-{name}", {
                "Namespace": INVOCATION_NAMESPACE, "MetricName": INVOCATION_5XX, "Statistic": "Average",
                "Dimensions": [{"Name": "EndpointName", "Value": name}, {"Name": "VariantName", "Value": "A"}],
                "Period": 60, "EvaluationPeriods": 1, "Threshold": 0.1, "ComparisonOperator": "GreaterThanThreshold"})
    rng = np.random.default_rng(0)
    now = (time.time() // period) * period
    rows, batch = 0, []
    for step in range(int(days * 86400 / period)):
        stamp = now - step * period
        for i in range(endpoints):
            for variant in ("A", "B"):
                dims = variant_dimensions(f"bench-{i:03d}", variant)
                latency = rng.gamma(2.0, 500.0, 32)
                batch += [StatisticSet.of_counts(INVOCATION_NAMESPACE, INVOCATIONS, dims, stamp, 50, 50),
                          StatisticSet.of_counts(INVOCATION_NAMESPACE, INVOCATION_4XX, dims, stamp, 1, 50),
                          StatisticSet.of_counts(INVOCATION_NAMESPACE, INVOCATION_5XX, dims, stamp, 0, 50),
                          StatisticSet.of_samples(INVOCATION_NAMESPACE, MODEL_LATENCY, dims, stamp, MICROSECONDS,
                                                  latency),
                          StatisticSet.of_samples(INVOCATION_NAMESPACE, OVERHEAD_LATENCY, dims, stamp, MICROSECONDS,
                                                  latency / 20),
                          StatisticSet.of_samples(UTILIZATION_NAMESPACE, CPU_UTILIZATION, dims, stamp, PERCENT,
                                                  np.asarray([20.0]))]
        if len(batch) >= 50_000:
            rows += metrics.write(batch)
            batch = []
    return rows + metrics.write(batch)


async def _asgi(app: Any, method: str, path: str, cookie: str) -> tuple[int, bytes]:
    path, _, query = path.partition("?")
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "root_path": "",
             "query_string": query.encode(), "headers": [(b"host", b"bench"), (b"cookie", cookie.encode())],
             "scheme": "http", "server": ("bench", 80), "client": ("127.0.0.1", 1), "http_version": "1.1",
             "asgi": {"version": "3.0"}}
    out: dict[str, Any] = {"status": 0, "body": b""}
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.sleep(3600)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        else:
            out["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out["body"]


def page_times(args: argparse.Namespace) -> list[dict[str, Any]]:
    from moorage.api.app import MoorageApp
    from moorage.config import Credentials, Settings
    from moorage.ui.context import Principal
    from moorage.ui.session import COOKIE

    home = Path(tempfile.mkdtemp(prefix="moorage-dashboard-bench-"))
    app = MoorageApp(Settings.load({}, home=home), [Credentials(*ADMIN)])
    started = time.monotonic()
    rows = seed(app, args.endpoints, args.days, args.period)
    log(f"seeded {args.endpoints} endpoints and {rows} metric rows ({args.days:g} days at {args.period} s) in "
        f"{time.monotonic() - started:.0f} s")
    _, cookie = app.ui.sessions.issue(Principal(ADMIN[0], "admin"))  # as the login issues one
    cookie = f"{COOKIE}={cookie}"
    middle = f"bench-{args.endpoints // 2:03d}"
    paths = [("endpoints list", "/ui/endpoints"), ("endpoint page", f"/ui/endpoints/{middle}")]
    paths += [(f"chart {chart} ({window})", f"/ui/endpoints/{middle}/charts/{chart}?window={window}")
              for chart in ("invocations", "model-latency", "overhead-latency", "errors", "instances")
              for window in ("hour", "day")]
    paths += [(label.lower(), path) for label, path in other_pages(app)]
    out = []

    async def run() -> None:
        for label, path in paths:
            times = []
            status, body = 0, b""
            for _ in range(args.requests + 2):
                began = time.perf_counter()
                status, body = await _asgi(app.ui, "GET", path, cookie)
                times.append((time.perf_counter() - began) * 1000)
            if status != 200:
                log(f"  {path}: {status} {body[:200]!r}")
                continue
            times = times[2:]  # the first two fill caches
            out.append({"page": label, "path": path, "median_ms": round(statistics.median(times), 2),
                        "max_ms": round(max(times), 2), "bytes": len(body)})

    asyncio.run(run())
    app.store.close()
    return out


def other_pages(app: Any) -> list[tuple[str, str]]:
    """The other pages' entry points (their NAV), whichever are present."""
    import importlib

    from moorage.ui.app import PAGES

    found = []
    for name in PAGES:
        if name == "endpoints":
            continue
        try:
            module = importlib.import_module(f"moorage.ui.pages.{name}")
        except ModuleNotFoundError:
            continue
        nav = getattr(module, "NAV", None)
        if nav:
            found.append((f"{nav[0]} page", nav[1]))
    return found


# -- part 2: the serving path with the dashboard open -----------------------------------------------
class DashboardTabs:
    """``tabs`` browser tabs on an endpoint's page: each signs in, then fetches the page and its charts'
    JSON every ``poll`` seconds (as app.js does), on its own keep-alive connection."""

    def __init__(self, port: int, endpoint: str, tabs: int, poll: float):
        self.port, self.endpoint, self.tabs, self.poll = port, endpoint, tabs, poll
        self.stop = threading.Event()
        self.fetched = 0
        self.failed = 0
        self.threads: list[threading.Thread] = []

    def _sign_in(self, conn: http.client.HTTPConnection) -> str:
        conn.request("GET", "/ui/login")
        reply = conn.getresponse()
        page = reply.read().decode()
        login_cookie = "; ".join(c.split(";", 1)[0] for c in reply.headers.get_all("set-cookie") or [])
        token = re.search(r'name="login_token" value="([^"]+)"', page)
        form = urllib.parse.urlencode({"access_key_id": Moorage.access_key, "secret_access_key": Moorage.secret_key,
                                       "login_token": token.group(1) if token else "", "next": "/ui/endpoints"})
        conn.request("POST", "/ui/login", body=form, headers={
            "content-type": "application/x-www-form-urlencoded", "cookie": login_cookie})
        reply = conn.getresponse()
        reply.read()
        cookies = [c.split(";", 1)[0] for c in reply.headers.get_all("set-cookie") or []]
        session = next((c for c in cookies if c.split("=", 1)[1]), "")
        if reply.status != 303 or not session:
            raise RuntimeError(f"dashboard sign-in failed: {reply.status}")
        return session

    def _tab(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        cookie = self._sign_in(conn)
        page = f"/ui/endpoints/{self.endpoint}"
        charts = [f"{page}/charts/{c}?window=hour" for c in ("invocations", "model-latency", "errors", "instances")]
        while not self.stop.is_set():
            for path in (page, *charts):
                conn.request("GET", path, headers={"cookie": cookie})
                reply = conn.getresponse()
                reply.read()
                self.fetched += 1
                self.failed += reply.status != 200
            self.stop.wait(self.poll)
        conn.close()

    def __enter__(self) -> DashboardTabs:
        self.stop.clear()
        self.threads = [threading.Thread(target=self._tab, daemon=True) for _ in range(self.tabs)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)


def serving_with_dashboard(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    models = build(["tabular"], workdir / "models")
    model = models[0]
    server = Moorage(workdir / "server", cpu=args.server_cpu)
    rows: list[dict[str, Any]] = []
    try:
        server.prepare()
        server.start(models)
        request = server.request(model)
        verify(server, model, request)
        endpoint = server.endpoint(model)
        for conns in (1, 32):
            runs: dict[str, list[WrkResult]] = {"closed": [], "open": []}
            fetched = failed = 0
            for i in range(args.repeat):
                for arm in (("closed", "open") if i % 2 == 0 else ("open", "closed")):
                    if arm == "open":
                        with DashboardTabs(server.port, endpoint, args.tabs, args.poll) as tabs:
                            time.sleep(min(1.0, args.poll))  # signed in and polling before the run
                            runs[arm].append(measure_once(server, model, request, conns, args))
                        fetched, failed = fetched + tabs.fetched, failed + tabs.failed
                    else:
                        runs[arm].append(measure_once(server, model, request, conns, args))
                    run = runs[arm][-1]
                    log(f"c={conns} dashboard {arm:>6}: {run.rps:8.1f} req/s p50 {run.p50_ms:.3f} ms")
            pairs = list(zip(runs["closed"], runs["open"], strict=True))
            rows.append({
                "connections": conns,
                "closed": {"rps": statistics.median(r.rps for r in runs["closed"]),
                           "p50_ms": statistics.median(r.p50_ms for r in runs["closed"])},
                "open": {"rps": statistics.median(r.rps for r in runs["open"]),
                         "p50_ms": statistics.median(r.p50_ms for r in runs["open"])},
                "p50_extra_ms": paired_estimate([b.p50_ms - a.p50_ms for a, b in pairs]),
                "rps_loss": paired_estimate([1 - b.rps / a.rps for a, b in pairs if a.rps]),
                "dashboard_requests": fetched, "dashboard_failures": failed})
    finally:
        server.stop()
    return rows


# -- main ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoints", type=int, default=100)
    p.add_argument("--days", type=float, default=7.0, help="days of metrics per variant")
    p.add_argument("--period", type=int, default=300, help="seconds per stored datapoint (300: the coarsest "
                   "MetricPublishFrequencyInSeconds)")
    p.add_argument("--requests", type=int, default=10, help="timed requests per page")
    p.add_argument("--skip-pages", action="store_true", help="leave out part 1")
    p.add_argument("--skip-serving", action="store_true", help="leave out part 2")
    p.add_argument("--tabs", type=int, default=4, help="dashboard tabs open during part 2's 'open' runs")
    p.add_argument("--poll", type=float, default=1.0, help="seconds between a tab's refreshes (app.js: 5)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per measured wrk run")
    p.add_argument("--repeat", type=int, default=4, help="runs per arm and connection count (interleaved)")
    p.add_argument("--quiet-wait", type=float, default=60.0)
    p.add_argument("--server-cpu", type=int, default=0)
    p.add_argument("--client-cpu", type=int, default=1)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report: list[str] = []
    pages: list[dict[str, Any]] = []
    serving: list[dict[str, Any]] = []
    if not args.skip_pages:
        pages = page_times(args)
        report += [f"dashboard pages: {args.endpoints} endpoints x 2 variants, {args.days:g} days of metrics at "
                   f"{args.period} s; server time over {args.requests} requests (in-process)",
                   f"{'page':34} {'median ms':>10} {'max ms':>8} {'bytes':>8}  target <= {PAGE_BUDGET_MS:g} ms"]
        for row in pages:
            verdict = "PASS" if row["median_ms"] <= PAGE_BUDGET_MS else "FAIL"
            report.append(f"{row['page']:34} {row['median_ms']:>10.1f} {row['max_ms']:>8.1f} {row['bytes']:>8}  "
                          f"{verdict}")
    if not args.skip_serving:
        if bench_start() is None:
            return 2
        with tempfile.TemporaryDirectory(prefix="moorage-dashboard-bench-") as tmp:
            serving = serving_with_dashboard(args, Path(tmp))
        report += ["", f"serving (tabular model) with the dashboard closed vs open ({args.tabs} tabs polling every "
                       f"{args.poll:g} s); {args.repeat} interleaved {args.duration:g} s runs per arm",
                   f"{'conc':>4} {'closed req/s':>12} {'open req/s':>11} {'closed p50':>10} {'open p50':>9} "
                   f"{'p50 open-closed ms (90% CI)':>30} {'req/s loss (90% CI)':>24} {'ui reqs':>8}"]
        for row in serving:
            e, lo = row["p50_extra_ms"], row["rps_loss"]
            p50 = f"{e['median']:+.3f} [{e['low']:+.3f}, {e['high']:+.3f}]"
            loss = f"{lo['median']:+.1%} [{lo['low']:+.1%}, {lo['high']:+.1%}]"
            failed = f" ({row['dashboard_failures']} failed)" if row["dashboard_failures"] else ""
            report.append(f"{row['connections']:>4} {row['closed']['rps']:>12.1f} {row['open']['rps']:>11.1f} "
                          f"{row['closed']['p50_ms']:>10.3f} {row['open']['p50_ms']:>9.3f} {p50:>30} {loss:>24} "
                          f"{row['dashboard_requests']:>8}{failed}")
    print("\n" + "\n".join(report))
    out = BENCH / "results" / f"dashboard-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"timestamp": stamp, "settings": vars(args), "host": host_info(), "pages": pages,
                               "serving": serving, "report": report}, indent=2, default=str))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
