"""Splitting an input object into records and records into mini-batches (one request each).

The same function cuts the mini-batches for every backend, so the local and the Ray backend send
the same requests and write the same outputs.

* ``SplitType`` None: the whole object is one record. Line: one record per line (blank lines are
  skipped, ``\\r\\n`` is a line end). RecordIO (MXNet's framing) and TFRecord: one record per frame,
  sent with its framing, as SageMaker sends them.
* ``BatchStrategy`` SingleRecord: one record per request. MultiRecord: as many whole records as fit
  in ``MaxPayloadInMB``; a single record bigger than that fails the job.

Line-split MultiRecord jobs without DataProcessing never look at single records: each mini-batch is
the next ``MaxPayloadInMB`` of bytes cut back to its last line end, so a million-row file costs a
few dozen Python operations rather than a million.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from moorage.batch.spec import TransformSpec

READ_SIZE = 1024 * 1024
RECORDIO_MAGIC = 0xCED7230A
UNLIMITED_CHUNK = 100 * 1024 * 1024  # a mini-batch's size when MaxPayloadInMB is 0 (no limit)


class SplitError(Exception):
    """The object cannot be cut as the job asks; the message names the record."""


@dataclass(slots=True)
class MiniBatch:
    seq: int  # its position in its object's output
    payload: bytes  # the request body (before any InputFilter)
    count: int  # records in it
    first_record: int  # 1-based number of its first record within the object
    raw_bytes: int = 0  # stored bytes consumed for it (progress)
    records: list[bytes] | None = None  # the single records, when the job filters or joins them

    @property
    def last_record(self) -> int:
        return self.first_record + max(self.count, 1) - 1

    def where(self) -> str:
        if self.count <= 1:
            return f"record {self.first_record}"
        return f"records {self.first_record}-{self.last_record}"


def mini_batches(stream: IO[bytes], spec: TransformSpec, counter: object | None = None) -> Iterator[MiniBatch]:
    """The object's mini-batches in order. ``counter`` (with a ``count`` attribute) measures stored bytes."""
    limit = spec.max_payload_bytes  # 0: no limit (MaxPayloadInMB 0)
    if spec.split_type == "None":
        yield from _whole(stream, limit, counter)
    elif spec.split_type == "Line" and spec.batch_strategy == "MultiRecord" and not spec.processes_records:
        yield from _line_chunks(stream, limit, counter)
    else:
        yield from _grouped(_records(stream, spec.split_type), spec, limit, counter)


def _consumed(counter: object | None, state: list[int]) -> int:
    if counter is None:
        return 0
    now = int(getattr(counter, "count", 0))
    delta = now - state[0]
    state[0] = now
    return delta


def _whole(stream: IO[bytes], limit: int, counter: object | None) -> Iterator[MiniBatch]:
    data = stream.read()
    if not data:
        return
    if limit and len(data) > limit:
        raise SplitError(f"record 1 is {len(data)} bytes, over MaxPayloadInMB ({limit // (1024 * 1024)} MB); "
                         "split the object (SplitType Line) or raise MaxPayloadInMB")
    yield MiniBatch(0, data, 1, 1, raw_bytes=_consumed(counter, [0]), records=[data])


def _line_chunks(stream: IO[bytes], limit: int, counter: object | None) -> Iterator[MiniBatch]:
    limit = limit or UNLIMITED_CHUNK
    seq = 0
    record = 1
    carry = b""
    state = [0]
    eof = False
    while not eof:
        want = limit - len(carry)
        chunk = stream.read(want) if want > 0 else b""
        eof = not chunk
        data = carry + chunk if carry else chunk
        if not data:
            break
        if eof:
            cut = len(data)
        else:
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) >= limit:
                    raise SplitError(f"record {record} is longer than MaxPayloadInMB "
                                     f"({limit // (1024 * 1024)} MB)")
                carry = data
                continue
        payload, carry = data[:cut], data[cut:]
        if not payload.strip():
            continue
        if not payload.endswith(b"\n"):
            payload += b"\n"
        count = payload.count(b"\n")
        yield MiniBatch(seq, payload, count, record, raw_bytes=_consumed(counter, state))
        seq += 1
        record += count


def _records(stream: IO[bytes], split_type: str) -> Iterator[bytes]:
    if split_type == "Line":
        return _lines(stream)
    if split_type == "RecordIO":
        return _recordio(stream)
    if split_type == "TFRecord":
        return _tfrecord(stream)
    raise SplitError(f"SplitType {split_type} is not supported")


def _lines(stream: IO[bytes]) -> Iterator[bytes]:
    carry = b""
    while True:
        chunk = stream.read(READ_SIZE)
        if not chunk:
            break
        lines = (carry + chunk).split(b"\n")
        carry = lines.pop()
        for line in lines:
            line = line.rstrip(b"\r")
            if line.strip():
                yield line
    carry = carry.rstrip(b"\r")
    if carry.strip():
        yield carry


def _read_exact(stream: IO[bytes], n: int, what: str) -> bytes:
    data = stream.read(n)
    while len(data) < n:
        more = stream.read(n - len(data))
        if not more:
            raise SplitError(f"the object ends inside {what}")
        data += more
    return data


def _recordio(stream: IO[bytes]) -> Iterator[bytes]:
    """MXNet RecordIO: magic, a length word whose top 3 bits say whether the record continues, data
    padded to 4 bytes. A record split over several frames is yielded as all of its frames."""
    number = 0
    pending = b""
    while True:
        head = stream.read(8)
        if not head:
            if pending:
                raise SplitError(f"the object ends inside RecordIO record {number + 1}")
            return
        if len(head) < 8:
            head += _read_exact(stream, 8 - len(head), f"the header of RecordIO record {number + 1}")
        magic, word = struct.unpack("<II", head)
        if magic != RECORDIO_MAGIC:
            raise SplitError(f"RecordIO record {number + 1} does not start with the RecordIO magic number")
        flag, length = word >> 29, word & ((1 << 29) - 1)
        body = _read_exact(stream, length + (-length % 4), f"RecordIO record {number + 1}")
        pending += head + body
        if flag in (0, 3):  # a whole record, or the last part of one
            number += 1
            yield pending
            pending = b""


def _tfrecord(stream: IO[bytes]) -> Iterator[bytes]:
    """TFRecord: a little-endian uint64 length, its CRC, the data, the data's CRC (not verified here:
    the model reading the record checks it)."""
    number = 0
    while True:
        head = stream.read(12)
        if not head:
            return
        number += 1
        if len(head) < 12:
            head += _read_exact(stream, 12 - len(head), f"the header of TFRecord record {number}")
        (length,) = struct.unpack("<Q", head[:8])
        yield head + _read_exact(stream, length + 4, f"TFRecord record {number}")


def _grouped(records: Iterator[bytes], spec: TransformSpec, limit: int,
             counter: object | None) -> Iterator[MiniBatch]:
    line = spec.split_type == "Line"
    single = spec.batch_strategy != "MultiRecord"
    keep = spec.processes_records
    state = [0]
    seq = 0
    group: list[bytes] = []
    size = 0
    first = 1

    def emit() -> MiniBatch:
        payload = b"".join(r + b"\n" for r in group) if line else b"".join(group)
        return MiniBatch(seq, payload, len(group), first, raw_bytes=_consumed(counter, state),
                         records=list(group) if keep else None)

    for number, record in enumerate(records, start=1):
        cost = len(record) + (1 if line else 0)
        if limit and cost > limit:
            raise SplitError(f"record {number} is {len(record)} bytes, over MaxPayloadInMB "
                             f"({limit // (1024 * 1024)} MB)")
        if group and (single or (limit and size + cost > limit)):
            yield emit()
            seq += 1
            group, size, first = [], 0, number
        group.append(record)
        size += cost
    if group:
        yield emit()
