"""The edge package: one signed ``.tar.gz`` that the compiler writes and the edge agent serves as it is.

Layout (flat: no folders, no links)::

    manifest.json    what the package is (below); the signed bytes
    signature        JSON: {"algorithm": "Ed25519", "key_id": ..., "signature": base64}, over manifest.json's
                     exact bytes
    model.onnx       the compiled (optimised, maybe quantised) ONNX graph
    validation.csv   optional: the self-test sample, one flattened input record a line, no header
    expected.json    optional: the compiled model's outputs on that sample, {output name: nested list}

The manifest (``format_version`` 1) names the model (``name``, ``version``), its input/output signature
(names, dtypes, shapes, the content types the agent accepts and answers), the sha256 and size of every
other member, the source's checksum, the sizes before and after, the accuracy against the original on the
validation sample and the tolerance, the created time, the compiler's versions and the signing key's id.
Only ``files``, ``format_version``, ``name``, ``version``, ``signature`` and ``signing_key_id`` are read
here; the rest is the compiler's record for people and tools.

:func:`verify` is the one way in: it refuses an oversize archive, a member that is not a plain file or
whose name would escape the folder it is extracted to, a signature by an untrusted key or a bad one, a
member whose sha256 differs from the manifest's, and a member the manifest does not list. Everything is
read into memory under a size cap (edge models are small; the cap also stops a gzip bomb), so nothing is
written anywhere before the package has been verified.

This module is part of the edge agent: it imports the standard library, numpy and ``cryptography`` only.
Key ids are the first 16 hex digits of the sha256 of the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import csv
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature"
MODEL = "model.onnx"
VALIDATION = "validation.csv"
EXPECTED = "expected.json"
ALGORITHM = "Ed25519"

# What the agent's container contract takes and answers (runtimes/codecs' names).
CONTENT_TYPES = ("text/csv", "application/json", "application/x-npy")
ACCEPT = ("application/json", "text/csv", "application/x-npy")

# Caps: a package larger than this is not an edge package, and a gzip bomb stops here, not in memory.
MAX_ARCHIVE_BYTES = 1 << 30
MAX_UNPACKED_BYTES = 2 << 30
MAX_MEMBERS = 32
MAX_MANIFEST_BYTES = 1 << 20

# A member name: flat, no separators, no leading dot, so extraction cannot leave its folder.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# The names a device reports in its heartbeat, as SageMaker's edge shapes allow them: ModelName (4 to 63
# characters, alphanumerics and hyphens, within EntityName) and EdgeVersion (at most 30), the version kept
# to what is also a safe file name and URL segment.
MODEL_NAME_PATTERN = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){3,62}")
VERSION_PATTERN = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9_.]{0,29}")
# The self-test's default bounds: the same graph on another CPU (another instruction set, another
# onnxruntime build) can move floats in the last digits and, rarely, flip a near-tie label.
SELF_TEST_RTOL = 1e-3
SELF_TEST_ATOL = 1e-4
SELF_TEST_MIN_AGREEMENT = 0.98


class PackageError(ValueError):
    """The package cannot be used; the message says why. The subclasses tell the kinds apart."""


class UnsafeArchiveError(PackageError):
    """A member is not a plain file, or its name would escape the folder it lands in."""


class OversizeError(PackageError):
    """The archive, a member or the whole unpacked content is over the cap."""


class SignatureError(PackageError):
    """The signature is missing, malformed, or does not match the manifest's bytes."""


class UntrustedKeyError(SignatureError):
    """The package is signed by a key that is not among the trusted ones."""


class ChecksumError(PackageError):
    """A member's sha256 or size differs from the manifest's, or a member is missing or unlisted."""


class ManifestError(PackageError):
    """The manifest is not JSON, or lacks a field the agent needs, or has another format version."""


def check_name_version(name: str, version: str) -> None:
    """PackageError unless ``name`` and ``version`` are names a device can report (see the patterns)."""
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise PackageError(f"model name {name!r}: 4 to 63 letters, digits and hyphens, starting and ending with a "
                           "letter or digit")
    if not VERSION_PATTERN.fullmatch(version):
        raise PackageError(f"model version {version!r}: at most 30 letters, digits, '_' and '.', not starting "
                           "with '.'")


# ---------------------------------------------------------------------------------------------- keys


def generate_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_private_key(source: str | os.PathLike[str] | bytes) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM bytes or a PEM file (PKCS#8, unencrypted)."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PackageError(f"not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise PackageError(f"the signing key is {type(key).__name__}, not Ed25519")
    return key


def load_or_create_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The key at ``path``, made there first (mode 0600, never replacing one) when there is none."""
    target = Path(path)
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        pem = private_key_pem(generate_key())
        try:
            # O_EXCL: two processes making the key at once keep one key, the first one's.
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as out:
                out.write(pem)
                out.flush()
                os.fsync(out.fileno())
    return load_private_key(target)


def load_public_key(source: str | os.PathLike[str] | bytes | Ed25519PublicKey | Ed25519PrivateKey) -> Ed25519PublicKey:
    """An Ed25519 public key from a key object, PEM bytes or a PEM file (a private key's PEM gives its public key)."""
    if isinstance(source, Ed25519PublicKey):
        return source
    if isinstance(source, Ed25519PrivateKey):
        return source.public_key()
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if b"PRIVATE KEY" in data:
        return load_private_key(data).public_key()
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise PackageError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise PackageError(f"the public key is {type(key).__name__}, not Ed25519")
    return key


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ checksums


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """The hex digest of a file, read in blocks (GetDeployments names a package by its SHA1)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ package


@dataclass(frozen=True)
class Package:
    """A verified package, held in memory: the manifest as signed, and every member's bytes."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes
    key_id: str
    files: Mapping[str, bytes] = field(repr=False)
    path: Path | None = None

    @property
    def name(self) -> str:
        return str(self.manifest["name"])

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def model_handle(self) -> str:
        """The name SageMaker Edge's GetDeployments gives the model: ``{name}-{version}``."""
        return f"{self.name}-{self.version}"

    @property
    def model_bytes(self) -> bytes:
        return self.files[MODEL]

    @property
    def inputs(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("signature", {}).get("inputs", []))

    @property
    def outputs(self) -> list[dict[str, Any]]:
        return list(self.manifest.get("signature", {}).get("outputs", []))

    @property
    def has_self_test(self) -> bool:
        return VALIDATION in self.files and EXPECTED in self.files

    def self_test_sample(self) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
        """The sample's input batch (shaped and typed as the model's first input) and the expected outputs."""
        if not self.has_self_test:
            return None
        spec = self.inputs[0] if self.inputs else {"dtype": "float32", "shape": [None, None]}
        inputs = read_sample_csv(self.files[VALIDATION], spec)
        try:
            expected_raw = json.loads(self.files[EXPECTED])
        except ValueError as exc:
            raise ManifestError(f"{EXPECTED} is not JSON: {exc}") from exc
        expected = {name: np.asarray(values) for name, values in expected_raw.items()}
        return inputs, expected

    def self_test_bounds(self) -> tuple[float, float, float]:
        """(rtol, atol, min label agreement) for the self-test, as the manifest states them or the defaults."""
        test = self.manifest.get("self_test") or {}
        return (float(test.get("rtol", SELF_TEST_RTOL)), float(test.get("atol", SELF_TEST_ATOL)),
                float(test.get("min_agreement", SELF_TEST_MIN_AGREEMENT)))

    def extract(self, directory: str | os.PathLike[str]) -> Path:
        """Write every member into ``directory`` (made if missing); names were checked to be flat."""
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for name, data in self.files.items():
            (target / name).write_bytes(data)
        return target


def _trusted_keys(trusted: Iterable[Any]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for item in trusted:
        public = load_public_key(item)
        keys[key_id(public)] = public
    return keys


def _read_members(source: str | os.PathLike[str] | bytes, max_archive_bytes: int,
                  max_unpacked_bytes: int) -> dict[str, bytes]:
    with contextlib.ExitStack() as stack:
        if isinstance(source, bytes):
            size = len(source)
            opened: Any = io.BytesIO(source)
        else:
            try:
                size = os.path.getsize(source)
                opened = stack.enter_context(open(source, "rb"))
            except OSError as exc:
                raise PackageError(f"cannot read the package {source}: {exc.strerror or exc}") from exc
        if size > max_archive_bytes:
            raise OversizeError(f"the package is {size} bytes, over the {max_archive_bytes}-byte cap")
        try:
            archive = stack.enter_context(tarfile.open(fileobj=opened, mode="r:gz"))
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise PackageError(f"not a gzip-compressed tar archive: {exc}") from exc
        try:
            return _members(archive, max_unpacked_bytes)
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise PackageError(f"the package archive is damaged: {exc}") from exc


def _members(archive: tarfile.TarFile, max_unpacked_bytes: int) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for count, member in enumerate(archive, start=1):
        if count > MAX_MEMBERS:
            raise OversizeError(f"the package has over {MAX_MEMBERS} members")
        name = member.name
        if not _NAME.match(name):
            raise UnsafeArchiveError(f"member {name!r} would escape the package's folder (members are flat "
                                     "names, no paths)")
        if not member.isreg():
            raise UnsafeArchiveError(f"member {name!r} is not a plain file (links and folders are refused)")
        if name in files:
            raise UnsafeArchiveError(f"member {name!r} appears twice")
        total += member.size
        if total > max_unpacked_bytes:
            raise OversizeError(f"the package unpacks to over {max_unpacked_bytes} bytes")
        extracted = archive.extractfile(member)
        if extracted is None:  # pragma: no cover - isreg() members always extract
            raise UnsafeArchiveError(f"member {name!r} cannot be read")
        data = extracted.read(member.size + 1)
        if len(data) != member.size:
            raise PackageError(f"member {name!r} is truncated")
        files[name] = data
    return files


def _parse_manifest(data: bytes) -> dict[str, Any]:
    if len(data) > MAX_MANIFEST_BYTES:
        raise OversizeError(f"{MANIFEST} is over {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(data)
    except ValueError as exc:
        raise ManifestError(f"{MANIFEST} is not JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{MANIFEST} is not a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ManifestError(f"package format version {version!r}; this agent reads version {FORMAT_VERSION}")
    for key in ("name", "version", "files", "signing_key_id"):
        if key not in manifest:
            raise ManifestError(f"{MANIFEST} has no {key!r}")
    if not isinstance(manifest["files"], dict) or MODEL not in manifest["files"]:
        raise ManifestError(f"{MANIFEST} lists no {MODEL}")
    return manifest


def _parse_signature(data: bytes) -> tuple[str, bytes]:
    try:
        doc = json.loads(data)
        if doc.get("algorithm") != ALGORITHM:
            raise SignatureError(f"signature algorithm {doc.get('algorithm')!r}; packages are signed with {ALGORITHM}")
        return str(doc["key_id"]), base64.b64decode(doc["signature"], validate=True)
    except SignatureError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise SignatureError(f"the {SIGNATURE} member is malformed: {exc}") from exc


def verify(source: str | os.PathLike[str] | bytes, trusted_public_keys: Iterable[Any], *,
           max_archive_bytes: int = MAX_ARCHIVE_BYTES, max_unpacked_bytes: int = MAX_UNPACKED_BYTES) -> Package:
    """The package at ``source`` (a path or its bytes), verified against ``trusted_public_keys``.

    ``trusted_public_keys``: Ed25519 public (or private) key objects, PEM bytes or PEM files. Raises a
    :class:`PackageError` subclass saying what is wrong; returns only a package whose every byte is covered
    by a trusted signature.
    """
    keys = _trusted_keys(trusted_public_keys)
    if not keys:
        raise UntrustedKeyError("no trusted public key given: a package is verified against at least one")
    files = _read_members(source, max_archive_bytes, max_unpacked_bytes)
    if MANIFEST not in files:
        raise ManifestError(f"the package has no {MANIFEST}")
    if SIGNATURE not in files:
        raise SignatureError(f"the package has no {SIGNATURE}: it is unsigned")
    manifest_bytes = files.pop(MANIFEST)
    signed_by, signature = _parse_signature(files.pop(SIGNATURE))
    public = keys.get(signed_by)
    if public is None:
        raise UntrustedKeyError(f"the package is signed by key {signed_by}, which is not trusted "
                                f"(trusted: {', '.join(sorted(keys))})")
    try:
        public.verify(signature, manifest_bytes)
    except InvalidSignature as exc:
        raise SignatureError(f"the signature does not match {MANIFEST} (key {signed_by}): the package was "
                             "altered after signing") from exc
    manifest = _parse_manifest(manifest_bytes)
    if manifest["signing_key_id"] != signed_by:
        raise SignatureError(f"{MANIFEST} names key {manifest['signing_key_id']}, the signature key {signed_by}")
    listed: dict[str, Any] = manifest["files"]
    for name in files:
        if name not in listed:
            raise ChecksumError(f"member {name!r} is not listed in {MANIFEST}")
    for name, entry in listed.items():
        if name not in files:
            raise ChecksumError(f"{MANIFEST} lists {name!r}, which the package lacks")
        data = files[name]
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if expected != sha256_hex(data):
            raise ChecksumError(f"member {name!r}: sha256 {sha256_hex(data)} differs from the manifest's {expected}")
        if isinstance(entry, dict) and "size" in entry and entry["size"] != len(data):
            raise ChecksumError(f"member {name!r}: {len(data)} bytes, the manifest says {entry['size']}")
    return Package(manifest=manifest, manifest_bytes=manifest_bytes, signature=signature, key_id=signed_by,
                   files=files, path=None if isinstance(source, bytes) else Path(source))


def read_manifest_unverified(source: str | os.PathLike[str] | bytes) -> dict[str, Any]:
    """The manifest without checking the signature: for showing what a package claims, never for trusting it."""
    files = _read_members(source, MAX_ARCHIVE_BYTES, MAX_UNPACKED_BYTES)
    if MANIFEST not in files:
        raise ManifestError(f"the package has no {MANIFEST}")
    return _parse_manifest(files[MANIFEST])


def signed_manifest(manifest: Mapping[str, Any], files: Mapping[str, bytes],
                    private_key: Ed25519PrivateKey) -> tuple[bytes, bytes]:
    """(manifest bytes, signature member bytes): ``manifest`` completed with the format version, every
    member's sha256 and size, and the signing key's id, then signed."""
    for name in files:
        if name in (MANIFEST, SIGNATURE) or not _NAME.match(name):
            raise PackageError(f"{name!r} cannot be a package member")
    if MODEL not in files:
        raise PackageError(f"a package needs {MODEL}")
    kid = key_id(private_key)
    complete = dict(manifest)
    complete.update({
        "format_version": FORMAT_VERSION,
        "files": {name: {"sha256": sha256_hex(data), "size": len(data)} for name, data in sorted(files.items())},
        "signing_key_id": kid,
    })
    for key in ("name", "version"):
        if not complete.get(key):
            raise PackageError(f"a package's manifest needs a {key!r}")
    manifest_bytes = json.dumps(complete, indent=2, sort_keys=True, default=str).encode() + b"\n"
    signature = private_key.sign(manifest_bytes)
    doc = {"algorithm": ALGORITHM, "key_id": kid, "signature": base64.b64encode(signature).decode()}
    return manifest_bytes, json.dumps(doc, indent=2).encode() + b"\n"


def package_bytes(manifest: Mapping[str, Any], files: Mapping[str, bytes], private_key: Ed25519PrivateKey,
                  *, mtime: float = 0) -> bytes:
    """The package archive's bytes. Deterministic for the same inputs (gzip and tar times are ``mtime``)."""
    manifest_bytes, signature = signed_manifest(manifest, files, private_key)
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", mtime=int(mtime)) as zipped, \
            tarfile.open(fileobj=zipped, mode="w", format=tarfile.PAX_FORMAT) as archive:
        members = [(MANIFEST, manifest_bytes), (SIGNATURE, signature)]
        members += [(name, files[name]) for name in [MODEL, *sorted(set(files) - {MODEL})]]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(mtime)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def write_package(output: str | os.PathLike[str], manifest: Mapping[str, Any], files: Mapping[str, bytes],
                  private_key: Ed25519PrivateKey, *, mtime: float = 0) -> Path:
    """Write the signed package to ``output`` whole: a temporary file in the same folder, then a rename."""
    target = Path(output)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = package_bytes(manifest, files, private_key, mtime=mtime)
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return target


# -------------------------------------------------------------------------------------- self-test data


def sample_csv(batch: np.ndarray) -> bytes:
    """The self-test sample as CSV: one record a line, flattened, no header (floats in ``repr`` precision)."""
    rows = np.asarray(batch).reshape(len(batch), -1)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([repr(v.item()) if isinstance(v, np.generic) else repr(v) for v in row])
    return out.getvalue().encode()


def read_sample_csv(data: bytes, input_spec: Mapping[str, Any]) -> np.ndarray:
    """Parse :func:`sample_csv`'s bytes back into a batch shaped and typed as ``input_spec`` says."""
    dtype = np.dtype(str(input_spec.get("dtype", "float32")))
    rows = [row for row in csv.reader(io.StringIO(data.decode())) if row]
    if dtype.kind in "OUS":
        batch = np.array(rows, dtype=object)
    else:
        try:
            batch = np.array([[float(v) for v in row] for row in rows], dtype=np.float64).astype(dtype)
        except ValueError as exc:
            raise ManifestError(f"{VALIDATION} is not numeric: {exc}") from exc
    shape = list(input_spec.get("shape") or [])
    tail = shape[1:]
    if tail and all(isinstance(d, int) and d > 0 for d in tail):
        batch = batch.reshape([len(rows), *tail])
    return batch


def expected_json(outputs: Mapping[str, np.ndarray]) -> bytes:
    return json.dumps({name: np.asarray(value).tolist() for name, value in outputs.items()}).encode()


@dataclass(frozen=True)
class SelfTestResult:
    passed: bool
    detail: str


def compare_outputs(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], *,
                    rtol: float = SELF_TEST_RTOL, atol: float = SELF_TEST_ATOL,
                    min_agreement: float = SELF_TEST_MIN_AGREEMENT) -> SelfTestResult:
    """Whether ``actual`` (a model's outputs on the sample) matches ``expected``: floats within rtol/atol,
    integer and string outputs (labels) agreeing on at least ``min_agreement`` of the records."""
    for name, want in expected.items():
        if name not in actual:
            return SelfTestResult(False, f"output {name!r} is missing")
        got = np.asarray(actual[name])
        want = np.asarray(want)
        if got.shape != want.shape:
            return SelfTestResult(False, f"output {name!r} has shape {got.shape}, expected {want.shape}")
        if want.dtype.kind == "f" or got.dtype.kind == "f":
            g, w = got.astype(np.float64), want.astype(np.float64)
            if not np.allclose(g, w, rtol=rtol, atol=atol, equal_nan=True):
                worst = float(np.nanmax(np.abs(g - w))) if g.size else 0.0
                return SelfTestResult(False, f"output {name!r} differs by up to {worst:.6g} "
                                             f"(rtol {rtol}, atol {atol})")
        else:
            if got.size == 0:
                continue
            same = (got.astype(str) == want.astype(str)).reshape(len(got), -1).all(axis=1)
            agreement = float(same.mean())
            if agreement < min_agreement:
                return SelfTestResult(False, f"output {name!r} agrees on {agreement:.2%} of the sample, "
                                             f"under {min_agreement:.2%}")
    return SelfTestResult(True, f"{len(expected)} output(s) match")
