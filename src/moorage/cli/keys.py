"""``moorage keys``: create, list, revoke and rotate access keys with roles (admin-only native routes).

A secret is printed once, by the command that made it; ``--credentials-out FILE`` writes the key in the
AWS shared-credentials format instead (mode 0600), so boto3 and the AWS CLI can use it with
``AWS_SHARED_CREDENTIALS_FILE=FILE``, and the secret is not printed at all.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
import orjson
from rich.table import Table

from moorage.cli.common import fail, home_option, stdout_console, url_option
from moorage.connection import ClientError, Connection
from moorage.control.access_keys import ROLES
from moorage.credentials import Credentials, write_credentials_file

_PATH = "/moorage/v1/access-keys"


def _call(home: Path | None, url: str | None, method: str, path: str, body: Any = None) -> tuple[Any, Connection]:
    try:
        connection = Connection.discover(home, url)
        return connection.native(method, path, orjson.dumps(body) if body is not None else b""), connection
    except ClientError as exc:
        fail(str(exc))


def _key_path(key_id: str) -> str:
    return f"{_PATH}/{quote(key_id, safe='')}"


def _issued(key: dict[str, Any], connection: Connection, credentials_out: Path | None) -> None:
    scope = ", ".join(key.get("EndpointNames", [])) or "every endpoint"
    if credentials_out is not None:
        write_credentials_file(credentials_out, Credentials(key["AccessKeyId"], key["SecretAccessKey"]),
                               connection.region)
        click.echo(f"access key {key['AccessKeyId']} ({key['Role']}, {scope}) written to {credentials_out}")
        return
    click.echo(f"access key id:     {key['AccessKeyId']}\nsecret access key: {key['SecretAccessKey']}\n"
               f"role:              {key['Role']} ({scope})\n"
               "The secret is shown only now: keep it, or rotate the key to get a new one.")


credentials_out_option = click.option(
    "--credentials-out", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="Write the key to this file (AWS shared-credentials format, mode 0600) instead of printing the secret.")


@click.group()
def keys() -> None:
    """Access keys with roles: admin, deployer, invoker, viewer (admin only)."""


@keys.command("create")
@click.option("--role", type=click.Choice(ROLES), required=True, help="What the key may do.")
@click.option("--endpoints", default=None, help="Comma-separated endpoint names a deployer or invoker key is "
              "limited to.")
@credentials_out_option
@home_option
@url_option
def create(role: str, endpoints: str | None, credentials_out: Path | None, home: Path | None,
           url: str | None) -> None:
    """Make a key; its secret is printed once (or written with --credentials-out)."""
    body: dict[str, Any] = {"Role": role}
    if endpoints is not None:
        body["EndpointNames"] = [e.strip() for e in endpoints.split(",") if e.strip()]
    key, connection = _call(home, url, "POST", _PATH, body)
    _issued(key, connection, credentials_out)


@keys.command("list")
@home_option
@url_option
def list_keys(home: Path | None, url: str | None) -> None:
    """Every key, its role and endpoints (never a secret)."""
    listed, _ = _call(home, url, "GET", _PATH)
    table = Table("AccessKeyId", "Role", "Endpoints", "Created")
    for key in listed["AccessKeys"]:
        created = key.get("CreationTime")
        table.add_row(key["AccessKeyId"], key["Role"], ", ".join(key.get("EndpointNames", [])) or "all",
                      "server's admin key" if key.get("Source") == "server" else
                      dt.datetime.fromtimestamp(created).isoformat(timespec="seconds"))
    stdout_console().print(table)


@keys.command("revoke")
@click.argument("key_id")
@home_option
@url_option
def revoke(key_id: str, home: Path | None, url: str | None) -> None:
    """Revoke a key: what it signs is refused from now on."""
    _call(home, url, "DELETE", _key_path(key_id))
    click.echo(f"access key {key_id} revoked")


@keys.command("rotate")
@click.argument("key_id")
@credentials_out_option
@home_option
@url_option
def rotate(key_id: str, credentials_out: Path | None, home: Path | None, url: str | None) -> None:
    """Replace a key by a new one with the same role and endpoints; the old one is revoked."""
    key, connection = _call(home, url, "POST", _key_path(key_id) + "/rotate")
    click.echo(f"access key {key_id} revoked; its replacement:")
    _issued(key, connection, credentials_out)
