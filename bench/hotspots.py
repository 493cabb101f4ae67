"""Where a server's time goes: py-spy on every Python process of the server under load.

Profiling perturbs what it measures, so it is an extra wrk run after the measured ones (its numbers
are not reported as results). Each process of the server's tree gets its own ``py-spy record``
(raw collapsed stacks, non-blocking sampling) pinned with wrk on the client core; the summary
gives, per process, its CPU use during the run (from /proc, not from samples) and the functions
with the most self and inclusive time (shares of that process's non-idle samples).
py-spy lives in ``bench/.envs/tools``.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from envs import ensure_env
from loadgen import HttpRequest, run_wrk

RATE = 250  # samples per second per process


def py_spy() -> Path:
    return ensure_env("tools").parent / "py-spy"


def _python_pids(server) -> list[tuple[int, str]]:
    out = []
    for p in server.processes():
        try:
            cmd = p.cmdline()
        except Exception:
            continue
        if not cmd or cmd[0] == "taskset":
            continue
        if "python" in Path(cmd[0]).name or any(c.endswith(".py") or c == "-m" for c in cmd[1:3]):
            out.append((p.pid, " ".join(cmd)[:160]))
    return out


def parse_raw(path: Path) -> Counter:
    stacks: Counter = Counter()
    if not path.exists():
        return stacks
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks[stack] += int(count)
    return stacks


def summarize(stacks: Counter, top: int = 12) -> dict:
    total = sum(stacks.values())
    self_time: Counter = Counter()
    inclusive: Counter = Counter()
    for stack, n in stacks.items():
        frames = stack.split(";")
        self_time[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n

    def pct(items):
        return [[frame, round(100.0 * n / total, 1)] for frame, n in items] if total else []

    return {
        "samples": total,
        "self_top": pct(self_time.most_common(top)),
        "inclusive_top": pct(inclusive.most_common(top * 2)),
    }


def profile_run(
    server, base_url: str, request: HttpRequest, connections: int, duration_s: float, outdir: Path, cpu: int | None
) -> dict:
    exe = py_spy()
    outdir.mkdir(parents=True, exist_ok=True)
    spies = []
    for pid, cmd in _python_pids(server):
        raw = outdir / f"{pid}.txt"
        argv = [
            str(exe),
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--nonblocking",
            "--nolineno",
            "--rate",
            str(RATE),
            "--duration",
            str(max(1, round(duration_s))),
            "--output",
            str(raw),
        ]
        if cpu is not None:
            argv = ["taskset", "-c", str(cpu), *argv]
        log = open(outdir / f"{pid}.log", "wb")  # noqa: SIM115
        spies.append((pid, cmd, raw, subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT), log))
    cpu_before = server.cpu_snapshot()
    wrk = run_wrk(base_url, request, connections, duration_s, cpu=cpu)
    cpu_after = server.cpu_snapshot()
    out = {"connections": connections, "rps_while_profiled": round(wrk.rps, 1), "processes": []}
    for pid, cmd, raw, proc, log in spies:
        try:
            proc.wait(duration_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        summary = summarize(parse_raw(raw))
        used = cpu_after.get(pid, ("", 0.0))[1] - cpu_before.get(pid, ("", 0.0))[1]
        summary.update(pid=pid, cmd=cmd, raw=str(raw), cpu_pct=round(100.0 * used / wrk.duration_s, 1))
        out["processes"].append(summary)
    return out


def format_profile(name: str, model: str, prof: dict, top: int = 8) -> list[str]:
    lines = [f"profile {name}/{model} at c={prof['connections']} ({prof['rps_while_profiled']} req/s while sampled)"]
    for p in prof["processes"]:
        lines.append(f"  pid {p['pid']} cpu {p['cpu_pct']}% ({p['samples']} samples): {p['cmd'][:100]}")
        for frame, pct in p["self_top"][:top]:
            lines.append(f"    self {pct:5.1f}%  {frame}")
    return lines
