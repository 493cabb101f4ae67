"""The router's side of the framed link to a built-in runtime's instance (``runtimes/frames.py``).

One connection per instance carries every request in flight to it: each request is a frame with an
id, and each reply names the id it answers, so replies are matched whatever their order. Requests
made in the same turn of the event loop leave in one write, so the instance reads them in one
``recv`` and batches them into one model call.

The interface is ``InstanceClient``'s (``request(method, path, body, headers, timeout)`` and
``close()``), with the same errors: a request that could not be sent because no connection opens is
``InstanceUnreachable`` (another instance may take it), one whose connection went down before its
reply is ``InstanceConnectionError``, one without a reply in time is ``InstanceTimeout`` (its late
reply is dropped when it comes; the connection and the other requests on it go on). Timeouts are one
timer per connection, set for the earliest deadline of the requests in flight, not one per request.

A connection to an instance offers it a shared-body arena first (``runtimes/shared_bodies.py``);
once the instance has mapped it, a large invocation body is copied there and its frame says where,
instead of crossing the socket. The body's slot is released when its request ends, however it ends.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable

from moorage.runtimes import frames, shared_bodies
from moorage.runtimes.shared_bodies import SHARE_MIN, BodyArena
from moorage.serving.instance_client import (
    InstanceConnectionError,
    InstanceResponse,
    InstanceTimeout,
    InstanceUnreachable,
)

log = logging.getLogger("moorage.serving")

# A request in flight: the future its reply sets, its deadline (loop time), its timeout, and the
# arena slot its body is in (-1: none).
_Pending = tuple[asyncio.Future[InstanceResponse], float, float, int]
TRIM_AFTER_S = 1.0  # an arena idle this long gives back its memory past its first slots (BodyArena.trim)
SHARE_TIMEOUT_S = 10.0  # for the instance to map the arena; its bodies come through the socket meanwhile


class _FrameConnection(frames.FramedProtocol):
    def __init__(self, max_frame: int) -> None:
        super().__init__(frames.FrameReader(self._on_frame, max_frame))
        self.pending: dict[int, _Pending] = {}
        self.closed = False
        self.arena: BodyArena | None = None  # the shared bodies, once the instance mapped them
        self._trim: asyncio.TimerHandle | None = None  # the arena's trim, due once it has been idle a while
        self._next_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf

    def malformed(self, exc: frames.FrameError) -> None:
        self._fail_all(InstanceConnectionError(f"malformed reply from the instance: {exc}"))
        self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        super().connection_lost(exc)
        self._fail_all(InstanceConnectionError("the instance closed the connection before answering"))
        if self._trim is not None:
            self._trim.cancel()
            self._trim = None
        if self.arena is not None:
            self.arena.close()
            self.arena = None

    def offer(self, arena: BodyArena) -> None:
        """Ask the instance to map ``arena``; large bodies go there once it has."""
        def mapped(future: asyncio.Future[InstanceResponse]) -> None:
            reply = None if future.cancelled() or future.exception() is not None else future.result()
            if reply is not None and reply.status == 200 and not self.closed:
                self.arena = arena
                return
            arena.close()
            if reply is not None and reply.status != 404:  # 404: a runtime without shared bodies
                log.info("framed link: the instance did not map shared bodies (%s %s); they go through the socket",
                         reply.status, reply.body[:200].decode("utf-8", "replace"))

        self.send(frames.SHARE, arena.share_request(), b"", SHARE_TIMEOUT_S).add_done_callback(mapped)

    def _on_frame(self, buffer: bytearray, start: int, end: int) -> None:
        if end - start < frames.REPLY_FIELDS.size:
            raise frames.FrameError(f"a reply frame of {end - start} bytes, shorter than its head")
        request_id, status, type_length, custom_length = frames.REPLY_FIELDS.unpack_from(buffer, start)
        if frames.REPLY_FIELDS.size + type_length + custom_length > end - start:
            raise frames.FrameError(f"reply {request_id}: its content type and custom attributes overrun the frame")
        pending = self.pending.pop(request_id, None)
        if pending is None:
            return  # the reply to a request that timed out
        future, _, _, slot = pending
        self._release(slot)
        if future.done():
            return
        offset = start + frames.REPLY_FIELDS.size
        content_type = buffer[offset:offset + type_length].decode("latin-1")
        offset += type_length
        custom = bytes(buffer[offset:offset + custom_length]) if custom_length else None
        offset += custom_length
        future.set_result(InstanceResponse(status, content_type, bytes(memoryview(buffer)[offset:end]), custom))

    # requests
    def send(self, op: int, body: bytes, headers: bytes, timeout: float) -> asyncio.Future[InstanceResponse]:
        loop = asyncio.get_running_loop()
        self._next_id = request_id = frames.next_id(self._next_id)
        future: asyncio.Future[InstanceResponse] = loop.create_future()
        deadline = loop.time() + timeout
        slot = -1
        if op == frames.INVOKE and self.arena is not None and len(body) >= SHARE_MIN:
            placed = self.arena.put(body)
            if placed is not None:
                slot, body = placed
                op = frames.INVOKE_SHARED
        self.pending[request_id] = (future, deadline, timeout, slot)
        if deadline < self._timer_at:
            self._set_timer(loop, deadline)
        # Nothing else in flight (low load): written now, not a turn of the loop later; otherwise the
        # requests of this turn leave together, in one write, at its end.
        self.queue(frames.encode_request_head(request_id, op, headers, len(body)), body,
                   now=len(self.pending) == 1 and self.transport is not None)
        return future

    def _set_timer(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        """The earliest deadline came: the requests past theirs fail; the timer is set for the next one."""
        self._timer, self._timer_at = None, math.inf
        loop = asyncio.get_running_loop()
        now = loop.time()
        earliest = math.inf
        for request_id, (future, deadline, timeout, slot) in list(self.pending.items()):
            if deadline <= now:
                del self.pending[request_id]
                self._release(slot)
                if not future.done():
                    future.set_exception(InstanceTimeout(f"no response from the instance within {timeout:g} s"))
            elif deadline < earliest:
                earliest = deadline
        if earliest < math.inf:
            self._set_timer(loop, earliest)

    def forget(self, future: asyncio.Future[InstanceResponse]) -> None:
        """A request whose caller was cancelled: its reply, should it come, is dropped."""
        for request_id, pending in self.pending.items():
            if pending[0] is future:
                del self.pending[request_id]
                self._release(pending[3])
                return

    def _release(self, slot: int) -> None:
        """Give the slot of a request that ended back to the arena (-1: its body was in its frame)."""
        if slot >= 0 and self.arena is not None and self.arena.release(slot) and self._trim is None:
            self._trim = asyncio.get_running_loop().call_later(TRIM_AFTER_S, self._trim_arena)

    def _trim_arena(self) -> None:
        self._trim = None
        if self.arena is not None:
            self.arena.trim()

    def _fail_all(self, exc: Exception) -> None:
        pending, self.pending = self.pending, {}
        if self._timer is not None:
            self._timer.cancel()
            self._timer, self._timer_at = None, math.inf
        for future, _, _, slot in pending.values():
            self._release(slot)
            if not future.done():
                future.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        else:
            self._fail_all(InstanceConnectionError("the connection to the instance was closed"))


class FrameClient:
    """The framed link to one instance: one pipelined connection, opened on first use and again after
    it went down."""

    def __init__(self, socket_path: str, max_frame: int = frames.DEFAULT_MAX_FRAME, *,
                 share_bodies: bool = False) -> None:
        self.socket_path = socket_path
        self.max_frame = max_frame
        self.share_bodies = share_bodies  # offer each connection a shared-body arena (an instance's link)
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
        if self.share_bodies and shared_bodies.AVAILABLE:
            try:
                arena = BodyArena()
            except OSError as exc:  # no memfd here (or no memory for one): the socket carries everything
                log.info("framed link: no shared-body arena (%s)", exc)
            else:
                conn.offer(arena)
        return conn

    def request(self, method: bytes, path: bytes, body: bytes = b"", headers: bytes = b"",
                timeout: float = 60.0) -> Awaitable[InstanceResponse]:
        # Anything else is no operation of the contract: the instance answers it 404, as over HTTP.
        # (Not a coroutine of its own: one frame less on every invocation's way.)
        return self.call(frames.OPERATIONS.get((method, path), frames.UNKNOWN), body, headers, timeout)

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
