"""What to capture, and where: an endpoint config's ``DataCaptureConfig``, and the writer's settings.

``CaptureConfig.parse`` is the one place a ``DataCaptureConfig`` is checked (CreateEndpointConfig
calls it, so a config that was stored can always be parsed again when an endpoint is brought up).

Content-type rules (the ``encoding`` of a captured body): a body whose media type (the Content-Type
without parameters, case-insensitive) is one of the CSV types is captured as text with ``CSV``
encoding, one of the JSON types as text with ``JSON``, anything else as ``BASE64``. The defaults are
what the SageMaker Python SDK sends when its user names none (``text/csv``; ``application/json``),
plus the JSON Lines types, which are text as well; a list given in ``CaptureContentTypeHeader``
replaces that list's default. A body that is not valid UTF-8 is captured as ``BASE64`` whatever
its type says, so every record stays valid JSON.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from moorage.errors import ValidationException
from moorage.store.locations import StorageError, filesystem

DEFAULT_CSV_TYPES = ("text/csv",)
DEFAULT_JSON_TYPES = ("application/json", "application/jsonlines", "application/x-jsonlines",
                      "application/jsonl")
CAPTURE_MODES = ("Input", "Output")


def media_type(content_type: str | None) -> str:
    """``text/csv; charset=utf-8`` -> ``text/csv``."""
    if not content_type:
        return ""
    return content_type.split(";", 1)[0].strip().lower()


@dataclass(frozen=True)
class Destination:
    """Where capture files go: a local directory (written with plain file calls), or any fsspec URL."""

    uri: str  # as the user gave it (DescribeEndpoint shows it back)
    root: str  # the folder under which {endpoint}/{variant}/yyyy/mm/dd/hh/ lie, without a trailing "/"
    local: bool
    fs: Any = None  # the fsspec filesystem, for a remote destination

    @classmethod
    def parse(cls, uri: str) -> Destination:
        if not uri or not uri.strip():
            raise ValidationException("DataCaptureConfig.DestinationS3Uri must name a location.")
        if uri.split("://", 1)[0].lower() in ("http", "https"):
            raise ValidationException(
                f"DataCaptureConfig.DestinationS3Uri {uri!r}: moorage cannot write capture files over HTTP(S); "
                "use s3://bucket/prefix, file:///path or a local path.")
        try:
            fs, path = filesystem(uri)
        except StorageError as exc:
            raise ValidationException(f"DataCaptureConfig.DestinationS3Uri {uri!r} cannot be written: {exc}") from exc
        except TypeError as exc:
            raise ValidationException(
                f"DataCaptureConfig.DestinationS3Uri {uri!r} is not a URL or path moorage can write to: {exc}") from exc
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        if "file" in protocols or "local" in protocols:
            root = os.path.abspath(path)
            if os.path.exists(root) and not os.path.isdir(root):
                raise ValidationException(
                    f"DataCaptureConfig.DestinationS3Uri {uri!r} is a file; it must name a folder.")
            return cls(uri, root.rstrip("/") or "/", True)
        return cls(uri, path.rstrip("/"), False, fs)


@dataclass(frozen=True)
class CaptureConfig:
    enabled: bool
    sampling_percentage: int
    destination: Destination
    capture_input: bool
    capture_output: bool
    csv_types: frozenset[str]
    json_types: frozenset[str]
    kms_key_id: str | None

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> CaptureConfig:
        """A ``DataCaptureConfig`` as botocore's model shapes it; raises ValidationException."""
        percentage = doc.get("InitialSamplingPercentage")
        if isinstance(percentage, bool) or not isinstance(percentage, int) or not 0 <= percentage <= 100:
            raise ValidationException(
                f"DataCaptureConfig.InitialSamplingPercentage must be an integer from 0 to 100, got {percentage!r}.")
        options = doc.get("CaptureOptions") or []
        if not options:
            raise ValidationException("DataCaptureConfig.CaptureOptions must list at least one CaptureMode "
                                      "(Input, Output).")
        modes = set()
        for option in options:
            mode = option.get("CaptureMode") if isinstance(option, dict) else None
            if mode not in CAPTURE_MODES:
                raise ValidationException(
                    f"DataCaptureConfig.CaptureOptions: CaptureMode {mode!r} is not one of {', '.join(CAPTURE_MODES)}.")
            modes.add(mode)
        header = doc.get("CaptureContentTypeHeader") or {}
        csv_types = _content_types(header, "CsvContentTypes", DEFAULT_CSV_TYPES)
        json_types = _content_types(header, "JsonContentTypes", DEFAULT_JSON_TYPES)
        both = csv_types & json_types
        if both:
            raise ValidationException(
                f"DataCaptureConfig.CaptureContentTypeHeader lists {', '.join(sorted(both))} as both CSV and JSON.")
        return cls(
            enabled=bool(doc.get("EnableCapture", True)),
            sampling_percentage=percentage,
            destination=Destination.parse(str(doc.get("DestinationS3Uri") or "")),
            capture_input="Input" in modes,
            capture_output="Output" in modes,
            csv_types=csv_types,
            json_types=json_types,
            kms_key_id=doc.get("KmsKeyId") or None,  # accepted; files are written unencrypted
        )

    def summary(self) -> dict[str, Any]:
        """DescribeEndpoint's ``DataCaptureConfigSummary``."""
        out: dict[str, Any] = {
            "EnableCapture": self.enabled,
            "CaptureStatus": "Started" if self.enabled else "Stopped",
            "CurrentSamplingPercentage": self.sampling_percentage,
            "DestinationS3Uri": self.destination.uri,
        }
        if self.kms_key_id:
            out["KmsKeyId"] = self.kms_key_id
        return out


def _content_types(header: dict[str, Any], key: str, default: tuple[str, ...]) -> frozenset[str]:
    given = header.get(key)
    if given is None:
        return frozenset(default)
    if not isinstance(given, list) or not given:
        raise ValidationException(f"DataCaptureConfig.CaptureContentTypeHeader.{key} must be a non-empty list.")
    types = set()
    for entry in given:
        kind = media_type(entry) if isinstance(entry, str) else ""
        if "/" not in kind:
            raise ValidationException(
                f"DataCaptureConfig.CaptureContentTypeHeader.{key}: {entry!r} is not a content type (type/subtype).")
        types.add(kind)
    return frozenset(types)


@dataclass(frozen=True)
class WriterSettings:
    """How the capture writer batches and rotates; read from the environment of ``moorage serve``.

    A record is on disk at most ``flush_seconds`` (plus the time to write one batch) after its
    invocation was answered: that is all a ``kill -9`` of the server can lose. A clean stop writes
    everything still queued.
    """

    flush_seconds: float = 1.0  # MOORAGE_CAPTURE_FLUSH_SECONDS
    queue_records: int = 10_000  # MOORAGE_CAPTURE_QUEUE_RECORDS: records waiting to be written, at most
    queue_bytes: int = 64 * 1024 * 1024  # MOORAGE_CAPTURE_QUEUE_BYTES: the bodies they hold, at most
    # MOORAGE_CAPTURE_BATCH_RECORDS: the writer wakes once this many records wait (sooner than
    # flush_seconds under load), and encodes and writes them in runs of at most this many
    batch_records: int = 256
    file_bytes: int = 16 * 1024 * 1024  # MOORAGE_CAPTURE_FILE_BYTES: a local file rotates past this size
    file_seconds: float = 300.0  # MOORAGE_CAPTURE_FILE_SECONDS: ... or this age
    # A remote object (s3://) is rewritten whole on every flush that adds to it, so it rotates sooner.
    object_bytes: int = 4 * 1024 * 1024  # MOORAGE_CAPTURE_OBJECT_BYTES

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> WriterSettings:
        env = os.environ if environ is None else environ
        defaults = cls()

        def number(name: str, default: float, kind: type = float) -> Any:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                value = kind(raw)
            except ValueError as exc:
                raise ValueError(f"{name}={raw!r} is not a {kind.__name__}") from exc
            if value <= 0:
                raise ValueError(f"{name}={raw!r} must be positive")
            return value

        return cls(
            flush_seconds=number("MOORAGE_CAPTURE_FLUSH_SECONDS", defaults.flush_seconds),
            queue_records=number("MOORAGE_CAPTURE_QUEUE_RECORDS", defaults.queue_records, int),
            queue_bytes=number("MOORAGE_CAPTURE_QUEUE_BYTES", defaults.queue_bytes, int),
            batch_records=number("MOORAGE_CAPTURE_BATCH_RECORDS", defaults.batch_records, int),
            file_bytes=number("MOORAGE_CAPTURE_FILE_BYTES", defaults.file_bytes, int),
            file_seconds=number("MOORAGE_CAPTURE_FILE_SECONDS", defaults.file_seconds),
            object_bytes=number("MOORAGE_CAPTURE_OBJECT_BYTES", defaults.object_bytes, int),
        )
