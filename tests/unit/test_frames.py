"""The framed link between the router and a built-in runtime's instance (``runtimes/frames.py``).

First the frame cutter on its own (``FrameReader``, fed as ``asyncio.BufferedProtocol`` feeds it, split at
every byte boundary), then the link end to end: real ``python -m moorage.runtimes.server`` processes on
Unix sockets, spoken to over a raw socket (pipelined frames in one write, frames in pieces, an oversize
frame, a malformed one) and through the router's ``FrameClient`` (concurrent requests, 5 MB bodies both
ways, a timed-out or cancelled request, an instance killed while it computes and reads), and a pool of two
instances over frames that loses one. Large bodies go both ways: through the socket, and through the
shared-body arena (``runtimes/shared_bodies.py``: slots, withdrawn bodies, references the instance refuses,
slots coming back however a request ends, the memory an idle arena gives back).

Every wait is bounded; every process started here is stopped by a fixture finalizer (SIGKILL as the last
resort), and the module checks that none is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import orjson
import pytest

from loop_support import LoopThread
from moorage.runtimes import frames
from moorage.runtimes.frames import FrameError, FrameReader, encode_request_head, header_value
from moorage.runtimes.shared_bodies import AVAILABLE, SLOT_BODY, SLOTS, BodyArena, SharedBodies, WithdrawnBody
from moorage.serving.frame_client import FrameClient
from moorage.serving.instance import Instance, InstanceState
from moorage.serving.instance_client import (
    InstanceConnectionError,
    InstanceResponse,
    InstanceTimeout,
    InstanceUnreachable,
)
from moorage.serving.launch_spec import LaunchSpec
from moorage.serving.launchers.local import LocalLauncher
from moorage.serving.pool import InstancePool
from moorage.serving.router import EndpointRoute, VariantRoute
from unit.test_serving import csv_body, force_kill, gone, instance_processes, json_body, wait_until

CSV = b"content-type: text/csv\r\naccept: application/json\r\n"
JSON = b"content-type: application/json\r\naccept: application/json\r\n"
GATED_CSV = b"content-type: text/csv\r\naccept: text/csv\r\n"
MAX_FRAME = 8192  # the frame limit of the `limited` instance and of the reader tests: an oversize frame is cheap
CHUNK = 256 * 1024  # FrameReader's shared receive buffer (frames._CHUNK)
# Shared bodies are Linux's (memfd, /proc): elsewhere the link sends every body through the socket.
needs_shared = pytest.mark.skipif(not AVAILABLE, reason="shared bodies need Linux's memfd")
SHARE_OR_NOT = pytest.mark.parametrize("share", [False, pytest.param(True, marks=needs_shared)],
                                       ids=["socket", "shared"])


# --------------------------------------------------------------------------------------------------
# FrameReader on its own: a byte stream in, whole frames out
# --------------------------------------------------------------------------------------------------
Frame = tuple[int, int, bytes, bytes]  # id, op, headers, body


def request_frame(request_id: int, op: int, headers: bytes, body: bytes) -> bytes:
    return encode_request_head(request_id, op, headers, len(body)) + body


class Collector:
    """on_frame for a FrameReader of request frames: each frame copied out as (id, op, headers, body)."""

    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def __call__(self, buffer: bytearray, start: int, end: int) -> None:
        request_id, op, headers_length = frames.REQUEST_FIELDS.unpack_from(buffer, start)
        offset = start + frames.REQUEST_FIELDS.size
        self.frames.append((request_id, op, bytes(buffer[offset:offset + headers_length]),
                            bytes(buffer[offset + headers_length:end])))


def feed(reader: FrameReader, data: bytes, sizes: Callable[[], int]) -> None:
    """Hand ``data`` to ``reader`` as a BufferedProtocol transport does: into the buffer it gives, at most
    ``sizes()`` bytes (and at most the buffer's size) at a time."""
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        buf = reader.get_buffer(-1)
        assert len(buf) > 0, f"get_buffer gave an empty buffer at byte {pos} of {len(data)}"
        k = min(len(buf), sizes(), len(data) - pos)
        assert k > 0
        buf[:k] = view[pos:pos + k]
        reader.buffer_updated(k)
        pos += k


def feed_pieces(reader: FrameReader, *pieces: bytes) -> None:
    for piece in pieces:
        feed(reader, piece, lambda piece=piece: len(piece))


def sample_frames() -> list[Frame]:
    return [
        (1, frames.INVOKE, CSV, b"0.1,0.2,0.3,0.4"),
        (0xFFFFFFFF, frames.PING, b"", b""),  # nothing after the head
        (7, frames.INVOKE, b"", b"\x00\r\n\x00 body with no headers"),
        (2, frames.EXECUTION_PARAMETERS, b"accept: */*\r\n", b""),
        (0, frames.UNKNOWN, JSON, orjson.dumps([[1.0, 2.0, 3.0, 4.0]] * 3)),
    ]


def stream_of(items: list[Frame]) -> bytes:
    return b"".join(request_frame(*item) for item in items)


def test_reader_cuts_frames_split_at_every_byte_boundary() -> None:
    expected = sample_frames()
    data = stream_of(expected)
    for split in range(len(data) + 1):
        out = Collector()
        reader = FrameReader(out)
        feed_pieces(reader, data[:split], data[split:])
        assert out.frames == expected, f"split at byte {split} of {len(data)}"


def test_reader_cuts_frames_fed_one_byte_at_a_time() -> None:
    expected = sample_frames()
    out = Collector()
    reader = FrameReader(out)
    seen_after: list[int] = []
    data = stream_of(expected)
    for i in range(len(data)):
        feed(reader, data[i:i + 1], lambda: 1)
        seen_after.append(len(out.frames))
    assert out.frames == expected
    # Each frame comes out exactly when its last byte arrives, not later.
    ends = np.cumsum([len(request_frame(*f)) for f in expected])
    for count, end in enumerate(ends, start=1):
        assert seen_after[end - 1] == count
        if end >= 2:
            assert seen_after[end - 2] == count - 1


def test_reader_cuts_frames_fed_in_random_pieces_many_times() -> None:
    rng = random.Random(1234)
    expected = [(i * 7919 % 100_003, rng.choice([frames.INVOKE, frames.PING, frames.UNKNOWN]),
                 b"content-type: text/csv\r\n" * rng.randrange(3), rng.randbytes(rng.randrange(0, 3000)))
                for i in range(300)]
    data = stream_of(expected)  # ~450 KB: more than the shared buffer, so it is compacted on the way
    assert len(data) > 1.5 * CHUNK
    for bound in (7, 1000, 70_000, 600_000):
        out = Collector()
        feed(FrameReader(out), data, lambda bound=bound: rng.randrange(1, bound))
        assert out.frames == expected, f"chunks up to {bound} bytes"


@pytest.mark.parametrize("size", [CHUNK - 4 - 11, CHUNK - 4, CHUNK - 3, CHUNK + 1, 5_000_000],
                         ids=["fits-with-head", "fills-buffer", "one-over", "just-over", "5MB"])
def test_reader_large_frames_arrive_intact(size: int) -> None:
    """Frames around and far past the 256 KiB receive buffer, behind a small one (so they start mid-buffer),
    followed by small ones, in random pieces."""
    rng = random.Random(size)
    body = rng.randbytes(size - frames.REQUEST_FIELDS.size - len(CSV))
    expected = [(1, frames.INVOKE, CSV, b"small before"), (2, frames.INVOKE, CSV, body),
                (3, frames.PING, b"", b""), (4, frames.INVOKE, JSON, b"[[1,2,3,4]]")]
    data = stream_of(expected)
    assert struct.unpack_from("!I", data, len(request_frame(*expected[0])))[0] == size
    for bound in (300, 70_000, 1_000_000):
        out = Collector()
        feed(FrameReader(out), data, lambda bound=bound: rng.randrange(1, bound))
        assert [f[0] for f in out.frames] == [1, 2, 3, 4], f"chunks up to {bound} bytes"
        assert out.frames[1][3] == body, f"the large body was not received intact (chunks up to {bound} bytes)"
        assert out.frames == expected


def test_reader_big_frame_whose_length_prefix_is_split() -> None:
    body = bytes(range(256)) * (1_200_000 // 256)
    expected = [(5, frames.INVOKE, CSV, body), (6, frames.INVOKE, CSV, b"after")]
    data = stream_of(expected)
    for split in (1, 2, 3, 4, 5, 11, 11 + len(CSV) + 1):
        out = Collector()
        feed_pieces(FrameReader(out), data[:split], data[split:])
        assert out.frames == expected, f"split at byte {split}"


class Oversize:
    """on_oversize: records what it was given and answers ``skip``."""

    def __init__(self, skip: bool) -> None:
        self.skip = skip
        self.calls: list[tuple[bytes, int]] = []

    def __call__(self, head: bytes, length: int) -> bool:
        self.calls.append((head, length))
        return self.skip


@pytest.mark.parametrize("oversize_body", [MAX_FRAME, 600_000], ids=["small-oversize", "oversize-past-buffer"])
@pytest.mark.parametrize("bound", [1, 13, 5000, 10**7], ids=["1-byte", "13-bytes", "5000-bytes", "whole"])
def test_reader_skips_an_oversize_frame_and_goes_on(oversize_body: int, bound: int) -> None:
    rng = random.Random(bound)
    if bound == 1 and oversize_body > MAX_FRAME:
        bound = 3  # 600 KB one byte at a time is slow to no purpose
    ok_at_limit = (11, frames.INVOKE, b"", b"x" * (MAX_FRAME - frames.REQUEST_FIELDS.size))  # length == max_frame
    too_big = (12, frames.INVOKE, CSV, rng.randbytes(oversize_body))
    items = [(10, frames.INVOKE, CSV, b"before"), ok_at_limit, too_big, (13, frames.INVOKE, CSV, b"after"),
             (14, frames.PING, b"", b"")]
    data = stream_of(items)
    out, oversize = Collector(), Oversize(skip=True)
    reader = FrameReader(out, MAX_FRAME, oversize, min_head=frames.REQUEST_HEAD.size)
    feed(reader, data, lambda: rng.randrange(1, bound + 1))
    assert [f[0] for f in out.frames] == [10, 11, 13, 14]
    assert out.frames == [items[0], items[1], items[3], items[4]]
    assert len(oversize.calls) == 1
    head, length = oversize.calls[0]
    assert length == frames.REQUEST_FIELDS.size + len(CSV) + oversize_body
    assert len(head) == frames.REQUEST_HEAD.size
    assert frames.REQUEST_HEAD.unpack(head) == (length, 12, frames.INVOKE, len(CSV))


def test_reader_oversize_frames_back_to_back_are_each_reported() -> None:
    items = [(21, frames.INVOKE, b"", b"a" * (MAX_FRAME + 1)), (22, frames.INVOKE, b"", b"b" * (3 * MAX_FRAME)),
             (23, frames.INVOKE, b"", b"ok")]
    out, oversize = Collector(), Oversize(skip=True)
    reader = FrameReader(out, MAX_FRAME, oversize, min_head=frames.REQUEST_HEAD.size)
    data = stream_of(items)
    for split in range(0, len(data), 997):
        out.frames.clear()
        oversize.calls.clear()
        feed_pieces(reader, data[:split], data[split:])
        assert [f[0] for f in out.frames] == [23], f"split at {split}"
        assert [frames.REQUEST_HEAD.unpack(h)[1] for h, _ in oversize.calls] == [21, 22]


@pytest.mark.parametrize("handler", [None, Oversize(skip=False)], ids=["no-handler", "handler-says-stop"])
def test_reader_oversize_frame_without_skipping_is_a_frame_error(handler: Oversize | None) -> None:
    out = Collector()
    reader = FrameReader(out, MAX_FRAME, handler)
    data = stream_of([(1, frames.INVOKE, b"", b"fine"), (2, frames.INVOKE, b"", b"z" * (2 * MAX_FRAME))])
    with pytest.raises(FrameError, match="over the limit"):
        feed(reader, data, lambda: 100)
    assert [f[0] for f in out.frames] == [1]
    if handler is not None:
        assert len(handler.calls) == 1


def test_header_value() -> None:
    headers = b"content-type: text/csv\r\nx-amzn-custom: a: b \r\naccept:application/json\r\n"
    assert header_value(headers, b"content-type") == b"text/csv"  # first
    assert header_value(headers, b"x-amzn-custom") == b"a: b"  # middle, a colon in the value, spaces stripped
    assert header_value(headers, b"accept") == b"application/json"  # last, no space after the colon
    assert header_value(headers, b"content-length") is None
    assert header_value(b"", b"accept") is None
    assert header_value(b"a: 1\r\naccept: text/csv", b"accept") == b"text/csv"  # no final CRLF
    assert header_value(b"accept: text/csv", b"accept") == b"text/csv"
    # A name inside another name, or inside a value, is not the header.
    assert header_value(b"x-accept: no\r\naccept-encoding: gzip\r\n", b"accept") is None
    assert header_value(b"x-content-type: no\r\ncontent-type: yes\r\n", b"content-type") == b"yes"
    assert header_value(b"x: content-type: no\r\n", b"content-type") is None
    assert header_value(b"accept: \r\n", b"accept") == b""


# --------------------------------------------------------------------------------------------------
# real instance processes
# --------------------------------------------------------------------------------------------------
GATED = '''
import os
import time


def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    if content_type == "application/octet-stream":
        return bytes(body)[::-1], "application/octet-stream"  # reversed, so that an echo proves nothing
    text = body.decode() if isinstance(body, bytes) else body
    if text.startswith("slow"):
        gate = os.environ["GATE_DIR"]
        open(os.path.join(gate, "started"), "w").close()
        deadline = time.monotonic() + 60
        while not os.path.exists(os.path.join(gate, "release")) and time.monotonic() < deadline:
            time.sleep(0.01)
        return "slow-done", "text/csv"
    return "fast", "text/csv"
'''


@pytest.fixture(scope="module")
def classifier_model(classifier: tuple[Any, np.ndarray]) -> Any:
    return classifier[0]


@pytest.fixture(scope="module")
def X(classifier: tuple[Any, np.ndarray]) -> np.ndarray:
    return classifier[1]


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    """Short paths, since a Unix socket path must fit in 108 bytes."""
    path = Path(tempfile.mkdtemp(prefix="mfr-"))
    for name in ("s", "l", "m", "p"):
        (path / name).mkdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def no_leaked_instances(root: Path) -> Iterator[None]:
    """After the module (every other fixture finalized): no instance process of ours is left running."""
    yield
    leaked = instance_processes(root)
    force_kill(*(p.pid for p in leaked))
    assert leaked == [], f"instance processes left running: {leaked}"


@pytest.fixture(scope="module")
def model_dir(root: Path, classifier_model: Any) -> Path:
    joblib.dump(classifier_model, root / "m" / "model.joblib")
    return root / "m"


def start_instance(loop: LoopThread, launch: LaunchSpec, socket_dir: Path, log_dir: Path) -> Instance:
    inst = Instance(launch, socket_dir, log_dir)
    try:
        loop.run(inst.start(timeout=90), timeout=120)
    except BaseException:
        force_kill(inst.pid)
        raise
    return inst


def stop_instance(loop: LoopThread, inst: Instance) -> None:
    with contextlib.suppress(Exception):
        loop.run(inst.stop(drain_timeout=5, term_timeout=10), timeout=30)
    force_kill(inst.pid)


@pytest.fixture(scope="module")
def instance(loop: LoopThread, model_dir: Path, root: Path) -> Iterator[Instance]:
    """The sklearn classifier behind the framed link."""
    inst = start_instance(loop, LaunchSpec(runtime="sklearn", model_dir=model_dir), root / "s", root / "l")
    try:
        assert inst.link == "frames"
        assert os.path.exists(inst.frames_path)
        yield inst
    finally:
        stop_instance(loop, inst)


@pytest.fixture(scope="module")
def limited(loop: LoopThread, model_dir: Path, root: Path) -> Iterator[Instance]:
    """The same classifier with a frame limit of MAX_FRAME bytes (MOORAGE_MAX_FRAME_BYTES)."""
    inst = start_instance(loop, LaunchSpec(runtime="sklearn", model_dir=model_dir,
                                           environment={"MOORAGE_MAX_FRAME_BYTES": str(MAX_FRAME)}),
                          root / "s", root / "l")
    try:
        assert inst.link == "frames"
        yield inst
    finally:
        stop_instance(loop, inst)


@pytest.fixture
def gated(loop: LoopThread, root: Path) -> Iterator[tuple[Instance, Path]]:
    """(instance, gate_dir): a model that answers "fast" at once, and "slow-done" to a body "slow" once the
    test creates gate_dir/release (it creates gate_dir/started when it begins); one per test."""
    base = Path(tempfile.mkdtemp(prefix="g", dir=root))
    (base / "m" / "code").mkdir(parents=True)
    (base / "g").mkdir()
    (base / "m" / "code" / "inference.py").write_text(GATED)
    inst: Instance | None = None
    try:
        inst = start_instance(loop, LaunchSpec(runtime="sklearn", model_dir=base / "m",
                                               environment={"GATE_DIR": str(base / "g")}), root / "s", root / "l")
        assert inst.link == "frames"
        yield inst, base / "g"
    finally:
        (base / "g" / "release").touch()
        if inst is not None:
            stop_instance(loop, inst)


# -- a raw connection to the framed socket (blocking, every read bounded) ------------------------------
Reply = tuple[int, str, bytes | None, bytes]  # status, content type, custom attributes, body


@contextlib.contextmanager
def raw_connection(path: str) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    try:
        sock.connect(path)
        yield sock
    finally:
        sock.close()


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise AssertionError("the instance closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def read_replies(sock: socket.socket, count: int) -> dict[int, Reply]:
    replies: dict[int, Reply] = {}
    for _ in range(count):
        length, request_id, status, type_length, custom_length = frames.REPLY_HEAD.unpack(
            recv_exact(sock, frames.REPLY_HEAD.size))
        rest = recv_exact(sock, length - (frames.REPLY_HEAD.size - 4))
        assert request_id not in replies, f"two replies for request {request_id}"
        replies[request_id] = (status, rest[:type_length].decode(),
                               rest[type_length:type_length + custom_length] or None,
                               rest[type_length + custom_length:])
    return replies


def expect_prediction(reply: Reply | InstanceResponse, model: Any, rows: np.ndarray) -> None:
    status, body = (reply.status, reply.body) if isinstance(reply, InstanceResponse) else (reply[0], reply[3])
    assert status == 200, body
    assert orjson.loads(body) == model.predict(rows).tolist()


def test_pipelined_frames_in_one_write_get_their_own_replies(instance: Instance, classifier_model: Any,
                                                             X: np.ndarray) -> None:
    rng = random.Random(5)
    ids = [*rng.sample(range(1, 1 << 32), 60), 0]
    expected: dict[int, Callable[[Reply], None]] = {}
    out = []
    for n, request_id in enumerate(ids):
        rows = X[n % 40:n % 40 + 1 + n % 3]
        kind = n % 10
        if kind == 3:
            out.append(request_frame(request_id, frames.INVOKE, CSV, b"1,2,3"))  # wrong width: the model's 500
            expected[request_id] = lambda r: (r[0] == 500 and b"features" in r[3]) or pytest.fail(str(r))
        elif kind == 5:
            out.append(request_frame(request_id, frames.INVOKE, JSON, b"[[1, 2,"))
            expected[request_id] = lambda r: r[0] == 400 or pytest.fail(str(r))
        elif kind == 7:
            out.append(request_frame(request_id, frames.INVOKE, b"content-type: application/x-foo\r\n", b"1"))
            expected[request_id] = lambda r: r[0] == 415 or pytest.fail(str(r))
        elif kind == 8:
            out.append(request_frame(request_id, frames.PING, b"", b""))
            expected[request_id] = lambda r: r[0] == 200 or pytest.fail(str(r))
        elif kind == 9:
            out.append(request_frame(request_id, 99, b"", b""))  # no such operation
            expected[request_id] = lambda r: r[0] == 404 or pytest.fail(str(r))
        else:
            body, headers = (json_body(rows), JSON) if n % 2 else (csv_body(rows), CSV)
            out.append(request_frame(request_id, frames.INVOKE, headers, body))
            expected[request_id] = lambda r, rows=rows: expect_prediction(r, classifier_model, rows)
    with raw_connection(instance.frames_path) as sock:
        sock.sendall(b"".join(out))
        replies = read_replies(sock, len(ids))
        assert set(replies) == set(ids)
        for request_id, check in expected.items():
            check(replies[request_id])
        # The connection goes on.
        sock.sendall(request_frame(42, frames.INVOKE, CSV, csv_body(X[:3])))
        expect_prediction(read_replies(sock, 1)[42], classifier_model, X[:3])


def test_frames_in_pieces_over_the_socket(instance: Instance, classifier_model: Any, X: np.ndarray) -> None:
    first = request_frame(1, frames.INVOKE, CSV, csv_body(X[:2]))
    second = request_frame(2, frames.INVOKE, JSON, json_body(X[2:5]))
    third = request_frame(3, frames.INVOKE, CSV, csv_body(X[5:6]))
    with raw_connection(instance.frames_path) as sock:
        # A few bytes at a time, pausing between them so that each piece is read on its own.
        for i in range(0, len(first), 3):
            sock.sendall(first[i:i + 3])
            time.sleep(0.005)
        expect_prediction(read_replies(sock, 1)[1], classifier_model, X[:2])
        # Two frames whose boundary falls in the second one's head: inside its length, then past it.
        for split in (2, 7):
            sock.sendall(third + second[:split])
            time.sleep(0.02)
            sock.sendall(second[split:])
            replies = read_replies(sock, 2)
            expect_prediction(replies[3], classifier_model, X[5:6])
            expect_prediction(replies[2], classifier_model, X[2:5])


def test_oversize_frame_is_answered_413_and_the_connection_goes_on(loop: LoopThread, limited: Instance,
                                                                   classifier_model: Any, X: np.ndarray) -> None:
    instance = limited
    too_big = request_frame(77, frames.INVOKE, CSV, b"9" * (2 * MAX_FRAME))
    normal = request_frame(78, frames.INVOKE, CSV, csv_body(X[:2]))
    with raw_connection(instance.frames_path) as sock:
        sock.sendall(too_big + normal)
        replies = read_replies(sock, 2)
        assert replies[77][0] == 413, replies[77]
        assert str(MAX_FRAME).encode() in replies[77][3]
        expect_prediction(replies[78], classifier_model, X[:2])
        # In pieces, the head itself split.
        sock.sendall(too_big[:6])
        time.sleep(0.02)
        sock.sendall(too_big[6:5000])
        time.sleep(0.02)
        sock.sendall(too_big[5000:] + normal)
        replies = read_replies(sock, 2)
        assert replies[77][0] == 413 and replies[78][0] == 200

    client = FrameClient(instance.frames_path)
    try:
        big = loop.run(client.request(b"POST", b"/invocations", b"9" * MAX_FRAME, CSV, 30), timeout=40)
        assert big.status == 413
        fine = loop.run(client.request(b"POST", b"/invocations", csv_body(X[:4]), CSV, 30), timeout=40)
        expect_prediction(fine, classifier_model, X[:4])
    finally:
        client.close()


def test_ping_execution_parameters_and_unknown_paths(loop: LoopThread, instance: Instance) -> None:
    client = FrameClient(instance.frames_path)

    async def scenario() -> list[InstanceResponse]:
        return list(await asyncio.gather(
            client.request(b"GET", b"/ping", timeout=10), client.request(b"HEAD", b"/ping", timeout=10),
            client.request(b"GET", b"/execution-parameters", timeout=10),
            client.request(b"GET", b"/nope", timeout=10), client.request(b"GET", b"/invocations", timeout=10),
            client.request(b"POST", b"/ping", timeout=10)))

    try:
        ping, head, params, nope, get_invocations, post_ping = loop.run(scenario(), timeout=30)
    finally:
        client.close()
    assert ping.status == 200 and head.status == 200
    assert params.status == 200 and params.content_type == "application/json"
    assert orjson.loads(params.body) == {"MaxConcurrentTransforms": 1, "BatchStrategy": "MULTI_RECORD",
                                         "MaxPayloadInMB": 6}
    assert (nope.status, get_invocations.status, post_ping.status) == (404, 404, 404)


def test_concurrent_requests_through_the_frame_client(loop: LoopThread, instance: Instance, classifier_model: Any,
                                                      X: np.ndarray) -> None:
    cases: list[tuple[bytes, bytes, np.ndarray | None]] = []
    for i in range(64):
        rows = X[i % 45:i % 45 + 1 + i % 4]
        cases.append((json_body(rows), JSON, rows) if i % 3 else (csv_body(rows), CSV, rows))
    cases[9] = (b"1,2,3", CSV, None)
    cases[30] = (b"not,numbers,at,all", CSV, None)
    client = FrameClient(instance.frames_path)

    async def scenario() -> list[InstanceResponse]:
        return list(await asyncio.gather(*(client.request(b"POST", b"/invocations", b, h, 30) for b, h, _ in cases)))

    try:
        responses = loop.run(scenario(), timeout=60)
        assert client._connection is not None and client._connection.pending == {}
    finally:
        client.close()
    for (_, _, rows), response in zip(cases, responses, strict=True):
        if rows is None:
            assert 400 <= response.status < 600, response
        else:
            expect_prediction(response, classifier_model, rows)


async def shared_arena(client: FrameClient) -> BodyArena:
    """The client's arena, once the instance has mapped it (the first request waits for the SHARE reply)."""
    await client.request(b"GET", b"/ping", timeout=10)
    conn = client._connection
    assert conn is not None
    await wait_until(lambda: conn.arena is not None, 10, "the instance to map the shared bodies")
    assert conn.arena is not None
    return conn.arena


@SHARE_OR_NOT
def test_large_request_to_the_model(loop: LoopThread, instance: Instance, classifier_model: Any,
                                    X: np.ndarray, share: bool) -> None:
    """Bodies past the 256 KiB receive buffer (received into a buffer of their own, or shared), beside
    small requests."""
    big_rows = np.tile(X, (200, 1))  # 10,000 rows
    bodies = [(csv_body(big_rows), CSV, big_rows), (json_body(big_rows[:7000]), JSON, big_rows[:7000])]
    assert all(len(b) > CHUNK for b, _, _ in bodies)
    bodies += [(csv_body(X[i:i + 1]), CSV, X[i:i + 1]) for i in range(10)]
    client = FrameClient(instance.frames_path, share_bodies=share)

    async def scenario() -> list[InstanceResponse]:
        arena = await shared_arena(client) if share else None
        replies = list(await asyncio.gather(*(client.request(b"POST", b"/invocations", b, h, 60)
                                              for b, h, _ in bodies)))
        assert arena is None or arena.free == SLOTS  # every slot back
        return replies

    try:
        responses = loop.run(scenario(), timeout=90)
    finally:
        client.close()
    for (_, _, rows), response in zip(bodies, responses, strict=True):
        expect_prediction(response, classifier_model, rows)


OCTETS = b"content-type: application/octet-stream\r\naccept: application/octet-stream\r\n"


@SHARE_OR_NOT
def test_large_bodies_both_ways(loop: LoopThread, gated: tuple[Instance, Path], share: bool) -> None:
    """5 MB in, 5 MB out (the model answers the body reversed), concurrently with small requests; then the
    same over a raw connection, the 5 MB frame written in pieces."""
    inst, _ = gated
    octets = OCTETS
    rng = random.Random(9)
    big = [rng.randbytes(5_000_000), rng.randbytes(CHUNK + 3), rng.randbytes(SLOT_BODY + 1)]  # the last: too big
    client = FrameClient(inst.frames_path, share_bodies=share)

    async def scenario() -> list[InstanceResponse]:
        if share:
            await shared_arena(client)
        calls = [client.request(b"POST", b"/invocations", body, octets, 60) for body in big]
        calls += [client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 60) for _ in range(10)]
        replies = list(await asyncio.gather(*calls))
        conn = client._connection
        assert conn is not None and (conn.arena is not None) == share
        assert conn.arena is None or conn.arena.free == SLOTS
        return replies

    try:
        responses = loop.run(scenario(), timeout=90)
    finally:
        client.close()
    for body, response in zip(big, responses, strict=False):
        assert response.status == 200 and response.content_type == "application/octet-stream"
        assert response.body == body[::-1]
    assert all((r.status, r.body.strip()) == (200, b"fast") for r in responses[len(big):])

    frame = request_frame(5, frames.INVOKE, octets, big[0])
    with raw_connection(inst.frames_path) as sock:
        for i in range(0, len(frame), 1_000_003):
            sock.sendall(frame[i:i + 1_000_003])
            time.sleep(0.005)
        sock.sendall(request_frame(6, frames.INVOKE, GATED_CSV, b"1,2"))
        replies = read_replies(sock, 2)
    assert replies[5][0] == 200 and replies[5][3] == big[0][::-1]
    assert replies[6][0] == 200 and replies[6][3].strip() == b"fast"


# -- shared bodies (runtimes/shared_bodies.py) ------------------------------------------------------
@needs_shared
def test_arena_slots_references_and_withdrawn_bodies() -> None:
    """In one process: what the router writes the instance reads back; a reused slot withdraws the body it
    held; references outside the arena are refused; a body too big or no free slot means the socket."""
    arena = BodyArena(slots=3)
    shared = SharedBodies(arena.share_request())
    try:
        rng = random.Random(3)
        bodies = [rng.randbytes(n) for n in (1, 200_000, SLOT_BODY)]
        placed = [arena.put(body) for body in bodies]
        assert [p[0] for p in placed if p] == [0, 1, 2]  # lowest first
        assert arena.put(b"x") is None and arena.free == 0  # no free slot
        for body, (_, reference) in zip(bodies, placed, strict=True):  # type: ignore[misc]
            assert shared.read(reference) == body
        arena.release(1)
        _, newer = arena.put(b"newer")  # type: ignore[misc]
        with pytest.raises(WithdrawnBody):
            shared.read(placed[1][1])  # type: ignore[index]
        assert shared.read(newer) == b"newer"
        for bad in (struct.pack("!QQQ", arena.size, 1, 1), struct.pack("!QQQ", 0, SLOT_BODY + 1, 1),
                    struct.pack("!QQQ", 2 ** 63, 1, 1), b"short"):
            with pytest.raises(ValueError):
                shared.read(bad)
        assert BodyArena(slots=1).put(b"x" * (SLOT_BODY + 1)) is None
    finally:
        shared.close()
        arena.close()


def _shmem_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("RssShmem:"))


@needs_shared
def test_idle_arena_gives_back_the_memory_of_its_busiest_moment() -> None:
    arena = BodyArena(slots=10)
    try:
        before = _shmem_kib()
        slots = [arena.put(b"\x01" * 1_000_000)[0] for _ in range(10)]  # type: ignore[index]
        assert _shmem_kib() - before >= 9_000
        trim_due = [arena.release(slot) for slot in slots]
        assert trim_due == [False] * 9 + [True]  # only once every slot is free
        arena.trim()
        kept = _shmem_kib() - before
        assert 3_000 <= kept <= 5_000, kept  # the first four slots' million bytes each
        arena.put(b"again")  # the memory given back reads as zeros: a stale reference is withdrawn, not garbage
    finally:
        arena.close()


@needs_shared
def test_instance_reads_shared_bodies_and_refuses_what_it_cannot(gated: tuple[Instance, Path],
                                                                 limited: Instance) -> None:
    """Over a raw connection, with an arena of the test's own: a shared body is answered like one in its
    frame; a withdrawn one 500, one outside the arena or before any SHARE 400, one over the frame limit
    413, an arena that cannot be opened 500; the connection goes on after each."""
    inst, _ = gated
    arena = BodyArena(slots=2)
    try:
        rng = random.Random(4)
        first, second = rng.randbytes(300_000), rng.randbytes(1 << 20)
        with raw_connection(inst.frames_path) as sock:
            sock.sendall(request_frame(1, frames.INVOKE_SHARED, OCTETS, arena.put(first)[1]))  # type: ignore[index]
            sock.sendall(request_frame(2, frames.SHARE, b"", b"\0" * 8 + b"/nonexistent/arena"))
            larger = struct.pack("!Q", arena.size + 4096) + arena.share_request()[8:]  # past the memfd's end
            sock.sendall(request_frame(12, frames.SHARE, b"", larger))
            replies = read_replies(sock, 3)
            assert replies[1][0] == 400 and b"SHARE" in replies[1][3], replies[1]
            assert replies[2][0] == 500 and b"nonexistent" in replies[2][3], replies[2]
            assert replies[12][0] == 500 and b"not the" in replies[12][3], replies[12]
            sock.sendall(request_frame(3, frames.SHARE, b"", arena.share_request()))
            assert read_replies(sock, 1)[3][0] == 200
            arena.release(0)
            _, reference = arena.put(first)  # type: ignore[misc]
            stale_slot, stale = arena.put(second)  # type: ignore[misc]
            arena.release(stale_slot)
            _, fresh = arena.put(second[::-1])  # type: ignore[misc]
            outside = struct.pack("!QQQ", arena.size, 10, 1)
            sock.sendall(b"".join([request_frame(4, frames.INVOKE_SHARED, OCTETS, reference),
                                   request_frame(5, frames.INVOKE_SHARED, OCTETS, stale),
                                   request_frame(6, frames.INVOKE_SHARED, OCTETS, outside),
                                   request_frame(7, frames.INVOKE_SHARED, OCTETS, fresh),
                                   request_frame(8, frames.INVOKE, GATED_CSV, b"1,2")]))
            replies = read_replies(sock, 5)
            assert replies[4][0] == 200 and replies[4][3] == first[::-1]
            assert replies[5][0] == 500 and b"withdrawn" in replies[5][3], replies[5]
            assert replies[6][0] == 400 and b"outside" in replies[6][3], replies[6]
            assert replies[7][0] == 200 and replies[7][3] == second  # the reversed body, reversed back
            assert replies[8][0] == 200 and replies[8][3].strip() == b"fast"
        with raw_connection(limited.frames_path) as sock:  # its frame limit is MAX_FRAME
            sock.sendall(request_frame(9, frames.SHARE, b"", arena.share_request()))
            assert read_replies(sock, 1)[9][0] == 200
            sock.sendall(request_frame(10, frames.INVOKE_SHARED, CSV, reference)
                         + request_frame(11, frames.INVOKE_SHARED, b"", b"not a reference"))
            replies = read_replies(sock, 2)
            assert replies[10][0] == 413 and str(MAX_FRAME).encode() in replies[10][3], replies[10]
            assert replies[11][0] == 400, replies[11]
    finally:
        arena.close()


@needs_shared
def test_shared_body_slots_come_back_however_requests_end(loop: LoopThread, gated: tuple[Instance, Path]) -> None:
    """While the model is held: a large request times out, another's caller gives up; their slots are free at
    once, and the next large body reuses one while the instance still holds the first two. Each reply
    answers its own request; at the end every slot is free and the connection is the same."""
    inst, gate = gated
    client = FrameClient(inst.frames_path, share_bodies=True)
    rng = random.Random(6)
    timed_out_body, cancelled_body, later_body = (rng.randbytes(400_000) for _ in range(3))

    async def scenario() -> tuple[BaseException | None, InstanceResponse, InstanceResponse, bool]:
        arena = await shared_arena(client)
        conn = client._connection
        slow = asyncio.ensure_future(client.request(b"POST", b"/invocations", b"slow", GATED_CSV, 60))
        await wait_for_file(gate / "started", 30)
        timed_out = None
        try:
            await client.request(b"POST", b"/invocations", timed_out_body, OCTETS, 0.3)
        except InstanceTimeout as exc:
            timed_out = exc
        held = asyncio.ensure_future(client.request(b"POST", b"/invocations", cancelled_body, OCTETS, 60))
        await wait_until(lambda: conn is not None and conn._out == [] and len(conn.pending) == 2, 10,
                         "the request to be written")
        assert arena.free == SLOTS - 1
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
        assert arena.free == SLOTS
        later = asyncio.ensure_future(client.request(b"POST", b"/invocations", later_body, OCTETS, 60))
        (gate / "release").touch()
        done_slow, done_later = await asyncio.wait_for(asyncio.gather(slow, later), 30)
        # the two abandoned requests' late replies came (or come) and are dropped
        after = await client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 30)
        assert after.body.strip() == b"fast"
        return timed_out, done_slow, done_later, client._connection is conn and arena.free == SLOTS

    try:
        timed_out, slow, later, same = loop.run(scenario(), timeout=90)
    finally:
        client.close()
    assert isinstance(timed_out, InstanceTimeout), repr(timed_out)
    assert (slow.status, slow.body.strip()) == (200, b"slow-done")
    assert later.status == 200 and later.body == later_body[::-1]
    assert same


@pytest.mark.parametrize("malformed", [struct.pack("!I", 0), struct.pack("!I", 3) + b"abc"],
                         ids=["length-0", "length-3"])
def test_malformed_frame_never_gets_a_reply_for_an_id_not_sent(limited: Instance, malformed: bytes) -> None:
    """Either the connection closes (FrameError: not a frame of this protocol) or the frames are answered,
    each under an id that was sent; a reply under any other id could answer another request in flight."""
    ids: list[int] = []
    with raw_connection(limited.frames_path) as sock:
        sock.sendall(malformed + request_frame(5, frames.INVOKE, CSV, b"1,2,3,4"))
        data = b""
        with contextlib.suppress(ConnectionError):
            while 5 not in ids and (chunk := sock.recv(65536)):  # until the reply to 5, or the end
                data += chunk
                while len(data) >= 8 and len(data) >= 4 + struct.unpack_from("!I", data)[0]:
                    length, request_id = struct.unpack_from("!II", data)
                    ids.append(request_id)
                    data = data[4 + length:]
    assert set(ids) <= {5}, f"replies under ids {ids}; the only id sent was 5"


def refuses(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(path)
        except OSError:
            return True
    return False


async def wait_for_file(path: Path, timeout: float) -> None:
    await wait_until(path.exists, timeout, f"{path} to exist")


def test_instance_killed_while_computing_fails_the_request_then_is_unreachable(
        loop: LoopThread, gated: tuple[Instance, Path]) -> None:
    inst, gate = gated
    client = FrameClient(inst.frames_path, share_bodies=AVAILABLE)

    octets = b"content-type: application/octet-stream\r\n"

    async def scenario() -> tuple[InstanceResponse, list[BaseException | None], BaseException | None]:
        if AVAILABLE:
            await shared_arena(client)
        first = await client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 30)
        conn = client._connection
        slow = asyncio.ensure_future(client.request(b"POST", b"/invocations", b"slow", GATED_CSV, 60))
        await wait_for_file(gate / "started", 30)
        # Behind it on the same connection, while the model is held: a 30 MB body the instance has not
        # finished reading (it is busy), a shared 1 MB one, and small requests after them.
        behind = [asyncio.ensure_future(client.request(b"POST", b"/invocations", b"\x07" * 30_000_000, octets, 60)),
                  asyncio.ensure_future(client.request(b"POST", b"/invocations", b"\x08" * 1_000_000, octets, 60))]
        behind += [asyncio.ensure_future(client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 60))
                   for _ in range(3)]
        await wait_until(lambda: conn is not None and conn._out == [] and len(conn.pending) == 6, 10,
                         "the requests to be written")
        assert conn is not None and (not AVAILABLE or (conn.arena is not None and conn.arena.free == SLOTS - 1))
        os.kill(inst.pid, signal.SIGKILL)  # type: ignore[arg-type]
        # Well before their 60 s timeout: the connection's loss fails them all.
        in_flight: list[BaseException | None] = []
        for task in [slow, *behind]:
            try:
                await asyncio.wait_for(task, 30)
                in_flight.append(None)
            except (InstanceConnectionError, InstanceTimeout, TimeoutError) as exc:
                in_flight.append(exc)
        assert conn.arena is None  # the connection's arena went with it
        await wait_until(lambda: gone(inst.pid), 10, "the killed instance to exit")
        # On a loaded machine the kernel may still be closing the dead process's listener for a moment.
        await wait_until(lambda: refuses(inst.frames_path), 10, "the dead instance's socket to refuse connections")
        after = None
        try:
            await asyncio.wait_for(client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 30), 20)
        except (InstanceConnectionError, InstanceTimeout, TimeoutError) as exc:
            after = exc
        return first, in_flight, after

    try:
        first, in_flight, after = loop.run(scenario(), timeout=90)
    finally:
        client.close()
    assert first.status == 200 and first.body.strip() == b"fast"
    # Sent before the death: a connection error, and not "unreachable" (that would let the router send it
    # again to another instance).
    assert [type(e) for e in in_flight] == [InstanceConnectionError] * 6, in_flight
    # After it: nothing to connect to, so the router may take it to another instance.
    assert isinstance(after, InstanceUnreachable), repr(after)


def test_timed_out_or_cancelled_request_late_reply_is_dropped(loop: LoopThread, gated: tuple[Instance, Path]) -> None:
    inst, gate = gated
    client = FrameClient(inst.frames_path)

    async def late_reply_then_fast(conn: Any) -> InstanceResponse:
        """A fast request sent while the model is held; then the gate opens, so that the held request's late
        reply comes first: it must not answer the fast one."""
        following = asyncio.ensure_future(client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 30))
        await wait_until(lambda: conn is not None and conn._out == [] and len(conn.pending) == 1, 10,
                         "the next request to be written")
        await wait_for_file(gate / "started", 30)
        (gate / "release").touch()
        return await asyncio.wait_for(following, 30)

    async def scenario() -> tuple[BaseException | None, InstanceResponse, InstanceResponse, bool]:
        warm = await client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 30)
        assert warm.body.strip() == b"fast"
        conn = client._connection
        timed_out = None
        try:
            # The gate stays shut until after the timeout: no race.
            await client.request(b"POST", b"/invocations", b"slow", GATED_CSV, 0.3)
        except InstanceTimeout as exc:
            timed_out = exc
        second = await late_reply_then_fast(conn)
        # The same with a request whose caller gives up (cancelled, as when a client disconnects).
        (gate / "release").unlink()
        (gate / "started").unlink()
        held = asyncio.ensure_future(client.request(b"POST", b"/invocations", b"slow", GATED_CSV, 60))
        await wait_for_file(gate / "started", 30)
        held.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await held
        assert conn is not None and conn.pending == {}
        third = await late_reply_then_fast(conn)
        fourth = await client.request(b"POST", b"/invocations", b"1,2", GATED_CSV, 30)
        assert fourth.body.strip() == b"fast"
        same = client._connection is conn and conn is not None and conn.pending == {}
        return timed_out, second, third, same

    try:
        timed_out, second, third, same_connection = loop.run(scenario(), timeout=90)
    finally:
        client.close()
    assert isinstance(timed_out, InstanceTimeout), repr(timed_out)
    assert (second.status, second.body.strip()) == (200, b"fast")
    assert (third.status, third.body.strip()) == (200, b"fast")
    assert same_connection, "the timeout cost the connection"


# --------------------------------------------------------------------------------------------------
# a pool of two instances over frames loses one
# --------------------------------------------------------------------------------------------------
@pytest.fixture
def pool(loop: LoopThread, model_dir: Path, root: Path) -> Iterator[InstancePool]:
    async def create() -> InstancePool:
        return InstancePool("ep", "AllTraffic", LaunchSpec(runtime="sklearn", model_dir=model_dir),
                            LocalLauncher(root / "p"), root / "l", start_timeout=90)

    created = loop.run(create(), timeout=10)
    try:
        yield created
    finally:
        pids = [i.pid for i in created.instances]
        with contextlib.suppress(Exception):
            loop.run(created.close(drain_timeout=5), timeout=60)
        force_kill(*pids, *(i.pid for i in created.instances))


def test_pool_over_frames_serves_from_the_other_instance_after_a_kill(
        loop: LoopThread, pool: InstancePool, root: Path, classifier_model: Any, X: np.ndarray) -> None:
    loop.run(pool.start(2), timeout=150)
    victim, survivor = pool.ready
    assert victim.link == "frames" and survivor.link == "frames"
    route = EndpointRoute("ep", [VariantRoute("AllTraffic", 1.0, pool)], invocation_timeout=30, acquire_timeout=30)

    async def scenario() -> list[tuple[str, int, bytes]]:
        # Both serve, each over a framed connection of its own.
        warm = [await route.invoke(csv_body(X[:1]), CSV) for _ in range(4)]
        assert {w.instance_id for w in warm} == {victim.id, survivor.id}

        # The victim's framed socket cannot be connected to (its process lives on, so the pool keeps it in
        # service): every request the router picks it for is never sent, and goes to the other instance.
        moved = victim.frames_path + ".moved"
        os.rename(victim.frames_path, moved)
        victim.client.close()
        try:
            unreachable = [await route.invoke(csv_body(X[:1]), CSV) for _ in range(6)]
            assert victim in pool.ready  # the pool alternates between the two, so it was picked for half
        finally:
            os.rename(moved, victim.frames_path)
        assert [(u.instance_id, u.status) for u in unreachable] == [(survivor.id, 200)] * 6
        # Reachable again: the same client connects anew.
        again = [await route.invoke(csv_body(X[:1]), CSV) for _ in range(4)]
        assert {a.instance_id for a in again} == {victim.id, survivor.id}

        conn = victim.client._connection  # type: ignore[union-attr]
        assert conn is not None
        os.kill(victim.pid, signal.SIGKILL)  # type: ignore[arg-type]
        await wait_until(lambda: gone(victim.pid), 10, "the killed instance to exit")
        await wait_until(lambda: conn.closed, 10, "its framed connection to be seen closed")
        served = []
        for i in range(12):
            invocation = await route.invoke(csv_body(X[i:i + 2]), CSV)
            served.append((invocation.instance_id, invocation.status, invocation.body))
        return served

    served = loop.run(scenario(), timeout=60)
    for i, (instance_id, status, body) in enumerate(served):
        assert instance_id != victim.id  # the survivor, or a replacement that came up meanwhile
        assert status == 200 and orjson.loads(body) == classifier_model.predict(X[i:i + 2]).tolist()
    assert survivor.state == InstanceState.IN_SERVICE
