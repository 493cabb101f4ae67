"""Multipart uploads: Create, UploadPart (and UploadPartCopy), Complete, Abort, ListParts, ListMultipartUploads.

Parts are staged under the object store (``store/objects.py``), never held in memory, and survive a
restart until the upload is completed or aborted. Completing a large upload joins its parts on disk,
which can outlast a client's read timeout: as S3 does, the answer starts (200) after a few seconds
and whitespace keeps the connection alive until the result, or an error document, follows.
"""

from __future__ import annotations

import asyncio
from typing import Any

from moorage.api.s3.bodies import BodyDecoder, StagedSink, receive_into
from moorage.api.s3.common import (
    OWNER_ID,
    OWNER_NAME,
    blocking,
    check_conditions,
    content_type,
    etag_header,
    int_param,
    read_small_body,
    stored_headers,
)
from moorage.api.s3.operations import copy_source
from moorage.api.s3.request import S3Request
from moorage.api.s3.xml import XML, document, element, error_document, iso_time, malformed, parse
from moorage.store.objects import MAX_OBJECT_SIZE, MAX_PARTS, ObjectStore, ObjectStoreError

KEEPALIVE_AFTER = 2.0
KEEPALIVE_EVERY = 5.0
_PROLOG = b'<?xml version="1.0" encoding="UTF-8"?>\n'


def _people() -> str:
    person = element("ID", OWNER_ID) + element("DisplayName", OWNER_NAME)
    return f"<Initiator>{person}</Initiator><Owner>{person}</Owner>"


def _part_number(request: S3Request) -> int:
    raw = request.query.get("partNumber", "")
    try:
        number = int(raw)
    except ValueError:
        number = 0
    if not 1 <= number <= MAX_PARTS:
        raise ObjectStoreError("InvalidArgument", f"Part number must be an integer between 1 and {MAX_PARTS}, "
                               "inclusive", ArgumentName="partNumber", ArgumentValue=raw)
    return number


async def create_multipart_upload(request: S3Request, store: ObjectStore) -> None:
    algorithm = request.headers.get("x-amz-checksum-algorithm")
    upload = await blocking(store.create_upload, request.bucket, request.key, content_type=content_type(request),
                            headers=stored_headers(request), metadata=request.user_metadata(),
                            checksum_algorithm=algorithm.upper() if algorithm else None)
    headers = [(b"x-amz-checksum-algorithm", upload.checksum_algorithm.encode())] if upload.checksum_algorithm else []
    await request.respond(200, document("InitiateMultipartUploadResult", element("Bucket", upload.bucket)
                                        + element("Key", upload.key) + element("UploadId", upload.upload_id)), headers)


async def upload_part(request: S3Request, store: ObjectStore) -> None:
    assert request.signed is not None
    number = _part_number(request)
    upload_id = request.query.get("uploadId", "")
    await blocking(store.get_upload, request.bucket, request.key, upload_id)  # NoSuchUpload before the body
    staged = await blocking(store.stage)
    try:
        if "x-amz-copy-source" in request.headers:
            await _copy_into(request, store, staged)
            checksums: dict[str, str] = {}
        else:
            decoder = BodyDecoder(StagedSink(staged), request.headers, request.signed, MAX_OBJECT_SIZE)
            checksums = await receive_into(request.receive, decoder)
        part = await blocking(store.upload_part, request.bucket, request.key, upload_id, number, staged, checksums)
    finally:
        staged.discard()
    if "x-amz-copy-source" in request.headers:
        body = document("CopyPartResult", element("LastModified", iso_time(part.last_modified))
                        + element("ETag", f'"{part.etag}"'))
        await request.respond(200, body)
        return
    headers = [etag_header(part.etag)]
    headers += [(f"x-amz-checksum-{a.lower()}".encode(), v.encode()) for a, v in checksums.items()]
    await request.respond(200, b"", headers)


async def _copy_into(request: S3Request, store: ObjectStore, staged: Any) -> None:
    """UploadPartCopy: a byte range (``x-amz-copy-source-range``, else all) of another object."""
    bucket, key = copy_source(request)
    first, last = 0, -1
    spec = request.headers.get("x-amz-copy-source-range")
    if spec:
        unit, _, span = spec.partition("=")
        start, dash, end = span.partition("-")
        try:
            if unit.strip() != "bytes" or not dash:
                raise ValueError
            first, last = int(start), int(end)
        except ValueError:
            raise ObjectStoreError("InvalidArgument", "The x-amz-copy-source-range value must be of the form "
                                   "bytes=first-last where first and last are the zero-based offsets of the first "
                                   "and last bytes to copy", ArgumentName="x-amz-copy-source-range",
                                   ArgumentValue=spec) from None
    await blocking(store.upload_part_source, bucket, key, first, last, staged,
                   conditions=lambda found: check_conditions(request.headers, found, "x-amz-copy-source-"))


def _requested_parts(body: bytes) -> list[tuple[int, str]]:
    tree = parse(body, "CompleteMultipartUpload")
    parts = []
    for node in tree.findall("Part"):
        number, etag = (node.findtext("PartNumber") or "").strip(), (node.findtext("ETag") or "").strip()
        if not number.isdigit() or not etag:
            raise malformed("each Part needs a PartNumber and an ETag.")
        parts.append((int(number), etag))
    return parts


async def complete_multipart_upload(request: S3Request, store: ObjectStore) -> None:
    upload_id = request.query.get("uploadId", "")
    await blocking(store.get_upload, request.bucket, request.key, upload_id)
    parts = _requested_parts(await read_small_body(request))
    job = asyncio.ensure_future(blocking(store.complete_upload, request.bucket, request.key, upload_id, parts))
    done, _ = await asyncio.wait({job}, timeout=KEEPALIVE_AFTER)
    if done:
        info = job.result()  # an ObjectStoreError is answered by the door as usual
        await request.respond(200, _completed(request, info.etag))
        return
    # Still joining: answer 200 now and keep the connection alive, as S3 does; the outcome (or an
    # error document, which botocore reads from a 200 for this operation) follows.
    request.answered = True
    await request.send({"type": "http.response.start", "status": 200,
                        "headers": [*request.base_headers(), (b"content-type", XML)]})
    await request.send({"type": "http.response.body", "body": _PROLOG, "more_body": True})
    while not job.done():
        done, _ = await asyncio.wait({job}, timeout=KEEPALIVE_EVERY)
        if not done:
            await request.send({"type": "http.response.body", "body": b" ", "more_body": True})
    try:
        info = job.result()
        tail = _completed(request, info.etag)
    except ObjectStoreError as exc:
        tail = error_document(exc.code, exc.message, request.resource, request.request_id, exc.fields)
    await request.send({"type": "http.response.body", "body": tail.removeprefix(_PROLOG), "more_body": False})


def _completed(request: S3Request, etag: str) -> bytes:
    host = request.headers.get("host", "localhost")
    return document("CompleteMultipartUploadResult", element("Location", f"http://{host}{request.resource}")
                    + element("Bucket", request.bucket) + element("Key", request.key)
                    + element("ETag", f'"{etag}"'))


async def abort_multipart_upload(request: S3Request, store: ObjectStore) -> None:
    await blocking(store.abort_upload, request.bucket, request.key, request.query.get("uploadId", ""))
    await request.respond(204)


async def list_parts(request: S3Request, store: ObjectStore) -> None:
    upload_id = request.query.get("uploadId", "")
    upload, parts = await blocking(store.list_parts, request.bucket, request.key, upload_id)
    marker = int_param(request, "part-number-marker", 0)
    max_parts = int_param(request, "max-parts", 1000, 1000)
    after = [p for p in parts if p.number > marker]
    page, truncated = after[:max_parts], len(after) > max_parts
    inner = [element("Bucket", upload.bucket), element("Key", upload.key), element("UploadId", upload.upload_id),
             element("PartNumberMarker", marker)]
    if page:
        inner.append(element("NextPartNumberMarker", page[-1].number))
    inner += [element("MaxParts", max_parts), element("IsTruncated", "true" if truncated else "false"), _people(),
              element("StorageClass", "STANDARD")]
    if upload.checksum_algorithm:
        inner.append(element("ChecksumAlgorithm", upload.checksum_algorithm))
    for part in page:
        sums = "".join(element(f"Checksum{a}", v) for a, v in part.checksums.items())
        inner.append(f"<Part>{element('PartNumber', part.number)}"
                     f"{element('LastModified', iso_time(part.last_modified))}"
                     f"{element('ETag', chr(34) + part.etag + chr(34))}{element('Size', part.size)}{sums}</Part>")
    await request.respond(200, document("ListPartsResult", inner))


async def list_multipart_uploads(request: S3Request, store: ObjectStore) -> None:
    if request.query.get("delimiter"):
        raise ObjectStoreError("NotImplemented", "moorage's S3 API lists multipart uploads by prefix only, without a "
                               "delimiter.", 501)
    prefix = request.query.get("prefix", "")
    key_marker = request.query.get("key-marker", "")
    id_marker = request.query.get("upload-id-marker", "")
    max_uploads = int_param(request, "max-uploads", 1000, 1000)
    uploads = await blocking(store.list_uploads, request.bucket, prefix)
    if key_marker:
        uploads = [u for u in uploads if u.key > key_marker or (u.key == key_marker and id_marker
                                                                 and u.upload_id > id_marker)]
    page, truncated = uploads[:max_uploads], len(uploads) > max_uploads
    inner = [element("Bucket", request.bucket), element("KeyMarker", key_marker), element("UploadIdMarker", id_marker)]
    if truncated and page:
        inner += [element("NextKeyMarker", page[-1].key), element("NextUploadIdMarker", page[-1].upload_id)]
    inner += [element("Prefix", prefix), element("MaxUploads", max_uploads),
              element("IsTruncated", "true" if truncated else "false")]
    for upload in page:
        inner.append(f"<Upload>{element('Key', upload.key)}{element('UploadId', upload.upload_id)}{_people()}"
                     f"{element('StorageClass', 'STANDARD')}{element('Initiated', iso_time(upload.initiated))}"
                     "</Upload>")
    await request.respond(200, document("ListMultipartUploadsResult", inner))
