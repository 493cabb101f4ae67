"""The doors read a request body whole or not at all: over the limit is a 413, and a client that goes
away mid-body is a disconnect (nothing invoked, nothing answered), never a "too large".

The app is a real MoorageApp on a temporary home, driven through its ASGI entry with the messages a
server delivers (``http.request`` chunks, then ``http.disconnect`` when the peer closes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from starlette.requests import ClientDisconnect

from moorage.api.app import MoorageApp
from moorage.api.responses import BodyTooLarge, read_body
from moorage.api.runtime import MAX_PAYLOAD
from moorage.api.signed import MAX_BODY
from moorage.config import Credentials, Settings

GONE = {"type": "http.disconnect"}


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageApp]:
    moorage = MoorageApp(Settings.load(home=tmp_path_factory.mktemp("home")),
                         [Credentials("AKIAUNITTEST00000000", "unit-test-secret")])
    try:
        yield moorage
    finally:
        moorage.store.close()


def _chunk(body: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.request", "body": body, "more_body": more}


def _drive(app: Any, method: str, path: str, messages: list[dict[str, Any]],
           headers: list[tuple[bytes, bytes]] | None = None) -> list[dict[str, Any]]:
    """What the app sends for a request whose body arrives as ``messages``."""
    pending = list(messages)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        assert pending, "the app read past the last message the client sent"
        return pending.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"127.0.0.1"), *(headers or [])], "server": ("127.0.0.1", 8080),
             "client": ("127.0.0.1", 50000)}
    asyncio.run(asyncio.wait_for(app(scope, receive, send), timeout=30))
    return sent


def _read(messages: list[dict[str, Any]], limit: int | None = None) -> bytes:
    pending = list(messages)

    async def receive() -> dict[str, Any]:
        return pending.pop(0)

    return asyncio.run(read_body(receive, limit))


def test_read_body_joins_chunks_and_refuses_what_is_not_the_request() -> None:
    assert _read([_chunk(b"whole", more=False)]) == b"whole"
    assert _read([_chunk(b"ab"), _chunk(b""), _chunk(b"cd", more=False)]) == b"abcd"
    assert _read([_chunk(b"", more=False)]) == b""
    with pytest.raises(BodyTooLarge):
        _read([_chunk(b"abc"), _chunk(b"def", more=False)], limit=5)
    with pytest.raises(ClientDisconnect):
        _read([_chunk(b"part of it"), GONE])
    with pytest.raises(ClientDisconnect):
        _read([GONE])


@pytest.mark.parametrize(("method", "path"), [("POST", "/endpoints/anything/invocations"), ("POST", "/"),
                                               ("POST", "/moorage/v1/metrics")])
def test_a_client_gone_mid_body_gets_no_answer(app: MoorageApp, method: str, path: str) -> None:
    assert _drive(app, method, path, [_chunk(b"1,2,"), GONE]) == []
    assert _drive(app, method, path, [GONE]) == []


def test_runtime_body_over_the_limit_is_413_without_content_length(app: MoorageApp) -> None:
    mib = b"x" * (1024 * 1024)
    chunks = [_chunk(mib) for _ in range(MAX_PAYLOAD // len(mib) + 1)]
    sent = _drive(app, "POST", "/endpoints/anything/invocations", chunks)
    start, body = sent[0], orjson.loads(sent[1]["body"])
    assert start["status"] == 413
    assert (b"x-amzn-errortype", b"ValidationError") in start["headers"]
    assert body["__type"] == "ValidationError" and "oversize" in body["message"]


def test_native_body_over_the_limit_is_an_aws_413(app: MoorageApp) -> None:
    declared = _drive(app, "POST", "/moorage/v1/metrics", [_chunk(b"{}", more=False)],
                      headers=[(b"content-length", str(MAX_BODY + 1).encode())])
    mib = b"x" * (1024 * 1024)
    streamed = _drive(app, "POST", "/moorage/v1/metrics", [_chunk(mib) for _ in range(MAX_BODY // len(mib) + 1)])
    for sent in (declared, streamed):
        assert sent[0]["status"] == 413
        assert (b"x-amzn-errortype", b"ValidationException") in sent[0]["headers"]
        assert orjson.loads(sent[1]["body"])["__type"] == "ValidationException"


def test_unsigned_invocation_is_refused_with_the_error_type(app: MoorageApp) -> None:
    sent = _drive(app, "POST", "/endpoints/anything/invocations", [_chunk(b"1,2", more=False)])
    assert sent[0]["status"] == 403
    assert (b"x-amzn-errortype", b"MissingAuthenticationTokenException") in sent[0]["headers"]
