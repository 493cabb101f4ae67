"""Deequ's type inference, as statistics.json reports it."""

from __future__ import annotations

import pyarrow as pa
import pytest

from moorage.monitor import profile_batches
from moorage.monitor.common.type_inference import TypeCounts, classify


def _inferred(values: list, type_: pa.DataType | None = None) -> str:
    batch = pa.RecordBatch.from_arrays([pa.array(values, type_)], names=["x"])
    return profile_batches([batch]).to_statistics()["features"][0]["inferred_type"]


@pytest.mark.parametrize(("values", "expected"), [
    (["1", "2", "-3", "+4"], "Integral"),
    (["1", "2.5", None], "Fractional"),
    (["1.0", "2.0"], "Fractional"),  # written with a point: Fractional, as Deequ's expressions say
    (["1e5", "3"], "Fractional"),
    (["1", "abc"], "String"),
    (["true", "false", None], "String"),  # Deequ's Boolean; SageMaker's files have no such type
    (["true", "1"], "String"),  # booleans mixed with numbers
    (["nan", "1.5"], "String"),  # Deequ's expressions do not take nan as a number
    ([None, None], "Unknown"),
    (["- 5", "3"], "Integral"),  # Deequ allows one space after the sign
])
def test_text_columns(values: list, expected: str) -> None:
    assert _inferred(values, pa.string()) == expected


def test_typed_columns_keep_their_type() -> None:
    assert _inferred([1, 2, None], pa.int64()) == "Integral"
    assert _inferred([1.0, 2.0, float("nan")], pa.float64()) == "Fractional"
    assert _inferred([True, False], pa.bool_()) == "String"


def test_counts_and_numbers_of_a_mixed_column() -> None:
    classified = classify(pa.array(["1", "2.5", "x", None, "true", "7"]))
    assert classified.counts == TypeCounts(null=1, fractional=1, integral=2, boolean=1, string=1)
    assert sorted(classified.numbers.tolist()) == [1.0, 2.5, 7.0]
    assert classified.counts.inferred_type() == "String"


def test_a_column_that_turns_to_text_in_a_later_batch() -> None:
    first = pa.RecordBatch.from_arrays([pa.array(["1", "2"])], names=["x"])
    later = pa.RecordBatch.from_arrays([pa.array(["3", "n/a"])], names=["x"])
    feature = profile_batches([first, later]).to_statistics()["features"][0]
    assert feature["inferred_type"] == "String"
    assert feature["string_statistics"]["common"] == {"num_present": 4, "num_missing": 0}


def test_conforming_shares_used_by_the_data_type_check() -> None:
    counts = TypeCounts(null=3, fractional=2, integral=5, string=3)
    assert counts.conforming("Integral") == 5
    assert counts.conforming("Fractional") == 7
    assert counts.conforming("String") == 10
