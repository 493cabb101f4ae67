"""Soak: a long run of mixed traffic through everything an operator does to a live endpoint.

    .venv/bin/python bench/soak.py                  # 3 minutes (a quick look)
    .venv/bin/python bench/soak.py --minutes 30     # the issue's soak
    .venv/bin/python bench/soak.py --minutes 10 --clients 6 --rate 80

One `moorage serve` (its own home, a 5 s metrics period), one endpoint with a scikit-learn model,
data capture at 100 % and a target-tracking policy (1 to 3 instances). Well-formed clients invoke it
all along at a bounded rate, each request with its own InferenceId; an attacker thread meanwhile
opens slow-header connections, sends oversize and malformed bodies and unsigned requests. Over the
run, at fixed fractions of it: a burst of load (scale-out), a blue/green UpdateEndpoint (canary), an
instance killed with SIGKILL, a server restart (SIGTERM, then the same home), the load lowered again
(scale-in). Every 5 s a sampler records the router's and the instances' RSS and the last window's p99.

It reports, per phase, the well-formed requests and how many failed (target: 0 outside the kill and
restart windows, whose failures are counted apart), RSS and p99 at the start, the peak and the end
(target: flat, the end within 1.5x of the first minute), what the attacker got (4xx answers and
closed connections, never a 5xx), and the capture records lost: every InferenceId answered 200 must
be in the capture files after the clean stop (target 0). Results also go to
bench/results/soak-<timestamp>.json.

Hand-written on threads and http.client rather than wrk: the run mixes control-plane calls, process
kills and a restart with the load, and every request's InferenceId must be matched to capture later.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import psutil
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
KEY, SECRET, REGION = "MRGSOAKSOAKSOAKSOAK1", "soak-secret-key-not-for-production-use", "us-east-1"
ENDPOINT = "soak"
FEATURES = 8
# When each event happens, as a fraction of the run.
EVENTS = {"burst": 0.15, "update": 0.30, "kill": 0.50, "restart": 0.70, "calm": 0.85}
SETTLE_S = 15.0  # after a kill or a restart, failures within this long are the event's, not the platform's


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# -- the server -----------------------------------------------------------------------------------------
class Server:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MOORAGE_", "AWS_"))}
        env.update(MOORAGE_ACCESS_KEY_ID=KEY, MOORAGE_SECRET_ACCESS_KEY=SECRET, MOORAGE_METRICS_PERIOD="5",
                   MOORAGE_AUTOSCALE_SCALE_OUT_DATAPOINTS="2", MOORAGE_AUTOSCALE_SCALE_IN_DATAPOINTS="4")
        with open(self.home / "soak-server.log", "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "moorage", "serve", "--host", "127.0.0.1",
                                          "--port", str(self.port), "--home", str(self.home)],
                                         stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.time() + 90
        while time.time() < deadline:
            with contextlib.suppress(OSError):
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    return
            if self.proc.poll() is not None:
                raise SystemExit(f"moorage serve exited with {self.proc.returncode}; see {self.home}/soak-server.log")
            time.sleep(0.2)
        raise SystemExit("moorage serve did not answer /healthz within 90 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def rss(self) -> tuple[float, float]:
        """(router MiB, instances MiB) now."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0, 0.0
        try:
            router = psutil.Process(self.proc.pid)
            children = router.children(recursive=True)
            return router.memory_info().rss / 2**20, sum(_rss(c) for c in children) / 2**20
        except psutil.Error:
            return 0.0, 0.0

    def client(self, service: str) -> Any:
        return boto3.client(service, endpoint_url=self.url, region_name=REGION, aws_access_key_id=KEY,
                            aws_secret_access_key=SECRET, config=Config(retries={"max_attempts": 1}))


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.Error:
        return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the model and the endpoint -------------------------------------------------------------------------
def _model_archive(workdir: Path) -> Path:
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(7)
    X = rng.normal(size=(2000, FEATURES))
    y = (X[:, 0] + X[:, 1] * X[:, 2] > 0).astype(int)
    model_file = workdir / "model.joblib"
    joblib.dump(GradientBoostingClassifier(n_estimators=30).fit(X, y), model_file)
    archive = workdir / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(model_file, arcname="model.joblib")
    return archive


def deploy(server: Server, archive: Path, capture_dir: Path) -> None:
    sm = server.client("sagemaker")
    for name in ("soak-a", "soak-b"):
        sm.create_model(ModelName=name, ExecutionRoleArn="arn:aws:iam::000000000000:role/soak",
                        PrimaryContainer={"Image": "sklearn", "ModelDataUrl": archive.as_uri()})
        sm.create_endpoint_config(
            EndpointConfigName=name,
            ProductionVariants=[{"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
                                 "InstanceType": "ml.m5.large", "InitialVariantWeight": 1.0}],
            DataCaptureConfig={"EnableCapture": True, "InitialSamplingPercentage": 100,
                               "DestinationS3Uri": capture_dir.as_uri(),
                               "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]})
    sm.create_endpoint(EndpointName=ENDPOINT, EndpointConfigName="soak-a")
    sm.get_waiter("endpoint_in_service").wait(EndpointName=ENDPOINT, WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    scaling = server.client("application-autoscaling")
    resource = f"endpoint/{ENDPOINT}/variant/AllTraffic"
    scaling.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, MinCapacity=1, MaxCapacity=3,
                                     ScalableDimension="sagemaker:variant:DesiredInstanceCount")
    scaling.put_scaling_policy(
        PolicyName="soak", ServiceNamespace="sagemaker", ResourceId=resource, PolicyType="TargetTrackingScaling",
        ScalableDimension="sagemaker:variant:DesiredInstanceCount",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 400.0, "ScaleInCooldown": 10, "ScaleOutCooldown": 10,
            "PredefinedMetricSpecification": {"PredefinedMetricType": "SageMakerVariantInvocationsPerInstance"}})


# -- traffic ---------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    at: float
    seconds: float
    status: int  # 0: no answer (connection refused or cut)
    inference_id: str


@dataclass
class Run:
    started: float
    outcomes: list[Outcome] = field(default_factory=list)
    events: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, float]] = field(default_factory=list)
    attacker: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    clients: int = 0


class Client(threading.Thread):
    """One well-formed client: signed InvokeEndpoint at its share of the rate, on a kept-alive connection."""

    def __init__(self, server: Server, run: Run, stop: threading.Event, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.server, self.run_state, self.stop, self.rate = server, run, stop, rate
        self.rng = random.Random(seed)
        self.credentials = Credentials(KEY, SECRET)

    def run(self) -> None:
        conn: http.client.HTTPConnection | None = None
        path = f"/endpoints/{ENDPOINT}/invocations"
        while not self.stop.is_set():
            row = ",".join(f"{self.rng.gauss(0, 1):.4f}" for _ in range(FEATURES)).encode()
            inference_id = uuid.uuid4().hex
            request = AWSRequest(method="POST", url=self.server.url + path, data=row, headers={
                "Content-Type": "text/csv", "X-Amzn-SageMaker-Inference-Id": inference_id})
            SigV4Auth(self.credentials, "sagemaker", REGION).add_auth(request)
            began = time.monotonic()
            status = 0
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
                conn.request("POST", path, body=row, headers=dict(request.headers.items()))
                reply = conn.getresponse()
                reply.read()
                status = reply.status
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
            elapsed = time.monotonic() - began
            with self.run_state.lock:
                self.run_state.outcomes.append(Outcome(time.time(), elapsed, status, inference_id))
            self.stop.wait(max(0.0, self.rng.expovariate(self.rate) - elapsed) if status else 0.2)


class Attacker(threading.Thread):
    """Slow headers, oversize and malformed bodies, unsigned requests: none of it may cost the others."""

    def __init__(self, server: Server, run: Run, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.run_state, self.stop = server, run, stop

    def count(self, what: str) -> None:
        with self.run_state.lock:
            self.run_state.attacker[what] = self.run_state.attacker.get(what, 0) + 1

    def run(self) -> None:
        attacks = [self.slow_headers, self.oversize, self.malformed, self.unsigned]
        i = 0
        while not self.stop.is_set():
            try:
                attacks[i % len(attacks)]()
            except OSError:
                self.count("connection refused or reset")
            i += 1
            self.stop.wait(0.5)

    def _status(self, sock: socket.socket) -> str:
        try:
            first = sock.recv(64).split(b"\r\n", 1)[0].decode("latin-1")
        except OSError:
            return "closed"
        if not first:
            return "closed"
        code = first.split(" ")[1] if " " in first else "?"
        return f"{code[0]}xx" if code[:1].isdigit() else code

    def slow_headers(self) -> None:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=45) as sock:
            sock.sendall(b"POST /endpoints/soak/invocations HTTP/1.1\r\nHost: x\r\n")
            for _ in range(5):  # a header every second, never finishing the block
                if self.stop.wait(1.0):
                    return
                with contextlib.suppress(OSError):
                    sock.sendall(b"X-Slow: 1\r\n")
            self.count(f"slow headers: still open after 5 s ({self._status_nowait(sock)})")

    def _status_nowait(self, sock: socket.socket) -> str:
        sock.settimeout(0.01)
        try:
            data = sock.recv(64)
            return "answered" if data else "closed"
        except TimeoutError:
            return "open"
        except OSError:
            return "closed"

    def oversize(self) -> None:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as sock:
            sock.sendall(b"POST /endpoints/soak/invocations HTTP/1.1\r\nHost: x\r\nContent-Type: text/csv\r\n"
                         b"Content-Length: 7340032\r\n\r\n")
            with contextlib.suppress(OSError):
                sock.sendall(b"1," * 65536)
            self.count(f"7 MB body: {self._status(sock)}")

    def malformed(self) -> None:
        with socket.create_connection(("127.0.0.1", self.server.port), timeout=30) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nX-Amz-Target: SageMaker.CreateEndpoint\r\n"
                         b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 9\r\n\r\n{\"a\":[1,2")
            self.count(f"malformed JSON, unsigned: {self._status(sock)}")

    def unsigned(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            conn.request("POST", "/endpoints/soak/invocations", body=io.BytesIO(b"1,2,3"),
                         headers={"Content-Type": "text/csv", "Content-Length": "5"})
            status = conn.getresponse().status
            self.count(f"unsigned invocation: {status // 100}xx")
        finally:
            conn.close()


def sampler(server: Server, run: Run, stop: threading.Event) -> None:
    while not stop.wait(5.0):
        router, instances = server.rss()
        now = time.time()
        with run.lock:
            recent = [o.seconds for o in run.outcomes if o.status == 200 and o.at > now - 5]
        p99 = float(np.percentile(recent, 99) * 1000) if len(recent) >= 20 else float("nan")
        run.samples.append({"t": now - run.started, "router_mib": router, "instances_mib": instances,
                            "p99_ms": p99, "rps": len(recent) / 5.0})


# -- events ----------------------------------------------------------------------------------------------
def kill_an_instance(server: Server) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    request = AWSRequest(method="GET", url=f"{server.url}/moorage/v1/endpoints/{ENDPOINT}")
    SigV4Auth(Credentials(KEY, SECRET), "sagemaker", REGION).add_auth(request)
    conn.request("GET", f"/moorage/v1/endpoints/{ENDPOINT}", headers=dict(request.headers.items()))
    document = json.loads(conn.getresponse().read())
    pids = [i["Pid"] for v in document["Variants"] for i in v.get("Instances", []) if i.get("Pid")]
    if not pids:
        return "no instance to kill"
    os.kill(pids[0], signal.SIGKILL)
    return f"killed instance pid {pids[0]} (of {len(pids)})"


def update(server: Server) -> str:
    sm = server.client("sagemaker")
    sm.update_endpoint(EndpointName=ENDPOINT, EndpointConfigName="soak-b", DeploymentConfig={
        "BlueGreenUpdatePolicy": {"TrafficRoutingConfiguration": {
            "Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 5}, "TerminationWaitInSeconds": 0}})
    return "UpdateEndpoint to soak-b (blue/green, all at once, 5 s bake)"


# -- the report ------------------------------------------------------------------------------------------
def captured_ids(capture_dir: Path) -> set[str]:
    found: set[str] = set()
    for path in capture_dir.rglob("*.jsonl"):
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError, KeyError):
                found.add(json.loads(line)["eventMetadata"]["inferenceId"])
    return found


def report(run: Run, capture_dir: Path, duration: float) -> dict[str, Any]:
    outcomes = sorted(run.outcomes, key=lambda o: o.at)
    excused: list[tuple[float, float]] = []
    for name in ("kill", "restart"):
        if name in run.events:
            begin = run.events[name]
            end = run.events.get(f"{name}-done", begin) + SETTLE_S
            excused.append((begin, end))
    boundaries = sorted([(0.0, "steady")] + [(at - run.started, name) for name, at in run.events.items()
                                                if not name.endswith("-done")])
    phases: list[dict[str, Any]] = []
    for index, (begin, name) in enumerate(boundaries):
        end = boundaries[index + 1][0] if index + 1 < len(boundaries) else duration + 60
        window = [o for o in outcomes if begin <= o.at - run.started < end]
        failed = [o for o in window if o.status != 200]
        in_event = [o for o in failed if any(a <= o.at <= b for a, b in excused)]
        ok = [o.seconds for o in window if o.status == 200]
        phases.append({"phase": name, "from_s": round(begin), "requests": len(window),
                       "failed": len(failed) - len(in_event), "failed_in_event_window": len(in_event),
                       "p50_ms": round(statistics.median(ok) * 1000, 2) if ok else None,
                       "p99_ms": round(float(np.percentile(ok, 99)) * 1000, 2) if len(ok) >= 20 else None})
    answered = {o.inference_id for o in outcomes if o.status == 200}
    lost = answered - captured_ids(capture_dir)
    first = [s for s in run.samples if s["t"] <= 60] or run.samples[:1]
    events = {k: round(v - run.started, 1) for k, v in run.events.items()}
    summary: dict[str, Any] = {"phases": phases, "events": events, "attacker": run.attacker,
                               "answered": len(answered), "capture_lost": len(lost)}
    for key in ("router_mib", "instances_mib", "p99_ms"):
        values = [s[key] for s in run.samples if s[key] == s[key]]
        start = [s[key] for s in first if s[key] == s[key]]
        if values and start:
            summary[key] = {"first_minute": round(statistics.median(start), 1), "peak": round(max(values), 1),
                            "end": round(values[-1], 1), "end_ratio": round(values[-1] / statistics.median(start), 2)}
    summary["samples"] = run.samples
    return summary


def print_report(summary: dict[str, Any]) -> None:
    print()
    print(f"{'phase':<10} {'from s':>7} {'requests':>9} {'failed':>7} {'in event':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for p in summary["phases"]:
        p50 = p["p50_ms"] if p["p50_ms"] is not None else "-"
        p99 = p["p99_ms"] if p["p99_ms"] is not None else "-"
        print(f"{p['phase']:<10} {p['from_s']:>7} {p['requests']:>9} {p['failed']:>7} "
              f"{p['failed_in_event_window']:>9} {p50:>8} {p99:>8}")
    print()
    print(f"{'measure':<16} {'first minute':>13} {'peak':>8} {'end':>8} {'end/first':>10}  target")
    for key, target in (("router_mib", "flat (<= 1.5x)"), ("instances_mib", "flat (<= 1.5x)"),
                        ("p99_ms", "flat (<= 1.5x)")):
        if key in summary:
            m = summary[key]
            verdict = "PASS" if m["end_ratio"] <= 1.5 else "FAIL"
            print(f"{key:<16} {m['first_minute']:>13} {m['peak']:>8} {m['end']:>8} {m['end_ratio']:>9}x  "
                  f"{target} {verdict}")
    failed = sum(p["failed"] for p in summary["phases"])
    print()
    print(f"well-formed requests failed outside the kill/restart windows: {failed} (target 0) "
          f"{'PASS' if failed == 0 else 'FAIL'}")
    print(f"capture records lost after the clean stop: {summary['capture_lost']} of {summary['answered']} answered "
          f"(target 0) {'PASS' if summary['capture_lost'] == 0 else 'FAIL'}")
    print("attacker:", ", ".join(f"{k} x{v}" for k, v in sorted(summary["attacker"].items())) or "-")
    print("events (s):", ", ".join(f"{k} {v}" for k, v in summary["events"].items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the run (the issue's soak: 30)")
    parser.add_argument("--clients", type=int, default=4, help="well-formed client threads")
    parser.add_argument("--rate", type=float, default=40.0, help="requests per second over all clients (steady)")
    args = parser.parse_args()
    duration = args.minutes * 60
    workdir = Path(tempfile.mkdtemp(prefix="moorage-soak-"))
    home, capture_dir = workdir / "home", workdir / "capture"
    home.mkdir()
    capture_dir.mkdir()
    server = Server(home)
    log(f"soak of {args.minutes:g} min in {workdir}")
    server.start()
    deploy(server, _model_archive(workdir), capture_dir)
    run = Run(started=time.time())
    stop, stop_clients = threading.Event(), threading.Event()
    threads: list[threading.Thread] = [Client(server, run, stop_clients, args.rate / args.clients, seed=i)
                                       for i in range(args.clients)]
    burst = [Client(server, run, stop_clients, args.rate / args.clients * 2, seed=100 + i) for i in range(args.clients)]
    threads += [Attacker(server, run, stop), threading.Thread(target=sampler, args=(server, run, stop), daemon=True)]
    for thread in threads:
        thread.start()
    calm = threading.Event()
    try:
        for name, fraction in sorted(EVENTS.items(), key=lambda item: item[1]):
            time.sleep(max(0.0, run.started + fraction * duration - time.time()))
            run.events[name] = time.time()
            if name == "burst":
                for client in burst:
                    client.stop = calm
                    client.start()
                log(f"burst: {len(burst)} more clients")
            elif name == "update":
                log(update(server))
            elif name == "kill":
                log(kill_an_instance(server))
                run.events["kill-done"] = time.time()
            elif name == "restart":
                server.stop()
                server.start()
                run.events["restart-done"] = time.time()
                log("server restarted")
            elif name == "calm":
                calm.set()
                log("burst clients stopped")
        time.sleep(max(0.0, run.started + duration - time.time()))
    finally:
        calm.set()
        stop_clients.set()
        stop.set()
        for thread in threads + burst:
            if thread.ident is not None:
                thread.join(60)
        server.stop()  # a clean stop: capture writes what it holds
    summary = report(run, capture_dir, duration)
    print_report(summary)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(summary, indent=1, default=str))
    log(f"results in {out}; server log in {home / 'soak-server.log'}")


if __name__ == "__main__":
    main()
