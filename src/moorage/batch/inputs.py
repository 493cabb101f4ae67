"""A transform job's input objects: listed from an S3Prefix or a ManifestFile, opened as byte streams.

Listing happens once, before any instance starts, so a job over a missing or empty location fails
at once with a reason that names it. Each object keeps the name its output takes under
S3OutputPath (``NAME.out``): its key relative to the prefix (the prefix's folder when the prefix
ends inside a name, as ``s3://bucket/data/part-`` does), or its key as the manifest lists it.
"""

from __future__ import annotations

import gzip
import io
from dataclasses import dataclass
from typing import IO, Any

import orjson

from moorage.batch.spec import TransformSpec
from moorage.store.locations import StorageError, filesystem, join


class InputError(Exception):
    """The job's input cannot be listed or read; the message is the job's FailureReason."""


@dataclass(frozen=True)
class InputObject:
    url: str  # where to read it
    name: str  # its path relative to the input prefix: the output is NAME.out
    size: int


def list_inputs(spec: TransformSpec) -> list[InputObject]:
    try:
        if spec.data_type == "ManifestFile":
            return _from_manifest(spec.input_uri)
        return _from_prefix(spec.input_uri)
    except StorageError as exc:
        raise InputError(str(exc)) from exc
    except OSError as exc:
        raise InputError(f"Could not list the input at {spec.input_uri}: {exc}") from exc


def _protocol_prefix(url: str) -> str:
    """What goes in front of a filesystem path to make it a URL again (``s3://``, ``file://`` or nothing)."""
    if "://" not in url:
        return ""
    return url.split("://", 1)[0] + "://"


def _from_prefix(uri: str) -> list[InputObject]:
    fs, path = filesystem(uri)
    scheme = _protocol_prefix(uri)
    if path.endswith("/") or fs.isdir(path):
        base = path.rstrip("/") + "/"
        found: dict[str, Any] = fs.find(base, detail=True) if fs.exists(base.rstrip("/")) else {}
    else:
        # An S3 prefix may end inside a name (s3://bucket/data/part-): every object that starts so.
        parent = path.rsplit("/", 1)[0] + "/" if "/" in path else ""
        listing: dict[str, Any] = fs.find(parent, detail=True) if parent and fs.exists(parent.rstrip("/")) else {}
        found = {k: v for k, v in listing.items() if k.startswith(path)}
        base = parent
    objects = []
    for key in sorted(found):
        info = found[key]
        if info.get("type", "file") != "file":
            continue
        relative = key[len(base):].lstrip("/")
        if not relative or relative.rsplit("/", 1)[-1].startswith("."):
            continue  # hidden files (a job's own temporary outputs among them) are not inputs
        objects.append(InputObject(url=scheme + key, name=relative, size=int(info.get("size") or 0)))
    if not objects:
        raise InputError(f"No input objects found under {uri}: the location does not exist or is empty.")
    return objects


def _from_manifest(uri: str) -> list[InputObject]:
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb") as fh:
            manifest = orjson.loads(fh.read())
    except FileNotFoundError as exc:
        raise InputError(f"Could not find the manifest file {uri}.") from exc
    except orjson.JSONDecodeError as exc:
        raise InputError(f"The manifest file {uri} is not valid JSON: {exc}") from exc
    if not (isinstance(manifest, list) and manifest and isinstance(manifest[0], dict)
            and isinstance(manifest[0].get("prefix"), str) and all(isinstance(k, str) for k in manifest[1:])):
        raise InputError(f'The manifest file {uri} must be a JSON array: [{{"prefix": "s3://bucket/prefix/"}}, '
                         '"relative/key1", "relative/key2", ...].')
    prefix = manifest[0]["prefix"]
    objects = []
    for relative in manifest[1:]:
        url = join(prefix, relative) if not prefix.endswith("/") else prefix + relative
        try:
            ofs, opath = filesystem(url)
            info = ofs.info(opath)
        except FileNotFoundError as exc:
            raise InputError(f"The manifest {uri} lists {url}, which does not exist.") from exc
        objects.append(InputObject(url=url, name=relative.lstrip("/"), size=int(info.get("size") or 0)))
    if not objects:
        raise InputError(f"The manifest file {uri} lists no objects.")
    return objects


class CountingReader(io.RawIOBase):
    """Counts the bytes read from the stored object (before decompression), for progress."""

    def __init__(self, raw: IO[bytes]):
        self.raw = raw
        self.count = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.raw.read(len(buffer))
        n = len(data)
        buffer[:n] = data
        self.count += n
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


def open_input(obj: InputObject, compression: str) -> tuple[IO[bytes], CountingReader]:
    """A binary stream of the object's (decompressed) bytes, and the counter of stored bytes read."""
    try:
        fs, path = filesystem(obj.url)
        raw = fs.open(path, "rb")
    except FileNotFoundError as exc:
        raise InputError(f"The input object {obj.url} disappeared before it was read.") from exc
    except (OSError, StorageError) as exc:
        raise InputError(f"Could not read the input object {obj.url}: {exc}") from exc
    counter = CountingReader(raw)
    buffered = io.BufferedReader(counter, buffer_size=1024 * 1024)
    if compression == "Gzip":
        return gzip.GzipFile(fileobj=buffered, mode="rb"), counter  # type: ignore[return-value]
    return buffered, counter
