"""Ground truth: finding, reading and writing label files, merging them with captured predictions, attributes."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from moorage.monitor.common import attributes
from moorage.monitor.common.attributes import AttributeExtractionError, InvalidAttribute, extract, extract_ground_truth
from moorage.monitor.common.ground_truth import (
    LabelScan,
    ground_truth_files,
    merge,
    merged_record,
    read_labels,
    write_labels,
)

FORMATS = Path("/work/shared/formats/sagemaker")
ACTUALS = FORMATS / "ground_truth" / "sdk-tests_actuals-templated.jsonl"
CAPTURE_CSV = FORMATS / "data_capture" / "sdk-tests_capture-csv-templated.jsonl"
MERGED_EXAMPLE = FORMATS / "ground_truth" / "examples_merged-capture-plus-groundtruth-record.json"
needs_formats = pytest.mark.skipif(not FORMATS.is_dir(), reason="SageMaker's format examples are not on this machine")

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 19, 20, 6, 8, tzinfo=UTC)


def at(hour: int, minute: int = 0, day: int = 19) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, minute, tzinfo=UTC)


def label_line(event_id: str, data: str = "1", encoding: str = "CSV") -> str:
    return json.dumps({"groundTruthData": {"data": data, "encoding": encoding},
                       "eventMetadata": {"eventId": event_id}, "eventVersion": "0"})


def put(root: Path, relative: str, lines: list[str]) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def relative_paths(files: list[tuple[Any, str]], root: Path) -> list[str]:
    return [os.path.relpath(path, root) for _, path in files]


# -- reading -------------------------------------------------------------------------------------------
@needs_formats
def test_reads_the_sdk_actuals_file(tmp_path: Path) -> None:
    text = ACTUALS.read_text().replace("{%s}", "2024-01-19T20:06:08Z")
    put(tmp_path, "2024/01/19/20/actuals.jsonl", text.splitlines())
    scan = read_labels(ground_truth_files(str(tmp_path), at(21)))
    assert (scan.files, scan.records, scan.count, scan.duplicates, scan.malformed_lines) == (1, 44, 44, 0, 0)
    assert scan.labels["74b0dd56-e7c8-368e-94b1-14a138a96000"] == "1"
    assert scan.value("74b0dd56-e7c8-368e-94b1-14a138a96000") == "1"
    assert sorted(set(scan.labels.values())) == ["0", "1"]
    assert sum(v == "1" for v in scan.labels.values()) == 34
    assert scan.encodings == {}


@needs_formats
def test_sdk_capture_and_sdk_actuals_merge_completely(tmp_path: Path) -> None:
    from moorage.monitor.common.capture_reader import CaptureScan, capture_files, read_records

    moment = "2024-01-19T20:06:08Z"
    put(tmp_path / "capture", "ep/AllTraffic/2024/01/19/20/a.jsonl",
        CAPTURE_CSV.read_text().replace("{%s}", moment).splitlines())
    put(tmp_path / "gt", "2024/01/20/03/b.jsonl", ACTUALS.read_text().replace("{%s}", moment).splitlines())
    files = capture_files(str(tmp_path / "capture"), "ep", at(20), at(21))
    labels = read_labels(ground_truth_files(str(tmp_path / "gt"), at(4, day=20)))
    merged = merge(read_records(files, at(20), at(21), CaptureScan()), labels, probability_attribute="0",
                   problem_type="BinaryClassification", probability_threshold=0.5)
    assert (merged.captured, merged.matched, merged.missing_label, merged.unknown_labels) == (44, 44, 0, 0)
    assert merged.rows == 44 and merged.probabilities is not None and merged.all_scores is not None
    assert merged.probabilities.dtype == np.float64 and len(merged.all_scores) == 44
    assert np.array_equal(merged.predictions, (merged.probabilities >= 0.5).astype(float))
    assert set(merged.labels.tolist()) == {0.0, 1.0}


def test_hour_folders_up_to_until(tmp_path: Path) -> None:
    for relative in ["2023/12/31/23/a.jsonl", "2024/01/19/18/a.jsonl", "2024/01/19/19/b.jsonl",
                     "2024/01/19/19/a.jsonl", "2024/01/19/20/a.jsonl", "2024/01/19/21/a.jsonl",
                     "2024/01/20/00/a.jsonl", "2025/01/01/00/a.jsonl"]:
        put(tmp_path, relative, [label_line("x")])
    # not label files, or not SageMaker's layout: never listed
    for relative in ["2024/01/19/20/notes.txt", "2024/01/19/20/.c.jsonl.partial", "2024/01/19/20/.hidden.jsonl",
                     "2024/13/01/00/a.jsonl", "2024/02/30/01/a.jsonl", "2024/01/19/24/a.jsonl",
                     "tmp/01/19/20/a.jsonl", "2024/1/19/20/a.jsonl", "2024/01/19/20/deeper/a.jsonl",
                     "2024/01/19/a.jsonl"]:
        put(tmp_path, relative, [label_line("x")])

    found = relative_paths(ground_truth_files(str(tmp_path), at(20, 30)), tmp_path)
    assert found == ["2023/12/31/23/a.jsonl", "2024/01/19/18/a.jsonl", "2024/01/19/19/a.jsonl",
                     "2024/01/19/19/b.jsonl", "2024/01/19/20/a.jsonl"]
    # an hour folder counts when its hour starts before `until`
    assert relative_paths(ground_truth_files(str(tmp_path), at(20)), tmp_path)[-1] == "2024/01/19/19/b.jsonl"
    # `since` leaves out the hours that end at or before it
    assert relative_paths(ground_truth_files(str(tmp_path), at(20, 30), since=at(19)), tmp_path) == [
        "2024/01/19/19/a.jsonl", "2024/01/19/19/b.jsonl", "2024/01/19/20/a.jsonl"]
    assert relative_paths(ground_truth_files(str(tmp_path), at(20, 30), since=at(18, 59)), tmp_path)[0] == \
        "2024/01/19/18/a.jsonl"
    # across a day and a year, and naive times taken as UTC
    assert relative_paths(ground_truth_files(str(tmp_path), dt.datetime(2024, 1, 20, 0, 1),
                                             since=dt.datetime(2023, 12, 31, 23, 59)), tmp_path) == [
        "2023/12/31/23/a.jsonl", "2024/01/19/18/a.jsonl", "2024/01/19/19/a.jsonl", "2024/01/19/19/b.jsonl",
        "2024/01/19/20/a.jsonl", "2024/01/19/21/a.jsonl", "2024/01/20/00/a.jsonl"]
    # a time in another zone is the same instant
    eastern = dt.timezone(dt.timedelta(hours=-5))
    assert ground_truth_files(str(tmp_path), dt.datetime(2024, 1, 19, 15, 30, tzinfo=eastern)) == \
        ground_truth_files(str(tmp_path), at(20, 30))
    # the file:// form, and a prefix nobody wrote to yet
    assert ground_truth_files(f"file://{tmp_path}", at(20, 30)) == ground_truth_files(str(tmp_path), at(20, 30))
    assert ground_truth_files(str(tmp_path / "nothing-yet"), at(20)) == []


def test_remote_listing_finds_the_same_files(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("memory")
    root = f"/gt-{random.Random(7).randrange(10**9)}"
    for relative in ["2024/01/19/18/a.jsonl", "2024/01/19/20/b.jsonl", "2024/01/19/20/a.jsonl",
                     "2024/01/19/21/a.jsonl", "2024/01/19/20/x.txt", "2024/01/19/20/deeper/a.jsonl"]:
        fs.pipe_file(f"{root}/{relative}", (label_line(relative) + "\n").encode())
    files = ground_truth_files(f"memory://{root}", at(20, 30))
    assert [path.rsplit(root, 1)[-1] for _, path in files] == [
        "/2024/01/19/18/a.jsonl", "/2024/01/19/20/a.jsonl", "/2024/01/19/20/b.jsonl"]
    scan = read_labels(files)
    assert scan.count == 3 and scan.labels["2024/01/19/20/b.jsonl"] == "1"
    url = write_labels(f"memory://{root}", [("remote", 2)], when=at(20, 10))
    assert url.startswith(f"memory://{root}/2024/01/19/20/10-00-000-")
    assert read_labels(ground_truth_files(f"memory://{root}", at(21))).labels["remote"] == "2"
    fs.rm(root, recursive=True)


def test_the_last_label_of_an_id_wins_and_duplicates_are_counted(tmp_path: Path) -> None:
    put(tmp_path, "2024/01/19/20/00-00-001-b.jsonl", [label_line("a", "3"), label_line("c", "1")])
    put(tmp_path, "2024/01/19/20/00-00-000-a.jsonl", [label_line("a", "2"), label_line("b", "1")])
    put(tmp_path, "2024/01/19/19/z.jsonl", [label_line("a", "0"), label_line("a", "1"), label_line("d", "1")])
    put(tmp_path, "2024/01/19/21/z.jsonl", [label_line("d", "9")])  # collected after `until`: not read
    scan = read_labels(ground_truth_files(str(tmp_path), at(20, 59)))
    assert scan.labels == {"a": "3", "d": "1", "b": "1", "c": "1"}
    assert (scan.records, scan.duplicates, scan.count) == (7, 3, 4)
    assert scan.counts()["Duplicates"] == 3


def test_a_later_csv_label_replaces_a_json_one(tmp_path: Path) -> None:
    put(tmp_path, "2024/01/19/19/a.jsonl", [label_line("a", '{"label": 1}', "JSON"), label_line("b", "2", "json")])
    put(tmp_path, "2024/01/19/20/a.jsonl", [label_line("a", "0")])
    scan = read_labels(ground_truth_files(str(tmp_path), at(21)))
    assert scan.ground_truth_data("a") == {"data": "0", "encoding": "CSV"}
    assert scan.ground_truth_data("b") == {"data": "2", "encoding": "JSON"}
    assert scan.value("b") == 2 and scan.encodings == {"b": "JSON"}
    assert scan.ground_truth_data("nobody") is None
    with pytest.raises(KeyError):
        scan.value("nobody")


def test_malformed_lines_are_counted_by_reason(tmp_path: Path) -> None:
    good = [label_line("ok1"), label_line("ok2", "cat")]
    bad = [
        '{"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMeta',  # cut short: bad_json
        "not json at all",  # bad_json
        "[1, 2]",  # not_an_object
        json.dumps({"groundTruthData": {"data": "1"}, "eventMetadata": {"eventId": "v"}}),  # missing_field
        json.dumps({"groundTruthData": {"data": "1"}, "eventMetadata": {"eventId": "v"}, "eventVersion": "1"}),
        json.dumps({"groundTruthData": {"data": "1"}, "eventMetadata": {"eventId": "v"}, "eventVersion": 0}),
        json.dumps({"eventMetadata": {"eventId": "m"}, "eventVersion": "0"}),  # missing_field
        json.dumps({"groundTruthData": {"data": "1"}, "eventMetadata": {}, "eventVersion": "0"}),  # missing_field
        json.dumps({"groundTruthData": {"data": "1"}, "eventMetadata": {"eventId": ""}, "eventVersion": "0"}),
        json.dumps({"groundTruthData": {"data": "1", "encoding": "BASE64"}, "eventMetadata": {"eventId": "e"},
                    "eventVersion": "0"}),  # unknown_encoding
        json.dumps({"groundTruthData": {"data": {"x": 1}}, "eventMetadata": {"eventId": "d"},
                    "eventVersion": "0"}),  # bad_field
        json.dumps({"groundTruthData": {"data": "1"}, "eventMetadata": {"eventId": ["l"]},
                    "eventVersion": "0"}),  # bad_field
    ]
    lenient = [
        json.dumps({"groundTruthData": {"data": 1}, "eventMetadata": {"eventId": 42}, "eventVersion": "0"}),
        json.dumps({"groundTruthData": {"data": "0"}, "eventMetadata": {"eventId": "no-encoding"},
                    "eventVersion": "0"}),
    ]
    path = put(tmp_path, "2024/01/19/20/a.jsonl", [good[0], "", *bad, "   ", good[1], *lenient])
    scan = read_labels([*ground_truth_files(str(tmp_path), at(21)), (None, str(tmp_path / "vanished.jsonl"))])
    assert scan.malformed == {"bad_json": 2, "not_an_object": 1, "missing_field": 4, "wrong_event_version": 2,
                              "unknown_encoding": 1, "bad_field": 2, "unreadable_file": 1}
    assert scan.malformed_lines == 13
    assert scan.labels == {"ok1": "1", "ok2": "cat", "42": "1", "no-encoding": "0"}
    assert scan.examples["bad_json"][0].startswith(f"{path}:3: ")
    assert len(scan.examples["missing_field"]) == 3  # a few examples, not all
    assert scan.counts()["MalformedLines"] == 13 and scan.files == 2


# -- writing -------------------------------------------------------------------------------------------
def test_write_labels_then_read_them_back(tmp_path: Path) -> None:
    when = dt.datetime(2024, 1, 19, 20, 7, 9, 123456, tzinfo=UTC)
    items = [("a", 1), ("b", "cat"), ("c", True), ("d", 0.25), ("e", "x,y"), ("f", False), ("g", 'say "hi"')]
    url = write_labels(str(tmp_path), items, when=when)
    folder = tmp_path / "2024/01/19/20"
    (name,) = os.listdir(folder)  # no partial file left behind
    assert url == f"{tmp_path}/2024/01/19/20/{name}"
    assert name.startswith("07-09-123-") and name.endswith(".jsonl")
    first = json.loads((folder / name).read_text().splitlines()[0])
    assert first == {"groundTruthData": {"data": "1", "encoding": "CSV"}, "eventMetadata": {"eventId": "a"},
                     "eventVersion": "0"}
    assert list(first) == ["groundTruthData", "eventMetadata", "eventVersion"]  # the documented record's order

    scan = read_labels(ground_truth_files(str(tmp_path), at(21)))
    assert scan.malformed == {}
    assert {key: scan.value(key) for key in scan.labels} == {
        "a": "1", "b": "cat", "c": "1", "d": "0.25", "e": "x,y", "f": "0", "g": 'say "hi"'}

    # a later write in the same hour sorts after the earlier one, so its labels win
    write_labels(f"file://{tmp_path}", [("a", 0)], when=when + dt.timedelta(milliseconds=5))
    assert read_labels(ground_truth_files(str(tmp_path), at(21))).labels["a"] == "0"


def test_write_labels_checks_every_item_before_writing(tmp_path: Path) -> None:
    for items, error in [([("a", 1), ("", 2)], ValueError), ([("a", float("nan"))], ValueError),
                         ([("a", {"x": 1})], TypeError), ([("a", None)], TypeError), ([], ValueError),
                         ([(7, 1)], ValueError)]:
        with pytest.raises(error):
            write_labels(str(tmp_path), items, when=T0)
    assert not any(tmp_path.iterdir())


def test_write_labels_defaults_to_the_current_hour(tmp_path: Path) -> None:
    before = dt.datetime.now(UTC)
    url = write_labels(str(tmp_path), [("now", "1")])
    after = dt.datetime.now(UTC)
    assert any(f"/{moment:%Y/%m/%d/%H}/" in url for moment in (before, after))
    assert read_labels(ground_truth_files(str(tmp_path), after + dt.timedelta(seconds=1))).labels == {"now": "1"}


# -- merging -------------------------------------------------------------------------------------------
def capture_record(index: int, output: dict[str, Any], inference_id: str | None, moment: dt.datetime) -> dict:
    metadata: dict[str, Any] = {"eventId": f"event-{index:04d}", "inferenceTime": f"{moment:%Y-%m-%dT%H:%M:%SZ}"}
    if inference_id is not None:
        metadata["inferenceId"] = inference_id
    return {"captureData": {"endpointInput": {"observedContentType": "text/csv", "mode": "INPUT",
                                              "data": f"{index},{index % 5}", "encoding": "CSV"},
                            "endpointOutput": output},
            "eventMetadata": metadata, "eventVersion": "0"}


def csv_output(text: str) -> dict[str, Any]:
    return {"observedContentType": "text/csv", "mode": "OUTPUT", "data": text, "encoding": "CSV"}


def json_output(document: Any) -> dict[str, Any]:
    return {"observedContentType": "application/json", "mode": "OUTPUT", "data": json.dumps(document),
            "encoding": "JSON"}


def build_window(tmp_path: Path, kind: str, count: int = 1000) -> tuple[dict[str, tuple[float, float, str]], int]:
    """``count`` captured records of one output ``kind`` on disk, and their labels arriving out of order.

    Returns the expected rows (key -> (prediction, probability, label)) and the number of unknown labels.
    """
    rng = random.Random(11)
    records, expected = [], {}
    final_labels: dict[str, str] = {}
    decoys: list[tuple[str, str]] = []
    for i in range(count):
        score = round(rng.random(), 6)
        predicted = int(score >= 0.5)
        if kind == "csv":
            output = csv_output(f"{predicted},{score}")
        elif kind == "json":
            output = json_output({"predictions": [{"score": score, "predicted_label": predicted}]})
        else:  # both in one window, the prediction being the whole output
            output = csv_output(str(predicted)) if i % 2 else json_output({"predicted_label": predicted})
        inference_id = f"inf-{i}" if i % 3 == 0 else None
        key = inference_id or f"event-{i:04d}"
        moment = T0 + dt.timedelta(seconds=i)
        records.append(capture_record(i, output, inference_id, moment))
        if inference_id is not None and i % 9 == 0:
            decoys.append((f"event-{i:04d}", "1"))  # keyed by the eventId of a record with an inferenceId
        if i % 7 == 0:
            continue  # never labelled
        label = str((predicted + (i % 4 == 0)) % 2)  # wrong on every 4th
        final_labels[key] = label
        expected[key] = (float(predicted), score, label)
    capture_folder = tmp_path / "capture" / "ep" / "AllTraffic" / "2024" / "01" / "19" / "20"
    capture_folder.mkdir(parents=True)
    for part in range(3):
        lines = [json.dumps(r) for r in records[part::3]]
        (capture_folder / f"part-{part}.jsonl").write_text("\n".join(lines) + "\n")

    # labels: written over several hours in shuffled order; some first with a wrong label, corrected later
    items = list(final_labels.items())
    rng.shuffle(items)
    corrections = [(key, str(1 - int(label))) for key, label in items[:50]]
    unknown = [(f"never-captured-{j}", "1") for j in range(25)] + decoys
    gt = str(tmp_path / "gt")
    write_labels(gt, corrections, when=at(21, 5))  # the wrong ones, earlier
    chunks = [items[k::4] for k in range(4)]
    for hour, chunk in zip((23, 21, 22, 21), chunks, strict=True):
        write_labels(gt, chunk + unknown[:5], when=at(hour, 10 + len(chunk) % 7))
    write_labels(gt, unknown, when=at(22, 1))
    return expected, 25 + len(decoys)


def read_window(tmp_path: Path) -> tuple[Any, LabelScan]:
    from moorage.monitor.common.capture_reader import CaptureScan, capture_files, read_records

    files = capture_files(str(tmp_path / "capture"), "ep", at(20), at(21))
    labels = read_labels(ground_truth_files(str(tmp_path / "gt"), at(23, 30)))
    return read_records(files, at(20), at(21), CaptureScan()), labels


@pytest.mark.parametrize(("kind", "attributes_"), [
    ("csv", {"inference_attribute": "0", "probability_attribute": "1"}),
    ("json", {"inference_attribute": "predictions[0].predicted_label",
              "probability_attribute": "$.predictions[0].score"}),
    ("json", {"inference_attribute": "predicted_label", "probability_attribute": "score"}),  # the one-row retry
])
def test_merge_of_a_thousand_predictions(tmp_path: Path, kind: str, attributes_: dict[str, str]) -> None:
    expected, unknown = build_window(tmp_path, kind)
    captured, labels = read_window(tmp_path)
    assert labels.duplicates > 0 and labels.malformed == {}
    merged = merge(captured, labels, problem_type="BinaryClassification", **attributes_)
    labelled = len(expected)
    assert (merged.captured, merged.matched, merged.missing_label) == (1000, labelled, 1000 - labelled)
    assert merged.unknown_labels == unknown
    assert (merged.without_id, merged.unusable, merged.duplicate_ids, merged.errors) == (0, 0, 0, {})
    assert merged.predictions.dtype == np.float64 and merged.labels.dtype == np.float64
    got = {key: (p, s, str(int(label))) for key, p, s, label in
           zip(merged.ids, merged.predictions.tolist(), merged.probabilities.tolist(), merged.labels.tolist(),
               strict=True)}
    assert got == expected
    assert merged.all_scores is not None and len(merged.all_scores) == 1000
    assert merged.counts()["Matched"] == labelled


def test_merge_of_csv_and_json_outputs_by_their_whole_value(tmp_path: Path) -> None:
    expected, unknown = build_window(tmp_path, "mixed")
    captured, labels = read_window(tmp_path)
    merged = merge(captured, labels)
    assert (merged.matched, merged.unusable, merged.unknown_labels) == (len(expected), 0, unknown)
    assert sorted(zip(merged.ids, merged.pairs(), strict=True)) == sorted(
        (key, (p, float(label))) for key, (p, _, label) in expected.items())
    assert merged.probabilities is None and merged.all_scores is None
    assert sum(1 for _ in merged.merged_records()) == len(expected)


def test_merge_prefers_the_inference_id_and_counts_what_it_leaves_out() -> None:
    records = [
        capture_record(1, csv_output("1"), "inf-1", T0),
        capture_record(2, csv_output("0"), None, T0),
        capture_record(3, csv_output("1"), "inf-3", T0),
        capture_record(4, csv_output("1"), "inf-3", T0),  # an id reused by the caller
        capture_record(5, {"data": "", "encoding": "CSV"}, None, T0),  # empty output
        capture_record(6, csv_output("1,0.3"), None, T0),  # two columns and no attribute
        {"captureData": {}, "eventMetadata": {}},  # no id at all
        "not a record",
    ]
    del records[2]["captureData"]["endpointOutput"]  # an endpoint capturing its input only
    labels = {"inf-1": 1, "event-0001": "0", "event-0002": "1", "inf-3": "1", "event-0005": "1", "event-0006": "0",
              "unknown": "1"}
    merged = merge(records, labels)
    assert (merged.captured, merged.matched, merged.missing_label, merged.without_id) == (8, 6, 0, 2)
    assert merged.duplicate_ids == 1 and merged.unusable == 3
    assert merged.unknown_labels == 2  # event-0001 (its record has an inferenceId) and "unknown"
    assert merged.errors == {"prediction.missing": 1, "prediction.empty": 1, "prediction.not_a_value": 1}
    assert merged.ids == ["inf-1", "event-0002", "inf-3"]
    assert merged.pairs() == [(1.0, 1.0), (0.0, 1.0), (1.0, 1.0)]
    assert merged.error_examples["prediction.missing"][0].startswith("inf-3: ")
    # merged records keep every matched record, readable or not
    assert [r["eventMetadata"].get("inferenceId", r["eventMetadata"]["eventId"])
            for r in merged.merged_records()] == ["inf-1", "event-0002", "inf-3", "inf-3", "event-0005",
                                                   "event-0006"]


def test_merge_errors_by_kind() -> None:
    records = [capture_record(i, json_output(doc), None, T0) for i, doc in enumerate([
        {"predictions": [{"score": 0.9}]},
        {"predictions": [{"other": 0.9}]},
        {"predictions": [{"score": "high"}]},
        {"predictions": [{"score": 0.2}, {"score": 0.4}]},
    ])]
    merged = merge(records, {f"event-{i:04d}": "1" for i in range(4)}, probability_attribute="predictions[0].score",
                   probability_threshold=0.8)
    assert merged.errors == {"probability.missing": 1, "probability.not_a_number": 1}
    assert merged.pairs() == [(1.0, 1.0), (0.0, 1.0)]  # 0.2 < 0.8: class 0
    assert merged.all_scores is not None and merged.all_scores.tolist() == [0.9, 0.2]


def test_regression_merge_residuals_and_merged_output(tmp_path: Path) -> None:
    records = [capture_record(i, json_output({"predictions": [i * 1.5]}), None, T0) for i in range(40)]
    labels = {f"event-{i:04d}": str(i * 1.5 + (1 if i % 2 else -1)) for i in range(0, 40, 2)}
    labels["event-0004"] = "n/a"
    merged = merge(records, labels, problem_type="Regression")
    assert merged.matched == 20 and merged.errors == {"label.not_a_number": 1}
    assert merged.predictions.dtype == np.float64
    residuals = merged.residual_sample()
    assert residuals is not None and residuals.tolist() == [-1.0] * 19
    assert len(merged.residual_sample(limit=5)) == 5

    url = merged.write(str(tmp_path / "merge"))
    assert url == f"{tmp_path}/merge/merged.jsonl"
    lines = (tmp_path / "merge" / "merged.jsonl").read_bytes().splitlines()
    assert len(lines) == 20 and os.listdir(tmp_path / "merge") == ["merged.jsonl"]
    first = orjson.loads(lines[0])
    assert first["groundTruthData"] == {"data": "-1.0", "encoding": "CSV"}
    merged.close()
    with pytest.raises(RuntimeError):
        merged.write(str(tmp_path / "again"))


def test_merge_without_keeping_records_and_class_names() -> None:
    records = [capture_record(i, csv_output(name), None, T0) for i, name in enumerate(["cat", "dog", "1"])]
    merged = merge(records, {"event-0000": "cat", "event-0001": "cat", "event-0002": 1.0},
                   problem_type="MulticlassClassification", keep_merged=False)
    assert merged.predictions.dtype == object and merged.pairs() == [("cat", "cat"), ("dog", "cat"), ("1", "1.0")]
    with pytest.raises(RuntimeError):
        list(merged.merged_records())
    with pytest.raises(ValueError):
        merge(records, {}, problem_type="Ranking")
    with pytest.raises(InvalidAttribute):
        merge(records, {}, inference_attribute="predictions[")


@needs_formats
def test_merged_records_have_sagemakers_shape() -> None:
    example = json.loads(MERGED_EXAMPLE.read_text())
    # the capture record as the endpoint wrote it: its own key order
    capture = {"captureData": {side: {key: example["captureData"][side][key]
                                      for key in ("observedContentType", "mode", "data", "encoding")}
                               for side in ("endpointInput", "endpointOutput")},
               "eventMetadata": {key: example["eventMetadata"][key]
                                 for key in ("eventId", "inferenceTime", "inferenceId")},
               "eventVersion": "0"}
    labels = LabelScan.from_mapping({"7": example["groundTruthData"]})
    merged = merge([capture], labels)
    assert merged.matched == 1 and merged.unusable == 1  # a batch of 334 predictions is no single value
    (record,) = merged.merged_records()
    assert record == example

    def keys(value: Any) -> Any:
        return [(key, keys(inner)) for key, inner in value.items()] if isinstance(value, dict) else None

    assert keys(record) == keys(example)
    assert keys(merged_record(capture, example["groundTruthData"])) == keys(example)
    # the batch is readable with [*] (how the bias monitors read it)
    labels_ = extract_ground_truth(example["groundTruthData"], "instances[*].label")
    scores = extract(capture["captureData"]["endpointOutput"], "predictions[*].score")
    assert len(labels_) == len(scores) == 334 and set(labels_) == {0, 1}


# -- attributes ----------------------------------------------------------------------------------------
def test_csv_attributes_are_column_indexes() -> None:
    side = csv_output("1,0.83,cat")
    assert extract(side, "0") == "1" and extract(side, "1") == "0.83" and extract(side, " 2 ") == "cat"
    assert extract(side, "-1") == "cat"
    assert extract(csv_output("0.302709460258"), None) == "0.302709460258"
    assert extract(csv_output('"a, b",2\n'), "0") == "a, b"
    assert extract(csv_output("7\r\n"), None) == "7"
    for attribute, text, reason in [("3", "1,0.83,cat", "out_of_range"), (None, "1,2", "not_a_value"),
                                    ("score", "1,2", "bad_attribute"), ("0", "1\n2\n", "batched"),
                                    ("1", "1,,3", "empty"), (None, "", "empty")]:
        with pytest.raises(AttributeExtractionError) as caught:
            extract(csv_output(text), attribute)
        assert caught.value.reason == reason, (attribute, text)
        assert isinstance(caught.value, ValueError)


def test_json_attributes_are_paths() -> None:
    document = {"predictions": [{"score": 0.9, "predicted_label": 1, "odd key": "x"},
                                {"score": 0.1, "predicted_label": 0}],
                "model": {"name": "m", "versions": [[1, 2], [3, 4]]}, "score": 0.5, "0": "zero"}
    side = json_output(document)
    assert extract(side, "score") == 0.5
    assert extract(side, "predictions[1].score") == 0.1
    assert extract(side, "$.predictions[0].predicted_label") == 1
    assert extract(side, "$['predictions'][0]['odd key']") == "x"
    assert extract(side, 'predictions[-1]["predicted_label"]') == 0
    assert extract(side, "model.versions[1][0]") == 3
    assert extract(side, "model.name") == "m"
    assert extract(side, "predictions[*].score") == [0.9, 0.1]
    assert extract(side, "predictions.*.predicted_label") == [1, 0]
    assert extract(side, "0") == "zero"
    assert extract(json_output([0.2, 0.8]), "1") == 0.8
    assert extract(json_output(0.7), None) == 0.7
    assert extract(json_output({"predictions": [[0.7]]}), None) == 0.7
    pretty = {"observedContentType": "application/json", "mode": "OUTPUT", "encoding": "JSON",
              "data": "{\n    \"predictions\": [3.5\n    ]\n}"}
    assert extract(pretty, None) == 3.5
    assert extract(json_output({"predictions": [{"score": 0.9}]}), "score") == 0.9  # one row: retried on it
    for attribute, doc, reason in [
        ("predictions[0].missing", document, "missing"), ("predictions[5].score", document, "out_of_range"),
        ("model", document, "not_a_value"), ("predictions", document, "not_a_value"),
        (None, document, "not_a_value"), ("score", {"predictions": [{"x": 1}, {"score": 1}]}, "missing"),
        ("score.value", document, "missing"), ("a", {"a": None}, "empty"), ("x[*]", {"x": 3}, "missing"),
    ]:
        with pytest.raises(AttributeExtractionError) as caught:
            extract(json_output(doc), attribute)
        assert caught.value.reason == reason, attribute
    for attribute in ["predictions[", "a..b", "a[1", "$", "a b"]:
        with pytest.raises(InvalidAttribute):
            extract(side, attribute)


def test_other_encodings_and_sides() -> None:
    encoded = {"observedContentType": "text/csv; charset=utf-8", "mode": "OUTPUT", "encoding": "BASE64",
               "data": base64.b64encode(b"0,0.25").decode()}
    assert extract(encoded, "1") == "0.25"
    encoded_json = {"observedContentType": "application/json", "encoding": "BASE64",
                    "data": base64.b64encode(b'{"score": 0.4}').decode()}
    assert extract(encoded_json, "score") == 0.4
    lines = {"observedContentType": "application/jsonlines", "encoding": "JSON", "data": '{"a": 1}\n{"a": 2}\n'}
    with pytest.raises(AttributeExtractionError, match="2 lines") as caught:
        extract(lines, "a")
    assert caught.value.reason == "batched"
    assert extract({"observedContentType": "application/jsonlines", "encoding": "JSON", "data": '{"a": 1}\n'},
                   "a") == 1
    for side, reason in [(None, "missing"), ({"encoding": "CSV"}, "missing"),
                         ({"data": "x", "encoding": "UTF-16"}, "unknown_encoding"),
                         ({"data": "AAAA", "encoding": "BASE64", "observedContentType": "application/x-npy"},
                          "undecodable"),
                         ({"data": "{", "encoding": "JSON"}, "undecodable")]:
        with pytest.raises(AttributeExtractionError) as caught:
            extract(side, None)
        assert caught.value.reason == reason
    # ground truth: CSV by default, JSON when it says so
    assert extract_ground_truth({"data": "1", "encoding": "CSV"}) == "1"
    assert extract_ground_truth({"data": "1"}) == "1"
    assert extract_ground_truth({"data": '{"label": 1}', "encoding": "JSON"}, "label") == 1
    assert extract_ground_truth({"data": '{"label": "cat"}', "encoding": "JSON"}) == "cat"
    assert extract_ground_truth({"data": "1,dog", "encoding": "CSV"}, "1") == "dog"
    assert attributes.extractor("score") is attributes.extractor("score")  # parsed once
