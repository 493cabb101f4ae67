"""Publishing an edge package to a fleet: what GetDeployments answers and the device door serves.

A package (``moorage edge compile``'s signed ``.tar.gz``, ``moorage.edge.package``) becomes a fleet's
deployment only once ``moorage.edge.package.verify`` has accepted it against the server's own public
key (the home's ``edge/signing-key.pem``, the key ``moorage edge compile`` signs with): a device's
agent verifies it again, but a package no agent would take is refused here, with the reason, rather
than shipped. Its model name and version must also fit the names SageMaker's edge shapes allow
(a device reports them in every heartbeat, validated by botocore's ``sagemaker-edge`` model).

Each published package is kept under the home, ``edge/packages/{fleet}/{name}-{version}.tar.gz``
(written aside and renamed, so a file there is always whole), with a row of kind ``edge-deployment``
(``{fleet}/{handle}``: its SHA1, which GetDeployments gives as the Checksum, size, manifest summary,
where it came from). The fleet's row names its current deployment. Publishing the same handle again
with the same bytes makes it current again (a rollback by hand); with other bytes it is refused, as an
agent that has a handle never downloads it twice. All of it survives a restart.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
import uuid
from pathlib import Path
from typing import IO, Any

from moorage.control.context import Context
from moorage.errors import ResourceInUse, ResourceNotFound, ValidationException
from moorage.store.locations import StorageError, check_location, open_url
from moorage.store.metadata import AlreadyExists, Resource

DEPLOYMENT = "edge-deployment"
DEVICE_FLEET = "device-fleet"
SIGNING_KEY = Path("edge") / "signing-key.pem"
PACKAGES = Path("edge") / "packages"
_STAGING = ".staging"
# How many publications a fleet's row remembers (DescribeDeviceFleet does not show them; the native API does).
HISTORY = 20
_COPY_BLOCK = 1024 * 1024

MAX_HANDLE = 63


def signing_key_path(home: Path) -> Path:
    return home / SIGNING_KEY


def handle_of(name: str, version: str) -> str:
    """SageMaker Edge's model handle, as ``moorage.edge.package.Package.model_handle`` makes it."""
    return f"{name}-{version}"


class EdgeDeployments:
    """The packages published to each fleet, and each fleet's current one."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.root = ctx.settings.home / PACKAGES
        self._lock = threading.Lock()
        self._clean_staging()

    # -- where files are ------------------------------------------------------------------------------

    @property
    def staging(self) -> Path:
        return self.root / _STAGING

    def staged_file(self) -> Path:
        """A new name for a package being received (under the home, so that the rename is one filesystem's)."""
        self.staging.mkdir(parents=True, exist_ok=True)
        return self.staging / f"{uuid.uuid4().hex}.part"

    def _clean_staging(self) -> None:
        # Nothing is received before the server starts: what is here was cut off by a stop or a crash.
        if self.staging.is_dir():
            for leftover in self.staging.iterdir():
                with contextlib.suppress(OSError):
                    leftover.unlink()

    def package_path(self, fleet: str, handle: str) -> Path:
        return self.root / fleet / f"{handle}.tar.gz"

    # -- publishing ---------------------------------------------------------------------------------------

    def fleet_row(self, fleet: str) -> Resource:
        row = self.ctx.store.get(DEVICE_FLEET, fleet)
        if row is None:
            raise ResourceNotFound(f"Device fleet {fleet} does not exist.")
        return row

    def copy_from(self, url: str) -> Path:
        """Copy the package at ``url`` (s3://, file://, a path) into a staged file; its path."""
        from moorage.edge.package import MAX_ARCHIVE_BYTES

        try:
            check_location(url, "PackageUrl")
        except StorageError as exc:
            raise ValidationException(str(exc)) from exc
        staged = self.staged_file()
        try:
            with open_url(url, "rb") as source, open(staged, "wb") as target:
                _copy_bounded(source, target, MAX_ARCHIVE_BYTES, url)
        except FileNotFoundError as exc:
            staged.unlink(missing_ok=True)
            raise ValidationException(f"PackageUrl {url}: no such package.") from exc
        except (OSError, StorageError) as exc:
            staged.unlink(missing_ok=True)
            raise ValidationException(f"PackageUrl {url} could not be read: {exc}") from exc
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return staged

    def publish(self, fleet: str, staged: Path, source_url: str | None = None) -> dict[str, Any]:
        """Verify the package in ``staged`` (consumed whatever happens) and make it ``fleet``'s deployment."""
        from moorage.edge.package import (
            PackageError,
            check_name_version,
            file_digest,
            load_or_create_private_key,
            verify,
        )

        try:
            self.fleet_row(fleet)
            # Made on first use, as `moorage edge compile` makes it: the same home signs and trusts.
            key = load_or_create_private_key(signing_key_path(self.ctx.settings.home))
            try:
                package = verify(staged, [key])
            except PackageError as exc:
                raise ValidationException(f"The package was refused: {exc}") from exc
            name, version = package.name, package.version
            try:
                check_name_version(name, version)
            except PackageError as exc:
                raise ValidationException(f"The package names something a device cannot report: {exc}.") from exc
            handle = handle_of(name, version)
            if len(handle) > MAX_HANDLE:
                raise ValidationException(f"The model handle {handle!r} ({name}-{version}) is longer than "
                                          f"{MAX_HANDLE} characters, the longest SageMaker Edge's ModelHandle.")
            sha1 = file_digest(staged, "sha1")
            size = staged.stat().st_size
            with self._lock:
                return self._commit(fleet, staged, handle, sha1, size, package.manifest, package.key_id, source_url)
        finally:
            staged.unlink(missing_ok=True)

    def _commit(self, fleet: str, staged: Path, handle: str, sha1: str, size: int, manifest: dict[str, Any],
                key_id: str, source_url: str | None) -> dict[str, Any]:
        store = self.ctx.store
        row_name = f"{fleet}/{handle}"
        existing = store.get(DEPLOYMENT, row_name)
        if existing is not None and existing.body["Sha1"] != sha1:
            raise ResourceInUse(
                f"Fleet {fleet} already has a package {handle} with other bytes (SHA1 {existing.body['Sha1']}); "
                "devices never fetch a handle twice, so publish the new package under a new model version.")
        target = self.package_path(fleet, handle)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(staged, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(staged, target)
            _fsync_dir(target.parent)
        now = time.time()
        body = {"DeviceFleetName": fleet, "ModelHandle": handle, "ModelName": manifest["name"],
                "ModelVersion": manifest["version"], "Sha1": sha1, "Size": size, "SigningKeyId": key_id,
                "SourceUrl": source_url, "Manifest": _manifest_summary(manifest)}
        if existing is None:
            try:
                existing = store.create(DEPLOYMENT, row_name, self.ctx.arn(DEPLOYMENT, row_name), body)
            except AlreadyExists as exc:  # another handle that differs only in case
                raise ResourceInUse(f"Fleet {fleet} has a package whose handle differs from {handle} only in "
                                    "case; publish under another model version.") from exc
        fleet_row = self.fleet_row(fleet)
        history = [entry for entry in fleet_row.body.get("DeploymentHistory") or []][-(HISTORY - 1):]
        history.append({"ModelHandle": handle, "Sha1": sha1, "PublishedTime": now})
        store.update(DEVICE_FLEET, fleet, body={**fleet_row.body, "CurrentDeployment": handle,
                                                "DeploymentHistory": history})
        return self.describe(existing, current=True, published=now)

    # -- reading ------------------------------------------------------------------------------------------

    def describe(self, row: Resource, *, current: bool, published: float | None = None) -> dict[str, Any]:
        body = row.body
        return {"DeviceFleetName": body["DeviceFleetName"], "ModelHandle": body["ModelHandle"],
                "ModelName": body["ModelName"], "ModelVersion": body["ModelVersion"],
                "Checksum": {"Type": "SHA1", "Sum": body["Sha1"]}, "Size": body["Size"],
                "SigningKeyId": body.get("SigningKeyId"), "SourceUrl": body.get("SourceUrl"),
                "Manifest": body.get("Manifest"), "Current": current,
                "FirstPublishedTime": row.created_at, "PublishedTime": published or row.modified_at}

    def current(self, fleet: str) -> Resource | None:
        """The fleet's current deployment's row, if a package was published to it."""
        handle = self.fleet_row(fleet).body.get("CurrentDeployment")
        return self.ctx.store.get(DEPLOYMENT, f"{fleet}/{handle}") if handle else None

    def summary(self, fleet: str) -> dict[str, Any]:
        """The fleet's current deployment and what was published before it (the native API's answer)."""
        row = self.fleet_row(fleet)
        current = self.current(fleet)
        return {"DeviceFleetName": fleet,
                "CurrentDeployment": self.describe(current, current=True) if current is not None else None,
                "History": row.body.get("DeploymentHistory") or []}

    def edge_deployments(self, fleet: str) -> list[dict[str, Any]]:
        """GetDeployments' ``Deployments``: the fleet's current package as SageMaker Edge describes one."""
        row = self.current(fleet)
        if row is None:
            return []
        body = row.body
        source = body.get("SourceUrl")
        definition = {"ModelHandle": body["ModelHandle"], "Checksum": {"Type": "SHA1", "Sum": body["Sha1"]},
                      "State": "DEPLOY"}
        if isinstance(source, str) and source.startswith("s3://"):
            definition["S3Url"] = source
        return [{"DeploymentName": body["ModelHandle"], "Type": "Model",
                 "FailureHandlingPolicy": "ROLLBACK_ON_FAILURE", "Definitions": [definition]}]

    def package_file(self, fleet: str, handle: str) -> tuple[Path, Resource]:
        """A package published to ``fleet`` (the current one or an earlier one): its file and row."""
        row = self.ctx.store.get(DEPLOYMENT, f"{fleet}/{handle}")
        path = self.package_path(fleet, handle)
        if row is None or not path.is_file():
            raise ResourceNotFound(f"Fleet {fleet} has no package {handle}.")
        return path, row

    def forget_fleet(self, fleet: str) -> None:
        """A deleted fleet's deployments: rows and files."""
        for row in self.ctx.store.list(DEPLOYMENT):
            if row.body.get("DeviceFleetName") == fleet:
                self.ctx.store.delete(DEPLOYMENT, row.name)
        shutil.rmtree(self.root / fleet, ignore_errors=True)


def _manifest_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    # What people ask of a deployed package; the whole manifest stays in the archive.
    keep = ("format_version", "name", "version", "signature", "source", "sizes", "accuracy", "tolerance",
            "created", "compiler")
    return {k: manifest[k] for k in keep if k in manifest}


def _copy_bounded(source: IO[bytes], target: IO[bytes], limit: int, what: str) -> None:
    copied = 0
    while block := source.read(_COPY_BLOCK):
        copied += len(block)
        if copied > limit:
            raise ValidationException(f"{what} is over {limit} bytes, the largest package this server takes.")
        target.write(block)
    target.flush()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
