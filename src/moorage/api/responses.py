"""Raw-ASGI response helpers shared by the front doors, and AWS-shaped errors."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import ClientDisconnect

from moorage.errors import ApiError

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


async def respond_error(send: Send, code: str, message: str, status: int, content_type: bytes = JSON_11,
                        fields: dict[str, Any] | None = None,
                        extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
    payload: dict[str, Any] = {"__type": code, "message": message}
    if fields:
        payload.update(fields)
    headers = [(b"content-type", content_type), (b"x-amzn-errortype", code.encode()),
               (b"x-amzn-requestid", request_id())]
    if extra_headers:
        headers += extra_headers
    await respond(send, status, orjson.dumps(payload), headers)


async def respond_api_error(send: Send, error: ApiError, content_type: bytes = JSON_11) -> None:
    await respond_error(send, error.code, error.message, error.status, content_type, error.fields)


class BodyTooLarge(Exception):
    pass


async def read_body(receive: Receive, limit: int | None = None) -> bytes:
    """The whole request body; raises BodyTooLarge as soon as it passes ``limit`` bytes, and
    Starlette's ClientDisconnect when the client goes away first: what arrived is not the request."""
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
    while message.get("more_body"):
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)
