"""Serving faults on real instance processes: a busy instance is not a dead one, timed-out work is isolated.

The model is a ``transform_fn`` that answers at once, except for a body ``slow``, on which it blocks until
the test creates a gate file (bounded). The instances are real ``python -m moorage.runtimes.server``
processes, with the fast path (inline prediction on the instance's event loop) forced on, which is
where a long prediction used to block ``/ping``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from loop_support import LoopThread
from moorage.serving.instance import InstanceState
from moorage.serving.instance_client import InstanceResponse
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers.local import LocalLauncher
from moorage.serving.pool import InstancePool
from moorage.serving.router import EndpointRoute, InvocationFailed, VariantRoute
from moorage.settings import InstanceSettings
from unit.test_serving import force_kill, gone, wait_until

CSV = b"content-type: text/csv\r\naccept: text/csv\r\n"

GATED = '''
import os
import time


HELD = []  # what "leak" requests keep, as a leaking model would


def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    if text.startswith("slow"):
        gate = os.environ["GATE_DIR"]
        open(os.path.join(gate, "started"), "w").close()
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(gate, "release")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "slow-done", "text/csv"
    if text.startswith("leak"):
        HELD.append(b"\x01" * (40 << 20))  # written, so resident
        return str(len(HELD)), "text/csv"
    return "fast", "text/csv"
'''


@pytest.fixture
def dirs() -> Iterator[tuple[Path, Path, Path, Path]]:
    """(model_dir, gate_dir, socket_dir, log_dir), short enough for Unix socket paths."""
    root = Path(tempfile.mkdtemp(prefix="mrf-"))
    for name in ("m/code", "g", "s", "l"):
        (root / name).mkdir(parents=True)
    (root / "m" / "code" / "inference.py").write_text(GATED)
    try:
        yield root / "m", root / "g", root / "s", root / "l"
    finally:
        (root / "g" / "release").touch()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_pool(loop: LoopThread, dirs: tuple[Path, Path, Path, Path]) -> Iterator[Callable[..., InstancePool]]:
    model_dir, gate_dir, socket_dir, log_dir = dirs
    pools: list[InstancePool] = []

    def factory(**settings: object) -> InstancePool:
        launch = LaunchSpec(runtime="sklearn", model_dir=model_dir,
                            # Inline (on the instance's loop) once a batch takes under 0.5 s: every fast one.
                            environment={"GATE_DIR": str(gate_dir), "MOORAGE_INLINE_PREDICT_US": "1000000"},
                            instances=dataclasses.replace(InstanceSettings(), **settings))  # type: ignore[arg-type]

        async def create() -> InstancePool:
            return InstancePool("ep", "AllTraffic", launch, LocalLauncher(socket_dir), log_dir, start_timeout=90)

        pool = loop.run(create(), timeout=10)
        pools.append(pool)
        return pool

    try:
        yield factory
    finally:
        (gate_dir / "release").touch()
        for pool in pools:
            pids = [i.pid for i in pool.instances]
            with contextlib.suppress(Exception):
                loop.run(pool.close(drain_timeout=5), timeout=60)
            force_kill(*pids, *(i.pid for i in pool.instances))


def _fast(loop: LoopThread, pool: InstancePool) -> tuple[str, InstanceResponse]:
    async def call() -> tuple[str, InstanceResponse]:
        instance = pool.pick() or await pool.acquire(60)
        return instance.id, await instance.invoke(b"1,2", CSV, 60)

    return loop.run(call(), timeout=90)


def test_a_busy_instance_is_not_a_dead_one(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                           dirs: tuple[Path, Path, Path, Path]) -> None:
    gate = dirs[1]
    pool = make_pool(health_check_interval=0.1, health_check_failures=2)
    loop.run(pool.start(1), timeout=120)
    (instance,) = pool.ready
    pid = instance.pid
    for _ in range(5):  # fast predictions: the instance now predicts on its event loop
        _, response = _fast(loop, pool)
        assert response.status == 200 and response.body == b"fast"

    # A slow prediction whose caller went away: nothing is outstanding, the loop is busy predicting.
    async def abandon() -> None:
        task = asyncio.ensure_future(instance.invoke(b"slow", CSV, 120))
        await wait_until(lambda: (gate / "started").exists() or task.done(), 60, "the slow prediction to start")
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    loop.run(abandon(), timeout=90)
    assert instance.outstanding == 0
    # Health answers while the model is busy; many health-check windows pass and it is still the same process.
    assert loop.run(instance.check_health(timeout=10), timeout=30) is True
    checks = pool.health_checks
    loop.run(wait_until(lambda: pool.health_checks >= checks + 6, 60, "six more health checks"), timeout=90)
    assert instance.pid == pid and not gone(pid)
    assert instance.state == InstanceState.IN_SERVICE and pool.ready == [instance] and pool.restarts == 0

    # Released, it answers again (the same instance).
    (gate / "release").touch()
    instance_id, response = _fast(loop, pool)
    assert instance_id == instance.id and response.status == 200 and response.body == b"fast"


def test_without_its_health_listener_an_instance_is_asked_on_its_ping(loop: LoopThread,
                                                                      make_pool: Callable[..., InstancePool]) -> None:
    pool = make_pool()
    loop.run(pool.start(1), timeout=120)
    (instance,) = pool.ready
    Path(instance.health_socket_path).unlink()
    assert loop.run(instance.check_health(timeout=10), timeout=30) is True  # idle: its /ping answers


def test_a_timed_out_request_does_not_starve_the_others(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                                        dirs: tuple[Path, Path, Path, Path]) -> None:
    gate = dirs[1]
    pool = make_pool()
    loop.run(pool.start(1), timeout=120)
    (old,) = pool.ready
    old_pid = old.pid
    route = EndpointRoute("ep", [VariantRoute("AllTraffic", 1.0, pool)], invocation_timeout=3.0,
                          acquire_timeout=90)
    for _ in range(3):
        assert _fast(loop, pool)[1].status == 200

    async def scenario() -> tuple[InvocationFailed, list[object]]:
        try:
            await route.invoke(b"slow", CSV)
        except InvocationFailed as exc:
            failed = exc
        else:
            raise AssertionError("the slow request did not time out")
        # Sent after the timeout, while the gate is still closed: they must not wait behind the slow work.
        others = await asyncio.gather(*(route.invoke(b"1,2", CSV) for _ in range(10)), return_exceptions=True)
        return failed, others

    failed, others = loop.run(scenario(), timeout=150)
    assert (gate / "started").exists() and not (gate / "release").exists()
    assert failed.status == 504 and failed.instance_id == old.id
    assert "Your invocation timed out while waiting for a response from container AllTraffic" in str(failed)
    for outcome in others:
        assert not isinstance(outcome, BaseException), outcome
        assert outcome.status == 200 and outcome.body == b"fast"  # type: ignore[attr-defined]
        assert outcome.instance_id != old.id  # type: ignore[attr-defined]
    assert pool.recycled == {"timeout": 1}
    loop.run(wait_until(lambda: gone(old_pid), 30, "the timed-out instance's process to end"), timeout=60)
    assert len(pool.ready) == 1 and pool.ready[0] is not old


def test_recycling_can_be_turned_off(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                     dirs: tuple[Path, Path, Path, Path]) -> None:
    gate = dirs[1]
    pool = make_pool(recycle_on_timeout=False)
    loop.run(pool.start(1), timeout=120)
    (instance,) = pool.ready
    route = EndpointRoute("ep", [VariantRoute("AllTraffic", 1.0, pool)], invocation_timeout=2.0)
    with pytest.raises(InvocationFailed):
        loop.run(route.invoke(b"slow", CSV), timeout=60)
    assert pool.recycled == {} and pool.ready == [instance] and not gone(instance.pid)
    (gate / "release").touch()
    assert _fast(loop, pool)[1].body == b"fast"


def test_an_instance_past_its_memory_limit_is_replaced(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    probe = make_pool()
    loop.run(probe.start(1), timeout=120)
    baseline = probe.ready[0].resident_bytes()
    assert baseline is not None and probe.ready[0].rss_limit is not None  # ml.m5.large's memory, by default
    loop.run(probe.close(drain_timeout=5), timeout=60)

    limit = baseline + (100 << 20)  # a leak of 40 MB a request passes it at the third
    pool = make_pool(health_check_interval=0.1, max_rss=limit)
    loop.run(pool.start(1), timeout=120)
    (old,) = pool.ready
    old_pid = old.pid
    assert old.rss_limit == limit

    async def run() -> list[bytes]:
        answers = []
        for _ in range(12):
            if old.state != InstanceState.IN_SERVICE:
                break
            answers.append((await old.invoke(b"leak", CSV, 60)).body)
            seen = pool.health_checks
            await wait_until(lambda s=seen: old.state != InstanceState.IN_SERVICE or pool.health_checks > s + 1,
                             30, "a memory check after the request")
        return answers

    with caplog.at_level("WARNING", logger="moorage.pool"):
        answers = loop.run(run(), timeout=300)
        loop.run(wait_until(lambda: len(pool.ready) == 1 and pool.ready[0] is not old and gone(old_pid), 90,
                            "a replacement and the old process gone"), timeout=120)
    assert pool.recycled == {"memory": 1}
    assert 2 <= len(answers) <= 4, answers  # replaced once past the limit, not before and not much later
    assert any(f"recycling instance {old.id}" in r.getMessage() and "resident bytes, over the limit" in r.getMessage()
               for r in caplog.records)
    # The new instance starts with a clean slate.
    _, response = _fast(loop, pool)
    assert response.status == 200 and response.body == b"fast"


# --------------------------------------------------------------------------------------------------
# bounded parsing
# --------------------------------------------------------------------------------------------------
def test_one_wide_csv_row_is_refused_cheaply() -> None:
    import tracemalloc

    from moorage.runtimes.codecs import MAX_CSV_COLUMNS, PayloadError, decode

    body = ",".join(["0.12345"] * 750_000).encode()  # 6 MB on one line
    tracemalloc.start()
    try:
        with pytest.raises(PayloadError, match=f"750000 columns; at most {MAX_CSV_COLUMNS}") as caught:
            decode(body, "text/csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert caught.value.status == 400
    assert peak < 32 << 20, f"refusing it took {peak} bytes"


def test_wide_rows_within_the_bound_parse_without_pandas_blowing_up() -> None:
    import tracemalloc

    import numpy as np

    from moorage.runtimes.codecs import decode

    row = np.arange(90_000, dtype=np.float64) / 7
    body = ",".join(repr(float(v)) for v in row).encode()
    tracemalloc.start()
    try:
        out = decode(body, "text/csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.shape == (1, 90_000) and np.array_equal(out[0], row)
    assert peak < 64 << 20, f"parsing it took {peak} bytes"
    rows = decode(b"\n".join([body[:20_000].rsplit(b",", 1)[0]] * 40), "text/csv")  # 40 rows, ~1,000 wide
    assert rows.shape[0] == 40


# --------------------------------------------------------------------------------------------------
# socket folders of servers killed with SIGKILL
# --------------------------------------------------------------------------------------------------
def test_reaping_touches_only_dead_servers_folders_and_their_instances(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import psutil

    from moorage.serving.launchers.local import SERVER_MARK, reap_stale_socket_folders, socket_folder

    def group(instance_id: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True,
                                env=dict(os.environ, MOORAGE_INSTANCE_ID=instance_id))

    dead_owner = subprocess.Popen([sys.executable, "-c", "pass"])
    dead_owner.wait(30)
    ours, stranger = group("i-ours"), group("i-someone-else")
    try:
        live = socket_folder(str(tmp_path))  # this process's: alive
        (live / "i-ours.pgid").write_text(f"{ours.pid}\n")
        stale = tmp_path / "moorage-stale"
        stale.mkdir()
        (stale / SERVER_MARK).write_text(f"{dead_owner.pid} {psutil.Process().create_time()!r}\n")
        (stale / "i-ours.pgid").write_text(f"{ours.pid}\n")
        # A record naming a group whose processes are another instance's: never killed.
        (stale / "i-gone.pgid").write_text(f"{stranger.pid}\n")
        unmarked = tmp_path / "moorage-unmarked"  # not a server's folder: left alone
        unmarked.mkdir()

        assert reap_stale_socket_folders(str(tmp_path)) == [stale]
        assert ours.wait(30) == -signal.SIGKILL
        assert stranger.poll() is None and live.is_dir() and unmarked.is_dir() and not stale.exists()
    finally:
        for proc in (ours, stranger):
            proc.kill()
            proc.wait(30)
