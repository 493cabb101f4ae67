"""HTTPS (issue 19): ``moorage serve --tls-self-signed`` and ``--tls-cert/--tls-key``, driven by boto3
with ``verify=`` the certificate; plain HTTP to a TLS port gets nothing."""

from __future__ import annotations

import json
import ssl
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest

from e2e_support import (
    HOST,
    REGION,
    Deployer,
    MoorageServer,
    ServerError,
    csv_body,
    file_url,
    pack_model,
)

pytestmark = pytest.mark.e2e


class TlsServer(MoorageServer):
    """A moorage serve subprocess over HTTPS; its clients trust ``cert`` (made by the server, or given)."""

    def __init__(self, home: Path, *, cert: Path | None = None, key: Path | None = None, **kw: Any) -> None:
        super().__init__(home, **kw)
        self.given = (cert, key) if cert is not None and key is not None else None

    @property
    def cert(self) -> Path:
        return self.given[0] if self.given else self.home / "tls" / "dev-cert.pem"

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.port}"

    def command(self) -> list[str]:
        tls = ["--tls-cert", str(self.given[0]), "--tls-key", str(self.given[1])] if self.given \
            else ["--tls-self-signed"]
        return [*super().command(), *tls]

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise ServerError(f"moorage serve exited before ready\n{self.log_tail()}")
            if self.cert.exists():
                try:
                    context = ssl.create_default_context(cafile=str(self.cert))
                    with urllib.request.urlopen(self.url + "/healthz", timeout=2, context=context) as reply:
                        if reply.status == 200:
                            return
                except (OSError, ssl.SSLError) as exc:
                    last = repr(exc)
            time.sleep(0.1)
        raise ServerError(f"/healthz over TLS not 200 after {timeout}s ({last})\n{self.log_tail()}")

    def client(self, service: str, **_: Any) -> Any:
        return boto3.session.Session().client(
            service, endpoint_url=self.url, region_name=REGION, verify=str(self.cert),
            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key,
            config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=60))


def _without_moorage_keys() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MOORAGE_", "AWS_"))}


@pytest.fixture
def tls_servers(tmp_path: Path) -> Any:
    started: list[TlsServer] = []

    def start(**kw: Any) -> TlsServer:
        srv = TlsServer(tmp_path / f"home{len(started)}", **kw)
        started.append(srv)
        return srv.start(timeout=90)  # type: ignore[return-value]

    yield start
    for srv in started:
        srv.stop()


def test_self_signed_https_serves_boto3_with_verify(tls_servers: Any, tmp_path: Path, classifier: Any) -> None:
    srv = tls_servers()
    key = srv.home / "tls" / "dev-key.pem"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert f"TLS: development certificate {srv.cert}" in srv.log_path.read_text()
    found = json.loads((srv.home / "server.json").read_bytes())  # what the home's clients read
    assert found["url"] == srv.url and found["ca_bundle"] == str(srv.cert)
    model, X = classifier
    deployer = Deployer(srv)
    try:
        name = deployer.deploy("tls", file_url(pack_model(tmp_path / "clf", model)))
        reply = srv.rt().invoke_endpoint(EndpointName=name, ContentType="text/csv", Body=csv_body(X[:3]))
        assert json.loads(reply["Body"].read()) == model.predict(X[:3]).tolist()
        # The CLI and the SDK of this home trust the certificate the server recorded in server.json.
        listed = subprocess.run([sys.executable, "-m", "moorage", "endpoints", "--home", str(srv.home)],
                                capture_output=True, text=True, timeout=60,
                                env={**_without_moorage_keys(), "MOORAGE_ACCESS_KEY_ID": srv.access_key_id,
                                     "MOORAGE_SECRET_ACCESS_KEY": srv.secret_access_key})
        assert listed.returncode == 0 and name in listed.stdout, listed.stderr
        from moorage.connection import Connection

        connection = Connection.discover(srv.home, access_key_id=srv.access_key_id,
                                         secret_access_key=srv.secret_access_key)
        assert connection.ca_bundle == str(srv.cert)
        assert name in {e["EndpointName"] for e in connection.native("GET", "/moorage/v1/endpoints")["Endpoints"]}
    finally:
        deployer.cleanup()
    # Without the certificate a client refuses the server; plain HTTP to the port gets no answer.
    unverified = boto3.session.Session().client(
        "sagemaker", endpoint_url=srv.url, region_name=REGION, aws_access_key_id=srv.access_key_id,
        aws_secret_access_key=srv.secret_access_key, config=botocore.config.Config(retries={"max_attempts": 1}))
    with pytest.raises(Exception, match=r"(?i)ssl|certificate"):
        unverified.list_models()
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{HOST}:{srv.port}/healthz", timeout=10).read()
    # A restart keeps the same certificate (clients keep trusting it).
    before = srv.cert.read_bytes()
    srv.stop()
    srv.start(timeout=90)
    assert srv.cert.read_bytes() == before
    assert "Models" in srv.sm().list_models()  # answered over TLS, the same file trusted


def test_given_certificate_and_key(tls_servers: Any, tmp_path: Path) -> None:
    # A certificate made by the server's own generator in another home, passed as files.
    from moorage.server import development_certificate

    cert, key = development_certificate(tmp_path / "elsewhere")
    srv = tls_servers(cert=cert, key=key)
    assert srv.sm().list_endpoints()["Endpoints"] == []
    assert not (srv.home / "tls").exists()


def test_bad_tls_options_stop_the_server_with_a_reason(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "moorage", "serve", "--host", HOST, "--port", "0", "--home", str(tmp_path / "h")]
    missing = tmp_path / "missing.pem"
    for extra, reason in (
            (["--tls-cert", str(missing)], "set both --tls-cert and --tls-key"),
            (["--tls-cert", str(missing), "--tls-key", str(missing)], "cannot serve TLS"),
    ):
        done = subprocess.run([*base, *extra], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done
        assert reason in done.stderr + done.stdout
