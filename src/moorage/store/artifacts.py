"""Artifact store: model data and code archives, wherever their URL points.

URLs go through ``store.locations``, so ``file://``, plain paths and ``s3://`` behave the
same. A model archive is extracted once into the home's cache, keyed by the URL and the object's
size and modification time (or ETag), so restarting a server or adding instances does not unpack it
again, and a changed artifact under the same URL is picked up.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
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


class ArtifactStore:
    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir

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
                archive.extractall(staging, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArtifactError(f"Could not extract model data at {url}: {exc}") from exc
        try:
            os.replace(staging, target)
        except OSError:
            # Another task extracted the same archive first; theirs is as good as ours.
            shutil.rmtree(staging, ignore_errors=True)
        return target

    def _download_dir(self, fs: Any, path: str, url: str, info: dict[str, Any]) -> Path:
        target = self.cache_dir / self._key(url, info)
        if target.is_dir():
            return target
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=self.cache_dir))
        try:
            fs.get(path.rstrip("/") + "/", str(staging), recursive=True)
            os.replace(staging, target)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ArtifactError(f"Could not download model data at {url}: {exc}") from exc
        return target


def _looks_like_tar(fs: Any, path: str) -> bool:
    try:
        with fs.open(path, "rb") as fh:
            head = fh.read(262)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head[257:262] == b"ustar"
