"""``moorage edge devices``, ``moorage edge register`` and ``moorage edge publish``: fleets' devices from the shell.

- ``devices [--fleet F]``: every registered device with what its agent last reported: when it was last
  seen, the package it serves, its spool backlog, records dropped, its last sync, errors and the outcome
  of its last package switch (the native ``GET /moorage/v1/edge/devices``: SageMaker's DescribeDevice
  has no members for most of these).
- ``register --fleet F DEVICE``: RegisterDevices (the fleet must exist: CreateDeviceFleet), then a new
  access key for the device. The secret is shown once and never again: printed, or, with
  ``--credentials-out FILE``, written there (mode 0600) in the agent's credentials format (the AWS
  shared-credentials INI, profile ``default``, with the region), and only the key id printed.
  A device already registered gets a new key (its old one stops working).
- ``publish --fleet F PACKAGE``: make a package (a file from ``moorage edge compile``, or an ``s3://``
  URL of one) the fleet's deployment; the server verifies its signature first. A file is streamed, its
  SHA-256 declared and signed, never held in memory.

These commands are registered into the ``edge`` group of ``cli/edge.py``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import click
from rich.table import Table

from moorage.cli.common import fail, home_option, reports_errors, stdout_console, url_option
from moorage.credentials import Credentials, write_credentials_file

__all__ = ["devices_command", "publish_command", "register_command"]


def _connection(home: Path | None, url: str | None) -> Any:
    from moorage.connection import Connection

    return Connection.discover(home=home, url=url)


def _ago(moment: str | None, now: float) -> str:
    if not moment:
        return "never"
    seconds = max(0.0, now - dt.datetime.fromisoformat(moment).timestamp())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit} ago"
    return f"{seconds:.0f} s ago"


def _count(value: Any) -> str:
    return "-" if value is None else f"{value:,.0f}"


@click.command("devices")
@click.option("--fleet", default=None, help="Only this device fleet's devices.")
@click.option("--json", "as_json", is_flag=True, help="Print the server's document as JSON.")
@home_option
@url_option
@reports_errors
def devices_command(fleet: str | None, as_json: bool, home: Path | None, url: str | None) -> None:
    """Registered edge devices: last seen, package, backlog, dropped, last sync, errors."""
    path = "/moorage/v1/edge/devices" + (f"?DeviceFleetName={quote(fleet, safe='')}" if fleet else "")
    doc = _connection(home, url).native("GET", path)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    devices = doc["Devices"]
    if not devices:
        click.echo("no devices registered" + (f" with fleet {fleet}" if fleet else ""))
        return
    now = time.time()
    table = Table("fleet", "device", "last seen", "package", "backlog", "dropped", "last sync", "errors",
                  "last deployment", "agent")
    for d in devices:
        models = ", ".join(f"{m.get('ModelName')} {m.get('ModelVersion')}" for m in d.get("Models") or []) or "-"
        backlog = _count(d.get("SpoolBacklogRecords"))
        if d.get("SpoolBacklogBytes") is not None:
            backlog += f" ({d['SpoolBacklogBytes'] / 1024:,.0f} KiB)"
        result = d.get("DeploymentResult") or {}
        deployment = " ".join(str(v) for v in (result.get("DeploymentName"), result.get("DeploymentStatus")) if v)
        if result.get("DeploymentStatusMessage"):
            deployment += f": {result['DeploymentStatusMessage']}"
        seen = _ago(d.get("LatestHeartbeat"), now) + ("" if d.get("Connected") or not d.get("LatestHeartbeat")
                                                      else " (offline)")
        synced = _ago(d.get("LastSyncTime"), now) if d.get("LatestHeartbeat") else "-"
        table.add_row(d["DeviceFleetName"], d["DeviceName"], seen, models, backlog,
                      _count(d.get("SpoolDroppedRecords")), synced, _count(d.get("Errors")), deployment or "-",
                      d.get("AgentVersion") or "-")
    stdout_console().print(table)


def _write_credentials(path: Path, key: dict[str, Any], server_url: str) -> None:
    """The agent's credentials file (``moorage.edge.credentials``): AWS's INI, written aside as 0600, then renamed."""
    write_credentials_file(path, Credentials(key["AccessKeyId"], key["SecretAccessKey"]), key["Region"],
                           f"moorage edge device {key['DeviceName']} of fleet {key['DeviceFleetName']} "
                           f"({server_url}).\nmoorage-edge serve --credentials {path} ...")


@click.command("register")
@click.argument("device")
@click.option("--fleet", required=True, help="The device fleet (CreateDeviceFleet) to register the device with.")
@click.option("--description", default=None, help="The device's Description (40 characters at most).")
@click.option("--credentials-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the device's key here (mode 0600) for `moorage-edge serve --credentials`, "
                   "instead of printing the secret.")
@home_option
@url_option
@reports_errors
def register_command(device: str, fleet: str, description: str | None, credentials_out: Path | None,
                     home: Path | None, url: str | None) -> None:
    """Register DEVICE with a fleet and give it an access key of its own (shown once)."""
    from botocore.exceptions import ClientError as BotoClientError

    connection = _connection(home, url)
    sm = connection.boto3_client("sagemaker")
    entry = {"DeviceName": device, **({"Description": description} if description else {})}
    try:
        sm.register_devices(DeviceFleetName=fleet, Devices=[entry])
        click.echo(f"registered {device} with fleet {fleet}", err=True)
    except BotoClientError as exc:
        if "already registered" not in str(exc):
            raise
        click.echo(f"{device} is already registered with fleet {fleet}: it gets a new key, its old key stops "
                   "working", err=True)
    key = connection.native("POST", f"/moorage/v1/edge/fleets/{quote(fleet, safe='')}/devices/"
                                    f"{quote(device, safe='')}/keys")
    if credentials_out is not None:
        _write_credentials(credentials_out, key, connection.url)
        click.echo(f"access key id {key['AccessKeyId']}; the key is in {credentials_out} (0600), and nowhere else: "
                   "the server will not show its secret again")
        return
    click.echo(f"access key id:     {key['AccessKeyId']}\nsecret access key: {key['SecretAccessKey']}\n"
               f"region:            {key['Region']}")
    click.echo("the secret is shown this once: keep it on the device (MOORAGE_ACCESS_KEY_ID / "
               "MOORAGE_SECRET_ACCESS_KEY, or --credentials-out next time)", err=True)


def _signed_post(connection: Any, path: str, body: Any, sha256: str, size: int, content_type: str) -> dict[str, Any]:
    """POST ``body`` (bytes or a file object, streamed by http.client) signed over its declared SHA-256."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from moorage.connection import ClientError

    url = connection.url.rstrip("/") + path
    request = AWSRequest(method="POST", url=url, data=b"",
                         headers={"X-Amz-Content-SHA256": sha256, "Content-Type": content_type})
    SigV4Auth(Credentials(connection.access_key_id, connection.secret_access_key), "sagemaker",
              connection.region).add_auth(request)
    headers = dict(request.headers.items())
    headers["Content-Length"] = str(size)
    parts = urlsplit(url)
    conn_class = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = conn_class(parts.netloc, timeout=600)
    try:
        try:
            conn.request("POST", parts.path, body=body, headers=headers)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the whole body was sent: the answer says why
        response = conn.getresponse()
        payload = response.read()
    except OSError as exc:
        raise ClientError(f"cannot reach moorage at {connection.url}: {exc}. Is `moorage serve` running?") from exc
    finally:
        conn.close()
    try:
        doc = json.loads(payload)
    except ValueError:
        doc = {}
    if response.status != 200:
        raise ClientError(f"{doc.get('__type', 'Error')}: {doc.get('message') or response.reason}")
    return dict(doc)


@click.command("publish")
@click.argument("package")
@click.option("--fleet", required=True, help="The device fleet whose devices get the package.")
@home_option
@url_option
@reports_errors
def publish_command(package: str, fleet: str, home: Path | None, url: str | None) -> None:
    """Make PACKAGE (a file from `moorage edge compile`, or an s3:// URL of one) the fleet's deployment."""
    from moorage.connection import file_sha256

    connection = _connection(home, url)
    path = f"/moorage/v1/edge/fleets/{quote(fleet, safe='')}/deployments"
    if package.startswith("s3://"):
        body = json.dumps({"PackageUrl": package}).encode()
        result = _signed_post(connection, path, body, hashlib.sha256(body).hexdigest(), len(body), "application/json")
    else:
        source = Path(package)
        if not source.is_file():
            fail(f"{package}: no such package file")
        with open(source, "rb") as fh:
            result = _signed_post(connection, path, fh, file_sha256(source), source.stat().st_size,
                                  "application/gzip")
    click.echo(f"published {result['ModelHandle']} to fleet {fleet}: SHA1 {result['Checksum']['Sum']}, "
               f"{result['Size']:,} bytes, signed by key {result.get('SigningKeyId')}; its devices take it at their "
               "next GetDeployments")
