"""``moorage-edge serve``'s HTTP side: SageMaker's container contract in front of an ``Agent``.

``GET /ping`` answers 200 (the package is loaded before the socket exists); ``POST /invocations``
takes CSV, JSON, JSON Lines or NPY and answers as Accept asks, with the instance servers' error
statuses (400 a body that does not parse, 406 an Accept, 415 a Content-Type, 413 over 6 MB, 500 the
model failed: text/plain, the reason in the body). ``X-Amzn-SageMaker-Inference-Id`` is kept in the
capture record.

Why HTTP/1.1 by hand over ``socketserver``'s threads, not ``http.server`` nor asyncio with httptools:
the agent's budget is memory and its extra. httptools is outside the edge extra; asyncio costs about
7 MB of resident memory on its own; ``http.server`` pulls in ``http.client``, ``email`` and ``ssl``
(2 MB on top of the rest of the agent). The contract needs little of HTTP: a request line, headers, a
``Content-Length`` or chunked body, keep-alive and ``Expect: 100-continue`` (curl sends it for bodies
over 1 KiB); that is this module. One thread per connection suits a device's few clients, and the
thread calls the model directly: no hand-off to an executor. Measured with ``bench/edge.py`` (2-core
EPYC, one keep-alive connection, a 100-tree model): this server p50 117-123 µs and a 74.3 MiB peak,
the same agent on ``ThreadingHTTPServer`` p50 155 µs and 77.0 MiB; the full server 545 µs, 310 MiB.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from typing import Any

from moorage.edge.agent import Agent

log = logging.getLogger("moorage.edge.server")

MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's InvokeEndpoint payload limit
_DRAIN_BYTES = 4 * MAX_BODY_BYTES  # an oversize body up to this is read (and dropped) before its 413
_MAX_LINE = 16 * 1024
_MAX_HEADERS = 100
_TEXT = b"text/plain; charset=utf-8"
_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed", 406: b"Not Acceptable",
            413: b"Payload Too Large", 415: b"Unsupported Media Type", 431: b"Request Header Fields Too Large",
            500: b"Internal Server Error", 501: b"Not Implemented", 505: b"HTTP Version Not Supported"}


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class _Connection(socketserver.StreamRequestHandler):
    """One client connection: requests one after the other while the client keeps it alive."""

    server: EdgeServer
    rbufsize = 64 * 1024

    def setup(self) -> None:
        super().setup()
        # Small answers go out at once, not after the client's delayed ACK.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except (ConnectionError, TimeoutError):
            pass  # the client went away

    def _reply(self, status: int, body: bytes, content_type: bytes = _TEXT, *, keep_alive: bool = True,
               head: bool = False) -> None:
        lines = [b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                 % (status, _REASONS.get(status, b"Unknown"), content_type, len(body))]
        if not keep_alive:
            lines.append(b"Connection: close\r\n")
        lines.append(b"\r\n")
        if not head:
            lines.append(body)
        self.wfile.write(b"".join(lines))  # one write: one segment on the wire for a small answer

    def _one(self) -> bool:
        """Serve one request; False when the connection should close."""
        rfile = self.rfile
        line = rfile.readline(_MAX_LINE + 1)
        while line in (b"\r\n", b"\n"):  # stray empty lines between requests are allowed
            line = rfile.readline(_MAX_LINE + 1)
        if not line:
            return False
        try:
            method, target, version, headers = self._head(line)
        except _BadRequest as exc:
            self._reply(exc.status, str(exc).encode(), keep_alive=False)
            return False
        connection = headers.get(b"connection", b"").lower()
        keep_alive = connection != b"close" if version == b"HTTP/1.1" else connection == b"keep-alive"
        path = target.split(b"?", 1)[0]
        if method in (b"GET", b"HEAD"):
            status, body = (200, b"") if path == b"/ping" else (404, b"not found")
            self._reply(status, body, keep_alive=keep_alive, head=method == b"HEAD")
            return keep_alive
        if method != b"POST":
            self._reply(405, b"method not allowed", keep_alive=False)
            return False
        if headers.get(b"expect", b"").lower() == b"100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            body = self._body(headers)
        except _BadRequest as exc:
            self._reply(exc.status, str(exc).encode(), keep_alive=False)
            return False
        if path != b"/invocations":
            self._reply(404, b"not found", keep_alive=keep_alive)
            return keep_alive
        status, answer, content_type = self.server.agent.invoke(
            body, _text(headers.get(b"content-type")), _text(headers.get(b"accept")),
            _text(headers.get(b"x-amzn-sagemaker-inference-id")))
        self._reply(status, answer, content_type.encode("latin-1"), keep_alive=keep_alive)
        return keep_alive

    def _head(self, line: bytes) -> tuple[bytes, bytes, bytes, dict[bytes, bytes]]:
        if len(line) > _MAX_LINE or not line.endswith(b"\n"):
            raise _BadRequest(400, "request line too long")
        parts = line.split()
        if len(parts) != 3:
            raise _BadRequest(400, "malformed request line")
        method, target, version = parts
        if version not in (b"HTTP/1.1", b"HTTP/1.0"):
            raise _BadRequest(505, "HTTP/1.0 and HTTP/1.1 only")
        headers: dict[bytes, bytes] = {}
        for _ in range(_MAX_HEADERS + 1):
            raw = self.rfile.readline(_MAX_LINE + 1)
            if raw in (b"\r\n", b"\n"):
                return method, target, version, headers
            if not raw:
                raise ConnectionResetError("the client closed mid-request")
            if len(raw) > _MAX_LINE:
                raise _BadRequest(431, "header line too long")
            name, colon, value = raw.partition(b":")
            if not colon or not name or name != name.strip():
                raise _BadRequest(400, "malformed header line")
            headers[name.lower()] = value.strip()
        raise _BadRequest(431, f"over {_MAX_HEADERS} header lines")

    def _body(self, headers: dict[bytes, bytes]) -> bytes:
        rfile = self.rfile
        if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
            chunks, size = [], 0
            while True:
                try:
                    length = int(rfile.readline(_MAX_LINE).split(b";", 1)[0], 16)
                except ValueError:
                    raise _BadRequest(400, "malformed chunked body") from None
                if length == 0:
                    while rfile.readline(_MAX_LINE).strip():
                        pass  # trailers
                    return b"".join(chunks)
                size += length
                if size > MAX_BODY_BYTES:
                    raise _BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
                chunks.append(rfile.read(length))
                rfile.readline(_MAX_LINE)
        text = headers.get(b"content-length", b"0")
        if not text.isdigit():
            raise _BadRequest(400, "bad Content-Length")
        length = int(text)
        if length > MAX_BODY_BYTES:
            # Read it (in blocks, kept nowhere) before answering: a client still sending would see a
            # broken pipe instead of the 413. Past a few times the cap, just close.
            if length <= _DRAIN_BYTES:
                while length > 0:
                    block = rfile.read(min(length, 1 << 20))
                    if not block:
                        break
                    length -= len(block)
            raise _BadRequest(413, f"request body over {MAX_BODY_BYTES} bytes")
        body = rfile.read(length) if length else b""
        if len(body) != length:
            raise ConnectionResetError("the client closed mid-body")
        return body


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


class EdgeServer(socketserver.ThreadingTCPServer):
    """The agent's HTTP server: a thread per connection."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.agent = agent
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), _Connection)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("error serving %s", client_address)

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="edge-http", daemon=True)
        thread.start()
        return thread
