"""Capture segments synced from edge devices: checked, then stored where an endpoint's capture would be.

An agent seals its spool into segments (JSON Lines, one SageMaker capture record a line) named
``{device}-{sequence:012d}``, the sequence persisted on the device, and uploads each one whole. A
segment lands at::

    {fleet's OutputConfig.S3OutputLocation}/{fleet}/{device}/YYYY/MM/DD/HH/{segment}.jsonl

by the UTC hour of its first record, so the fleet plays an endpoint's part and each device a variant's:
``moorage monitor``, a data-quality baseline or a monitoring execution reads a fleet's traffic as it
reads an endpoint's captured traffic (``monitor/common/capture_reader.py`` lists the "variants" under
``{destination}/{endpoint}``).

Idempotent by name: the same segment always maps to the same key. An upload of a segment already
stored with the same bytes changes nothing (an agent killed after the server stored it, before it
heard the answer, sends it again); one with other bytes is refused (409), so that data already
accepted is never replaced. Every segment is checked whole before a byte is written (at most 16 MiB;
each line a capture record; a bad line is a 400 naming it) and written whole: a local file aside then
renamed, fsynced before the answer (the agent deletes its copy once answered); the object store's
writes are staged and renamed the same way (``store/locations.py``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import orjson

from moorage.errors import ConflictException, ValidationException
from moorage.store.locations import StorageError, filesystem, join, write_whole_at

MAX_SEGMENT_BYTES = 16 * 1024 * 1024
_SEQUENCE = re.compile(r"[0-9]{12}")
_ENCODINGS = frozenset({"CSV", "JSON", "BASE64"})
_SIDES = (("endpointInput", "INPUT"), ("endpointOutput", "OUTPUT"))
_LOCKS: weakref.WeakValueDictionary[str, threading.Lock] = weakref.WeakValueDictionary()
_LOCKS_GUARD = threading.Lock()


class SegmentConflict(ConflictException):
    """The segment's name is taken by other bytes: stored data is not replaced."""

    status = 409


@dataclass(frozen=True)
class StoredSegment:
    key: str
    records: int
    size: int
    sha256: str
    created: bool  # False: the same bytes were already there

    def as_dict(self) -> dict[str, Any]:
        return {"Key": self.key, "Records": self.records, "Bytes": self.size, "Sha256": self.sha256,
                "Created": self.created}


def check_segment_name(device: str, segment: str) -> None:
    prefix = f"{device}-"
    if not (segment.startswith(prefix) and _SEQUENCE.fullmatch(segment[len(prefix):])):
        raise ValidationException(f"Segment name {segment!r}: a segment of device {device} is named "
                                  f"{device}-NNNNNNNNNNNN (its sequence number, 12 digits).")


def _line_problem(record: Any) -> str | None:
    if not isinstance(record, dict):
        return "is not a JSON object"
    capture = record.get("captureData")
    if not isinstance(capture, dict) or not any(side in capture for side, _ in _SIDES):
        return "has no captureData with endpointInput or endpointOutput"
    for side, mode in _SIDES:
        if side not in capture:
            continue
        part = capture[side]
        if not isinstance(part, dict):
            return f"captureData.{side} is not an object"
        if not isinstance(part.get("data"), str):
            return f"captureData.{side}.data is not a string"
        if part.get("encoding") not in _ENCODINGS:
            return f"captureData.{side}.encoding is {part.get('encoding')!r}, not CSV, JSON or BASE64"
        if part.get("mode", mode) != mode:
            return f"captureData.{side}.mode is {part.get('mode')!r}, not {mode}"
        content_type = part.get("observedContentType")
        if content_type is not None and not isinstance(content_type, str):
            return f"captureData.{side}.observedContentType is not a string"
    metadata = record.get("eventMetadata")
    if not isinstance(metadata, dict):
        return "has no eventMetadata"
    if not isinstance(metadata.get("eventId"), str) or not metadata["eventId"]:
        return "has no eventMetadata.eventId"
    if not isinstance(metadata.get("inferenceTime"), str):
        return "has no eventMetadata.inferenceTime"
    if not isinstance(record.get("eventVersion"), str):
        return "has no eventVersion"
    return None


def _inference_time(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def check_segment(body: bytes) -> tuple[int, dt.datetime]:
    """(record count, the first record's inference time) of a segment; ValidationException naming the
    first line that is not a SageMaker capture record."""
    if not body:
        raise ValidationException("The segment is empty: a segment holds at least one capture record.")
    first: dt.datetime | None = None
    count = 0
    # The last line needs no newline after it (a cut-short line is not a JSON object either way).
    lines = body.split(b"\n")
    for number, line in enumerate(lines[:-1] if body.endswith(b"\n") else lines, start=1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValidationException(f"Segment line {number} is not JSON: {exc}") from None
        problem = _line_problem(record)
        if problem is None:
            try:
                moment = _inference_time(record["eventMetadata"]["inferenceTime"])
            except ValueError:
                problem = f"has an inferenceTime that is not ISO-8601: {record['eventMetadata']['inferenceTime']!r}"
        if problem is not None:
            raise ValidationException(f"Segment line {number} is not a SageMaker capture record: it {problem}.")
        if first is None:
            first = moment
        count += 1
    assert first is not None
    return count, first


def segment_key(output_location: str, fleet: str, device: str, first: dt.datetime, segment: str) -> str:
    return join(output_location, f"{fleet}/{device}/{first.astimezone(dt.UTC):%Y/%m/%d/%H}/{segment}.jsonl")


def _lock_for(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        lock = _LOCKS.get(key)
        if lock is None:
            lock = threading.Lock()
            _LOCKS[key] = lock
        return lock


def store_segment(output_location: str, fleet: str, device: str, segment: str, body: bytes) -> StoredSegment:
    """Check and store one segment (blocking: run it in a worker thread)."""
    if len(body) > MAX_SEGMENT_BYTES:
        raise ValidationException(f"The segment is {len(body)} bytes, over the {MAX_SEGMENT_BYTES}-byte limit.")
    check_segment_name(device, segment)
    records, first = check_segment(body)
    key = segment_key(output_location, fleet, device, first, segment)
    digest = hashlib.sha256(body).hexdigest()
    try:
        fs, path = filesystem(key)
        with _lock_for(key):
            existing = _read_existing(fs, path)
            if existing is not None:
                if hashlib.sha256(existing).hexdigest() != digest:
                    raise SegmentConflict(
                        f"Segment {segment} of device {device} is already stored at {key} with other bytes "
                        f"({len(existing)} bytes); stored capture data is not replaced.")
                return StoredSegment(key, records, len(body), digest, created=False)
            write_whole_at(fs, path, body)
    except (OSError, StorageError) as exc:
        raise OSError(f"could not store segment {segment} at {key}: {exc}") from exc
    return StoredSegment(key, records, len(body), digest, created=True)


def _read_existing(fs: Any, path: str) -> bytes | None:
    try:
        with fs.open(path, "rb") as handle:
            data: bytes = handle.read(MAX_SEGMENT_BYTES + 1)
            return data
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
