"""The object store behind ``s3://`` and the S3 API on moorage's port: the home's files, as S3 objects.

An object ``s3://BUCKET/KEY`` is the plain file ``ROOT/BUCKET/KEY`` (``ROOT`` is ``HOME/objects``
unless ``MOORAGE_OBJECT_STORE_ROOT`` says), so any process on the machine reads the same bytes,
through this module's fsspec filesystem (``ObjectStoreFileSystem``, what ``store.locations`` hands
out for ``s3://``) or with plain file calls. What is not a key lives under ``ROOT/.moorage/``,
which no bucket can be named (a bucket name starts with a letter or a digit):

* ``tmp/``: every write lands here first, is fsynced and renamed into place, so an object appears
  whole or not at all, and a reader holding the old one keeps reading the old one;
* ``meta/BUCKET/XX/SHA256(KEY)``: the sidecar of an object (ETag as S3 computes it, Content-Type
  and the other stored headers, ``x-amz-meta-*``, checksums). Named by a hash of the key, so no key
  can collide with a sidecar nor a sidecar's folder with an object's. A sidecar carries the stamp
  (size, modification time, inode) of the file it describes; a file replaced by anyone else (a
  transform job's output, capture files, a hand copy) no longer matches, and its ETag is computed
  again (MD5) and cached. Files with no sidecar list, get and head fine.
  The database was the other candidate; a sidecar beside the file is what every process can read
  without the server, and dies with the object instead of outliving it in a table;
* ``uploads/ID/``: a multipart upload (its request in ``upload.json``, each part as a file and its
  ETag beside it), on disk from CreateMultipartUpload to Complete or Abort, so a restart keeps it;
* ``buckets/NAME.json``: when a bucket was created.

Plain files cannot hold every S3 key: ``a`` and ``a/b`` cannot both exist (``a`` would have to be a
file and a folder). Such a write is refused (``ParentIsObject``/``ObjectExistsAsDirectory``, as
MinIO's file-system mode does with its ``XMinio...`` codes) and nothing already stored is touched.
Keys with ``.``/``..`` or empty segments, a leading or trailing ``/``, NUL, more than 1,024 bytes
of UTF-8 or a segment longer than a file name may be are refused: they would name another file or
none. The bucket name ``endpoints`` is reserved: ``/endpoints/...`` on the port is the runtime API.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import ipaddress
import itertools
import os
import re
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from fsspec.spec import AbstractFileSystem

__all__ = [
    "MAX_KEY_BYTES", "MAX_OBJECT_SIZE", "MAX_PARTS", "MIN_PART_SIZE", "RESERVED_BUCKETS", "ListPage", "ObjectInfo",
    "ObjectStore", "ObjectStoreError", "ObjectStoreFileSystem", "PartInfo", "StagedFile", "Upload", "check_bucket_name",
    "check_key", "multipart_etag",
]

MAX_KEY_BYTES = 1024
MAX_OBJECT_SIZE = 5 * 1024**3  # one PutObject or UploadPart, as S3
MIN_PART_SIZE = 5 * 1024**2  # every part but the last, as S3
MAX_PARTS = 10_000
NAME_MAX = 255  # a file name's bytes on Linux file systems
RESERVED_BUCKETS = {"endpoints": "/endpoints/... on this port is the runtime API (InvokeEndpoint)"}
INTERNAL = ".moorage"
COPY_CHUNK = 1024 * 1024
STALE_TEMP_SECONDS = 24 * 3600.0
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_BUCKET_PREFIXES = ("xn--", "sthree-", "amzn-s3-demo-")
_BUCKET_SUFFIXES = ("-s3alias", "--ol-s3", ".mrap", "--x-s3", "--table-s3")


class ObjectStoreError(OSError):
    """An S3 error: ``code`` and ``status`` as S3 answers them; ``fields`` go into the error document.

    An OSError, so the parts of moorage that read locations (and catch OSError) report it as they
    report a missing file, with this message.
    """

    def __init__(self, code: str, message: str, status: int = 400, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields

    def __str__(self) -> str:
        return self.message


def no_such_bucket(bucket: str) -> ObjectStoreError:
    return ObjectStoreError("NoSuchBucket", "The specified bucket does not exist", 404, BucketName=bucket)


def no_such_key(key: str) -> ObjectStoreError:
    return ObjectStoreError("NoSuchKey", "The specified key does not exist.", 404, Key=key)


def no_such_upload(upload_id: str) -> ObjectStoreError:
    return ObjectStoreError("NoSuchUpload", "The specified upload does not exist. The upload ID may be invalid, or "
                            "the upload may have been aborted or completed.", 404, UploadId=upload_id)


def check_bucket_name(name: str) -> None:
    """ObjectStoreError(InvalidBucketName) unless ``name`` follows S3's rules for a general-purpose bucket."""
    reserved = RESERVED_BUCKETS.get(name)
    if reserved:
        raise ObjectStoreError("InvalidBucketName", f"The bucket name '{name}' is reserved by moorage: {reserved}.",
                               BucketName=name)
    why = None
    if not 3 <= len(name) <= 63:
        why = "must be between 3 and 63 characters long"
    elif not _BUCKET.fullmatch(name):
        why = ("may only contain lowercase letters, digits, dots and hyphens, and must begin and end with a letter or "
               "a digit")
    elif ".." in name or ".-" in name or "-." in name:
        why = "must not contain two adjacent periods, nor a period next to a hyphen"
    elif name.startswith(_BUCKET_PREFIXES) or name.endswith(_BUCKET_SUFFIXES):
        why = "must not begin or end with a prefix or suffix S3 reserves"
    else:
        with contextlib.suppress(ValueError):
            ipaddress.IPv4Address(name)
            why = "must not be formatted as an IP address"
    if why:
        raise ObjectStoreError("InvalidBucketName", f"The specified bucket is not valid: '{name}' {why}.",
                               BucketName=name)


def check_key(key: str) -> list[str]:
    """The key's path segments; ObjectStoreError unless the key names one file inside its bucket."""
    if not key:
        raise ObjectStoreError("InvalidArgument", "An object key must not be empty.")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise ObjectStoreError("KeyTooLongError", "Your key is too long", MaxSizeAllowed=str(MAX_KEY_BYTES))
    if "\x00" in key:
        raise ObjectStoreError("InvalidArgument", "An object key must not contain a NUL character.")
    try:
        key.encode("utf-8")
    except UnicodeEncodeError:
        raise ObjectStoreError("InvalidArgument", "An object key must be valid UTF-8.") from None
    if key.startswith("/") or key.endswith("/"):
        raise ObjectStoreError(
            "InvalidArgument", f"The key '{key}' begins or ends with '/': moorage's object store keeps objects as "
            "files, and such a key names a folder, not a file.")
    segments = key.split("/")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise ObjectStoreError(
                "InvalidArgument", f"The key '{key}' has an empty, '.' or '..' segment: moorage's object store keeps "
                "objects as files, and such a key would name another file or none.")
        if len(segment.encode("utf-8")) > NAME_MAX:
            raise ObjectStoreError(
                "KeyTooLongError", f"A segment of the key '{key}' (between two '/') is longer than {NAME_MAX} bytes, "
                "the longest file name moorage's object store can keep.", MaxSizeAllowed=str(NAME_MAX))
    return segments


def multipart_etag(part_etags: list[str]) -> str:
    """S3's ETag of a multipart object: the MD5 of the parts' binary MD5s, then ``-`` and the count."""
    digest = hashlib.md5(b"".join(bytes.fromhex(e) for e in part_etags), usedforsecurity=False).hexdigest()
    return f"{digest}-{len(part_etags)}"


# -- what is known of an object -------------------------------------------------------------------------
# The headers S3 stores with an object and answers on GET/HEAD, besides Content-Type.
STORED_HEADERS = ("cache-control", "content-disposition", "content-encoding", "content-language", "expires")


@dataclass
class ObjectInfo:
    bucket: str
    key: str
    size: int
    etag: str  # without quotes
    last_modified: float  # epoch seconds
    content_type: str = "binary/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)  # STORED_HEADERS that were set
    metadata: dict[str, str] = field(default_factory=dict)  # x-amz-meta-NAME -> value, names lowercase
    checksums: dict[str, str] = field(default_factory=dict)  # e.g. {"CRC32": "base64"}; single PUTs only
    parts: int | None = None  # parts of a multipart object


@dataclass(frozen=True)
class Stamp:
    """Which version of a file a sidecar describes."""

    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)

    def plain(self) -> list[int]:
        return [self.size, self.mtime_ns, self.inode]


@dataclass
class PartInfo:
    number: int
    etag: str
    size: int
    last_modified: float
    checksums: dict[str, str] = field(default_factory=dict)


@dataclass
class Upload:
    upload_id: str
    bucket: str
    key: str
    initiated: float
    content_type: str = "binary/octet-stream"
    headers: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    checksum_algorithm: str | None = None


@dataclass
class ListPage:
    objects: list[ObjectInfo]
    common_prefixes: list[str]
    truncated: bool
    last: str | None  # the last key or common prefix on the page (where the next page starts after)


# -- writing: a temporary file made whole, then renamed -----------------------------------------------------
class StagedFile:
    """Bytes on their way into the store: a temporary file under ROOT/.moorage/tmp, hashed as written.

    Not thread-safe; one writer. ``discard`` removes it (a failed or refused request leaves nothing).
    """

    def __init__(self, tmp_dir: Path, extra: Mapping[str, Any] | None = None) -> None:
        tmp_dir.mkdir(parents=True, exist_ok=True)
        self.fd, name = _mkstemp(tmp_dir, "put-")
        self.path = Path(name)
        self.size = 0
        self.md5 = hashlib.md5(usedforsecurity=False)
        self.extra = dict(extra or {})  # other running hashes (sha256, checksums) with .update()
        self._closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        self.md5.update(view)
        for hasher in self.extra.values():
            hasher.update(view)
        while view:
            view = view[os.write(self.fd, view):]
        self.size += len(data)

    def finish(self) -> Stamp:
        """fsync and close; the stamp of the file, which the rename keeps."""
        os.fsync(self.fd)
        st = os.fstat(self.fd)
        os.close(self.fd)
        self._closed = True
        return Stamp.of(st)

    def discard(self) -> None:
        if not self._closed:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self._closed = True
        with contextlib.suppress(OSError):
            self.path.unlink()


def _mkstemp(folder: Path, prefix: str) -> tuple[int, str]:
    import tempfile

    return tempfile.mkstemp(prefix=prefix, dir=folder)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -- the store ---------------------------------------------------------------------------------------------
class ObjectStore:
    """Buckets and objects under ``root``; every method is blocking (the S3 door runs them in threads)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.internal = self.root / INTERNAL
        self.tmp = self.internal / "tmp"
        self.meta = self.internal / "meta"
        self.uploads = self.internal / "uploads"
        self.buckets = self.internal / "buckets"
        # Rename and sidecar of one key are done under one of these, so two PUTs of the same key in
        # this process cannot leave one's bytes with the other's metadata.
        self._locks = [threading.Lock() for _ in range(64)]

    def ensure(self) -> ObjectStore:
        for folder in (self.root, self.tmp, self.meta, self.uploads, self.buckets):
            folder.mkdir(parents=True, exist_ok=True)
        return self

    def clean_stale(self, older_than: float = STALE_TEMP_SECONDS) -> int:
        """Remove temporary files (of writes cut off by a crash) older than ``older_than`` seconds."""
        removed = 0
        cutoff = time.time() - older_than
        with contextlib.suppress(FileNotFoundError), os.scandir(self.tmp) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                        if entry.is_dir(follow_symlinks=False):
                            shutil.rmtree(entry.path, ignore_errors=True)
                        else:
                            os.unlink(entry.path)
                        removed += 1
        return removed

    # -- paths ----------------------------------------------------------------------------------------
    def bucket_path(self, bucket: str) -> Path:
        check_bucket_name(bucket)
        return self.root / bucket

    def object_path(self, bucket: str, key: str) -> Path:
        segments = check_key(key)
        return self.bucket_path(bucket).joinpath(*segments)

    def _existing_bucket(self, bucket: str) -> Path:
        path = self.bucket_path(bucket)
        if not path.is_dir():
            raise no_such_bucket(bucket)
        return path

    def _sidecar_path(self, bucket: str, key: str) -> Path:
        digest = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return self.meta / bucket / digest[:2] / digest

    def _lock(self, bucket: str, key: str) -> threading.Lock:
        return self._locks[hash((bucket, key)) % len(self._locks)]

    def stage(self, extra: Mapping[str, Any] | None = None) -> StagedFile:
        return StagedFile(self.tmp, extra)

    # -- buckets ----------------------------------------------------------------------------------------
    def create_bucket(self, bucket: str) -> None:
        path = self.bucket_path(bucket)
        self.ensure()
        try:
            path.mkdir()
        except FileExistsError:
            raise ObjectStoreError("BucketAlreadyOwnedByYou", "Your previous request to create the named bucket "
                                   "succeeded and you already own it.", 409, BucketName=bucket) from None
        self._write_json(self.buckets / f"{bucket}.json", {"created": time.time()})

    def head_bucket(self, bucket: str) -> None:
        self._existing_bucket(bucket)

    def bucket_created(self, bucket: str) -> float:
        try:
            return float(orjson.loads((self.buckets / f"{bucket}.json").read_bytes())["created"])
        except (OSError, ValueError, KeyError, TypeError):
            return (self.root / bucket).stat().st_mtime

    def list_buckets(self) -> list[tuple[str, float]]:
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as entries:
            for entry in entries:
                if entry.name == INTERNAL or not entry.is_dir(follow_symlinks=False):
                    continue
                try:
                    check_bucket_name(entry.name)
                except ObjectStoreError:
                    continue  # a folder someone made by hand, not a bucket
                found.append((entry.name, self.bucket_created(entry.name)))
        return sorted(found)

    def delete_bucket(self, bucket: str) -> None:
        path = self._existing_bucket(bucket)
        if _has_file(path):
            raise ObjectStoreError("BucketNotEmpty", "The bucket you tried to delete is not empty", 409,
                                   BucketName=bucket)
        for upload in self.list_uploads(bucket):
            with contextlib.suppress(ObjectStoreError):
                self.abort_upload(bucket, upload.key, upload.upload_id)
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(self.meta / bucket, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            (self.buckets / f"{bucket}.json").unlink()

    # -- objects ----------------------------------------------------------------------------------------
    def commit(self, staged: StagedFile, bucket: str, key: str, *, content_type: str | None = None,
               headers: Mapping[str, str] | None = None, metadata: Mapping[str, str] | None = None,
               checksums: Mapping[str, str] | None = None, etag: str | None = None, parts: int | None = None,
               create_bucket: bool = False, if_none_match: bool = False) -> ObjectInfo:
        """Make ``staged`` the object ``bucket/key``: fsync, rename into place, then its sidecar.

        ``staged`` is removed whatever happens. ``if_none_match`` refuses to replace an existing
        object (PutObject's ``If-None-Match: *``). ``create_bucket`` is for moorage's own writers,
        which may name a bucket nobody created; the S3 API answers NoSuchBucket instead.
        """
        try:
            target = self.object_path(bucket, key)
            bucket_dir = self.root / bucket
            if create_bucket:
                bucket_dir.mkdir(parents=True, exist_ok=True)
            elif not bucket_dir.is_dir():
                raise no_such_bucket(bucket)
            stamp = staged.finish()
            info = ObjectInfo(bucket, key, stamp.size, etag or staged.md5.hexdigest(), stamp.mtime_ns / 1e9,
                              content_type or "binary/octet-stream", dict(headers or {}), dict(metadata or {}),
                              dict(checksums or {}), parts)
            with self._lock(bucket, key):
                self._make_parents(bucket_dir, target, key)
                if target.is_dir():
                    raise _exists_as_directory(key)
                try:
                    if if_none_match:
                        # link() does not replace: of two such PUTs racing, one wins, the other is told.
                        os.link(staged.path, target)
                        staged.path.unlink()
                    else:
                        os.replace(staged.path, target)
                except FileExistsError:
                    raise ObjectStoreError("PreconditionFailed", "At least one of the pre-conditions you specified "
                                           "did not hold", 412, Condition="If-None-Match") from None
                except IsADirectoryError:
                    raise _exists_as_directory(key) from None
                except NotADirectoryError:
                    raise _parent_is_object(key) from None
                _fsync_dir(target.parent)
                self._write_sidecar(bucket, key, stamp, info)
            return info
        finally:
            staged.discard()

    def _make_parents(self, bucket_dir: Path, target: Path, key: str) -> None:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise _parent_is_object(key) from None
        if not target.parent.is_dir():
            raise _parent_is_object(key)

    def _write_sidecar(self, bucket: str, key: str, stamp: Stamp, info: ObjectInfo) -> None:
        doc = {"stamp": stamp.plain(), "etag": info.etag, "content_type": info.content_type,
               "headers": info.headers, "metadata": info.metadata, "checksums": info.checksums, "parts": info.parts}
        with contextlib.suppress(OSError):  # a cache: an object without one is still whole and served
            self._write_json(self._sidecar_path(bucket, key), doc)

    def _write_json(self, path: Path, doc: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = _mkstemp(self.tmp if self.tmp.is_dir() else path.parent, "meta-")
        try:
            os.write(fd, orjson.dumps(doc))
            os.close(fd)
            os.replace(name, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(name)
            raise

    def _info(self, bucket: str, key: str, st: os.stat_result, opened: IO[bytes] | None = None,
              path: Path | None = None) -> ObjectInfo:
        """What the sidecar says of this version of the file, or, for a file it does not describe, the
        defaults with the ETag computed (and cached in a new sidecar)."""
        stamp = Stamp.of(st)
        sidecar = self._sidecar_path(bucket, key)
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            doc = orjson.loads(sidecar.read_bytes())
            if doc["stamp"] == stamp.plain():
                return ObjectInfo(bucket, key, st.st_size, doc["etag"], st.st_mtime, doc["content_type"],
                                  doc.get("headers") or {}, doc.get("metadata") or {}, doc.get("checksums") or {},
                                  doc.get("parts"))
        md5 = hashlib.md5(usedforsecurity=False)
        if opened is not None:  # exactly the version the caller holds open
            while chunk := opened.read(COPY_CHUNK):
                md5.update(chunk)
            opened.seek(0)
        else:
            with open(path or self.object_path(bucket, key), "rb") as fh:
                while chunk := fh.read(COPY_CHUNK):
                    md5.update(chunk)
        info = ObjectInfo(bucket, key, st.st_size, md5.hexdigest(), st.st_mtime)
        with self._lock(bucket, key):
            self._write_sidecar(bucket, key, stamp, info)
        return info

    def stored_content_type(self, bucket: str, key: str, st: os.stat_result) -> str | None:
        """The Content-Type the object's writer gave, when its sidecar describes this version of the file
        (cheap: no hashing); None for a file written some other way."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            doc = orjson.loads(self._sidecar_path(bucket, key).read_bytes())
            if doc["stamp"] == Stamp.of(st).plain():
                return str(doc["content_type"])
        return None

    def _stat_object(self, bucket: str, key: str) -> tuple[Path, os.stat_result]:
        target = self.object_path(bucket, key)
        try:
            st = os.stat(target)
        except (FileNotFoundError, NotADirectoryError):
            self._existing_bucket(bucket)
            raise no_such_key(key) from None
        if not stat.S_ISREG(st.st_mode):
            raise no_such_key(key)
        return target, st

    def head(self, bucket: str, key: str) -> ObjectInfo:
        target, st = self._stat_object(bucket, key)
        return self._info(bucket, key, st, path=target)

    def open(self, bucket: str, key: str) -> tuple[IO[bytes], ObjectInfo]:
        """The object's file, open, and what is known of exactly that version (a later PUT of the same
        key renames another file into place; this one stays readable until closed)."""
        target = self.object_path(bucket, key)
        try:
            fh = open(target, "rb")  # noqa: SIM115 - the caller closes it
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            self._existing_bucket(bucket)
            raise no_such_key(key) from None
        try:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise no_such_key(key)
            info = self._info(bucket, key, st, opened=fh)
        except BaseException:
            fh.close()
            raise
        return fh, info

    def delete(self, bucket: str, key: str) -> None:
        """Remove the object; like S3, deleting a key that does not exist is not an error."""
        self._existing_bucket(bucket)
        target = self.object_path(bucket, key)
        with self._lock(bucket, key):
            try:
                if target.is_dir():
                    return
                target.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return
            finally:
                with contextlib.suppress(OSError):
                    self._sidecar_path(bucket, key).unlink()
        _prune_empty(target.parent, self.root / bucket)

    def copy(self, source: tuple[str, str], target: tuple[str, str], *, replace_metadata: bool = False,
             content_type: str | None = None, headers: Mapping[str, str] | None = None,
             metadata: Mapping[str, str] | None = None, conditions: Callable[[ObjectInfo], None] | None = None,
             ) -> ObjectInfo:
        """CopyObject: the source's bytes (read from one open version) into a new object."""
        fh, info = self.open(*source)
        with fh:
            if conditions is not None:
                conditions(info)
            if source == target and not replace_metadata:
                raise ObjectStoreError("InvalidRequest", "This copy request is illegal because it is trying to copy "
                                       "an object to itself without changing the object's metadata, storage class, "
                                       "website redirect location or encryption attributes.")
            self._existing_bucket(target[0])
            self.object_path(*target)
            staged = self.stage()
            try:
                while chunk := fh.read(COPY_CHUNK):
                    staged.write(chunk)
            except BaseException:
                staged.discard()
                raise
        if replace_metadata:
            return self.commit(staged, *target, content_type=content_type, headers=headers, metadata=metadata)
        return self.commit(staged, *target, content_type=info.content_type, headers=info.headers,
                           metadata=info.metadata, checksums=info.checksums)

    # -- listing ----------------------------------------------------------------------------------------
    def list(self, bucket: str, prefix: str = "", delimiter: str = "", after: str = "", max_keys: int = 1000,
             after_is_prefix: bool = False) -> ListPage:
        """Keys in UTF-8 byte order, as S3 lists them, from just past ``after`` (past every key that starts
        with it when ``after_is_prefix``: a common prefix ended the last page)."""
        bucket_dir = self._existing_bucket(bucket)
        skip_prefix = after if after_is_prefix else ""
        objects: list[ObjectInfo] = []
        prefixes: list[str] = []
        last: str | None = None
        if max_keys <= 0:
            return ListPage([], [], False, None)
        for kind, key, path, st in self._walk(bucket_dir, prefix, after, skip_prefix, delimiter == "/"):
            if kind == "dir":
                common = key  # delimiter "/": a folder under the prefix is one common prefix
            else:
                rest = key[len(prefix):]
                cut = rest.find(delimiter) if delimiter else -1
                common = key[:len(prefix) + cut + len(delimiter)] if cut >= 0 else ""
            if common:
                if prefixes and prefixes[-1] == common:
                    continue
                if skip_prefix and common == skip_prefix:
                    continue
            if len(objects) + len(prefixes) >= max_keys:
                return ListPage(objects, prefixes, True, last)
            if common:
                prefixes.append(common)
                last = common
                skip_prefix = common
            else:
                assert st is not None
                objects.append(self._info(bucket, key, st, path=path))
                last = key
        return ListPage(objects, prefixes, False, last)

    def _walk(self, bucket_dir: Path, prefix: str, after: str, skip_prefix: str,
              folders_as_prefixes: bool) -> Iterator[tuple[str, str, Path, os.stat_result | None]]:
        """("file", key, path, stat) for every file whose key starts with ``prefix`` and sorts after
        ``after``, in order; with ``folders_as_prefixes``, ("dir", "key/", path, None) for a folder
        that holds a file, instead of its files."""
        base, _, partial = prefix.rpartition("/")
        if base:
            try:
                segments = check_key(base)
            except ObjectStoreError:
                return
            start = bucket_dir.joinpath(*segments)
            relative = base + "/"
        else:
            start, relative = bucket_dir, ""
        yield from self._walk_dir(start, relative, partial, after, skip_prefix, folders_as_prefixes)

    def _walk_dir(self, folder: Path, relative: str, name_prefix: str, after: str, skip_prefix: str,
                  folders_as_prefixes: bool) -> Iterator[tuple[str, str, Path, os.stat_result | None]]:
        try:
            with os.scandir(folder) as scan:
                entries = []
                for entry in scan:
                    if not entry.name.startswith(name_prefix):
                        continue
                    try:
                        entry.name.encode("utf-8")
                    except UnicodeEncodeError:
                        continue  # a file name that is not UTF-8 is no S3 key
                    is_dir = entry.is_dir(follow_symlinks=False)
                    entries.append((entry.name + "/" if is_dir else entry.name, is_dir, entry))
        except (FileNotFoundError, NotADirectoryError):
            return
        # A folder sorts as its name and "/": then walking each folder in order gives every key in order.
        entries.sort(key=lambda e: e[0].encode("utf-8"))
        for sort_name, is_dir, entry in entries:
            key = relative + sort_name
            if skip_prefix and key.startswith(skip_prefix):
                continue
            if is_dir:
                if after and not after.startswith(key) and _utf8(key) < _utf8(after):
                    continue  # every key inside sorts before ``after``
                if folders_as_prefixes:
                    if not (skip_prefix and skip_prefix.startswith(key)) and _has_file(Path(entry.path)):
                        yield "dir", key, Path(entry.path), None
                    elif skip_prefix and skip_prefix.startswith(key):
                        yield from self._walk_dir(Path(entry.path), key, "", after, skip_prefix, folders_as_prefixes)
                    continue
                yield from self._walk_dir(Path(entry.path), key, "", after, skip_prefix, folders_as_prefixes)
                continue
            if after and _utf8(key) <= _utf8(after):
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                yield "file", key, Path(entry.path), st

    # -- multipart uploads -------------------------------------------------------------------------------
    def create_upload(self, bucket: str, key: str, *, content_type: str | None = None,
                      headers: Mapping[str, str] | None = None, metadata: Mapping[str, str] | None = None,
                      checksum_algorithm: str | None = None) -> Upload:
        self._existing_bucket(bucket)
        self.object_path(bucket, key)
        self.ensure()
        upload = Upload(secrets.token_urlsafe(32), bucket, key, time.time(), content_type or "binary/octet-stream",
                        dict(headers or {}), dict(metadata or {}), checksum_algorithm)
        folder = self.uploads / upload.upload_id
        folder.mkdir()
        self._write_json(folder / "upload.json", upload.__dict__)
        return upload

    def get_upload(self, bucket: str, key: str, upload_id: str) -> Upload:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,100}", upload_id):
            raise no_such_upload(upload_id)
        try:
            doc = orjson.loads((self.uploads / upload_id / "upload.json").read_bytes())
        except (OSError, ValueError):
            self._existing_bucket(bucket)
            raise no_such_upload(upload_id) from None
        upload = Upload(**doc)
        if upload.bucket != bucket or upload.key != key:
            raise no_such_upload(upload_id)
        return upload

    def upload_part(self, bucket: str, key: str, upload_id: str, number: int, staged: StagedFile,
                    checksums: Mapping[str, str] | None = None) -> PartInfo:
        try:
            _check_part_number(number)
            self.get_upload(bucket, key, upload_id)
            stamp = staged.finish()
            part = PartInfo(number, staged.md5.hexdigest(), stamp.size, stamp.mtime_ns / 1e9, dict(checksums or {}))
            folder = self.uploads / upload_id
            try:
                os.replace(staged.path, folder / f"{number:05d}")
            except (FileNotFoundError, NotADirectoryError):
                raise no_such_upload(upload_id) from None  # aborted or completed meanwhile
            with contextlib.suppress(OSError):
                self._write_json(folder / f"{number:05d}.json", {"stamp": stamp.plain(), **part.__dict__})
            return part
        finally:
            staged.discard()

    def list_parts(self, bucket: str, key: str, upload_id: str) -> tuple[Upload, list[PartInfo]]:
        upload = self.get_upload(bucket, key, upload_id)
        return upload, self._parts(self.uploads / upload_id)

    def _parts(self, folder: Path) -> list[PartInfo]:
        parts = []
        with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
            for entry in entries:
                if not (len(entry.name) == 5 and entry.name.isdigit()):
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                part = None
                with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                    doc = orjson.loads(Path(entry.path + ".json").read_bytes())
                    if doc.pop("stamp") == Stamp.of(st).plain():
                        part = PartInfo(**doc)
                if part is None:  # the part's record was lost with a crash: its file says it all again
                    md5 = hashlib.md5(usedforsecurity=False)
                    with open(entry.path, "rb") as fh:
                        while chunk := fh.read(COPY_CHUNK):
                            md5.update(chunk)
                    part = PartInfo(int(entry.name), md5.hexdigest(), st.st_size, st.st_mtime)
                parts.append(part)
        return sorted(parts, key=lambda p: p.number)

    def complete_upload(self, bucket: str, key: str, upload_id: str, requested: list[tuple[int, str]]) -> ObjectInfo:
        """Join the requested parts, in the order given (which must be ascending), into the object."""
        upload = self.get_upload(bucket, key, upload_id)
        if not requested:
            raise ObjectStoreError("MalformedXML", "The XML you provided was not well-formed or did not validate "
                                   "against our published schema: a CompleteMultipartUpload lists at least one part.")
        numbers = [n for n, _ in requested]
        if any(b <= a for a, b in itertools.pairwise(numbers)):
            raise ObjectStoreError("InvalidPartOrder", "The list of parts was not in ascending order. Parts must be "
                                   "ordered by part number.", UploadId=upload_id)
        # Claimed by a rename: parts still arriving now fail with NoSuchUpload instead of racing the join.
        self.ensure()
        claimed = self.tmp / f"complete-{upload_id}-{secrets.token_hex(4)}"
        try:
            os.rename(self.uploads / upload_id, claimed)
        except FileNotFoundError:
            raise no_such_upload(upload_id) from None
        try:
            stored = {p.number: p for p in self._parts(claimed)}
            chosen = []
            for number, etag in requested:
                part = stored.get(number)
                if part is None or part.etag != etag.strip().strip('"').lower():
                    raise ObjectStoreError("InvalidPart", "One or more of the specified parts could not be found. "
                                           "The part may not have been uploaded, or the specified entity tag may not "
                                           "match the part's entity tag.", UploadId=upload_id, PartNumber=str(number),
                                           ETag=etag)
                chosen.append(part)
            for part in chosen[:-1]:
                if part.size < MIN_PART_SIZE:
                    raise ObjectStoreError("EntityTooSmall", "Your proposed upload is smaller than the minimum allowed "
                                           f"object size: every part but the last must be at least {MIN_PART_SIZE} "
                                           "bytes.", UploadId=upload_id, PartNumber=str(part.number),
                                           ProposedSize=str(part.size), MinSizeAllowed=str(MIN_PART_SIZE))
            staged = self.stage()
            try:
                for part in chosen:
                    _append_file(staged, claimed / f"{part.number:05d}")
            except BaseException:
                staged.discard()
                raise
            info = self.commit(staged, bucket, key, content_type=upload.content_type, headers=upload.headers,
                               metadata=upload.metadata, etag=multipart_etag([p.etag for p in chosen]),
                               parts=len(chosen))
        except BaseException:
            # Not completed: the upload is as it was, to be completed again or aborted.
            with contextlib.suppress(OSError):
                os.rename(claimed, self.uploads / upload_id)
            raise
        shutil.rmtree(claimed, ignore_errors=True)
        return info

    def abort_upload(self, bucket: str, key: str, upload_id: str) -> None:
        self.get_upload(bucket, key, upload_id)
        doomed = self.tmp / f"abort-{upload_id}-{secrets.token_hex(4)}"
        try:
            os.rename(self.uploads / upload_id, doomed)
        except FileNotFoundError:
            raise no_such_upload(upload_id) from None
        shutil.rmtree(doomed, ignore_errors=True)

    def list_uploads(self, bucket: str, prefix: str = "") -> list[Upload]:
        self._existing_bucket(bucket)
        found = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.uploads) as entries:
            for entry in entries:
                with contextlib.suppress(OSError, ValueError, TypeError):
                    upload = Upload(**orjson.loads(Path(entry.path, "upload.json").read_bytes()))
                    if upload.bucket == bucket and upload.key.startswith(prefix):
                        found.append(upload)
        return sorted(found, key=lambda u: (_utf8(u.key), u.initiated))

    def upload_part_source(self, bucket: str, key: str, first: int, last: int, staged: StagedFile,
                           conditions: Callable[[ObjectInfo], None] | None = None) -> ObjectInfo:
        """UploadPartCopy's bytes: ``first``..``last`` (inclusive) of the object, into ``staged``."""
        fh, info = self.open(bucket, key)
        with fh:
            if conditions is not None:
                conditions(info)
            if last < 0:
                first, last = 0, info.size - 1
            if first > last or last >= info.size:
                raise ObjectStoreError("InvalidArgument", f"The x-amz-copy-source-range bytes={first}-{last} is not "
                                       f"within the source object of {info.size} bytes.")
            fh.seek(first)
            remaining = last - first + 1
            while remaining and (chunk := fh.read(min(COPY_CHUNK, remaining))):
                staged.write(chunk)
                remaining -= len(chunk)
        return info


def _check_part_number(number: int) -> None:
    if not 1 <= number <= MAX_PARTS:
        raise ObjectStoreError("InvalidArgument", f"Part number must be an integer between 1 and {MAX_PARTS}, "
                               "inclusive", ArgumentName="partNumber", ArgumentValue=str(number))


def _append_file(staged: StagedFile, source: Path) -> None:
    with open(source, "rb") as fh:
        while chunk := fh.read(COPY_CHUNK):
            # Not hashed as a whole: a multipart object's ETag is made from its parts' MD5s.
            view = memoryview(chunk)
            while view:
                view = view[os.write(staged.fd, view):]
            staged.size += len(chunk)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


def _has_file(folder: Path) -> bool:
    """Whether a file lies anywhere under ``folder`` (an empty folder is no S3 prefix)."""
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    if _has_file(Path(entry.path)):
                        return True
                elif entry.is_file(follow_symlinks=False):
                    return True
    except OSError:
        return False
    return False


def _prune_empty(folder: Path, stop: Path) -> None:
    """Remove the empty folders a deleted object leaves, up to (not including) its bucket."""
    while folder != stop and stop in folder.parents:
        try:
            folder.rmdir()
        except OSError:
            return
        folder = folder.parent


def _parent_is_object(key: str) -> ObjectStoreError:
    return ObjectStoreError(
        "ParentIsObject", f"Cannot store '{key}': a part of it before a '/' is already an object, and moorage's "
        "object store keeps objects as files, which cannot also be folders. Delete that object or choose another key.",
        400, Key=key)


def _exists_as_directory(key: str) -> ObjectStoreError:
    return ObjectStoreError(
        "ObjectExistsAsDirectory", f"Cannot store '{key}': other objects' keys begin with '{key}/', and moorage's "
        "object store keeps objects as files, which cannot also be folders. Choose another key.", 409, Key=key)


# -- the fsspec filesystem that s3:// locations resolve to ------------------------------------------------
class _AtomicWriter(io.RawIOBase):
    """A file open for writing through the filesystem: staged (buffered), made the object on close.

    Leaving a ``with`` block by an exception discards it instead: no half object. (A wrapper such as
    io.BufferedWriter would close, and so commit, whatever happened.)
    """

    def __init__(self, store: ObjectStore, bucket: str, key: str) -> None:
        super().__init__()
        store.object_path(bucket, key)
        store.ensure()
        self.store, self.bucket, self.key = store, bucket, key
        self.staged: StagedFile | None = store.stage()
        self.buffer = bytearray()

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self.staged is None:
            raise ValueError("I/O operation on closed file.")
        view = memoryview(data).cast("B")
        if len(self.buffer) + len(view) > COPY_CHUNK:
            self.staged.write(self.buffer)
            self.buffer.clear()
        if len(view) >= COPY_CHUNK:
            self.staged.write(view)
        else:
            self.buffer += view
        return len(view)

    def close(self) -> None:
        if self.staged is not None:
            staged, self.staged = self.staged, None
            try:
                staged.write(self.buffer)
                self.buffer = bytearray()
            except BaseException:
                staged.discard()
                raise
            self.store.commit(staged, self.bucket, self.key, create_bucket=True)
        super().close()

    def discard(self) -> None:
        if self.staged is not None:
            self.staged.discard()
            self.staged = None
        super().close()

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None:
            self.discard()
        else:
            self.close()


class ObjectStoreFileSystem(AbstractFileSystem):
    """fsspec over the object store: paths are ``bucket/key``, as s3fs's are, so every part of
    moorage that reads or writes ``s3://`` through fsspec works on it unchanged. Writes are whole
    objects (staged and renamed); reads are the files themselves."""

    protocol = ("s3", "s3a")
    root_marker = ""

    def __init__(self, root: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.store = ObjectStore(Path(root))

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        text = str(path)
        for prefix in ("s3://", "s3a://"):
            if text.startswith(prefix):
                text = text[len(prefix):]
        return text.strip("/")

    def _split(self, path: str) -> tuple[str, str]:
        bucket, _, key = self._strip_protocol(path).partition("/")
        if not bucket:
            return "", ""
        check_bucket_name(bucket)
        if key:
            check_key(key)
        return bucket, key

    def _local(self, path: str) -> Path:
        bucket, key = self._split(path)
        return self.store.object_path(bucket, key) if key else self.store.bucket_path(bucket)

    def _entry(self, name: str, st: os.stat_result) -> dict[str, Any]:
        if stat.S_ISDIR(st.st_mode):
            return {"name": name, "size": 0, "type": "directory"}
        return {"name": name, "size": st.st_size, "type": "file", "mtime": st.st_mtime}

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        bucket, _ = self._split(path)
        if not bucket:
            return {"name": "", "size": 0, "type": "directory"}
        try:
            st = os.stat(self._local(path))
        except (FileNotFoundError, NotADirectoryError):
            raise FileNotFoundError(errno.ENOENT, "No such object", path) from None
        entry = self._entry(path, st)
        _, key = self._split(path)
        if key and entry["type"] == "file":
            # As s3fs's info has it: async inference reads the input's type when the request names none.
            content_type = self.store.stored_content_type(bucket, key, st)
            if content_type is not None:
                entry["ContentType"] = content_type
        return entry

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        if not path:
            entries = [{"name": name, "size": 0, "type": "directory"} for name, _ in self.store.list_buckets()]
        else:
            local = self._local(path)
            try:
                st = os.stat(local)
            except (FileNotFoundError, NotADirectoryError):
                raise FileNotFoundError(errno.ENOENT, "No such object or prefix", path) from None
            if not stat.S_ISDIR(st.st_mode):
                entries = [self._entry(path, st)]
            else:
                entries = []
                with os.scandir(local) as scan:
                    for entry in scan:
                        with contextlib.suppress(OSError):
                            entries.append(self._entry(f"{path}/{entry.name}", entry.stat(follow_symlinks=False)))
                entries.sort(key=lambda e: e["name"])
        return entries if detail else [e["name"] for e in entries]

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> Any:
        bucket, key = self._split(path)
        if not key:
            raise IsADirectoryError(errno.EISDIR, "A bucket is not an object", path)
        if "r" in mode:
            try:
                return open(self.store.object_path(bucket, key), "rb")
            except NotADirectoryError:
                raise FileNotFoundError(errno.ENOENT, "No such object", path) from None
        if "a" in mode or "+" in mode:
            raise NotImplementedError(f"an object cannot be opened in mode {mode!r}: objects are written whole")
        return _AtomicWriter(self.store, bucket, key)

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        with self.open(path1, "rb") as source, self.open(path2, "wb") as target:
            shutil.copyfileobj(source, target, COPY_CHUNK)

    def rm_file(self, path: str) -> None:
        bucket, key = self._split(path)
        if not key:
            raise IsADirectoryError(errno.EISDIR, "A bucket is not an object", path)
        if not self.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "No such object", path)
        self.store.delete(bucket, key)

    def _rm(self, path: str) -> None:
        if self.isfile(path):
            self.rm_file(path)

    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        for p in reversed(self.expand_path(path, recursive=recursive, maxdepth=maxdepth)):
            if self.isfile(p):
                self.rm_file(p)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        # S3 has no folders; only a bucket is made (moorage's own writers may name a new one).
        bucket, key = self._split(path)
        if bucket and not key:
            self.store.ensure()
            self.store.bucket_path(bucket).mkdir(exist_ok=True)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.mkdir(path)

    def rmdir(self, path: str) -> None:
        bucket, key = self._split(path)
        if bucket and not key:
            self.store.delete_bucket(bucket)

    def modified(self, path: str) -> Any:
        import datetime

        return datetime.datetime.fromtimestamp(self.info(path)["mtime"], tz=datetime.UTC)

    def created(self, path: str) -> Any:
        return self.modified(path)
