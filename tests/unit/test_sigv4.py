"""SigV4 verification against requests signed by botocore's own signers.

Each request is signed by ``botocore.auth`` (or sent through a real boto3 client and caught just
before it would hit the network), turned into what an ASGI server would hand the app, and
verified; then each part is tampered with to check the failure and its AWS error code.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any
from unittest import mock
from urllib.parse import quote, urlsplit

import boto3
import pytest
from botocore.auth import S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.utils import percent_encode, percent_encode_sequence
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from moorage.api.sigv4 import (
    MSG_HOST_UNSIGNED,
    MSG_MISMATCH,
    MSG_PAYLOAD_HASH,
    MSG_UNKNOWN_KEY,
    AuthError,
    Principal,
    SigV4Verifier,
)

AKID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
OTHER_AKID = "AKIDOTHER"
OTHER_SECRET = "c2VjcmV0LWZvci10aGUtb3RoZXIta2V5"
SECRETS = {AKID: SECRET, OTHER_AKID: OTHER_SECRET}
CREDS = Credentials(AKID, SECRET)
SIGNED_AT = dt.datetime(2026, 11, 24, 10, 45, 10)  # naive UTC, as botocore's clock returns
NOW = SIGNED_AT.replace(tzinfo=dt.UTC).timestamp()
BASE = "http://localhost:8080"


@dataclass(frozen=True)
class Wire:
    """A request as an ASGI server sees it."""

    method: str
    raw_path: bytes
    query: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes

    def header(self, name: bytes) -> bytes:
        return next(v for k, v in self.headers if k == name)

    def with_header(self, name: bytes, value: bytes) -> Wire:
        return replace(self, headers=tuple((k, value if k == name else v) for k, v in self.headers))

    def without_header(self, name: bytes) -> Wire:
        return replace(self, headers=tuple((k, v) for k, v in self.headers if k != name))


def verifier(secrets: dict[str, str] | None = None, skew: int = 900) -> SigV4Verifier:
    return SigV4Verifier((secrets or SECRETS).get, max_skew_seconds=skew)


def verify(wire: Wire, v: SigV4Verifier | None = None, now: float | None = NOW) -> Principal:
    return (v or verifier()).verify(wire.method, wire.raw_path, wire.query, wire.headers, wire.body, now=now)


def expect(wire: Wire, code: str, now: float = NOW, v: SigV4Verifier | None = None) -> AuthError:
    with pytest.raises(AuthError) as info:
        verify(wire, v, now)
    assert info.value.code == code, info.value.message
    return info.value


def on_the_wire(request: Any) -> Wire:
    """Convert a signed AWSRequest (or prepared request) into the ASGI view of it.

    The path and query are taken from the URL exactly as botocore sends it (already
    percent-encoded); headers keep repeats; Host and the transport's own unsigned headers are
    added the way http.client/urllib3 would; values lose surrounding whitespace as HTTP parsers
    strip it.
    """
    url = urlsplit(request.url)
    body = request.body or b""
    if isinstance(body, str):
        body = body.encode()
    headers = [
        (k.lower().encode(), (v if isinstance(v, bytes) else v.encode("latin-1")).strip(b" \t"))
        for k, v in request.headers.items()
    ]
    names = {k for k, _ in headers}
    if b"host" not in names:
        headers.append((b"host", url.netloc.lower().encode()))
    if b"content-length" not in names and request.method not in ("GET", "HEAD"):
        headers.append((b"content-length", str(len(body)).encode()))
    headers += [(b"accept-encoding", b"identity"), (b"user-agent", b"Boto3/1.x (unsigned)")]
    return Wire(request.method, url.path.encode("ascii"), url.query.encode("ascii"), tuple(headers), body)


@pytest.fixture(autouse=True)
def _fixed_clock() -> Iterator[None]:
    with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        yield


def sign(
    method: str = "POST",
    path: str = "/",
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    query: str = "",
    creds: Credentials = CREDS,
    service: str = "sagemaker",
    region: str = "us-east-1",
    at: dt.datetime | None = None,
    context: dict[str, Any] | None = None,
    params: dict[str, str] | None = None,
    signer: Callable[..., Any] = SigV4Auth,
    **signer_kwargs: Any,
) -> Wire:
    url = f"{BASE}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=headers or {}, params=params or {})
    request.context.update(context or {})
    with mock.patch("botocore.auth.get_current_datetime", return_value=at or SIGNED_AT):
        signer(creds, service, region, **signer_kwargs).add_auth(request)
    if params:
        # botocore signs params itself but sends them form-encoded; take the URL as prepared.
        prepared = request.prepare()
        prepared.headers = request.headers
        return on_the_wire(prepared)
    return on_the_wire(request)


JSON_HEADERS = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "SageMaker.CreateModel"}
INVOKE_HEADERS = {
    "Content-Type": "application/octet-stream",
    "Accept": "application/json",
    "X-Amzn-SageMaker-Custom-Attributes": "trace=abc,  user = 42",
    "X-Amzn-SageMaker-Target-Variant": "AllTraffic",
}
BINARY = bytes(range(256)) * 3


def invocation() -> Wire:
    return sign("POST", "/endpoints/my-endpoint/invocations", BINARY, INVOKE_HEADERS)


VALID_CASES: dict[str, Callable[[], Wire]] = {
    "json-post-root": lambda: sign("POST", "/", b'{"ModelName":"m"}', JSON_HEADERS),
    "binary-invocation": invocation,
    "empty-body-get": lambda: sign("GET", "/endpoints", b""),
    "empty-body-post": lambda: sign("POST", "/", b"", JSON_HEADERS),
    "percent-encoded-path": lambda: sign(
        "POST", f"/endpoints/{percent_encode('my endpoint/ü+ä:@!*')}/invocations", b"x", INVOKE_HEADERS
    ),
    "greedy-style-path": lambda: sign("GET", "/models/" + quote("a b/c~d/é", safe="/~")),
    "dot-segments-and-double-slashes": lambda: sign("GET", "/a/./b//c/../d/"),
    "unsorted-repeated-query": lambda: sign(
        "GET",
        "/endpoints",
        query=percent_encode_sequence([("b", "2"), ("a", "3"), ("a", "1"), ("c", "x y/z~"), ("A", "")]),
    ),
    "bare-query-key": lambda: sign("GET", "/endpoints", query="flag&z=1"),
    "params-sent-form-encoded": lambda: sign("GET", "/endpoints", params={"name": "a b", "k": "v/w"}),
    "session-token": lambda: sign(
        "POST", "/", b"{}", JSON_HEADERS, creds=Credentials(AKID, SECRET, "FwoGZXIvYXdzE//token+=")
    ),
    "eu-west-1": lambda: sign("POST", "/", b"{}", JSON_HEADERS, region="eu-west-1"),
    "autoscaling-service": lambda: sign(
        "POST",
        "/",
        b"{}",
        {"X-Amz-Target": "AnyScaleFrontendService.DescribeScalableTargets"},
        service="application-autoscaling",
        region="ap-southeast-2",
    ),
    "other-key": lambda: sign("POST", "/", b"{}", JSON_HEADERS, creds=Credentials(OTHER_AKID, OTHER_SECRET)),
    "declared-payload-hash": lambda: sign(
        "POST",
        "/endpoints/e/invocations",
        b"abc",
        {"X-Amz-Content-SHA256": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
    ),
    "date-header-instead-of-x-amz-date": lambda: sign(
        "POST", "/", b"{}", {**JSON_HEADERS, "Date": "Tue, 24 Nov 2026 10:45:10 GMT"}
    ),
    "header-value-whitespace": lambda: sign(
        "POST", "/", b"{}", {**JSON_HEADERS, "X-Custom": "  a   b\t\tc  ", "X-Latin": "caf\xe9  \xa0x"}
    ),
}


@pytest.mark.parametrize("case", sorted(VALID_CASES))
def test_botocore_signed_requests_verify(case: str) -> None:
    wire = VALID_CASES[case]()
    principal = verify(wire)
    assert principal.access_key_id in SECRETS


def test_principal_carries_scope() -> None:
    wire = sign("POST", "/", b"{}", region="eu-central-1", service="application-autoscaling")
    assert verify(wire) == Principal(AKID, "eu-central-1", "application-autoscaling")


def test_repeated_headers_are_joined_in_order() -> None:
    request = AWSRequest(method="POST", url=f"{BASE}/", data=b"{}")
    # HTTPHeaders keeps repeats; botocore signs them trimmed and joined with ','.
    request.headers["X-Multi"] = " first  value "
    request.headers["X-Multi"] = "second"
    SigV4Auth(CREDS, "sagemaker", "us-east-1").add_auth(request)
    wire = on_the_wire(request)
    assert [v for k, v in wire.headers if k == b"x-multi"] == [b"first  value", b"second"]
    assert verify(wire).access_key_id == AKID
    swapped = [(k, v) for k, v in wire.headers if k != b"x-multi"]
    swapped += [(b"x-multi", b"second"), (b"x-multi", b"first  value")]
    expect(replace(wire, headers=tuple(swapped)), "InvalidSignatureException")


def test_internal_whitespace_in_signed_headers_is_canonicalised() -> None:
    wire = sign("POST", "/", b"{}", {"X-Custom": "a b c"})
    assert verify(wire.with_header(b"x-custom", b"a   b\tc")).access_key_id == AKID


def test_extra_unsigned_headers_are_ignored() -> None:
    wire = invocation()
    extra = (*wire.headers, (b"x-forwarded-for", b"10.0.0.1"), (b"connection", b"keep-alive"))
    assert verify(replace(wire, headers=extra)).access_key_id == AKID


# -- tampering ----------------------------------------------------------------------------------------


def _flip_body(w: Wire) -> Wire:
    return replace(w, body=bytes([w.body[0] ^ 1]) + w.body[1:])


TAMPERS: dict[str, tuple[Callable[[Wire], Wire], str]] = {
    "body-byte": (_flip_body, MSG_MISMATCH),
    "body-truncated": (lambda w: replace(w, body=w.body[:-1]), MSG_MISMATCH),
    "signed-header-value": (lambda w: w.with_header(b"content-type", b"application/json"), MSG_MISMATCH),
    "signed-header-dropped": (lambda w: w.without_header(b"x-amzn-sagemaker-target-variant"), MSG_MISMATCH),
    "host": (lambda w: w.with_header(b"host", b"evil.example:8080"), MSG_MISMATCH),
    "method": (lambda w: replace(w, method="PUT"), MSG_MISMATCH),
    "path": (lambda w: replace(w, raw_path=b"/endpoints/other-endpoint/invocations"), MSG_MISMATCH),
    "path-encoding": (lambda w: replace(w, raw_path=b"/endpoints/my%2Dendpoint/invocations"), MSG_MISMATCH),
    "query-added": (lambda w: replace(w, query=b"a=1"), MSG_MISMATCH),
    "x-amz-date": (lambda w: w.with_header(b"x-amz-date", b"20261124T104511Z"), MSG_MISMATCH),
    "signature": (
        lambda w: w.with_header(b"authorization", w.header(b"authorization")[:-1] + b"0"),
        MSG_MISMATCH,
    ),
    "signature-non-ascii": (
        lambda w: w.with_header(b"authorization", w.header(b"authorization")[:-1] + b"\xe9"),
        MSG_MISMATCH,
    ),
}


@pytest.mark.parametrize("name", sorted(TAMPERS))
def test_tampering_is_detected(name: str) -> None:
    tamper, message = TAMPERS[name]
    wire = invocation()
    if name == "signature" and wire.header(b"authorization").endswith(b"0"):
        wire = wire.with_header(b"authorization", wire.header(b"authorization")[:-1] + b"1")
        tamper = TAMPERS["signature"][0]
    err = expect(tamper(wire), "InvalidSignatureException")
    assert err.message == message
    assert err.status == 403


def test_query_tampering() -> None:
    wire = sign("GET", "/endpoints", query="a=1&b=2")
    for query in (b"a=1&b=3", b"a=1", b"a=1&b=2&c=3", b"a=1&b=2&b=2"):
        expect(replace(wire, query=query), "InvalidSignatureException")
    # Reordering does not change the canonical (sorted) query.
    assert verify(replace(wire, query=b"b=2&a=1")).access_key_id == AKID


def test_wrong_secret() -> None:
    err = expect(invocation(), "InvalidSignatureException", v=verifier({AKID: OTHER_SECRET}))
    assert err.message == MSG_MISMATCH


def test_unknown_access_key() -> None:
    wire = sign("POST", "/", b"{}", creds=Credentials("AKIDUNKNOWN", SECRET))
    err = expect(wire, "UnrecognizedClientException")
    assert err.message == MSG_UNKNOWN_KEY


def test_body_tamper_with_declared_payload_hash() -> None:
    wire = VALID_CASES["declared-payload-hash"]()
    err = expect(replace(wire, body=b"abd"), "InvalidSignatureException")
    assert err.message == MSG_PAYLOAD_HASH


def test_unsigned_payload_is_refused_on_header_signed_requests() -> None:
    # A signer that opted out of payload signing (botocore does so only for S3) left the body open to
    # replacement: refused, with this body and with any other (issue 19).
    wire = sign("POST", "/endpoints/e/invocations", b"abc", context={"payload_signing_enabled": False})
    for body in (b"abc", b"something else"):
        err = expect(replace(wire, body=body), "InvalidSignatureException")
        assert "UNSIGNED-PAYLOAD" in err.message


def test_signature_expired_wording() -> None:
    wire = sign("POST", "/", b"{}", at=dt.datetime(2026, 11, 24, 10, 10, 10))
    err = expect(wire, "InvalidSignatureException", now=NOW)
    assert err.message == (
        "Signature expired: 20261124T101010Z is now earlier than 20261124T103010Z (20261124T104510Z - 15 min.)"
    )


def test_signature_from_the_future() -> None:
    wire = sign("POST", "/", b"{}", at=dt.datetime(2026, 11, 24, 11, 0, 11))
    err = expect(wire, "InvalidSignatureException", now=NOW)
    assert err.message == (
        "Signature not yet current: 20261124T110011Z is still later than 20261124T110010Z (20261124T104510Z + 15 min.)"
    )


def test_skew_boundaries_and_custom_skew() -> None:
    wire = invocation()
    assert verify(wire, now=NOW + 900).access_key_id == AKID
    assert verify(wire, now=NOW - 900).access_key_id == AKID
    expect(wire, "InvalidSignatureException", now=NOW + 901)
    err = expect(wire, "InvalidSignatureException", now=NOW + 61, v=verifier(skew=60))
    assert err.message.endswith("(20261124T104611Z - 1 min.)")


def test_missing_authentication() -> None:
    wire = invocation().without_header(b"authorization")
    err = expect(wire, "MissingAuthenticationTokenException")
    assert err.message == "Missing Authentication Token"


@pytest.mark.parametrize("part", ["Credential", "SignedHeaders", "Signature"])
def test_malformed_authorization_names_the_missing_part(part: str) -> None:
    wire = invocation()
    algorithm, _, rest = wire.header(b"authorization").decode().partition(" ")
    kept = ", ".join(p for p in rest.split(", ") if not p.startswith(part + "="))
    err = expect(wire.with_header(b"authorization", f"{algorithm} {kept}".encode()), "IncompleteSignatureException")
    assert f"Authorization header requires '{part}' parameter." in err.message
    assert err.status == 400


def test_wrong_algorithm_and_garbage_authorization() -> None:
    wire = invocation()
    auth = wire.header(b"authorization")
    err = expect(
        wire.with_header(b"authorization", auth.replace(b"SHA256", b"SHA1", 1)), "IncompleteSignatureException"
    )
    assert "AWS4-HMAC-SHA1" in err.message
    err = expect(wire.with_header(b"authorization", b"AWS4-HMAC-SHA256 garbage"), "IncompleteSignatureException")
    assert "missing equal-sign" in err.message
    expect(wire.with_header(b"authorization", b"Bearer abc"), "IncompleteSignatureException")


@pytest.mark.parametrize(
    "credential",
    [
        f"{AKID}/20261124/us-east-1/sagemaker",
        f"{AKID}/20261124/us-east-1/sagemaker/aws4_requests",
        f"{AKID}/2026112/us-east-1/sagemaker/aws4_request",
        "/20261124/us-east-1/sagemaker/aws4_request",
    ],
)
def test_malformed_credential(credential: str) -> None:
    wire = invocation()
    auth = wire.header(b"authorization").decode()
    bad = auth.replace(f"{AKID}/20261124/us-east-1/sagemaker/aws4_request", credential)
    expect(wire.with_header(b"authorization", bad.encode()), "IncompleteSignatureException")


def test_missing_or_bad_date() -> None:
    wire = invocation()
    err = expect(wire.without_header(b"x-amz-date"), "IncompleteSignatureException")
    assert "'X-Amz-Date' or a 'Date' header" in err.message
    for bad in (b"2026-11-24T10:45:10Z", b"20261324T104510Z", b"20261124T104510", b""):
        err = expect(wire.with_header(b"x-amz-date", bad), "IncompleteSignatureException")
        assert "ISO-8601" in err.message


def test_credential_scope_date_must_match_request_date() -> None:
    wire = invocation()
    err = expect(wire.with_header(b"x-amz-date", b"20261125T001000Z"), "InvalidSignatureException", now=NOW + 13 * 60)
    assert err.message.startswith("Date in Credential scope does not match YYYYMMDD")


def test_host_must_be_signed() -> None:
    wire = invocation()
    auth = wire.header(b"authorization").replace(b";host;", b";")
    assert b"host" not in auth
    err = expect(wire.with_header(b"authorization", auth), "IncompleteSignatureException")
    assert err.message == MSG_HOST_UNSIGNED


def test_signing_key_cache_is_bounded() -> None:
    v = verifier()
    for day in range(1, 29):
        at = dt.datetime(2026, 2, day, 12, 0, 0)
        wire = sign("POST", "/", b"{}", at=at)
        assert verify(wire, v, now=at.replace(tzinfo=dt.UTC).timestamp()).access_key_id == AKID
    assert 0 < len(v._signing_keys) <= 256


# -- presigned URLs -------------------------------------------------------------------------------------


def presigned(
    path: str = "/endpoints/my-endpoint/invocations",
    query: str = "",
    signer: Callable[..., Any] = SigV4QueryAuth,
    **kwargs: Any,
) -> Wire:
    return sign("GET", path, query=query, signer=signer, **kwargs)


def test_presigned_url_verifies() -> None:
    wire = presigned(query=percent_encode_sequence([("z", "last"), ("a", "first value")]), expires=300)
    assert b"X-Amz-Signature=" in wire.query
    assert not any(k == b"authorization" for k, _ in wire.headers)
    assert verify(wire) == Principal(AKID, "us-east-1", "sagemaker")
    assert verify(wire, now=NOW + 300).access_key_id == AKID


def test_presigned_with_session_token_and_encoded_path() -> None:
    creds = Credentials(AKID, SECRET, "tok/en+==")
    wire = presigned(f"/endpoints/{percent_encode('ä b')}/invocations", creds=creds, region="eu-west-1")
    assert b"X-Amz-Security-Token=" in wire.query
    assert verify(wire).region == "eu-west-1"


def test_presigned_unsigned_payload_style() -> None:
    # S3-style presigning (and several SDKs) sign UNSIGNED-PAYLOAD instead of the body hash.
    wire = presigned("/endpoints/plain/invocations", signer=S3SigV4QueryAuth)
    assert verify(wire).access_key_id == AKID


def test_presigned_expiry() -> None:
    wire = presigned(expires=60)
    err = expect(wire, "InvalidSignatureException", now=NOW + 61)
    assert err.message == (
        "Signature expired: 20261124T104510Z is now earlier than 20261124T104511Z (20261124T104611Z - 60 sec.)"
    )
    expect(wire, "InvalidSignatureException", now=NOW - 901)


@pytest.mark.parametrize(
    "tamper",
    [
        lambda q: q.replace(b"a=1", b"a=2"),
        lambda q: q + b"&extra=1",
        lambda q: q.replace(b"X-Amz-Expires=3600", b"X-Amz-Expires=7200"),
        lambda q: q.replace(b"us-east-1", b"us-west-2"),
    ],
)
def test_presigned_tampering(tamper: Callable[[bytes], bytes]) -> None:
    wire = presigned(query="a=1")
    expect(replace(wire, query=tamper(wire.query)), "InvalidSignatureException")


def test_presigned_missing_parameter_and_mixed_mechanisms() -> None:
    wire = presigned()
    without_sig = b"&".join(p for p in wire.query.split(b"&") if not p.startswith(b"X-Amz-Signature="))
    err = expect(replace(wire, query=without_sig), "IncompleteSignatureException")
    assert "'X-Amz-Signature'" in err.message
    both = replace(wire, headers=(*wire.headers, (b"authorization", invocation().header(b"authorization"))))
    expect(both, "IncompleteSignatureException")


def test_auth_parameter_names_as_query_values_are_not_presigning() -> None:
    wire = sign("GET", "/endpoints", query="q=X-Amz-Signature&r=X-Amz-Credential")
    assert verify(wire).access_key_id == AKID


def test_presigned_expires_bounds() -> None:
    wire = presigned()
    too_long = wire.query.replace(b"X-Amz-Expires=3600", b"X-Amz-Expires=604801")
    expect(replace(wire, query=too_long), "IncompleteSignatureException")


# -- through a real boto3 client -----------------------------------------------------------------------


class _Captured(Exception):
    def __init__(self, request: Any) -> None:
        super().__init__("captured")
        self.request = request


def _capture(service: str, call: Callable[[Any], Any]) -> Wire:
    client = boto3.client(
        service,
        endpoint_url="http://127.0.0.1:8080",
        region_name="us-east-1",
        aws_access_key_id=AKID,
        aws_secret_access_key=SECRET,
        config=Config(retries={"total_max_attempts": 1}),
    )

    def stop(request: Any, **_: Any) -> None:
        raise _Captured(request)

    client.meta.events.register("before-send", stop)
    with pytest.raises(_Captured) as info:
        call(client)
    return on_the_wire(info.value.request)


@pytest.mark.parametrize(
    ("service", "call"),
    [
        ("sagemaker", lambda c: c.list_endpoints(NameContains="x", MaxResults=5)),
        ("sagemaker", lambda c: c.create_model(ModelName="m", Tags=[{"Key": "moorage:routing", "Value": "x"}])),
        (
            "sagemaker-runtime",
            lambda c: c.invoke_endpoint(
                EndpointName="my endpoint/ü",
                Body=b"\x00\x01binary\xff",
                ContentType="application/x-npy",
                CustomAttributes="a=1, b = 2",
            ),
        ),
        ("application-autoscaling", lambda c: c.describe_scalable_targets(ServiceNamespace="sagemaker")),
    ],
)
def test_real_boto3_requests_verify(service: str, call: Callable[[Any], Any]) -> None:
    wire = _capture(service, call)
    assert verify(wire).access_key_id == AKID
    if wire.body:
        expect(_flip_body(wire), "InvalidSignatureException")


# -- property ------------------------------------------------------------------------------------------

# Header values as http.client can send them: latin-1 printable characters, spaces and tabs.
_header_text = st.text(
    alphabet=st.sampled_from([chr(c) for c in [*range(0x20, 0x7F), *range(0xA0, 0x100)]] + ["\t", " "]),
    max_size=40,
)
_segment = st.one_of(st.text(min_size=1, max_size=12).filter(lambda s: "\x00" not in s), st.sampled_from([".", ".."]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.binary(max_size=512),
    segments=st.lists(_segment, max_size=5),
    header_value=_header_text,
    query=st.lists(st.tuples(st.text(max_size=6), st.text(max_size=6)), max_size=4),
)
def test_property_botocore_signed_requests_verify(
    body: bytes, segments: list[str], header_value: str, query: list[tuple[str, str]]
) -> None:
    path = "/" + "/".join(percent_encode(s) for s in segments)
    wire = sign("POST", path, body, {"X-Custom": header_value}, query=percent_encode_sequence(query))
    assert verify(wire).access_key_id == AKID
    if body:
        expect(_flip_body(wire), "InvalidSignatureException")
    expect(replace(wire, raw_path=wire.raw_path + b"x"), "InvalidSignatureException")


def test_a_remembered_authorization_prefix_still_checks_every_signature_scope_and_key() -> None:
    """The part of the Authorization header before its Signature is parsed once per verifier; each
    request's own signature, date, scope and key are still checked."""
    secrets = dict(SECRETS)
    v = SigV4Verifier(secrets.get, max_skew_seconds=900)
    first = sign(path="/endpoints/e/invocations", body=b"1,2,3")
    second = sign(path="/endpoints/e/invocations", body=b"4,5,6")  # same prefix, another signature
    assert first.header(b"authorization").rsplit(b"Signature=", 1)[0] == \
        second.header(b"authorization").rsplit(b"Signature=", 1)[0]
    assert verify(first, v).access_key_id == AKID
    assert len(v._authorizations) == 1
    assert verify(second, v).access_key_id == AKID
    # Another body under the first signature, a signature altered, a signature missing: refused.
    expect(replace(first, body=b"4,5,6"), "InvalidSignatureException", v=v)
    signature = first.header(b"authorization").rsplit(b"=", 1)[1]
    altered = signature[:-1] + (b"0" if signature[-1:] != b"0" else b"1")
    expect(first.with_header(b"authorization", first.header(b"authorization")[:-len(signature)] + altered),
           "InvalidSignatureException", v=v)
    expect(first.with_header(b"authorization", first.header(b"authorization")[:-len(signature)]),
           "IncompleteSignatureException", v=v)
    expect(first.without_header(b"x-amz-date"), "IncompleteSignatureException", v=v)
    # The scope is checked against what each door expects, not what was remembered.
    with pytest.raises(AuthError) as info:
        v.verify(first.method, first.raw_path, first.query, first.headers, first.body, now=NOW, service="s3")
    assert info.value.code == "InvalidSignatureException" and "service" in info.value.message
    # A key deleted since is unknown at once.
    del secrets[AKID]
    expect(second, "UnrecognizedClientException", v=v)
