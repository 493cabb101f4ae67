"""Reading a dataset as a stream of Arrow record batches: CSV (with or without a header), JSON Lines, Parquet.

Nothing here holds the whole dataset: each reader yields batches of a bounded size, and a
:class:`Dataset` can be iterated again (the profiler uses a second pass only in the rare case a
column turns out to hold text after batches of plain numbers).

CSV columns are read as text, because Deequ (and so SageMaker) infers a CSV column's type from
its values (:mod:`moorage.monitor.common.type_inference`); a column without a header is named ``_c0``,
``_c1``..., as Spark names them and SageMaker's files show. An empty CSV field is missing.

Whether a CSV file's first line is a header is what a user states with SageMaker's
``DatasetFormat.csv(header=...)``; when nobody said, :func:`csv_has_header` decides it as a person
looking at the file would: a first line of numbers above lines of numbers is data (a header of
numbers only is rare, a headerless file of features is common: ``to_csv(header=False)``), anything
else is a header, SageMaker's default. Headerless files mixing text and numbers need the user's word.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

FORMATS = ("csv", "jsonl", "parquet")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".jsonlines": "jsonl", ".json": "jsonl",
             ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
BLOCK_BYTES = 8 << 20
HEADER_SAMPLE_BYTES = 1 << 20  # the lines csv_has_header looks at: the first line and those after it in this much
# a number as a CSV cell may spell it (Deequ's Integral and Fractional, and .5, 5., surrounding blanks)
_NUMBER = r"^\s*[-+]? ?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"


class DatasetError(ValueError):
    """A dataset that cannot be found or read; the message says which and why."""


def guess_format(path: str | Path) -> str:
    name = str(path).lower()
    for suffix in (".gz", ".bz2"):
        name = name.removesuffix(suffix)
    fmt = _SUFFIXES.get(Path(name).suffix)
    if fmt is None:
        raise DatasetError(f"cannot tell the format of {path} from its name: give one of {', '.join(FORMATS)}")
    return fmt


@dataclass(frozen=True)
class Dataset:
    """A file (or a folder of files) to read in batches; iterating it again starts from the beginning."""

    path: Path
    format: str = "csv"
    header: bool = True
    block_bytes: int = BLOCK_BYTES

    @classmethod
    def open(cls, path: str | Path, format: str | None = None, header: bool | None = None) -> Dataset:
        """``header`` None: a CSV dataset's first file decides (:func:`csv_has_header`), for all its files."""
        path = Path(str(path).removeprefix("file://")).expanduser()
        if not path.exists():
            raise DatasetError(f"dataset {path} does not exist")
        files = _files(path)
        fmt = format or guess_format(next(iter(files), path))
        if fmt == "json":
            fmt = "jsonl"
        if fmt not in FORMATS:
            raise DatasetError(f"unknown dataset format {fmt!r}: use one of {', '.join(FORMATS)}")
        if header is None:
            header = fmt != "csv" or not files or csv_has_header(files[0])
        return cls(path, fmt, header)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        reader = {"csv": self._csv, "jsonl": self._jsonl, "parquet": self._parquet}[self.format]
        files = _files(self.path)
        if not files:
            raise DatasetError(f"no data files in {self.path}")
        for file in files:
            yield from reader(file)

    def _csv(self, file: Path) -> Iterator[pa.RecordBatch]:
        from pyarrow import csv

        read = csv.ReadOptions(block_size=self.block_bytes, autogenerate_column_names=not self.header)
        parse = _csv_parse_options(file)
        try:
            probe = csv.open_csv(file, read_options=read, parse_options=parse)
        except pa.ArrowInvalid as exc:
            if "Empty CSV file" in str(exc):
                return
            raise DatasetError(f"cannot read {file} as CSV: {exc}") from exc
        names = probe.schema.names
        probe.close()
        if not self.header:
            names = [f"_c{i}" for i in range(len(names))]
            read = csv.ReadOptions(block_size=self.block_bytes, column_names=names)
        convert = csv.ConvertOptions(column_types={name: pa.string() for name in names}, null_values=[""],
                                     strings_can_be_null=True, quoted_strings_can_be_null=False)
        try:
            yield from csv.open_csv(file, read_options=read, parse_options=parse, convert_options=convert)
        except pa.ArrowInvalid as exc:
            raise DatasetError(f"cannot read {file} as CSV: {exc}") from exc

    def _jsonl(self, file: Path) -> Iterator[pa.RecordBatch]:
        from pyarrow import json

        done = 0
        try:
            for batch in json.open_json(file, read_options=json.ReadOptions(block_size=self.block_bytes)):
                done += batch.num_rows
                yield batch
            return
        except pa.ArrowInvalid:
            # a field holding numbers in one record and text in another: Arrow's reader wants one
            # type per field; go on from where it stopped, reading records as Python objects
            pass
        yield from _jsonl_mixed(file, self.block_bytes, skip=done)

    def _parquet(self, file: Path) -> Iterator[pa.RecordBatch]:
        from pyarrow import parquet

        try:
            yield from parquet.ParquetFile(file).iter_batches(batch_size=65536)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"cannot read {file} as Parquet: {exc}") from exc


def csv_has_header(file: Path) -> bool:
    """Whether the first line of a CSV file names its columns: False when it holds only numbers (and empty
    fields) and the lines after it too, True otherwise, or when the file cannot tell (empty, unreadable:
    reading it reports that)."""
    from pyarrow import csv

    parse = _csv_parse_options(file)
    read = csv.ReadOptions(block_size=HEADER_SAMPLE_BYTES, autogenerate_column_names=True)
    try:
        probe = csv.open_csv(file, read_options=read, parse_options=parse)
        names = probe.schema.names
        probe.close()
        convert = csv.ConvertOptions(column_types={name: pa.string() for name in names}, null_values=[""],
                                     strings_can_be_null=True, quoted_strings_can_be_null=False)
        with csv.open_csv(file, read_options=read, parse_options=parse, convert_options=convert) as reader:
            lines = reader.read_next_batch()
    except (pa.ArrowInvalid, StopIteration, OSError):
        return True
    if lines.num_rows == 0:
        return True
    numeric = [pc.match_substring_regex(column, _NUMBER).fill_null(True) for column in lines.columns]
    first_is_numbers = all(column[0].as_py() for column in numeric) and any(
        column[0].is_valid for column in lines.columns)
    rest_is_numbers = all(pc.all(column.slice(1)).as_py() is not False for column in numeric)
    return not (first_is_numbers and rest_is_numbers)


def _csv_parse_options(file: Path) -> Any:
    from pyarrow import csv

    return csv.ParseOptions(delimiter="\t" if file.suffix.lower() == ".tsv" else ",", newlines_in_values=True)


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    return [path]


def _jsonl_mixed(file: Path, block_bytes: int, skip: int = 0) -> Iterator[pa.RecordBatch]:
    import orjson

    records: list[dict[str, Any]] = []
    size = 0
    with open(file, "rb") as handle:
        for line in handle:
            if not line.strip():
                continue
            if skip:
                skip -= 1
                continue
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise DatasetError(f"{file}: a line is not JSON: {exc}") from exc
            if not isinstance(record, dict):
                raise DatasetError(f"{file}: each line must hold a JSON object, found {type(record).__name__}")
            records.append(record)
            size += len(line)
            if size >= block_bytes:
                yield records_to_batch(records)
                records, size = [], 0
    if records:
        yield records_to_batch(records)


def records_to_batch(records: list[dict[str, Any]]) -> pa.RecordBatch:
    """Records (dicts) as one batch; a field whose values mix kinds is kept as text (``str`` of each)."""
    names: dict[str, None] = {}
    for record in records:
        names.update(dict.fromkeys(record))
    arrays = []
    for name in names:
        values = [record.get(name) for record in records]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            arrays.append(pa.array([None if v is None else _text(v) for v in values], pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        import orjson

        return orjson.dumps(value).decode()
    return str(value)


def as_record_batches(batch: Any) -> list[pa.RecordBatch]:
    """A pandas DataFrame, Arrow table or record batch as Arrow record batches."""
    if isinstance(batch, pa.RecordBatch):
        return [batch]
    if isinstance(batch, pa.Table):
        return batch.to_batches()
    if hasattr(batch, "columns") and hasattr(batch, "dtypes"):  # a pandas DataFrame
        frame = batch.copy(deep=False)
        frame.columns = [str(c) for c in frame.columns]
        try:
            return pa.Table.from_pandas(frame, preserve_index=False).to_batches()
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns = {}
            for name in frame.columns:
                try:
                    columns[name] = pa.array(frame[name], from_pandas=True)
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    columns[name] = pa.array([None if _missing(v) else _text(v) for v in frame[name]], pa.string())
            return pa.table(columns).to_batches()
    raise TypeError(f"cannot profile a {type(batch).__name__}: give pandas DataFrames or Arrow tables/batches")


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)
