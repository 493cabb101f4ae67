"""Deequ's data-type inference, as SageMaker's ``statistics.json`` reports it.

Deequ classifies every present value of a column into Fractional, Integral, Boolean or String by
regular expressions (a null is Unknown), then decides the column's type from the histogram:
all null -> Unknown; any String, or Booleans mixed with numbers -> String; only Booleans ->
Boolean; any Fractional -> Fractional; else Integral. SageMaker's files know only Integral,
Fractional, String and Unknown, so a Boolean column is reported as String.

Typed columns keep their type, as in Deequ over typed Spark columns: an integer column is
Integral, a floating-point column Fractional (NaN counts as missing: that is what pandas means by
it), a boolean column Boolean.

Speed: a text column is classified without running a regular expression per value where it can:
if pyarrow parses the whole column as integers it is all Integral; as floats, only the values
that look like integers need a pass; otherwise the regular expressions run over the column's
distinct values, weighted by their counts. pyarrow's number parser accepts a few spellings
Deequ's expressions do not (``.5``, ``5.``, ``+5``); those count as numbers here. ``nan`` and
``inf`` do not: they are Strings, as in Deequ.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FRACTIONAL_PATTERN = r"^(-|\+)? ?\d+((\.\d+)|((?:\.\d+)?[Ee][-+]?\d+))$"
INTEGRAL_PATTERN = r"^(-|\+)? ?\d+$"
BOOLEAN_PATTERN = r"^(true|false)$"


class InferredType(StrEnum):
    INTEGRAL = "Integral"
    FRACTIONAL = "Fractional"
    STRING = "String"
    UNKNOWN = "Unknown"


@dataclass
class TypeCounts:
    """Deequ's DataTypeHistogram: how many values of each kind a column held."""

    null: int = 0
    fractional: int = 0
    integral: int = 0
    boolean: int = 0
    string: int = 0

    @property
    def present(self) -> int:
        return self.fractional + self.integral + self.boolean + self.string

    @property
    def total(self) -> int:
        return self.null + self.present

    def add(self, other: TypeCounts) -> None:
        self.null += other.null
        self.fractional += other.fractional
        self.integral += other.integral
        self.boolean += other.boolean
        self.string += other.string

    def deequ_type(self) -> str:
        """Deequ's ``DataType.determineType``: Unknown, String, Boolean, Fractional or Integral."""
        if self.present == 0:
            return "Unknown"
        if self.string > 0 or (self.boolean > 0 and (self.integral > 0 or self.fractional > 0)):
            return "String"
        if self.boolean > 0:
            return "Boolean"
        if self.fractional > 0:
            return "Fractional"
        return "Integral"

    def inferred_type(self) -> InferredType:
        """The type as SageMaker writes it (Boolean is reported as String)."""
        kind = self.deequ_type()
        return InferredType.STRING if kind == "Boolean" else InferredType(kind)

    def conforming(self, expected: str) -> int:
        """Present values that fit a column of type ``expected`` (an Integral fits a Fractional one)."""
        if expected == InferredType.INTEGRAL:
            return self.integral
        if expected == InferredType.FRACTIONAL:
            return self.integral + self.fractional
        return self.present


@dataclass
class ClassifiedColumn:
    """One batch of one column after classification."""

    counts: TypeCounts
    # float64 values of the numeric (Integral/Fractional) entries, nulls and NaN dropped
    numbers: np.ndarray
    # the present values as text when the batch held any non-numeric text (or booleans), else None
    text: pa.Array | None = field(default=None)


_EMPTY = np.empty(0, dtype=np.float64)


def classify(column: pa.Array | pa.ChunkedArray) -> ClassifiedColumn:
    """Classify one batch of a column: type counts, its numbers, and its text when it has any."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_null(kind):
        return ClassifiedColumn(TypeCounts(null=len(column)), _EMPTY)
    if pa.types.is_integer(kind) or (pa.types.is_decimal(kind) and kind.scale == 0):
        numbers = _numbers(column)
        return ClassifiedColumn(TypeCounts(null=len(column) - len(numbers), integral=len(numbers)), numbers)
    if pa.types.is_floating(kind) or pa.types.is_decimal(kind):
        numbers = _numbers(column)
        return ClassifiedColumn(TypeCounts(null=len(column) - len(numbers), fractional=len(numbers)), numbers)
    if pa.types.is_boolean(kind):
        present = column.drop_null()
        return ClassifiedColumn(TypeCounts(null=column.null_count, boolean=len(present)), _EMPTY,
                                present.cast(pa.string()))
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        try:
            column = column.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            # lists, structs...: not a feature Deequ can type; every present value is a String
            return ClassifiedColumn(TypeCounts(null=column.null_count, string=len(column) - column.null_count),
                                    _EMPTY, None)
    return _classify_text(column)


def _numbers(column: pa.Array) -> np.ndarray:
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    # NaN is pandas' missing value; an infinity has no place in a sum or a sketch, so it counts as missing too
    return values[np.isfinite(values)] if len(values) else _EMPTY


def _classify_text(column: pa.Array) -> ClassifiedColumn:
    nulls = column.null_count
    present = column.drop_null() if nulls else column
    if len(present) == 0:
        return ClassifiedColumn(TypeCounts(null=nulls), _EMPTY)
    # A failed cast costs far more than a successful one, so a sample of the column picks the
    # route; a column whose sample looks numeric but whose rest is not just takes the slow route.
    sample = present.slice(0, 64)
    if pc.all(pc.match_substring_regex(sample, INTEGRAL_PATTERN)).as_py():
        try:
            numbers = present.cast(pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
            return ClassifiedColumn(TypeCounts(null=nulls, integral=len(numbers)), numbers)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    if pc.all(pc.or_(pc.match_substring_regex(sample, FRACTIONAL_PATTERN),
                     pc.match_substring_regex(sample, INTEGRAL_PATTERN))).as_py():
        try:
            numbers = present.cast(pa.float64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            numbers = None
        if numbers is not None and np.isfinite(numbers).all():
            # a finite number written without a point or an exponent is Integral
            fractional = pc.or_(pc.match_substring(present, "."),
                                pc.match_substring(present, "e", ignore_case=True))
            count = int(pc.sum(fractional).as_py() or 0)
            return ClassifiedColumn(TypeCounts(null=nulls, fractional=count, integral=len(numbers) - count), numbers)
    return _classify_mixed_text(present, nulls)


def _classify_mixed_text(present: pa.Array, nulls: int) -> ClassifiedColumn:
    """Text with non-numbers in it: run Deequ's expressions over the distinct values only."""
    value_counts = pc.value_counts(present)
    values = value_counts.field("values")
    weights = value_counts.field("counts").to_numpy(zero_copy_only=False)
    is_fractional = pc.match_substring_regex(values, FRACTIONAL_PATTERN).to_numpy(zero_copy_only=False)
    is_integral = pc.match_substring_regex(values, INTEGRAL_PATTERN).to_numpy(zero_copy_only=False)
    is_boolean = pc.match_substring_regex(values, BOOLEAN_PATTERN).to_numpy(zero_copy_only=False)
    is_string = ~(is_fractional | is_integral | is_boolean)
    counts = TypeCounts(null=nulls, fractional=int(weights[is_fractional].sum()),
                        integral=int(weights[is_integral].sum()), boolean=int(weights[is_boolean].sum()),
                        string=int(weights[is_string].sum()))
    numeric_mask = pc.or_(pc.match_substring_regex(present, FRACTIONAL_PATTERN),
                          pc.match_substring_regex(present, INTEGRAL_PATTERN)) if counts.string < len(present) \
        else None
    numbers = _EMPTY
    if numeric_mask is not None and (counts.fractional or counts.integral):
        numbers = _parse_numbers(present.filter(numeric_mask))
    return ClassifiedColumn(counts, numbers, present)


def _parse_numbers(text: pa.Array) -> np.ndarray:
    # Deequ allows one space after the sign ("- 5"); pyarrow's parser does not
    cleaned = pc.replace_substring_regex(text, r"^([-+]) ", r"\1")
    return cleaned.cast(pa.float64()).to_numpy(zero_copy_only=False)
