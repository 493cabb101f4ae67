"""Finding and talking to a running server from the CLI and SDK: URL, key, signed native calls.

The key is found as the server finds it (:mod:`moorage.credentials`: the MOORAGE_* variables, then the
home's credentials file), then through botocore's own chain; the URL and region from the home's
``server.json`` when there is one.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from moorage.credentials import CredentialsError, client_region, find_admin_key, no_key_message
from moorage.settings import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_REGION, SERVER_FILE, default_home

ARTIFACTS_PATH = "/moorage/v1/artifacts/"
# Uploads are streamed to disk by the server; the bound keeps one request from filling it.
MAX_ARTIFACT_BYTES = 2 * 1024**3
MAX_ARTIFACT_KEY_LENGTH = 1024
# S3's "safe" key characters less the ones that need quoting in shells ('*', quotes): keys become
# file names on the server, so anything that could be read as a path trick stays out.
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9!_.()+=@,~-]+")
_CHUNK = 1024 * 1024


class ClientError(Exception):
    pass


def artifact_key_problem(key: str) -> str | None:
    """Why ``key`` cannot name an artifact, or None. The server and the client apply the same rule.

    Keys are relative paths under the server's ``home/artifacts``: no absolute paths, no ``.`` or
    ``..`` segments (nor any segment starting with a dot, which is where uploads in progress live),
    no empty segments, and a conservative character set.
    """
    if not key:
        return "artifact key is empty"
    if len(key) > MAX_ARTIFACT_KEY_LENGTH:
        return f"artifact key is longer than {MAX_ARTIFACT_KEY_LENGTH} characters"
    if key.startswith("/"):
        return f"artifact key {key!r} is an absolute path; keys are relative to the artifact store"
    for segment in key.split("/"):
        if segment == "..":
            return f"artifact key {key!r} contains '..'"
        if not segment:
            return f"artifact key {key!r} has an empty path segment"
        if segment.startswith("."):
            return f"artifact key {key!r} has a segment starting with '.'"
        if not _KEY_SEGMENT.fullmatch(segment):
            return (f"artifact key {key!r} has characters outside letters, digits and !_.()+=@,~- "
                    "(segments are separated by '/')")
    return None


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Connection:
    url: str
    access_key_id: str
    secret_access_key: str
    region: str = DEFAULT_REGION
    # The CA certificates that verify an https:// server: the home's record of a server started with
    # --tls-self-signed, else AWS_CA_BUNDLE as AWS tools read it; None for the system's.
    ca_bundle: str | None = None

    @classmethod
    def discover(cls, home: Path | None = None, url: str | None = None, access_key_id: str | None = None,
                 secret_access_key: str | None = None, region: str | None = None) -> Connection:
        """The server recorded in ``home`` (server.json) and its admin key; arguments win.

        The key: the arguments, else ``MOORAGE_ACCESS_KEY_ID``/``MOORAGE_SECRET_ACCESS_KEY``, else
        ``home/credentials``, else botocore's chain (see :mod:`moorage.credentials`).
        """
        home = Path(home or default_home()).expanduser()
        info: dict[str, Any] = {}
        server_file = home / SERVER_FILE
        if server_file.exists():
            info = orjson.loads(server_file.read_bytes())
        url = url or info.get("url")
        if access_key_id and secret_access_key:
            key_id, secret = access_key_id, secret_access_key
        elif access_key_id or secret_access_key:
            raise ClientError("pass both access_key_id and secret_access_key, or neither")
        else:
            try:
                found = find_admin_key(home, aws_chain=True)
            except CredentialsError as exc:
                raise ClientError(str(exc)) from exc
            if found is None:
                raise ClientError(no_key_message(home))
            key_id, secret = found.credentials.access_key_id, found.credentials.secret_access_key
        return cls(url or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}", key_id, secret,
                   region or client_region(info.get("region")),
                   ca_bundle=info.get("ca_bundle") or os.environ.get("AWS_CA_BUNDLE") or None)

    def _tls(self) -> ssl.SSLContext | None:
        return ssl.create_default_context(cafile=self.ca_bundle) if self.ca_bundle else None

    def boto3_client(self, service: str, config: Any = None) -> Any:
        import boto3

        return boto3.session.Session().client(
            service, endpoint_url=self.url, region_name=self.region, aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key, config=config,
            **({"verify": self.ca_bundle} if self.ca_bundle else {}))

    def _sign(self, request: AWSRequest) -> None:
        SigV4Auth(BotoCredentials(self.access_key_id, self.secret_access_key), "sagemaker",
                  self.region).add_auth(request)

    def native(self, method: str, path: str, body: bytes = b"", timeout: float = 30.0) -> Any:
        """A SigV4-signed call to the native REST API; returns the decoded JSON."""
        return orjson.loads(self.native_bytes(method, path, body, timeout))

    def native_bytes(self, method: str, path: str, body: bytes = b"", timeout: float = 30.0) -> bytes:
        """A SigV4-signed call to the native REST API; returns the reply's body as it came (a report page)."""
        request = AWSRequest(method=method, url=self.url.rstrip("/") + path, data=body)
        self._sign(request)
        prepared = request.prepare()
        req = urllib.request.Request(prepared.url, data=body or None, method=method,
                                     headers=dict(prepared.headers.items()))
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self._tls()) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise ClientError(f"{method} {path}: HTTP {exc.code}: {_error_detail(exc.read(), exc.reason)}") from exc
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach moorage at {self.url}: {exc.reason}. Is `moorage serve` running?") from exc

    def put_artifact(self, key: str, path: Path, timeout: float = 600.0) -> dict[str, Any]:
        """Upload a local file to the server's artifact store as ``key``; returns ``{"Url": ...}``.

        The body is streamed, never held in memory. SigV4 normally hashes the body while signing;
        here the hash is computed in a first pass over the file and declared in X-Amz-Content-SHA256
        (botocore signs a header it finds there rather than hashing the body), and the server checks
        the bytes it stores against it.
        """
        if (problem := artifact_key_problem(key)) is not None:
            raise ClientError(problem)
        path = Path(path)
        size = path.stat().st_size
        if size > MAX_ARTIFACT_BYTES:
            raise ClientError(f"{path} is {size} bytes; artifact uploads are limited to {MAX_ARTIFACT_BYTES} bytes")
        url = self.url.rstrip("/") + ARTIFACTS_PATH + quote(key, safe="/")
        request = AWSRequest(method="PUT", url=url, data=b"",
                             headers={"X-Amz-Content-SHA256": file_sha256(path)})
        self._sign(request)
        headers = dict(request.headers.items())
        headers["Content-Length"] = str(size)
        headers["Content-Type"] = "application/octet-stream"
        parts = urlsplit(url)
        conn = (http.client.HTTPSConnection(parts.netloc, timeout=timeout, context=self._tls())
                if parts.scheme == "https" else http.client.HTTPConnection(parts.netloc, timeout=timeout))
        try:
            with open(path, "rb") as body:
                try:
                    # http.client sends a file object in blocks, so memory stays flat for any size.
                    conn.request("PUT", parts.path, body=body, headers=headers)
                except (BrokenPipeError, ConnectionResetError):
                    # The server may refuse (bad key, too large) and close before the body is sent;
                    # its answer is still waiting to be read and says why.
                    pass
            resp = conn.getresponse()
            payload = resp.read()
        except OSError as exc:
            raise ClientError(f"cannot upload to moorage at {self.url}: {exc}. Is `moorage serve` running?") from exc
        finally:
            conn.close()
        if resp.status != 200:
            raise ClientError(f"PUT {ARTIFACTS_PATH}{key}: HTTP {resp.status}: {_error_detail(payload, resp.reason)}")
        return orjson.loads(payload)


def _error_detail(payload: bytes, fallback: Any) -> Any:
    try:
        return orjson.loads(payload).get("message") or fallback
    except Exception:
        return fallback
