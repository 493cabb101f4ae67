"""The native API's one seam (``moorage.api.signed``): every route signed, every error AWS-shaped.

The routes are walked from the native app's own router, so a route added later without the seam
(feedback, rollouts, a dashboard...) fails here. The app is a real MoorageApp on a temporary home,
served by uvicorn on loopback and spoken to over HTTP; botocore signs the requests.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.exceptions import ClientError
from starlette.requests import Request
from starlette.routing import BaseRoute, Mount, Route

from e2e_support import (
    ACCESS_KEY_ID,
    HOST,
    REGION,
    SECRET_ACCESS_KEY,
    MoorageServer,
    err_code,
    err_status,
    free_port,
    http_request,
    wait_until,
)
from moorage.api.app import MoorageApp
from moorage.api.signed import native_app, signed_route
from moorage.api.sigv4 import SigV4Verifier
from moorage.config import Credentials, Settings
from moorage.errors import ResourceNotFound, ValidationException

pytestmark = pytest.mark.e2e

# Path parameters are filled with the first sample their convertor accepts.
_SAMPLES = ("probe", "1", "1.5", str(uuid.UUID(int=1)))


@contextlib.contextmanager
def _served(app: Any) -> Iterator[str]:
    """``app`` behind uvicorn on a free loopback port, in a thread of this process; yields its URL."""
    # log_config=None: uvicorn's loggers propagate, so a test can see what the server logged.
    server = uvicorn.Server(uvicorn.Config(app, host=HOST, port=free_port(), lifespan="off", log_config=None,
                                           access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn-under-test", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, timeout=30, what="uvicorn to listen")
        yield f"http://{HOST}:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        assert not thread.is_alive(), "uvicorn did not stop"


@pytest.fixture(scope="module")
def native(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[MoorageApp, MoorageServer]]:
    """A MoorageApp served over HTTP, and a client handle on it (MoorageServer's signing helpers)."""
    home = tmp_path_factory.mktemp("native-home")
    app = MoorageApp(Settings.load(home=home), [Credentials(ACCESS_KEY_ID, SECRET_ACCESS_KEY)])
    try:
        with _served(app) as url:
            yield app, MoorageServer(home, port=int(url.rsplit(":", 1)[1]))
    finally:
        app.store.close()


def _walk(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, concrete path) for every method of every route, mounted ones included."""
    for route in routes:
        if isinstance(route, Mount):
            yield from _walk(route.routes, prefix + route.path)
        elif isinstance(route, Route):
            params = {name: next(s for s in _SAMPLES if re.fullmatch(convertor.regex, s))
                      for name, convertor in route.param_convertors.items()}
            for method in sorted(route.methods or ("GET", "POST", "PUT", "DELETE")):
                yield method, prefix + route.path_format.format(**params)
        else:
            pytest.fail(f"{route!r} is a kind of route this test cannot probe: teach it, and sign the route")


def _signed(server: MoorageServer, method: str, path: str, body: bytes, key_id: str, secret: str) -> tuple[
        int, dict[str, str], bytes]:
    # Every probe declares its body hash: a streamed upload refuses to be signed without one.
    headers = {"X-Amz-Content-SHA256": hashlib.sha256(body).hexdigest()}
    request = AWSRequest(method=method, url=server.url + path, data=body, headers=headers)
    SigV4Auth(BotoCredentials(key_id, secret), "sagemaker", REGION).add_auth(request)
    return http_request(method, server.url + path, body=body or None, headers=dict(request.headers.items()))


def _assert_aws_error(method: str, status: int, headers: dict[str, str], body: bytes, code: str,
                      expected_status: int, where: str) -> None:
    assert status == expected_status, (where, status, body[:300])
    assert headers.get("x-amzn-errortype") == code, (where, headers)
    assert headers.get("x-amzn-requestid"), (where, headers)
    if method != "HEAD":
        doc = json.loads(body)
        assert doc["__type"] == code and doc["message"], (where, doc)


def test_every_native_route_refuses_unsigned_and_wrongly_signed_requests(
        native: tuple[MoorageApp, MoorageServer]) -> None:
    app, server = native
    probes = list(_walk(app.native.routes))
    assert len(probes) >= 15, probes  # the walk found the routes (endpoints, artifacts, metrics, alarms, ...)
    for method, path in probes:
        where = f"{method} {path}"
        body = b"" if method in ("GET", "HEAD", "DELETE") else b"{}"
        status, headers, reply = http_request(method, server.url + path, body=body or None)
        _assert_aws_error(method, status, headers, reply, "MissingAuthenticationTokenException", 403, where)
        status, headers, reply = _signed(server, method, path, body, ACCESS_KEY_ID, "not-the-secret")
        _assert_aws_error(method, status, headers, reply, "InvalidSignatureException", 403, where)
        status, headers, reply = _signed(server, method, path, body, "AKIAUNKNOWNKEY000000", SECRET_ACCESS_KEY)
        _assert_aws_error(method, status, headers, reply, "UnrecognizedClientException", 403, where)
        # The refusals come from the signature check: the same request rightly signed gets past it.
        status, _, reply = _signed(server, method, path, body, ACCESS_KEY_ID, SECRET_ACCESS_KEY)
        assert status not in (401, 403), (where, status, reply[:300])


def test_missing_resources_are_404_here_and_400_on_the_sagemaker_door(
        native: tuple[MoorageApp, MoorageServer]) -> None:
    _, server = native
    for path in ("/moorage/v1/endpoints/ghost", "/moorage/v1/transform-jobs/ghost", "/moorage/v1/alarms/ghost",
                 "/moorage/v1/monitoring-executions/ghost", "/moorage/v1/monitoring-executions/ghost/report"):
        status, headers, body = server.signed_request("GET", path)
        _assert_aws_error("GET", status, headers, body, "ResourceNotFound", 404, path)
    status, headers, body = server.signed_request("POST", "/moorage/v1/monitoring-schedules/ghost/executions")
    _assert_aws_error("POST", status, headers, body, "ResourceNotFound", 404, "run a missing schedule")
    with pytest.raises(ClientError) as refused:
        server.sm().describe_transform_job(TransformJobName="ghost")
    assert err_code(refused.value) == "ResourceNotFound" and err_status(refused.value) == 400


def test_router_errors_are_aws_shaped(native: tuple[MoorageApp, MoorageServer]) -> None:
    _, server = native
    status, headers, body = server.signed_request("GET", "/moorage/v1/no-such-thing")
    _assert_aws_error("GET", status, headers, body, "UnknownOperationException", 404, "unknown path")
    status, headers, body = server.signed_request("PATCH", "/moorage/v1/endpoints")
    _assert_aws_error("PATCH", status, headers, body, "UnknownOperationException", 405, "unknown method")
    assert "GET" in headers.get("allow", "")
    status, headers, body = server.signed_request("POST", "/moorage/v1/metrics", body=b"[")
    _assert_aws_error("POST", status, headers, body, "ValidationException", 400, "a body that is not JSON")


def test_the_other_doors_refusals_carry_the_error_type(native: tuple[MoorageApp, MoorageServer]) -> None:
    _, server = native
    status, headers, body = http_request("POST", server.url + "/endpoints/anything/invocations", body=b"1,2",
                                         headers={"Content-Type": "text/csv"})
    _assert_aws_error("POST", status, headers, body, "MissingAuthenticationTokenException", 403, "runtime")
    status, headers, body = http_request("POST", server.url + "/", body=b"{}",
                                         headers={"X-Amz-Target": "SageMaker.ListModels"})
    _assert_aws_error("POST", status, headers, body, "MissingAuthenticationTokenException", 403, "control plane")


def test_handlers_raise_and_the_seam_renders(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """ApiErrors keep their code (a missing resource as 404), anything else is an InternalFailure 500
    whose traceback the server logs."""

    async def missing(request: Request, body: bytes) -> Any:
        raise ResourceNotFound("nothing here", Resource="probe")

    async def invalid(request: Request, body: bytes) -> Any:
        raise ValidationException("not like that")

    async def broken(request: Request, body: bytes) -> Any:
        raise RuntimeError("a bug")

    async def echo(request: Request, body: bytes) -> Any:
        return {"Received": body.decode()}

    verifier = SigV4Verifier({ACCESS_KEY_ID: SECRET_ACCESS_KEY}.get)
    app = native_app(verifier, [signed_route(f"/moorage/v1/{h.__name__}", h, ["POST"])
                                for h in (missing, invalid, broken, echo)])
    with _served(app) as url, caplog.at_level(logging.ERROR):
        client = MoorageServer(tmp_path, port=int(url.rsplit(":", 1)[1]))
        status, headers, body = client.signed_request("POST", "/moorage/v1/missing")
        _assert_aws_error("POST", status, headers, body, "ResourceNotFound", 404, "missing")
        assert json.loads(body)["Resource"] == "probe"
        status, headers, body = client.signed_request("POST", "/moorage/v1/invalid")
        _assert_aws_error("POST", status, headers, body, "ValidationException", 400, "invalid")
        status, headers, body = client.signed_request("POST", "/moorage/v1/broken")
        _assert_aws_error("POST", status, headers, body, "InternalFailure", 500, "broken")
        assert "RuntimeError: a bug" in json.loads(body)["message"]
        status, _, body = client.signed_request("POST", "/moorage/v1/echo", body=b"hello")
        assert status == 200 and json.loads(body) == {"Received": "hello"}
    # Starlette re-raises after the reply so that the server logs the traceback (uvicorn does, once).
    assert any(r.exc_info and isinstance(r.exc_info[1], RuntimeError) for r in caplog.records), caplog.records
