"""The router's side of the framed link to a built-in runtime's instance (``runtimes/frames.py``).

One connection per instance carries every request in flight to it: each request is a frame with an
id, and each reply names the id it answers, so replies are matched whatever their order. Requests
made in the same turn of the event loop leave in one write, so the instance reads them in one
``recv`` and batches them into one model call.

The interface is ``InstanceClient``'s (``request(method, path, body, headers, timeout)`` and
``close()``), with the same errors: a request that could not be sent because no connection opens is
``InstanceUnreachable`` (another instance may take it), one whose connection went down before its
reply is ``InstanceConnectionError``, one without a reply in time is ``InstanceTimeout`` (its late
reply is dropped when it comes; the connection and the other requests on it go on).
"""

from __future__ import annotations

import asyncio

from moorage.runtimes import frames
from moorage.serving.instance_client import (
    InstanceConnectionError,
    InstanceResponse,
    InstanceTimeout,
    InstanceUnreachable,
)


class _Pending:
    __slots__ = ("future", "timer")

    def __init__(self, future: asyncio.Future[InstanceResponse], timer: asyncio.TimerHandle) -> None:
        self.future = future
        self.timer = timer


class _FrameConnection(frames.FramedProtocol):
    def __init__(self, max_frame: int) -> None:
        super().__init__(frames.FrameReader(self._on_frame, max_frame))
        self.pending: dict[int, _Pending] = {}
        self.closed = False
        self._next_id = 0

    def malformed(self, exc: frames.FrameError) -> None:
        self._fail_all(InstanceConnectionError(f"malformed reply from the instance: {exc}"))
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.transport = None
        self._fail_all(InstanceConnectionError("the instance closed the connection before answering"))

    def _on_frame(self, buffer: bytearray, start: int, end: int) -> None:
        if end - start < frames.REPLY_FIELDS.size:
            raise frames.FrameError(f"a reply frame of {end - start} bytes, shorter than its head")
        request_id, status, type_length, custom_length = frames.REPLY_FIELDS.unpack_from(buffer, start)
        if frames.REPLY_FIELDS.size + type_length + custom_length > end - start:
            raise frames.FrameError(f"reply {request_id}: its content type and custom attributes overrun the frame")
        pending = self.pending.pop(request_id, None)
        if pending is None:
            return  # the reply to a request that timed out
        pending.timer.cancel()
        if pending.future.done():
            return
        offset = start + frames.REPLY_FIELDS.size
        content_type = buffer[offset:offset + type_length].decode("latin-1")
        offset += type_length
        custom = bytes(buffer[offset:offset + custom_length]) if custom_length else None
        offset += custom_length
        pending.future.set_result(InstanceResponse(status, content_type, bytes(memoryview(buffer)[offset:end]), custom))

    # requests
    def send(self, op: int, body: bytes, headers: bytes, timeout: float) -> asyncio.Future[InstanceResponse]:
        loop = asyncio.get_running_loop()
        self._next_id = request_id = frames.next_id(self._next_id)
        future: asyncio.Future[InstanceResponse] = loop.create_future()
        self.pending[request_id] = _Pending(future, loop.call_later(timeout, self._on_timeout, request_id, timeout))
        # Nothing else in flight (low load): written now, not a turn of the loop later; otherwise the
        # requests of this turn leave together, in one write, at its end.
        self.queue(frames.encode_request_head(request_id, op, headers, len(body)), body,
                   now=len(self.pending) == 1 and self.transport is not None)
        return future

    def _on_timeout(self, request_id: int, timeout: float) -> None:
        pending = self.pending.pop(request_id, None)
        if pending is not None and not pending.future.done():
            pending.future.set_exception(InstanceTimeout(f"no response from the instance within {timeout:g} s"))

    def forget(self, future: asyncio.Future[InstanceResponse]) -> None:
        """A request whose caller was cancelled: its reply, should it come, is dropped."""
        for request_id, pending in self.pending.items():
            if pending.future is future:
                pending.timer.cancel()
                del self.pending[request_id]
                return

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        for entry in pending.values():
            entry.timer.cancel()
            if not entry.future.done():
                entry.future.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self._fail_all(InstanceConnectionError("the connection to the instance was closed"))


class FrameClient:
    """The framed link to one instance: one pipelined connection, opened on first use and again after
    it went down."""

    def __init__(self, socket_path: str, max_frame: int = frames.DEFAULT_MAX_FRAME) -> None:
        self.socket_path = socket_path
        self.max_frame = max_frame
        self._connection: _FrameConnection | None = None
        self._connecting: asyncio.Future[_FrameConnection] | None = None

    async def _connected(self) -> _FrameConnection:
        """A new connection, one for all the requests that find none open meanwhile."""
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        finally:
            if self._connecting is connecting and connecting.done():
                self._connecting = None

    async def _connect(self) -> _FrameConnection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_unix_connection(lambda: _FrameConnection(self.max_frame), self.socket_path)
        except OSError as exc:
            raise InstanceUnreachable(f"cannot connect to the instance: {exc}") from exc
        self._connection = conn
        return conn

    async def request(self, method: bytes, path: bytes, body: bytes = b"", headers: bytes = b"",
                      timeout: float = 60.0) -> InstanceResponse:
        # Anything else is no operation of the contract: the instance answers it 404, as over HTTP.
        return await self.call(frames.OPERATIONS.get((method, path), frames.UNKNOWN), body, headers, timeout)

    async def call(self, op: int, body: bytes = b"", headers: bytes = b"", timeout: float = 60.0) -> InstanceResponse:
        """A request by its frame operation (the router link's own operations, api/router_link.py)."""
        conn = self._connection
        if conn is None or conn.closed:
            conn = await self._connected()
        future = conn.send(op, body, headers, timeout)
        try:
            return await future
        except asyncio.CancelledError:
            conn.forget(future)
            raise

    def close(self) -> None:
        conn, self._connection = self._connection, None
        if conn is not None:
            conn.close()
