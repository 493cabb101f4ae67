"""Device keys and heartbeats over a real SQLite store (control/edge_devices.py), and publishing packages
to a fleet (control/edge_deployments.py): what survives a new process on the same home."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from moorage.config import Settings
from moorage.control.context import Context
from moorage.control.edge_deployments import DEVICE_FLEET, EdgeDeployments, signing_key_path
from moorage.control.edge_devices import DEVICE, DeviceKeys, KeyOwner, device_status, record_heartbeat
from moorage.edge.package import generate_key, load_or_create_private_key, package_bytes
from moorage.errors import ResourceInUse, ResourceNotFound, ValidationException
from moorage.serving.route_table import RouteTable
from moorage.store.artifacts import ArtifactStore
from moorage.store.metadata import MetadataStore


def _context(home: Path) -> Context:
    settings = Settings.load(home=home)
    settings.home.mkdir(parents=True, exist_ok=True)
    return Context(settings, MetadataStore(settings.database_url), ArtifactStore(settings.models_dir),
                   RouteTable(settings.logs_dir))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def ctx(home: Path) -> Iterator[Context]:
    context = _context(home)
    try:
        yield context
    finally:
        context.store.close()


def _register(ctx: Context, fleet: str, *devices: str) -> None:
    if ctx.store.get(DEVICE_FLEET, fleet) is None:
        ctx.store.create(DEVICE_FLEET, fleet, ctx.arn(DEVICE_FLEET, fleet),
                         {"DeviceFleetName": fleet, "OutputConfig": {"S3OutputLocation": "s3://b/p"}})
    for device in devices:
        ctx.store.create(DEVICE, f"{fleet}/{device}", ctx.arn("device-fleet", f"{fleet}/device/{device}"),
                         {"DeviceName": device, "DeviceFleetName": fleet})


def test_a_device_has_one_key_which_rotation_and_revocation_take_away(ctx: Context, home: Path) -> None:
    _register(ctx, "fleet-a", "cam-1", "cam-2")
    keys = DeviceKeys(ctx)
    first = keys.issue("fleet-a", "cam-1")
    assert first.access_key_id.startswith("MRGE") and len(first.access_key_id) == 20
    assert keys.secret(first.access_key_id) == first.secret_access_key
    assert keys.owner(first.access_key_id) == KeyOwner("fleet-a", "cam-1")
    other = keys.issue("fleet-a", "cam-2")
    second = keys.issue("fleet-a", "cam-1")  # rotation: the first key stops working at once
    assert keys.secret(first.access_key_id) is None and keys.secret(second.access_key_id) == second.secret_access_key
    assert keys.key_of("fleet-a", "cam-1") == second.access_key_id
    assert keys.secret(other.access_key_id) == other.secret_access_key  # another device's key is untouched

    # A new process on the same home (a restart) knows the same keys.
    again = _context(home)
    try:
        restarted = DeviceKeys(again)
        assert restarted.secret(second.access_key_id) == second.secret_access_key
        assert restarted.secret(first.access_key_id) is None
        assert restarted.revoke("fleet-a", "cam-1") == 1
    finally:
        again.store.close()
    keys.revoke("fleet-a", "cam-2")
    assert keys.secret(other.access_key_id) is None and keys.key_of("fleet-a", "cam-2") is None


def test_a_heartbeat_is_what_the_native_listing_shows(ctx: Context) -> None:
    _register(ctx, "fleet-a", "cam-1")
    row = ctx.store.get(DEVICE, "fleet-a/cam-1")
    assert row is not None
    record_heartbeat(ctx.store, row, {
        "AgentVersion": "1.2", "Models": [{"ModelName": "demo", "ModelVersion": "3", "LatestInference": 1000.0}],
        "AgentMetrics": [{"MetricName": "SpoolBacklogRecords", "Value": 5.0},
                         {"MetricName": "SpoolDroppedRecords", "Value": 0.0},
                         {"MetricName": "LastSyncTime", "Value": 990.0}],
        "DeploymentResult": {"DeploymentName": "demo-3", "DeploymentStatus": "FAIL",
                             "DeploymentStatusMessage": "self-test: 12% agreement", "DeploymentEndTime": 995}},
        now=1010.0)
    row = ctx.store.get(DEVICE, "fleet-a/cam-1")
    assert row is not None
    doc = device_status(row, "MRGEKEY", now=1020.0, connected_within=60)
    assert doc["Connected"] is True and doc["AgentVersion"] == "1.2" and doc["SpoolBacklogRecords"] == 5
    assert doc["SpoolDroppedRecords"] == 0 and doc["LastSyncTime"].startswith("1970-01-01T00:16:30")
    assert doc["Models"] == [{"ModelName": "demo", "ModelVersion": "3",
                              "LatestInference": "1970-01-01T00:16:40+00:00"}]
    assert doc["DeploymentResult"]["DeploymentStatus"] == "FAIL" and doc["AccessKeyId"] == "MRGEKEY"
    assert device_status(row, None, now=2000.0, connected_within=60)["Connected"] is False


def _package(home: Path, name: str, version: str, model: bytes = b"graph", key: object = None) -> bytes:
    signer = key or load_or_create_private_key(signing_key_path(home))
    return package_bytes({"name": name, "version": version}, {"model.onnx": model}, signer)  # type: ignore[arg-type]


def _staged(deployments: EdgeDeployments, data: bytes) -> Path:
    path = deployments.staged_file()
    path.write_bytes(data)
    return path


def test_publishing_verifies_keeps_and_survives_a_restart(ctx: Context, home: Path) -> None:
    _register(ctx, "fleet-a")
    deployments = EdgeDeployments(ctx)
    package = _package(home, "demo-model", "1.5")
    published = deployments.publish("fleet-a", _staged(deployments, package))
    assert published["ModelHandle"] == "demo-model-1.5"
    assert published["Checksum"] == {"Type": "SHA1", "Sum": hashlib.sha1(package).hexdigest()}
    path, _ = deployments.package_file("fleet-a", "demo-model-1.5")
    assert path.read_bytes() == package and path == home / "edge" / "packages" / "fleet-a" / "demo-model-1.5.tar.gz"
    assert list(deployments.staging.iterdir()) == []  # the staged file became the package

    refused = [_package(home, "demo-model", "2", key=generate_key()), b"\x1f\x8b not really", _package(home, "dm", "2")]
    for bad in refused:
        staged = _staged(deployments, bad)
        with pytest.raises(ValidationException):
            deployments.publish("fleet-a", staged)
        assert not staged.exists()
    with pytest.raises(ResourceInUse):
        deployments.publish("fleet-a", _staged(deployments, _package(home, "demo-model", "1.5", model=b"other")))
    with pytest.raises(ResourceNotFound):
        deployments.publish("no-fleet", _staged(deployments, package))
    with pytest.raises(ResourceNotFound):
        deployments.package_file("fleet-a", "demo-model-2")
    assert deployments.edge_deployments("fleet-a")[0]["Definitions"][0]["ModelHandle"] == "demo-model-1.5"

    # Another server on the same home: the same deployment, the same file; a leftover staged upload is gone.
    leftover = _staged(deployments, b"cut off by a crash")
    again = _context(home)
    try:
        restarted = EdgeDeployments(again)
        definition = restarted.edge_deployments("fleet-a")[0]["Definitions"][0]
        assert definition == {"ModelHandle": "demo-model-1.5", "State": "DEPLOY",
                              "Checksum": {"Type": "SHA1", "Sum": hashlib.sha1(package).hexdigest()}}
        assert restarted.package_file("fleet-a", "demo-model-1.5")[0].read_bytes() == package
        assert not leftover.exists()
        restarted.forget_fleet("fleet-a")
        assert not (home / "edge" / "packages" / "fleet-a").exists()
        with pytest.raises(ResourceNotFound):
            restarted.package_file("fleet-a", "demo-model-1.5")
    finally:
        again.store.close()


def test_a_package_is_read_from_a_location(ctx: Context, home: Path, tmp_path: Path) -> None:
    _register(ctx, "fleet-a")
    deployments = EdgeDeployments(ctx)
    source = tmp_path / "out" / "demo-model-7.tar.gz"
    source.parent.mkdir()
    source.write_bytes(_package(home, "demo-model", "7"))
    staged = deployments.copy_from(source.as_uri())
    published = deployments.publish("fleet-a", staged, source.as_uri())
    assert published["SourceUrl"] == source.as_uri()
    with pytest.raises(ValidationException, match="no such package"):
        deployments.copy_from((tmp_path / "missing.tar.gz").as_uri())
    with pytest.raises(ValidationException, match="scheme"):
        deployments.copy_from("ftp://example/x.tar.gz")
