"""``moorage-edge serve``'s HTTP side: SageMaker's container contract in front of an ``Agent``.

``GET /ping`` answers 200 (the package is loaded before the socket exists); ``POST /invocations``
takes CSV, JSON, JSON Lines or NPY and answers as Accept asks, with the instance servers' error
statuses (400 a body that does not parse, 406 an Accept, 415 a Content-Type, 413 over 6 MB, 500 the
model failed: text/plain, the reason in the body). ``X-Amzn-SageMaker-Inference-Id`` is kept in the
capture record.

Why the standard library's ``ThreadingHTTPServer`` rather than asyncio streams with httptools: the agent
stays within its extra (no httptools, no uvloop on the device), one thread per keep-alive connection
suits a device's handful of clients, and a thread serving a request calls the model directly (no
hand-off to an executor, which an asyncio server would need to keep ``/ping`` answering during a
slow model). ``bench/edge.py`` measures it: a keep-alive round trip costs about 0.1 ms over the model
call on a laptop core, well under the network's own latency on a device.
"""

from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from moorage.edge.agent import Agent

log = logging.getLogger("moorage.edge.server")

MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's InvokeEndpoint payload limit
_DRAIN_BYTES = 4 * MAX_BODY_BYTES
_TEXT = "text/plain; charset=utf-8"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client pays the connection once
    disable_nagle_algorithm = True  # small replies go out at once, not after the client's delayed ACK
    server_version = "moorage-edge"
    sys_version = ""
    agent: Agent

    def log_message(self, format: str, *args: Any) -> None:
        pass  # no access log: it would cost more than the inference

    def _reply(self, status: int, body: bytes, content_type: str = _TEXT) -> None:
        self.send_response_only(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        # Headers and body in one write: one segment on the wire for a small answer.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.wfile.write(b"".join(self._headers_buffer))
        self._headers_buffer = []

    def do_GET(self) -> None:
        if self.path == "/ping":
            self._reply(200, b"")
        else:
            self._reply(404, b"not found")

    do_HEAD = do_GET

    def do_POST(self) -> None:
        body = self._body()
        if body is None:
            return
        if self.path != "/invocations":
            self._reply(404, b"not found")
            return
        headers = self.headers
        status, answer, content_type = self.server.agent.invoke(  # type: ignore[attr-defined]
            body, headers.get("Content-Type"), headers.get("Accept"),
            headers.get("X-Amzn-SageMaker-Inference-Id"))
        self._reply(status, answer, content_type)

    def _body(self) -> bytes | None:
        """The request body (Content-Length or chunked), or None once an error has been answered."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks, size = [], 0
            while True:
                line = self.rfile.readline(1024)
                try:
                    length = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    self.close_connection = True
                    self._reply(400, b"malformed chunked body")
                    return None
                if length == 0:
                    while self.rfile.readline(1024).strip():
                        pass  # trailers
                    return b"".join(chunks)
                size += length
                if size > MAX_BODY_BYTES:
                    self.close_connection = True
                    self._reply(413, f"request body over {MAX_BODY_BYTES} bytes".encode())
                    return None
                chunks.append(self.rfile.read(length))
                self.rfile.readline(8)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._reply(400, b"bad Content-Length")
            return None
        if length > MAX_BODY_BYTES:
            # Read it (in blocks, kept nowhere) before answering: a client still sending would see a
            # broken pipe instead of the 413. Past a few times the cap, just close.
            if length <= _DRAIN_BYTES:
                while length > 0:
                    block = self.rfile.read(min(length, 1 << 20))
                    if not block:
                        break
                    length -= len(block)
            self.close_connection = True
            self._reply(413, f"request body over {MAX_BODY_BYTES} bytes".encode())
            return None
        return self.rfile.read(length) if length else b""


class EdgeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, agent: Agent, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.agent = agent
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve_forever, name="edge-http", daemon=True)
        thread.start()
        return thread
