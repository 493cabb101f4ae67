"""The data plane on real processes: router variant choice, the instance client, instances, pools, batching.

Instances are real ``python -m moorage.runtimes.server`` processes serving a joblib LogisticRegression
over Unix sockets. The asyncio code runs on one event loop in a background thread (shared by a module's
tests, so an instance can outlive one test); every call into it is bounded by a timeout, and every
process started here is stopped by a fixture finalizer, with SIGKILL as the last resort.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import joblib
import numpy as np
import orjson
import psutil
import pytest

from loop_support import LoopThread
from moorage.serving.chain import ContainerChain
from moorage.serving.instance import Instance, InstanceStartError, InstanceState
from moorage.serving.instance_client import InstanceClient, InstanceConnectionError, InstanceTimeout
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers.local import LocalLauncher
from moorage.serving.pool import InstancePool, NoCapacity
from moorage.serving.router import EndpointRoute, InvocationFailed, UnknownVariant, VariantRoute
from moorage.serving.snapshot import instances_of
from moorage.settings import InstanceSettings

T = TypeVar("T")

CSV = b"content-type: text/csv\r\naccept: application/json\r\n"
JSON = b"content-type: application/json\r\naccept: application/json\r\n"


# --------------------------------------------------------------------------------------------------
# router: variant choice (no pool is exercised, so a stand-in object serves as one)
# --------------------------------------------------------------------------------------------------
class _NoPool:
    """Stands in for an InstancePool in tests that only choose a variant."""


def route(*weights: tuple[str, float]) -> EndpointRoute:
    return EndpointRoute("ep", [VariantRoute(name, w, _NoPool()) for name, w in weights])  # type: ignore[arg-type]


def draw(r: EndpointRoute, n: int) -> Counter[str]:
    return Counter(r.choose().name for _ in range(n))


def assert_binomial(count: int, n: int, p: float) -> None:
    sd = math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= 4.5 * sd, f"{count} of {n} draws, expected {n * p:.0f} +- {4.5 * sd:.0f}"


def test_weights_split_traffic_binomially() -> None:
    n = 20_000
    counts = draw(route(("a", 0.9), ("b", 0.1)), n)
    assert set(counts) == {"a", "b"}
    assert_binomial(counts["a"], n, 0.9)


def test_unnormalised_weights_and_three_variants() -> None:
    n = 20_000
    counts = draw(route(("a", 5), ("b", 3), ("c", 2)), n)
    assert_binomial(counts["a"], n, 0.5)
    assert_binomial(counts["b"], n, 0.3)
    assert_binomial(counts["c"], n, 0.2)


def test_zero_weight_variant_is_never_chosen_but_can_be_targeted() -> None:
    r = route(("zero-first", 0.0), ("a", 1.0), ("zero", 0), ("b", 1.0))
    counts = draw(r, 5_000)
    assert set(counts) == {"a", "b"}
    assert_binomial(counts["a"], 5_000, 0.5)
    assert r.choose("zero").name == "zero"
    assert r.choose("zero-first").name == "zero-first"


def test_single_positive_variant_always_wins() -> None:
    r = route(("only", 0.3), ("off", 0.0))
    assert draw(r, 1_000) == Counter({"only": 1_000})


def test_target_variant_overrides_weights() -> None:
    r = route(("a", 0.9), ("b", 0.1))
    assert all(r.choose("b").name == "b" for _ in range(200))
    assert r.choose("").name in {"a", "b"}  # an empty header means no target


def test_unknown_target_variant() -> None:
    r = route(("a", 1.0))
    with pytest.raises(UnknownVariant, match="nope"):
        r.choose("nope")
    with pytest.raises(UnknownVariant):
        r.choose("A")  # variant names are exact


def test_all_zero_weights_is_no_capacity() -> None:
    r = route(("a", 0.0), ("b", 0.0))
    with pytest.raises(NoCapacity, match="TargetVariant"):
        r.choose()
    assert r.choose("b").name == "b"
    with pytest.raises(NoCapacity):
        EndpointRoute("empty", []).choose()


def test_reweigh_after_weight_changes() -> None:
    r = route(("blue", 1.0), ("green", 0.0))
    assert draw(r, 500) == Counter({"blue": 500})

    # A canary step: 10% to green.
    r.variants["blue"].current_weight = 0.9
    r.variants["green"].current_weight = 0.1
    r.reweigh()
    n = 20_000
    assert_binomial(draw(r, n)["green"], n, 0.1)

    # All traffic shifted.
    r.variants["blue"].current_weight = 0.0
    r.variants["green"].current_weight = 1.0
    r.reweigh()
    assert draw(r, 500) == Counter({"green": 500})

    r.variants["green"].current_weight = 0.0
    r.reweigh()
    with pytest.raises(NoCapacity):
        r.choose()


# --------------------------------------------------------------------------------------------------
# the model (the event loop in a thread: tests/loop_support.py, the loop fixture: conftest.py)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(classifier: tuple[Any, np.ndarray]) -> Any:
    return classifier[0]


@pytest.fixture(scope="module")
def X(classifier: tuple[Any, np.ndarray]) -> np.ndarray:
    return classifier[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, model: Any) -> Path:
    d = tmp_path_factory.mktemp("sklearn-model")
    joblib.dump(model, d / "model.joblib")
    return d


@pytest.fixture(scope="module")
def run_dirs() -> Iterator[tuple[Path, Path]]:
    """(socket_dir, log_dir): short paths, since a Unix socket path must fit in 108 bytes."""
    root = Path(tempfile.mkdtemp(prefix="mrg-"))
    (root / "s").mkdir()
    (root / "l").mkdir()
    try:
        yield root / "s", root / "l"
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def no_leaked_instances(run_dirs: tuple[Path, Path]) -> Iterator[None]:
    """After the module (every other fixture finalized): no instance process of ours is left running."""
    yield
    leaked = instance_processes(run_dirs[0])
    force_kill(*(p.pid for p in leaked))
    assert leaked == [], f"instance processes left running: {leaked}"


def csv_body(rows: np.ndarray) -> bytes:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows).encode()


def json_body(rows: np.ndarray) -> bytes:
    return orjson.dumps(rows.tolist())


def gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def instance_processes(socket_dir: Path) -> list[psutil.Process]:
    """Live instance-server processes started by this test process for sockets under ``socket_dir``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            if "moorage.runtimes.server" in cmd and any(str(socket_dir) in part for part in cmd) and not gone(
                    child.pid):
                found.append(child)
    return found


def force_kill(*pids: int | None) -> None:
    for pid in pids:
        if pid is not None and not gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module", params=["frames", "http"])
def instance(request: pytest.FixtureRequest, loop: LoopThread, model_dir: Path,
             run_dirs: tuple[Path, Path]) -> Iterator[Instance]:
    """One instance per link from the router (MOORAGE_INSTANCE_LINK): the contract holds over both."""
    socket_dir, log_dir = run_dirs
    inst = Instance(LaunchSpec(runtime="sklearn", model_dir=model_dir, instances=InstanceSettings(link=request.param)),
                    socket_dir, log_dir)
    try:
        loop.run(inst.start(timeout=90), timeout=120)
        assert inst.link == request.param
        yield inst
    finally:
        with contextlib.suppress(Exception):
            loop.run(inst.stop(drain_timeout=5, term_timeout=10), timeout=30)
        force_kill(inst.pid)


# --------------------------------------------------------------------------------------------------
# one instance
# --------------------------------------------------------------------------------------------------
def test_instance_is_in_service_and_answers_ping(loop: LoopThread, instance: Instance) -> None:
    assert instance.state == InstanceState.IN_SERVICE
    assert instance.pid is not None and not gone(instance.pid)
    assert os.path.exists(instance.socket_path)
    assert instance.setup_seconds is not None and instance.setup_seconds >= 0
    assert loop.run(instance.ping(timeout=10), timeout=20) is True

    ping = loop.run(instance.client.request(b"GET", b"/ping", timeout=10), timeout=20)
    assert ping.status == 200
    params = loop.run(instance.client.request(b"GET", b"/execution-parameters", timeout=10), timeout=20)
    assert params.status == 200
    assert orjson.loads(params.body)["BatchStrategy"] == "MULTI_RECORD"
    missing = loop.run(instance.client.request(b"GET", b"/nope", timeout=10), timeout=20)
    assert missing.status == 404


def test_invocation_returns_the_models_prediction(loop: LoopThread, instance: Instance, model: Any,
                                                  X: np.ndarray) -> None:
    rows = X[:7]
    response = loop.run(instance.invoke(csv_body(rows), CSV, timeout=30), timeout=40)
    assert response.status == 200
    assert response.content_type.startswith("application/json")
    assert orjson.loads(response.body) == model.predict(rows).tolist()

    response = loop.run(instance.invoke(json_body(X[7:9]), JSON, timeout=30), timeout=40)
    assert response.status == 200
    assert orjson.loads(response.body) == model.predict(X[7:9]).tolist()

    as_csv = loop.run(instance.invoke(csv_body(rows), b"content-type: text/csv\r\naccept: text/csv\r\n", 30),
                      timeout=40)
    assert as_csv.status == 200 and as_csv.content_type.startswith("text/csv")
    assert [int(float(v)) for v in as_csv.body.decode().split()] == model.predict(rows).tolist()
    assert instance.outstanding == 0


def test_outstanding_counts_requests_in_flight(loop: LoopThread, instance: Instance, X: np.ndarray) -> None:
    async def scenario() -> tuple[int, int, int]:
        tasks = [asyncio.ensure_future(instance.invoke(csv_body(X[i:i + 1]), CSV, 30)) for i in range(3)]
        await asyncio.sleep(0)  # each task runs up to its first await: all three are now outstanding
        during = instance.outstanding
        responses = await asyncio.gather(*tasks)
        return during, instance.outstanding, sum(r.status == 200 for r in responses)

    during, after, ok = loop.run(scenario(), timeout=60)
    assert during == 3
    assert after == 0
    assert ok == 3


def test_sequential_requests_reuse_one_keep_alive_connection(loop: LoopThread, model_dir: Path,
                                                             run_dirs: tuple[Path, Path], instance: Instance,
                                                             X: np.ndarray) -> None:
    client = InstanceClient(socket_path=instance.socket_path)

    async def scenario() -> list[int]:
        seen = []
        for i in range(10):
            response = await client.request(b"POST", b"/invocations", csv_body(X[i:i + 1]), CSV, 30)
            assert response.status == 200
            assert len(client._idle) == 1
            seen.append(id(client._idle[0]))
        return seen

    try:
        ids = loop.run(scenario(), timeout=60)
        assert len(set(ids)) == 1
        assert len(client._all) == 1
    finally:
        client.close()
    assert client._all == set()


@pytest.mark.parametrize("body,headers,status,needle", [
    (b"{not json", JSON, 400, b"JSON"),
    (b"0.1,0.2,0.3,0.4", b"content-type: application/x-foo\r\n", 415, b"application/x-foo"),
    (b"0.1,0.2,0.3,0.4", b"content-type: text/csv\r\naccept: application/x-foo\r\n", 406, b"application/x-foo"),
    (b"1,2,3", CSV, 500, b"features"),  # the model's own error: 3 features where it wants 4
], ids=["bad-json", "bad-content-type", "bad-accept", "wrong-width"])
def test_bad_requests_pass_the_instances_status_through(loop: LoopThread, instance: Instance, model: Any,
                                                        X: np.ndarray, body: bytes, headers: bytes, status: int,
                                                        needle: bytes) -> None:
    response = loop.run(instance.invoke(body, headers, timeout=30), timeout=40)
    assert response.status == status
    assert needle in response.body
    assert instance.outstanding == 0
    # The instance is none the worse for it.
    good = loop.run(instance.invoke(csv_body(X[:2]), CSV, timeout=30), timeout=40)
    assert good.status == 200 and orjson.loads(good.body) == model.predict(X[:2]).tolist()


def test_concurrent_requests_are_batched_in_order(loop: LoopThread, instance: Instance, model: Any,
                                                  X: np.ndarray) -> None:
    """32 requests at once, of 1-3 rows each, some CSV and some JSON: each gets exactly its own rows' answers."""
    requests = []
    start = 0
    for i in range(32):
        size = 1 + i % 3
        rows = X[start:start + size]
        start += size
        requests.append((rows, csv_body(rows) if i % 4 else json_body(rows), CSV if i % 4 else JSON))

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(instance.invoke(body, headers, 30) for _, body, headers in requests))

    responses = loop.run(scenario(), timeout=90)
    for (rows, _, _), response in zip(requests, responses, strict=True):
        assert response.status == 200, response.body
        assert orjson.loads(response.body) == model.predict(rows).tolist()
    assert instance.outstanding == 0


def test_a_bad_request_in_a_batch_fails_alone(loop: LoopThread, instance: Instance, model: Any,
                                              X: np.ndarray) -> None:
    bodies: list[tuple[bytes, bytes, np.ndarray | None]] = [
        (csv_body(X[i:i + 2]), CSV, X[i:i + 2]) for i in range(0, 48, 2)]
    bodies[5] = (b"1,2,3", CSV, None)  # wrong width
    bodies[11] = (b"[[1, 2,", JSON, None)  # not JSON
    bodies[17] = (b"a,b,c,d", CSV, None)  # not numbers

    async def scenario() -> list[Any]:
        return await asyncio.gather(*(instance.invoke(b, h, 30) for b, h, _ in bodies))

    responses = loop.run(scenario(), timeout=90)
    for (_, _, rows), response in zip(bodies, responses, strict=True):
        if rows is None:
            assert 400 <= response.status < 600
        else:
            assert response.status == 200, response.body
            assert orjson.loads(response.body) == model.predict(rows).tolist()


def test_stop_drains_then_leaves_no_process(loop: LoopThread, model_dir: Path, run_dirs: tuple[Path, Path],
                                            model: Any, X: np.ndarray) -> None:
    socket_dir, log_dir = run_dirs
    inst = Instance(LaunchSpec(runtime="sklearn", model_dir=model_dir), socket_dir, log_dir)
    try:
        loop.run(inst.start(timeout=90), timeout=120)
        pid = inst.pid

        async def scenario() -> Any:
            request = asyncio.ensure_future(inst.invoke(csv_body(X[:4]), CSV, 30))
            await asyncio.sleep(0)
            await inst.stop(drain_timeout=30, term_timeout=10)
            return await request

        response = loop.run(scenario(), timeout=60)
        assert response.status == 200  # the request in flight finished before the process was stopped
        assert orjson.loads(response.body) == model.predict(X[:4]).tolist()
        assert inst.state == InstanceState.STOPPED
        assert inst.process is not None and inst.process.returncode is not None
        assert gone(pid)
        assert not os.path.exists(inst.socket_path)
        assert "starting instance" in inst.log_path.read_text()
        with pytest.raises(InstanceConnectionError):
            loop.run(inst.invoke(csv_body(X[:1]), CSV, 5), timeout=20)
    finally:
        force_kill(inst.pid)


def test_instance_without_a_model_fails_to_start_with_the_reason(loop: LoopThread, tmp_path: Path,
                                                                 run_dirs: tuple[Path, Path]) -> None:
    socket_dir, log_dir = run_dirs
    empty = tmp_path / "empty-model"
    empty.mkdir()
    inst = Instance(LaunchSpec(runtime="sklearn", model_dir=empty), socket_dir, log_dir)
    try:
        with pytest.raises(InstanceStartError) as info:
            loop.run(inst.start(timeout=90), timeout=120)
        message = str(info.value)
        last_line = inst.log_path.read_text().strip().splitlines()[-1]
        assert last_line.startswith("moorage-instance: ")
        assert last_line.removeprefix("moorage-instance: ") in message
        assert "model failed to load" in message
        assert str(empty) in message or "model" in message.lower()
        assert inst.id in message and str(inst.log_path) in message
        assert inst.state == InstanceState.FAILED
        assert gone(inst.pid)
    finally:
        force_kill(inst.pid)


def test_instance_that_never_gets_ready_is_killed_at_the_start_timeout(loop: LoopThread, tmp_path: Path,
                                                                       run_dirs: tuple[Path, Path]) -> None:
    socket_dir, log_dir = run_dirs
    slow = tmp_path / "slow-model"
    (slow / "code").mkdir(parents=True)
    (slow / "code" / "inference.py").write_text("import time\n\ndef model_fn(model_dir):\n    time.sleep(300)\n")
    inst = Instance(LaunchSpec(runtime="sklearn", model_dir=slow), socket_dir, log_dir)
    try:
        with pytest.raises(InstanceStartError, match="did not pass its /ping health check"):
            loop.run(inst.start(timeout=2), timeout=60)
        assert inst.state == InstanceState.FAILED
        assert inst.process is not None and inst.process.returncode is not None
        assert gone(inst.pid)
    finally:
        force_kill(inst.pid)


# --------------------------------------------------------------------------------------------------
# the client against misbehaving peers (tiny real servers on real sockets)
# --------------------------------------------------------------------------------------------------
class RawServer:
    """A Unix-socket or TCP server that answers each request with a canned byte string (or nothing)."""

    def __init__(self, reply: bytes | None, close_after: bool = False) -> None:
        self.reply = reply
        self.close_after = close_after
        self.connections = 0
        self.server: asyncio.AbstractServer | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                if self.reply is None:
                    await asyncio.sleep(3600)
                writer.write(self.reply)
                await writer.drain()
                if self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def start_unix(self, path: str) -> RawServer:
        self.server = await asyncio.start_unix_server(self.handle, path)
        return self

    async def start_tcp(self) -> int:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.server.wait_closed(), 5)


OK_REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nX-Amzn-SageMaker-Custom-Attributes: k=v\r\n" \
           b"content-length: 7\r\n\r\n[1,2,3]"
CHUNKED_REPLY = b"HTTP/1.1 201 Created\r\ncontent-type: text/csv\r\ntransfer-encoding: chunked\r\n\r\n" \
                b"4\r\n1,2,\r\n3\r\n3\n4\r\n0\r\n\r\n"


def test_client_over_tcp_parses_headers_and_chunked_bodies_and_reuses_the_connection(loop: LoopThread) -> None:
    async def scenario() -> None:
        for reply, status, ctype, body in ((OK_REPLY, 200, "application/json", b"[1,2,3]"),
                                           (CHUNKED_REPLY, 201, "text/csv", b"1,2,3\n4")):
            server = RawServer(reply)
            port = await server.start_tcp()
            client = InstanceClient(port=port)
            try:
                for _ in range(3):
                    response = await client.request(b"POST", b"/invocations", b"x" * 100_000, CSV, timeout=10)
                    assert (response.status, response.content_type, response.body) == (status, ctype, body)
                assert server.connections == 1
            finally:
                client.close()
                await server.stop()
        assert response.custom_attributes is None  # the chunked reply had none

    loop.run(scenario(), timeout=60)


def test_client_reads_custom_attributes(loop: LoopThread, run_dirs: tuple[Path, Path]) -> None:
    path = str(run_dirs[0] / "raw-ok.sock")

    async def scenario() -> None:
        server = await RawServer(OK_REPLY).start_unix(path)
        client = InstanceClient(socket_path=path)
        try:
            response = await client.request(b"POST", b"/invocations", b"{}", JSON, timeout=10)
            assert response.custom_attributes == b"k=v"
        finally:
            client.close()
            await server.stop()

    loop.run(scenario(), timeout=30)


def test_client_does_not_reuse_a_connection_the_server_closes(loop: LoopThread, run_dirs: tuple[Path, Path]) -> None:
    path = str(run_dirs[0] / "raw-close.sock")
    reply = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok"

    async def scenario() -> None:
        server = await RawServer(reply, close_after=True).start_unix(path)
        client = InstanceClient(socket_path=path)
        try:
            for _ in range(3):
                response = await client.request(b"GET", b"/ping", timeout=10)
                assert response.body == b"ok"
            assert server.connections == 3
            assert client._idle == []
        finally:
            client.close()
            await server.stop()

    loop.run(scenario(), timeout=30)


def test_client_timeout_and_broken_peers(loop: LoopThread, run_dirs: tuple[Path, Path]) -> None:
    silent, closing, garbage = (str(run_dirs[0] / f"raw-{n}.sock") for n in ("silent", "closing", "garbage"))

    async def scenario() -> None:
        servers = [await RawServer(None).start_unix(silent),
                   await RawServer(b"", close_after=True).start_unix(closing),
                   await RawServer(b"NOT HTTP AT ALL\r\n\r\n").start_unix(garbage)]
        clients = [InstanceClient(socket_path=p) for p in (silent, closing, garbage)]
        try:
            with pytest.raises(InstanceTimeout, match=r"within 0\.3 s"):
                await clients[0].request(b"POST", b"/invocations", b"{}", JSON, timeout=0.3)
            assert clients[0]._idle == [] and clients[0]._all == set()  # a timed-out connection is dropped
            with pytest.raises(InstanceConnectionError, match="closed the connection"):
                await clients[1].request(b"POST", b"/invocations", b"{}", JSON, timeout=10)
            with pytest.raises(InstanceConnectionError, match="malformed"):
                await clients[2].request(b"POST", b"/invocations", b"{}", JSON, timeout=10)
            unreachable = InstanceClient(socket_path=str(run_dirs[0] / "nobody-listens.sock"))
            with pytest.raises(InstanceConnectionError, match="cannot connect"):
                await unreachable.request(b"GET", b"/ping", timeout=5)
        finally:
            for c in clients:
                c.close()
            for s in servers:
                await s.stop()

    loop.run(scenario(), timeout=60)


# --------------------------------------------------------------------------------------------------
# pools
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def make_pool(loop: LoopThread, model_dir: Path, run_dirs: tuple[Path, Path]) -> Iterator[Callable[..., InstancePool]]:
    """Factory for pools (created on the test loop); every pool is closed and its processes killed at teardown.

    The pools of one test get a socket folder of their own, so ``instance_processes`` sees only pools'.
    """
    socket_dir, log_dir = run_dirs[0] / "pool", run_dirs[1]
    socket_dir.mkdir(exist_ok=True)
    pools: list[InstancePool] = []

    def factory(directory: Path | None = None) -> InstancePool:
        async def create() -> InstancePool:
            return InstancePool("ep", "AllTraffic", LaunchSpec(runtime="sklearn", model_dir=directory or model_dir),
                                LocalLauncher(socket_dir), log_dir, start_timeout=90)

        pool = loop.run(create(), timeout=10)
        pools.append(pool)
        return pool

    try:
        yield factory
    finally:
        for pool in pools:
            pids = [i.pid for i in pool.instances]
            with contextlib.suppress(Exception):
                loop.run(pool.close(drain_timeout=5), timeout=60)
            force_kill(*pids, *(i.pid for i in pool.instances))


async def gather(*coros: Awaitable[T]) -> list[T]:
    """asyncio.gather as a coroutine, so that it is created on the test loop rather than in this thread."""
    return list(await asyncio.gather(*coros))


async def invoke_via_pool(pool: InstancePool, body: bytes, headers: bytes = CSV) -> tuple[str, Any]:
    instance = pool.pick() or await pool.acquire(30)
    return instance.id, await instance.invoke(body, headers, 30)


def test_pool_balances_routes_scales_down_and_closes(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                                     run_dirs: tuple[Path, Path], model: Any, X: np.ndarray) -> None:
    pool = make_pool()
    loop.run(pool.start(2), timeout=150)
    assert len(pool.ready) == 2 and pool.desired == 2
    a, b = pool.ready
    pids = {a.pid, b.pid}
    assert len(instance_processes(run_dirs[0] / "pool")) >= 2

    async def preference() -> tuple[list[str], list[str], Any]:
        busy = asyncio.ensure_future(a.invoke(csv_body(X[:1]), CSV, 30))
        await asyncio.sleep(0)
        assert a.outstanding == 1 and b.outstanding == 0
        while_busy = [pool.pick().id for _ in range(20)]  # type: ignore[union-attr]
        response = await busy
        idle = [pool.pick().id for _ in range(20)]  # type: ignore[union-attr]
        return while_busy, idle, response

    while_busy, idle, response = loop.run(preference(), timeout=60)
    assert response.status == 200
    assert set(while_busy) == {b.id}  # the one with fewer outstanding requests, every time
    assert set(idle) == {a.id, b.id}  # ties spread over both

    # The router's full hop through the pool.
    endpoint = EndpointRoute("ep", [VariantRoute("AllTraffic", 1.0, pool)])
    results = loop.run(gather(*(endpoint.invoke(csv_body(X[i:i + 1]), CSV) for i in range(10))), timeout=60)
    for i, inv in enumerate(results):
        assert inv.variant == "AllTraffic" and inv.status == 200
        assert inv.instance_id in {a.id, b.id}
        assert orjson.loads(inv.body) == model.predict(X[i:i + 1]).tolist()

    # Scale down while requests are in flight: none is lost, one instance drains and stops.
    async def scale_down() -> list[tuple[str, Any]]:
        requests = [asyncio.ensure_future(invoke_via_pool(pool, csv_body(X[i:i + 2]))) for i in range(12)]
        await asyncio.sleep(0)
        await pool.scale_to(1, drain_timeout=30)
        return await asyncio.gather(*requests)

    answers = loop.run(scale_down(), timeout=90)
    assert all(r.status == 200 for _, r in answers)
    for i, (_, r) in enumerate(answers):
        assert orjson.loads(r.body) == model.predict(X[i:i + 2]).tolist()
    assert pool.desired == 1
    assert len(pool.instances) == 1 and len(pool.ready) == 1
    survivor = pool.instances[0]
    retired = a if survivor is b else b
    assert retired.state == InstanceState.STOPPED
    assert gone(retired.pid) and not gone(survivor.pid)
    after = loop.run(invoke_via_pool(pool, csv_body(X[:3])), timeout=40)
    assert after[0] == survivor.id and after[1].status == 200

    # And back up: a fresh instance joins the survivor.
    loop.run(pool.scale_to(2), timeout=150)
    assert pool.desired == 2 and len(pool.ready) == 2 and survivor in pool.ready
    newcomer = next(i for i in pool.ready if i is not survivor)
    assert newcomer.pid not in pids and not gone(newcomer.pid)
    pids.add(newcomer.pid)
    answers = loop.run(gather(*(invoke_via_pool(pool, csv_body(X[:2])) for _ in range(8))), timeout=60)
    assert all(r.status == 200 for _, r in answers)

    # close() stops every instance; afterwards there is no capacity.
    loop.run(pool.close(drain_timeout=10), timeout=60)
    assert pool.instances == [] and pool.ready == []
    assert all(gone(pid) for pid in pids)
    assert instance_processes(run_dirs[0] / "pool") == []
    with pytest.raises(NoCapacity):
        loop.run(pool.acquire(0.5), timeout=10)


def test_pool_replaces_a_killed_instance(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                         run_dirs: tuple[Path, Path], model: Any, X: np.ndarray) -> None:
    pool = make_pool()
    loop.run(pool.start(2), timeout=150)
    victim, survivor = pool.ready
    old_pids = {victim.pid, survivor.pid}
    assert pool.restarts == 0

    async def kill_and_keep_serving() -> list[tuple[str, int, bool]]:
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        # The supervisor notices the exit and takes the dead one out of rotation.
        await wait_until(lambda: pool.restarts == 1 and victim not in pool.ready, 30, "the death to be noticed")
        served = []
        # Meanwhile (the replacement is starting) every request is answered, by the survivor.
        for i in range(200):
            replaced = len(pool.ready) == 2
            instance_id, response = await invoke_via_pool(pool, csv_body(X[i % 50:i % 50 + 1]))
            ok = response.status == 200 and orjson.loads(response.body) == model.predict(X[i % 50:i % 50 + 1]).tolist()
            served.append((instance_id, replaced, ok))
            if replaced:
                break
            await asyncio.sleep(0.05)
        await wait_until(lambda: len(pool.ready) == 2, 90, "the replacement to be in service")
        return served

    served = loop.run(kill_and_keep_serving(), timeout=150)
    assert all(ok for _, _, ok in served)
    assert all(instance_id == survivor.id for instance_id, replaced, _ in served if not replaced)
    assert gone(victim.pid)
    assert victim.state == InstanceState.FAILED and victim not in pool.instances
    assert pool.restarts == 1
    assert len(pool.instances) == 2
    replacement = next(i for i in pool.instances if i is not survivor)
    assert replacement.pid not in old_pids and not gone(replacement.pid)
    assert replacement.state == InstanceState.IN_SERVICE

    # Both serve again.
    answers = loop.run(gather(*(invoke_via_pool(pool, csv_body(X[:2])) for _ in range(8))), timeout=60)
    assert all(r.status == 200 for _, r in answers)
    assert {s.pid for s in instances_of(pool)} == {survivor.pid, replacement.pid}

    loop.run(pool.close(drain_timeout=10), timeout=60)
    assert gone(survivor.pid) and gone(replacement.pid)
    assert instance_processes(run_dirs[0] / "pool") == []


def test_pool_start_failure_stops_everything_and_says_why(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                                          tmp_path: Path, run_dirs: tuple[Path, Path]) -> None:
    empty = tmp_path / "no-model-here"
    empty.mkdir()
    pool = make_pool(empty)
    with pytest.raises(InstanceStartError, match="model failed to load"):
        loop.run(pool.start(1), timeout=150)
    assert pool.instances == [] and pool.ready == [] and pool.closed
    assert instance_processes(run_dirs[0] / "pool") == []


def test_router_without_capacity_answers_503(loop: LoopThread, make_pool: Callable[..., InstancePool]) -> None:
    pool = make_pool()  # never started: no instance in service
    endpoint = EndpointRoute("ep", [VariantRoute("AllTraffic", 1.0, pool)], acquire_timeout=0.2)
    with pytest.raises(InvocationFailed) as info:
        loop.run(endpoint.invoke(b"1,2,3,4", CSV), timeout=20)
    assert info.value.status == 503 and info.value.variant == "AllTraffic"
    with pytest.raises(UnknownVariant):
        loop.run(endpoint.invoke(b"1,2,3,4", CSV, target_variant="Other"), timeout=20)


def test_pool_closed_while_starting_leaves_no_process(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                                      run_dirs: tuple[Path, Path]) -> None:
    """close() (a server shutting down while it recovers an endpoint) during start(): a clean failure, no process."""
    pool = make_pool()

    async def scenario() -> BaseException | None:
        start = asyncio.ensure_future(pool.start(2))
        for _ in range(1000):  # bounded: the instances are registered on start()'s first step
            if pool.instances:
                break
            await asyncio.sleep(0)
        assert pool.instances
        await pool.close(drain_timeout=5)
        done, _ = await asyncio.wait({start}, timeout=120)
        assert done, "start() did not finish after close()"
        return start.exception()

    try:
        error = loop.run(scenario(), timeout=150)
        assert error is None or isinstance(error, InstanceStartError), repr(error)
        assert pool.ready == []
        assert instance_processes(run_dirs[0] / "pool") == []
    finally:
        force_kill(*(p.pid for p in instance_processes(run_dirs[0] / "pool")))


def test_cancelled_pool_start_leaves_no_process(loop: LoopThread, make_pool: Callable[..., InstancePool],
                                                run_dirs: tuple[Path, Path]) -> None:
    """DeleteEndpoint cancels the bring-up of an endpoint still Creating: its instance processes must go."""
    pool = make_pool()

    async def scenario() -> list[int | None]:
        start = asyncio.ensure_future(pool.start(2))
        await wait_until(lambda: len(pool.instances) == 2 and all(i.pid for i in pool.instances), 30,
                         "the instance processes to be spawned")
        pids = [i.pid for i in pool.instances]
        start.cancel()
        await asyncio.wait({start}, timeout=30)
        assert start.cancelled()
        await wait_until(lambda: all(gone(pid) for pid in pids), 15, "the processes of a cancelled start to exit")
        return pids

    try:
        loop.run(scenario(), timeout=90)
    finally:
        # Clean up what the bug leaves behind, whatever happened.
        force_kill(*(p.pid for p in instance_processes(run_dirs[0] / "pool")))


# --------------------------------------------------------------------------------------------------
# a chain of containers as one pool member (a serial inference pipeline)
# --------------------------------------------------------------------------------------------------
DOUBLER = '''
def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    if "fail" in text:
        raise ValueError("the doubler refuses this input")
    rows = [",".join(repr(2 * float(v)) for v in line.split(",")) for line in text.strip().splitlines()]
    return "\\n".join(rows), "text/csv"
'''


def test_a_chain_of_containers_serves_as_one_pool_member(loop: LoopThread, tmp_path: Path, model_dir: Path,
                                                         run_dirs: tuple[Path, Path], model: Any,
                                                         X: np.ndarray) -> None:
    doubler = tmp_path / "doubler"
    (doubler / "code").mkdir(parents=True)
    (doubler / "code" / "inference.py").write_text(DOUBLER)
    launches = [LaunchSpec(runtime="sklearn", model_dir=doubler), LaunchSpec(runtime="sklearn", model_dir=model_dir)]
    socket_dir, log_dir = run_dirs[0] / "chain", run_dirs[1]
    socket_dir.mkdir(exist_ok=True)
    pool = loop.run(_make(lambda: InstancePool("ep", "Pipeline", launches, LocalLauncher(socket_dir), log_dir,
                                               start_timeout=90)), timeout=10)
    try:
        loop.run(pool.start(1), timeout=150)
        (chain,) = pool.ready
        assert isinstance(chain, ContainerChain) and len(chain.pids) == 2 and None not in chain.pids
        assert chain.state == InstanceState.IN_SERVICE and loop.run(chain.ping(), timeout=10)

        # The first container's answer is the second's request; only the last is asked for Accept.
        _, response = loop.run(invoke_via_pool(pool, csv_body(X[:4])), timeout=60)
        assert response.status == 200, response.body
        assert orjson.loads(response.body) == model.predict(2 * X[:4]).tolist()

        # A container that fails ends the chain: its answer is the chain's, and which one it was is known.
        failed, position = loop.run(chain.invoke_steps(b"fail", CSV, 30), timeout=60)
        assert failed.status >= 400 and position == 0

        # A container that dies takes its chain out of service; the pool replaces the whole chain.
        first, second = chain.pids
        force_kill(second)
        loop.run(wait_until(lambda: len(pool.ready) == 1 and pool.ready[0] is not chain, 90, "a new chain"),
                 timeout=120)
        assert gone(second) and gone(first)
        _, response = loop.run(invoke_via_pool(pool, csv_body(X[:2])), timeout=60)
        assert orjson.loads(response.body) == model.predict(2 * X[:2]).tolist()
    finally:
        pids = [p for member in pool.instances for p in member.pids]  # type: ignore[union-attr]
        loop.run(pool.close(drain_timeout=5), timeout=60)
        force_kill(*pids)
    assert instance_processes(socket_dir) == []


async def _make(factory: Callable[[], T]) -> T:
    """Build an object on the test loop (a pool's events belong to the loop that made it)."""
    return factory()
