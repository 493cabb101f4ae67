"""Unit tests of the batch plane's pieces: JSONPath filters and joins, splitting, assembly, inputs, spec."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import orjson
import pytest

from moorage.batch.assemble import OutputFile, output_url
from moorage.batch.filters import DataProcessor, RecordError
from moorage.batch.inputs import InputError, InputObject, list_inputs, open_input
from moorage.batch.jsonpath import JsonPathError, apply_jsonpath, parse_jsonpath
from moorage.batch.records import RECORDIO_MAGIC, SplitError, mini_batches
from moorage.batch.spec import SpecError, TransformSpec


def spec(**kw: object) -> TransformSpec:
    base: dict[str, object] = {"job_name": "j", "data_type": "S3Prefix", "input_uri": "/in", "output_path": "/out",
                               "content_type": "text/csv", "split_type": "Line", "batch_strategy": "MultiRecord",
                               "max_payload_mb": 1, "max_concurrent": 1}
    base.update(kw)
    return TransformSpec(**base)  # type: ignore[arg-type]


def jp(expression: str, value: object) -> object:
    return apply_jsonpath(parse_jsonpath(expression), value)


# -- JSONPath -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("expression", "value", "expected"), [
    ("$", [1, 2], [1, 2]),
    ("$[1:]", ["id", "1.5", "2.5"], ["1.5", "2.5"]),
    ("$[0,-1]", ["id", "a", "b", "p"], ["id", "p"]),
    ("$[0,2:]", [0, 1, 2, 3], [0, 2, 3]),
    ("$[:2]", [0, 1, 2], [0, 1]),
    ("$[1:3]", [0, 1, 2, 3], [1, 2]),
    ("$[-1]", [0, 1, 2], 2),
    ("$.features", {"id": 1, "features": [1, 2]}, [1, 2]),
    ("$.features[1:]", {"features": [1, 2, 3]}, [2, 3]),
    ("$['id','SageMakerOutput']", {"id": 7, "x": 1, "SageMakerOutput": 0.5}, {"id": 7, "SageMakerOutput": 0.5}),
    ('$["id"]', {"id": 7}, 7),
    ("$.a.['b','c']", {"a": {"b": 1, "c": 2, "d": 3}}, {"b": 1, "c": 2}),
    ("$.*", {"a": 1, "b": 2}, [1, 2]),
    ("$.SageMakerOutput.label", {"SageMakerOutput": {"label": "x"}}, "x"),
])
def test_jsonpath_projections(expression: str, value: object, expected: object) -> None:
    assert jp(expression, value) == expected


@pytest.mark.parametrize("expression", ["features", "$..a", "$[", "$[1,'a']", "$.", "$[a]"])
def test_jsonpath_rejects_unsupported_syntax(expression: str) -> None:
    with pytest.raises(JsonPathError):
        parse_jsonpath(expression)


@pytest.mark.parametrize(("expression", "value", "message"), [
    ("$[5]", [1, 2], "outside"),
    ("$.missing", {"a": 1}, "no field 'missing'"),
    ("$[0]", {"a": 1}, "needs an array"),
    ("$.a", [1], "needs an object"),
])
def test_jsonpath_errors_on_records_say_why(expression: str, value: object, message: str) -> None:
    with pytest.raises(RecordError, match=message):
        jp(expression, value)


# -- DataProcessing -------------------------------------------------------------------------------
def test_csv_input_filter_join_and_output_filter_as_sagemaker_documents() -> None:
    proc = DataProcessor(spec(input_filter="$[1:]", join_source="Input", output_filter="$[0,-1]",
                              accept="text/csv"))
    records = [b"id1,1.5,2.5", b'"id,2",3.0,4.0']
    assert [proc.filter_input(r) for r in records] == [b"1.5,2.5", b"3.0,4.0"]
    assert proc.finish(records, b"0\n1\n", "text/csv") == b'id1,0\n"id,2",1\n'


def test_csv_join_keeps_every_input_cell_and_appends_all_output_cells() -> None:
    proc = DataProcessor(spec(join_source="Input", accept="text/csv"))
    assert proc.finish([b"a,1"], b"0.2,0.8\n", "text/csv") == b"a,1,0.2,0.8\n"
    json_out = DataProcessor(spec(join_source="Input", accept="application/json"))
    assert json_out.finish([b"a,1", b"b,2"], b"[0.5, 1]", "application/json") == b"a,1,0.5\nb,2,1\n"


def test_json_join_adds_sagemaker_output_or_wraps_non_objects() -> None:
    proc = DataProcessor(spec(content_type="application/jsonlines", input_filter="$.features", join_source="Input",
                              output_filter="$['id','SageMakerOutput']", accept="application/jsonlines"))
    record = b'{"id": 3, "features": [1, 2]}'
    assert proc.filter_input(record) == b"[1,2]"
    assert orjson.loads(proc.finish([record], b"1\n", "application/jsonlines")) == {"id": 3, "SageMakerOutput": 1}
    wrap = DataProcessor(spec(content_type="application/json", join_source="Input", accept="text/csv"))
    assert orjson.loads(wrap.finish([b"[1, 2]"], b"0.75\n", "text/csv")) == {"SageMakerInput": [1, 2],
                                                                            "SageMakerOutput": 0.75}


def test_join_refuses_an_output_count_that_does_not_match_the_records() -> None:
    proc = DataProcessor(spec(join_source="Input", accept="text/csv"))
    with pytest.raises(RecordError, match="2 line"):
        proc.finish([b"a", b"b", b"c"], b"0\n1\n", "text/csv")


# -- splitting ------------------------------------------------------------------------------------
def _lines(n: int, width: int = 40) -> bytes:
    return b"".join(b"%05d," % i + b"x" * (width - 7) + b"\n" for i in range(n))


def _batches(data: bytes, **kw: object) -> list:
    import io

    return list(mini_batches(io.BytesIO(data), spec(**kw)))


def test_multirecord_fast_path_cuts_exactly_where_record_grouping_would() -> None:
    data = _lines(3000, width=700)  # ~2 MB: several 1 MB mini-batches
    fast = _batches(data)
    grouped = _batches(data, input_filter="$[0:]")  # same records, through the record-by-record path
    assert len(fast) > 1
    assert [b.payload for b in fast] == [b.payload for b in grouped]
    assert [b.first_record for b in fast] == [b.first_record for b in grouped]
    assert sum(b.count for b in fast) == 3000
    assert all(len(b.payload) <= 1024 * 1024 for b in fast)


def test_single_record_none_split_blank_lines_and_crlf() -> None:
    singles = _batches(b"a,1\r\n\r\nb,2\n\nc,3", batch_strategy="SingleRecord")
    assert [b.payload for b in singles] == [b"a,1\n", b"b,2\n", b"c,3\n"]
    assert [b.first_record for b in singles] == [1, 2, 3]
    whole = _batches(b"line1\nline2\n", split_type="None")
    assert [b.payload for b in whole] == [b"line1\nline2\n"]
    assert _batches(b"") == []


def test_a_record_over_max_payload_fails_with_its_number() -> None:
    data = b"short\n" + b"y" * (1024 * 1024 + 10) + b"\n"
    with pytest.raises(SplitError, match="record 2"):
        _batches(data, batch_strategy="SingleRecord")
    with pytest.raises(SplitError, match="record 2"):
        _batches(data)


def test_recordio_and_tfrecord_frames_are_records() -> None:
    def recordio(payload: bytes, flag: int = 0) -> bytes:
        return struct.pack("<II", RECORDIO_MAGIC, (flag << 29) | len(payload)) + payload + b"\0" * (-len(payload) % 4)

    def tfrecord(payload: bytes) -> bytes:
        return struct.pack("<Q", len(payload)) + b"\0" * 4 + payload + b"\0" * 4

    frames = [recordio(b"abc"), recordio(b"part1", 1) + recordio(b"part2", 3), recordio(b"x" * 8)]
    batches = _batches(b"".join(frames), split_type="RecordIO", batch_strategy="SingleRecord")
    assert [b.payload for b in batches] == frames
    tf = [tfrecord(b"one"), tfrecord(b"second")]
    assert [b.payload for b in _batches(b"".join(tf), split_type="TFRecord", batch_strategy="SingleRecord")] == tf
    with pytest.raises(SplitError, match="magic"):
        _batches(b"\0" * 8, split_type="RecordIO")


# -- inputs ---------------------------------------------------------------------------------------
def test_prefix_listing_names_outputs_relative_to_the_prefix(tmp_path: Path) -> None:
    (tmp_path / "in" / "sub").mkdir(parents=True)
    for name in ("a.csv", "sub/b.csv", "part-1.csv", ".hidden"):
        (tmp_path / "in" / name).write_text("1\n")
    names = [o.name for o in list_inputs(spec(input_uri=str(tmp_path / "in")))]
    assert names == ["a.csv", "part-1.csv", "sub/b.csv"]
    assert [o.name for o in list_inputs(spec(input_uri=(tmp_path / "in").as_uri() + "/part-"))] == ["part-1.csv"]
    with pytest.raises(InputError, match="No input objects found"):
        list_inputs(spec(input_uri=str(tmp_path / "missing")))


def test_manifest_lists_objects_under_its_prefix(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("1\n")
    manifest = tmp_path / "m.json"
    manifest.write_bytes(orjson.dumps([{"prefix": (tmp_path / "d").as_uri() + "/"}, "x.csv"]))
    objects = list_inputs(spec(data_type="ManifestFile", input_uri=str(manifest)))
    assert [(o.name, o.size) for o in objects] == [("x.csv", 2)]
    manifest.write_bytes(orjson.dumps([{"prefix": str(tmp_path / "d")}, "nope.csv"]))
    with pytest.raises(InputError, match=r"nope\.csv"):
        list_inputs(spec(data_type="ManifestFile", input_uri=str(manifest)))


def test_gzip_objects_are_decompressed_and_counted_in_stored_bytes(tmp_path: Path) -> None:
    path = tmp_path / "a.csv.gz"
    path.write_bytes(gzip.compress(b"1,2\n3,4\n"))
    stream, counter = open_input(InputObject(str(path), "a.csv.gz", path.stat().st_size), "Gzip")
    assert stream.read() == b"1,2\n3,4\n"
    assert counter.count == path.stat().st_size
    stream.close()


# -- assembly -------------------------------------------------------------------------------------
def test_output_is_written_in_order_under_a_temporary_name_then_renamed(tmp_path: Path) -> None:
    url = output_url(str(tmp_path / "out"), "sub/a.csv")
    out = OutputFile(url, tmp_path / "spool", assemble_with="Line")
    out.add(1, b"second")
    out.add(2, b"third\n")
    assert not Path(url).exists()
    out.add(0, b"first")
    out.total = 3
    assert out.complete
    assert next(p.name for p in Path(url).parent.iterdir()).startswith(".a.csv.out.")
    out.finish()
    assert Path(url).read_bytes() == b"first\nsecond\nthird\n"
    assert [p.name for p in Path(url).parent.iterdir()] == ["a.csv.out"]


def test_a_discarded_output_leaves_nothing(tmp_path: Path) -> None:
    out = OutputFile(output_url(str(tmp_path), "a.csv"), tmp_path / "spool")
    out.add(0, b"partial")
    out.discard()
    assert [p for p in tmp_path.iterdir() if p.is_file()] == []


# -- spec -----------------------------------------------------------------------------------------
def _request(**kw: object) -> dict:
    req: dict = {"TransformJobName": "j", "ModelName": "m",
                 "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "/in"}},
                                    "ContentType": "text/csv", "SplitType": "Line"},
                 "TransformOutput": {"S3OutputPath": "/out", "KmsKeyId": "arn:aws:kms:us-east-1:1:key/x"},
                 "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 2}}
    req.update(kw)
    return req


def test_spec_from_request_and_container_defaults() -> None:
    s = TransformSpec.from_request(_request(Environment={"A": "1"}, ModelClientConfig={"InvocationsMaxRetries": 0}))
    assert (s.instance_count, s.max_retries, s.batch_strategy, s.max_payload_mb) == (2, 0, None, None)
    filled = s.with_defaults({"BatchStrategy": "MULTI_RECORD", "MaxPayloadInMB": 6, "MaxConcurrentTransforms": 3})
    assert (filled.batch_strategy, filled.max_payload_mb, filled.max_concurrent) == ("MultiRecord", 6, 3)
    assert filled.batch_environment() == {"SAGEMAKER_BATCH": "true", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "6",
                                          "SAGEMAKER_BATCH_STRATEGY": "MULTI_RECORD",
                                          "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS": "3", "A": "1"}
    assert TransformSpec.from_dict(filled.to_dict()) == filled


@pytest.mark.parametrize(("changes", "message"), [
    ({"DataProcessing": {"InputFilter": "$[1:"}}, "InputFilter"),
    ({"MaxPayloadInMB": 101}, "at most 100"),
    ({"DataProcessing": {"JoinSource": "Input"},
      "TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "/in"}},
                         "ContentType": "application/x-npy"}}, "CSV and JSON"),
    ({"TransformInput": {"DataSource": {"S3DataSource": {"S3DataType": "AugmentedManifestFile", "S3Uri": "/in"}}}},
     "S3DataType"),
])
def test_spec_rejects_what_the_batch_plane_cannot_run(changes: dict, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        TransformSpec.from_request(_request(**changes))
