"""The agent's side of the device door: every request to a moorage server, SigV4-signed with the
device's own key.

* ``POST /SendHeartbeat`` and ``POST /GetDeployments``: SageMaker Edge Manager's API (botocore's
  ``sagemaker-edge`` model, rest-json), so the bodies are its shapes.
* ``GET /moorage/v1/edge/fleets/{fleet}/packages/{handle}``: a package's bytes, streamed to a file.
* ``PUT /moorage/v1/edge/fleets/{fleet}/devices/{device}/capture/{segment}``: one sealed spool segment,
  its SHA-256 signed; the server stores it whole under a key named by the segment, so sending it again
  writes the same object.

``http.client`` on a fresh connection per request: a device talks to its server a few times a minute,
and a connection that a flaky network broke is never reused by mistake. Every call has a timeout.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from moorage.edge.signing import Signer, wire_path
from moorage.edge.spool import Segment

JSON_TYPE = "application/json"
SEGMENT_TYPE = "application/jsonlines"


class ServerError(Exception):
    """The server answered, with an error (``status`` and AWS's error ``code``), or did not answer
    (``status`` 0: connection refused, reset, timed out)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code} ({status}): {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message

    @property
    def unreachable(self) -> bool:
        return self.status == 0 or self.status >= 500


@dataclass(frozen=True)
class Endpoint:
    scheme: str
    host: str  # host[:port] as the Host header says it
    hostname: str
    port: int
    base_path: str

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"server URL {url!r} is not http(s)://HOST[:PORT]")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        default = (parts.scheme, port) in (("http", 80), ("https", 443))
        host = parts.hostname if default else f"{parts.hostname}:{port}"
        if ":" in parts.hostname:  # an IPv6 literal keeps its brackets in Host
            host = f"[{parts.hostname}]" if default else f"[{parts.hostname}]:{port}"
        return cls(parts.scheme, host, parts.hostname, port, parts.path.rstrip("/"))


class DeviceClient:
    """One device's calls to its server."""

    def __init__(self, url: str, signer: Signer, fleet: str, device: str, *, timeout_s: float = 30.0,
                 upload_pause_file: str | None = None) -> None:
        self.endpoint = Endpoint.parse(url)
        self.signer = signer
        self.fleet = fleet
        self.device = device
        self.timeout_s = timeout_s
        # Test hook (``moorage-edge serve --upload-pause-file``): after an upload's headers and half its
        # body, create this file and stop, so a test can kill the agent mid-upload deterministically.
        self.upload_pause_file = upload_pause_file

    def _connection(self) -> http.client.HTTPConnection:
        if self.endpoint.scheme == "https":
            return http.client.HTTPSConnection(self.endpoint.hostname, self.endpoint.port, timeout=self.timeout_s)
        return http.client.HTTPConnection(self.endpoint.hostname, self.endpoint.port, timeout=self.timeout_s)

    def request(self, method: str, path: str, body: bytes = b"", *, content_type: str | None = None,
                sink: Callable[[http.client.HTTPResponse], Any] | None = None,
                pause: Callable[[], None] | None = None) -> tuple[int, bytes | Any]:
        """Send one signed request; (status, body) or, with ``sink``, (status, what sink returned)."""
        sent_path = wire_path(self.endpoint.base_path + path)
        headers = self.signer.headers(method, self.endpoint.host, sent_path, body, content_type=content_type)
        headers["Content-Length"] = str(len(body))
        connection = self._connection()
        try:
            connection.putrequest(method, sent_path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                connection.putheader(name, value)
            connection.endheaders()
            if pause is not None:
                half = len(body) // 2
                connection.send(body[:half])
                pause()
                connection.send(body[half:])
            elif body:
                connection.send(body)
            response = connection.getresponse()
            if response.status == 200 and sink is not None:
                return response.status, sink(response)
            return response.status, response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ServerError(0, "Unreachable", f"{method} {self.endpoint.host}{path}: {exc}") from None
        finally:
            connection.close()

    def call(self, method: str, path: str, body: bytes = b"", *, content_type: str | None = None,
             pause: Callable[[], None] | None = None) -> bytes:
        status, data = self.request(method, path, body, content_type=content_type, pause=pause)
        if status != 200:
            raise _error(status, data)
        return data  # type: ignore[no-any-return]

    # ------------------------------------------------------------------------------------ operations

    def send_heartbeat(self, payload: dict[str, Any]) -> None:
        body = json.dumps({"DeviceName": self.device, "DeviceFleetName": self.fleet, **payload},
                          separators=(",", ":")).encode("utf-8")
        self.call("POST", "/SendHeartbeat", body, content_type=JSON_TYPE)

    def get_deployments(self) -> list[dict[str, Any]]:
        body = json.dumps({"DeviceName": self.device, "DeviceFleetName": self.fleet}).encode("utf-8")
        data = self.call("POST", "/GetDeployments", body, content_type=JSON_TYPE)
        try:
            answer = json.loads(data or b"{}")
        except ValueError as exc:
            raise ServerError(200, "InvalidResponse", f"GetDeployments answered no JSON: {exc}") from None
        deployments = answer.get("Deployments") or []
        return [d for d in deployments if isinstance(d, dict)]

    def download_package(self, handle: str, target: Path, max_bytes: int) -> str:
        """Stream the package ``handle`` into ``target`` (whole, fsynced); its SHA1 hex."""
        partial = target.with_name(target.name + ".part")

        def sink(response: http.client.HTTPResponse) -> str:
            digest = hashlib.sha1(usedforsecurity=False)
            size = 0
            with open(partial, "wb") as out:
                while block := response.read(1 << 20):
                    size += len(block)
                    if size > max_bytes:
                        raise ServerError(200, "PackageTooLarge", f"package {handle} is over {max_bytes} bytes")
                    digest.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            return digest.hexdigest()

        try:
            status, result = self.request("GET", f"/moorage/v1/edge/fleets/{self.fleet}/packages/{handle}", sink=sink)
            if status != 200:
                raise _error(status, result)
            os.replace(partial, target)
            return str(result)
        finally:
            partial.unlink(missing_ok=True)

    def upload_segment(self, segment: Segment) -> str:
        """PUT one sealed segment; the key the server stored it under."""
        body = segment.path.read_bytes()
        pause = self._pause if self.upload_pause_file else None
        data = self.call("PUT", f"/moorage/v1/edge/fleets/{self.fleet}/devices/{self.device}/capture/{segment.name}",
                         body, content_type=SEGMENT_TYPE, pause=pause)
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            answer = {}
        return str(answer.get("Key") or answer.get("key") or answer.get("S3Uri") or "") if isinstance(answer, dict) \
            else ""

    def _pause(self) -> None:
        assert self.upload_pause_file is not None
        Path(self.upload_pause_file).write_text(str(os.getpid()))
        threading.Event().wait()  # until the test kills the process


def _error(status: int, data: bytes) -> ServerError:
    code, message = "HttpError", (data or b"").decode("utf-8", "replace")[:500]
    try:
        doc = json.loads(data)
    except (ValueError, TypeError):
        doc = None
    if isinstance(doc, dict):
        code = str(doc.get("__type") or doc.get("code") or doc.get("Code") or code).rsplit("#", 1)[-1]
        message = str(doc.get("message") or doc.get("Message") or message)
    return ServerError(status, code, message)
