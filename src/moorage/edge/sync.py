"""The agent's side of the device door: every request to a moorage server, SigV4-signed with the
device's own key.

* ``POST /SendHeartbeat`` and ``POST /GetDeployments``: SageMaker Edge Manager's API (botocore's
  ``sagemaker-edge`` model, rest-json), so the bodies are its shapes.
* ``GET /moorage/v1/edge/fleets/{fleet}/packages/{handle}``: a package's bytes, streamed to a file.
* ``PUT /moorage/v1/edge/fleets/{fleet}/devices/{device}/capture/{segment}``: one sealed spool segment,
  its SHA-256 signed; the server stores it whole under a key named by the segment, so sending it again
  writes the same object.

One fresh connection per request (``Connection: close``): a device talks to its server a few times a
minute, and a connection that a flaky network broke is never reused by mistake. Every call has a
timeout. HTTP/1.1 is written by hand over a socket rather than with ``http.client``, which imports
``email`` and ``ssl`` (1.6 MB on top of the rest of the agent, whose budget is memory; see
``server.py``); ``ssl`` is imported for ``https://`` servers only.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
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


class _Body:
    """A response body as a reader: by Content-Length, chunked, or up to the connection's close."""

    def __init__(self, stream: BinaryIO, headers: dict[str, str]) -> None:
        self._stream = stream
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        length = headers.get("content-length")
        self._left = int(length) if length is not None and length.isdigit() and not self._chunked else None
        self._chunk_left = 0
        self._done = False

    def read(self, size: int = -1) -> bytes:
        if self._done:
            return b""
        if self._chunked:
            if self._chunk_left == 0:
                line = self._stream.readline(1024)
                try:
                    self._chunk_left = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise OSError("malformed chunked response") from None
                if self._chunk_left == 0:
                    self._done = True
                    return b""
            want = self._chunk_left if size < 0 else min(size, self._chunk_left)
            data = self._stream.read(want)
            if len(data) != want:
                raise OSError("the server closed mid-response")
            self._chunk_left -= len(data)
            if self._chunk_left == 0:
                self._stream.readline(1024)
            return data
        if self._left is None:
            data = self._stream.read() if size < 0 else self._stream.read(size)
            self._done = not data
            return data
        want = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(want) if want else b""
        if len(data) != want:
            raise OSError("the server closed mid-response")
        self._left -= len(data)
        self._done = self._left == 0
        return data

    def read_all(self, limit: int = 16 * 1024 * 1024) -> bytes:
        parts, size = [], 0
        while block := self.read(1 << 20):
            size += len(block)
            if size > limit:
                raise OSError(f"response over {limit} bytes")
            parts.append(block)
        return b"".join(parts)


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

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.endpoint.hostname, self.endpoint.port), timeout=self.timeout_s)
        if self.endpoint.scheme == "https":
            import ssl  # only for https: memory the agent does not spend on a plain-HTTP network

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.endpoint.hostname)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def request(self, method: str, path: str, body: bytes = b"", *, content_type: str | None = None,
                sink: Callable[[_Body], Any] | None = None,
                pause: Callable[[], None] | None = None) -> tuple[int, bytes | Any]:
        """Send one signed request; (status, body) or, with ``sink``, (status, what sink returned)."""
        sent_path = wire_path(self.endpoint.base_path + path)
        headers = self.signer.headers(method, self.endpoint.host, sent_path, body, content_type=content_type)
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        head = (f"{method} {sent_path} HTTP/1.1\r\n{head}Content-Length: {len(body)}\r\n"
                f"User-Agent: moorage-edge\r\nConnection: close\r\n\r\n")
        try:
            with self._connect() as sock:
                sock.sendall(head.encode("latin-1"))
                if pause is not None:
                    half = len(body) // 2
                    sock.sendall(body[:half])
                    pause()
                    sock.sendall(body[half:])
                elif body:
                    sock.sendall(body)
                with sock.makefile("rb") as stream:
                    status, response_headers = _response_head(stream)
                    reader = _Body(stream, response_headers)
                    if status == 200 and sink is not None:
                        return status, sink(reader)
                    return status, reader.read_all()
        except OSError as exc:
            raise ServerError(0, "Unreachable", f"{method} {self.endpoint.host}{path}: {exc}") from None

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

        def sink(response: _Body) -> str:
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


def _response_head(stream: BinaryIO) -> tuple[int, dict[str, str]]:
    """The status and headers of the final response (1xx interim responses skipped)."""
    while True:
        line = stream.readline(16 * 1024)
        parts = line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
            raise OSError(f"not an HTTP response: {line[:80]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for _ in range(200):
            raw = stream.readline(16 * 1024)
            if raw in (b"\r\n", b"\n", b""):
                break
            name, _, value = raw.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if status >= 200:
            return status, headers
