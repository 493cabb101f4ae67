"""The router's side of its workers: the link that answers their invocations, and the connections they hand over.

With ``MOORAGE_ROUTER_WORKERS`` = N > 0 (docs/architecture.md, Router workers), N worker processes
(``api/router_worker.py``) accept connections on the server's port beside this process. A worker does the part of
InvokeEndpoint that needs nothing but the request (HTTP, the header block, the body, SigV4 and the
key's role) and asks this process, which owns the route table and every instance, for the answer over
the **router link**: the framed protocol of ``runtimes/frames.py`` on a Unix socket, many requests in
flight on one connection. Here the request goes through ``RouteAnswers`` exactly as one received
directly would (choosers, shadows, metrics, capture, experiments: one place), and the answer goes
back as a frame. A connection whose request is anything else (the control plane, S3, the dashboard)
is handed over whole: the worker sends its socket (``SCM_RIGHTS``) with the bytes it already read,
and this process serves it from then on as if it had accepted it (``HandoffListener``).

Link operations (a request frame's ``op``):

* ``INVOKE``: the headers field is ``LINK_HEAD`` (arrival time, start time, name and target variant
  lengths) + name + variant + the forwarded header lines; the body is the request's. The reply's
  status and body are the response's; its content-type field carries the response's header lines.
* ``SHARE`` and ``INVOKE_SHARED``: as between the router and an instance (``runtimes/shared_bodies.py``):
  the worker's link offers its arena, and an invocation's large body lies there; the headers field as
  for ``INVOKE``.
* ``KEYS``: the headers field is the version of the access keys the worker holds (8 bytes). The
  reply comes when this process's version differs, at once or when a key is created, revoked or
  rotated: the version and every key (JSON), so a revoked key stops working in the workers as it does
  here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import orjson

from moorage.api.responses import JSON
from moorage.api.runtime import InvocationAnswers, api_error_response
from moorage.control.access_keys import AccessKeys
from moorage.errors import ApiError
from moorage.runtimes import frames

log = logging.getLogger("moorage.router_link")

KEYS = 16  # past the container contract's operations (frames.OPERATIONS)
LINK_HEAD = struct.Struct("!ddBB")  # arrived (time.time), started (perf_counter), name length, variant length
KEYS_VERSION = struct.Struct("!Q")
# A handed-over connection: its socket with the first message, which starts with the length of what the
# worker read of it (a header block and the part of a body that came with it); those bytes follow, over
# as many messages as they take, each at most HANDOFF_PART (well under any socket's send buffer).
HANDOFF_HEAD = struct.Struct("!I")
HANDOFF_PART = 32 * 1024


def encode_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%s: %s\r\n" % pair for pair in headers)


def decode_headers(block: bytes) -> list[tuple[bytes, bytes]]:
    pairs = []
    for line in block.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b": ")
            pairs.append((name, value))
    return pairs


def keys_snapshot(version: int, admin: dict[str, str], keys: AccessKeys) -> bytes:
    return KEYS_VERSION.pack(version) + orjson.dumps({
        "admin": admin,
        "keys": [{"id": k.access_key_id, "secret": k.secret_access_key, "role": k.role,
                  "endpoints": list(k.endpoints) if k.endpoints is not None else None, "created": k.created}
                 for k in keys.list()]})


class KeyVersions:
    """The access keys' version, and a wake-up for the workers waiting on it. ``changed`` may be called from
    any thread (the control plane's handlers run in threads)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.version = 1
        self._event = asyncio.Event()

    def changed(self) -> None:
        self.loop.call_soon_threadsafe(self._bump)

    def _bump(self) -> None:
        self.version += 1
        self._event.set()
        self._event = asyncio.Event()

    async def wait_past(self, version: int) -> int:
        while self.version == version:
            await self._event.wait()
        return self.version


class _LinkConnection(frames.FramedProtocol):
    """One worker's link: its invocations answered, its wait for key changes."""

    def __init__(self, server: RouterLink) -> None:
        super().__init__(frames.FrameReader(self._on_frame, frames.DEFAULT_MAX_FRAME))
        self.server = server
        self.tasks: set[asyncio.Task[None]] = set()
        self.invoking: set[asyncio.Task[None]] = set()  # the invocations among them (not the keys' wait)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        for task in self.tasks:
            task.cancel()  # nobody to answer; the worker's callers have their errors already
        self.server.connections.discard(self)

    def malformed(self, exc: frames.FrameError) -> None:
        log.error("router link: %s; closing the worker's connection", exc)
        super().malformed(exc)

    def _on_frame(self, buffer: bytearray, start: int, end: int) -> None:
        request_id, op, headers_length = frames.request_fields(buffer, start, end)
        offset = start + frames.REQUEST_FIELDS.size
        if op == frames.INVOKE or op == frames.INVOKE_SHARED:
            if headers_length < LINK_HEAD.size:
                raise frames.FrameError(f"request {request_id}: an invocation without its link head")
            arrived, started, name_length, variant_length = LINK_HEAD.unpack_from(buffer, offset)
            at = offset + LINK_HEAD.size
            name = buffer[at:at + name_length].decode("latin-1")
            at += name_length
            variant = buffer[at:at + variant_length].decode("latin-1") if variant_length else None
            at += variant_length
            forwarded = bytes(buffer[at:offset + headers_length])
            body = self.invocation_body(request_id, op, buffer, offset + headers_length, end)
            if body is None:
                return
            task = self._spawn(self._invoke(request_id, name, body, forwarded, variant, arrived, started))
            self.invoking.add(task)
            task.add_done_callback(self.invoking.discard)
        elif op == frames.SHARE:
            self.map_shared(request_id, bytes(buffer[offset + headers_length:end]))
        elif op == KEYS:
            if headers_length < KEYS_VERSION.size:
                raise frames.FrameError(f"request {request_id}: a keys request without the version held")
            self._spawn(self._keys(request_id, KEYS_VERSION.unpack_from(buffer, offset)[0]))
        else:
            self.queue(frames.encode_reply(request_id, 404, b"text/plain", f"no link operation {op}".encode()))

    def _spawn(self, work: Any) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def _invoke(self, request_id: int, name: str, body: bytes, forwarded: bytes, variant: str | None,
                      arrived: float, started: float) -> None:
        try:
            status, headers, answer, after = await self.server.answers.answer(name, body, forwarded, variant,
                                                                              arrived, started)
        except Exception:  # the worker's caller gets an answer whatever happens here
            log.exception("router link: invoking endpoint %s failed", name)
            status, headers, answer, after = api_error_response(ApiError(
                "The request processing has failed because of an unknown error."), JSON)
        self.queue(frames.encode_reply_head(request_id, status, encode_headers(headers), len(answer)), answer)
        if after is not None:
            after()

    def close_link(self) -> None:
        if self.transport is not None:
            self.transport.close()

    async def _keys(self, request_id: int, held: int) -> None:
        version = await self.server.versions.wait_past(held)
        self.queue(frames.encode_reply(request_id, 200, b"application/json", self.server.snapshot(version)))


class RouterLink:
    """The link's listener on ``path``: every worker connects once and stays connected."""

    def __init__(self, path: str, answers: InvocationAnswers, admin: dict[str, str], keys: AccessKeys) -> None:
        self.path = path
        self.answers = answers
        self.admin = admin
        self.keys = keys
        self.connections: set[_LinkConnection] = set()
        self.versions: KeyVersions | None = None
        self._server: asyncio.AbstractServer | None = None

    def invocations(self) -> set[asyncio.Task[None]]:
        """The workers' invocations being answered now."""
        return {task for connection in self.connections for task in connection.invoking}

    def snapshot(self, version: int) -> bytes:
        return keys_snapshot(version, self.admin, self.keys)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.versions = KeyVersions(loop)
        self.keys.on_change.append(self.versions.changed)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._server = await loop.create_unix_server(self._connection, self.path)
        os.chmod(self.path, 0o600)

    def _connection(self) -> _LinkConnection:
        connection = _LinkConnection(self)
        self.connections.add(connection)
        return connection

    async def stop(self) -> None:
        if self.versions is not None and self.versions.changed in self.keys.on_change:
            self.keys.on_change.remove(self.versions.changed)
        if self._server is not None:
            self._server.close()
            self._server = None
        for connection in list(self.connections):
            connection.close_link()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


class HandoffListener:
    """Connections the workers hand over, on a ``SOCK_SEQPACKET`` socket: each one's descriptor comes with
    the first of the messages that carry the bytes the worker read of it (``HANDOFF_HEAD``); it is served
    from here on by ``protocol_factory`` (the HTTP edge's, as for a connection this process accepted), fed
    those bytes first."""

    def __init__(self, path: str, protocol_factory: Callable[[], asyncio.Protocol]) -> None:
        self.path = path
        self.protocol_factory = protocol_factory
        self._sock: socket.socket | None = None
        self._adopting: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sock.bind(self.path)
        os.chmod(self.path, 0o600)
        sock.listen(64)
        sock.setblocking(False)
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._accept)

    def _accept(self) -> None:
        """A worker connects once; its handovers then arrive on that connection."""
        assert self._sock is not None
        try:
            peer, _ = self._sock.accept()
        except BlockingIOError:
            return
        peer.setblocking(False)
        asyncio.get_running_loop().add_reader(peer.fileno(), functools.partial(self._receive, peer, []))

    def _receive(self, peer: socket.socket, state: list[Any]) -> None:
        """``state``: the connection being received from this worker, [socket, bytes expected, parts]."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                message, fds, _, _ = socket.recv_fds(peer, HANDOFF_PART + HANDOFF_HEAD.size, 4)
            except BlockingIOError:
                return
            except OSError:
                message, fds = b"", []
            if not message and not fds:  # the worker is gone
                loop.remove_reader(peer.fileno())
                peer.close()
                if state:
                    state[0].close()
                return
            if fds:
                if state:  # a new connection before the last one's bytes: a worker's bug; drop the last
                    state[0].close()
                connection = socket.socket(fileno=fds[0])
                for extra in fds[1:]:
                    os.close(extra)
                expected = HANDOFF_HEAD.unpack_from(message)[0]
                state[:] = [connection, expected, [message[HANDOFF_HEAD.size:]]]
            elif state:
                state[2].append(message)
            else:
                continue
            if sum(map(len, state[2])) >= state[1]:
                connection, _, parts = state
                state.clear()
                connection.setblocking(False)
                task = asyncio.ensure_future(self._adopt(connection, b"".join(parts)))
                self._adopting.add(task)
                task.add_done_callback(self._adopting.discard)

    async def _adopt(self, connection: socket.socket, read: bytes) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(self._replaying(read), connection)
        except OSError:
            connection.close()  # the client went while it was being handed over

    def _replaying(self, read: bytes) -> Callable[[], asyncio.Protocol]:
        """The edge's protocol, fed what the worker read as soon as it has the connection: before the
        transport reads anything of its own (what came after those bytes)."""

        def make() -> asyncio.Protocol:
            protocol: Any = self.protocol_factory()
            made = protocol.connection_made

            def connection_made(transport: asyncio.BaseTransport) -> None:
                made(transport)
                if read and not transport.is_closing():
                    protocol.data_received(read)

            protocol.connection_made = connection_made
            return protocol  # type: ignore[no-any-return]

        return make

    def stop(self) -> None:
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
