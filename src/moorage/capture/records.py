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
"""

from __future__ import annotations

import base64
import time
from typing import Any

import orjson

from moorage.capture.config import CaptureConfig, media_type
from moorage.serving.router import InvocationEvent

EVENT_VERSION = "0"


def inference_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def encoding_of(content_type: str | None, config: CaptureConfig) -> str:
    kind = media_type(content_type)
    return "CSV" if kind in config.csv_types else "JSON" if kind in config.json_types else "BASE64"


def payload(content_type: str | None, mode: str, body: bytes, config: CaptureConfig) -> dict[str, Any]:
    """One side of an invocation: its body as text (CSV/JSON) or base64, by the content-type rules."""
    return RecordEncoder(config).side(content_type, mode, body)


class RecordEncoder:
    """Encodes the records of one capture config; remembers the encoding of each content type seen.

    (Building a dict and letting orjson serialise it in C measured faster than assembling the line
    from pre-rendered byte pieces in Python.)
    """

    def __init__(self, config: CaptureConfig):
        self.config = config
        self._encodings: dict[str | None, str] = {}

    def side(self, content_type: str | None, mode: str, body: bytes) -> dict[str, Any]:
        encoding = self._encodings.get(content_type)
        if encoding is None:
            encoding = encoding_of(content_type, self.config)
            if len(self._encodings) < 64:  # content types come from callers: keep the cache small
                self._encodings[content_type] = encoding
        if encoding != "BASE64":
            try:
                return {"observedContentType": content_type, "mode": mode, "data": body.decode("utf-8"),
                        "encoding": encoding}
            except UnicodeDecodeError:
                pass
        return {"observedContentType": content_type, "mode": mode, "data": base64.b64encode(body).decode("ascii"),
                "encoding": "BASE64"}

    def encode(self, event: InvocationEvent, event_id: str, time_text: str) -> bytes:
        """The record's line, newline included."""
        capture: dict[str, Any] = {}
        if self.config.capture_input:
            capture["endpointInput"] = self.side(event.content_type, "INPUT", event.request_body)
        if self.config.capture_output:
            capture["endpointOutput"] = self.side(event.response_content_type, "OUTPUT", event.response_body)
        metadata: dict[str, Any] = {"eventId": event_id}
        if event.inference_id:
            metadata["inferenceId"] = event.inference_id
        if event.custom_attributes is not None:
            metadata["customAttributes"] = [event.custom_attributes]
        metadata["inferenceTime"] = time_text
        return orjson.dumps({"captureData": capture, "eventMetadata": metadata, "eventVersion": EVENT_VERSION},
                            option=orjson.OPT_APPEND_NEWLINE)


def encode(event: InvocationEvent, config: CaptureConfig, event_id: str, time_text: str) -> bytes:
    """The record's line, newline included (one-off; the writer keeps a RecordEncoder per config)."""
    return RecordEncoder(config).encode(event, event_id, time_text)


def body_bytes(side: dict[str, Any]) -> bytes:
    """What a captured ``endpointInput``/``endpointOutput`` held, as the bytes that went over the wire."""
    if side.get("encoding") == "BASE64":
        return base64.b64decode(side["data"])
    return str(side.get("data", "")).encode("utf-8")
