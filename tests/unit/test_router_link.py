"""The router link (api/router_link.py) and the connection handover, over real Unix sockets: invocations
answered and matched out of order, large bodies through the worker's shared-body arena, the keys' long
wait, a malformed frame, and a handed-over TCP connection whose bytes arrive in order (what the worker
read first, then the rest)."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from loop_support import LoopThread
from moorage.api.router_link import KEYS, KEYS_VERSION, LINK_HEAD, HandoffListener, RouterLink, decode_headers
from moorage.api.router_worker import Handover
from moorage.control.access_keys import AccessKey
from moorage.runtimes import frames, shared_bodies
from moorage.serving.frame_client import FrameClient


class _Answers:
    """Answers each invocation after the named body's gate opens; records what the link handed over."""

    def __init__(self) -> None:
        self.gates: dict[bytes, asyncio.Event] = {}
        self.calls: list[tuple[str, bytes, bytes, str | None, float, float]] = []
        self.observed: list[bytes] = []

    async def answer(self, name: str, body: bytes, forwarded: bytes, variant: str | None, arrived: float,
                     started: float) -> Any:
        self.calls.append((name, body, forwarded, variant, arrived, started))
        gate = self.gates.get(body)
        if gate is not None:
            await gate.wait()
        return 200, [(b"content-type", b"text/plain"), (b"x-amzn-invoked-production-variant", b"AllTraffic")], \
            b"echo " + body, lambda: self.observed.append(body)


class _Keys:
    def __init__(self) -> None:
        self.on_change: list[Any] = []
        self.keys = [AccessKey("MRGKTEST", "s3cret", "invoker", ("ep",), 1.0)]

    def list(self) -> list[AccessKey]:
        return list(self.keys)


@pytest.fixture
def link(loop: LoopThread, tmp_path: Path) -> Any:
    answers, keys = _Answers(), _Keys()
    server = RouterLink(str(tmp_path / "router.link"), answers, {"ADMINKEY": "admin-secret"}, keys)  # type: ignore[arg-type]
    loop.run(server.start())
    client = FrameClient(server.path)
    yield server, answers, keys, client
    loop.loop.call_soon_threadsafe(client.close)
    loop.run(server.stop())


def _head(name: bytes, variant: bytes = b"", forwarded: bytes = b"content-type: text/csv\r\n") -> bytes:
    return LINK_HEAD.pack(1700000000.5, 12.25, len(name), len(variant)) + name + variant + forwarded


def test_invocations_are_answered_in_any_order_and_observed_after(loop: LoopThread, link: Any) -> None:
    _, answers, _, client = link

    async def scenario() -> list[Any]:
        answers.gates[b"slow"] = gate = asyncio.Event()
        slow = asyncio.ensure_future(client.call(frames.INVOKE, b"slow", _head(b"ep", b"v1"), 10))
        fast = await client.call(frames.INVOKE, b"fast", _head(b"ep"), 10)
        assert not slow.done()  # the fast reply came back past the slow one on the same connection
        gate.set()
        return [fast, await slow]

    fast, slow = loop.run(scenario())
    assert (fast.status, fast.body, slow.body) == (200, b"echo fast", b"echo slow")
    assert decode_headers(fast.content_type.encode("latin-1")) == [
        (b"content-type", b"text/plain"), (b"x-amzn-invoked-production-variant", b"AllTraffic")]
    by_body = {call[1]: call for call in answers.calls}
    assert by_body[b"slow"][:4] == ("ep", b"slow", b"content-type: text/csv\r\n", "v1")
    assert by_body[b"fast"][3] is None
    assert by_body[b"fast"][4:] == (1700000000.5, 12.25)  # the worker's arrival and start times, as sent
    assert sorted(answers.observed) == [b"fast", b"slow"]


@pytest.mark.skipif(not shared_bodies.AVAILABLE, reason="shared bodies need Linux's memfd")
def test_large_bodies_come_through_the_workers_arena(loop: LoopThread, link: Any) -> None:
    """A worker's link offers its arena as the router's link to an instance does: large bodies reach the
    router's answers whole through it, small ones in their frames, and every slot comes back."""
    server, answers, _, _ = link
    client = FrameClient(server.path, share_bodies=True)
    rng = random.Random(8)
    bodies = [rng.randbytes(1 << 20), rng.randbytes(shared_bodies.SHARE_MIN), b"small"]

    async def scenario() -> tuple[Any, list[Any]]:
        await client.call(frames.INVOKE, b"warm", _head(b"ep"), 10)
        conn = client._connection
        deadline = time.monotonic() + 10
        while conn.arena is None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert conn.arena is not None, "the router link did not map the worker's arena"
        replies = await asyncio.gather(*(client.call(frames.INVOKE, body, _head(b"ep"), 10) for body in bodies))
        return conn, list(replies)

    try:
        conn, replies = loop.run(scenario())
        assert [reply.body for reply in replies] == [b"echo " + body for body in bodies]
        assert [call[1] for call in answers.calls[1:]] == bodies
        assert conn.arena.free == shared_bodies.SLOTS
    finally:
        loop.loop.call_soon_threadsafe(client.close)


def test_keys_come_at_once_then_only_when_they_change(loop: LoopThread, link: Any) -> None:
    _, _, keys, client = link
    first = loop.run(client.call(KEYS, b"", KEYS_VERSION.pack(0), 10))
    version = KEYS_VERSION.unpack_from(first.body)[0]
    doc = orjson.loads(first.body[KEYS_VERSION.size:])
    assert doc["admin"] == {"ADMINKEY": "admin-secret"}
    assert doc["keys"] == [{"id": "MRGKTEST", "secret": "s3cret", "role": "invoker", "endpoints": ["ep"],
                            "created": 1.0}]

    async def wait_for_change() -> Any:
        pending = asyncio.ensure_future(client.call(KEYS, b"", KEYS_VERSION.pack(version), 10))
        await asyncio.sleep(0.2)
        assert not pending.done(), "answered with nothing changed"
        keys.keys = []
        for listener in keys.on_change:  # what AccessKeys does after a revoke, from a handler's thread
            await asyncio.to_thread(listener)
        return await pending

    changed = loop.run(wait_for_change())
    assert KEYS_VERSION.unpack_from(changed.body)[0] > version
    assert orjson.loads(changed.body[KEYS_VERSION.size:])["keys"] == []


def test_a_malformed_frame_closes_the_connection(link: Any) -> None:
    server, answers, _, _ = link
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(server.path)
        sock.sendall(struct.pack("!I", 2) + b"xx")  # a frame shorter than any head
        assert sock.recv(100) == b""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(server.path)
        # An invocation whose headers field cannot hold the link head.
        sock.sendall(frames.encode_request_head(7, frames.INVOKE, b"short", 0))
        assert sock.recv(100) == b""
    assert answers.calls == []


class _Collect(asyncio.Protocol):
    def __init__(self, into: list[bytes]) -> None:
        self.into = into

    def data_received(self, data: bytes) -> None:
        self.into.append(data)


def test_a_handed_over_connection_is_read_from_where_the_worker_stopped(loop: LoopThread, tmp_path: Path) -> None:
    received: list[bytes] = []
    listener = HandoffListener(str(tmp_path / "router.handoff"), lambda: _Collect(received))
    loop.loop.call_soon_threadsafe(listener.start)
    deadline = time.monotonic() + 10
    while not Path(listener.path).exists():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    with socket.create_server(("127.0.0.1", 0)) as server:
        client = socket.create_connection(server.getsockname(), timeout=10)
        accepted, _ = server.accept()
        already = b"GET / HTTP/1.1\r\n" + b"x" * 100_000  # more than one handover message's worth
        client.sendall(b"later bytes")  # in the socket before the handover, after what was "read"
        handover = Handover(listener.path)
        assert handover.send(accepted.fileno(), already)
        accepted.close()  # the worker's copy; the connection lives on in the listener's process
        deadline = time.monotonic() + 10
        while b"".join(received) != already + b"later bytes":
            assert time.monotonic() < deadline, f"got {len(b''.join(received))} bytes"
            time.sleep(0.01)
        client.close()
        handover.sock.close()
    loop.loop.call_soon_threadsafe(listener.stop)
