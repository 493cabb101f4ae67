"""Finding and talking to a running server from the CLI and SDK: URL, key, signed native calls."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials

from moorage.config import DEFAULT_HOST, DEFAULT_PORT, DEFAULT_REGION, SERVER_FILE, default_home, read_credentials


class ClientError(Exception):
    pass


@dataclass
class Connection:
    url: str
    access_key_id: str
    secret_access_key: str
    region: str = DEFAULT_REGION

    @classmethod
    def discover(cls, home: Path | None = None, url: str | None = None) -> Connection:
        home = Path(home or default_home()).expanduser()
        region = DEFAULT_REGION
        server_file = home / SERVER_FILE
        if url is None and server_file.exists():
            info = orjson.loads(server_file.read_bytes())
            url, region = info.get("url"), info.get("region", region)
        creds = read_credentials(home)
        if creds is None:
            raise ClientError(f"no credentials in {home / 'credentials'}: start `moorage serve --home {home}` "
                              "once, or pass the home the server uses.")
        return cls(url or f"http://{DEFAULT_HOST}:{DEFAULT_PORT}", creds.access_key_id, creds.secret_access_key,
                   region)

    def boto3_client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, endpoint_url=self.url, region_name=self.region,
                            aws_access_key_id=self.access_key_id, aws_secret_access_key=self.secret_access_key)

    def native(self, method: str, path: str, body: bytes = b"", timeout: float = 30.0) -> Any:
        """A SigV4-signed call to the native REST API; returns the decoded JSON."""
        request = AWSRequest(method=method, url=self.url.rstrip("/") + path, data=body)
        SigV4Auth(BotoCredentials(self.access_key_id, self.secret_access_key), "sagemaker",
                  self.region).add_auth(request)
        prepared = request.prepare()
        req = urllib.request.Request(prepared.url, data=body or None, method=method,
                                     headers=dict(prepared.headers.items()))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            try:
                detail = orjson.loads(exc.read()).get("message")
            except Exception:
                detail = exc.reason
            raise ClientError(f"{method} {path}: HTTP {exc.code}: {detail}") from exc
        except urllib.error.URLError as exc:
            raise ClientError(f"cannot reach moorage at {self.url}: {exc.reason}. Is `moorage serve` running?") from exc
