"""The object store behind s3:// and the S3 API: files under a root, whole or not at all, as S3 sees them.

Also the S3 request bodies (aws-chunked with chunk signatures, checksum trailers as botocore writes
them, payload hashes, Content-MD5), checked against AWS's own worked example and botocore's encoder.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from moorage.api.s3.bodies import BodyDecoder, MemorySink
from moorage.api.sigv4 import Principal, S3Signature, SigV4Verifier
from moorage.store import locations
from moorage.store.objects import (
    MIN_PART_SIZE,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreFileSystem,
    check_bucket_name,
    multipart_etag,
)


@pytest.fixture
def store(tmp_path: Path) -> ObjectStore:
    store = ObjectStore(tmp_path / "objects").ensure()
    store.create_bucket("bkt")
    return store


def put(store: ObjectStore, key: str, data: bytes, bucket: str = "bkt", **options: object) -> None:
    staged = store.stage()
    staged.write(data)
    store.commit(staged, bucket, key, **options)  # type: ignore[arg-type]


def code_of(call: object) -> str:
    with pytest.raises(ObjectStoreError) as caught:
        call()  # type: ignore[operator]
    return caught.value.code


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


# -- names ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["ab", "Bucket", "a_b", "-ab", "ab-", "a..b", "192.168.0.1", "xn--ab", "ab-s3alias",
                                  "a" * 64, ".moorage"])
def test_bucket_names_follow_s3s_rules(name: str) -> None:
    assert code_of(lambda: check_bucket_name(name)) == "InvalidBucketName"


def test_the_runtime_paths_bucket_name_is_reserved_with_a_reason() -> None:
    with pytest.raises(ObjectStoreError, match="reserved by moorage: /endpoints/") as caught:
        check_bucket_name("endpoints")
    assert caught.value.code == "InvalidBucketName"
    check_bucket_name("sagemaker-us-east-1-000000000000")
    check_bucket_name("my.bucket-1")


@pytest.mark.parametrize(("key", "code"), [
    ("../escape", "InvalidArgument"), ("a/../../escape", "InvalidArgument"), ("./a", "InvalidArgument"),
    ("/etc/passwd", "InvalidArgument"), ("a//b", "InvalidArgument"), ("folder/", "InvalidArgument"),
    ("a\x00b", "InvalidArgument"), ("k" * 1025, "KeyTooLongError"), ("é" * 513, "KeyTooLongError"),
    ("s" * 256, "KeyTooLongError"), ("", "InvalidArgument"),
])
def test_keys_that_would_leave_the_store_or_name_no_file_are_refused(store: ObjectStore, key: str, code: str) -> None:
    before = files_under(store.root.parent)
    assert code_of(lambda: put(store, key, b"x")) == code
    assert files_under(store.root.parent) == before  # nothing written anywhere, the temporary file removed


def test_a_key_of_1024_utf8_bytes_is_fine(store: ObjectStore) -> None:
    key = "/".join(["k" * 255] * 4)[:1024]
    put(store, key, b"x")
    assert store.head("bkt", key).size == 1


# -- objects ------------------------------------------------------------------------------------------------
def test_an_object_is_a_plain_file_with_s3s_etag_and_its_metadata(store: ObjectStore) -> None:
    put(store, "models/m.tar.gz", b"hello", content_type="application/gzip", metadata={"owner": "me"},
        headers={"content-disposition": "attachment"})
    assert (store.root / "bkt" / "models" / "m.tar.gz").read_bytes() == b"hello"
    info = store.head("bkt", "models/m.tar.gz")
    assert (info.etag, info.size) == (hashlib.md5(b"hello").hexdigest(), 5)
    assert (info.content_type, info.metadata, info.headers) == ("application/gzip", {"owner": "me"},
                                                                {"content-disposition": "attachment"})
    assert files_under(store.root / "bkt") == {"models/m.tar.gz"}  # no sidecar among the keys


def test_files_written_by_anyone_else_list_and_head_with_a_computed_etag(store: ObjectStore) -> None:
    put(store, "a.csv", b"first", content_type="text/csv")
    (store.root / "bkt" / "a.csv").write_bytes(b"replaced by hand")  # the sidecar no longer describes it
    (store.root / "bkt" / "out").mkdir()
    (store.root / "bkt" / "out" / "b.out").write_bytes(b"from a job")
    info = store.head("bkt", "a.csv")
    assert (info.etag, info.content_type) == (hashlib.md5(b"replaced by hand").hexdigest(), "binary/octet-stream")
    listed = {o.key: o.etag for o in store.list("bkt").objects}
    assert listed == {"a.csv": info.etag, "out/b.out": hashlib.md5(b"from a job").hexdigest()}


def test_a_key_cannot_be_both_an_object_and_a_prefix_and_nothing_is_lost(store: ObjectStore) -> None:
    put(store, "a", b"object a")
    put(store, "d/e", b"object d/e")
    assert code_of(lambda: put(store, "a/b", b"x")) == "ParentIsObject"
    assert code_of(lambda: put(store, "d", b"x")) == "ObjectExistsAsDirectory"
    assert store.open("bkt", "a")[0].read() == b"object a"
    assert store.open("bkt", "d/e")[0].read() == b"object d/e"
    assert not any(store.tmp.iterdir())


def test_missing_buckets_keys_and_existing_buckets(store: ObjectStore) -> None:
    assert code_of(lambda: store.head("nobucket", "k")) == "NoSuchBucket"
    assert code_of(lambda: store.head("bkt", "k")) == "NoSuchKey"
    assert code_of(lambda: put(store, "k", b"x", bucket="nobucket")) == "NoSuchBucket"
    assert code_of(lambda: store.create_bucket("bkt")) == "BucketAlreadyOwnedByYou"
    put(store, "k", b"x")
    assert code_of(lambda: store.delete_bucket("bkt")) == "BucketNotEmpty"
    store.delete("bkt", "k")
    store.delete("bkt", "k")  # deleting what is not there is no error, as on S3
    store.delete_bucket("bkt")
    assert store.list_buckets() == []


def test_if_none_match_refuses_to_replace(store: ObjectStore) -> None:
    put(store, "k", b"one", if_none_match=True)
    assert code_of(lambda: put(store, "k", b"two", if_none_match=True)) == "PreconditionFailed"
    assert store.open("bkt", "k")[0].read() == b"one"


def test_readers_see_whole_objects_only_while_a_writer_replaces_it(store: ObjectStore) -> None:
    size, versions, stop = 256 * 1024, 40, threading.Event()
    put(store, "hot", b"\x00" * size)
    torn: list[bytes] = []

    def read() -> None:
        while not stop.is_set():
            fh, info = store.open("bkt", "hot")
            with fh:
                data = fh.read()
            if len(data) != size or data.count(data[:1]) != size or info.size != size:
                torn.append(data[:8])

    readers = [threading.Thread(target=read) for _ in range(3)]
    for thread in readers:
        thread.start()
    for version in range(1, versions):
        put(store, "hot", bytes([version]) * size)
    stop.set()
    for thread in readers:
        thread.join(30)
    assert torn == []
    assert store.open("bkt", "hot")[0].read() == bytes([versions - 1]) * size


# -- listing ------------------------------------------------------------------------------------------------
def test_listing_is_in_utf8_byte_order_across_folders(store: ObjectStore) -> None:
    keys = ["a/b", "a-c", "a0", "a/a/z", "b", "é", "z/y"]
    for key in keys:
        put(store, key, key.encode())
    assert [o.key for o in store.list("bkt").objects] == sorted(keys, key=lambda k: k.encode())


def test_prefix_delimiter_and_pages(store: ObjectStore) -> None:
    for key in ["logs/2026/01/a", "logs/2026/02/b", "logs/x", "logs-old/y", "top", "empty-dir-only/f"]:
        put(store, key, b".")
    (store.root / "bkt" / "logs" / "nothing").mkdir()  # an empty folder is no prefix
    page = store.list("bkt", delimiter="/")
    assert ([o.key for o in page.objects], page.common_prefixes) == (["top"], ["empty-dir-only/", "logs-old/",
                                                                               "logs/"])
    page = store.list("bkt", prefix="logs/", delimiter="/")
    assert ([o.key for o in page.objects], page.common_prefixes) == (["logs/x"], ["logs/2026/"])
    page = store.list("bkt", prefix="logs/20", delimiter="/")
    assert page.common_prefixes == ["logs/2026/"]
    # A delimiter other than "/" rolls up keys, not folders.
    page = store.list("bkt", prefix="logs", delimiter="-")
    assert (page.common_prefixes, len(page.objects)) == (["logs-"], 3)
    # Pages of two, each starting past the last key or common prefix of the one before.
    seen, after, is_prefix = [], "", False
    while True:
        page = store.list("bkt", delimiter="/", after=after, max_keys=2, after_is_prefix=is_prefix)
        seen += sorted([o.key for o in page.objects] + page.common_prefixes)
        if not page.truncated:
            break
        assert page.last is not None
        after, is_prefix = page.last, page.last in page.common_prefixes
    assert seen == ["empty-dir-only/", "logs-old/", "logs/", "top"]
    all_keys = []
    after = ""
    while True:
        page = store.list("bkt", after=after, max_keys=2)
        all_keys += [o.key for o in page.objects]
        if not page.truncated:
            break
        after = page.last or ""
    assert all_keys == [o.key for o in store.list("bkt").objects] and len(all_keys) == 6
    assert [o.key for o in store.list("bkt", prefix="../").objects] == []


# -- multipart ----------------------------------------------------------------------------------------------
def upload_parts(store: ObjectStore, upload_id: str, parts: dict[int, bytes], key: str = "big") -> dict[int, str]:
    etags = {}
    for number, data in parts.items():
        staged = store.stage()
        staged.write(data)
        etags[number] = store.upload_part("bkt", key, upload_id, number, staged).etag
    return etags


def test_multipart_joins_parts_with_s3s_etag_and_cleans_up(store: ObjectStore) -> None:
    upload = store.create_upload("bkt", "big", content_type="application/x-tar", metadata={"m": "1"})
    first, second = os.urandom(MIN_PART_SIZE), b"tail"
    etags = upload_parts(store, upload.upload_id, {1: first, 2: second, 3: b"not listed"})
    info = store.complete_upload("bkt", "big", upload.upload_id, [(1, f'"{etags[1]}"'), (2, etags[2])])
    assert info.etag == multipart_etag([etags[1], etags[2]])
    assert info.etag == hashlib.md5(hashlib.md5(first).digest() + hashlib.md5(second).digest()).hexdigest() + "-2"
    fh, head = store.open("bkt", "big")
    with fh:
        assert fh.read() == first + second
    assert (head.etag, head.content_type, head.metadata, head.parts) == (info.etag, "application/x-tar", {"m": "1"}, 2)
    assert list(store.uploads.iterdir()) == [] and list(store.tmp.iterdir()) == []
    assert code_of(lambda: store.list_parts("bkt", "big", upload.upload_id)) == "NoSuchUpload"


def test_completing_with_parts_missing_out_of_order_or_too_small_keeps_the_upload(store: ObjectStore) -> None:
    upload = store.create_upload("bkt", "big")
    etags = upload_parts(store, upload.upload_id, {1: b"a" * MIN_PART_SIZE, 2: b"small", 3: b"end"})
    uid = upload.upload_id
    assert code_of(lambda: store.complete_upload("bkt", "big", uid, [(2, etags[2]), (1, etags[1])])) == \
        "InvalidPartOrder"
    assert code_of(lambda: store.complete_upload("bkt", "big", uid, [(1, etags[1]), (4, etags[1])])) == "InvalidPart"
    assert code_of(lambda: store.complete_upload("bkt", "big", uid, [(1, etags[2])])) == "InvalidPart"
    assert code_of(lambda: store.complete_upload("bkt", "big", uid, [(2, etags[2]), (3, etags[3])])) == \
        "EntityTooSmall"
    assert code_of(lambda: store.complete_upload("bkt", "big", uid, [])) == "MalformedXML"
    assert code_of(lambda: store.head("bkt", "big")) == "NoSuchKey"
    assert [p.number for p in store.list_parts("bkt", "big", uid)[1]] == [1, 2, 3]
    assert code_of(lambda: store.list_parts("bkt", "other-key", uid)) == "NoSuchUpload"
    store.abort_upload("bkt", "big", uid)
    assert code_of(lambda: store.abort_upload("bkt", "big", uid)) == "NoSuchUpload"
    assert list(store.uploads.iterdir()) == []


def test_an_incomplete_upload_survives_a_restart(store: ObjectStore) -> None:
    upload = store.create_upload("bkt", "big")
    etags = upload_parts(store, upload.upload_id, {1: b"p" * MIN_PART_SIZE, 2: b"q"})
    os.unlink(store.uploads / upload.upload_id / "00002.json")  # a crash between a part and its record
    again = ObjectStore(store.root)  # what a restarted server opens
    assert [u.upload_id for u in again.list_uploads("bkt")] == [upload.upload_id]
    parts = again.list_parts("bkt", "big", upload.upload_id)[1]
    assert [(p.number, p.etag, p.size) for p in parts] == [(1, etags[1], MIN_PART_SIZE), (2, etags[2], 1)]
    again.complete_upload("bkt", "big", upload.upload_id, [(1, etags[1]), (2, etags[2])])
    assert again.head("bkt", "big").size == MIN_PART_SIZE + 1


# -- s3:// in every process ------------------------------------------------------------------------------------
def test_s3_urls_resolve_to_the_store_here_and_in_a_child_process(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "objects"
    monkeypatch.setenv("MOORAGE_OBJECT_STORE", "local")
    monkeypatch.setenv("MOORAGE_OBJECT_STORE_ROOT", str(root))
    fs, path = locations.filesystem("s3://data/in/rows.csv")
    assert isinstance(fs, ObjectStoreFileSystem) and path == "data/in/rows.csv"
    with fs.open(path, "wb") as fh:
        fh.write(b"1,2\n")
    assert (root / "data" / "in" / "rows.csv").read_bytes() == b"1,2\n"
    assert fs.find("data/", detail=False) == ["data/in/rows.csv"]
    child = subprocess.run([sys.executable, "-c", "from moorage.store.locations import open_url\n"
                            "print(open_url('s3://data/in/rows.csv').read().decode(), end='')"],
                           capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert child.stdout == "1,2\n", child.stderr
    with pytest.raises(ObjectStoreError, match=r"'\.\.' segment"):
        locations.open_url("s3://data/../../etc/passwd")
    monkeypatch.setenv("MOORAGE_OBJECT_STORE", "external")
    assert not isinstance(locations.filesystem("s3://data/in/rows.csv")[0], ObjectStoreFileSystem)


def test_a_write_through_the_filesystem_that_fails_leaves_no_object(tmp_path: Path) -> None:
    fs = ObjectStoreFileSystem(str(tmp_path / "objects"))
    with pytest.raises(RuntimeError), fs.open("out/part.out", "wb") as fh:
        fh.write(b"half")
        raise RuntimeError("the job stopped")
    assert not fs.exists("out/part.out")
    fs.pipe_file("out/part.out", b"whole")  # moorage's own writers may name a bucket nobody created
    assert fs.cat_file("out/part.out") == b"whole"
    assert ObjectStore(tmp_path / "objects").head("out", "part.out").etag == hashlib.md5(b"whole").hexdigest()


# -- request bodies -------------------------------------------------------------------------------------------
# AWS's worked example of a chunk-signed upload ("Signature Calculations for the Authorization Header:
# Transferring Payload in Multiple Chunks", Amazon S3 API Reference).
EXAMPLE_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
EXAMPLE_SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
EXAMPLE_CHUNKS = [(65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"),
                  (1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"),
                  (0, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9")]


def example_signature() -> S3Signature:
    verifier = SigV4Verifier({"AKIAIOSFODNN7EXAMPLE": EXAMPLE_SECRET}.get)
    authorization = ("AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,"
                     "SignedHeaders=content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;"
                     f"x-amz-decoded-content-length;x-amz-storage-class,Signature={EXAMPLE_SEED}")
    headers = [(b"host", b"s3.amazonaws.com"), (b"x-amz-date", b"20130524T000000Z"),
               (b"x-amz-storage-class", b"REDUCED_REDUNDANCY"), (b"authorization", authorization.encode()),
               (b"x-amz-content-sha256", b"STREAMING-AWS4-HMAC-SHA256-PAYLOAD"), (b"content-encoding", b"aws-chunked"),
               (b"x-amz-decoded-content-length", b"66560"), (b"content-length", b"66824")]
    now = dt.datetime(2013, 5, 24, tzinfo=dt.UTC).timestamp()
    return verifier.verify_s3("PUT", b"/examplebucket/chunkObject.txt", b"", headers, now=now)


def example_body(signatures: list[str] | None = None) -> bytes:
    out = b""
    for (size, _), given in zip(EXAMPLE_CHUNKS, signatures or [s for _, s in EXAMPLE_CHUNKS], strict=True):
        out += f"{size:x};chunk-signature={given}\r\n".encode() + b"a" * size + b"\r\n"
    return out


def decode(body: bytes, headers: dict[str, str], signed: S3Signature, pieces: int = 7) -> tuple[bytes, dict[str, str]]:
    sink = MemorySink(1 << 24)
    decoder = BodyDecoder(sink, headers, signed, 1 << 24)
    step = max(1, len(body) // pieces)
    for start in range(0, len(body), step):  # arbitrary block boundaries, mid-header and mid-chunk
        decoder.feed(body[start:start + step])
    return bytes(sink.data), decoder.finish()


def test_aws_chunked_with_chunk_signatures_as_in_aws_example() -> None:
    signed = example_signature()
    headers = {"x-amz-decoded-content-length": "66560", "content-encoding": "aws-chunked"}
    body = example_body()
    assert len(body) == 66824
    data, _ = decode(body, headers, signed)
    assert data == b"a" * 66560
    forged = [s for _, s in EXAMPLE_CHUNKS]
    forged[1] = "0" * 64
    with pytest.raises(ObjectStoreError) as caught:
        decode(example_body(forged), headers, example_signature())
    assert caught.value.code == "SignatureDoesNotMatch"
    tampered = body.replace(b"a" * 1024 + b"\r\n0;", b"b" + b"a" * 1023 + b"\r\n0;")
    with pytest.raises(ObjectStoreError, match="chunk"):
        decode(tampered, headers, example_signature())


def unsigned(payload: str) -> S3Signature:
    return S3Signature(Principal("AKID", "us-east-1", "s3"), payload, b"k", "20260101T000000Z", "scope", "sig")


def botocore_trailer_body(data: bytes) -> bytes:
    # Exactly what botocore sends over https for PutObject and UploadPart by default (a CRC32 trailer).
    return AwsChunkedWrapper(io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32",
                             chunk_size=1000).read()


def test_botocores_unsigned_trailer_checksum_is_verified() -> None:
    data = os.urandom(5000)
    headers = {"x-amz-trailer": "x-amz-checksum-crc32", "x-amz-decoded-content-length": "5000",
               "content-encoding": "aws-chunked"}
    body = botocore_trailer_body(data)
    decoded, checksums = decode(body, headers, unsigned("STREAMING-UNSIGNED-PAYLOAD-TRAILER"))
    assert decoded == data and set(checksums) == {"CRC32"}
    wrong = body[:-12] + base64.b64encode(b"\x00\x00\x00\x00") + b"\r\n\r\n"
    with pytest.raises(ObjectStoreError) as caught:
        decode(wrong, headers, unsigned("STREAMING-UNSIGNED-PAYLOAD-TRAILER"))
    assert caught.value.code == "BadDigest"
    with pytest.raises(ObjectStoreError) as caught:
        decode(body[:-40], headers, unsigned("STREAMING-UNSIGNED-PAYLOAD-TRAILER"))
    assert caught.value.code == "IncompleteBody"


def test_payload_hash_content_md5_checksum_header_and_length_are_checked() -> None:
    data = b"payload"
    sha = hashlib.sha256(data).hexdigest()
    md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    crc = base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()
    good = {"content-length": "7", "content-md5": md5, "x-amz-checksum-crc32": crc}
    assert decode(data, good, unsigned(sha))[1] == {"CRC32": crc}
    cases = [
        (dict(good), unsigned("0" * 64), "XAmzContentSHA256Mismatch"),
        ({**good, "content-md5": base64.b64encode(b"x" * 16).decode()}, unsigned(sha), "BadDigest"),
        ({**good, "content-md5": "not base64"}, unsigned(sha), "InvalidDigest"),
        ({**good, "x-amz-checksum-crc32": "AAAAAA=="}, unsigned("UNSIGNED-PAYLOAD"), "BadDigest"),
        ({**good, "content-length": "8"}, unsigned(sha), "IncompleteBody"),
        ({"content-length": str(1 << 25)}, unsigned("UNSIGNED-PAYLOAD"), "EntityTooLarge"),
    ]
    for headers, signed, code in cases:
        with pytest.raises(ObjectStoreError) as caught:
            decode(data, headers, signed)
        assert caught.value.code == code, (headers, code)
