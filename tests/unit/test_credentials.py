"""The admin key as the server, the CLI and the SDK find it (botocore's providers), and a client's region.

The environment is the test's own (monkeypatch), with HOME, the AWS files and every AWS_*/MOORAGE_*
variable pointed away from the machine's real ones.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from moorage.connection import ClientError, Connection
from moorage.credentials import (
    Credentials,
    CredentialsError,
    admin_credentials,
    find_admin_key,
    read_credentials,
)
from moorage.sdk.session import Session
from moorage.settings import DEFAULT_REGION, Settings

URL = "http://127.0.0.1:9"  # never called: these tests only find keys


@pytest.fixture
def user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A new user's home with no ~/.moorage and no ~/.aws, and no AWS or moorage variables set."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "MOORAGE_")):
            monkeypatch.delenv(key)
    home = tmp_path / "user"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / ".aws" / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / ".aws" / "config"))
    return home


def write_home_key(home: Path, key_id: str, secret: str) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "credentials").write_text(f"[default]\naws_access_key_id = {key_id}\naws_secret_access_key = {secret}\n")


def test_the_environment_comes_before_the_homes_file(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = user / "server-home"
    write_home_key(home, "FILEKEY", "file-secret")
    found = find_admin_key(home)
    assert found is not None and found.credentials == Credentials("FILEKEY", "file-secret")
    assert found.source == str(home / "credentials")
    monkeypatch.setenv("MOORAGE_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("MOORAGE_SECRET_ACCESS_KEY", "env-secret")
    found = find_admin_key(home)
    assert found is not None and found.credentials == Credentials("ENVKEY", "env-secret")
    assert found.source == "MOORAGE_ACCESS_KEY_ID/MOORAGE_SECRET_ACCESS_KEY"


def test_half_a_key_is_an_error(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_SECRET_ACCESS_KEY", "env-secret")
    with pytest.raises(CredentialsError, match="set both MOORAGE_ACCESS_KEY_ID and MOORAGE_SECRET_ACCESS_KEY"):
        find_admin_key(user / "server-home")
    monkeypatch.delenv("MOORAGE_SECRET_ACCESS_KEY")
    home = user / "server-home"
    home.mkdir()
    (home / "credentials").write_text("[default]\naws_access_key_id = FILEKEY\n")
    with pytest.raises(CredentialsError, match="aws_secret_access_key"):
        find_admin_key(home)


def test_clients_fall_back_to_botocores_chain_and_the_server_never_does(user: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AWSKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret")
    home = user / "server-home"
    assert find_admin_key(home) is None
    found = find_admin_key(home, aws_chain=True)
    assert found is not None and found.credentials == Credentials("AWSKEY", "aws-secret")
    settings = Settings.load({}, home=home)
    creds, generated = admin_credentials(settings)
    assert generated and creds.access_key_id != "AWSKEY"
    assert read_credentials(home) == creds
    assert stat.S_IMODE((home / "credentials").stat().st_mode) == 0o600


def test_a_profiles_credential_process_is_used(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = user / "key.py"
    script.write_text("import json\nprint(json.dumps({'Version': 1, 'AccessKeyId': 'PROCKEY', "
                      "'SecretAccessKey': 'proc-secret'}))\n")
    (user / ".aws").mkdir()
    (user / ".aws" / "config").write_text(f"[profile moorage]\ncredential_process = {sys.executable} {script}\n"
                                          "region = eu-west-3\n")
    monkeypatch.setenv("AWS_PROFILE", "moorage")
    connection = Connection.discover(user / "server-home", URL)
    assert (connection.access_key_id, connection.secret_access_key) == ("PROCKEY", "proc-secret")
    assert connection.region == "eu-west-3"  # botocore's config chain, with no server.json to say otherwise


def test_a_missing_profile_is_reported(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "nowhere")
    with pytest.raises(ClientError, match="nowhere"):
        Connection.discover(user / "server-home", URL)


def test_no_key_anywhere_says_where_it_looked(user: Path) -> None:
    home = user / "server-home"
    with pytest.raises(ClientError) as caught:
        Connection.discover(home, URL)
    message = str(caught.value)
    assert "MOORAGE_ACCESS_KEY_ID" in message and str(home / "credentials") in message


def test_the_sdk_session_finds_the_key_in_the_environment(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOORAGE_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("MOORAGE_SECRET_ACCESS_KEY", "env-secret")
    session = Session(url=URL)  # the default home, ~/.moorage, does not exist
    assert not (user / ".moorage").exists()
    assert (session.connection.access_key_id, session.connection.secret_access_key) == ("ENVKEY", "env-secret")
    assert session.region == DEFAULT_REGION and session.url == URL
    explicit = Session(url=URL, access_key_id="ARGKEY", secret_access_key="arg-secret", region="ap-south-1")
    assert (explicit.connection.access_key_id, explicit.region) == ("ARGKEY", "ap-south-1")


def test_region_from_the_servers_record_then_botocore_then_the_default(user: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    home = user / "server-home"
    write_home_key(home, "FILEKEY", "file-secret")
    assert Connection.discover(home, URL).region == DEFAULT_REGION
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-central-1")
    assert Connection.discover(home, URL).region == "eu-central-1"
    (home / "server.json").write_text(json.dumps({"url": "http://127.0.0.1:8123", "region": "us-west-2"}))
    connection = Connection.discover(home)
    assert connection.region == "us-west-2" and connection.url == "http://127.0.0.1:8123"


def test_a_key_from_the_environment_is_written_to_the_home(user: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = user / "server-home"
    write_home_key(home, "OLDKEY", "old-secret")
    monkeypatch.setenv("MOORAGE_ACCESS_KEY_ID", "ENVKEY")
    monkeypatch.setenv("MOORAGE_SECRET_ACCESS_KEY", "env-secret")
    creds, generated = admin_credentials(Settings.load({}, home=home))
    assert not generated and creds == Credentials("ENVKEY", "env-secret")
    assert read_credentials(home) == creds
