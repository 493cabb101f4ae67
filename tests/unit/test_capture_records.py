"""Capture records and configs against SageMaker's own capture files (tests/data/sagemaker/data_capture)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from invocation_support import header_block
from moorage.capture.config import CaptureConfig, WriterSettings
from moorage.capture.records import RecordEncoder, body_bytes, encode, inference_time, stamp
from moorage.errors import ValidationException
from moorage.serving.invocation_events import InvocationEvent

FORMATS = Path(__file__).parents[1] / "data" / "sagemaker" / "data_capture"
REAL_FILES = ["examples_capture-json-endpoint.jsonl", "examples_capture-jsonlines-endpoint.jsonl",
              "sdk-tests_captured-data.jsonl"]

pytestmark = pytest.mark.skipif(not FORMATS.is_dir(), reason=f"no SageMaker format examples at {FORMATS}")


def config(**overrides: Any) -> CaptureConfig:
    doc = {"EnableCapture": True, "InitialSamplingPercentage": 100, "DestinationS3Uri": "/tmp/capture",
           "CaptureOptions": [{"CaptureMode": "Input"}, {"CaptureMode": "Output"}]}
    doc.update(overrides)
    return CaptureConfig.parse(doc)


def event(request: bytes, content_type: str | None, response: bytes, response_type: str | None,
          inference_id: str | None = None, custom_attributes: str | None = None) -> InvocationEvent:
    headers = [(name, value.encode("latin-1")) for name, value in (
        (b"content-type", content_type), (b"x-amzn-sagemaker-inference-id", inference_id),
        (b"x-amzn-sagemaker-custom-attributes", custom_attributes)) if value is not None]
    return InvocationEvent(endpoint="ep", variant="AllTraffic", instance_id="i-1", status=200, arrived=0.0,
                           model_seconds=0.0, total_seconds=0.0, request_body=request,
                           forwarded_headers=header_block(headers),
                           response_body=response, response_content_type=response_type)


def example_lines(name: str) -> list[bytes]:
    return [line + b"\n" for line in (FORMATS / name).read_bytes().splitlines() if line.strip()]


@pytest.mark.parametrize("name", REAL_FILES)
def test_records_rebuilt_from_the_real_capture_files_are_byte_identical(name: str) -> None:
    """Each real SageMaker line, re-encoded from the invocation it describes, comes out byte for byte."""
    lines = example_lines(name)
    assert lines
    for line in lines:
        doc = json.loads(line)
        inp, out = doc["captureData"]["endpointInput"], doc["captureData"]["endpointOutput"]
        ev = event(body_bytes(inp), inp["observedContentType"], body_bytes(out), out["observedContentType"])
        meta = doc["eventMetadata"]
        assert encode(ev, config(), meta["eventId"], meta["inferenceTime"]) == line


def test_templated_csv_example_has_the_same_fields_and_encodings() -> None:
    """The SDK's CSV fixture is hand-written (eventMetadata first, a time placeholder): same content, CSV."""
    for line in example_lines("sdk-tests_capture-csv-templated.jsonl"):
        doc = json.loads(line)
        inp, out = doc["captureData"]["endpointInput"], doc["captureData"]["endpointOutput"]
        assert (inp["encoding"], out["encoding"]) == ("CSV", "CSV")
        ev = event(body_bytes(inp), inp["observedContentType"], body_bytes(out), out["observedContentType"])
        ours = json.loads(encode(ev, config(), doc["eventMetadata"]["eventId"], "{%s}"))
        assert ours == doc


def test_time_format_matches_the_examples() -> None:
    assert inference_time(1705692477.062) == "2024-01-19T19:27:57Z"  # the json example's file, 19:27:57.062


def test_encodings_follow_the_content_type_rules() -> None:
    cfg = config()
    ev = event(b"1,2,3", "text/csv; charset=utf-8", b'{"a": 1}', "application/json", inference_id="id-7",
               custom_attributes="trace=abc,user=42")
    doc = json.loads(encode(ev, cfg, "e", "t"))
    assert doc["captureData"]["endpointInput"] == {"observedContentType": "text/csv; charset=utf-8",
                                                   "mode": "INPUT", "data": "1,2,3", "encoding": "CSV"}
    assert doc["captureData"]["endpointOutput"]["encoding"] == "JSON"
    assert list(doc["eventMetadata"]) == ["eventId", "inferenceId", "customAttributes", "inferenceTime"]
    assert doc["eventMetadata"]["inferenceId"] == "id-7"
    assert doc["eventMetadata"]["customAttributes"] == ["trace=abc,user=42"]
    # Anything else, or text that is not UTF-8, is base64 of the exact bytes.
    npy = b"\x93NUMPY\x01\x00v\x00{'descr': '<f8'}"
    doc = json.loads(encode(event(npy, "application/x-npy", b"\xff\xfe", "text/csv"), cfg, "e", "t"))
    assert doc["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert base64.b64decode(doc["captureData"]["endpointInput"]["data"]) == npy
    assert doc["captureData"]["endpointOutput"]["encoding"] == "BASE64"
    assert body_bytes(doc["captureData"]["endpointOutput"]) == b"\xff\xfe"
    # No content type at all: null, base64.
    doc = json.loads(encode(event(b"x", None, b"y", None), cfg, "e", "t"))
    assert doc["captureData"]["endpointInput"]["observedContentType"] is None
    assert doc["captureData"]["endpointInput"]["encoding"] == "BASE64"


def test_capture_content_type_header_overrides_the_defaults() -> None:
    cfg = config(CaptureContentTypeHeader={"CsvContentTypes": ["text/plain"], "JsonContentTypes": ["application/json"]})
    doc = json.loads(encode(event(b"1,2", "text/csv", b"[1]", "application/jsonlines"), cfg, "e", "t"))
    assert doc["captureData"]["endpointInput"]["encoding"] == "BASE64"  # text/csv is no longer listed
    assert doc["captureData"]["endpointOutput"]["encoding"] == "BASE64"
    doc = json.loads(encode(event(b"a b", "Text/Plain", b"[1]", "application/json"), cfg, "e", "t"))
    assert doc["captureData"]["endpointInput"] == {"observedContentType": "Text/Plain", "mode": "INPUT",
                                                   "data": "a b", "encoding": "CSV"}


def test_capture_options_choose_the_sides() -> None:
    only_input = config(CaptureOptions=[{"CaptureMode": "Input"}])
    doc = json.loads(encode(event(b"1", "text/csv", b"2", "text/csv"), only_input, "e", "t"))
    assert list(doc["captureData"]) == ["endpointInput"]
    only_output = config(CaptureOptions=[{"CaptureMode": "Output"}])
    doc = json.loads(encode(event(b"1", "text/csv", b"2", "text/csv"), only_output, "e", "t"))
    assert list(doc["captureData"]) == ["endpointOutput"]


@pytest.mark.parametrize(("overrides", "message"), [
    ({"InitialSamplingPercentage": 101}, "InitialSamplingPercentage must be an integer from 0 to 100"),
    ({"InitialSamplingPercentage": -1}, "InitialSamplingPercentage must be an integer from 0 to 100"),
    ({"CaptureOptions": []}, "CaptureOptions must list at least one CaptureMode"),
    ({"CaptureOptions": [{"CaptureMode": "Both"}]}, "CaptureMode 'Both' is not one of Input, Output"),
    ({"DestinationS3Uri": "https://bucket.example.com/x"}, "cannot write capture files over HTTP(S)"),
    ({"DestinationS3Uri": ""}, "DestinationS3Uri must name a location"),
    ({"CaptureContentTypeHeader": {"CsvContentTypes": ["text/csv"], "JsonContentTypes": ["TEXT/CSV"]}},
     "lists text/csv as both CSV and JSON"),
    ({"CaptureContentTypeHeader": {"CsvContentTypes": ["csv"]}}, "'csv' is not a content type"),
])
def test_invalid_configs_say_what_is_wrong(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationException) as info:
        config(**overrides)
    assert message in info.value.message


def test_destinations_and_summary(tmp_path: Path) -> None:
    cfg = config(DestinationS3Uri=tmp_path.as_uri() + "/", KmsKeyId="alias/capture", InitialSamplingPercentage=30)
    assert cfg.destination.local and cfg.destination.root == str(tmp_path)
    assert cfg.summary() == {"EnableCapture": True, "CaptureStatus": "Started", "CurrentSamplingPercentage": 30,
                             "DestinationS3Uri": tmp_path.as_uri() + "/", "KmsKeyId": "alias/capture"}
    stopped = config(DestinationS3Uri=str(tmp_path / "plain"), EnableCapture=False)
    assert stopped.destination.root == str(tmp_path / "plain")
    assert stopped.summary()["CaptureStatus"] == "Stopped" and "KmsKeyId" not in stopped.summary()
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ValidationException, match="is a file; it must name a folder"):
        config(DestinationS3Uri=str(tmp_path / "a-file"))


def test_writer_settings_from_the_environment() -> None:
    settings = WriterSettings.from_env({"MOORAGE_CAPTURE_FLUSH_SECONDS": "0.25", "MOORAGE_CAPTURE_QUEUE_RECORDS": "7"})
    assert settings.flush_seconds == 0.25 and settings.queue_records == 7
    assert settings.file_bytes == WriterSettings().file_bytes
    with pytest.raises(ValueError, match="MOORAGE_CAPTURE_QUEUE_RECORDS"):
        WriterSettings.from_env({"MOORAGE_CAPTURE_QUEUE_RECORDS": "0"})


@pytest.mark.parametrize("sides", [["Input", "Output"], ["Input"], ["Output"]])
def test_the_template_path_writes_what_the_general_path_writes(sides: list[str]) -> None:
    """Lines are joined from per-content-type templates when they can be; byte for byte the same as
    the general path, for every mix of encodings, sides and per-request headers."""
    encoder = RecordEncoder(config(CaptureOptions=[{"CaptureMode": side} for side in sides]))
    bodies = [b"1,2,3\n", b'{"a": "\\u00e9\\"\\n"}', "é,\"x\"\t".encode(), b"\xff\xfe", b""]
    types = ["text/csv", "application/json; charset=utf-8", "application/x-npy", None]
    second_stamp = stamp(1705692477)
    for request_type in types:
        for response_type in types:
            for extra in ([], [(b"x-amzn-sagemaker-inference-id", b"id-1")],
                          [(b"x-amzn-sagemaker-custom-attributes", b"k=v")]):
                headers = header_block(([(b"content-type", request_type.encode())] if request_type else []) + extra)
                for request in bodies:
                    for response in bodies[::-1]:
                        fast = encoder.line(headers, request, response_type, response, b"e-1", second_stamp)
                        general = encoder._general_line(headers, request, response_type, response, b"e-1",
                                                        second_stamp)
                        assert fast == general
                        doc = json.loads(fast)
                        assert doc["eventMetadata"]["inferenceTime"] == "2024-01-19T19:27:57Z"
                        if "Input" in sides:
                            assert body_bytes(doc["captureData"]["endpointInput"]) == request
                        if "Output" in sides:
                            assert body_bytes(doc["captureData"]["endpointOutput"]) == response
