"""The Smithy RPC v2 CBOR door: ``POST /service/{targetPrefix}/operation/{Operation}``, CBOR both ways.

CloudWatch's model lists ``smithy-rpc-v2-cbor`` first; botocore today prefers ``json`` but speaks this
too (a client whose model lists only it), as do other AWS SDKs. The services behind it are the JSON
door's (``JsonProtocolService.dispatch``: validation by botocore's model, then the handler), so only
the encoding is this module's, and it is botocore's own: requests are decoded by its CBOR parser
into plain values (maps, lists, text, numbers, tag-1 timestamps as datetimes), which the model's
validation then judges as it judges JSON, naming unknown members and wrong types; results are encoded
by its ``RpcV2CBORSerializer`` against the output shape. Error bodies are hand-encoded (a map of two
text strings, ``__type`` and ``message``): the model has no shape that carries ``__type``.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.model import ListShape, MapShape, Shape, StructureShape
from botocore.parsers import RpcV2CBORParser
from botocore.serialize import RpcV2CBORSerializer
from starlette.requests import ClientDisconnect

from moorage.api.responses import BodyTooLarge, Receive, Scope, Send, read_body, request_id, respond
from moorage.api.sagemaker import MAX_CONTROL_BODY, JsonProtocolService
from moorage.api.sigv4 import AuthError, SigV4Verifier
from moorage.errors import ApiError, SerializationException, ServiceUnavailable, UnknownOperation

log = logging.getLogger("moorage.api")

CBOR = b"application/cbor"
PREFIX = "/service/"


def decode_body(body: bytes) -> Any:
    """A CBOR request body as plain values ({} when there is none)."""
    if not body:
        return {}
    parser = RpcV2CBORParser()
    stream = parser.get_peekable_stream_from_bytes(body)
    try:
        value = parser.parse_data_item(stream)
    except Exception as exc:  # botocore raises several kinds for malformed input
        raise SerializationException(f"Request body is not valid CBOR: {exc}") from exc
    if stream.peek(1):
        raise SerializationException("Request body has data after its CBOR item.")
    return value


def encode_result(shape: StructureShape | None, result: dict[str, Any]) -> bytes:
    """The CBOR body of a handler's result: members of ``shape`` only (unknown keys and None left out)."""
    if shape is None:
        return b""
    return bytes(RpcV2CBORSerializer()._serialize_body_params(_pruned(shape, result), shape))


def _pruned(shape: Shape, value: Any) -> Any:
    if isinstance(shape, StructureShape):
        return {name: _pruned(member, value[name]) for name, member in shape.members.items()
                if value.get(name) is not None}
    if isinstance(shape, ListShape):
        return [_pruned(shape.member, item) for item in value if item is not None]
    if isinstance(shape, MapShape):
        return {key: _pruned(shape.value, item) for key, item in value.items() if item is not None}
    return value


def _head(major: int, length: int) -> bytes:
    if length < 24:
        return bytes([major << 5 | length])
    for info, size in ((24, 1), (25, 2), (26, 4), (27, 8)):
        if length < 1 << (8 * size):
            return bytes([major << 5 | info]) + length.to_bytes(size, "big")
    raise ValueError(length)


def encode_error(type_name: str, message: str) -> bytes:
    out = bytearray(_head(5, 2))
    for text in ("__type", type_name, "message", message):
        data = text.encode()
        out += _head(3, len(data)) + data
    return bytes(out)


class RpcV2CborFrontDoor:
    """Routes ``/service/{targetPrefix}/operation/{Operation}`` to the service with that target prefix."""

    def __init__(self, verifier: SigV4Verifier, services: list[JsonProtocolService]):
        self.verifier = verifier
        self.services = {s.target_prefix: s for s in services}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, MAX_CONTROL_BODY)
        except BodyTooLarge:
            await self._error(send, None, "SerializationException", "Request body too large.", 413)
            return
        except ServiceUnavailable as exc:  # too many bodies in memory at once (responses.PENDING_BODIES)
            await self._error(send, None, exc.code, exc.message, exc.status)
            return
        except ClientDisconnect:
            return
        prefix, marker, operation = scope["path"][len(PREFIX):].partition("/operation/")
        service = self.services.get(prefix)
        try:
            principal = self.verifier.verify(scope["method"], scope.get("raw_path") or scope["path"].encode(),
                                             scope.get("query_string", b""), scope["headers"], body,
                                             service=service.signing_name if service is not None else None)
        except AuthError as exc:
            await self._error(send, None, exc.code, exc.message, exc.status)
            return
        if scope["method"] != "POST" or not marker or service is None or "/" in operation:
            await self._error(send, None, "UnknownOperationException", f"No operation at {scope['path']}.", 404)
            return
        try:
            model = service.shapes.operation(operation)
            if model is None:
                raise UnknownOperation(f"Unknown operation {prefix}.{operation}")
            params = decode_body(body)
            if not isinstance(params, dict):
                raise SerializationException("Request body must be a CBOR map.")
            payload = encode_result(model.output_shape, await service.dispatch(operation, params,
                                                                           (self.verifier, principal)))
        except ApiError as exc:
            name, code, status, sender_fault = service.error_parts(exc)
            await self._error(send, service, name, exc.message, status, code, sender_fault)
            return
        except Exception as exc:
            log.exception("%s.%s (rpc-v2-cbor) failed", prefix, operation)
            await self._error(send, service, "InternalFailure", f"Internal error: {type(exc).__name__}: {exc}", 500)
            return
        await respond(send, 200, payload, [(b"content-type", CBOR), (b"smithy-protocol", b"rpc-v2-cbor"),
                                           (b"x-amzn-requestid", request_id())])

    @staticmethod
    async def _error(send: Send, service: JsonProtocolService | None, type_name: str, message: str, status: int,
                     code: str | None = None, sender_fault: bool | None = None) -> None:
        headers = [(b"content-type", CBOR), (b"smithy-protocol", b"rpc-v2-cbor"), (b"x-amzn-requestid", request_id())]
        if service is not None:
            headers += service.query_error_header(code or type_name, status < 500 if sender_fault is None
                                                  else sender_fault)
        await respond(send, status, encode_error(type_name, message), headers)
