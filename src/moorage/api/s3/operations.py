"""The S3 operations on buckets and objects (multipart uploads are in ``multipart.py``)."""

from __future__ import annotations

import base64
import os
from typing import IO
from urllib.parse import unquote

import orjson

from moorage.api.s3.bodies import BodyDecoder, StagedSink, receive_into
from moorage.api.s3.common import (
    OWNER_ID,
    OWNER_NAME,
    blocking,
    byte_range,
    check_conditions,
    content_type,
    etag_header,
    int_param,
    object_headers,
    read_small_body,
    stored_headers,
)
from moorage.api.s3.request import REGION_HEADER, S3Request
from moorage.api.s3.xml import document, element, iso_time, parse, url_encoded
from moorage.store.objects import MAX_OBJECT_SIZE, ObjectInfo, ObjectStore, ObjectStoreError, check_key

READ_CHUNK = 1024 * 1024
MAX_DELETE = 1000
REGION = "us-east-1"


def _owner() -> str:
    return f"<Owner>{element('ID', OWNER_ID)}{element('DisplayName', OWNER_NAME)}</Owner>"


# -- buckets -------------------------------------------------------------------------------------------------
async def list_buckets(request: S3Request, store: ObjectStore) -> None:
    prefix = request.query.get("prefix", "")
    limit = int_param(request, "max-buckets", 10_000, 10_000) or 10_000
    after = request.query.get("continuation-token", "")
    buckets = [b for b in await blocking(store.list_buckets) if b[0].startswith(prefix) and b[0] > after]
    page, more = buckets[:limit], len(buckets) > limit
    inner = [_owner(), "<Buckets>"]
    inner += [f"<Bucket>{element('Name', name)}{element('CreationDate', iso_time(created))}"
              f"{element('BucketRegion', REGION)}</Bucket>" for name, created in page]
    inner.append("</Buckets>")
    if more:
        inner.append(element("ContinuationToken", page[-1][0]))
    if prefix:
        inner.append(element("Prefix", prefix))
    await request.respond(200, document("ListAllMyBucketsResult", inner))


async def create_bucket(request: S3Request, store: ObjectStore) -> None:
    body = await read_small_body(request)
    if body.strip():
        parse(body, "CreateBucketConfiguration")  # a LocationConstraint is accepted; there is one region
    try:
        await blocking(store.create_bucket, request.bucket)
    except ObjectStoreError as exc:
        # us-east-1 answers 200 to its owner creating a bucket again (other regions 409): the SageMaker SDK's
        # default_bucket() relies on it when two processes make the bucket at once.
        if exc.code != "BucketAlreadyOwnedByYou":
            raise
    await request.respond(200, b"", [(b"location", f"/{request.bucket}".encode())])


async def head_bucket(request: S3Request, store: ObjectStore) -> None:
    await blocking(store.head_bucket, request.bucket)
    await request.respond(200, b"", [(REGION_HEADER, REGION.encode())])


async def get_bucket_location(request: S3Request, store: ObjectStore) -> None:
    await blocking(store.head_bucket, request.bucket)
    # us-east-1 is the empty LocationConstraint, as S3 answers it.
    await request.respond(200, document("LocationConstraint", ""))


async def delete_bucket(request: S3Request, store: ObjectStore) -> None:
    await blocking(store.delete_bucket, request.bucket)
    await request.respond(204)


# -- listing -------------------------------------------------------------------------------------------------
def _encoding(request: S3Request) -> bool:
    value = request.query.get("encoding-type")
    if value is None or value == "":
        return False
    if value.lower() != "url":
        raise ObjectStoreError("InvalidArgument", "Invalid Encoding Method specified in Request",
                               ArgumentName="encoding-type", ArgumentValue=value)
    return True


def _token(last: str, is_prefix: bool) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([last, is_prefix])).decode()


def _untoken(token: str) -> tuple[str, bool]:
    try:
        last, is_prefix = orjson.loads(base64.urlsafe_b64decode(token.encode()))
        if isinstance(last, str) and isinstance(is_prefix, bool):
            return last, is_prefix
    except (ValueError, TypeError, orjson.JSONDecodeError):
        pass
    raise ObjectStoreError("InvalidArgument", "The continuation token provided is incorrect",
                           ArgumentName="continuation-token")


def _contents(info: ObjectInfo, encode: bool, owner: bool) -> str:
    return (f"<Contents>{element('Key', url_encoded(info.key, encode))}"
            f"{element('LastModified', iso_time(info.last_modified))}{element('ETag', chr(34) + info.etag + chr(34))}"
            f"{element('Size', info.size)}{_owner() if owner else ''}{element('StorageClass', 'STANDARD')}</Contents>")


async def list_objects(request: S3Request, store: ObjectStore) -> None:
    """ListObjectsV2 (``list-type=2``) and the original ListObjects (``marker``)."""
    v2 = request.query.get("list-type") == "2"
    encode = _encoding(request)
    prefix = request.query.get("prefix", "")
    delimiter = request.query.get("delimiter", "")
    max_keys = int_param(request, "max-keys", 1000, 1000)
    token = request.query.get("continuation-token")
    if v2:
        if token is not None:
            after, after_is_prefix = _untoken(token)
        else:
            after, after_is_prefix = request.query.get("start-after", ""), False
    else:
        after = request.query.get("marker", "")
        # A NextMarker that was a common prefix: go on past every key under it.
        after_is_prefix = bool(delimiter) and after.endswith(delimiter)
    page = await blocking(store.list, request.bucket, prefix, delimiter, after, max_keys, after_is_prefix)
    owner = not v2 or request.query.get("fetch-owner", "").lower() == "true"
    inner = [element("Name", request.bucket), element("Prefix", url_encoded(prefix, encode))]
    if v2:
        if token is not None:
            inner.append(element("ContinuationToken", token))
        if "start-after" in request.query:
            inner.append(element("StartAfter", url_encoded(request.query["start-after"], encode)))
        inner.append(element("KeyCount", len(page.objects) + len(page.common_prefixes)))
        if page.truncated and page.last is not None:
            inner.append(element("NextContinuationToken", _token(page.last, page.last in page.common_prefixes)))
    else:
        inner.append(element("Marker", url_encoded(after, encode)))
        if page.truncated and delimiter and page.last is not None:
            inner.append(element("NextMarker", url_encoded(page.last, encode)))
    inner.append(element("MaxKeys", max_keys))
    if delimiter:
        inner.append(element("Delimiter", url_encoded(delimiter, encode)))
    if encode:
        inner.append(element("EncodingType", "url"))
    inner.append(element("IsTruncated", "true" if page.truncated else "false"))
    inner += [_contents(info, encode, owner) for info in page.objects]
    inner += [f"<CommonPrefixes>{element('Prefix', url_encoded(p, encode))}</CommonPrefixes>"
              for p in page.common_prefixes]
    await request.respond(200, document("ListBucketResult", inner))


# -- objects -------------------------------------------------------------------------------------------------
def _check_version(request: S3Request) -> None:
    version = request.query.get("versionId")
    if version is not None and version != "null":
        raise ObjectStoreError("InvalidArgument", "Invalid version id specified: moorage's object store keeps one "
                               "version of each object.", ArgumentName="versionId", ArgumentValue=version)


async def put_object(request: S3Request, store: ObjectStore) -> None:
    assert request.signed is not None
    store.object_path(request.bucket, request.key)  # a bad key or bucket name before a byte is read
    await blocking(store.head_bucket, request.bucket)
    staged = await blocking(store.stage)
    try:
        decoder = BodyDecoder(StagedSink(staged), request.headers, request.signed, MAX_OBJECT_SIZE)
        checksums = await receive_into(request.receive, decoder)
        info = await blocking(store.commit, staged, request.bucket, request.key, content_type=content_type(request),
                              headers=stored_headers(request), metadata=request.user_metadata(), checksums=checksums,
                              if_none_match=request.headers.get("if-none-match", "").strip() == "*")
    finally:
        staged.discard()
    headers = [etag_header(info.etag)]
    headers += [(f"x-amz-checksum-{a.lower()}".encode(), v.encode()) for a, v in checksums.items()]
    await request.respond(200, b"", headers)


async def head_object(request: S3Request, store: ObjectStore) -> None:
    _check_version(request)
    _no_part_number(request)
    info = await blocking(store.head, request.bucket, request.key)
    if not check_conditions(request.headers, info):
        await request.respond(304, b"", object_headers(info, request, False)[:2])
        return
    headers = object_headers(info, request, True)
    span = byte_range(request.headers.get("range"), info.size)
    if span is None:
        await request.respond(200, b"", [*headers, (b"content-length", str(info.size).encode())], None)
    else:
        first, last = span
        await request.respond(206, b"", [*headers, (b"content-length", str(last - first + 1).encode()),
                                         (b"content-range", f"bytes {first}-{last}/{info.size}".encode())], None)


def _no_part_number(request: S3Request) -> None:
    if "partNumber" in request.query:
        raise ObjectStoreError("NotImplemented", "moorage's S3 API does not read an object by partNumber; use a "
                               "Range instead.", 501)


async def get_object(request: S3Request, store: ObjectStore) -> None:
    _check_version(request)
    _no_part_number(request)
    handle, info = await blocking(store.open, request.bucket, request.key)
    try:
        if not check_conditions(request.headers, info):
            await request.respond(304, b"", object_headers(info, request, False)[:2])
            return
        span = byte_range(request.headers.get("range"), info.size)
        headers = object_headers(info, request, span is None)
        if span is None:
            first, last, status = 0, info.size - 1, 200
        else:
            (first, last), status = span, 206
            headers.append((b"content-range", f"bytes {first}-{last}/{info.size}".encode()))
        headers.append((b"content-length", str(last - first + 1).encode()))
        await _stream(request, handle, status, headers, first, last - first + 1)
    finally:
        handle.close()


async def _stream(request: S3Request, handle: IO[bytes], status: int, headers: list[tuple[bytes, bytes]],
                  offset: int, length: int) -> None:
    """The bytes from disk a block at a time (read in a worker thread); the server's send waits for the
    client to take each, so memory holds one block whatever the object's size."""
    request.answered = True
    await request.send({"type": "http.response.start", "status": status,
                        "headers": [*request.base_headers(), *headers]})
    fd = handle.fileno()
    ended = False
    while length > 0:
        data = await blocking(os.pread, fd, min(READ_CHUNK, length), offset)
        if not data:  # a rename never shrinks an open file; a truncation by hand can
            break
        offset += len(data)
        length -= len(data)
        ended = length == 0
        await request.send({"type": "http.response.body", "body": data, "more_body": not ended})
    if not ended:
        await request.send({"type": "http.response.body", "body": b"", "more_body": False})


async def delete_object(request: S3Request, store: ObjectStore) -> None:
    _check_version(request)
    await blocking(store.delete, request.bucket, request.key)
    await request.respond(204)


async def delete_objects(request: S3Request, store: ObjectStore) -> None:
    if "content-md5" not in request.headers and not any(h.startswith("x-amz-checksum-") for h in request.headers) \
            and "x-amz-trailer" not in request.headers:
        raise ObjectStoreError("InvalidRequest", "Missing required header for this request: Content-MD5 OR "
                               "x-amz-checksum-*")
    tree = parse(await read_small_body(request), "Delete")
    quiet = (tree.findtext("Quiet") or "").strip().lower() == "true"
    keys = [(node.findtext("Key") or "") for node in tree.findall("Object")]
    if not keys or len(keys) > MAX_DELETE:
        raise ObjectStoreError("MalformedXML", "The XML you provided was not well-formed or did not validate against "
                               f"our published schema: a Delete lists 1 to {MAX_DELETE} objects.")
    await blocking(store.head_bucket, request.bucket)

    def delete_all() -> list[str]:
        out = []
        for key in keys:
            try:
                check_key(key)
                store.delete(request.bucket, key)
            except ObjectStoreError as exc:
                out.append(f"<Error>{element('Key', key)}{element('Code', exc.code)}"
                           f"{element('Message', exc.message)}</Error>")
            else:
                if not quiet:
                    out.append(f"<Deleted>{element('Key', key)}</Deleted>")
        return out

    await request.respond(200, document("DeleteResult", await blocking(delete_all)))


def copy_source(request: S3Request) -> tuple[str, str]:
    raw = request.headers["x-amz-copy-source"]
    path, _, version = unquote(raw).partition("?versionId=")
    if version and version != "null":
        raise ObjectStoreError("InvalidArgument", "Invalid version id specified: moorage's object store keeps one "
                               "version of each object.", ArgumentName="x-amz-copy-source")
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket or not key:
        raise ObjectStoreError("InvalidArgument", "Copy Source must mention the source bucket and key: "
                               "sourcebucket/sourcekey", ArgumentName="x-amz-copy-source", ArgumentValue=raw)
    return bucket, key


async def copy_object(request: S3Request, store: ObjectStore) -> None:
    source = copy_source(request)
    directive = request.headers.get("x-amz-metadata-directive", "COPY").upper()
    if directive not in ("COPY", "REPLACE"):
        raise ObjectStoreError("InvalidArgument", "Unknown metadata directive.",
                               ArgumentName="x-amz-metadata-directive", ArgumentValue=directive)
    info = await blocking(store.copy, source, (request.bucket, request.key), replace_metadata=directive == "REPLACE",
                          content_type=content_type(request), headers=stored_headers(request),
                          metadata=request.user_metadata(),
                          conditions=lambda found: check_conditions(request.headers, found, "x-amz-copy-source-"))
    body = document("CopyObjectResult", element("LastModified", iso_time(info.last_modified))
                    + element("ETag", f'"{info.etag}"'))
    await request.respond(200, body)
