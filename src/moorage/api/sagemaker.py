"""The SageMaker control-plane front door (AWS JSON 1.1 protocol, ``X-Amz-Target: SageMaker.Op``), and
the other AWS JSON services on the same port (Application Auto Scaling; CloudWatch in JSON 1.0).

The API is data: botocore's service model names the operations, validates the requests and shapes
the replies. This module only authenticates, looks up ``SageMaker.CreateModel`` -> a handler method
named ``create_model`` on one of the control-plane objects, and renders results or errors.
``JsonProtocolService.dispatch`` (validate, call the handler) is protocol-neutral: the query-protocol
door (``api/query_protocol.py``) and the RPC v2 CBOR door (``api/rpcv2_cbor.py``) decode their bodies
and call the same services.

A service whose model says ``awsQueryCompatible`` (CloudWatch) renders errors as AWS does for it:
``__type`` is the error's shape name and ``x-amzn-query-error: Code;Sender`` carries the query code,
which botocore reports as the error code (``InvalidParameterValue``, not ``...Exception``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from botocore import xform_name
from starlette.requests import ClientDisconnect

from moorage.api.access import endpoint_names
from moorage.api.responses import (
    JSON_10,
    JSON_11,
    BodyTooLarge,
    Receive,
    Scope,
    Send,
    read_body,
    request_id,
    respond,
    respond_error,
)
from moorage.api.shapes import RequestValidationError, ServiceShapes
from moorage.api.sigv4 import Action, AuthError, Principal, SigV4Verifier
from moorage.errors import (
    ApiError,
    NotImplementedOperation,
    SerializationException,
    ServiceUnavailable,
    UnknownOperation,
    ValidationException,
)

log = logging.getLogger("moorage.api")

# Who is calling, for the access check: the door's verifier and the principal it verified.
Caller = tuple[SigV4Verifier, Principal]

MAX_CONTROL_BODY = 16 * 1024 * 1024


# The SageMaker Python SDK's local mode names these instance types; moorage runs them with the
# machine's defaults.
# LIGHTGBM: moorage compiles LightGBM models (CreateCompilationJob), which SageMaker's Framework enum lacks.
EXTRA_ENUM_VALUES = {"sagemaker": {"ProductionVariantInstanceType": ("local", "local_cpu"), "Framework": ("LIGHTGBM",)}}


def storage_url_shapes(service_name: str) -> list[str]:
    """Shapes whose pattern only admits ``s3://``/``https://`` URLs.

    moorage deliberately accepts more there: ``file://`` URLs and plain paths (and ``s3://`` through
    fsspec), so these patterns are not enforced; the artifact store reports a URL it cannot read.
    """
    description = ServiceShapes.shared_loader().load_service_model(service_name, "service-2")
    return [name for name, shape in description["shapes"].items()
            if str(shape.get("pattern", "")).startswith("(https|s3)://")]


class JsonProtocolService:
    """One AWS JSON-protocol service: a target prefix, its botocore model, and handler objects."""

    def __init__(self, service_name: str, target_prefix: str, handlers: list[object]):
        self.shapes = ServiceShapes(service_name, unchecked_patterns=storage_url_shapes(service_name),
                                    extra_enum_values=EXTRA_ENUM_VALUES.get(service_name))
        self.target_prefix = target_prefix
        metadata = self.shapes.service_model.metadata
        self.content_type = JSON_10 if metadata.get("jsonVersion") == "1.0" else JSON_11
        self.query_compatible = "awsQueryCompatible" in metadata
        # What a request's credential scope must name: botocore signs with the model's signing name
        # (``monitoring`` for CloudWatch), not the client's name.
        self.signing_name: str = self.shapes.service_model.signing_name
        # What IAM calls the service in an action (``cloudwatch:PutMetricData``): the client's name.
        self.iam_prefix = service_name
        self.handlers: dict[str, Any] = {}
        for operation in self.shapes.service_model.operation_names:
            method = xform_name(operation)
            for obj in handlers:
                if hasattr(obj, method):
                    self.handlers[operation] = getattr(obj, method)
                    break

    def _known(self, operation: str) -> None:
        if self.shapes.operation(operation) is None:
            raise UnknownOperation(f"Unknown operation {self.target_prefix}.{operation}")

    def handler_for(self, operation: str) -> Any:
        self._known(operation)
        handler = self.handlers.get(operation)
        if handler is None:
            raise NotImplementedOperation(f"moorage does not implement {self.target_prefix}.{operation} yet.")
        return handler

    async def call(self, operation: str, body: bytes, caller: Caller | None = None) -> bytes:
        self._known(operation)
        try:
            params = orjson.loads(body) if body.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise SerializationException("Request body must be a JSON object.")
        result = await self.dispatch(operation, params, caller)
        return orjson.dumps(self.shapes.shape_output(operation, result))

    async def dispatch(self, operation: str, params: dict[str, Any], caller: Caller | None = None) -> dict[str, Any]:
        """Check the caller may (``api/access.py``), validate decoded parameters against the input shape and run
        the handler (any protocol). ``caller``: the door's verifier and who signed; None only in tests."""
        self._known(operation)
        if caller is not None:
            # Before "not implemented": what a key may not do is refused the same whether moorage has it or not.
            verifier, principal = caller
            verifier.authorize(principal, Action(self.iam_prefix, operation, endpoint_names(params)))
        handler = self.handler_for(operation)
        try:
            self.shapes.validate_input(operation, params)
        except RequestValidationError as exc:
            raise ValidationException(exc.message if hasattr(exc, "message") else str(exc)) from exc
        result = await handler(params)
        return result or {}

    def error_parts(self, exc: ApiError) -> tuple[str, str, int, bool]:
        """(shape name, query-protocol code, HTTP status, the sender's fault?) of an error, as this service's
        model names it; an error the model does not list keeps moorage's code and status."""
        modelled = self.shapes.error_shape(exc.code)
        if modelled is None:
            return exc.code, exc.code, exc.status, exc.status < 500
        return modelled.name, modelled.code, modelled.status, modelled.sender_fault

    def query_error_header(self, code: str, sender_fault: bool) -> list[tuple[bytes, bytes]]:
        """``x-amzn-query-error: Code;Sender`` where the model is awsQueryCompatible: botocore reports that code."""
        if not self.query_compatible:
            return []
        return [(b"x-amzn-query-error", f"{code};{'Sender' if sender_fault else 'Receiver'}".encode())]

    async def respond_error(self, send: Send, exc: ApiError) -> None:
        if not self.query_compatible:
            await respond_error(send, exc.code, exc.message, exc.status, self.content_type, exc.fields)
            return
        name, code, status, sender_fault = self.error_parts(exc)
        await respond_error(send, name, exc.message, status, self.content_type, exc.fields,
                            self.query_error_header(code, sender_fault))


class JsonFrontDoor:
    """Routes ``POST /`` by the ``X-Amz-Target`` prefix to the JSON-protocol services."""

    def __init__(self, verifier: SigV4Verifier, services: list[JsonProtocolService]):
        self.verifier = verifier
        self.services = {s.target_prefix: s for s in services}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = b""
        for name, value in scope["headers"]:
            if name == b"x-amz-target":
                target = value
                break
        try:
            body = await read_body(receive, MAX_CONTROL_BODY)
        except BodyTooLarge:
            await respond_error(send, "SerializationException", "Request body too large.", 413)
            return
        except ServiceUnavailable as exc:  # too many bodies in memory at once (responses.PENDING_BODIES)
            await respond_error(send, exc.code, exc.message, exc.status)
            return
        except ClientDisconnect:
            return  # gone before its body was whole: nobody to answer
        prefix, _, operation = target.decode("latin-1").partition(".")
        service = self.services.get(prefix)
        try:
            # An unknown target is answered once the caller is known to hold a key, whatever it signed for.
            principal = self.verifier.verify(scope["method"], scope.get("raw_path") or scope["path"].encode(),
                                 scope.get("query_string", b""), scope["headers"], body,
                                 service=service.signing_name if service is not None else None)
        except AuthError as exc:
            await respond_error(send, exc.code, exc.message, exc.status)
            return
        if service is None or not operation:
            await respond_error(send, "UnknownOperationException",
                                f"Unknown X-Amz-Target '{target.decode('latin-1')}'.", 400)
            return
        try:
            payload = await service.call(operation, body, (self.verifier, principal))
        except ApiError as exc:
            await service.respond_error(send, exc)
            return
        except Exception as exc:
            log.exception("%s.%s failed", prefix, operation)
            await respond_error(send, "InternalFailure", f"Internal error: {type(exc).__name__}: {exc}", 500)
            return
        await respond(send, 200, payload, [(b"content-type", service.content_type),
                                           (b"x-amzn-requestid", request_id())])
