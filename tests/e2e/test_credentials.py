"""A new user's CLI and SDK find the server's admin key where the server found it: the environment.

The reported defect: a server started with MOORAGE_ACCESS_KEY_ID/MOORAGE_SECRET_ACCESS_KEY on a
temporary home, then ``moorage monitor run SCHEDULE --url URL`` with the same variables set failed
with "no credentials in ~/.moorage/credentials". Here the client runs with a HOME that has no
~/.moorage and no ~/.aws, as a new user's would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from e2e_support import MoorageServer
from moorage.sdk.session import Session


def new_user_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MOORAGE_"))}
    env.update(HOME=str(home), AWS_SHARED_CREDENTIALS_FILE=str(home / ".aws" / "credentials"),
               AWS_CONFIG_FILE=str(home / ".aws" / "config"), **extra)
    return env


def moorage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moorage", *args], capture_output=True, text=True, timeout=120,
                          env=env, cwd=env["HOME"])


@pytest.mark.e2e
def test_the_cli_finds_the_key_in_the_environment(fresh_server: Callable[..., MoorageServer], tmp_path: Path) -> None:
    server = fresh_server()  # started with MOORAGE_ACCESS_KEY_ID/MOORAGE_SECRET_ACCESS_KEY, on its own home
    user = tmp_path / "new-user"
    user.mkdir()

    # Without the variables there is nothing to find, and the message says where it looked.
    lost = moorage("monitor", "run", "nightly", "--url", server.url, "--no-wait", env=new_user_env(user))
    assert lost.returncode != 0
    assert "no credentials for moorage" in lost.stderr and "MOORAGE_ACCESS_KEY_ID" in lost.stderr, lost.stderr
    assert lost.returncode == 1 and "Traceback" not in lost.stderr, lost.stderr

    env = new_user_env(user, MOORAGE_ACCESS_KEY_ID=server.access_key_id,
                       MOORAGE_SECRET_ACCESS_KEY=server.secret_access_key)
    listed = moorage("endpoints", "--url", server.url, env=env)
    assert listed.returncode == 0, listed.stderr
    assert "no endpoints" in listed.stdout
    # The reported command: the server accepted the signature and answered about the schedule itself.
    ran = moorage("monitor", "run", "nightly", "--url", server.url, "--no-wait", env=env)
    assert ran.returncode == 1
    assert "nightly" in ran.stderr and "credentials" not in ran.stderr, ran.stderr
    assert not (user / ".moorage").exists()


@pytest.mark.e2e
def test_the_sdk_session_finds_the_key_in_the_environment(fresh_server: Callable[..., MoorageServer],
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = fresh_server()
    user = tmp_path / "new-user"
    user.mkdir()
    for key in list(os.environ):
        if key.startswith(("AWS_", "MOORAGE_")):
            monkeypatch.delenv(key)
    for key, value in new_user_env(user, MOORAGE_ACCESS_KEY_ID=server.access_key_id,
                                   MOORAGE_SECRET_ACCESS_KEY=server.secret_access_key).items():
        monkeypatch.setenv(key, value)
    session = Session(url=server.url)
    assert session.sagemaker_client.list_endpoints()["Endpoints"] == []
