"""Fuzzing the AWS JSON doors and the native API (hypothesis, seeded and bounded).

Every request is signed, so each reaches the parsing and validation behind authentication: malformed
and truncated JSON, bodies that are JSON but not objects, and, for every operation moorage implements
on each JSON-protocol service, documents where one member of botocore's input shape (top level or one
level down) has a value of the wrong type. The answer must always be a 4xx in AWS's JSON error shape
(``__type`` and a message), never a 5xx, and the server's memory must stay bounded over the run.
None of these requests is valid, so none of them creates anything.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from functools import cache
from typing import Any

import botocore.session
import psutil
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.model import Shape, StructureShape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e_support import REGION, MoorageServer, http_request

pytestmark = pytest.mark.e2e

# (botocore service, X-Amz-Target prefix, signing name, content type)
SERVICES = [
    ("sagemaker", "SageMaker", "sagemaker", "application/x-amz-json-1.1"),
    ("cloudwatch", "GraniteServiceVersion20100801", "monitoring", "application/x-amz-json-1.0"),
    ("application-autoscaling", "AnyScaleFrontendService", "application-autoscaling", "application/x-amz-json-1.1"),
    ("logs", "Logs_20140328", "logs", "application/x-amz-json-1.1"),
]
FUZZ = settings(max_examples=120, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
# Values of every JSON type; a member gets one that is not its own type.
WRONG_VALUES: dict[str, list[Any]] = {
    "string": [12, -1.5, True, [], {}, ["a"], {"k": "v"}],
    "integer": ["12", 1.5, True, [], {}, "x" * 300, 2**70],
    "long": ["12", 1.5, [], {}, 2**70],
    "double": ["1.0", [], {}, True],
    "float": ["1.0", [], {}],
    "boolean": ["true", 0, 1, [], {}],
    "timestamp": ["yesterday", [], {}, True, "2026-13-45T99:99:99Z"],
    "structure": ["x", 1, [], True, [{}]],
    "list": ["x", 1, {}, True, {"member": 1}],
    "map": ["x", 1, [], True, [["k", "v"]]],
    "blob": [1, [], {}, True, "not base64 !!"],
}


@cache
def _model(service: str) -> Any:
    return botocore.session.get_session().get_service_model(service)


def _signed(server: MoorageServer, service: str, target: str, signing_name: str, content_type: str,
            body: bytes) -> tuple[int, dict[str, str], bytes]:
    headers = {"Content-Type": content_type, "X-Amz-Target": target}
    request = AWSRequest(method="POST", url=server.url + "/", data=body, headers=headers)
    SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), signing_name, REGION).add_auth(request)
    return http_request("POST", server.url + "/", body=body, headers=dict(request.headers.items()), timeout=30)


def _assert_client_error(status: int, headers: dict[str, str], body: bytes, what: str) -> None:
    assert 400 <= status < 500, f"{what}: {status} {body[:300]!r}"
    document = json.loads(body)
    assert document.get("__type") and ("message" in document or "Message" in document), f"{what}: {body[:300]!r}"
    assert headers.get("x-amzn-requestid"), what


@pytest.fixture(scope="module")
def implemented(server: MoorageServer) -> dict[str, list[str]]:
    """Per service, the operations this server implements (the others answer 501 on purpose)."""
    found: dict[str, list[str]] = {}
    for service, prefix, signing, content_type in SERVICES:
        names = []
        for operation in _model(service).operation_names:
            status, _, _ = _signed(server, service, f"{prefix}.{operation}", signing, content_type, b'{"__probe": 1}')
            if status != 501:
                names.append(operation)
        assert names, service
        found[service] = names
    return found


def _wrong_document(draw: st.DrawFn, shape: StructureShape) -> tuple[dict[str, Any], str]:
    """A document for ``shape`` whose one member (maybe nested once) has a value of another type."""
    members = list(shape.members.items())
    document: dict[str, Any] = {}
    # Some well-typed neighbours, so validation cannot stop at the first missing required member.
    for name, member in members:
        if draw(st.booleans()):
            document[name] = _plausible(member)
    name, member = draw(st.sampled_from(members))
    if isinstance(member, StructureShape) and member.members and draw(st.booleans()):
        inner, path = _wrong_document(draw, member)
        document[name] = inner
        return document, f"{name}.{path}"
    document[name] = draw(st.sampled_from(WRONG_VALUES.get(member.type_name, ["x", 1, [], {}])))
    return document, name


def _plausible(shape: Shape) -> Any:
    return {"string": "fuzz-value", "integer": 1, "long": 1, "double": 1.0, "float": 1.0, "boolean": True,
            "timestamp": 1767225600, "structure": {}, "list": [], "map": {}, "blob": "YQ=="}.get(shape.type_name, "x")


def test_wrong_types_in_every_operations_input_are_client_errors(server: MoorageServer,
                                                                 implemented: dict[str, list[str]]) -> None:
    process = psutil.Process(server.pid)
    before = process.memory_info().rss
    cases = [(service, prefix, signing, content_type, operation)
             for service, prefix, signing, content_type in SERVICES for operation in implemented[service]
             if _model(service).operation_model(operation).input_shape is not None
             and _model(service).operation_model(operation).input_shape.members]

    @FUZZ
    @given(st.data())
    def check(data: st.DataObject) -> None:
        service, prefix, signing, content_type, operation = data.draw(st.sampled_from(cases))
        shape = _model(service).operation_model(operation).input_shape
        document, path = data.draw(st.composite(lambda draw: _wrong_document(draw, shape))())
        status, headers, body = _signed(server, service, f"{prefix}.{operation}", signing, content_type,
                                        json.dumps(document).encode())
        _assert_client_error(status, headers, body, f"{prefix}.{operation} with {path} mistyped: {document}")

    check()
    assert process.memory_info().rss - before < 100 * 1024 * 1024


BROKEN_BODIES: list[bytes] = [
    b"{", b"}", b"[", b"null", b"[]", b"1", b'"text"', b"true", b"\xff\xfe\x00", b"{'single': 'quotes'}",
    b'{"a":1,}', b'{"a":NaN}', b"[" * 5000 + b"]" * 5000, b'{"a":' * 3000 + b"1" + b"}" * 3000,
]


@pytest.mark.parametrize("service, prefix, signing, content_type", SERVICES)
def test_malformed_and_truncated_json_are_client_errors(server: MoorageServer, implemented: dict[str, list[str]],
                                                        service: str, prefix: str, signing: str,
                                                        content_type: str) -> None:
    operations = implemented[service]

    @FUZZ
    @given(st.sampled_from(operations),
           st.one_of(st.sampled_from(BROKEN_BODIES),
                     st.binary(min_size=1, max_size=200),
                     st.builds(lambda doc, cut: json.dumps(doc).encode()[:cut],
                               st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), min_size=1),
                               st.integers(min_value=1, max_value=40))))
    def check(operation: str, body: bytes) -> None:
        try:
            parsed = json.loads(body)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict) and not parsed:
            return  # `{}` is a well-formed (if incomplete) request: covered by the shape fuzzing above
        status, headers, reply = _signed(server, service, f"{prefix}.{operation}", signing, content_type, body)
        _assert_client_error(status, headers, reply, f"{prefix}.{operation} with body {body[:80]!r}")

    check()


def _native(server: MoorageServer) -> Callable[[str, str, bytes], tuple[int, dict[str, str], bytes]]:
    def call(method: str, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        return server.signed_request(method, path, body, {"Content-Type": "application/json"})
    return call


NATIVE_WRITES = [
    ("POST", "/moorage/v1/endpoints/fuzz-nowhere/feedback"),
    ("POST", "/moorage/v1/endpoints/fuzz-nowhere/ground-truth"),
    ("POST", "/moorage/v1/metrics"),
    ("PUT", "/moorage/v1/alarms/fuzz-alarm"),
    ("POST", "/moorage/v1/alarms/fuzz-alarm/state"),
    ("POST", "/moorage/v1/monitoring-schedules/fuzz-nowhere/executions"),
]


def test_native_api_answers_bad_bodies_with_client_errors(server: MoorageServer) -> None:
    call = _native(server)

    @FUZZ
    @given(st.sampled_from(NATIVE_WRITES),
           st.one_of(st.sampled_from(BROKEN_BODIES), st.binary(max_size=200),
                     st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                                  lambda inner: st.lists(inner, max_size=4)
                                  | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                                  max_leaves=12).map(lambda doc: json.dumps(doc).encode())))
    def check(route: tuple[str, str], body: bytes) -> None:
        method, path = route
        status, _, reply = call(method, path, body)
        assert 400 <= status < 500, f"{method} {path} with {body[:80]!r}: {status} {reply[:300]!r}"
        document = json.loads(reply)
        assert document.get("__type") and document.get("message"), reply[:300]

    check()
