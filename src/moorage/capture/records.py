"""SageMaker's data-capture record, byte for byte.

One invocation is one line of JSON, keys in the order SageMaker writes them (see the real capture
files in ``shared/formats/sagemaker/data_capture/``), no spaces::

    {"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT","data":"1,2",
    "encoding":"CSV"},"endpointOutput":{"observedContentType":"text/csv","mode":"OUTPUT","data":"0.3",
    "encoding":"CSV"}},"eventMetadata":{"eventId":"<uuid4>","inferenceTime":"2024-01-19T19:27:57Z"},
    "eventVersion":"0"}

``endpointInput``/``endpointOutput`` are present as the config's CaptureOptions ask.
``eventMetadata`` carries ``inferenceId`` when the caller sent one (InvokeEndpoint's InferenceId) and
``customAttributes`` (a list holding the caller's CustomAttributes header as sent) when it sent
that; the order eventId, inferenceId, customAttributes, inferenceTime follows SageMaker's documented
record and its capture JSON schema. ``inferenceTime`` is the UTC second the request arrived.
``observedContentType`` is the Content-Type exactly as sent (parameters included), or null.

moorage's one addition: while an UpdateEndpoint has two fleets serving (SageMaker falls back to
all-at-once for endpoints with capture; moorage keeps its guardrails), each record says which one
served it, just before ``inferenceTime``: ``"moorage":{"fleet":"green","endpointConfigName":"v2"}``.
Outside updates the records are SageMaker's exactly.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain, repeat
from typing import Any

import orjson

from moorage.capture.config import CaptureConfig, media_type
from moorage.serving.invocation_events import InvocationEvent, parse_header_block

EVENT_VERSION = "0"


def inference_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def encoding_of(content_type: str | None, config: CaptureConfig) -> str:
    kind = media_type(content_type)
    return "CSV" if kind in config.csv_types else "JSON" if kind in config.json_types else "BASE64"


def stamp(second: int) -> bytes:
    """The end of every record of one UTC second: its ``inferenceTime`` and the ``eventVersion``."""
    return b'"inferenceTime":"' + inference_time(second).encode("ascii") + b'"},"eventVersion":"' + _VERSION + b'"}\n'


_VERSION = EVENT_VERSION.encode("ascii")
_DUMPS = orjson.dumps
_DECODE = bytes.decode  # UTF-8, strict
_NO_TEMPLATE = (b"", None, b"")  # cached for (headers, response type) pairs no template fits


@dataclass(frozen=True)
class ServedBy:
    """Which fleet of an endpoint mid-update served a record: "blue" (the old config) or "green"."""

    fleet: str
    endpoint_config_name: str


class RecordEncoder:
    """Encodes the records of one capture config, from the invocation's raw pieces.

    The fixed text of a line is rendered once per (request header block, response content type) as
    a template, and each record joins it around its own pieces: the two bodies as JSON strings, the
    event id and the second's ``stamp``. That costs about a third of building a dict for orjson, and
    creates no container for the garbage collector. Records whose headers carry per-request values
    (inference id, custom attributes) or whose bodies must be base64 take the general path.
    """

    def __init__(self, config: CaptureConfig, served_by: ServedBy | None = None):
        self.config = config
        # The text between the event id and what follows it: the end of the id, then moorage's
        # note of the fleet when there is one.
        note = b"" if served_by is None else b',"moorage":' + _DUMPS(
            {"fleet": served_by.fleet, "endpointConfigName": served_by.endpoint_config_name})
        self._note = note
        self._after_id = b'"' + note + b","
        # (mode, content type) -> (encoding, the side's text up to its data, the text after it)
        self._sides: dict[tuple[str, str | None], tuple[str, bytes, bytes]] = {}
        # a forwarded header block -> (content type, inference id, custom attributes)
        self._headers: dict[bytes, tuple[str | None, str | None, str | None]] = {}
        # (header block, response content type) -> (head, middle or None, tail); see _template
        self._templates: dict[tuple[bytes, str | None], tuple[bytes, bytes | None, bytes]] = {}

    def _side_parts(self, mode: str, content_type: str | None) -> tuple[str, bytes, bytes]:
        parts = self._sides.get((mode, content_type))
        if parts is None:
            encoding = encoding_of(content_type, self.config)
            key = b'"endpointInput":' if mode == "INPUT" else b'"endpointOutput":'
            parts = (encoding,
                     key + b'{"observedContentType":' + _DUMPS(content_type) + b',"mode":"' + mode.encode()
                     + b'","data":',
                     b',"encoding":"' + encoding.encode() + b'"}')
            if len(self._sides) < 128:  # content types come from callers: keep the cache small
                self._sides[(mode, content_type)] = parts
        return parts

    def _side(self, mode: str, content_type: str | None, body: bytes) -> list[bytes]:
        encoding, head, tail = self._side_parts(mode, content_type)
        if encoding != "BASE64":
            try:
                return [head, _DUMPS(body.decode("utf-8")), tail]
            except UnicodeDecodeError:
                pass
        return [head, b'"' + base64.b64encode(body) + b'"', b',"encoding":"BASE64"}']

    def request_headers(self, block: bytes) -> tuple[str | None, str | None, str | None]:
        """Content type, inference id and custom attributes from a forwarded header block."""
        found = self._headers.get(block)
        if found is None:
            headers = parse_header_block(block)
            found = (headers.get(b"content-type"), headers.get(b"x-amzn-sagemaker-inference-id"),
                     headers.get(b"x-amzn-sagemaker-custom-attributes"))
            # Blocks differ per request only when they carry an inference id or custom attributes.
            if found[1] is None and found[2] is None and len(self._headers) < 128:
                self._headers[block] = found
        return found

    def _template(self, headers: bytes, response_content_type: str | None) -> tuple[bytes, bytes | None, bytes]:
        """A line is ``head + input data + middle + output data + tail + event id + '",' + stamp``
        (``middle`` is None when the config captures one side: ``head + data + tail + ...``)."""
        content_type, inference_id, custom_attributes = self.request_headers(headers)
        if inference_id is not None or custom_attributes is not None:
            return _NO_TEMPLATE  # per request: not cached (see request_headers)
        sides = []
        if self.config.capture_input:
            sides.append(self._side_parts("INPUT", content_type))
        if self.config.capture_output:
            sides.append(self._side_parts("OUTPUT", response_content_type))
        if any(encoding == "BASE64" for encoding, _, _ in sides):
            template = _NO_TEMPLATE
        elif len(sides) == 2:
            (_, in_head, in_tail), (_, out_head, out_tail) = sides
            template = (b'{"captureData":{' + in_head, in_tail + b"," + out_head,
                        out_tail + b'},"eventMetadata":{"eventId":"')
        else:
            (_, head, tail), = sides
            template = (b'{"captureData":{' + head, None, tail + b'},"eventMetadata":{"eventId":"')
        if len(self._templates) < 128:
            self._templates[(headers, response_content_type)] = template
        return template

    def line(self, headers: bytes, request_body: bytes, response_content_type: str | None, response_body: bytes,
             event_id: bytes, stamp: bytes) -> bytes:
        """The record's line, newline included, from the invocation's pieces (``headers``: the
        forwarded header block; ``event_id``: ASCII bytes; ``stamp``: ``stamp(second)``)."""
        template = self._templates.get((headers, response_content_type))
        if template is None:
            template = self._template(headers, response_content_type)
        head, middle, tail = template
        if head:
            try:
                if middle is not None:
                    return b"".join((head, _DUMPS(request_body.decode("utf-8")), middle,
                                     _DUMPS(response_body.decode("utf-8")), tail, event_id, self._after_id, stamp))
                body = request_body if self.config.capture_input else response_body
                return b"".join((head, _DUMPS(body.decode("utf-8")), tail, event_id, self._after_id, stamp))
            except UnicodeDecodeError:
                pass  # this record's body is not UTF-8 text: base64, by the general path
        return self._general_line(headers, request_body, response_content_type, response_body, event_id, stamp)

    def lines(self, headers: bytes, response_content_type: str | None, request_bodies: Sequence[bytes],
              response_bodies: Sequence[bytes], event_ids: Sequence[bytes], stamps: Sequence[bytes]) -> bytes | None:
        """Many records that share a header block and a response content type, as one run of lines;
        None when they do not fit a template (then encode them one by one with ``line``).

        The per-record work is all in C (map, zip, join): a few hundred nanoseconds a record."""
        template = self._templates.get((headers, response_content_type))
        if template is None:
            template = self._template(headers, response_content_type)
        head, middle, tail = template
        if not head:
            return None
        try:
            if middle is not None:
                pieces = zip(repeat(head), map(_DUMPS, map(_DECODE, request_bodies)), repeat(middle),
                             map(_DUMPS, map(_DECODE, response_bodies)), repeat(tail), event_ids,
                             repeat(self._after_id), stamps)
            else:
                bodies = request_bodies if self.config.capture_input else response_bodies
                pieces = zip(repeat(head), map(_DUMPS, map(_DECODE, bodies)), repeat(tail), event_ids,
                             repeat(self._after_id), stamps)
            return b"".join(chain.from_iterable(pieces))
        except UnicodeDecodeError:
            return None  # some body is not UTF-8 text: those records are base64, one by one

    def _general_line(self, headers: bytes, request_body: bytes, response_content_type: str | None,
                      response_body: bytes, event_id: bytes, stamp: bytes) -> bytes:
        content_type, inference_id, custom_attributes = self.request_headers(headers)
        parts = [b'{"captureData":{']
        if self.config.capture_input:
            parts += self._side("INPUT", content_type, request_body)
            if self.config.capture_output:
                parts.append(b",")
        if self.config.capture_output:
            parts += self._side("OUTPUT", response_content_type, response_body)
        parts += (b'},"eventMetadata":{"eventId":"', event_id, b'"')
        if inference_id:
            parts += (b',"inferenceId":', _DUMPS(inference_id))
        if custom_attributes is not None:
            parts += (b',"customAttributes":[', _DUMPS(custom_attributes), b"]")
        parts += (self._note, b",", stamp)
        return b"".join(parts)

    def encode(self, event: InvocationEvent, event_id: str, time_text: str) -> bytes:
        """The record's line for one event, newline included (``time_text`` as ``inference_time`` gives it)."""
        end = b'"inferenceTime":"' + time_text.encode("ascii") + b'"},"eventVersion":"' + _VERSION + b'"}\n'
        return self.line(event.forwarded_headers, event.request_body, event.response_content_type,
                         event.response_body, event_id.encode("ascii"), end)


def encode(event: InvocationEvent, config: CaptureConfig, event_id: str, time_text: str) -> bytes:
    """The record's line, newline included (one-off; the writer keeps a RecordEncoder per config)."""
    return RecordEncoder(config).encode(event, event_id, time_text)


def body_bytes(side: dict[str, Any]) -> bytes:
    """What a captured ``endpointInput``/``endpointOutput`` held, as the bytes that went over the wire."""
    if side.get("encoding") == "BASE64":
        return base64.b64decode(side["data"])
    return str(side.get("data", "")).encode("utf-8")
