"""The edge package format (moorage.edge.package): a package round-trips, and verify() refuses every kind of
tampering (manifest edited, model bytes changed, another key, unlisted or escaping members, links, oversize
archives), with the exception that says which."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest

from moorage.edge import package as P


def _build(tmp_path: Path, key: object, **extra: bytes) -> Path:
    batch = np.arange(12, dtype=np.float32).reshape(4, 3) / 7
    files = {P.MODEL: b"onnx graph bytes", P.VALIDATION: P.sample_csv(batch),
             P.EXPECTED: P.expected_json({"variable": batch.sum(axis=1), "label": np.array([0, 1, 1, 0])}), **extra}
    manifest = {"name": "churn-model", "version": "3",
                "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [None, 3]}], "outputs": []}}
    return P.write_package(tmp_path / "pkg.tar.gz", manifest, files, key)


def _members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as archive:
        return {m.name: archive.extractfile(m).read() for m in archive if m.isreg()}  # type: ignore[union-attr]


def _repack(path: Path, members: dict[str, bytes], extra: list[tarfile.TarInfo] | None = None) -> Path:
    out = path.with_name("tampered.tar.gz")
    with tarfile.open(out, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in extra or []:
            archive.addfile(info, io.BytesIO(b"x" * info.size) if info.isreg() else None)
    return out


@pytest.fixture()
def key() -> object:
    return P.generate_key()


def test_round_trip_verifies_and_gives_the_model_and_the_self_test(tmp_path: Path, key: object) -> None:
    path = _build(tmp_path, key)
    package = P.verify(path, [P.public_key_pem(key)])  # type: ignore[arg-type]
    assert package.name == "churn-model" and package.version == "3" and package.model_handle == "churn-model-3"
    assert package.model_bytes == b"onnx graph bytes"
    assert package.key_id == P.key_id(key) == package.manifest["signing_key_id"]  # type: ignore[arg-type]
    assert set(package.manifest["files"]) == {P.MODEL, P.VALIDATION, P.EXPECTED}
    assert package.manifest["files"][P.MODEL]["sha256"] == P.sha256_hex(b"onnx graph bytes")
    inputs, expected = package.self_test_sample()  # type: ignore[misc]
    assert inputs.dtype == np.float32 and inputs.shape == (4, 3)
    assert np.array_equal(inputs, np.arange(12, dtype=np.float32).reshape(4, 3) / 7)
    assert P.compare_outputs(expected, {"variable": inputs.sum(axis=1), "label": np.array([0, 1, 1, 0])}).passed
    off = P.compare_outputs(expected, {"variable": inputs.sum(axis=1) + 0.5, "label": np.array([0, 1, 1, 0])})
    assert not off.passed and "variable" in off.detail
    flipped = P.compare_outputs(expected, {"variable": inputs.sum(axis=1), "label": np.array([1, 1, 1, 0])})
    assert not flipped.passed and "75.00%" in flipped.detail
    # the same bytes verify from memory, and extraction writes every member
    assert P.verify(path.read_bytes(), [key]).model_bytes == b"onnx graph bytes"
    extracted = package.extract(tmp_path / "out")
    assert (extracted / P.MODEL).read_bytes() == b"onnx graph bytes"


def test_packages_are_deterministic(tmp_path: Path, key: object) -> None:
    first = _build(tmp_path, key).read_bytes()
    assert _build(tmp_path, key).read_bytes() == first


def test_an_edited_manifest_is_refused(tmp_path: Path, key: object) -> None:
    path = _build(tmp_path, key)
    members = _members(path)
    manifest = json.loads(members[P.MANIFEST])
    manifest["version"] = "4"
    members[P.MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
    with pytest.raises(P.SignatureError, match="altered after signing"):
        P.verify(_repack(path, members), [key])


def test_changed_model_bytes_are_refused(tmp_path: Path, key: object) -> None:
    path = _build(tmp_path, key)
    members = _members(path)
    members[P.MODEL] = b"onnx graph bytez"
    with pytest.raises(P.ChecksumError, match=r"model\.onnx.*sha256"):
        P.verify(_repack(path, members), [key])
    members = _members(path)
    del members[P.EXPECTED]
    with pytest.raises(P.ChecksumError, match="lacks"):
        P.verify(_repack(path, members), [key])
    members = _members(path)
    members["extra.bin"] = b"smuggled"
    with pytest.raises(P.ChecksumError, match="not listed"):
        P.verify(_repack(path, members), [key])


def test_a_package_signed_by_another_key_is_refused(tmp_path: Path, key: object) -> None:
    other = P.generate_key()
    path = _build(tmp_path, other)
    with pytest.raises(P.UntrustedKeyError, match="not trusted"):
        P.verify(path, [key])
    # another key's signature under the trusted key's id: the signature check itself refuses it
    members = _members(path)
    doc = json.loads(members[P.SIGNATURE])
    doc["key_id"] = P.key_id(key)  # type: ignore[arg-type]
    members[P.SIGNATURE] = json.dumps(doc).encode()
    with pytest.raises(P.SignatureError):
        P.verify(_repack(path, members), [key])
    # trusting both keys accepts it
    assert P.verify(path, [key, P.public_key_pem(other)]).key_id == P.key_id(other)
    with pytest.raises(P.UntrustedKeyError, match="no trusted public key"):
        P.verify(path, [])


def test_unsigned_and_malformed_packages_are_refused(tmp_path: Path, key: object) -> None:
    path = _build(tmp_path, key)
    members = _members(path)
    del members[P.SIGNATURE]
    with pytest.raises(P.SignatureError, match="unsigned"):
        P.verify(_repack(path, members), [key])
    members = _members(path)
    members[P.SIGNATURE] = b"not json"
    with pytest.raises(P.SignatureError, match="malformed"):
        P.verify(_repack(path, members), [key])
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b" + os.urandom(64))
    with pytest.raises(P.PackageError):
        P.verify(tmp_path / "junk.tar.gz", [key])
    with pytest.raises(P.PackageError, match="cannot read"):
        P.verify(tmp_path / "missing.tar.gz", [key])


@pytest.mark.parametrize("name", ["../model.onnx", "/etc/passwd", "sub/model.onnx", ".hidden", ".."])
def test_members_that_would_escape_are_refused(tmp_path: Path, key: object, name: str) -> None:
    path = _build(tmp_path, key)
    info = tarfile.TarInfo(name)
    info.size = 3
    with pytest.raises(P.UnsafeArchiveError, match="escape"):
        P.verify(_repack(path, _members(path), [info]), [key])


def test_links_and_folders_are_refused(tmp_path: Path, key: object) -> None:
    path = _build(tmp_path, key)
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE):
        info = tarfile.TarInfo("evil")
        info.type = kind
        info.linkname = "/etc/passwd"
        with pytest.raises(P.UnsafeArchiveError, match="not a plain file"):
            P.verify(_repack(path, _members(path), [info]), [key])


def test_oversize_archives_are_refused(tmp_path: Path, key: object) -> None:
    path = _build(tmp_path, key)
    with pytest.raises(P.OversizeError, match="cap"):
        P.verify(path, [key], max_archive_bytes=100)
    # a gzip bomb: a small archive that unpacks to far more than the cap, stopped before it is read
    bomb = tmp_path / "bomb.tar.gz"
    with gzip.open(bomb, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as archive:
        info = tarfile.TarInfo(P.MODEL)
        info.size = 50 << 20
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(P.OversizeError, match="unpacks to over"):
        P.verify(bomb, [key], max_unpacked_bytes=1 << 20)


def test_signing_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "home" / "edge" / "signing-key.pem"
    first = P.load_or_create_private_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = P.load_or_create_private_key(path)
    assert P.key_id(first) == P.key_id(again)
    assert len(P.key_id(first)) == 16 and int(P.key_id(first), 16) >= 0
    pem = P.public_key_pem(first)
    assert pem.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert P.key_id(P.load_public_key(pem)) == P.key_id(first)
    (tmp_path / "pub.pem").write_bytes(pem)
    assert P.key_id(P.load_public_key(tmp_path / "pub.pem")) == P.key_id(first)
    with pytest.raises(P.PackageError, match="not a PEM public key"):
        P.load_public_key(b"garbage")
    with pytest.raises(P.PackageError, match="private key"):
        P.load_private_key(pem)


def test_names_a_device_can_report() -> None:
    P.check_name_version("churn-model", "1.2_rc")
    for name, version in (("abc", "1"), ("has space", "1"), ("-lead", "1"), ("model", ""), ("model", ".1"),
                          ("model", "x" * 31)):
        with pytest.raises(P.PackageError):
            P.check_name_version(name, version)
