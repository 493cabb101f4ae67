"""The S3 API on moorage's port, driven by boto3's own ``s3`` client (and the aws CLI when installed).

Every operation and its S3 errors; bodies as botocore sends them over http (payload hash + CRC32
header) and over https (aws-chunked with a CRC32 trailer: sent through an https client whose
requests are replayed over http, byte for byte); multipart uploads of 100 MB with the server's memory
bounded; objects that appear whole or not at all; a restart; and the same store behind ``s3://`` for
endpoints and transform jobs.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import io
import os
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import psutil
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSPreparedRequest, AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.httpsession import URLLib3Session

from batch_support import csv_rows, expected_lines, run_job
from e2e_support import (
    REGION,
    Deployer,
    MoorageServer,
    assert_predictions,
    err_code,
    err_status,
    http_request,
    new_name,
    pack_model,
    predict,
)

pytestmark = pytest.mark.e2e
MiB = 1024 * 1024


def s3_client(srv: MoorageServer, *, secret: str | None = None, key: str | None = None,
              endpoint: str | None = None) -> Any:
    return boto3.session.Session().client(
        "s3", endpoint_url=endpoint or srv.url, region_name=REGION,
        aws_access_key_id=key or srv.access_key_id, aws_secret_access_key=secret or srv.secret_access_key,
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, read_timeout=120))


@pytest.fixture(scope="module")
def s3(server: MoorageServer) -> Any:
    return s3_client(server)


@pytest.fixture
def bucket(s3: Any) -> Iterator[str]:
    name = new_name("bkt")
    s3.create_bucket(Bucket=name)
    yield name
    with contextlib.suppress(ClientError):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                s3.delete_object(Bucket=name, Key=item["Key"])
        for upload in s3.list_multipart_uploads(Bucket=name).get("Uploads", []):
            s3.abort_multipart_upload(Bucket=name, Key=upload["Key"], UploadId=upload["UploadId"])
        s3.delete_bucket(Bucket=name)


def code(call: Callable[[], Any]) -> tuple[str, int]:
    with pytest.raises(ClientError) as caught:
        call()
    return err_code(caught.value), err_status(caught.value)


def files_outside(srv: MoorageServer) -> set[str]:
    root = srv.home.parent
    return {str(p) for p in root.rglob("*") if p.is_file() and srv.home not in p.parents}


# -- buckets ---------------------------------------------------------------------------------------------------
def test_buckets(s3: Any) -> None:
    name = new_name("bkts")
    s3.create_bucket(Bucket=name)
    assert name in [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert s3.head_bucket(Bucket=name)["ResponseMetadata"]["HTTPHeaders"]["x-amz-bucket-region"] == REGION
    assert s3.get_bucket_location(Bucket=name)["LocationConstraint"] is None  # us-east-1, as S3 answers it
    s3.put_object(Bucket=name, Key="k", Body=b"x")
    s3.create_bucket(Bucket=name)  # its owner again: 200 in us-east-1, and nothing in it touched
    assert s3.get_object(Bucket=name, Key="k")["Body"].read() == b"x"
    assert code(lambda: s3.delete_bucket(Bucket=name)) == ("BucketNotEmpty", 409)
    s3.delete_object(Bucket=name, Key="k")
    s3.delete_bucket(Bucket=name)
    assert code(lambda: s3.head_bucket(Bucket=name)) == ("404", 404)
    assert code(lambda: s3.list_objects_v2(Bucket=name)) == ("NoSuchBucket", 404)
    assert code(lambda: s3.create_bucket(Bucket="Not_Valid")) == ("InvalidBucketName", 400)
    with pytest.raises(ClientError, match="reserved by moorage"):
        s3.create_bucket(Bucket="endpoints")


# -- objects ---------------------------------------------------------------------------------------------------
def test_put_get_head_range_conditions_copy_delete(s3: Any, bucket: str) -> None:
    body = bytes(range(256)) * 40
    put = s3.put_object(Bucket=bucket, Key="dir/a b+c%.bin", Body=body, ContentType="application/x-thing",
                        Metadata={"owner": "me"}, ContentDisposition="attachment")
    assert put["ETag"] == f'"{hashlib.md5(body).hexdigest()}"' and "ChecksumCRC32" in put  # botocore's default
    got = s3.get_object(Bucket=bucket, Key="dir/a b+c%.bin")  # botocore validates the CRC32 it is given back
    assert got["Body"].read() == body and got["ChecksumCRC32"] == put["ChecksumCRC32"]
    assert (got["ContentType"], got["Metadata"], got["ContentDisposition"]) == ("application/x-thing",
                                                                                {"owner": "me"}, "attachment")
    head = s3.head_object(Bucket=bucket, Key="dir/a b+c%.bin")
    assert (head["ContentLength"], head["ETag"]) == (len(body), put["ETag"])
    part = s3.get_object(Bucket=bucket, Key="dir/a b+c%.bin", Range="bytes=10-19")
    assert (part["Body"].read(), part["ContentRange"]) == (body[10:20], f"bytes 10-19/{len(body)}")
    assert s3.get_object(Bucket=bucket, Key="dir/a b+c%.bin", Range="bytes=-5")["Body"].read() == body[-5:]
    assert code(lambda: s3.get_object(Bucket=bucket, Key="dir/a b+c%.bin", Range=f"bytes={len(body)}-")) == \
        ("InvalidRange", 416)
    assert code(lambda: s3.get_object(Bucket=bucket, Key="dir/a b+c%.bin", IfMatch='"nope"')) == \
        ("PreconditionFailed", 412)
    assert code(lambda: s3.get_object(Bucket=bucket, Key="dir/a b+c%.bin", IfNoneMatch=put["ETag"])) == \
        ("304", 304)
    assert code(lambda: s3.put_object(Bucket=bucket, Key="dir/a b+c%.bin", Body=b"x", IfNoneMatch="*")) == \
        ("PreconditionFailed", 412)

    copied = s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "dir/a b+c%.bin"})
    assert copied["CopyObjectResult"]["ETag"] == put["ETag"]
    assert s3.head_object(Bucket=bucket, Key="copy")["Metadata"] == {"owner": "me"}
    s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "copy"},
                   MetadataDirective="REPLACE", Metadata={"owner": "you"}, ContentType="text/plain")
    assert s3.head_object(Bucket=bucket, Key="copy")["Metadata"] == {"owner": "you"}
    assert code(lambda: s3.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "copy"})) \
        == ("InvalidRequest", 400)

    s3.delete_object(Bucket=bucket, Key="copy")
    assert code(lambda: s3.get_object(Bucket=bucket, Key="copy")) == ("NoSuchKey", 404)
    assert code(lambda: s3.head_object(Bucket=bucket, Key="copy")) == ("404", 404)
    assert code(lambda: s3.get_object(Bucket=new_name("none"), Key="k")) == ("NoSuchBucket", 404)
    result = s3.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "dir/a b+c%.bin"}, {"Key": "gone"},
                                                                   {"Key": "../x"}]})
    assert sorted(d["Key"] for d in result["Deleted"]) == ["dir/a b+c%.bin", "gone"]
    assert [(e["Key"], e["Code"]) for e in result["Errors"]] == [("../x", "InvalidArgument")]
    assert code(lambda: s3.get_bucket_acl(Bucket=bucket)) == ("NotImplemented", 501)
    assert code(lambda: s3.put_object_tagging(Bucket=bucket, Key="k", Tagging={"TagSet": []})) == \
        ("NotImplemented", 501)


def test_keys_that_would_escape_the_store_write_nothing(server: MoorageServer, s3: Any, bucket: str) -> None:
    before = files_outside(server)
    for key in ("../../escape", "a/../../../escape", "/abs", "nul\x00", "k" * 1025, "folder/"):
        assert code(lambda key=key: s3.put_object(Bucket=bucket, Key=key, Body=b"x"))[0] in \
            ("InvalidArgument", "KeyTooLongError")
    # The same, percent-encoded by hand on the wire (botocore would send the dots as they are).
    url = f"{server.url}/{bucket}/%2E%2E/%2E%2E/%2E%2E/escape"
    request = AWSRequest(method="PUT", url=url, data=b"x", headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"})
    S3SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), "s3", REGION).add_auth(request)
    status, _, answer = http_request("PUT", url, body=b"x", headers=dict(request.headers.items()))
    assert status == 400 and b"<Code>InvalidArgument</Code>" in answer
    assert files_outside(server) == before
    assert not (server.home / "escape").exists()


def test_a_key_cannot_be_an_object_and_a_prefix(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="a", Body=b"object a")
    assert code(lambda: s3.put_object(Bucket=bucket, Key="a/b", Body=b"x")) == ("ParentIsObject", 400)
    s3.put_object(Bucket=bucket, Key="d/e", Body=b"x")
    assert code(lambda: s3.put_object(Bucket=bucket, Key="d", Body=b"x")) == ("ObjectExistsAsDirectory", 409)
    assert s3.get_object(Bucket=bucket, Key="a")["Body"].read() == b"object a"


def test_listing_v2_and_v1_with_prefixes_delimiters_and_pages(s3: Any, bucket: str) -> None:
    keys = ["a-c", "a/b", "a/c/d", "a0", "b c", "b+c", "é/ü", "per%cent", "z"]
    for key in keys:
        s3.put_object(Bucket=bucket, Key=key, Body=key.encode())
    order = sorted(keys, key=lambda k: k.encode())
    pages = list(s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, PaginationConfig={"PageSize": 2}))
    assert [o["Key"] for p in pages for o in p.get("Contents", [])] == order and len(pages) == 5
    listed = s3.list_objects_v2(Bucket=bucket, Delimiter="/")
    assert [p["Prefix"] for p in listed["CommonPrefixes"]] == ["a/", "é/"]
    assert [o["Key"] for o in listed["Contents"]] == [k for k in order if "/" not in k]
    mixed = [(o.get("Key"), o.get("Prefix")) for p in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Delimiter="/", PaginationConfig={"PageSize": 3}) for o in
        [*p.get("Contents", []), *p.get("CommonPrefixes", [])]]
    assert sorted(k or q for k, q in mixed) == sorted([k for k in order if "/" not in k] + ["a/", "é/"])
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"]] == ["a/b", "a/c/d"]
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, StartAfter="b+c")["Contents"]] == \
        order[order.index("b+c") + 1:]
    v1 = [o["Key"] for p in s3.get_paginator("list_objects").paginate(
        Bucket=bucket, PaginationConfig={"PageSize": 4}) for o in p.get("Contents", [])]
    assert v1 == order
    v1_delimited = list(s3.get_paginator("list_objects").paginate(Bucket=bucket, Delimiter="/",
                                                                   PaginationConfig={"PageSize": 2}))
    assert sorted(p["Prefix"] for page in v1_delimited for p in page.get("CommonPrefixes", [])) == ["a/", "é/"]
    assert s3.list_objects_v2(Bucket=bucket, MaxKeys=0)["KeyCount"] == 0


# -- bodies as botocore sends them -----------------------------------------------------------------------------
def replayed_over_http(srv: MoorageServer) -> Any:
    """An s3 client for https://…: botocore then sends aws-chunked bodies with a CRC32 trailer
    (STREAMING-UNSIGNED-PAYLOAD-TRAILER); each request is sent as signed, over plain http."""
    client = s3_client(srv, endpoint=srv.url.replace("http://", "https://"))
    session = URLLib3Session()
    client.meta.events.register("before-send.s3", lambda request, **_: session.send(AWSPreparedRequest(
        request.method, request.url.replace("https://", "http://", 1), request.headers, request.body,
        request.stream_output)))
    return client


def test_aws_chunked_bodies_with_checksum_trailers(server: MoorageServer, s3: Any, bucket: str) -> None:
    https = replayed_over_http(server)
    sent: list[dict[str, Any]] = []
    https.meta.events.register_first("before-send.s3", lambda request, **_: sent.append(dict(request.headers)))
    data = os.urandom(3 * MiB + 17)
    https.put_object(Bucket=bucket, Key="chunked", Body=io.BytesIO(data))
    assert sent[-1]["X-Amz-Content-SHA256"] == b"STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert sent[-1]["X-Amz-Trailer"] == b"x-amz-checksum-crc32"
    assert s3.get_object(Bucket=bucket, Key="chunked")["Body"].read() == data
    upload = https.create_multipart_upload(Bucket=bucket, Key="chunked-mp")
    part = https.upload_part(Bucket=bucket, Key="chunked-mp", UploadId=upload["UploadId"], PartNumber=1, Body=data)
    assert part["ETag"] == f'"{hashlib.md5(data).hexdigest()}"'
    https.complete_multipart_upload(Bucket=bucket, Key="chunked-mp", UploadId=upload["UploadId"],
                                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})
    assert s3.get_object(Bucket=bucket, Key="chunked-mp")["Body"].read() == data

    def corrupt(request: Any, **_: Any) -> None:  # one byte of the body changed on the way: CRC32 no longer matches
        raw = request.body.read()
        request.body = raw.replace(data[100:104], bytes(4), 1)
        request.headers["Content-Length"] = str(len(request.body))
        del request.headers["Transfer-Encoding"]

    https.meta.events.register_first("before-send.s3", corrupt)
    assert code(lambda: https.put_object(Bucket=bucket, Key="corrupt", Body=io.BytesIO(data))) == ("BadDigest", 400)
    assert code(lambda: s3.head_object(Bucket=bucket, Key="corrupt")) == ("404", 404)


def test_payload_hash_and_content_md5_are_checked(server: MoorageServer, s3: Any, bucket: str) -> None:
    def tamper(request: Any, **_: Any) -> None:
        request.body = b"Xello"

    s3_tampered = s3_client(server)
    s3_tampered.meta.events.register_first("before-send.s3", tamper)
    assert code(lambda: s3_tampered.put_object(Bucket=bucket, Key="t", Body=b"hello")) == \
        ("XAmzContentSHA256Mismatch", 400)
    assert code(lambda: s3.put_object(Bucket=bucket, Key="t", Body=b"hello", ContentMD5="AAAAAAAAAAAAAAAAAAAAAA==",
                                      ChecksumAlgorithm="SHA256")) == ("BadDigest", 400)
    assert code(lambda: s3.head_object(Bucket=bucket, Key="t")) == ("404", 404)


def test_signatures(server: MoorageServer, bucket: str) -> None:
    assert code(lambda: s3_client(server, secret="wrong").list_objects_v2(Bucket=bucket)) == \
        ("SignatureDoesNotMatch", 403)
    assert code(lambda: s3_client(server, key="AKIDUNKNOWN").list_objects_v2(Bucket=bucket)) == \
        ("InvalidAccessKeyId", 403)
    status, _, body = http_request("GET", s3_client(server).generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "k"}))  # boto3's default: the old signature
    assert status == 403 and b"signature_version='s3v4'" in body
    s3 = boto3.session.Session().client("s3", endpoint_url=server.url, region_name=REGION,
                                        aws_access_key_id=server.access_key_id,
                                        aws_secret_access_key=server.secret_access_key,
                                        config=botocore.config.Config(signature_version="s3v4"))
    put_url = s3.generate_presigned_url("put_object", Params={"Bucket": bucket, "Key": "presigned"}, ExpiresIn=60)
    request = urllib.request.Request(put_url, data=b"from a presigned URL", method="PUT")
    with urllib.request.urlopen(request, timeout=30) as answer:
        assert answer.status == 200
    get_url = s3.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "presigned"}, ExpiresIn=60)
    with urllib.request.urlopen(get_url, timeout=30) as answer:
        assert answer.read() == b"from a presigned URL"
    status, _, body = http_request("GET", get_url.replace("presigned", "presigneX"))
    assert status == 403 and b"SignatureDoesNotMatch" in body


# -- multipart ---------------------------------------------------------------------------------------------------
def test_multipart_uploads_and_their_errors(s3: Any, bucket: str) -> None:
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key="mp", ContentType="application/x-tar")["UploadId"]
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket)["Uploads"]] == [upload_id]
    first, second = os.urandom(5 * MiB), b"the end"
    e1 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=1, Body=first)["ETag"]
    e2 = s3.upload_part(Bucket=bucket, Key="mp", UploadId=upload_id, PartNumber=2, Body=second)["ETag"]
    assert [(p["PartNumber"], p["Size"]) for p in s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)["Parts"]] \
        == [(1, 5 * MiB), (2, len(second))]

    def complete(parts: list[tuple[int, str]]) -> Any:
        return s3.complete_multipart_upload(Bucket=bucket, Key="mp", UploadId=upload_id, MultipartUpload={
            "Parts": [{"PartNumber": n, "ETag": e} for n, e in parts]})

    assert code(lambda: complete([(2, e2), (1, e1)])) == ("InvalidPartOrder", 400)
    assert code(lambda: complete([(1, e1), (3, e2)])) == ("InvalidPart", 400)
    assert code(lambda: complete([(1, e2), (2, e2)])) == ("InvalidPart", 400)
    assert code(lambda: s3.upload_part(Bucket=bucket, Key="mp", UploadId="no-such-upload", PartNumber=1,
                                       Body=b"x")) == ("NoSuchUpload", 404)
    done = complete([(1, e1), (2, e2)])
    expected = hashlib.md5(hashlib.md5(first).digest() + hashlib.md5(second).digest()).hexdigest()
    assert done["ETag"] == f'"{expected}-2"'
    got = s3.get_object(Bucket=bucket, Key="mp")
    assert got["Body"].read() == first + second and got["ContentType"] == "application/x-tar"
    assert code(lambda: s3.list_parts(Bucket=bucket, Key="mp", UploadId=upload_id)) == ("NoSuchUpload", 404)
    # UploadPartCopy: a range of an object as a part.
    other = s3.create_multipart_upload(Bucket=bucket, Key="mp2")["UploadId"]
    copied = s3.upload_part_copy(Bucket=bucket, Key="mp2", UploadId=other, PartNumber=1,
                                 CopySource={"Bucket": bucket, "Key": "mp"}, CopySourceRange="bytes=0-99")
    assert copied["CopyPartResult"]["ETag"] == f'"{hashlib.md5(first[:100]).hexdigest()}"'
    s3.abort_multipart_upload(Bucket=bucket, Key="mp2", UploadId=other)
    assert code(lambda: s3.abort_multipart_upload(Bucket=bucket, Key="mp2", UploadId=other)) == ("NoSuchUpload", 404)


def test_100_mb_upload_and_download_with_bounded_server_memory(server: MoorageServer, s3: Any, bucket: str,
                                                                tmp_path: Path) -> None:
    source, target = tmp_path / "big.bin", tmp_path / "back.bin"
    digest = hashlib.sha256()
    with open(source, "wb") as fh:
        for _ in range(100):
            block = os.urandom(MiB)
            digest.update(block)
            fh.write(block)
    s3.upload_file(str(tmp_path / "big.bin"), bucket, "warm-up", Config=TransferConfig(multipart_threshold=200 * MiB))
    assert server.pid is not None
    process = psutil.Process(server.pid)
    baseline, peak, stop = process.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        config = TransferConfig(multipart_threshold=8 * MiB, multipart_chunksize=8 * MiB, max_concurrency=8)
        s3.upload_file(str(source), bucket, "big.bin", Config=config)
        s3.download_file(bucket, "big.bin", str(target), Config=config)
    finally:
        stop.set()
        sampler.join(10)
    growth = peak[0] - baseline
    assert growth < 64 * MiB, f"the server grew by {growth / MiB:.1f} MiB moving 100 MiB"
    back = hashlib.sha256()
    with open(target, "rb") as fh:
        while block := fh.read(MiB):
            back.update(block)
    assert back.hexdigest() == digest.hexdigest()
    head = s3.head_object(Bucket=bucket, Key="big.bin")
    assert head["ContentLength"] == 100 * MiB and head["ETag"].endswith('-13"')


def test_concurrent_readers_never_see_a_partial_object(s3: Any, bucket: str) -> None:
    size, rounds, stop = 2 * MiB, 12, threading.Event()
    s3.put_object(Bucket=bucket, Key="hot", Body=b"\x00" * size)
    torn: list[str] = []

    def read() -> None:
        reader = s3_client_like(s3)
        while not stop.is_set():
            data = reader.get_object(Bucket=bucket, Key="hot")["Body"].read()
            if len(data) != size or data.count(data[:1]) != size:
                torn.append(f"{len(data)} bytes starting {data[:4]!r}")

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    try:
        for version in range(1, rounds):
            s3.put_object(Bucket=bucket, Key="hot", Body=bytes([version]) * size)
    finally:
        stop.set()
        for thread in readers:
            thread.join(30)
    assert torn == []


def s3_client_like(s3: Any) -> Any:
    creds = s3._request_signer._credentials
    return boto3.session.Session().client("s3", endpoint_url=s3.meta.endpoint_url, region_name=REGION,
                                          aws_access_key_id=creds.access_key, aws_secret_access_key=creds.secret_key)


# -- the same store ----------------------------------------------------------------------------------------------
def test_objects_and_uploads_survive_a_restart(fresh_server: Callable[..., MoorageServer]) -> None:
    srv = fresh_server()
    s3 = s3_client(srv)
    s3.create_bucket(Bucket="keep")
    s3.put_object(Bucket="keep", Key="model.tar.gz", Body=b"kept", Metadata={"m": "1"}, ContentType="x/y")
    upload_id = s3.create_multipart_upload(Bucket="keep", Key="later")["UploadId"]
    e1 = s3.upload_part(Bucket="keep", Key="later", UploadId=upload_id, PartNumber=1, Body=b"part one")["ETag"]
    srv.stop()
    srv.start(timeout=90)
    s3 = s3_client(srv)
    got = s3.get_object(Bucket="keep", Key="model.tar.gz")
    assert (got["Body"].read(), got["Metadata"], got["ContentType"]) == (b"kept", {"m": "1"}, "x/y")
    assert [p["ETag"] for p in s3.list_parts(Bucket="keep", Key="later", UploadId=upload_id)["Parts"]] == [e1]
    s3.complete_multipart_upload(Bucket="keep", Key="later", UploadId=upload_id,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}]})
    assert s3.get_object(Bucket="keep", Key="later")["Body"].read() == b"part one"


def test_a_model_uploaded_through_the_s3_api_serves_an_endpoint(server: MoorageServer, s3: Any, bucket: str,
                                                                deployer: Deployer, tmp_path: Path,
                                                                classifier: tuple[Any, Any]) -> None:
    model, X = classifier
    s3.upload_file(str(pack_model(tmp_path / "clf", model)), bucket, "models/clf/model.tar.gz")
    name = deployer.deploy("s3api", f"s3://{bucket}/models/clf/model.tar.gz")
    assert_predictions(predict(server.rt(), name, X[:3]), model.predict(X[:3]))
    assert (server.home / "objects" / bucket / "models" / "clf" / "model.tar.gz").is_file()


def test_a_transform_job_reads_and_writes_the_store(server: MoorageServer, sm: Any, s3: Any, bucket: str,
                                                    deployer: Deployer, tmp_path: Path,
                                                    classifier: tuple[Any, Any]) -> None:
    model, X = classifier
    s3.upload_file(str(pack_model(tmp_path / "clf", model)), bucket, "model.tar.gz")
    name = new_name("s3tj")
    deployer.model(name, f"s3://{bucket}/model.tar.gz")
    s3.put_object(Bucket=bucket, Key="in/part-1.csv", Body="\n".join(csv_rows(X[:5])).encode() + b"\n")
    s3.put_object(Bucket=bucket, Key="in/deeper/part-2.csv", Body="\n".join(csv_rows(X[5:8])).encode() + b"\n")
    desc = run_job(sm, name=name, model=name, input_uri=f"s3://{bucket}/in/", output_path=f"s3://{bucket}/out",
                   output={"Accept": "text/csv"})
    assert desc["TransformJobStatus"] == "Completed", desc.get("FailureReason")
    outputs = {o["Key"]: s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read().decode()
               for o in s3.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]}
    assert outputs == {"out/part-1.csv.out": expected_lines(model, X[:5]),
                       "out/deeper/part-2.csv.out": expected_lines(model, X[5:8])}


@pytest.mark.skipif(shutil.which("aws") is None, reason="the aws CLI is not installed")
def test_aws_cli_cp_and_ls(server: MoorageServer, bucket: str, tmp_path: Path) -> None:
    env = {**os.environ, "AWS_ACCESS_KEY_ID": server.access_key_id, "AWS_SECRET_ACCESS_KEY": server.secret_access_key,
           "AWS_DEFAULT_REGION": REGION, "AWS_CONFIG_FILE": str(tmp_path / "none"),
           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none")}
    env.pop("AWS_PROFILE", None)
    source = tmp_path / "upload.txt"
    source.write_bytes(b"through the aws CLI\n" * 1000)

    def aws(*args: str) -> str:
        done = subprocess.run(["aws", "--endpoint-url", server.url, "s3", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    aws("cp", str(source), f"s3://{bucket}/cli/upload.txt")
    assert "upload.txt" in aws("ls", f"s3://{bucket}/cli/")
    aws("cp", f"s3://{bucket}/cli/upload.txt", str(tmp_path / "back.txt"))
    assert (tmp_path / "back.txt").read_bytes() == source.read_bytes()


def test_virtual_host_addressing_for_bucket_dot_localhost(server: MoorageServer, s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="dir/k.txt", Body=b"virtual")
    host = f"{bucket}.localhost:{server.port}"
    request = AWSRequest(method="GET", url=f"http://{host}/dir/k.txt",
                         headers={"X-Amz-Content-SHA256": hashlib.sha256(b"").hexdigest()})
    S3SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), "s3", REGION).add_auth(request)
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # *.localhost need not resolve
    try:
        connection.request("GET", "/dir/k.txt", headers={**dict(request.headers.items()), "Host": host})
        answer = connection.getresponse()
        assert (answer.status, answer.read()) == (200, b"virtual")
    finally:
        connection.close()


class _ChunkSignedAuth(S3SigV4Auth):
    """botocore's S3 signer declaring a chunk-signed body (STREAMING-AWS4-HMAC-SHA256-PAYLOAD), as the
    AWS CLI v2, the Java and Go SDKs send; the chunks are then signed below by the spec."""

    def payload(self, request: Any) -> str:
        return "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


def _chunk_signed_body(auth: _ChunkSignedAuth, request: AWSRequest, data: bytes, chunk: int,
                       forge_at: int = -1) -> bytes:
    import hmac

    timestamp = request.context["timestamp"]
    scope = auth.credential_scope(request)
    key = auth._sign(("AWS4" + auth.credentials.secret_key).encode(), timestamp[:8], hex=False)
    for part in (auth._region_name, "s3", "aws4_request"):
        key = auth._sign(key, part, hex=False)
    previous = request.headers["Authorization"].rsplit("Signature=", 1)[1]
    out, pieces = b"", [data[i:i + chunk] for i in range(0, len(data), chunk)] + [b""]
    for index, piece in enumerate(pieces):
        text = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", timestamp, scope, previous, hashlib.sha256(b"").hexdigest(),
                          hashlib.sha256(piece).hexdigest()])
        previous = hmac.new(key, text.encode(), "sha256").hexdigest()
        signature = "0" * 64 if index == forge_at else previous
        out += f"{len(piece):x};chunk-signature={signature}\r\n".encode() + piece + b"\r\n"
    return out


def test_chunk_signed_bodies(server: MoorageServer, s3: Any, bucket: str) -> None:
    data = os.urandom(200_000)

    def send(key: str, forge_at: int = -1) -> tuple[int, bytes]:
        url = f"{server.url}/{bucket}/{key}"
        encoded_length = len(_chunk_signed_body(_ChunkSignedAuth(Credentials("a", "b"), "s3", REGION),
                                                _dry(url), data, 65536))
        request = AWSRequest(method="PUT", url=url, headers={
            "Content-Encoding": "aws-chunked", "X-Amz-Decoded-Content-Length": str(len(data)),
            "Content-Length": str(encoded_length)})
        auth = _ChunkSignedAuth(Credentials(server.access_key_id, server.secret_access_key), "s3", REGION)
        auth.add_auth(request)
        body = _chunk_signed_body(auth, request, data, 65536, forge_at)
        status, _, answer = http_request("PUT", url, body=body, headers=dict(request.headers.items()))
        return status, answer

    assert send("signed-chunks")[0] == 200
    assert s3.get_object(Bucket=bucket, Key="signed-chunks")["Body"].read() == data
    status, answer = send("forged-chunk", forge_at=2)
    assert status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in answer
    assert code(lambda: s3.head_object(Bucket=bucket, Key="forged-chunk")) == ("404", 404)


def _dry(url: str) -> AWSRequest:
    request = AWSRequest(method="PUT", url=url, headers={})
    _ChunkSignedAuth(Credentials("a", "b"), "s3", REGION).add_auth(request)
    return request
