"""The HTTP edge of ``moorage serve``: what one connection may cost before anyone is authenticated.

Every door checks a SigV4 signature, but only over a request it has received: before that, a client
nobody knows decides how many bytes of headers the server holds, how long a connection stays open
and how many it opens. This module bounds each of those, at the layer that sees them first:

* ``edge_protocol`` makes a subclass of uvicorn's httptools protocol (uvicorn has no header limits,
  no header-read timeout and no per-client cap; its ``limit_concurrency`` answers 503 only once a
  whole header block has been parsed, so it bounds nothing a slow or huge header block costs). The
  subclass counts the bytes of a request's line and headers while they arrive and answers 431 past
  ``max_header_bytes`` or ``max_headers``, closes a connection that has not sent a whole header block
  within ``header_timeout`` (408) or whose body stops arriving for ``body_timeout`` (408), and
  refuses a connection beyond ``max_connections`` overall or ``max_connections_per_client`` from one
  address with a fixed 503 written before a byte is read.
* The same subclass serves InvokeEndpoint itself (the invocation lane), the product's hot path: the
  request's header block and body go straight to the runtime door's ``invoke`` in one task, without
  uvicorn's ASGI scope, request cycle and application wrapper, its ``receive`` messages or its ``send``
  (measured on one core: uvicorn's ASGI machinery costs about 11 µs a request, a bare httptools
  protocol 7). The answer is written in one ``write`` with its Content-Length (``_Invocation.respond``),
  where ASGI's ``send`` writes head and body apart in chunked encoding. What the lane does not take
  goes uvicorn's way, to the same door over ASGI: a chunked or oversized body, a percent-encoded path,
  a server with access logging. An invocation pipelined behind a request not yet answered waits in
  uvicorn's queue of them, and is answered when its turn comes.
* A body of at least ``DIRECT_MIN`` bytes is received straight into a buffer of its declared length
  (``responses.DirectBody``) instead of chunk by chunk. What the header block's read left of such a
  body is read by the kernel into that buffer (``_DirectReceiver``, an ``asyncio.BufferedProtocol``
  the transport switches to): no parser pass, no chunk objects, no copy in Python at all. httptools
  cannot be told to skip bytes, so the connection gets a fresh parser for the request after it.
* ``ContentLengthLimits`` wraps the application and refuses a declared ``Content-Length`` above the
  control plane's limit before its body is read, in the shape of the door it was sent to (the
  runtime, native, device and S3 doors check their own limits on ``Content-Length`` already).
* ``raise_fd_limit`` lifts the soft file-descriptor limit to the hard one at start-up, and
  ``effective_max_connections`` keeps the connection cap under what the process can open.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from moorage.api.query_protocol import QueryFrontDoor, is_query_request
from moorage.api.responses import (
    JSON,
    PENDING_BODIES,
    DirectBody,
    Receive,
    Scope,
    Send,
    error_response,
    respond_error,
)
from moorage.api.rpcv2_cbor import RpcV2CborFrontDoor
from moorage.api.runtime import MAX_PAYLOAD, RuntimeFrontDoor, invoked_endpoint
from moorage.api.s3 import s3_scope_in
from moorage.api.sagemaker import MAX_CONTROL_BODY
from moorage.errors import ApiError, InternalFailure

log = logging.getLogger("moorage.http")

# Descriptors kept back from the connection cap: the database, logs, sockets to instances, pipes.
FD_RESERVE = 256
# Refusal warnings are rate-limited: an attacker's flood must not become a flood of log lines.
_WARN_EVERY = 10.0
# InvokeEndpoint bodies from this size up are received into one buffer (smaller ones copy for nothing),
# up to the runtime's own limit (a larger one is refused by the door from its Content-Length).
DIRECT_MIN = 64 * 1024


def _fixed_response(status: bytes, message: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(message)).encode() + b"\r\nconnection: close\r\n\r\n" + message)


# Written before the request is parsed (or instead of parsing it): no door, so no door's error shape.
_BUSY = _fixed_response(b"503 Service Unavailable", b"Too many open connections; try again later.\n")
_HEADERS_TOO_LARGE = _fixed_response(b"431 Request Header Fields Too Large",
                                     b"The request's header block is over this server's limit.\n")
_TOO_MANY_HEADERS = _fixed_response(b"431 Request Header Fields Too Large",
                                    b"The request has more header fields than this server accepts.\n")
_HEADER_TIMEOUT = _fixed_response(b"408 Request Timeout",
                                  b"The request's header block did not arrive in time.\n")
_BODY_TIMEOUT = _fixed_response(b"408 Request Timeout", b"The request's body stopped arriving.\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _TooManyHeaders(Exception):
    pass


class HandedOver(Exception):
    """Raised from a parser callback by a subclass that handed the connection to another process: the
    parser stops, nothing more is read or answered here."""


class _Refusals:
    """Counts what the edge refused, and says so in the log at most every few seconds."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._last_warned = 0.0

    def note(self, what: str, client: str) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        now = time.monotonic()
        if now - self._last_warned >= _WARN_EVERY:
            self._last_warned = now
            log.warning("refused a connection from %s: %s (refused so far: %s)", client, what,
                        ", ".join(f"{n} {k}" for k, n in sorted(self.counts.items())))


class _NoEvent:
    """uvicorn's protocol wakes a request cycle's ``receive`` through its event; an invocation read by the
    edge has no ``receive`` to wake."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class _Invocation:
    """An InvokeEndpoint the edge reads and answers itself. It stands as the protocol's ``cycle`` while it
    lasts, with the state uvicorn's protocol reads and writes of a request cycle (disconnected, keep-alive,
    whether the response began and ended)."""

    __slots__ = (
        "arrived",
        "body",
        "default_headers",
        "disconnected",
        "flow",
        "headers",
        "keep_alive",
        "more_body",
        "name",
        "on_response",
        "query",
        "queued",
        "raw_path",
        "response_complete",
        "response_started",
        "started",
        "transport",
        "waiting_for_100_continue",
    )
    message_event = _NO_EVENT

    def __init__(self, protocol: HttpToolsProtocol, keep_alive: bool, name: str, raw_path: bytes, query: bytes,
                 arrived: float, started: float) -> None:
        self.transport = protocol.transport
        self.flow = protocol.flow
        self.default_headers = protocol.server_state.default_headers
        self.on_response = protocol.on_response_complete
        self.keep_alive = keep_alive
        self.name = name
        self.raw_path = raw_path
        self.query = query
        self.headers = protocol.headers
        self.body: bytes | bytearray = b""
        self.arrived = arrived
        self.started = started
        self.more_body = True
        self.disconnected = False
        self.response_started = False
        self.response_complete = False
        self.waiting_for_100_continue = False
        self.queued = False  # pipelined behind a request not yet answered

    def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """Write the whole answer in one write with its Content-Length (ASGI's ``send`` writes head and body
        apart, chunked), keeping the state uvicorn's protocol reads; False, with nothing written, when a
        header value carries a line break."""
        parts = [STATUS_LINE[status]]
        for name, value in self.default_headers:
            parts += (name, b": ", value, b"\r\n")
        for name, value in headers:
            if b"\n" in value or b"\r" in value:
                return False
            parts += (name, b": ", value, b"\r\n")
        parts.append(b"content-length: %d\r\n" % len(body))
        if not self.keep_alive:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self.response_started = True
        if len(body) < 65536:
            parts.append(body)
            self.transport.write(b"".join(parts))
        else:
            self.transport.writelines((b"".join(parts), body))
        self.response_complete = True
        if not self.keep_alive:
            self.transport.close()
        self.on_response()
        return True


def edge_protocol(*, max_header_bytes: int, max_headers: int, header_timeout: float, max_connections: int,
                  max_connections_per_client: int, body_timeout: float | None = None,
                  invocations: RuntimeFrontDoor | None = None) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol with this server's limits; pass it as ``uvicorn.Config(http=...)``.
    The per-client counts live in this class (one per server), as uvicorn's own connection set lives
    in its server state. ``invocations``: the runtime door the edge hands InvokeEndpoint requests to
    itself (the invocation lane; without it they go to the application like any other)."""
    per_client: dict[str, int] = {}
    refusals = _Refusals()

    class EdgeProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._client_host: str | None = None
            self._reading_headers = True
            self._header_bytes = 0
            self._header_count = 0
            self._header_deadline: float | None = None  # loop time by which the header block must be whole
            self._idle_deadline: float | None = None  # keep-alive: loop time at which the idle connection closes
            self._timer: Any = None  # the one timer for both, due at _timer_at
            self._timer_at = math.inf
            self._body_timer: Any = None
            self._body_progress = 0.0
            self._direct: DirectBody | None = None
            self._invocation: _Invocation | None = None  # an invocation whose body is arriving

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else "unknown"
            if len(self.connections) > max_connections:
                self._refuse(_BUSY, "over the server's connection limit", host)
                return
            if per_client.get(host, 0) >= max_connections_per_client:
                self._refuse(_BUSY, "over the per-client connection limit", host)
                return
            self._client_host = host
            per_client[host] = per_client.get(host, 0) + 1
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._header_deadline = self._idle_deadline = None
            if self._timer is not None:
                self._timer.cancel()
                self._timer, self._timer_at = None, math.inf
            self._cancel_body_timer()
            self._release_direct()
            host = self._client_host
            if host is not None:
                self._client_host = None
                left = per_client.get(host, 1) - 1
                if left > 0:
                    per_client[host] = left
                else:
                    per_client.pop(host, None)
            super().connection_lost(exc)

        def _refuse(self, reply: bytes, what: str, host: str) -> None:
            refusals.note(what, host)
            self._cancel_header_timer()
            self.transport.write(reply)
            self.transport.close()

        # -- the header block ---------------------------------------------------------------------
        def data_received(self, data: bytes) -> None:
            if self.transport.is_closing():
                return  # refused or timed out: what else arrives is not read
            if self._reading_headers:
                self._header_bytes += len(data)
            self._idle_deadline = None  # _unset_keepalive_if_required, inlined
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if isinstance(exc.__context__, HandedOver):
                    return  # a subclass gave the connection to another process (api/router_worker.py)
                if isinstance(exc.__context__, _TooManyHeaders):
                    self._refuse(_TOO_MANY_HEADERS, f"more than {max_headers} header fields", self._host())
                    return
                self.logger.warning("Invalid HTTP request received.")
                self.send_400_response("Invalid HTTP request received.")
                return
            except httptools.HttpParserUpgrade:
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            # Checked after parsing: a chunk that completes its header block may carry body bytes too.
            if self._reading_headers:
                if self._header_bytes > max_header_bytes:
                    self._refuse(_HEADERS_TOO_LARGE, f"a header block over {max_header_bytes} bytes", self._host())
            elif body_timeout is not None and self._body_timer is None and self._awaiting_body():
                # Armed only when a feed ends inside a body: a request whose body came whole costs no timer.
                self._body_progress = self.loop.time()
                self._body_timer = self.loop.call_later(body_timeout, self._body_timed_out)
            direct = self._direct
            if direct is not None and not direct.complete and not self.transport.is_closing():
                self.transport.set_protocol(_DirectReceiver(self, direct))

        def on_message_begin(self) -> None:
            # uvicorn's, less its ASGI scope: built in on_headers_complete for a request that goes its way
            self.url = b""
            self.expect_100_continue = False
            self.headers = []
            if not self._reading_headers:  # the next request on a kept-alive connection
                self._reading_headers = True
                self._header_bytes = 0
                self._arm_header_timer()
            self._header_count = 0

        def on_header(self, name: bytes, value: bytes) -> None:
            self._header_count += 1
            if self._header_count > max_headers:
                raise _TooManyHeaders
            # uvicorn's own, inlined: one call per header, not two
            name = name.lower()
            value = value.rstrip(b" \t")
            if name == b"expect" and value.lower() == b"100-continue":
                self.expect_100_continue = True
            self.headers.append((name, value))

        def on_body(self, body: bytes) -> None:
            self._body_progress = self.loop.time()
            direct = self._direct
            if direct is not None:
                direct.add(body)
                return
            invocation = self._invocation
            if invocation is not None:
                held = invocation.body
                if not held:
                    invocation.body = body  # under DIRECT_MIN in all: most often one piece, kept as it came
                elif type(held) is bytes:
                    invocation.body = bytearray(held) + body
                else:
                    held += body  # a bytearray grows in place: many small pieces cost no quadratic copying
                return
            super().on_body(body)

        def on_message_complete(self) -> None:
            self._cancel_body_timer()
            invocation = self._invocation
            if invocation is None:
                self._release_direct()
                super().on_message_complete()
                return
            self._invocation = None
            invocation.more_body = False
            direct = self._direct
            if direct is not None:
                invocation.body = direct.buffer
                self._release_direct()
            if not invocation.queued:
                self._start_answer(invocation)

        def _start_asgi_task(self, cycle: Any, app: Any) -> None:
            """Where uvicorn starts the request pipelined behind the one just answered."""
            if type(cycle) is not _Invocation:
                super()._start_asgi_task(cycle, app)
                return
            cycle.queued = False
            if cycle.more_body:
                if cycle.waiting_for_100_continue and not self.transport.is_closing():
                    cycle.waiting_for_100_continue = False
                    self.transport.write(_CONTINUE)
                return  # answered once its body is whole
            self._start_answer(cycle)

        def _start_answer(self, invocation: _Invocation) -> None:
            task = self.loop.create_task(self._answer(invocation))
            task.add_done_callback(self.tasks.discard)  # uvicorn's server drains these tasks on shutdown
            self.tasks.add(task)

        def on_headers_complete(self) -> None:
            self._reading_headers = False
            self._header_bytes = 0
            self._cancel_header_timer()
            self._release_direct()
            if invocations is None or not self._read_invocation():
                headers, url, expect = self.headers, self.url, self.expect_100_continue
                super().on_message_begin()  # the ASGI scope
                self.headers = self.scope["headers"] = headers
                self.url, self.expect_100_continue = url, expect
                super().on_headers_complete()

        # -- the invocation lane ----------------------------------------------------------------------
        def _read_invocation(self) -> bool:
            """Take this request into the invocation lane when it is an InvokeEndpoint the lane can read;
            False leaves it to uvicorn."""
            parser = self.parser
            if parser.get_method() != b"POST" or self.access_log or self.limit_concurrency is not None \
                    or self.root_path or parser.should_upgrade():
                return False
            url = httptools.parse_url(self.url)
            raw_path = url.path
            name = invoked_endpoint(raw_path)
            if name is None:
                return False
            length = None
            for key, value in self.headers:
                if key == b"content-length":
                    if length is not None:
                        return False
                    length = value
                elif key == b"transfer-encoding":
                    return False
            if length is None or not length.isdigit() or int(length) > MAX_PAYLOAD:
                return False  # the door refuses an oversized body before reading it; chunked is uvicorn's
            size = int(length)
            if size >= DIRECT_MIN:
                try:
                    PENDING_BODIES.take(size)
                except ApiError:
                    return False  # over the shared budget: the door says so in its own shape
                self._direct = DirectBody(size)  # holds its size of the budget while it arrives
            keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
            invocation = _Invocation(self, keep_alive, name, raw_path, url.query or b"", time.time(),
                                     time.perf_counter())
            earlier = self.cycle
            self.cycle = self._invocation = invocation
            if earlier is not None and not earlier.response_complete:
                # Pipelined behind an answer still to come: it waits its turn in uvicorn's queue, its 100
                # Continue too (answers go out in order), with reading paused meanwhile as uvicorn does.
                invocation.queued = True
                invocation.waiting_for_100_continue = self.expect_100_continue
                self.flow.pause_reading()
                self.pipeline.appendleft((invocation, None))
            elif self.expect_100_continue:
                self.transport.write(_CONTINUE)  # the body is read whatever it holds: ask for it now
            return True

        async def _answer(self, invocation: _Invocation) -> None:
            try:
                status, headers, body, after = await invocations.invoke(  # type: ignore[union-attr]
                    invocation.name, invocation.raw_path, invocation.query, invocation.headers, invocation.body,
                    invocation.arrived, invocation.started)
            except Exception:
                # What uvicorn does for an application that raises, in the door's error shape.
                log.exception("InvokeEndpoint %s failed in the router", invocation.name)
                status, headers, body = error_response(InternalFailure("The router failed to answer."), JSON)
                after = None
            if not invocation.disconnected:
                if invocation.flow.write_paused:
                    await invocation.flow.drain()  # as ASGI's send does: the client reads slower than it asks
                if not invocation.disconnected and not invocation.respond(status, headers, body):
                    # a header the model returned carries a line break: never written as sent
                    log.error("InvokeEndpoint %s: the answer's headers are not valid HTTP", invocation.name)
                    invocation.respond(*error_response(InternalFailure(
                        "The model's answer carried a header that is not valid HTTP."), JSON))
            if after is not None:
                after()

        def direct_received(self) -> None:
            """``_DirectReceiver`` filled the body: this protocol reads the connection again, with a parser
            that starts at the next request (the old one is still counting the body's bytes)."""
            self.transport.set_protocol(self)
            self.parser = httptools.HttpRequestParser(self)
            self.parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn's own parser
            self.on_message_complete()

        def _release_direct(self) -> None:
            """The body is whole (or will never be): its bytes no longer count as pending; the invocation
            keeps the buffer."""
            direct = self._direct
            if direct is not None:
                self._direct = None
                PENDING_BODIES.give(len(direct.buffer))

        # -- the header-read and keep-alive timeouts, on one timer per connection ----------------------
        # Each request on a kept-alive connection would otherwise set and cancel two timers (1.3 µs each
        # with uvloop). The deadlines are plain numbers; the timer, due at the earliest of them, moves
        # only for a deadline before it, and when it fires it looks at them and sets itself again.
        def _arm_header_timer(self) -> None:
            self._header_deadline = deadline = self.loop.time() + header_timeout
            if deadline < self._timer_at:
                self._set_timer(deadline)

        def _cancel_header_timer(self) -> None:
            self._header_deadline = None

        def _set_timer(self, when: float) -> None:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(when, self._deadline_passed)
            self._timer_at = when

        def _deadline_passed(self) -> None:
            self._timer, self._timer_at = None, math.inf
            if self.transport.is_closing():
                return
            now = self.loop.time()
            if self._header_deadline is not None and now >= self._header_deadline:
                self._header_deadline = None
                self._header_timed_out()
            elif self._idle_deadline is not None and now >= self._idle_deadline:
                self._idle_deadline = None
                self.timeout_keep_alive_handler()
            if self.transport.is_closing():
                return
            due = min(d for d in (self._header_deadline, self._idle_deadline, math.inf) if d is not None)
            if due < math.inf:
                self._set_timer(due)

        def _unset_keepalive_if_required(self) -> None:
            self._idle_deadline = None

        def on_response_complete(self) -> None:
            # uvicorn's, with its keep-alive wait as a deadline on this connection's timer
            self.server_state.total_requests += 1
            if self.transport.is_closing():
                return
            self._idle_deadline = None
            self.flow.resume_reading()
            if self.pipeline:
                cycle, app = self.pipeline.pop()
                self._start_asgi_task(cycle, app)
            else:
                self._idle_deadline = deadline = self.loop.time() + self.timeout_keep_alive
                if deadline < self._timer_at:
                    self._set_timer(deadline)

        def _header_timed_out(self) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                return  # an earlier, pipelined request is still being answered; its end closes or re-arms
            self._refuse(_HEADER_TIMEOUT, f"no whole header block within {header_timeout:g}s", self._host())

        # -- the body-read timeout: a body that stops arriving holds a connection and its buffer -----
        def _awaiting_body(self) -> bool:
            cycle = self.cycle
            return cycle is not None and cycle.more_body and not cycle.response_complete and not cycle.disconnected

        def _cancel_body_timer(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timed_out(self) -> None:
            assert body_timeout is not None
            self._body_timer = None
            if self.transport.is_closing() or not self._awaiting_body():
                return
            idle = self.loop.time() - self._body_progress
            # Reading paused: the application is the slow one (it has not taken what arrived), not the client.
            if idle < body_timeout or self.flow.read_paused:
                wait = body_timeout - idle if idle < body_timeout else body_timeout
                self._body_timer = self.loop.call_later(wait, self._body_timed_out)
                return
            what = f"no body bytes for {body_timeout:g}s"
            if self.cycle.response_started:
                refusals.note(what, self._host())
                self.transport.close()
            else:
                self._refuse(_BODY_TIMEOUT, what, self._host())

        def _host(self) -> str:
            return self.client[0] if self.client else "unknown"

    EdgeProtocol.refusals = refusals  # type: ignore[attr-defined]
    return EdgeProtocol


class _DirectReceiver(asyncio.BufferedProtocol):
    """The connection's protocol while the rest of a direct body arrives: the kernel reads into the body's
    own buffer, and the edge protocol takes the connection back once the body is whole. What happens
    to the connection meanwhile (lost, closed by the client, paused for writing) is the edge's."""

    __slots__ = ("direct", "edge")

    def __init__(self, edge: Any, direct: DirectBody) -> None:
        self.edge = edge
        self.direct = direct

    def get_buffer(self, sizehint: int) -> memoryview:
        direct = self.direct
        return memoryview(direct.buffer)[direct.filled:]  # never past the body: the next request is the parser's

    def buffer_updated(self, nbytes: int) -> None:
        direct = self.direct
        direct.filled += nbytes
        edge = self.edge
        edge._body_progress = edge.loop.time()
        if direct.complete:
            edge.direct_received()

    def eof_received(self) -> bool | None:
        return self.edge.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.edge.connection_lost(exc)

    def pause_writing(self) -> None:
        self.edge.pause_writing()

    def resume_writing(self) -> None:
        self.edge.resume_writing()


def raise_fd_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard limit, where the OS allows; (soft, hard) after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, hard, exc)
    return soft, hard


def effective_max_connections(configured: int, fd_soft_limit: int) -> int:
    """The connection cap, lowered where the process could not open that many sockets and still work."""
    if fd_soft_limit == -1:  # RLIM_INFINITY
        return configured
    return max(1, min(configured, fd_soft_limit - FD_RESERVE))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


class ContentLengthLimits:
    """Refuse a control-plane request whose declared body is over the control plane's limit before
    reading it, answered in the door's own error shape with ``Connection: close`` (the rest of the
    body is never read). The doors still count what they read: a chunked body has no length to check."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Any]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path = scope["path"]
            if path == "/" or path.startswith("/service/"):
                length = _content_length(scope)
                if length is not None and length > MAX_CONTROL_BODY and not s3_scope_in(scope):
                    await _control_too_large(scope, send, length)
                    return
        await self.app(scope, receive, send)


_CLOSE = [(b"connection", b"close")]


async def _control_too_large(scope: Scope, send: Send, length: int) -> None:
    message = f"Request body too large: {length} bytes exceed the limit of {MAX_CONTROL_BODY} bytes."

    async def closing(event: dict[str, Any]) -> None:
        if event["type"] == "http.response.start":
            event = {**event, "headers": [*event["headers"], *_CLOSE]}
        await send(event)

    if scope["path"].startswith("/service/"):
        await RpcV2CborFrontDoor._error(closing, None, "SerializationException", message, 413)
    elif is_query_request(scope):
        await QueryFrontDoor._error(closing, "RequestEntityTooLarge", message, True, 413)
    else:
        await respond_error(closing, "SerializationException", message, 413)
