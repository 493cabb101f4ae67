"""Artifact store: model data and code archives, wherever their URL points.

URLs go through ``store.locations``, so ``file://``, plain paths and ``s3://`` behave the
same. A model archive is extracted once into the home's cache, keyed by the URL and the object's
size and modification time (or ETag), so restarting a server or adding instances does not unpack it
again, and a changed artifact under the same URL is picked up.

An archive is untrusted input and may be a decompression bomb: what it expands to is counted from its
members' headers before a byte is written, and an archive past the cap (``MOORAGE_MAX_ARCHIVE_EXPANSION``
times its own size, never less than a floor, and never more than ``MOORAGE_MAX_ARCHIVE_BYTES``) is
refused whole. ``prune`` removes the extractions no model in use needs any more.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from moorage.store.locations import StorageError, filesystem


class ArtifactError(Exception):
    """An artifact that cannot be found, read or unpacked; the message says which and why."""


def _fs_and_path(url: str) -> tuple[Any, str]:
    try:
        fs, path = filesystem(url)
    except StorageError as exc:
        raise ArtifactError(str(exc)) from exc
    return fs, path


def _is_local(fs: Any) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def describe(url: str) -> dict[str, Any]:
    """fsspec's info for the object at ``url``; raises ArtifactError when it does not exist."""
    fs, path = _fs_and_path(url)
    try:
        return fs.info(path)
    except FileNotFoundError as exc:
        raise ArtifactError(f"Could not find model data at {url}.") from exc
    except OSError as exc:
        raise ArtifactError(f"Could not access model data at {url}: {exc}") from exc


# Any archive may expand to this much whatever its ratio: small archives of text (code, JSON, CSV)
# compress far better than 20:1 and are harmless.
EXPANSION_FLOOR_BYTES = 256 * 1024 * 1024
_CACHE_ENTRY = re.compile(r"[0-9a-f]{20}")
_STAGING_PREFIXES = (".extract-", ".download-")
_SOURCE_SUFFIX = ".url"  # <key>.url beside an extraction: the URL it came from


class _ExpansionCap:
    """A tarfile extraction filter: the "data" filter, plus a running total of the members' sizes
    that raises ArtifactError once past ``limit`` (before that member is written)."""

    def __init__(self, url: str, archive_bytes: int, limit: int, ratio: int, floor: int):
        self.url, self.archive_bytes, self.limit, self.ratio, self.floor = url, archive_bytes, limit, ratio, floor
        self.total = 0

    def __call__(self, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        self.total += max(0, member.size)
        if self.total > self.limit:
            raise ArtifactError(
                f"Model data at {self.url} expands beyond {self.limit} bytes ({self.archive_bytes}-byte archive; "
                f"the limit is {self.ratio} times the archive's size, at least {self.floor} bytes, at "
                f"most MOORAGE_MAX_ARCHIVE_BYTES): refused as a possible decompression bomb. Raise "
                f"MOORAGE_MAX_ARCHIVE_EXPANSION or MOORAGE_MAX_ARCHIVE_BYTES if the model is really this large.")
        return tarfile.data_filter(member, dest)


class ArtifactStore:
    def __init__(self, cache_dir: Path, max_expansion: int = 20, max_bytes: int = 64 * 1024**3,
                 floor_bytes: int = EXPANSION_FLOOR_BYTES):
        self.cache_dir = cache_dir
        self.max_expansion = max_expansion
        self.max_bytes = max_bytes
        self.floor_bytes = floor_bytes

    def expansion_limit(self, archive_bytes: int) -> int:
        return min(self.max_bytes, max(self.floor_bytes, self.max_expansion * archive_bytes))

    def prune(self, keep_urls: Iterable[str], *, staging: bool = False, before: float | None = None) -> list[str]:
        """Remove the cached extractions of every URL but ``keep_urls`` (the names removed). ``staging``:
        also half-done extractions, which only a process that died mid-way leaves (at start-up).
        ``before``: only entries last changed before this time (``time.time()``), so that one made
        for a model created while ``keep_urls`` was being gathered is never taken."""
        urls = list(keep_urls)
        keep = set()
        for url in urls:
            try:
                keep.add(self._key(url, describe(url)))
            except ArtifactError as exc:
                if isinstance(exc.__cause__, FileNotFoundError):
                    continue  # gone: nothing of it to keep
                return []  # cannot tell what it needs now: remove nothing rather than what is in use
            except Exception:
                return []
        # A multi-model endpoint's URL is a prefix: the archives under it are kept by their recorded source.
        prefixes = tuple(url.rstrip("/") + "/" for url in urls)
        removed = []
        try:
            entries = list(self.cache_dir.iterdir())
        except FileNotFoundError:
            return removed
        for entry in entries:
            name = entry.name
            if _CACHE_ENTRY.fullmatch(name) is not None:
                stale = name not in keep and not self._source(name).startswith(prefixes or ("\0",))
            else:
                stale = staging and name.startswith(_STAGING_PREFIXES)
            if stale and before is not None:
                with contextlib.suppress(OSError):
                    stale = entry.stat().st_mtime < before
            if stale and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
                with contextlib.suppress(FileNotFoundError):
                    (self.cache_dir / f"{name}{_SOURCE_SUFFIX}").unlink()
                removed.append(name)
        return removed

    def materialize(self, url: str) -> Path:
        """A local directory with the contents of ``url`` (a tar.gz archive or a directory)."""
        fs, path = _fs_and_path(url)
        info = describe(url)
        if info.get("type") == "directory":
            if _is_local(fs):
                return Path(path)
            return self._download_dir(fs, path, url, info)
        if not (path.endswith((".tar.gz", ".tgz", ".tar")) or _looks_like_tar(fs, path)):
            raise ArtifactError(f"Model data at {url} is neither a directory nor a tar archive.")
        return self._extract(fs, path, url, info)

    def _source(self, key: str) -> str:
        try:
            return (self.cache_dir / f"{key}{_SOURCE_SUFFIX}").read_text()
        except OSError:
            return ""

    def _record_source(self, target: Path, url: str) -> None:
        with contextlib.suppress(OSError):
            (self.cache_dir / f"{target.name}{_SOURCE_SUFFIX}").write_text(url)

    def _key(self, url: str, info: dict[str, Any]) -> str:
        stamp = f"{url}|{info.get('size')}|{info.get('mtime') or info.get('LastModified') or info.get('ETag')}"
        return hashlib.sha256(stamp.encode()).hexdigest()[:20]

    def _extract(self, fs: Any, path: str, url: str, info: dict[str, Any]) -> Path:
        target = self.cache_dir / self._key(url, info)
        if target.is_dir():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=self.cache_dir))
        try:
            with fs.open(path, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as archive:
                # A model archive is untrusted input: the "data" filter refuses links out of the tree
                # and device files, and strips a leading "/" so absolute names land inside it.
                size = int(info.get("size") or 0)
                cap = _ExpansionCap(url, size, self.expansion_limit(size), self.max_expansion, self.floor_bytes)
                archive.extractall(staging, filter=cap)
        except ArtifactError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArtifactError(f"Could not extract model data at {url}: {exc}") from exc
        try:
            os.replace(staging, target)
        except OSError:
            # Another task extracted the same archive first; theirs is as good as ours.
            shutil.rmtree(staging, ignore_errors=True)
        self._record_source(target, url)
        return target

    def _download_dir(self, fs: Any, path: str, url: str, info: dict[str, Any]) -> Path:
        target = self.cache_dir / self._key(url, info)
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        try:
            fs.get(path.rstrip("/") + "/", str(staging), recursive=True)
            os.replace(staging, target)
            self._record_source(target, url)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArtifactError(f"Could not download model data at {url}: {exc}") from exc
        return target


def model_data_urls(model: Mapping[str, Any]) -> list[str]:
    """The artifact URLs of each container of a model (CreateModel's body): ModelDataUrl, or
    ModelDataSource's S3Uri, and the code archive its SAGEMAKER_SUBMIT_DIRECTORY names (the SageMaker
    SDK's entry_point/source_dir), which is extracted into the same cache."""
    containers = [model.get("PrimaryContainer") or {}, *(model.get("Containers") or [])]
    urls = []
    for container in containers:
        source = (container.get("ModelDataSource") or {}).get("S3DataSource") or {}
        url = container.get("ModelDataUrl") or source.get("S3Uri")
        if url:
            urls.append(str(url))
        submit = str((container.get("Environment") or {}).get("SAGEMAKER_SUBMIT_DIRECTORY") or "").strip()
        if is_code_archive(submit):
            urls.append(submit)
    return urls


def is_code_archive(submit: str) -> bool:
    """Whether a SAGEMAKER_SUBMIT_DIRECTORY names an archive to extract (a URL or a .tar.gz), not a folder
    (the model's own /opt/ml/model/code, or a local directory)."""
    if not submit or submit == "/opt/ml/model" or submit.startswith("/opt/ml/model/"):
        return False
    return ("://" in submit or submit.endswith((".tar.gz", ".tgz", ".tar"))) and not Path(submit).is_dir()


def _looks_like_tar(fs: Any, path: str) -> bool:
    try:
        with fs.open(path, "rb") as fh:
            head = fh.read(262)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar"
