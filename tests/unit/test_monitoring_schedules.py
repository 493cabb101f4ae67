"""Schedule expressions, the capture reader and the report page, without a server."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import orjson
import pytest

from moorage.control.schedule_expressions import ScheduleExpression
from moorage.errors import ValidationException
from moorage.monitor.common.capture_reader import CaptureReader, capture_files, decode_rows
from moorage.monitor.common.jobs import JobDefinition, window_of
from moorage.monitor.common.report import render_report
from moorage.monitor.common.time_offsets import parse_offset, parse_time_or_offset

FORMATS = Path(__file__).parents[1] / "data" / "sagemaker"
UTC = dt.UTC
T = dt.datetime(2024, 1, 19, 19, 27, 57, tzinfo=UTC)  # a Friday


@pytest.mark.parametrize(("expression", "expected"), [
    ("cron(0 * ? * * *)", dt.datetime(2024, 1, 19, 20, 0, tzinfo=UTC)),
    ("cron(0 0 ? * * *)", dt.datetime(2024, 1, 20, 0, 0, tzinfo=UTC)),
    ("cron(0 */6 ? * * *)", dt.datetime(2024, 1, 20, 0, 0, tzinfo=UTC)),
    ("cron(0 */2 ? * * *)", dt.datetime(2024, 1, 19, 20, 0, tzinfo=UTC)),
    ("cron(30 9 ? * MON-FRI *)", dt.datetime(2024, 1, 22, 9, 30, tzinfo=UTC)),
    ("cron(0 12 1 JAN ? *)", dt.datetime(2025, 1, 1, 12, 0, tzinfo=UTC)),
    ("rate(5 seconds)", dt.datetime(2024, 1, 19, 19, 28, 0, tzinfo=UTC)),
    ("rate(1 hour)", dt.datetime(2024, 1, 19, 20, 0, tzinfo=UTC)),
])
def test_next_fire_times(expression: str, expected: dt.datetime) -> None:
    assert ScheduleExpression.parse(expression).next_after(T) == expected


def test_next_fire_is_strictly_after() -> None:
    hourly = ScheduleExpression.parse("cron(0 * ? * * *)")
    on_the_hour = dt.datetime(2024, 1, 19, 20, 0, tzinfo=UTC)
    assert hourly.next_after(on_the_hour) == dt.datetime(2024, 1, 19, 21, 0, tzinfo=UTC)
    rate = ScheduleExpression.parse("rate(10 seconds)")
    assert rate.next_after(on_the_hour) == on_the_hour + dt.timedelta(seconds=10)


def test_now_is_one_off() -> None:
    now = ScheduleExpression.parse("NOW")
    assert now.one_off and now.next_after(T) is None


@pytest.mark.parametrize("bad", ["cron(0 * * * *)", "cron(0 L ? * * *)", "cron(0 * 5 * MON *)", "cron(61 * ? * * *)",
                                 "hourly", "rate(0 seconds)", "rate(5 fortnights)"])
def test_bad_expressions_are_refused(bad: str) -> None:
    with pytest.raises(ValidationException):
        ScheduleExpression.parse(bad)


def test_offsets() -> None:
    assert parse_offset("-PT1H") == -dt.timedelta(hours=1)
    assert parse_offset("-P1D") == -dt.timedelta(days=1)
    assert parse_offset("-PT0H") == dt.timedelta(0)
    assert parse_offset("PT90S") == dt.timedelta(seconds=90)
    assert parse_time_or_offset("2024-01-19T18:00:00Z", T) == dt.datetime(2024, 1, 19, 18, tzinfo=UTC)
    with pytest.raises(ValidationException):
        parse_offset("-1H")


def _definition(**endpoint_input: str) -> JobDefinition:
    return JobDefinition.from_data_quality({
        "DataQualityJobInput": {"EndpointInput": {"EndpointName": "e", "LocalPath": "/opt/ml/processing/input",
                                                  **endpoint_input}},
        "DataQualityJobOutputConfig": {"MonitoringOutputs": [{"S3Output": {"S3Uri": "file:///tmp/x",
                                                                           "LocalPath": "/opt/ml/processing/o"}}]},
        "DataQualityAppSpecification": {"ImageUri": "x"}})


def test_windows() -> None:
    scheduled = dt.datetime(2024, 1, 19, 20, 0, tzinfo=UTC)
    assert window_of(_definition(), scheduled) == (scheduled - dt.timedelta(hours=1), scheduled)
    shifted = _definition(StartTimeOffset="-PT3H", EndTimeOffset="-PT1H")
    assert window_of(shifted, scheduled) == (scheduled - dt.timedelta(hours=3), scheduled - dt.timedelta(hours=1))
    assert window_of(_definition(), scheduled, start="-PT10M") == (scheduled - dt.timedelta(minutes=10), scheduled)
    with pytest.raises(ValidationException):
        window_of(_definition(), scheduled, start="-PT0H", end="-PT1H")


@pytest.mark.parametrize(("name", "rows"), [
    ("sdk-tests_captured-data.jsonl", [[1.0, 2.0, 5.0]]),
    ("sdk-tests_capture-csv-templated.jsonl", [["9", "45", "45", "42", "7", "5", "0"]]),
    ("examples_capture-json-endpoint.jsonl", [[28, 2, 133937, 9, 13, 2, 0, 0, 4, 1, 15024, 0, 55, 37]]),
    ("examples_capture-jsonlines-endpoint.jsonl", [[28, 2, 133937, 9, 13, 2, 0, 0, 4, 1, 15024, 0, 55, 37]]),
])
def test_sagemaker_capture_records_decode(name: str, rows: list[list[object]]) -> None:
    first = orjson.loads((FORMATS / "data_capture" / name).read_text().splitlines()[0])
    assert decode_rows(first["captureData"]["endpointInput"]) == rows


def _write_capture(root: Path, endpoint: str, variant: str, moment: dt.datetime, lines: list[bytes]) -> Path:
    folder = root / endpoint / variant / f"{moment:%Y/%m/%d/%H}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{moment:%M-%S}-000-{len(list(folder.iterdir())):08d}.jsonl"
    path.write_bytes(b"".join(lines))
    return path


def test_reader_windows_hours_variants_and_names(tmp_path: Path) -> None:
    source = (FORMATS / "data_capture" / "examples_capture-json-endpoint.jsonl").read_bytes().splitlines(True)
    # the two real records are at 2024-01-19T19:27:57Z
    _write_capture(tmp_path, "ep", "AllTraffic", dt.datetime(2024, 1, 19, 19, 27, tzinfo=UTC), source)
    _write_capture(tmp_path, "ep", "Shadow", dt.datetime(2024, 1, 19, 19, 27, tzinfo=UTC), source[:1])
    _write_capture(tmp_path, "ep", "AllTraffic", dt.datetime(2024, 1, 19, 19, 28, tzinfo=UTC), [b'{"broken'])
    start, end = dt.datetime(2024, 1, 19, 19, 0, tzinfo=UTC), dt.datetime(2024, 1, 19, 20, 0, tzinfo=UTC)
    assert len(capture_files(str(tmp_path), "ep", start, end)) == 3
    names = [f"f{i}" for i in range(14)]
    reader = CaptureReader(tmp_path.as_uri(), "ep", start, end, feature_names=names)
    table = [b.to_pylist() for b in reader.batches()]
    rows = [r for batch in table for r in batch]
    # record 1: one instance; record 2: two instances; shadow: one instance
    assert len(rows) == 4 and list(rows[0]) == names and rows[0]["f2"] == 133937
    assert reader.scan.records == 3 and reader.scan.malformed_lines == 1
    # a window that ends before the records' second leaves them out
    early = CaptureReader(str(tmp_path), "ep", start, dt.datetime(2024, 1, 19, 19, 27, 57, tzinfo=UTC))
    assert list(early.batches()) == [] and early.scan.outside_window == 3
    # another hour's folder is not even listed
    assert capture_files(str(tmp_path), "ep", end, end + dt.timedelta(hours=1)) == []


def test_reader_output_side_and_preprocessor(tmp_path: Path) -> None:
    source = FORMATS / "data_capture" / "sdk-tests_capture-csv-templated.jsonl"
    lines = [line.replace(b'"{%s}"', b'"2024-01-19T19:30:00Z"') for line in source.read_bytes().splitlines(True)]
    _write_capture(tmp_path, "ep", "AllTraffic", dt.datetime(2024, 1, 19, 19, 30, tzinfo=UTC), lines)
    start, end = dt.datetime(2024, 1, 19, 19, tzinfo=UTC), dt.datetime(2024, 1, 19, 20, tzinfo=UTC)
    both = CaptureReader(str(tmp_path), "ep", start, end, sides=["endpointInput", "endpointOutput"])
    rows = [r for b in both.batches() for r in b.to_pylist()]
    assert len(rows) == len(lines) and len(rows[0]) == 8 and rows[0]["_c7"] == "0.302709460258"
    script = tmp_path / "pre.py"
    script.write_text(
        "def preprocess_handler(inference_record):\n"
        "    values = inference_record.endpoint_input.data.split(',')\n"
        "    if values[0] == '9':\n"
        "        return []\n"
        "    out = inference_record.endpoint_output.data\n"
        "    return {'first': float(values[0]), 'score': float(out)}\n")
    from moorage.monitor.common.capture_reader import load_preprocessor

    reader = CaptureReader(str(tmp_path), "ep", start, end, preprocessor=load_preprocessor(script.as_uri()))
    rows = [r for b in reader.batches() for r in b.to_pylist()]
    assert rows and all(set(r) == {"first", "score"} and r["first"] != 9.0 for r in rows)
    assert reader.scan.dropped_by_preprocessor == sum(1 for line in lines if b'"data":"9,' in line) > 0


def test_report_names_drifted_features(tmp_path: Path) -> None:
    statistics = orjson.loads((FORMATS / "data_quality" / "sdk-tests_statistics-numeric-kll.json").read_bytes())
    shifted = orjson.loads(orjson.dumps(statistics))
    feature = shifted["features"][1]
    levels = feature["numerical_statistics"]["distribution"]["kll"]["sketch"]["data"]
    feature["numerical_statistics"]["distribution"]["kll"]["sketch"]["data"] = [[v + 5 for v in lvl] for lvl in levels]
    name = feature["name"]
    violations = [{"feature_name": name, "constraint_check_type": "baseline_drift_check",
                   "description": "Baseline drift distance: 0.9 exceeds threshold: 0.1"}]
    page = render_report(statistics=shifted, baseline=statistics, violations=violations,
                         meta={"endpoint": "ep", "schedule": "s", "window_start": "a", "window_end": "b"})
    assert "data:image/png;base64," in page and name in page and "baseline_drift_check" in page
    clean = render_report(statistics=statistics, baseline=statistics, violations=[], meta={})
    assert "data:image/png" not in clean and "no violations" in clean
    shutil.rmtree(tmp_path, ignore_errors=True)
