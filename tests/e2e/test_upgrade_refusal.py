"""A WebSocket upgrade is refused in the AWS error shape, and quietly (no ERROR line in the server's log)."""

from __future__ import annotations

import json
import socket

import pytest

from e2e_support import MoorageServer

pytestmark = pytest.mark.e2e


def _read_reply(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def test_a_websocket_upgrade_gets_an_aws_json_refusal(server: MoorageServer) -> None:
    logged_before = server.log_path.stat().st_size  # the shared server's log holds other tests' lines too
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"GET /moorage/v1/endpoints HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        reply = _read_reply(conn)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403"), reply
    assert b"x-amzn-errortype: unknownoperationexception" in head.lower()
    assert json.loads(body)["__type"] == "UnknownOperationException"
    with server.log_path.open("rb") as log:
        log.seek(logged_before)
        assert b"ERROR" not in log.read()
