"""DataProcessing: InputFilter, JoinSource and OutputFilter, as SageMaker's batch transform applies them.

SageMaker's filters are JSONPath expressions (its subset, :mod:`.jsonpath`) over one record: a CSV
line is a JSON array of its cells, a JSON (Lines) record is the JSON value itself.

Joining (JoinSource=Input) pairs every input record, before its InputFilter, with the model's
output for it: for CSV the output cells are appended to the input cells; for JSON an object input
gets a ``SageMakerOutput`` key, and any other input becomes
``{"SageMakerInput": input, "SageMakerOutput": output}``. The OutputFilter then selects from the
joined record (or from the output alone without a join).
"""

from __future__ import annotations

import csv
import io
from typing import Any

import orjson

from moorage.batch.jsonpath import RecordError, apply_jsonpath, parse_jsonpath
from moorage.batch.spec import TransformSpec, media_type

SAGEMAKER_OUTPUT = "SageMakerOutput"
SAGEMAKER_INPUT = "SageMakerInput"


# -- records --------------------------------------------------------------------------------------
def _csv_cells(line: bytes) -> list[str]:
    text = line.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) != 1:
        raise RecordError(f"a CSV record must be one row, found {len(rows)}")
    return rows[0]


def _csv_line(cells: list[Any]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(_cell_text(c) for c in cells)
    return buffer.getvalue().encode("utf-8")


def _cell_text(cell: Any) -> str:
    if isinstance(cell, str):
        return cell
    return orjson.dumps(cell).decode()


def _json_value(data: bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise RecordError(f"not valid JSON: {exc}") from None


def _scalar(text: str) -> Any:
    """A CSV output cell as a JSON value: numbers stay numbers."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


class DataProcessor:
    """Applies one job's DataProcessing to its mini-batches: ``prepare`` before, ``finish`` after the model."""

    def __init__(self, spec: TransformSpec):
        self.spec = spec
        self.csv = spec.record_format == "csv"
        self.input_steps = parse_jsonpath(spec.input_filter)
        self.output_steps = parse_jsonpath(spec.output_filter)
        self.join = spec.join_source == "Input"
        self.output_kind = media_type(spec.accept) or None

    def parse(self, record: bytes) -> Any:
        return _csv_cells(record) if self.csv else _json_value(record)

    def filter_input(self, record: bytes) -> bytes:
        """One record as the model should see it."""
        if not self.input_steps:
            return record
        selected = apply_jsonpath(self.input_steps, self.parse(record))
        if self.csv:
            return _csv_line(selected if isinstance(selected, list) else [selected])
        return orjson.dumps(selected)

    def split_output(self, body: bytes, content_type: str, count: int) -> tuple[list[Any], bool]:
        """The model's answer to ``count`` records, one value per record in order, and whether it was CSV
        (a CSV output is a list of cells per record)."""
        kind = self.output_kind or media_type(content_type)
        if kind == "application/json":
            value = _json_value(body)
            if isinstance(value, list) and len(value) == count:
                return value, False
            if count == 1:
                return [value], False
            raise RecordError(f"the model answered a JSON document that is not an array of {count} outputs")
        lines = [line for line in body.splitlines() if line.strip()]
        if len(lines) != count:
            raise RecordError(f"the model answered {len(lines)} line(s) for {count} record(s); joining and "
                              "output filters need one output line per input record")
        if kind == "text/csv":
            return [_csv_cells(line) for line in lines], True
        return [_json_value(line) for line in lines], False

    def join_record(self, record: bytes, output: Any, csv_output: bool) -> Any:
        if self.csv:
            cells = output if csv_output else (output if isinstance(output, list) else [output])
            return [*_csv_cells(record), *cells] if self.join else cells
        if csv_output:
            values = [_scalar(cell) for cell in output]
            output = values[0] if len(values) == 1 else values
        if not self.join:
            return output
        source = _json_value(record)
        if isinstance(source, dict):
            return {**source, SAGEMAKER_OUTPUT: output}
        return {SAGEMAKER_INPUT: source, SAGEMAKER_OUTPUT: output}

    def render(self, value: Any) -> bytes:
        selected = apply_jsonpath(self.output_steps, value)
        if self.csv:
            return _csv_line(selected if isinstance(selected, list) else [selected])
        return orjson.dumps(selected)

    def finish(self, records: list[bytes], body: bytes, content_type: str) -> bytes:
        """The output lines of a mini-batch: each record joined (if asked) and output-filtered."""
        outputs, csv_output = self.split_output(body, content_type, len(records))
        lines = [self.render(self.join_record(r, o, csv_output)) for r, o in zip(records, outputs, strict=True)]
        return b"\n".join(lines) + b"\n"
