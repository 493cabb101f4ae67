"""The runtime front door: ``POST /endpoints/{name}/invocations`` (sagemaker-runtime's InvokeEndpoint).

This is the product's hot path: one pass over the headers, the SigV4 check, a dict lookup for the
endpoint's route, and the pooled hop to an instance. Nothing here touches the database. The HTTP edge
(``http_limits.py``) reads most of these requests itself and calls ``RuntimeFrontDoor.invoke`` with the
whole request, without an ASGI scope, task wrapper or message per body chunk; the rest come in as ASGI.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from starlette.requests import ClientDisconnect

from moorage.api.responses import (
    JSON,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    error_parts,
    error_response,
    read_body,
    respond,
    respond_api_error,
    respond_error,
)
from moorage.api.sigv4 import Action, AuthError, SigV4Verifier, headers_by_name
from moorage.control.context import ENDPOINT
from moorage.errors import (
    ApiError,
    ModelError,
    PayloadTooLarge,
    RuntimeValidationError,
    ServiceUnavailable,
    ThrottlingException,
)
from moorage.serving.chain import UnknownContainer
from moorage.serving.model_cache import TargetModelError
from moorage.serving.route_table import RouteTable
from moorage.serving.router import Invocation, InvocationFailed, UnknownVariant
from moorage.serving.serverless import Throttled
from moorage.store.metadata import MetadataStore

log = logging.getLogger("moorage.runtime")

# sagemaker-runtime's signing name (botocore's model): its scope is SageMaker's.
SIGNING_NAME = "sagemaker"
# InvokeEndpoint's documented payload limit, and its limits on two headers.
MAX_PAYLOAD = 6 * 1024 * 1024
MAX_CUSTOM_ATTRIBUTES = 1024
MAX_INFERENCE_ID = 64
_LIMITED = {b"x-amzn-sagemaker-custom-attributes": ("CustomAttributes", MAX_CUSTOM_ATTRIBUTES),
            b"x-amzn-sagemaker-inference-id": ("InferenceId", MAX_INFERENCE_ID)}
_PREFIX, _SUFFIX = "/endpoints/", "/invocations"
_RAW_PREFIX, _RAW_SUFFIX = _PREFIX.encode(), _SUFFIX.encode()
# Request headers passed through to the container, as SageMaker passes them.
_FORWARDED = {
    b"content-type": b"content-type",
    b"accept": b"accept",
    b"x-amzn-sagemaker-custom-attributes": b"x-amzn-sagemaker-custom-attributes",
    b"x-amzn-sagemaker-inference-id": b"x-amzn-sagemaker-inference-id",
    b"x-amzn-sagemaker-target-model": b"x-amzn-sagemaker-target-model",
    b"x-amzn-sagemaker-target-container-hostname": b"x-amzn-sagemaker-target-container-hostname",
}


def is_invocation(method: str, path: str) -> bool:
    """InvokeEndpoint's ``POST /endpoints/{name}/invocations`` (InvokeEndpointAsync's path ends otherwise)."""
    return method == "POST" and path.startswith(_PREFIX) and path.endswith(_SUFFIX)


def invoked_endpoint(raw_path: bytes) -> str | None:
    """The endpoint an InvokeEndpoint path names as sent, when that needs no decoding (ASCII, nothing
    percent-encoded: the HTTP edge's invocation lane); None for any other path."""
    if raw_path.startswith(_RAW_PREFIX) and raw_path.endswith(_RAW_SUFFIX) and b"%" not in raw_path \
            and raw_path.isascii():
        return raw_path[len(_RAW_PREFIX):-len(_RAW_SUFFIX)].decode("ascii")
    return None


class RuntimeFrontDoor:
    """``answers`` is this process's route table (``RouteAnswers``), or, in a router worker, the link to
    the process that owns it (``api/router_worker.py``)."""

    def __init__(self, verifier: SigV4Verifier, answers: InvocationAnswers,
                 async_door: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None):
        self.verifier = verifier
        self.answers = answers
        # InvokeEndpointAsync (``/endpoints/{name}/async-invocations``: api/async_runtime.py), looked for
        # only once a path is not the synchronous one, so the hot path pays nothing for it.
        self.async_door = async_door

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI way in, for what the HTTP edge does not serve itself (``http_limits.py``: a chunked or
        oversized body, a percent-encoded path, a server with access logging)."""
        arrived, started = time.time(), time.perf_counter()
        path: str = scope["path"]
        if not is_invocation(scope["method"], path):
            if self.async_door is not None and path.endswith("/async-invocations"):
                await self.async_door(scope, receive, send)
                return
            await respond_error(send, "UnknownOperationException", f"No operation at {scope['method']} {path}.",
                                404, JSON)
            return
        headers = scope["headers"]
        declared = next((value for key, value in headers if key == b"content-length"), None)
        if declared is not None and declared.isdigit() and int(declared) > MAX_PAYLOAD:
            status, reply, answer, _ = too_large(int(declared))
            await respond(send, status, answer, reply)
            return
        try:
            body = await read_body(receive, MAX_PAYLOAD)
        except BodyTooLarge as exc:
            status, reply, answer, _ = too_large(exc.args[0])
            await respond(send, status, answer, reply)
            return
        except ServiceUnavailable as exc:  # too many bodies in memory at once (responses.PENDING_BODIES)
            await respond_api_error(send, exc, JSON)
            return
        except ClientDisconnect:
            return  # gone before its body was whole: nothing to invoke, nobody to answer
        status, reply, answer, after = await self.invoke(
            path[len(_PREFIX):-len(_SUFFIX)], scope.get("raw_path") or path.encode(), scope.get("query_string", b""),
            headers, body, arrived, started)
        await respond(send, status, answer, reply)
        if after is not None:
            after()

    async def invoke(self, name: str, raw_path: bytes, query_string: bytes, headers: list[tuple[bytes, bytes]],
                     body: bytes | bytearray, arrived: float, started: float) -> Answer:
        """Admit a whole InvokeEndpoint (the limits on its headers, SigV4, the key's role) and answer it.
        The HTTP edge calls this for the requests it reads itself, the ASGI way in for the others;
        ``arrived``/``started``: when its header block was whole (wall clock, performance counter)."""
        # The headers by name, once: the forwarded block and the SigV4 check (by_name) both read them.
        single, repeated = headers_by_name(headers)
        forwarded = []
        for key, header in _FORWARDED.items():
            value = single.get(key)
            if value is None:
                continue
            # A header sent more than once goes on as sent, each value checked.
            values = repeated[key] if repeated is not None and key in repeated else (value,)
            limit = _LIMITED.get(key)
            for one in values:
                if limit is not None and len(one) > limit[1]:
                    return api_error_response(RuntimeValidationError(
                        f"1 validation error detected: Value at '{limit[0][0].lower() + limit[0][1:]}' failed to "
                        f"satisfy constraint: Member must have length less than or equal to {limit[1]}"), JSON)
                forwarded.append(b"%s: %s\r\n" % (header, one))
        variant_header = single.get(b"x-amzn-sagemaker-target-variant")
        target_variant = None if variant_header is None else variant_header.decode("latin-1")
        try:
            principal = self.verifier.verify("POST", raw_path, query_string, headers, body, service=SIGNING_NAME,
                                             by_name=(single, repeated))
            self.verifier.authorize(principal, Action(SIGNING_NAME, "InvokeEndpoint", (name,)))
        except AuthError as exc:
            return (*error_parts(exc.code, exc.message, exc.status, JSON), None)
        except ApiError as exc:  # AccessDeniedException
            return api_error_response(exc, JSON)
        return await self.answers.answer(name, body, b"".join(forwarded), target_variant, arrived, started)


def too_large(size: int) -> Answer:
    return api_error_response(PayloadTooLarge(
        f"Request has oversize body: {size} bytes exceed the InvokeEndpoint limit of {MAX_PAYLOAD} bytes (6 MB)."),
        JSON)


# An answer: status, headers, body, and what to run once it is written (the route's observers), if anything.
Answer = tuple[int, list[tuple[bytes, bytes]], bytes, Callable[[], None] | None]


class InvocationAnswers(Protocol):
    """What the door asks once a request is admitted: the answer to an InvokeEndpoint."""

    async def answer(self, name: str, body: bytes, forwarded_headers: bytes, target_variant: str | None,
                     arrived: float, started: float) -> Answer: ...


class RouteAnswers:
    """Answers from this process's route table: the endpoint's route invokes an instance, and its outcome
    becomes SageMaker's response (the variant's answer, or ModelError and the other runtime errors)."""

    def __init__(self, routes: RouteTable, store: MetadataStore, account_id: str) -> None:
        self.routes = routes
        self.store = store
        self.account_id = account_id

    async def answer(self, name: str, body: bytes, forwarded_headers: bytes, target_variant: str | None,
                     arrived: float, started: float) -> Answer:
        route = self.routes.get(name)
        if route is None:
            return self._not_serving(name)
        try:
            invocation = await route.invoke(body, forwarded_headers, target_variant)
        except UnknownVariant:
            return api_error_response(RuntimeValidationError(
                f"Invalid target variant '{target_variant}' for endpoint '{name}': "
                f"it has variants {', '.join(route.variants)}."), JSON)
        except UnknownContainer as exc:
            return api_error_response(RuntimeValidationError(f"Endpoint {name}: {exc}."), JSON)
        except TargetModelError as exc:  # a multi-model endpoint's TargetModel that cannot be served
            return api_error_response(exc, JSON)
        except Throttled as exc:  # a serverless variant at its MaxConcurrency
            return api_error_response(ThrottlingException(
                f"Endpoint {name} of account {self.account_id}: {exc}. Reduce the request rate or raise "
                f"ServerlessConfig.MaxConcurrency."), JSON)
        except InvocationFailed as exc:
            status, headers, answer = error_response(ModelError(str(exc), OriginalStatusCode=exc.status,
                                                                OriginalMessage=str(exc)), JSON)
            if not route.observers:
                return status, headers, answer, None
            return status, headers, answer, functools.partial(route.observe, body, forwarded_headers, arrived,
                                                              started, exc)
        if invocation.status >= 300:
            status, headers, answer = self._model_error(name, invocation)
        else:
            status, answer = 200, invocation.body
            headers = [(b"content-type", invocation.content_type.encode("latin-1")),
                       (b"x-amzn-invoked-production-variant", invocation.variant.encode())]
            if invocation.custom_attributes is not None:
                headers.append((b"x-amzn-sagemaker-custom-attributes", invocation.custom_attributes))
        if not route.observers:
            return status, headers, answer, None
        return status, headers, answer, functools.partial(route.observe, body, forwarded_headers, arrived, started,
                                                          invocation)

    def _not_serving(self, name: str) -> Answer:
        row = self.store.get(ENDPOINT, name)
        if row is None:
            message = f"Endpoint {name} of account {self.account_id} not found."
        else:
            message = f"Endpoint {name} of account {self.account_id} is not in service (status {row.status})."
        return api_error_response(RuntimeValidationError(message), JSON)

    def _model_error(self, name: str, invocation: Invocation) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        kind = "client" if invocation.status < 500 else "server"
        original = invocation.body.decode("utf-8", "replace")
        log_path = self.routes.logs_dir / name / invocation.variant / f"{invocation.instance_id}.log"
        source = (f"container {invocation.container} of {invocation.variant}" if invocation.container
                  else invocation.variant)
        message = (f'Received {kind} error ({invocation.status}) from {source} with message '
                   f'"{original}". See {log_path} for more information.')
        return error_response(ModelError(message, OriginalStatusCode=invocation.status, OriginalMessage=original,
                                         LogStreamArn=str(log_path)), JSON)


def api_error_response(error: ApiError, content_type: bytes) -> Answer:
    return (*error_response(error, content_type), None)
