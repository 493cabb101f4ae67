"""Multi-model hosting on real processes: target keys, LRU eviction under a memory budget, load failures.

Every model here is a tiny real archive (``code/inference.py`` answers with the model's name and its
process id) under one prefix folder, unpacked by the ArtifactStore and served by a real
``python -m moorage.runtimes.server`` process per loaded model. Each test runs its own event loop,
bounded by a timeout, and closes its hosts; a finalizer kills anything of ours still running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import orjson
import psutil
import pytest

from e2e_support import pack_model
from moorage.serving.instance import Instance
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.model_cache import (
    CACHE_BYTES_ENV,
    ESTIMATE_FLOOR_BYTES,
    HOT_MODEL_IN_FLIGHT,
    LOADED_MODEL_COUNT,
    MODEL_CACHE_HIT,
    MODEL_LOADING_TIME,
    MODEL_LOADING_WAIT_TIME,
    MODEL_UNLOADING_TIME,
    ModelCache,
    ModelHost,
    TargetModelError,
    budget_for,
    check_target,
    process_tree_rss,
    resolve_target,
)
from moorage.store.artifacts import ArtifactStore

T = TypeVar("T")

JSON = b"content-type: application/json\r\naccept: application/json\r\n"
TEST_TIMEOUT = 120.0

NAMED_MODEL = """\
import json
import os


def model_fn(model_dir):
    with open(os.path.join(model_dir, "name.txt")) as fh:
        return fh.read().strip()


def transform_fn(model, body, content_type, accept):
    return json.dumps({"model": model, "pid": os.getpid()}), "application/json"
"""

BROKEN_MODEL = """\
def model_fn(model_dir):
    raise RuntimeError("this model cannot load")
"""

MODELS = ["m1.tar.gz", "m2.tar.gz", "m3.tar.gz", "m4.tar.gz", "m5.tar.gz", "customers/eu/m6.tar.gz"]


def run(coro: Coroutine[Any, Any, T], timeout: float = TEST_TIMEOUT) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


# --------------------------------------------------------------------------------------------------
# fixtures: the prefix of archives, where instances run, a real start_model
# --------------------------------------------------------------------------------------------------
def _archive(workdir: Path, name: str, inference_py: str = NAMED_MODEL) -> Path:
    return pack_model(workdir, None, inference_py=inference_py, extra_files={"name.txt": name})


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The model data prefix: named models (one nested), a corrupt one, one that fails to load, a
    symbolic link to an archive outside the prefix, and a folder."""
    root = tmp_path_factory.mktemp("mme")
    models = root / "prefix"
    for target in MODELS:
        dest = models / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(_archive(root / "build" / target, target), dest)
    (models / "corrupt.tar.gz").write_bytes(b"\x1f\x8b this is not a gzip stream" * 10)
    shutil.copy(_archive(root / "build" / "broken", "broken", BROKEN_MODEL), models / "broken.tar.gz")
    outside = _archive(root / "build" / "outside", "outside")
    os.symlink(outside, models / "escape.tar.gz")
    os.symlink(models / "m1.tar.gz", models / "alias.tar.gz")  # a link that stays inside
    (models / "folder.tar.gz").mkdir()
    return models


@pytest.fixture(scope="module")
def run_dirs() -> Iterator[tuple[Path, Path]]:
    """(socket_dir, log_dir): short paths, since a Unix socket path must fit in 108 bytes."""
    root = Path(tempfile.mkdtemp(prefix="mmc-"))
    (root / "s").mkdir()
    (root / "l").mkdir()
    try:
        yield root / "s", root / "l"
    finally:
        shutil.rmtree(root, ignore_errors=True)


def gone(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def model_processes(socket_dir: Path) -> list[psutil.Process]:
    """Live model servers this test process started for sockets under ``socket_dir``."""
    found = []
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            cmd = child.cmdline()
            if "moorage.runtimes.server" in cmd and any(str(socket_dir) in part for part in cmd) \
                    and not gone(child.pid):
                found.append(child)
    return found


@pytest.fixture(autouse=True)
def no_leaked_models(run_dirs: tuple[Path, Path]) -> Iterator[None]:
    """After each test: none of its model processes is left running (killed, then reported)."""
    yield
    leaked = model_processes(run_dirs[0])
    for process in leaked:
        with contextlib.suppress(psutil.Error):
            os.killpg(process.pid, signal.SIGKILL)
    assert leaked == [], f"model processes left running: {leaked}"


class Starter:
    """The integrator's start_model, for real: resolve the key under the prefix, unpack the archive
    with the ArtifactStore, start an Instance on it. Counts the starts per target."""

    def __init__(self, prefix: Path, cache_dir: Path, run_dirs: tuple[Path, Path]):
        self.prefix = prefix
        self.store = ArtifactStore(cache_dir)
        self.socket_dir, self.log_dir = run_dirs
        self.starts: Counter[str] = Counter()

    async def __call__(self, target: str) -> Instance:
        self.starts[target] += 1
        url = resolve_target(self.prefix.as_uri(), target)
        model_dir = await asyncio.to_thread(self.store.materialize, url)
        launch = LaunchSpec(runtime="sklearn", model_dir=model_dir, environment={"SM_MODEL_DIR": str(model_dir)},
                            model_data_url=url)
        instance = Instance(launch, self.socket_dir, self.log_dir)
        await instance.start(timeout=60)
        return instance


@pytest.fixture
def starter(prefix: Path, tmp_path: Path, run_dirs: tuple[Path, Path]) -> Starter:
    return Starter(prefix, tmp_path / "artifacts", run_dirs)


@pytest.fixture(scope="module")
def model_bytes(prefix: Path, tmp_path_factory: pytest.TempPathFactory, run_dirs: tuple[Path, Path]) -> int:
    """The measured size of one model process, to size budgets in models rather than bytes."""
    start = Starter(prefix, tmp_path_factory.mktemp("probe"), run_dirs)

    async def probe() -> int:
        instance = await start("m1.tar.gz")
        try:
            size = process_tree_rss(instance.pid)
        finally:
            await instance.stop(drain_timeout=1, term_timeout=10)
        assert size is not None and size > 0
        return size

    return run(probe())


async def ask(instance: Instance) -> dict[str, Any]:
    """What the model behind ``instance`` says it is."""
    response = await instance.invoke(b"{}", JSON, timeout=30)
    assert response.status == 200, response.body
    answer: dict[str, Any] = orjson.loads(response.body)
    return answer


async def serve(host: ModelHost, target: str) -> tuple[dict[str, Any], bool]:
    """One whole request: acquire, invoke, release."""
    instance, hit = await host.acquire(target)
    try:
        return await ask(instance), hit
    finally:
        host.release(target)


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.05)


async def closing(hosts: list[ModelHost], scenario: Callable[[], Awaitable[T]]) -> T:
    try:
        return await scenario()
    finally:
        await asyncio.gather(*(host.close() for host in hosts))


# --------------------------------------------------------------------------------------------------
# target keys
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["m17.tar.gz", "customers/eu/m17.tar.gz", "model.tgz", "a b~(1).tar.gz",
                                    "d/" * 511 + "xy"])
def test_valid_targets_are_kept_as_given(target: str) -> None:
    assert check_target(target) == target


@pytest.mark.parametrize("target", [
    "", " m1.tar.gz", "m1.tar.gz\n", "a\x00b.tar.gz", "é.tar.gz", "x" * 1025,  # SageMaker's own constraint
    "/etc/m1.tar.gz", "../m1.tar.gz", "a/../../m1.tar.gz", "a/..", "./m1.tar.gz", "a//m1.tar.gz", "a/",
    "a\\m1.tar.gz", "y" * 256 + "/m1.tar.gz",
])
def test_invalid_targets_are_validation_errors(target: str) -> None:
    with pytest.raises(TargetModelError) as info:
        check_target(target)
    assert (info.value.status, info.value.code) == (400, "ValidationError")
    assert info.value.target == target
    if target and target.isprintable() and len(target) < 200:
        assert target in info.value.message


def test_resolve_target_joins_the_prefix_and_stays_inside_it(prefix: Path) -> None:
    assert resolve_target(prefix.as_uri(), "m1.tar.gz") == prefix.as_uri() + "/m1.tar.gz"
    assert resolve_target(str(prefix) + "/", "customers/eu/m6.tar.gz") == f"{prefix}/customers/eu/m6.tar.gz"
    assert resolve_target("s3://bucket/models/", "customers/eu/m6.tar.gz") == \
        "s3://bucket/models/customers/eu/m6.tar.gz"
    assert resolve_target(str(prefix), "alias.tar.gz") == f"{prefix}/alias.tar.gz"  # a link inside is fine
    assert resolve_target(str(prefix), "not-there-yet.tar.gz") == f"{prefix}/not-there-yet.tar.gz"
    for target, reason in [("escape.tar.gz", "outside"), ("folder.tar.gz", "folder"), ("../m1.tar.gz", "'..'")]:
        with pytest.raises(TargetModelError, match=reason) as info:
            resolve_target(prefix.as_uri(), target)
        assert info.value.status == 400 and target in info.value.message


def test_budget_from_the_environment_or_the_instance_type() -> None:
    assert budget_for("ml.m5.large", {CACHE_BYTES_ENV: "123456789"}) == 123456789
    assert budget_for("ml.m5.large", {}) <= 8 * 1024**3
    assert budget_for("local", {}) > 0
    for bad in ("lots", "-5", "0"):
        with pytest.raises(ValueError, match=CACHE_BYTES_ENV):
            budget_for("ml.m5.large", {CACHE_BYTES_ENV: bad})


# --------------------------------------------------------------------------------------------------
# one host
# --------------------------------------------------------------------------------------------------
def test_hits_misses_and_least_recently_used_eviction(starter: Starter, model_bytes: int) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter)

    async def scenario() -> None:
        answer, hit = await serve(host, "m1.tar.gz")
        assert answer["model"] == "m1.tar.gz" and hit is False
        m1_pid = answer["pid"]
        answer, hit = await serve(host, "customers/eu/m6.tar.gz")
        assert answer["model"] == "customers/eu/m6.tar.gz" and hit is False
        m6_pid = answer["pid"]
        answer, hit = await serve(host, "m1.tar.gz")  # m1 is now the most recently used
        assert (answer["model"], answer["pid"], hit) == ("m1.tar.gz", m1_pid, True)
        assert [m.target for m in host.loaded()] == ["customers/eu/m6.tar.gz", "m1.tar.gz"]

        answer, hit = await serve(host, "m3.tar.gz")  # over the budget for three: m6 goes
        assert answer["model"] == "m3.tar.gz" and hit is False
        assert [m.target for m in host.loaded()] == ["m1.tar.gz", "m3.tar.gz"]
        assert gone(m6_pid) and not gone(m1_pid)
        assert host.used_bytes() <= host.budget_bytes

        snapshot = host.snapshot()
        orjson.dumps(snapshot)  # JSON-able
        assert (snapshot["Requests"], snapshot["Hits"], snapshot["Loads"], snapshot["Evictions"]) == (4, 1, 3, 1)
        assert snapshot["HitRate"] == pytest.approx(0.25)
        m1 = next(m for m in snapshot["Models"] if m["TargetModel"] == "m1.tar.gz")
        assert (m1["Hits"], m1["Invocations"], m1["Pid"], m1["InFlight"]) == (1, 2, m1_pid, 0)
        assert m1["SizeBytes"] > 0

        samples = host.drain_metrics()
        assert {s.host_id for s in samples} == {"h0"}
        by_name: dict[str, list[float]] = {}
        for sample in samples:
            by_name.setdefault(sample.name, []).append(sample.value)
        assert by_name[MODEL_CACHE_HIT] == [0.0, 0.0, 1.0, 0.0]
        assert len(by_name[MODEL_LOADING_TIME]) == 3 and len(by_name[MODEL_LOADING_WAIT_TIME]) == 3
        assert len(by_name[MODEL_UNLOADING_TIME]) == 1
        assert by_name[LOADED_MODEL_COUNT] == [2.0]
        assert [s.name for s in host.drain_metrics()] == [LOADED_MODEL_COUNT]  # drained: only the gauge

    run(closing([host], scenario))


def test_eviction_stops_processes_and_keeps_memory_within_budget(starter: Starter, model_bytes: int) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter)

    async def scenario() -> None:
        pids: dict[str, int] = {}
        for target in [*MODELS[:5], *MODELS[:2]]:
            answer, _ = await serve(host, target)
            assert answer["model"] == target
            pids[f"{target}@{answer['pid']}"] = answer["pid"]
            largest = max(m.size_bytes for m in host.loaded())
            assert host.used_bytes() <= host.budget_bytes + largest
            assert len(host.loaded()) <= 3
            live = {m.instance.pid for m in host.loaded()}
            for pid in pids.values():
                assert (pid in live) != gone(pid), "a model not loaded still has its process"
        assert len(model_processes(starter.socket_dir)) == len(host.loaded())
        assert starter.starts["m1.tar.gz"] == 2  # evicted, then loaded again

    run(closing([host], scenario))


def test_a_model_in_use_is_not_evicted(starter: Starter, model_bytes: int) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter)

    async def scenario() -> None:
        busy, _ = await host.acquire("m1.tar.gz")  # held, not released: in use
        await serve(host, "m2.tar.gz")
        await serve(host, "m3.tar.gz")  # needs room: m2 goes although m1 is older
        assert sorted(m.target for m in host.loaded()) == ["m1.tar.gz", "m3.tar.gz"]
        assert (await ask(busy))["model"] == "m1.tar.gz"
        host.release("m1.tar.gz")
        await serve(host, "m4.tar.gz")  # now m1 is the least recently used and free
        assert sorted(m.target for m in host.loaded()) == ["m3.tar.gz", "m4.tar.gz"]
        assert gone(busy.pid)

    run(closing([host], scenario))


def test_concurrent_first_requests_load_the_model_once(starter: Starter, model_bytes: int) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter)

    async def scenario() -> None:
        results = await asyncio.gather(*(host.acquire("m4.tar.gz") for _ in range(6)))
        assert starter.starts["m4.tar.gz"] == 1
        assert len({instance.id for instance, _ in results}) == 1
        assert [hit for _, hit in results] == [False] * 6  # none found it loaded: all waited for the load
        assert host.in_flight("m4.tar.gz") == 6
        answers = await asyncio.gather(*(ask(instance) for instance, _ in results))
        assert {a["model"] for a in answers} == {"m4.tar.gz"}
        for _ in results:
            host.release("m4.tar.gz")
        _, hit = await serve(host, "m4.tar.gz")
        assert hit is True and host.snapshot()["Loads"] == 1

    run(closing([host], scenario))


def test_a_load_outlives_the_request_that_started_it(starter: Starter, model_bytes: int) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter)

    async def scenario() -> None:
        first = asyncio.create_task(host.acquire("m5.tar.gz"))
        await eventually(lambda: starter.starts["m5.tar.gz"] == 1, "the load to start")
        second = asyncio.create_task(host.acquire("m5.tar.gz"))
        await asyncio.sleep(0)
        first.cancel()  # the client that caused the load went away
        instance, hit = await second
        assert first.cancelled() and hit is False and starter.starts["m5.tar.gz"] == 1
        assert host.in_flight("m5.tar.gz") == 1  # the cancelled request's claim is gone
        assert (await ask(instance))["model"] == "m5.tar.gz"
        host.release("m5.tar.gz")

    run(closing([host], scenario))


def test_failed_loads_are_target_model_errors_and_the_others_keep_serving(starter: Starter, model_bytes: int,
                                                                         prefix: Path) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter)

    async def scenario() -> None:
        answer, _ = await serve(host, "m1.tar.gz")
        m1_pid = answer["pid"]
        cases = [
            ("missing.tar.gz", 400, "ValidationError", "missing.tar.gz"),
            ("corrupt.tar.gz", 400, "ValidationError", "Could not extract"),
            ("../m2.tar.gz", 400, "ValidationError", "'..'"),
            ("/tmp/m2.tar.gz", 400, "ValidationError", "absolute"),
            ("escape.tar.gz", 400, "ValidationError", "outside"),
            ("broken.tar.gz", 424, "ModelError", "this model cannot load"),
        ]
        for target, status, code, text in cases:
            with pytest.raises(TargetModelError) as info:
                await host.acquire(target)
            error = info.value
            assert (error.status, error.code) == (status, code), error.message
            assert target in error.message and text in error.message
            assert host.in_flight(target) == 0 and not host.holds(target)
            answer, hit = await serve(host, "m1.tar.gz")  # unharmed
            assert (answer["model"], answer["pid"], hit) == ("m1.tar.gz", m1_pid, True)
        assert [m.target for m in host.loaded()] == ["m1.tar.gz"]
        assert len(model_processes(starter.socket_dir)) == 1
        assert host.snapshot()["FailedLoads"] == 4  # the two refused keys never reached a load

        # An archive put under the prefix after the host started is servable.
        shutil.copy(prefix / "m2.tar.gz", prefix / "late.tar.gz")
        try:
            answer, hit = await serve(host, "late.tar.gz")
            assert answer["model"] == "m2.tar.gz" and hit is False
        finally:
            (prefix / "late.tar.gz").unlink()

    run(closing([host], scenario))


def test_caching_disabled_unloads_after_the_last_release(starter: Starter, model_bytes: int) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter, caching=False)

    async def scenario() -> None:
        answer, _ = await serve(host, "m1.tar.gz")
        await eventually(lambda: not host.loaded() and gone(answer["pid"]), "m1 to be unloaded")

        first, _ = await host.acquire("m2.tar.gz")
        second, _ = await host.acquire("m2.tar.gz")
        assert first is second
        host.release("m2.tar.gz")
        await asyncio.sleep(0.2)  # a background unload would have run by now
        assert [m.target for m in host.loaded()] == ["m2.tar.gz"]  # the other request still uses it
        assert (await ask(second))["model"] == "m2.tar.gz"
        host.release("m2.tar.gz")
        # Counted once its stop has finished, which can be a turn of the loop after the process is gone.
        await eventually(lambda: not host.loaded() and gone(first.pid) and host.snapshot()["Unloads"] == 2,
                         "m2 to be unloaded")
        assert host.snapshot()["Evictions"] == 0

    run(closing([host], scenario))


def test_a_model_whose_process_died_is_loaded_again(starter: Starter, model_bytes: int) -> None:
    host = ModelHost("h0", int(model_bytes * 2.5), starter)

    async def scenario() -> None:
        answer, _ = await serve(host, "m1.tar.gz")
        os.killpg(answer["pid"], signal.SIGKILL)
        instance = host.loaded()[0].instance
        await eventually(lambda: instance.process is not None and instance.process.returncode is not None,
                         "the killed process to be reaped")
        again, hit = await serve(host, "m1.tar.gz")
        assert again["model"] == "m1.tar.gz" and again["pid"] != answer["pid"] and hit is False
        assert starter.starts["m1.tar.gz"] == 2 and len(host.loaded()) == 1

    run(closing([host], scenario))


def test_estimates_before_a_load() -> None:
    async def never(target: str) -> Instance:
        raise AssertionError("not started in this test")

    host = ModelHost("h0", 10**9, never)
    assert host.estimate("m1.tar.gz") == ESTIMATE_FLOOR_BYTES
    assert host.free_bytes() == 10**9 and host.used_bytes() == 0


# --------------------------------------------------------------------------------------------------
# hosts together
# --------------------------------------------------------------------------------------------------
def test_requests_go_to_the_host_that_has_the_model(starter: Starter, model_bytes: int) -> None:
    hosts = [ModelHost(f"h{i}", int(model_bytes * 2.5), starter) for i in range(2)]
    cache = ModelCache(hosts)

    async def scenario() -> None:
        host_a, instance, hit = await cache.acquire("m1.tar.gz")
        assert host_a is hosts[0] and hit is False  # equal free budget: the first
        host_a.release("m1.tar.gz")
        host_b, _, _ = await cache.acquire("m2.tar.gz")
        assert host_b is hosts[1]  # the one with more free budget
        host_b.release("m2.tar.gz")
        for _ in range(3):
            host, again, hit = await cache.acquire("m1.tar.gz")
            assert (host, again, hit) == (host_a, instance, True)
            assert (await ask(again))["model"] == "m1.tar.gz"
            host.release("m1.tar.gz")

        # Concurrent first requests through the cache: one host, one load.
        results = await asyncio.gather(*(cache.acquire("m3.tar.gz") for _ in range(4)))
        assert len({host.host_id for host, _, _ in results}) == 1 and starter.starts["m3.tar.gz"] == 1
        for host, _, _ in results:
            host.release("m3.tar.gz")

        # A hot model with requests queueing on its host gets a copy on the other host.
        held = [await host_a.acquire("m1.tar.gz") for _ in range(HOT_MODEL_IN_FLIGHT + 1)]
        spread, copy, hit = await cache.acquire("m1.tar.gz")
        assert spread is hosts[1] and hit is False and copy is not instance
        assert (await ask(copy))["model"] == "m1.tar.gz"
        spread.release("m1.tar.gz")
        assert cache.choose("m1.tar.gz") is hosts[1]  # now the less busy holder
        for _ in held:
            host_a.release("m1.tar.gz")
        assert {s["HostId"] for s in cache.snapshot()} == {"h0", "h1"}
        assert {s.host_id for s in cache.drain_metrics()} == {"h0", "h1"}

    run(closing(hosts, scenario))
