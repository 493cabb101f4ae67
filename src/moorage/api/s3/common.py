"""What the S3 operations share: the thread hop, stored headers, conditions, ranges, object headers."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from moorage.api.s3.bodies import BodyDecoder, MemorySink, receive_into
from moorage.api.s3.request import S3Request
from moorage.api.s3.xml import http_date
from moorage.store.objects import STORED_HEADERS, ObjectInfo, ObjectStoreError

T = TypeVar("T")
OWNER_ID = "75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a"
OWNER_NAME = "moorage"
SMALL_BODY = 8 * 1024 * 1024  # an XML request document (10,000 parts of a CompleteMultipartUpload fit)


async def blocking(function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking store call in a worker thread: file work never runs on the event loop."""
    return await asyncio.to_thread(functools.partial(function, *args, **kwargs))


async def read_small_body(request: S3Request) -> bytes:
    assert request.signed is not None
    sink = MemorySink(SMALL_BODY)
    await receive_into(request.receive, BodyDecoder(sink, request.headers, request.signed, SMALL_BODY))
    return bytes(sink.data)


def stored_headers(request: S3Request) -> dict[str, str]:
    """The request's headers S3 keeps with an object (aws-chunked is how it travelled, not what it is)."""
    kept = {}
    for name in STORED_HEADERS:
        value = request.headers.get(name)
        if value is None:
            continue
        if name == "content-encoding":
            value = ",".join(p.strip() for p in value.split(",") if p.strip() and p.strip().lower() != "aws-chunked")
            if not value:
                continue
        kept[name] = value
    return kept


def content_type(request: S3Request) -> str:
    return request.headers.get("content-type") or "binary/octet-stream"


def etag_header(etag: str) -> tuple[bytes, bytes]:
    return b"etag", f'"{etag}"'.encode()


def object_headers(info: ObjectInfo, request: S3Request, with_checksum: bool) -> list[tuple[bytes, bytes]]:
    headers = [etag_header(info.etag), (b"last-modified", http_date(info.last_modified).encode()),
               (b"accept-ranges", b"bytes")]
    overrides = {name[len("response-"):]: value for name, value in request.query.items()
                 if name.startswith("response-")}
    kept = {**info.headers, "content-type": info.content_type}
    for name in ("content-type", "content-language", "expires", "cache-control", "content-disposition",
                 "content-encoding"):
        value = overrides.get(name, kept.get(name))
        if value is not None:
            headers.append((name.encode(), value.encode("latin-1", "replace")))
    for name, value in info.metadata.items():
        headers.append((f"x-amz-meta-{name}".encode("latin-1", "replace"), value.encode("latin-1", "replace")))
    if with_checksum and info.checksums and request.headers.get("x-amz-checksum-mode", "").upper() == "ENABLED":
        for algorithm, value in info.checksums.items():
            headers.append((f"x-amz-checksum-{algorithm.lower()}".encode(), value.encode()))
        headers.append((b"x-amz-checksum-type", b"FULL_OBJECT"))
    return headers


def _etags(value: str) -> list[str]:
    return [v.strip().strip('"') for v in value.split(",")]


def _date(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None


def check_conditions(headers: dict[str, str], info: ObjectInfo, prefix: str = "") -> bool:
    """RFC 7232 as S3 applies it: PreconditionFailed (412) for If-Match / If-Unmodified-Since; False
    for a 304 (If-None-Match / If-Modified-Since); ``prefix`` is ``x-amz-copy-source-`` for a copy's
    conditions on its source, where a failed "none-match"/"modified-since" is a 412 too."""
    modified = int(info.last_modified)
    if_match = headers.get(prefix + "if-match")
    if if_match is not None:
        if "*" not in _etags(if_match) and info.etag not in _etags(if_match):
            raise _failed(prefix + "If-Match")
    elif (since := _date(headers.get(prefix + "if-unmodified-since"))) is not None and modified > since:
        raise _failed(prefix + "If-Unmodified-Since")
    if_none_match = headers.get(prefix + "if-none-match")
    if if_none_match is not None:
        if "*" in _etags(if_none_match) or info.etag in _etags(if_none_match):
            if prefix:
                raise _failed(prefix + "If-None-Match")
            return False
    elif (since := _date(headers.get(prefix + "if-modified-since"))) is not None and modified <= since:
        if prefix:
            raise _failed(prefix + "If-Modified-Since")
        return False
    return True


def _failed(condition: str) -> ObjectStoreError:
    return ObjectStoreError("PreconditionFailed", "At least one of the pre-conditions you specified did not hold",
                            412, Condition=condition)


def byte_range(value: str | None, size: int) -> tuple[int, int] | None:
    """(first, last) of a ``Range: bytes=...`` header, None for the whole object (no header, or one S3
    ignores: not bytes, several ranges, unparseable); InvalidRange (416) for one past the end."""
    if not value:
        return None
    unit, _, spec = value.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first_text, dash, last_text = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first_text:
            suffix = int(last_text)
            if suffix < 0:
                return None
            if suffix == 0 or size == 0:
                raise _invalid_range(value, size)
            return max(0, size - suffix), size - 1
        first = int(first_text)
        last = int(last_text) if last_text else size - 1
    except ValueError:
        return None
    if first >= size:
        raise _invalid_range(value, size)
    if first < 0 or last < first:
        return None
    return first, min(last, size - 1)


def _invalid_range(value: str, size: int) -> ObjectStoreError:
    return ObjectStoreError("InvalidRange", "The requested range is not satisfiable", 416, RangeRequested=value,
                            ActualObjectSize=str(size))


def int_param(request: S3Request, name: str, default: int, maximum: int | None = None) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ObjectStoreError("InvalidArgument", f"Provided {name} not an integer or within integer range",
                               ArgumentName=name, ArgumentValue=raw) from None
    if value < 0:
        raise ObjectStoreError("InvalidArgument", f"Argument {name} must be an integer between 0 and 2147483647",
                               ArgumentName=name, ArgumentValue=raw)
    return min(value, maximum) if maximum is not None else value
