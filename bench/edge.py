"""The edge agent next to the full server, serving the same model, in one run.

The model is serving.py's **tabular** one (``GradientBoostingClassifier``, 100 trees of depth 3, 20
float features; ``models.build_tabular``): its ``model.tar.gz`` is what an endpoint takes, and
``moorage edge compile`` (``moorage.compiler.compile_model``) turns it into a signed edge package.

Measured, each side by side with its baseline from the same run:

* **package size**: the endpoint's ``model.tar.gz`` against the edge package;
* **cold start**: ``moorage-edge serve`` from spawning the process to its first ``/ping`` 200 (median
  of ``--starts``), and an in-process ``Agent(...)`` (verify, load, self-test);
* **single-record latency**, p50/p99 of ``--requests`` sequential calls after a warm-up:
  ``Agent.predict([row])`` in-process (capture to a spool on), ``POST /invocations`` to the agent over
  one keep-alive connection, and ``POST /endpoints/NAME/invocations`` to ``moorage serve`` (router plus
  one instance, the request SigV4-signed once and replayed, as serving.py does) over one connection;
* **peak RSS**: the sum over each process tree (psutil, sampled every 20 ms from start to the end of
  its load): the agent's one process against the server's router and instance.

Both servers run pinned to core 0 (``taskset``, inherited by the instance); the client is not pinned.
Targets (issue 17): agent RSS under 25% of the server's, cold start under 1 s, p50 under 0.2 ms
in-process. Every answer is checked against the local prediction before it is timed.

    .venv/bin/python bench/edge.py [--requests 3000] [--starts 5]
"""

from __future__ import annotations

import argparse
import http.client
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from models import build_tabular  # noqa: E402
from servers import Moorage, PinnedProcess, free_port, http_call  # noqa: E402


class PeakRss:
    """The highest sum of RSS over a process tree, sampled in a thread."""

    def __init__(self, processes: Callable[[], list[psutil.Process]], interval_s: float = 0.02) -> None:
        self.processes = processes
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for process in self.processes():
                try:
                    total += process.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.02)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def tree(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def time_calls(call: Callable[[], object], requests: int, warmup: int = 200) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    samples = []
    clock = time.perf_counter
    for _ in range(requests):
        started = clock()
        call()
        samples.append(clock() - started)
    return percentiles(samples)


def keep_alive_caller(port: int, path: str, body: bytes, headers: dict[str, str],
                      check: Callable[[bytes], bool]) -> Callable[[], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def call() -> bytes:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
        return data

    first = call()
    if not check(first):
        raise RuntimeError(f"{path} answered {first!r}, not the local prediction")
    return call


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--starts", type=int, default=5)
    args = parser.parse_args()

    from moorage.compiler.compile import compile_model
    from moorage.edge import Agent
    from moorage.edge import package as edge_package

    rows: list[tuple[str, str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="moorage-bench-edge-") as temp:
        work = Path(temp)
        model = build_tabular(work)
        expected = str(model.expected[0])
        key = edge_package.generate_key()
        trusted = work / "trusted.pem"
        trusted.write_bytes(edge_package.public_key_pem(key))
        package = work / "tabular.edge.tar.gz"
        result = compile_model(str(model.tarball), package, signing_key=key, name="bench-tabular", version="1")
        original, packaged = model.tarball.stat().st_size, package.stat().st_size
        rows.append(("package size", f"{packaged / 1024:.1f} KiB", f"{original / 1024:.1f} KiB",
                     f"{packaged / original:.2f}x", "smaller"))
        print(f"compiled {model.tarball.name} -> {package.name}: {result.package_bytes} bytes", file=sys.stderr)

        # -- cold start: the process, and in-process
        starts = []
        for i in range(args.starts):
            port = free_port()
            started = time.perf_counter()
            proc = PinnedProcess([sys.executable, "-m", "moorage.edge.cli", "serve", str(package), "--port",
                                  str(port), "--trust-key", str(trusted)], work / f"start-{i}.log", cpu=0)
            try:
                while True:
                    if not proc.alive():
                        raise RuntimeError(f"moorage-edge exited: {proc.log_tail()}")
                    try:
                        if http_call(f"http://127.0.0.1:{port}/ping", timeout=2)[0] == 200:
                            break
                    except OSError:
                        time.sleep(0.005)
                starts.append(time.perf_counter() - started)
            finally:
                proc.stop()
        started = time.perf_counter()
        agent = Agent(package, spool=work / "inproc-spool", trust_keys=[trusted])
        in_process_start = time.perf_counter() - started
        rows.append(("cold start, moorage-edge serve to /ping", f"{statistics.median(starts) * 1000:.0f} ms", "",
                     "", "< 1000 ms"))
        rows.append(("cold start, Agent(...) in-process", f"{in_process_start * 1000:.0f} ms", "", "", ""))

        # -- in-process latency
        record = [model.record]
        if str(agent.predict(record)[0]) != expected:
            raise RuntimeError("the agent's prediction differs from the original model's")
        p50, p99 = time_calls(lambda: agent.predict(record), args.requests)
        agent.close()
        rows.append(("p50 / p99, Agent.predict in-process", f"{p50 * 1e6:.0f} / {p99 * 1e6:.0f} µs", "", "",
                     "p50 < 200 µs"))

        # -- the agent over HTTP, its RSS
        port = free_port()
        proc = PinnedProcess([sys.executable, "-m", "moorage.edge.cli", "serve", str(package), "--port", str(port),
                              "--trust-key", str(trusted), "--spool", str(work / "agent-spool")],
                             work / "agent.log", cpu=0)
        agent_rss = PeakRss(lambda: tree(proc.pid))
        try:
            from servers import wait_ready

            wait_ready(f"http://127.0.0.1:{port}/ping", proc, 30, "moorage-edge")
            call = keep_alive_caller(port, "/invocations", model.csv_body(),
                                     {"Content-Type": "text/csv", "Accept": "application/json"},
                                     lambda body: str(__import__("json").loads(body)[0]) == expected)
            edge_http = time_calls(call, args.requests)
        finally:
            agent_peak = agent_rss.stop()
            proc.stop()

        # -- the full server with the original model
        server = Moorage(work, cpu=0)
        server.prepare()
        server_rss = PeakRss(lambda: [p for root in server.processes()[:1] for p in tree(root.pid)])
        try:
            server.start([model])
            request = server.request(model)
            call = keep_alive_caller(server.port, request.path, request.body, dict(request.headers),
                                     lambda body: [str(v) for v in server.predictions(model, body)] == [expected])
            server_http = time_calls(call, args.requests)
        finally:
            server_peak = server_rss.stop()
            server.stop()

    rows.append(("p50 / p99 over HTTP, keep-alive", f"{edge_http[0] * 1e6:.0f} / {edge_http[1] * 1e6:.0f} µs",
                 f"{server_http[0] * 1e6:.0f} / {server_http[1] * 1e6:.0f} µs",
                 f"{edge_http[0] / server_http[0]:.2f}x", ""))
    rows.append(("peak RSS (process tree)", f"{agent_peak / 2**20:.1f} MiB", f"{server_peak / 2**20:.1f} MiB",
                 f"{agent_peak / server_peak:.1%}", "< 25%"))

    headers = ("measure", "edge agent (package)", "moorage serve (original)", "ratio", "target")
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    print(f"\n{args.requests} sequential single-record requests per row after 200 warm-up; "
          f"cold start: median of {args.starts}; {psutil.cpu_count()} CPUs; python {sys.version.split()[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
