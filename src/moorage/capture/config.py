"""What to capture, and where: an endpoint config's ``DataCaptureConfig``, and the writer's settings.

The writer's settings (``WriterSettings``: batching, bounds, rotation) are the ``capture`` section
of the server's settings tree, declared with every other setting in :mod:`moorage.settings`.

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
from moorage.settings import CaptureSettings
from moorage.store.locations import StorageError, filesystem

DEFAULT_CSV_TYPES = ("text/csv",)
DEFAULT_JSON_TYPES = ("application/json", "application/jsonlines", "application/x-jsonlines",
                      "application/jsonl")
CAPTURE_MODES = ("Input", "Output")
# The writer's name for its section of the settings tree (one class: the tree declares it).
WriterSettings = CaptureSettings


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
            # Refused now, not found out later as lost records: the folder must be creatable and writable.
            existing = root
            while not os.path.exists(existing):
                existing = os.path.dirname(existing)
            if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
                raise ValidationException(
                    f"DataCaptureConfig.DestinationS3Uri {uri!r} cannot be written: {existing} is not a folder this "
                    f"server can write in.")
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
