"""Per-instance logs: rotation at the size limit, no line lost across rotations, the tail in FailureReason.

The writer is exercised directly, then through real instance processes (a bring-your-own server and
a built-in sklearn runtime) whose output goes through the pipe, and finally end to end: a server
that fails after a lot of output leaves rotated logs and its last line in the endpoint's FailureReason.
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from e2e_support import Deployer, file_url, tar_dir
from moorage.serving.instance import Instance, InstanceStartError
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.logs import LogPolicy, RotatingLog, clip_tail, rotated_paths


def numbered(n: int, width: int = 40) -> list[bytes]:
    return [f"line {i:06d} {'x' * (i % width)}\n".encode() for i in range(n)]


def read_all(path: Path, backups: int) -> list[bytes]:
    """The lines of every file of the log, oldest first."""
    out: list[bytes] = []
    for p in rotated_paths(path, backups):
        if p.exists():
            out.extend(p.read_bytes().splitlines(keepends=True))
    return out


def files_of(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + "*"))


# --------------------------------------------------------------------------------------------------
# the writer
# --------------------------------------------------------------------------------------------------
def test_rotation_happens_at_the_limit_and_keeps_every_line(tmp_path: Path) -> None:
    path = tmp_path / "i-1.log"
    lines = numbered(300)
    total = sum(map(len, lines))
    writer = RotatingLog(path, LogPolicy(max_bytes=1000, backups=total // 1000 + 5))
    data = b"".join(lines)
    rng = random.Random(7)
    pos = 0
    while pos < len(data):  # chunks that cut lines anywhere, as pipe reads do
        step = rng.randint(1, 300)
        writer.write(data[pos:pos + step])
        pos += step
    writer.close()
    files = [p for p in rotated_paths(path, writer.policy.backups) if p.exists()]
    assert len(files) >= total // 1000, files  # it rotated
    for p in files:
        content = p.read_bytes()
        assert len(content) <= 1000, (p, len(content))
        assert content.endswith(b"\n")  # rotation respects line boundaries
    assert read_all(path, writer.policy.backups) == lines  # nothing lost, nothing reordered


def test_only_the_configured_backups_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "i-2.log"
    lines = numbered(400)
    writer = RotatingLog(path, LogPolicy(max_bytes=500, backups=2))
    for line in lines:
        writer.write(line)
    writer.close()
    assert sorted(p.name for p in files_of(path)) == ["i-2.log", "i-2.log.1", "i-2.log.2"]
    kept = read_all(path, 2)
    assert kept == lines[-len(kept):]  # the newest lines, contiguous
    assert writer.tail(1) == lines[-1].decode().strip()


def test_no_backups_starts_the_file_over(tmp_path: Path) -> None:
    path = tmp_path / "i-3.log"
    writer = RotatingLog(path, LogPolicy(max_bytes=200, backups=0))
    for line in numbered(50):
        writer.write(line)
    writer.close()
    assert files_of(path) == [path]
    assert 0 < path.stat().st_size <= 200


def test_a_line_longer_than_the_limit_is_split_not_lost(tmp_path: Path) -> None:
    path = tmp_path / "i-4.log"
    writer = RotatingLog(path, LogPolicy(max_bytes=100, backups=10))
    writer.write(b"short\n")
    writer.write(b"y" * 250 + b"\n")
    writer.write(b"after\n")
    writer.close()
    joined = b"".join(read_all(path, 10))
    assert joined == b"short\n" + b"y" * 250 + b"\nafter\n"
    assert all(p.stat().st_size <= 100 for p in files_of(path))


def test_a_partial_last_line_is_written_at_close(tmp_path: Path) -> None:
    path = tmp_path / "i-5.log"
    writer = RotatingLog(path)
    writer.write(b"complete\nno newline yet")
    assert writer.tail() == "complete\nno newline yet"  # the tail has it at once
    writer.close()
    assert path.read_bytes() == b"complete\nno newline yet\n"


def test_policy_from_the_environment() -> None:
    assert LogPolicy.from_env({}) == LogPolicy(10 * 1024 * 1024, 3)
    container = {"MOORAGE_LOG_MAX_BYTES": "2048"}
    server = {"MOORAGE_LOG_MAX_BYTES": "4096", "MOORAGE_LOG_BACKUPS": "7"}
    assert LogPolicy.from_env(container, server) == LogPolicy(2048, 7)
    assert LogPolicy.from_env({"MOORAGE_LOG_MAX_BYTES": "lots"}, server) == LogPolicy(4096, 7)


def test_clip_tail_keeps_the_last_lines_whole() -> None:
    tail = "\n".join(f"line {i}" for i in range(100))
    clipped = clip_tail(tail, 50)
    assert len(clipped) <= 50 and clipped.endswith("line 99") and clipped.startswith("line ")


# --------------------------------------------------------------------------------------------------
# real instance processes
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def run_dirs() -> Iterator[tuple[Path, Path]]:
    root = Path(tempfile.mkdtemp(prefix="mlogs-"))  # short: Unix socket paths are limited
    try:
        yield root / "s", root / "l"
    finally:
        shutil.rmtree(root, ignore_errors=True)


CHATTY_SERVER = """\
import os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
for i in range(int(sys.argv[1])):
    print(f"line {i:06d} " + "z" * (i % 50))
sys.stdout.flush()

class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

HTTPServer(("127.0.0.1", int(os.environ["SAGEMAKER_BIND_TO_PORT"])), H).serve_forever()
"""

CHATTY_INFERENCE = """\
def model_fn(model_dir):
    for i in range(N):
        print(f"line {i:06d} " + "z" * (i % 50))
    return 1


def predict_fn(data, model):
    return data
"""


def run_instance(instance: Instance, timeout: float = 60) -> None:
    async def scenario() -> None:
        try:
            await asyncio.wait_for(instance.start(timeout=timeout), timeout + 10)
        finally:
            await asyncio.wait_for(instance.stop(drain_timeout=5, term_timeout=5), 30)

    asyncio.run(scenario())


def numbers_in(path: Path, backups: int) -> list[int]:
    return [int(m.group(1)) for line in read_all(path, backups) if (m := re.match(rb"line (\d{6}) ", line))]


LOG_ENV = {"MOORAGE_LOG_MAX_BYTES": "4096", "MOORAGE_LOG_BACKUPS": "200"}


def test_a_byo_servers_output_is_rotated_without_losing_lines(tmp_path: Path, run_dirs: tuple[Path, Path]) -> None:
    model = tmp_path / "chatty"
    model.mkdir()
    (model / "server.py").write_text(CHATTY_SERVER)
    launch = LaunchSpec(runtime="byo", model_dir=model, command=(sys.executable, "server.py", "3000"),
                        environment=LOG_ENV)
    instance = Instance(launch, *run_dirs)
    run_instance(instance)
    files = files_of(instance.log_path)
    assert len(files) > 10, files
    assert all(p.stat().st_size <= 4096 for p in files)
    assert numbers_in(instance.log_path, 200) == list(range(3000))
    assert instance.port is None  # its ports were given back


def test_a_builtin_runtimes_output_is_rotated_too(tmp_path: Path, run_dirs: tuple[Path, Path]) -> None:
    model = tmp_path / "chatty-sklearn"
    (model / "code").mkdir(parents=True)
    (model / "code" / "inference.py").write_text(CHATTY_INFERENCE.replace("N", "2000"))
    instance = Instance(LaunchSpec(runtime="sklearn", model_dir=model, environment=LOG_ENV), *run_dirs)
    run_instance(instance, timeout=90)
    assert len(files_of(instance.log_path)) > 5
    assert numbers_in(instance.log_path, 200) == list(range(2000))


def test_the_failure_reason_quotes_the_last_line_even_after_rotation(tmp_path: Path,
                                                                     run_dirs: tuple[Path, Path]) -> None:
    model = tmp_path / "dies"
    model.mkdir()
    (model / "serve").write_text(
        f"#!{sys.executable}\nimport sys\n"
        "for i in range(2000):\n    print('noise', i)\n"
        "print('fatal: the final words', file=sys.stderr)\nsys.exit(4)\n")
    (model / "serve").chmod(0o755)
    launch = LaunchSpec(runtime="byo", model_dir=model, command=(str(model / "serve"),),
                        environment={"MOORAGE_LOG_MAX_BYTES": "1024", "MOORAGE_LOG_BACKUPS": "1"})
    instance = Instance(launch, *run_dirs)
    with pytest.raises(InstanceStartError) as info:
        run_instance(instance)
    message = str(info.value)
    assert "fatal: the final words" in message and "exited with code 4" in message
    assert "noise 1999" in message
    assert sorted(p.name for p in files_of(instance.log_path)) == [instance.log_path.name,
                                                                   instance.log_path.name + ".1"]


# --------------------------------------------------------------------------------------------------
# end to end
# --------------------------------------------------------------------------------------------------
@pytest.mark.e2e
def test_failed_endpoint_has_the_log_tail_and_rotated_logs(deployer: Deployer, artifacts: Path) -> None:
    root = artifacts / "logs-dies" / "model"
    root.mkdir(parents=True)
    (root / "serve").write_text(
        f"#!{sys.executable}\nimport sys\n"
        "for i in range(3000):\n    print(f'starting step {i:05d}', flush=i % 100 == 0)\n"
        "print('fatal: out of patience at step 3000', file=sys.stderr)\nsys.exit(2)\n")
    (root / "serve").chmod(0o755)
    tar = tar_dir(root, root.parent / "model.tar.gz")
    env = {"MOORAGE_LOG_MAX_BYTES": "8192", "MOORAGE_LOG_BACKUPS": "2"}
    name = deployer.deploy("logs-dies", file_url(tar), image="byo", env=env, wait=False)
    desc: dict[str, Any] = deployer.wait_status(name, {"Failed", "InService"}, timeout=60)
    assert desc["EndpointStatus"] == "Failed", desc
    reason = desc["FailureReason"]
    assert "fatal: out of patience at step 3000" in reason, reason
    assert "starting step 02999" in reason, reason
    log_dir = deployer.server.home / "logs" / name / "AllTraffic"
    [live] = log_dir.glob("i-*.log")
    assert live.with_name(live.name + ".1").exists() and live.with_name(live.name + ".2").exists()
    assert not live.with_name(live.name + ".3").exists()
    assert all(p.stat().st_size <= 8192 for p in log_dir.iterdir())
    assert live.read_text().rstrip().endswith("fatal: out of patience at step 3000")
