"""A minimal HTTP/1.1 client for talking to instance processes, over Unix sockets or loopback TCP.

The router sends every invocation through here, so it is written against asyncio's protocol API
with httptools' parser rather than a general-purpose client: one pooled keep-alive connection per
concurrent request, no per-request objects beyond a future and a timer, and the request head
written in one ``write`` call. General clients (httpx, aiohttp) spend more time per request than
the whole rest of the router hop.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httptools


class InstanceConnectionError(Exception):
    """The instance closed the connection or could not be reached."""


class InstanceUnreachable(InstanceConnectionError):
    """No connection could be opened: the request was never sent, so another instance may take it."""


class InstanceTimeout(Exception):
    pass


CONNECT_TIMEOUT_S = 5.0  # over TCP a dead node may drop packets rather than refuse: don't wait for the OS's minutes


@dataclass(slots=True)
class InstanceResponse:
    status: int
    content_type: str
    body: bytes
    custom_attributes: bytes | None = None
    # A serial inference pipeline's answer: the container that gave it (ContainerHostname) and how
    # long each container took, in order (ContainerLatency).
    container: str | None = None
    container_seconds: tuple[tuple[str, float], ...] | None = None


class _Connection(asyncio.Protocol):
    __slots__ = ("_body", "_content_type", "_custom", "_timer", "_waiter", "closed", "keep_alive",
                 "parser", "transport")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[InstanceResponse] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._body: list[bytes] = []
        self._content_type = b"application/octet-stream"
        self._custom: bytes | None = None
        self.closed = False
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(InstanceConnectionError(f"malformed response from instance: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(InstanceConnectionError("the instance closed the connection before answering"))

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._body = []
        self._content_type = b"application/octet-stream"
        self._custom = None

    def on_header(self, name: bytes, value: bytes) -> None:
        lowered = name.lower()
        if lowered == b"content-type":
            self._content_type = value
        elif lowered == b"x-amzn-sagemaker-custom-attributes":
            self._custom = value

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self.keep_alive = self.parser.should_keep_alive()
        waiter = self._waiter
        self._waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
            waiter.set_result(InstanceResponse(self.parser.get_status_code(), self._content_type.decode("latin-1"),
                                               body, self._custom))

    # client side
    def send(self, request: bytes, body: bytes, timeout: float) -> asyncio.Future[InstanceResponse]:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[InstanceResponse] = loop.create_future()
        self._waiter = waiter
        self._timer = loop.call_later(timeout, self._on_timeout, timeout)
        assert self.transport is not None
        if len(body) < 65536:
            self.transport.write(request + body)
        else:
            self.transport.writelines((request, body))
        return waiter

    def _on_timeout(self, timeout: float) -> None:
        self._timer = None
        self._fail(InstanceTimeout(f"no response from the instance within {timeout:g} s"))
        self.close()

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        self._waiter = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class InstanceClient:
    """Pooled keep-alive connections to one instance."""

    def __init__(self, socket_path: str | None = None, host: str = "127.0.0.1", port: int | None = None,
                 max_idle: int = 64):
        self.socket_path = socket_path
        self.host = host
        self.port = port
        self.max_idle = max_idle
        self._idle: list[_Connection] = []
        self._all: set[_Connection] = set()
        self._host_header = b"host: instance\r\n"

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.socket_path:
                _, conn = await loop.create_unix_connection(_Connection, self.socket_path)
            else:
                _, conn = await asyncio.wait_for(loop.create_connection(_Connection, self.host, self.port),
                                                 CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:
            raise InstanceUnreachable(f"cannot connect to the instance: {exc or 'timed out'}") from exc
        self._all.add(conn)
        return conn

    async def request(self, method: bytes, path: bytes, body: bytes = b"", headers: bytes = b"",
                      timeout: float = 60.0) -> InstanceResponse:
        """Send one request; ``headers`` is pre-encoded ``name: value\\r\\n`` lines."""
        conn = None
        while self._idle:
            candidate = self._idle.pop()
            if not candidate.closed:
                conn = candidate
                break
            self._all.discard(candidate)
        if conn is None:
            conn = await self._connect()
        head = b"%s %s HTTP/1.1\r\n%scontent-length: %d\r\n%s\r\n" % (
            method, path, self._host_header, len(body), headers)
        try:
            response = await conn.send(head, body, timeout)
        except BaseException:
            conn.close()
            self._all.discard(conn)
            raise
        if conn.keep_alive and not conn.closed and len(self._idle) < self.max_idle:
            self._idle.append(conn)
        else:
            conn.close()
            self._all.discard(conn)
        return response

    def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._all.clear()
        self._idle.clear()
