"""One seam for the native REST API (``/moorage/v1/...``): every route signed, every error AWS-shaped.

The native routes used to check SigV4 and write the AWS error body out by hand, and the copies
drifted (a missing ``x-amzn-errortype``, one route's 404 another's 400). Now a route is built with
``signed_route`` (or ``signed_streaming_route`` for a body too large to hold), which verifies the
signature before the handler runs; the handler raises errors from ``moorage.errors`` and returns a
document or a ``Response``. ``native_app`` holds the verifier and registers the one exception
handler, ``error_response``, that renders what handlers raise. A test walks every registered route
and proves that an unsigned or wrongly signed request is refused, so a route added without the
seam fails it.

Status rule, decided here once: the native API is REST, so "no such resource" answers 404
(``_REST_STATUS``); the SageMaker JSON door answers the same errors with AWS's 400.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from moorage.api.access import AccessDeniedException, native_action
from moorage.api.responses import read_stream_body, request_id
from moorage.api.sigv4 import AuthError, SigV4Verifier
from moorage.errors import ApiError, ContentTooLarge, ObjectNotFound, ResourceNotFound, ScalingResourceNotFound

__all__ = ["MAX_BODY", "error_response", "json_reply", "native_app", "signed_route", "signed_streaming_route"]

log = logging.getLogger("moorage.api.native")

# The service the native API's requests are scoped to: what connection.py signs with.
NATIVE_SIGNING_NAME = "sagemaker"
# Routes that take their body whole take JSON documents: the SageMaker JSON door's limit.
MAX_BODY = 16 * 1024 * 1024
_HEX = frozenset("0123456789abcdef")
_REST_STATUS: dict[type[ApiError], int] = {ResourceNotFound: 404, ObjectNotFound: 404,
                                           ScalingResourceNotFound: 404, AccessDeniedException: 403}
# What Starlette's router raises on its own: no route, or a method the route lacks.
_HTTP_CODES = {404: "UnknownOperationException", 405: "UnknownOperationException"}

Handler = Callable[[Request, bytes], Awaitable[Any]]
StreamingHandler = Callable[[Request, str], Awaitable[Any]]


def json_reply(document: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY), status_code=status,
                    media_type="application/json")


def _reply(result: Any) -> Response:
    return result if isinstance(result, Response) else json_reply(result)


def _verify(request: Request, route: str, body: bytes, payload_hash: str | None = None) -> None:
    scope = request.scope
    # Set by native_app; a route mounted anywhere else fails closed (500), it is never left open.
    verifier: SigV4Verifier = request.app.state.verifier
    # The moorage SDK and CLI sign for SageMaker (connection.py); a presigned URL, good for up to a
    # week, is never taken here: these routes change state, and a leaked URL would keep working.
    principal = verifier.verify(request.method, scope.get("raw_path") or scope["path"].encode(),
                                scope.get("query_string", b""), scope["headers"], body, payload_hash=payload_hash,
                                service=NATIVE_SIGNING_NAME, allow_presigned=False)
    verifier.authorize(principal, native_action(request.method, route, request.path_params))


def signed_route(path: str, handler: Handler, methods: Sequence[str], *, max_body: int = MAX_BODY) -> Route:
    """A route whose handler gets ``(request, body)`` once the signature over that body is verified."""

    async def endpoint(request: Request) -> Response:
        body = await read_request_body(request, max_body)
        _verify(request, path, body)
        return _reply(await handler(request, body))

    return Route(path, endpoint, methods=list(methods), name=handler.__name__)


async def read_request_body(request: Request, limit: int) -> bytes:
    """A Starlette request's whole body, refused (ContentTooLarge) on a declared Content-Length over
    ``limit`` before a byte is read, then read under the limit and the shared unverified-body budget."""
    # Not Starlette's max_body_size: it answers a declared Content-Length over the limit in plain text.
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise ContentTooLarge(f"The request body ({length} bytes) is over this route's limit of {limit} bytes.")
    return await read_stream_body(request.stream(), limit)


def signed_streaming_route(path: str, handler: StreamingHandler, methods: Sequence[str]) -> Route:
    """A route for bodies too large to hold: verified over the declared ``X-Amz-Content-SHA256``
    before a byte of the body is read, so an unauthenticated client cannot make the server write
    anything. The handler gets ``(request, declared_sha256)``, reads ``request.stream()`` and must
    refuse the bytes unless they hash to the declared value (the signature covers only the hash)."""

    async def endpoint(request: Request) -> Response:
        headers = request.scope["headers"]
        declared = next((v for k, v in headers if k == b"x-amz-content-sha256"), b"").decode("latin-1").strip()
        # Authentication first (a request with no signature is a 403 whatever else it lacks), but a
        # signed request without the hash was signed over a body we cannot check without holding it.
        if any(k == b"authorization" for k, _ in headers):
            _declared_sha256(declared)  # no hash, or UNSIGNED-PAYLOAD: a 400 saying what a stream must declare
        _verify(request, path, b"", payload_hash=declared or None)
        return _reply(await handler(request, _declared_sha256(declared)))

    return Route(path, endpoint, methods=list(methods), name=handler.__name__)


def _declared_sha256(declared: str) -> str:
    if len(declared) != 64 or not set(declared.lower()) <= _HEX:
        raise AuthError("InvalidSignatureException",
                        "A streamed upload must declare its body's SHA-256 (hex) in X-Amz-Content-SHA256.", 400)
    return declared.lower()


def error_response(request: Request, exc: Exception) -> Response:
    """The AWS JSON error (``__type``, ``message``; ``x-amzn-errortype``) for whatever a route raised."""
    headers = {}
    fields: dict[str, Any] = {}
    if isinstance(exc, ApiError):
        code, message, fields = exc.code, exc.message, exc.fields
        status = next((s for cls, s in _REST_STATUS.items() if isinstance(exc, cls)), exc.status)
    elif isinstance(exc, AuthError):
        code, message, status = exc.code, exc.message, exc.status
    elif isinstance(exc, HTTPException):
        status = exc.status_code
        code = _HTTP_CODES.get(status, "ValidationException" if status < 500 else "InternalFailure")
        message = f"{exc.detail} ({request.method} {request.url.path})"
        headers.update(exc.headers or {})  # a 405's Allow
    else:
        # Starlette re-raises it after this reply, so the server logs the traceback (once).
        code, message, status = "InternalFailure", f"Internal error: {type(exc).__name__}: {exc}", 500
    headers.update({"x-amzn-errortype": code, "x-amzn-requestid": request_id().decode()})
    return Response(orjson.dumps({"__type": code, "message": message, **fields}), status_code=status,
                    headers=headers, media_type="application/json")


async def _client_gone(request: Request, exc: Exception) -> None:
    # Nobody is left to read a reply; a partial body was never handed to a handler.
    log.debug("%s %s: the client went away before its body was read", request.method, request.url.path)


def native_app(verifier: SigV4Verifier, routes: Sequence[BaseRoute]) -> Starlette:
    """The native API's Starlette app: the verifier its signed routes use, and the one error handler."""
    app = Starlette(routes=list(routes), exception_handlers={
        ApiError: error_response, AuthError: error_response, HTTPException: error_response,
        ClientDisconnect: _client_gone, Exception: error_response})
    app.state.verifier = verifier
    return app
