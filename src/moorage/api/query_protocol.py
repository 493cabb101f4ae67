"""The AWS query protocol door: ``POST /`` with a form (``Action=...&Version=...``) in, XML out.

Older botocore releases (and other SDKs) speak CloudWatch this way; the same services answer as on
the JSON door (``JsonProtocolService.dispatch``: validation by botocore's model, then the handler),
only the encoding differs. Both directions are driven by botocore's service model and are generic
over any query-protocol model:

- ``decode_form``: the inverse of botocore's ``QuerySerializer`` (structures as ``Name.Member``,
  lists as ``Name.member.N`` or flattened ``Name.N``, maps as ``Name.entry.N.key``/``.value``, an
  empty list as ``Name=``), typed by the input shape. A value that does not parse as its type is
  passed on as the text that arrived, so the model's validation names the field and the type.
- ``encode_result``: the XML that botocore's ``QueryParser`` reads (``<OpResponse><OpResult>...
  </OpResult><ResponseMetadata><RequestId>``, lists as ``<member>``, maps as ``<entry>``,
  timestamps in ISO 8601).
- errors as ``<ErrorResponse><Error><Type>Sender</Type><Code>..</Code><Message>..</Message></Error>
  <RequestId>..</RequestId></ErrorResponse>``, the code and status from the model's error shape.

botocore has no server side for either direction (its serializers build requests and its parsers
read responses), hence these two walkers; the unit tests hold them to botocore's own serializer and
parser in round trips.
"""

from __future__ import annotations

import base64
import logging
import math
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl
from xml.sax.saxutils import escape

from botocore.model import ListShape, MapShape, OperationModel, Shape, StructureShape
from botocore.utils import parse_timestamp
from starlette.requests import ClientDisconnect

from moorage.api.access import AccessDeniedException
from moorage.api.responses import BodyTooLarge, Receive, Scope, Send, read_body, request_id, respond
from moorage.api.sagemaker import MAX_CONTROL_BODY, JsonProtocolService
from moorage.api.sigv4 import AuthError, ScopeError, SigV4Verifier
from moorage.errors import ApiError, ServiceUnavailable

log = logging.getLogger("moorage.api")

XML = b"text/xml"
FORM = b"application/x-www-form-urlencoded"

_LEAF = ""  # where a tree node keeps the text given for its own key (keys never end in ".")
# XML 1.0 forbids most control characters, even escaped; a parser would refuse the whole reply.
_XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def is_query_request(scope: Scope) -> bool:
    """A form-encoded body without ``X-Amz-Target``: the query protocol. The JSON protocols name their
    operation in that header (and send ``application/x-amz-json-1.x``; a bare client's POST may
    default to the form type, and still means the JSON door)."""
    form = False
    for name, value in scope["headers"]:
        if name == b"x-amz-target":
            return False
        if name == b"content-type":
            form = value.split(b";", 1)[0].strip().lower() == FORM
    return form


# -- the form ------------------------------------------------------------------------------------


def decode_form(shape: StructureShape | None, pairs: Iterable[tuple[str, str]]) -> dict[str, Any]:
    """The parameters (keyed as the JSON protocol keys them) that ``pairs`` spell for ``shape``.

    ``Action`` and ``Version`` are the protocol's own and left out.
    """
    tree: dict[str, Any] = {}
    for key, value in pairs:
        if key in ("Action", "Version"):
            continue
        node = tree
        for part in key.split("."):
            node = node.setdefault(part, {})
        node[_LEAF] = value
    if shape is None:
        return {key: _raw(node) for key, node in tree.items()}
    decoded = _structure(shape, tree)
    return decoded if isinstance(decoded, dict) else {}


def _raw(node: dict[str, Any]) -> Any:
    """What arrived, undecoded: the model's validation reports it (unknown name, wrong type)."""
    if set(node) == {_LEAF}:
        return node[_LEAF]
    return {key: _raw(child) for key, child in node.items() if key != _LEAF}


def _decode(shape: Shape, node: dict[str, Any]) -> Any:
    if isinstance(shape, StructureShape):
        return _structure(shape, node)
    if isinstance(shape, ListShape):
        return _list(shape, node)
    if isinstance(shape, MapShape):
        return _map(shape, node)
    if set(node) != {_LEAF}:
        return _raw(node)
    return _scalar(shape, node[_LEAF])


def _form_name(member_name: str, shape: Shape) -> str:
    if isinstance(shape, ListShape) and shape.serialization.get("flattened"):
        return shape.member.serialization.get("name") or shape.serialization.get("name", member_name)
    return shape.serialization.get("name", member_name)


def _structure(shape: StructureShape, node: dict[str, Any]) -> Any:
    if set(node) == {_LEAF}:
        return node[_LEAF]
    out: dict[str, Any] = {}
    known: set[str] = set()
    for member_name, member_shape in shape.members.items():
        form_name = _form_name(member_name, member_shape)
        known.add(form_name)
        if form_name in node:
            out[member_shape.serialization.get("name", member_name)] = _decode(member_shape, node[form_name])
    for key, child in node.items():
        if key != _LEAF and key not in known:
            out[key] = _raw(child)
    return out


def _indexed(node: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Children ``1``, ``2``, ... in order; None when a key is not an index."""
    keys = [key for key in node if key != _LEAF]
    if not all(key.isdigit() for key in keys):
        return None
    return [node[key] for key in sorted(keys, key=int)]


def _list(shape: ListShape, node: dict[str, Any]) -> Any:
    if set(node) == {_LEAF}:
        return [] if node[_LEAF] == "" else node[_LEAF]  # "Name=" is botocore's empty list
    items = node if shape.serialization.get("flattened") else node.get(shape.member.serialization.get("name",
                                                                                                       "member"))
    if not isinstance(items, dict) or (indexed := _indexed(items)) is None:
        return _raw(node)
    return [_decode(shape.member, item) for item in indexed]


def _map(shape: MapShape, node: dict[str, Any]) -> Any:
    entries = node if shape.serialization.get("flattened") else node.get("entry")
    if not isinstance(entries, dict) or (indexed := _indexed(entries)) is None:
        return _raw(node)
    key_name = shape.key.serialization.get("name", "key")
    value_name = shape.value.serialization.get("name", "value")
    out: dict[Any, Any] = {}
    for entry in indexed:
        if key_name not in entry or value_name not in entry:
            return _raw(node)
        out[_decode(shape.key, entry[key_name])] = _decode(shape.value, entry[value_name])
    return out


def _scalar(shape: Shape, text: str) -> Any:
    kind = shape.type_name
    try:
        if kind in ("integer", "long"):
            return int(text)
        if kind in ("float", "double"):
            return float(text)  # also NaN and Infinity, which the handlers judge
        if kind == "boolean":
            return {"true": True, "false": False}[text.lower()]
        if kind == "timestamp":
            return parse_timestamp(text).astimezone(UTC)
    except (ValueError, KeyError, OverflowError):
        return text
    return text


# -- the XML -------------------------------------------------------------------------------------


def encode_result(operation: OperationModel, result: Mapping[str, Any], request: str) -> bytes:
    """``<OpResponse>`` for a handler's result (keyed by member names; unknown keys and None are left out)."""
    name = operation.name
    out = [f'<{name}Response xmlns="{operation.metadata.get("xmlNamespace", "")}">']
    shape = operation.output_shape
    if shape is not None:
        wrapper = shape.serialization.get("resultWrapper")
        if wrapper:
            out.append(f"<{wrapper}>")
        _members(shape, result, out)
        if wrapper:
            out.append(f"</{wrapper}>")
    out.append(f"<ResponseMetadata><RequestId>{request}</RequestId></ResponseMetadata></{name}Response>")
    return "".join(out).encode()


def encode_error(code: str, message: str, sender_fault: bool, request: str, namespace: str = "") -> bytes:
    xmlns = f' xmlns="{namespace}"' if namespace else ""
    return (f"<ErrorResponse{xmlns}><Error><Type>{'Sender' if sender_fault else 'Receiver'}</Type>"
            f"<Code>{_text(code)}</Code><Message>{_text(message)}</Message></Error>"
            f"<RequestId>{request}</RequestId></ErrorResponse>").encode()


def _members(shape: StructureShape, value: Mapping[str, Any], out: list[str]) -> None:
    for member_name, member_shape in shape.members.items():
        item = value.get(member_name)
        if item is not None:
            _element(_form_name(member_name, member_shape), member_shape, item, out)


def _element(tag: str, shape: Shape, value: Any, out: list[str]) -> None:
    if isinstance(shape, ListShape):
        if shape.serialization.get("flattened"):
            for item in value:
                if item is not None:
                    _element(tag, shape.member, item, out)
            return
        member_tag = shape.member.serialization.get("name", "member")
        out.append(f"<{tag}>")
        for item in value:
            if item is not None:
                _element(member_tag, shape.member, item, out)
        out.append(f"</{tag}>")
    elif isinstance(shape, MapShape):
        key_tag = shape.key.serialization.get("name", "key")
        value_tag = shape.value.serialization.get("name", "value")
        flattened = shape.serialization.get("flattened")
        if not flattened:
            out.append(f"<{tag}>")
        for key, item in value.items():
            if item is None:
                continue
            out.append(f"<{tag}>" if flattened else "<entry>")
            _element(key_tag, shape.key, key, out)
            _element(value_tag, shape.value, item, out)
            out.append(f"</{tag}>" if flattened else "</entry>")
        if not flattened:
            out.append(f"</{tag}>")
    elif isinstance(shape, StructureShape):
        out.append(f"<{tag}>")
        _members(shape, value, out)
        out.append(f"</{tag}>")
    else:
        out.append(f"<{tag}>{_scalar_text(shape.type_name, value)}</{tag}>")


def _scalar_text(kind: str, value: Any) -> str:
    if kind == "boolean":
        return "true" if value else "false"
    if kind in ("integer", "long"):
        return str(int(value))
    if kind in ("float", "double"):
        number = float(value)
        if math.isnan(number):
            return "NaN"
        if math.isinf(number):
            return "Infinity" if number > 0 else "-Infinity"
        return repr(number)
    if kind == "timestamp":
        return _iso(value)
    if kind == "blob" and isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    return _text(str(value))


def _iso(value: Any) -> str:
    """ISO 8601 in UTC with milliseconds, as AWS's query services write timestamps."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day, tzinfo=UTC)
    elif isinstance(value, int | float):
        moment = datetime.fromtimestamp(value, tz=UTC)
    else:
        moment = parse_timestamp(str(value))
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _text(text: str) -> str:
    return escape(_XML_ILLEGAL.sub("\ufffd", text)).replace("\r", "&#13;")


# -- the door ------------------------------------------------------------------------------------


class QueryFrontDoor:
    """``POST /`` with a form body, to the query-protocol service its ``Version`` names."""

    def __init__(self, verifier: SigV4Verifier, services: list[JsonProtocolService]):
        self.verifier = verifier
        self.services = {s.shapes.service_model.api_version: s for s in services}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, MAX_CONTROL_BODY)
        except BodyTooLarge:
            await self._error(send, "RequestEntityTooLarge", "Request body too large.", True, 413)
            return
        except ServiceUnavailable as exc:  # too many bodies in memory at once (responses.PENDING_BODIES)
            await self._error(send, exc.code, exc.message, False, exc.status)
            return
        except ClientDisconnect:
            return  # gone before its body was whole: nobody to answer
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
        except UnicodeDecodeError:
            pairs = None
        given = dict(pairs or ())
        action, version = given.get("Action", ""), given.get("Version")
        service = self._service(action, version)
        try:
            principal = self.verifier.verify(scope["method"], scope.get("raw_path") or scope["path"].encode(),
                                             scope.get("query_string", b""), scope["headers"], body,
                                             service=service.signing_name if service is not None else None)
        except ScopeError as exc:
            # The query-protocol services (STS, CloudWatch) name a bad scope SignatureDoesNotMatch.
            await self._error(send, "SignatureDoesNotMatch", exc.message, True, exc.status)
            return
        except AuthError as exc:
            await self._error(send, exc.code, exc.message, True, exc.status)
            return
        if pairs is None:
            await self._error(send, "MalformedQueryString", "The request body is not UTF-8 form data.", True, 400)
            return
        if not action:
            await self._error(send, "MissingAction", "The request must contain the parameter Action.", True, 400)
            return
        if service is None:
            if version is not None and version not in self.services:
                await self._error(send, "NoSuchVersion", f"The requested version ({version}) of service is not "
                                  "available.", True, 400)
            else:
                await self._error(send, "InvalidAction", f"The action {action} is not valid for this web service.",
                                  True, 400)
            return
        namespace = service.shapes.service_model.metadata.get("xmlNamespace", "")
        operation = service.shapes.operation(action)
        assert operation is not None
        rid = request_id()
        try:
            result = await service.dispatch(action, decode_form(operation.input_shape, pairs),
                                            (self.verifier, principal))
            payload = encode_result(operation, result, rid.decode())
        except AccessDeniedException as exc:
            # The query-protocol services (STS, CloudWatch) answer a refused action so.
            await self._error(send, "AccessDenied", exc.message, True, 403, namespace)
            return
        except ApiError as exc:
            _, code, status, sender_fault = service.error_parts(exc)
            await self._error(send, code, exc.message, sender_fault, status, namespace)
            return
        except Exception as exc:
            log.exception("%s (query protocol) failed", action)
            await self._error(send, "InternalFailure", f"Internal error: {type(exc).__name__}: {exc}", False, 500,
                              namespace)
            return
        await respond(send, 200, payload, [(b"content-type", XML), (b"x-amzn-requestid", rid)])

    def _service(self, action: str, version: str | None) -> JsonProtocolService | None:
        if version is not None:
            service = self.services.get(version)
            return service if service is not None and service.shapes.operation(action) is not None else None
        # No Version: the one service that has the action, if exactly one does.
        found = [s for s in self.services.values() if s.shapes.operation(action) is not None]
        return found[0] if len(found) == 1 else None

    @staticmethod
    async def _error(send: Send, code: str, message: str, sender_fault: bool, status: int,
                     namespace: str = "") -> None:
        rid = request_id()
        await respond(send, status, encode_error(code, message, sender_fault, rid.decode(), namespace),
                      [(b"content-type", XML), (b"x-amzn-requestid", rid)])
