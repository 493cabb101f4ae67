"""Unit tests for the default input_fn/output_fn codecs and Accept negotiation."""

from __future__ import annotations

import io

import numpy as np
import orjson
import pytest

from moorage.runtimes import codecs
from moorage.runtimes.codecs import PayloadError, UnsupportedContentType


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("text/csv", "text/csv"),
        ("Text/CSV; charset=utf-8", "text/csv"),
        ("application/json;charset=UTF-8", "application/json"),
        ("application/x-jsonlines", "application/jsonlines"),
        ("application/jsonl", "application/jsonlines"),
        ("application/x-npy", "application/x-npy"),
        ("image/png", "image/png"),
        (None, None),
        ("", None),
    ],
)
def test_normalize(raw: str | None, expected: str | None) -> None:
    assert codecs.normalize(raw) == expected


# ------------------------------------------------------------------------------------------------ CSV


def test_csv_single_row_is_two_dimensional() -> None:
    out = codecs.decode(b"1.0,2.0,3.0,4.0", "text/csv")
    assert out.shape == (1, 4)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, [[1.0, 2.0, 3.0, 4.0]])


def test_csv_multi_row_with_crlf_blank_lines_and_charset() -> None:
    out = codecs.decode(b"1,2,3\r\n4,5,6\n\n7,8,9\n", "text/csv; charset=utf-8")
    np.testing.assert_array_equal(out, [[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    assert out.dtype == np.float64


def test_csv_empty_cell_is_nan() -> None:
    out = codecs.decode(b"1,,3\n4,5,6\n", "text/csv")
    assert np.isnan(out[0, 1])
    assert out[1].tolist() == [4.0, 5.0, 6.0]


def test_csv_text_keeps_quoted_commas() -> None:
    out = codecs.decode(b'"hello, world",3\nplain,4\n"say ""hi""",5\n', "text/csv")
    assert out.dtype == object
    assert out.shape == (3, 2)
    assert out.tolist() == [["hello, world", "3"], ["plain", "4"], ['say "hi"', "5"]]
    assert all(type(cell) is str for cell in out.ravel())


def test_csv_single_text_row() -> None:
    out = codecs.decode(b"red,1.5", "text/csv")
    assert out.shape == (1, 2)
    assert out.tolist() == [["red", "1.5"]]


@pytest.mark.parametrize("body", [b"", b"  \n\n", b"\n"])
def test_csv_empty_body(body: bytes) -> None:
    with pytest.raises(PayloadError, match="empty"):
        codecs.decode(body, "text/csv")


@pytest.mark.parametrize("body", [b"1,2,3\n4,5,6\n7,8\n", b"a,b,c\nd,e,f\ng,h\n", b'"x",1,2\n"y",3,4\n"z",5\n'])
def test_csv_ragged_rows_name_the_line(body: bytes) -> None:
    with pytest.raises(PayloadError, match="line 3 has 2 columns but line 1 has 3") as info:
        codecs.decode(body, "text/csv")
    assert info.value.status == 400


def test_csv_invalid_utf8() -> None:
    with pytest.raises(PayloadError, match="UTF-8"):
        codecs.decode(b"\xff\xfe,1", "text/csv")


def test_csv_large_numeric_body() -> None:
    rng = np.random.default_rng(0)
    data = rng.random((2000, 20))
    body, _ = codecs.encode(data, "text/csv")
    np.testing.assert_array_equal(codecs.decode(body, "text/csv"), data)


@pytest.mark.parametrize("odd_line", [b"1,,3", b"nan,inf,-inf", b"red,2,3", b"NA,2,3"])
def test_csv_large_body_with_odd_cells_reads_as_a_small_one(odd_line: bytes) -> None:
    # Large bodies take the bulk parser; a cell it will not take must give the careful path's result.
    filler = b"\n".join([b"1.5,2.5,3.5"] * 30_000)
    small = codecs.decode(odd_line + b"\n1.5,2.5,3.5\n", "text/csv")
    large = codecs.decode(odd_line + b"\n" + filler + b"\n", "text/csv")
    assert large.shape == (30_001, 3) and large.dtype == small.dtype
    np.testing.assert_array_equal(large[:2], small)


def test_csv_large_ragged_body_names_the_line() -> None:
    body = b"\n".join([b"1,2,3"] * 30_000) + b"\n4,5\n"
    with pytest.raises(PayloadError, match="line 30001 has 2 columns but line 1 has 3"):
        codecs.decode(body, "text/csv")


def test_csv_accepts_str_body() -> None:
    # The toolkit hands user input_fn a str for CSV; calling our decoder from there must still work.
    np.testing.assert_array_equal(codecs.decode("1,2\n3,4", "text/csv"), [[1, 2], [3, 4]])


# ----------------------------------------------------------------------------------------------- JSON


def test_json_list_of_rows() -> None:
    out = codecs.decode(b"[[1, 2.5], [3, 4]]", "application/json")
    np.testing.assert_array_equal(out, [[1, 2.5], [3, 4]])


def test_json_list_of_strings() -> None:
    out = codecs.decode(b'["good movie", "bad film"]', "application/json")
    assert out.tolist() == ["good movie", "bad film"]


@pytest.mark.parametrize("key", ["instances", "inputs"])
def test_json_instances_and_inputs(key: str) -> None:
    out = codecs.decode(orjson.dumps({key: [[1, 2], [3, 4]]}), "application/json")
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


def test_json_other_dict_passes_through() -> None:
    assert codecs.decode(b'{"text": "hi", "k": 3}', "application/json") == {"text": "hi", "k": 3}


def test_json_records_stay_a_list() -> None:
    assert codecs.decode(b'[{"a": 1}, {"a": 2}]', "application/json") == [{"a": 1}, {"a": 2}]


def test_json_null_is_nan() -> None:
    out = codecs.decode(b"[[1, null], [2, 3]]", "application/json")
    assert out.dtype == np.float64
    assert np.isnan(out[0, 1])


def test_json_scalar_passes_through() -> None:
    assert codecs.decode(b"42", "application/json") == 42


def test_json_malformed() -> None:
    with pytest.raises(PayloadError, match=r"JSON body does not parse.*line 1"):
        codecs.decode(b"[1, 2,", "application/json")


def test_json_ragged() -> None:
    with pytest.raises(PayloadError, match="different lengths"):
        codecs.decode(b"[[1, 2], [3]]", "application/json")


def test_json_empty_list() -> None:
    with pytest.raises(PayloadError, match="empty list"):
        codecs.decode(b"[]", "application/json")


# ----------------------------------------------------------------------------------------- JSON Lines


@pytest.mark.parametrize("content_type", ["application/jsonlines", "application/x-jsonlines", "application/jsonl"])
def test_jsonlines(content_type: str) -> None:
    out = codecs.decode(b"[1, 2]\n\n[3, 4]\n", content_type)
    np.testing.assert_array_equal(out, [[1, 2], [3, 4]])


def test_jsonlines_bad_line_named() -> None:
    with pytest.raises(PayloadError, match="line 3"):
        codecs.decode(b"[1, 2]\n[3, 4]\n[5, oops]\n", "application/jsonlines")


def test_jsonlines_empty() -> None:
    with pytest.raises(PayloadError, match="empty"):
        codecs.decode(b"\n\n", "application/jsonlines")


# ------------------------------------------------------------------------------------------------ NPY


@pytest.mark.parametrize(
    "array",
    [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([1, 2, 3]), np.array(["a", "bc"])],
)
def test_npy_round_trip(array: np.ndarray) -> None:
    body, content_type = codecs.encode(array, "application/x-npy")
    assert content_type == "application/x-npy"
    out = codecs.decode(body, content_type)
    assert out.dtype == array.dtype
    np.testing.assert_array_equal(out, array)


def test_npy_garbage() -> None:
    with pytest.raises(PayloadError, match="NPY body does not parse"):
        codecs.decode(b"not an npy file", "application/x-npy")


def test_npy_refuses_pickled_objects() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(PayloadError):
        codecs.decode(buffer.getvalue(), "application/x-npy")


def test_npz_refused() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, a=np.arange(3))
    with pytest.raises(PayloadError, match="npz"):
        codecs.decode(buffer.getvalue(), "application/x-npy")


# ------------------------------------------------------------------------------------------- encoding


def test_encode_json_arrays_and_scalars() -> None:
    assert codecs.encode(np.array([1, 0, 2]), "application/json") == (b"[1,0,2]", "application/json")
    assert orjson.loads(codecs.encode(np.array([[0.5, 0.5]]), "application/json")[0]) == [[0.5, 0.5]]
    assert codecs.encode(np.float32(1.5), "application/json")[0] == b"1.5"
    assert codecs.encode(np.array(["cat", "dog"]), "application/json")[0] == b'["cat","dog"]'
    assert codecs.encode(np.arange(6).reshape(3, 2)[:, 0], "application/json")[0] == b"[0,2,4]"
    body, _ = codecs.encode({"labels": np.array(["a"]), "score": np.float64(0.25)}, "application/json")
    assert orjson.loads(body) == {"labels": ["a"], "score": 0.25}


def test_encode_csv() -> None:
    assert codecs.encode(np.array([1, 0, 2]), "text/csv") == (b"1\n0\n2\n", "text/csv")
    assert codecs.encode(np.array([[0.25, 0.75], [1.0, 0.0]]), "text/csv")[0] == b"0.25,0.75\n1.0,0.0\n"
    text = np.array([["a,b", 'say "hi"'], ["plain", "x"]], dtype=object)
    body, _ = codecs.encode(text, "text/csv")
    assert body == b'"a,b","say ""hi"""\nplain,x\n'
    np.testing.assert_array_equal(codecs.decode(body, "text/csv"), text)
    assert codecs.encode(np.int64(3), "text/csv")[0] == b"3\n"
    assert codecs.encode(["yes", "no, never"], "text/csv")[0] == b'yes\n"no, never"\n'


def test_encode_csv_refuses_dict() -> None:
    with pytest.raises(TypeError, match="application/json"):
        codecs.encode({"a": 1}, "text/csv")


def test_encode_jsonlines() -> None:
    body, content_type = codecs.encode(np.array([[1, 2], [3, 4]]), "application/x-jsonlines")
    assert (body, content_type) == (b"[1,2]\n[3,4]\n", "application/jsonlines")
    assert codecs.encode(np.array(["a", "b"]), "application/jsonlines")[0] == b'"a"\n"b"\n'
    assert codecs.encode({"a": 1}, "application/jsonlines")[0] == b'{"a":1}\n'
    np.testing.assert_array_equal(codecs.decode(body, content_type), [[1, 2], [3, 4]])


# --------------------------------------------------------------------------------------- unsupported


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(UnsupportedContentType) as info:
        codecs.decode(b"x", "image/png")
    assert info.value.status == 415
    assert info.value.content_type == "image/png"
    assert str(info.value) == (
        "Content type 'image/png' is not supported; supported: "
        "text/csv, application/json, application/jsonlines, application/x-npy"
    )


def test_unsupported_accept_is_406() -> None:
    with pytest.raises(UnsupportedContentType, match="Accept 'image/png' is not supported") as info:
        codecs.encode([1], "image/png")
    assert info.value.status == 406


# ------------------------------------------------------------------------------------------- accept


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("text/csv", "text/csv"),
        ("application/json, text/csv;q=0.5", "application/json"),
        ("application/json;q=0.4, text/csv;q=0.5", "text/csv"),
        ("text/html, application/x-jsonlines;q=0.9", "application/jsonlines"),
        ("text/html, */*;q=0.1", "application/json"),
        ("text/*", "text/csv"),
        ("TEXT/CSV; charset=utf-8", "text/csv"),
        ("text/csv;q=0, application/x-npy", "application/x-npy"),
    ],
)
def test_choose_accept(accept: str | None, expected: str) -> None:
    assert codecs.choose_accept(accept, "application/json") == expected


def test_choose_accept_star_uses_given_default() -> None:
    assert codecs.choose_accept("*/*", "text/csv") == "text/csv"
    assert codecs.choose_accept("application/*", "text/csv") == "application/json"


@pytest.mark.parametrize("accept", ["image/png", "text/html, image/*", "text/csv;q=0"])
def test_choose_accept_nothing_supported_is_406(accept: str) -> None:
    with pytest.raises(UnsupportedContentType) as info:
        codecs.choose_accept(accept, "application/json")
    assert info.value.status == 406


def test_default_accept() -> None:
    assert codecs.default_accept({}) == "application/json"
    assert codecs.default_accept({"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}) == "text/csv"
