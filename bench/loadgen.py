"""Load generation with wrk, pinned to its own core.

wrk replays one fixed request (method, exact body bytes, exact headers: for moorage that includes
the pre-computed SigV4 ``Authorization``), and a Lua ``done()`` prints the exact latency
percentiles and error counts as one JSON line, so nothing is scraped from wrk's rounded summary.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

INSTALL_HINT = "apt-get update && apt-get install -y wrk"
MARK = "BENCH_RESULT "


class LoadgenError(RuntimeError):
    pass


@dataclass
class HttpRequest:
    """One request exactly as it goes on the wire (minus Host and Content-Length, which wrk adds)."""

    path: str
    body: bytes
    headers: dict[str, str]
    method: str = "POST"


@dataclass
class WrkResult:
    connections: int
    duration_s: float
    requests: int
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    errors: dict[str, int]
    loadavg: list[float] | None = None
    # server CPU per request during the run (filled in by the caller)
    server_cpu: dict | None = None
    # CPU (% of one core) that processes other than the server and wrk used during the run
    others_cpu_pct: float | None = None
    # seconds waited for the machine to go quiet before the run (None: it never did)
    quiet_wait_s: float | None = None
    # all measured runs of this point when --repeat > 1 (this one is their median by req/s)
    repeats: list[dict] | None = None

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_wrk(install: bool = True) -> str:
    exe = shutil.which("wrk")
    if exe:
        return exe
    if install and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"[wrk] not found; running: {INSTALL_HINT}")
        rc = subprocess.call(["sh", "-c", INSTALL_HINT + " >/dev/null"])
        exe = shutil.which("wrk")
        if rc == 0 and exe:
            return exe
    raise LoadgenError(f"wrk is not installed; install it with: {INSTALL_HINT}")


def wrk_version(exe: str) -> str:
    out = subprocess.run([exe, "-v"], capture_output=True, text=True)
    match = re.search(r"wrk\s+(\S+)", out.stdout + out.stderr)
    return match.group(1) if match else "unknown"


def _lua_str(value: str | bytes) -> str:
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= code < 127:
            out.append(ch)
        else:
            out.append(f"\\{code:03d}")
    out.append('"')
    return "".join(out)


def lua_script(request: HttpRequest, body_file: Path) -> str:
    lines = [
        f"wrk.method = {_lua_str(request.method)}",
        f"local f = assert(io.open({_lua_str(str(body_file))}, 'rb'))",
        "wrk.body = f:read('*a')",
        "f:close()",
    ]
    for name, value in request.headers.items():
        lines.append(f"wrk.headers[{_lua_str(name)}] = {_lua_str(value)}")
    lines.append(
        """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.3f,'
    .. '"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\\n',
    "BENCH_RESULT ", summary.requests, summary.duration,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean,
    latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
"""
    )
    return "\n".join(lines) + "\n"


def run_wrk(
    base_url: str,
    request: HttpRequest,
    connections: int,
    duration_s: float,
    *,
    cpu: int | None = 1,
    threads: int = 1,
    timeout_s: float = 10.0,
    exe: str | None = None,
) -> WrkResult:
    exe = exe or ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        body_file = Path(tmp) / "body"
        body_file.write_bytes(request.body)
        script = Path(tmp) / "request.lua"
        script.write_text(lua_script(request, body_file))
        cmd = [
            exe,
            f"-t{threads}",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            f"--timeout={max(1, round(timeout_s))}s",
            "--latency",
            "-s",
            str(script),
            base_url.rstrip("/") + request.path,
        ]
        if cpu is not None:
            cmd = ["taskset", "-c", str(cpu), *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(MARK)), None)
    if proc.returncode != 0 or line is None:
        raise LoadgenError(f"wrk failed (rc={proc.returncode}): {(proc.stderr or proc.stdout)[-400:]}")
    data = json.loads(line[len(MARK) :])
    duration = data["duration_us"] / 1e6
    return WrkResult(
        connections=connections,
        duration_s=round(duration, 3),
        requests=data["requests"],
        rps=data["requests"] / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        mean_ms=data["mean_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        errors={k: data[k] for k in ("connect", "read", "write", "status", "timeout") if data[k]},
    )
