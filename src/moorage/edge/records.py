"""SageMaker's data-capture record, as the agent writes it into its spool.

The same line, byte for byte, as an endpoint's capture (``capture/records.py`` on the server side,
which the agent cannot import; the real files are in ``shared/formats/sagemaker/data_capture/``):
keys in SageMaker's order, no spaces, one record a line::

    {"captureData":{"endpointInput":{"observedContentType":"text/csv","mode":"INPUT","data":"1,2",
    "encoding":"CSV"},"endpointOutput":{"observedContentType":"text/csv","mode":"OUTPUT","data":"0.3",
    "encoding":"CSV"}},"eventMetadata":{"eventId":"<uuid4>","inferenceTime":"2024-01-19T19:27:57Z"},
    "eventVersion":"0"}

Text bodies of CSV types are ``CSV``, of JSON types ``JSON`` (as SageMaker's default
CsvContentTypes/JsonContentTypes), anything else, or text that is not UTF-8, ``BASE64``. An
``inferenceId`` (the ``X-Amzn-SageMaker-Inference-Id`` header) goes after the event id, as
SageMaker's record has it. So synced edge traffic is read by ``moorage monitor`` unchanged.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

CSV_TYPES = frozenset({"text/csv"})
JSON_TYPES = frozenset({"application/json", "application/jsonlines", "application/x-jsonlines", "application/jsonl"})
_dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def inference_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _side(key: str, mode: str, content_type: str | None, body: bytes) -> str:
    kind = content_type.split(";", 1)[0].strip().lower() if content_type else None
    encoding = "CSV" if kind in CSV_TYPES else "JSON" if kind in JSON_TYPES else "BASE64"
    data = None
    if encoding != "BASE64":
        try:
            data = body.decode("utf-8")
        except UnicodeDecodeError:
            encoding = "BASE64"
    if data is None:
        data = base64.b64encode(body).decode("ascii")
    return (f'"{key}":{{"observedContentType":{_dumps(content_type)},"mode":"{mode}",'
            f'"data":{_dumps(data)},"encoding":"{encoding}"}}')


def capture_line(request_type: str | None, request_body: bytes, response_type: str | None, response_body: bytes,
                 epoch: float, inference_id: str | None = None, event_id: str | None = None) -> bytes:
    """One record's line, newline included."""
    metadata = f'"eventId":"{event_id or uuid.uuid4()}"'
    if inference_id:
        metadata += f',"inferenceId":{_dumps(inference_id)}'
    return (f'{{"captureData":{{{_side("endpointInput", "INPUT", request_type, request_body)},'
            f'{_side("endpointOutput", "OUTPUT", response_type, response_body)}}},'
            f'"eventMetadata":{{{metadata},"inferenceTime":"{inference_time(epoch)}"}},'
            f'"eventVersion":"0"}}\n').encode()
