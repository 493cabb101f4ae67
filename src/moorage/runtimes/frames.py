"""The framed link between the router and a built-in runtime's instance: the container contract's
``/ping`` and ``/invocations`` without HTTP.

An instance of a built-in runtime listens on a second Unix socket, ``<socket>.frames``, beside its
HTTP one. Over it each request and each reply is one length-prefixed frame, many requests are in
flight on one connection at once (pipelined), and a reply names the request it answers, so replies
may come back in any order. The semantics are the contract's, only the encoding differs: a request
frame carries the operation (``POST /invocations``, ``GET /ping``, ``GET /execution-parameters``),
the header lines the router forwards (``name: value\\r\\n``, exactly as it would send them over
HTTP) and the body; a reply carries the status, the ``Content-Type``, the custom attributes and the
body. Bring-your-own servers, and everything else that talks to an instance, keep HTTP.

Why not HTTP: at a few microseconds a prediction, parsing and writing HTTP on both sides of the
hop, one request per connection at a time, cost more than the model. Here the instance reads all
the frames that arrived together in one ``recv``, batches them into one model call, and writes all
their replies in one ``send``; the router does the same with the requests it forwards.

Wire format (network byte order)::

    request  = length:u32  id:u32  op:u8  headers_length:u16  headers  body
    reply    = length:u32  id:u32  status:u16  content_type_length:u16  custom_attributes_length:u16
               content_type  custom_attributes  body

``length`` counts the bytes after itself. A frame longer than the reader's limit is not buffered:
a request is answered 413 and its bytes skipped (the connection goes on); a reply over the limit
is a protocol error that closes the connection.

A body from ``shared_bodies.SHARE_MIN`` up may instead lie in the sender's shared-memory arena, which
the connection's first frame (``SHARE``) asks the receiver to map; its frame (``INVOKE_SHARED``)
carries where, and ``FramedProtocol.invocation_body`` copies it out (``shared_bodies.py``).

Reading is written against ``asyncio.BufferedProtocol``: small frames are cut out of one reused
receive buffer, and a large body is received straight into a buffer of its own size, so a 5 MB
image is copied once in Python (into the ``bytes`` the handler gets), however many reads it took.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from moorage.runtimes.shared_bodies import REFERENCE, SharedBodies, WithdrawnBody

__all__ = [
    "EXECUTION_PARAMETERS",
    "INVOKE",
    "INVOKE_SHARED",
    "OPERATIONS",
    "PING",
    "REPLY_FIELDS",
    "REPLY_HEAD",
    "REQUEST_FIELDS",
    "REQUEST_HEAD",
    "SHARE",
    "SOCKET_SUFFIX",
    "UNKNOWN",
    "FrameError",
    "FrameReader",
    "FramedProtocol",
    "encode_reply",
    "encode_reply_head",
    "encode_request_head",
    "header_value",
    "next_id",
    "request_fields",
]

log = logging.getLogger("moorage.frames")
_TEXT = b"text/plain; charset=utf-8"

SOCKET_SUFFIX = ".frames"  # the framed listener's socket: the instance's HTTP socket path plus this

UNKNOWN = 0
INVOKE = 1
PING = 2
EXECUTION_PARAMETERS = 3
# No HTTP counterparts: the router asks an instance to map its shared-body arena (the frame's body
# names it), then sends invocations whose body lies there, the frame carrying where (shared_bodies.py).
SHARE = 4
INVOKE_SHARED = 5
OPERATIONS = {(b"POST", b"/invocations"): INVOKE, (b"GET", b"/ping"): PING, (b"HEAD", b"/ping"): PING,
              (b"GET", b"/execution-parameters"): EXECUTION_PARAMETERS}

REQUEST_HEAD = struct.Struct("!IIBH")  # length, id, op, headers length
REPLY_HEAD = struct.Struct("!IIHHH")  # length, id, status, content-type length, custom-attributes length
# The same heads without the length, as a FrameReader hands frames over.
REQUEST_FIELDS = struct.Struct("!IBH")
REPLY_FIELDS = struct.Struct("!IHHH")
_LENGTH = struct.Struct("!I")
# A frame up to 64 MiB by default: InvokeEndpoint's 6 MB, and the 25 MB some SageMaker paths take,
# with room for what the runtime answers.
DEFAULT_MAX_FRAME = 64 * 1024 * 1024
# The receive buffer small frames are cut from; a frame whose rest does not fit in it gets its own.
_CHUNK = 256 * 1024
_MAX_ID = 0xFFFFFFFF


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol; the connection cannot go on."""


def encode_request_head(request_id: int, op: int, headers: bytes, body_length: int) -> bytes:
    """A request frame's head and header lines; the body follows it on the wire as it is."""
    return REQUEST_HEAD.pack(REQUEST_HEAD.size - 4 + len(headers) + body_length, request_id, op,
                             len(headers)) + headers


def encode_reply(request_id: int, status: int, content_type: bytes, body: bytes,
                 custom_attributes: bytes = b"") -> bytes:
    """A whole reply frame (bodies are joined into it: the caller decides when a body is big enough to
    send apart, with ``encode_reply_head``)."""
    return encode_reply_head(request_id, status, content_type, len(body), custom_attributes) + body


def encode_reply_head(request_id: int, status: int, content_type: bytes, body_length: int,
                      custom_attributes: bytes = b"") -> bytes:
    return REPLY_HEAD.pack(REPLY_HEAD.size - 4 + len(content_type) + len(custom_attributes) + body_length,
                           request_id, status, len(content_type), len(custom_attributes)) + content_type \
        + custom_attributes


def request_fields(buffer: bytearray, start: int, end: int) -> tuple[int, int, int]:
    """A request frame's id, operation and header-lines length (they follow the fields), or FrameError
    when the frame is too short for its head or its header lines."""
    if end - start < REQUEST_FIELDS.size:
        raise FrameError(f"a request frame of {end - start} bytes, shorter than its head")
    request_id, op, headers_length = REQUEST_FIELDS.unpack_from(buffer, start)
    if start + REQUEST_FIELDS.size + headers_length > end:
        raise FrameError(f"request {request_id}: {headers_length} bytes of headers in a frame of {end - start}")
    return request_id, op, headers_length


def header_value(headers: bytes, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case) in forwarded ``name: value\\r\\n`` lines, or None."""
    start = 0
    if not headers.startswith(name + b":"):
        start = headers.find(b"\r\n" + name + b":")
        if start < 0:
            return None
        start += 2
    start += len(name) + 1
    end = headers.find(b"\r\n", start)
    return headers[start:end if end >= 0 else len(headers)].strip()


class FrameReader:
    """Cuts frames out of a byte stream fed through ``asyncio.BufferedProtocol``'s two calls.

    ``on_frame(buffer, start, end)`` gets each whole frame, without its length prefix, as
    ``buffer[start:end]``: the buffer is reused once the call returns, so whatever is kept is copied
    out during it (``bytes(buffer[a:b])``, the one copy). ``on_oversize(head, length)``
    gets the first bytes of a frame longer than ``max_frame`` (enough for its fixed head, when it had
    them) and returns whether to skip it and go on (the frame's bytes are then dropped as they come)
    or to stop (FrameError is raised).
    """

    __slots__ = ("_big", "_big_filled", "_buffer", "_end", "_skip", "_start", "max_frame", "min_head", "on_frame",
                 "on_oversize")

    def __init__(self, on_frame: Callable[[bytearray, int, int], None], max_frame: int = DEFAULT_MAX_FRAME,
                 on_oversize: Callable[[bytes, int], bool] | None = None, min_head: int = 4) -> None:
        self.on_frame = on_frame
        self.on_oversize = on_oversize
        self.max_frame = max_frame
        self.min_head = min_head  # bytes an oversize frame's handler wants to see (its fixed head)
        self._buffer = bytearray(_CHUNK)
        self._start = 0  # unread bytes are _buffer[_start:_end]
        self._end = 0
        self._big: bytearray | None = None  # a large frame's own buffer, while it is being received
        self._big_filled = 0
        self._skip = 0  # bytes of an oversize frame still to drop

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        if self._big is not None:
            return memoryview(self._big)[self._big_filled:]
        if self._end == len(self._buffer):
            self._compact()
        return memoryview(self._buffer)[self._end:]

    def buffer_updated(self, nbytes: int) -> None:
        if self._big is not None:
            self._big_filled += nbytes
            if self._big_filled == len(self._big):
                frame, self._big = self._big, None
                self.on_frame(frame, 0, len(frame))
            return
        self._end += nbytes
        self._cut()

    def _compact(self) -> None:
        left = self._end - self._start
        if left and self._start:
            self._buffer[:left] = self._buffer[self._start:self._end]
        self._start, self._end = 0, left

    def _cut(self) -> None:
        buffer = self._buffer
        while True:
            if self._skip:
                dropped = min(self._skip, self._end - self._start)
                self._skip -= dropped
                self._start += dropped
                if self._skip:
                    break
            available = self._end - self._start
            if available < 4:
                break
            start = self._start
            length = _LENGTH.unpack_from(buffer, start)[0]
            if length > self.max_frame:
                if available < min(self.min_head, 4 + length):
                    break
                head = bytes(buffer[start:start + self.min_head])
                if self.on_oversize is None or not self.on_oversize(head, length):
                    raise FrameError(f"a frame of {length} bytes, over the limit of {self.max_frame}")
                self._start += 4
                self._skip = length
                continue
            if available >= 4 + length:
                self._start = start + 4 + length
                self.on_frame(buffer, start + 4, start + 4 + length)
                continue
            if 4 + length > len(buffer):
                # Too big for the shared buffer: it gets its own, and the rest is received into it.
                big = bytearray(length)
                got = available - 4
                big[:got] = buffer[start + 4:self._end]
                self._start = self._end = 0
                self._big, self._big_filled = big, got
                return
            break
        if self._start == self._end:
            self._start = self._end = 0
        elif len(buffer) - self._end < 4096:
            self._compact()


# A body at least this big is written beside its frame's head rather than joined to it (a copy).
JOIN_LIMIT = 64 * 1024


class FramedProtocol(asyncio.BufferedProtocol):
    """Either end of a framed connection: frames in through a ``FrameReader``, frames out gathered.

    ``queue`` collects what is to be written and ``flush`` writes it in one call; what is queued in
    one turn of the event loop is flushed at its end, unless the caller flushes sooner. Subclasses
    give the reader its ``on_frame`` and say what a malformed stream means (``malformed``).
    """

    def __init__(self, reader: FrameReader) -> None:
        self.reader = reader
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._shared: SharedBodies | None = None  # the peer's arena, once its SHARE frame had us map it

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        widen_send_buffer(transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.reader.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.reader.buffer_updated(nbytes)
        except FrameError as exc:
            self.malformed(exc)

    def malformed(self, exc: FrameError) -> None:
        """The peer sent something that is not a frame: the connection cannot go on."""
        if self.transport is not None:
            self.transport.close()

    # The receiving end of shared bodies (shared_bodies.py): an instance's, and the router link's.
    def map_shared(self, request_id: int, request: bytes) -> None:
        """Answer a SHARE frame: map the peer's arena (200), or say why not (500; the peer then sends
        every body in its frame)."""
        try:
            shared = SharedBodies(request)
        except (OSError, ValueError) as exc:
            log.info("framed link: cannot map the peer's shared bodies (%s); they come through the socket", exc)
            self.queue(encode_reply(request_id, 500, _TEXT, f"cannot map shared bodies: {exc}".encode()))
            return
        if self._shared is not None:
            self._shared.close()
        self._shared = shared
        self.queue(encode_reply(request_id, 200, _TEXT, b""))

    def invocation_body(self, request_id: int, op: int, buffer: bytearray, start: int, end: int) -> bytes | None:
        """An invocation frame's body, copied out of ``buffer[start:end]`` (INVOKE) or out of the arena
        the reference there points into (INVOKE_SHARED); or None, its request answered: 400 (no arena
        mapped, a reference outside it), 413 (over the reader's frame limit), 500 (withdrawn: its request
        ended at the peer, which reads no reply to it)."""
        if op == INVOKE:
            return bytes(memoryview(buffer)[start:end])  # one copy, not two
        reference = memoryview(buffer)[start:end]
        if self._shared is None:
            self.queue(encode_reply(request_id, 400, _TEXT, b"a shared body before any SHARE"))
            return None
        if len(reference) == REFERENCE.size and (length := REFERENCE.unpack(reference)[1]) > self.reader.max_frame:
            self.queue(encode_reply(request_id, 413, _TEXT, f"a body of {length} bytes is over this link's limit "
                                                            f"of {self.reader.max_frame} bytes".encode()))
            return None
        try:
            return self._shared.read(reference)
        except ValueError as exc:
            self.queue(encode_reply(request_id, 400, _TEXT, str(exc).encode()))
        except WithdrawnBody as exc:
            self.queue(encode_reply(request_id, 500, _TEXT, str(exc).encode()))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing more is written; the peer's arena, if one was mapped, is unmapped."""
        self.transport = None
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def queue(self, head: bytes, body: bytes = b"", *, now: bool = False) -> None:
        """A frame to write (its head, and its body when that is large enough to travel apart)."""
        if len(body) < JOIN_LIMIT:
            self._out.append(head + body if body else head)
        else:
            self._out.append(head)
            self._out.append(body)
        if now:
            self.flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if not out or self.transport is None or self.transport.is_closing():
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)


# A Unix stream socket holds at most its send buffer of bytes written and not yet read (212,992 by
# default): a 1 MiB body crossed in five writes, each waking the reader for a fifth of it (measured,
# 1 MiB bodies at c=32 on one core: the instance's wake-ups per request fell from 4.9 to 0.4; the CPU
# a request costs hardly moved, being the body's copies and its SHA-256). The kernel caps what is
# asked at net.core.wmem_max, taking less silently. Not for TCP (cluster mode), where a fixed buffer
# would turn off the kernel's own sizing of it.
SEND_BUFFER = 8 * 1024 * 1024


def widen_send_buffer(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family == socket.AF_UNIX:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def next_id(current: int) -> int:
    return 1 if current >= _MAX_ID else current + 1
