"""Where data lives: ``file://``, plain paths and ``s3://`` (and any fsspec URL), one way for every part.

Model artifacts, transform inputs and outputs, capture files, baselines and monitoring outputs all
reach their locations through ``filesystem``/``open_url`` here.

``s3://`` means moorage's own object store by default (``MOORAGE_OBJECT_STORE=local``):
``s3://BUCKET/KEY`` is the file ``ROOT/BUCKET/KEY`` (``store/objects.py``), the same object the S3 API
on the server's port serves. The server exports ``MOORAGE_OBJECT_STORE`` and
``MOORAGE_OBJECT_STORE_ROOT`` (``export_object_store``) before it starts anything, so instances,
transform drivers and their Ray workers, and monitoring executions, all inheriting its environment,
resolve ``s3://`` to the same files. A process the server did not start (the CLI, a script) uses the
same variables, else the home's store (``MOORAGE_HOME``, else ``~/.moorage``).

With ``MOORAGE_OBJECT_STORE=external``, ``s3://`` goes to a real S3 or S3-compatible server: through
s3fs when it is installed (fsspec's own choice), else pyarrow's S3 client (``moorage[s3]``; also
present with ``moorage[monitor]`` and ``moorage[ray]``) wrapped as an fsspec filesystem: s3fs pins
botocore to a narrow range through aiobotocore, and moorage's API is botocore's service models, so
it must not be forced onto an older botocore just to read S3. The usual AWS settings apply:
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for an S3-compatible server, credentials and region from
botocore's chain (environment, shared files, profiles).
"""

from __future__ import annotations

import os
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import fsspec

from moorage.settings import ObjectStoreSettings, SettingsError, default_home, read_setting
from moorage.store.objects import ObjectStoreFileSystem


class StorageError(Exception):
    """A location that cannot be reached or read; the message says which and why."""


# What a user may name as a location: a path, file:// or s3:// (fsspec knows many more, but an
# ftp://, zip:// or data: URL in a model or a job is a mistake, not a feature, and some of them
# fail deep inside fsspec with internal messages).
USER_SCHEMES = ("", "file", "s3")


def check_location(url: str, what: str = "location") -> None:
    """StorageError unless ``url`` is a location a user may name (``what`` says which field it was)."""
    if "\x00" in url:
        raise StorageError(f"{what} {url!r} contains a NUL character.")
    scheme = urlsplit(url).scheme.lower() if "://" in url or url.startswith("data:") else ""
    if scheme not in USER_SCHEMES:
        raise StorageError(f"{what} {url}: the {scheme}: scheme is not supported; use a path, file:// or s3://.")


def local_object_root() -> Path | None:
    """The local object store's root that ``s3://`` resolves to here, or None when it is external."""
    try:
        if read_setting(ObjectStoreSettings, "backend") == "external":
            return None
        root = read_setting(ObjectStoreSettings, "root")
    except SettingsError as exc:
        raise StorageError(str(exc)) from exc
    return Path(root).expanduser().resolve() if root else default_home().expanduser().resolve() / "objects"


def export_object_store(backend: str, root: Path) -> None:
    """Make this process, and every process it starts from now on, resolve ``s3://`` as the server does."""
    os.environ["MOORAGE_OBJECT_STORE"] = backend
    os.environ["MOORAGE_OBJECT_STORE_ROOT"] = str(root)


def filesystem(url: str) -> tuple[Any, str]:
    """The fsspec filesystem for ``url`` and the path inside it."""
    if url.startswith(("s3://", "s3a://")):
        root = local_object_root()
        if root is not None:
            # Paths are "bucket/key", as s3fs's are; the filesystem refuses keys that would leave the store.
            return ObjectStoreFileSystem(str(root)), url.split("://", 1)[1]
    if url.startswith("s3://"):
        try:
            import s3fs  # noqa: F401
        except ImportError:
            return _arrow_s3(), url[len("s3://"):]
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as exc:
        raise StorageError(f"cannot read {url}: {exc}. For s3:// URLs install moorage[s3].") from exc
    except ValueError as exc:
        raise StorageError(f"cannot read {url}: {exc}") from exc


def write_whole_at(fs: Any, path: str, body: bytes) -> None:
    """Write ``body`` at ``path`` of ``fs`` so that readers see all of it or nothing: a local file is written
    aside (a dot name ending in .part, which no reader of *.jsonl or *.out takes), fsynced and renamed into
    place; an object store's upload appears only once complete."""
    if not is_local(fs):
        # moorage's object store stages, fsyncs and renames; a remote store's PUT is whole by itself.
        with fs.open(path, "wb") as handle:
            handle.write(body)
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
    try:
        with open(temporary, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
        fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        temporary.unlink(missing_ok=True)


def write_whole(url: str, body: bytes) -> None:
    """``write_whole_at`` for a location."""
    fs, path = filesystem(url)
    write_whole_at(fs, path, body)


def open_url(url: str, mode: str = "rb") -> Any:
    """A file object for ``url`` (a context manager), through the same filesystems as ``filesystem``."""
    fs, path = filesystem(url)
    return fs.open(path, mode)


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def join(base: str, relative: str) -> str:
    """``relative`` under the location ``base`` (a URL or a path), with exactly one '/' between."""
    return base.rstrip("/") + "/" + relative.lstrip("/")


@lru_cache(maxsize=4)
def _arrow_s3_cached(endpoint: str | None, region: str | None, key: str | None, secret: str | None,
                     token: str | None) -> Any:
    try:
        from fsspec.implementations.arrow import ArrowFSWrapper
        from pyarrow import fs as pafs
    except ImportError as exc:
        raise StorageError("s3:// needs pyarrow (moorage[s3]) or s3fs; neither is installed") \
            from exc
    options: dict[str, Any] = {}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        options["endpoint_override"] = parts.netloc
        options["scheme"] = parts.scheme
    if region:
        options["region"] = region
    if key and secret:
        options.update(access_key=key, secret_key=secret, session_token=token)
    return ArrowFSWrapper(pafs.S3FileSystem(**options))


def _arrow_s3() -> Any:
    env = os.environ
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    key, secret, token, region = _aws_chain()
    return _arrow_s3_cached(endpoint, env.get("AWS_REGION") or region, key, secret, token)


def _aws_chain() -> tuple[str | None, str | None, str | None, str | None]:
    """Keys and region from botocore's own chain (environment, shared files, ``AWS_PROFILE``,
    ``credential_process``, roles): pyarrow has a chain of its own, but with its own idea of the
    profile; resolving here keeps pyarrow and boto3 on the same key."""
    from botocore.exceptions import BotoCoreError

    session = _aws_session()
    try:
        found = session.get_credentials()
        region = session.get_config_variable("region")
    except BotoCoreError as exc:
        raise StorageError(f"AWS credentials for s3://: {exc}") from exc
    if found is None:
        return None, None, None, region
    frozen = found.get_frozen_credentials()
    return frozen.access_key, frozen.secret_key, frozen.token, region


@lru_cache(maxsize=1)
def _aws_session() -> Any:
    """One botocore session per process: it resolves the chain once and refreshes what expires."""
    import botocore.session

    return botocore.session.Session()
