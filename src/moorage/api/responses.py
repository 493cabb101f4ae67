"""Raw-ASGI response helpers shared by the front doors, and AWS-shaped errors."""

from __future__ import annotations

import ctypes
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect

from moorage.errors import ApiError, ContentTooLarge, ServiceUnavailable

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_10 = b"application/x-amz-json-1.0"
JSON_11 = b"application/x-amz-json-1.1"
JSON = b"application/json"


def request_id() -> bytes:
    return uuid.uuid4().hex.encode()


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_parts(code: str, message: str, status: int, content_type: bytes = JSON_11,
                fields: dict[str, Any] | None = None,
                extra_headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """An AWS JSON error as (status, headers, body)."""
    payload: dict[str, Any] = {"__type": code, "message": message}
    if fields:
        payload.update(fields)
    headers = [(b"content-type", content_type), (b"x-amzn-errortype", code.encode()),
               (b"x-amzn-requestid", request_id())]
    if extra_headers:
        headers += extra_headers
    return status, headers, orjson.dumps(payload)


def error_response(error: ApiError, content_type: bytes = JSON_11) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    return error_parts(error.code, error.message, error.status, content_type, error.fields)


async def respond_error(send: Send, code: str, message: str, status: int, content_type: bytes = JSON_11,
                        fields: dict[str, Any] | None = None,
                        extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    status, headers, body = error_parts(code, message, status, content_type, fields, extra_headers)
    await respond(send, status, body, headers)


async def respond_api_error(send: Send, error: ApiError, content_type: bytes = JSON_11) -> None:
    status, headers, body = error_response(error, content_type)
    await respond(send, status, body, headers)


class BodyTooLarge(Exception):
    pass


class PendingBodies:
    """The bytes of request bodies held in memory before their signature is checked, all requests together.

    Each door reads a body whole before SigV4 can be verified over it, up to the door's own limit, and a
    ``Content-Length`` over that limit is refused before a byte is read; but a chunked body declares no
    length, so without a shared bound many connections could each hold a door's limit. Over ``limit``, the
    request that asked for more is answered 503 (``ServiceUnavailable``) and what it held is let go.
    """

    def __init__(self, limit: int = 256 * 1024 * 1024) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        if self.held + size > self.limit:
            raise ServiceUnavailable(f"The server holds {self.held} bytes of request bodies not yet verified, its "
                                     f"limit (MOORAGE_HTTP_MAX_PENDING_BODY_BYTES); retry later.")
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


PENDING_BODIES = PendingBodies()  # one event loop serves every door: no lock needed


class DirectBody:
    """A request body received into a buffer of its declared Content-Length as it arrives.

    uvicorn hands an application its body by appending each chunk to a bytearray and copying that
    into a new ``bytes`` per message, and the door joins the messages: three copies of every byte.
    Received this way a body is copied once (from the parser's chunk into its place), which is what
    a megabyte-sized image or audio clip costs most of its time in. ``buffer`` is a bytearray, which
    hashing, framing and the handlers' decoders take as they take bytes.
    """

    __slots__ = ("buffer", "filled")

    def __init__(self, size: int) -> None:
        self.buffer = _unfilled_bytearray(size)
        self.filled = 0

    def add(self, chunk: bytes) -> None:
        end = self.filled + len(chunk)
        if end <= len(self.buffer):  # the parser never gives more than Content-Length; never overrun
            self.buffer[self.filled:end] = chunk
        self.filled = end

    @property
    def complete(self) -> bool:
        return self.filled == len(self.buffer)


# CPython's own constructor with no source: a bytearray of that size whose bytes are not set, where
# ``bytearray(size)`` zeroes them first (measured: 30 µs of the router's CPU per 1 MiB body, every byte
# then overwritten by the body). A DirectBody is handed on only once ``complete``, every byte received.
_new_bytearray = ctypes.pythonapi.PyByteArray_FromStringAndSize
_new_bytearray.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
_new_bytearray.restype = ctypes.py_object


def _unfilled_bytearray(size: int) -> bytearray:
    return _new_bytearray(None, size)


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body; raises BodyTooLarge as soon as it passes ``limit`` bytes, ServiceUnavailable
    when the bodies being read together pass ``PENDING_BODIES.limit``, and Starlette's ClientDisconnect
    when the client goes away first: what arrived is not the request."""
    message = await receive()
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        # A disconnect carries no body, so a request with one skips the type check.
        if not body and message["type"] == "http.disconnect":
            raise ClientDisconnect
        if limit is not None and len(body) > limit:
            raise BodyTooLarge(len(body))
        return body
    chunks = [body]
    size = len(body)
    PENDING_BODIES.take(size)
    held = size
    try:
        while message.get("more_body"):
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            chunk = message.get("body", b"")
            size += len(chunk)
            if limit is not None and size > limit:
                raise BodyTooLarge(size)
            PENDING_BODIES.take(len(chunk))
            held += len(chunk)
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        PENDING_BODIES.give(held)


async def read_stream_body(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """A Starlette request's body (``request.stream()``), under ``limit`` (ContentTooLarge past it) and
    the same shared budget as ``read_body``."""
    parts: list[bytes] = []
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > limit:
                raise ContentTooLarge(f"The request body is over this route's limit of {limit} bytes.")
            PENDING_BODIES.take(len(chunk))
            parts.append(chunk)
        return b"".join(parts)
    finally:
        PENDING_BODIES.give(sum(len(p) for p in parts))
