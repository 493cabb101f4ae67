"""Synced capture segments (control/edge_capture.py): what is checked, where a segment lands, and that a
name always lands once, on a local destination and on the object store behind s3://."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from moorage.control.edge_capture import (
    MAX_SEGMENT_BYTES,
    SegmentConflict,
    check_segment,
    check_segment_name,
    store_segment,
)
from moorage.errors import ValidationException
from moorage.monitor.common.capture_reader import CaptureReader

REAL_CAPTURE = Path(__file__).parents[1] / "data" / "sagemaker" / "data_capture"  # SageMaker's own files
MOMENT = dt.datetime(2026, 1, 2, 3, 59, 58, tzinfo=dt.UTC)


def _line(values: str, moment: dt.datetime, **metadata: str) -> bytes:
    record = {"captureData": {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT", "data": values,
                                                "encoding": "CSV"}},
              "eventMetadata": {"eventId": "e-" + values, **metadata,
                                "inferenceTime": moment.strftime("%Y-%m-%dT%H:%M:%SZ")},
              "eventVersion": "0"}
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def test_real_sagemaker_capture_files_are_segments() -> None:
    # (sdk-tests_capture-csv-templated.jsonl is a template: its times are "{%s}" placeholders.)
    files = [p for p in sorted(REAL_CAPTURE.rglob("*.jsonl")) if "templated" not in p.name]
    assert files, f"no real capture files under {REAL_CAPTURE}"
    for path in files:
        count, first = check_segment(path.read_bytes())
        assert count == sum(1 for line in path.read_bytes().splitlines() if line.strip()), path
        assert first.tzinfo is not None


def test_a_segment_is_counted_and_dated_by_its_first_record() -> None:
    body = _line("1,2", MOMENT) + _line("3,4", MOMENT + dt.timedelta(seconds=5), inferenceId="abc")
    assert check_segment(body) == (2, MOMENT)
    assert check_segment(body[:-1]) == (2, MOMENT)  # the last line's newline is not required


@pytest.mark.parametrize(("body", "words"), [
    (b"", "empty"),
    (_line("1,2", MOMENT) + _line("3,4", MOMENT)[:-9], "line 2 is not JSON"),
    (_line("1,2", MOMENT) + b"[1, 2]\n", "line 2 is not a SageMaker capture record: it is not a JSON object"),
    (_line("1,2", MOMENT) + b"{oops\n", "line 2 is not JSON"),
    (b'{"captureData":{},"eventMetadata":{"eventId":"x","inferenceTime":"2026-01-01T00:00:00Z"},'
     b'"eventVersion":"0"}\n', "line 1"),
    (_line("1,2", MOMENT).replace(b'"CSV"', b'"XML"'), "encoding"),
    (_line("1,2", MOMENT).replace(b'"INPUT"', b'"OUTPUT"'), "mode"),
    (_line("1,2", MOMENT).replace(b"2026-01-02T03:59:58Z", b"yesterday"), "ISO-8601"),
    (_line("1,2", MOMENT).replace(b',"eventVersion":"0"', b""), "eventVersion"),
    (_line("1,2", MOMENT) + b"\n", "line 2 is not JSON"),
])
def test_a_bad_line_is_named(body: bytes, words: str) -> None:
    with pytest.raises(ValidationException) as refused:
        check_segment(body)
    assert words in refused.value.message


@pytest.mark.parametrize("name", ["cam-000000000001", "cam-1-00000000001", "cam-1-0000000000001", "cam-1-abc",
                                  "other-000000000001", "cam-1-000000000001.jsonl", "../cam-1-000000000001"])
def test_segment_names_are_the_devices_numbered_ones(name: str) -> None:
    check_segment_name("cam-1", "cam-1-000000000001")
    with pytest.raises(ValidationException):
        check_segment_name("cam-1", name)


@pytest.mark.parametrize("scheme", ["path", "file", "s3"])
def test_a_segment_lands_once_by_its_first_records_hour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       scheme: str) -> None:
    monkeypatch.setenv("MOORAGE_OBJECT_STORE", "local")
    monkeypatch.setenv("MOORAGE_OBJECT_STORE_ROOT", str(tmp_path / "objects"))
    destination = {"path": str(tmp_path / "capture"), "file": (tmp_path / "capture").as_uri(),
                   "s3": "s3://edge-bucket/capture"}[scheme]
    on_disk = tmp_path / "objects" / "edge-bucket" / "capture" if scheme == "s3" else tmp_path / "capture"
    # The first record is in hour 03, the second in hour 04: the segment goes under 03.
    body = _line("1,2", MOMENT) + _line("3,4", MOMENT + dt.timedelta(seconds=5))
    stored = store_segment(destination, "fleet-a", "cam-1", "cam-1-000000000042", body)
    assert stored.key.endswith("/fleet-a/cam-1/2026/01/02/03/cam-1-000000000042.jsonl")
    assert stored.created and stored.records == 2 and stored.size == len(body)
    target = on_disk / "fleet-a" / "cam-1" / "2026" / "01" / "02" / "03" / "cam-1-000000000042.jsonl"
    assert target.read_bytes() == body
    assert [p.name for p in target.parent.iterdir()] == [target.name]  # no temporary file left beside it

    again = store_segment(destination, "fleet-a", "cam-1", "cam-1-000000000042", body)
    assert again.key == stored.key and not again.created
    with pytest.raises(SegmentConflict):
        store_segment(destination, "fleet-a", "cam-1", "cam-1-000000000042", body + _line("5,6", MOMENT))
    assert target.read_bytes() == body

    # The monitor's capture reader finds it as an endpoint's capture: the fleet is the "endpoint".
    reader = CaptureReader(destination, "fleet-a", MOMENT - dt.timedelta(hours=1), MOMENT + dt.timedelta(hours=2),
                           feature_names=["a", "b"])
    rows = [row for batch in reader.batches() for row in batch.to_pylist()]
    assert rows == [{"a": "1", "b": "2"}, {"a": "3", "b": "4"}]


def test_an_oversize_segment_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    line = _line("1,2", MOMENT)
    body = line * (MAX_SEGMENT_BYTES // len(line) + 1)
    with pytest.raises(ValidationException) as refused:
        store_segment(str(tmp_path / "capture"), "fleet-a", "cam-1", "cam-1-000000000001", body)
    assert str(MAX_SEGMENT_BYTES) in refused.value.message
    assert not (tmp_path / "capture").exists()
