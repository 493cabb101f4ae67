"""The credential scope and the carrier of a signature, as AWS checks them.

A request signed by botocore for another region, or for another service than the door's, is refused
before its signature is compared, with AWS's words; a door that takes no presigned URLs refuses one
however valid it is. Each case is signed by botocore's own signers.
"""

from __future__ import annotations

import datetime as dt
from unittest import mock
from urllib.parse import urlsplit

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth, SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from moorage.api.sigv4 import AuthError, Principal, ScopeError, SigV4Verifier

AKID = "AKIDSCOPEEXAMPLE"
SECRET = "scope-secret-0123456789"
CREDS = Credentials(AKID, SECRET)
SIGNED_AT = dt.datetime(2026, 11, 24, 10, 45, 10)  # naive UTC, as botocore's clock returns
NOW = SIGNED_AT.replace(tzinfo=dt.UTC).timestamp()
URL = "http://localhost:8080/"
BODY = b'{"MaxResults": 1}'


def _wire(request: AWSRequest) -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    prepared = request.prepare()
    parts = urlsplit(prepared.url)
    headers = [(k.lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in prepared.headers.items()]
    headers.append((b"host", parts.netloc.encode()))
    body = prepared.body if isinstance(prepared.body, bytes) else (prepared.body or "").encode()
    return prepared.method, parts.path.encode(), parts.query.encode(), headers, body


def _signed(service: str, region: str, *, query: bool = False, url: str = URL, body: bytes = BODY,
            method: str = "POST") -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    request = AWSRequest(method=method, url=url, data=body, headers={"Content-Type": "application/x-amz-json-1.1"})
    with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        if query:
            SigV4QueryAuth(CREDS, service, region, expires=3600).add_auth(request)
        else:
            SigV4Auth(CREDS, service, region).add_auth(request)
    return _wire(request)


def _verifier(region: str | None = "us-east-1") -> SigV4Verifier:
    return SigV4Verifier({AKID: SECRET}.get, region=region)


def test_the_scope_the_door_expects_verifies() -> None:
    method, path, query, headers, body = _signed("sagemaker", "us-east-1")
    assert _verifier().verify(method, path, query, headers, body, NOW, service="sagemaker") == \
        Principal(AKID, "us-east-1", "sagemaker")


@pytest.mark.parametrize("query", [False, True], ids=["header", "presigned"])
def test_another_region_is_refused_with_aws_words(query: bool) -> None:
    method, path, qs, headers, body = _signed("sagemaker", "us-west-2", query=query)
    with pytest.raises(ScopeError) as caught:
        _verifier().verify(method, path, qs, headers, body, NOW, service="sagemaker")
    assert (caught.value.code, caught.value.status) == ("InvalidSignatureException", 403)
    assert caught.value.message == "Credential should be scoped to a valid region, not 'us-west-2'."


@pytest.mark.parametrize("query", [False, True], ids=["header", "presigned"])
def test_another_service_is_refused_with_aws_words(query: bool) -> None:
    method, path, qs, headers, body = _signed("monitoring", "us-east-1", query=query)
    with pytest.raises(ScopeError) as caught:
        _verifier().verify(method, path, qs, headers, body, NOW, service="sagemaker")
    assert (caught.value.code, caught.value.status) == ("InvalidSignatureException", 403)
    assert caught.value.message == "Credential should be scoped to correct service: 'sagemaker'."
    assert (caught.value.service, caught.value.expected_service) == ("monitoring", "sagemaker")


def test_the_region_is_checked_even_for_an_unknown_key() -> None:
    # AWS names the bad scope first: the key is looked up only for a scope this server could have signed.
    method, path, qs, headers, body = _signed("sagemaker", "eu-west-1")
    with pytest.raises(ScopeError):
        SigV4Verifier({}.get, region="us-east-1").verify(method, path, qs, headers, body, NOW, service="sagemaker")


def test_a_verifier_without_a_region_or_service_checks_neither() -> None:
    method, path, qs, headers, body = _signed("anything", "mars-north-1")
    assert _verifier(region=None).verify(method, path, qs, headers, body, NOW) == Principal(AKID, "mars-north-1",
                                                                                           "anything")


def test_presigned_urls_refused_where_a_door_takes_none() -> None:
    method, path, qs, headers, body = _signed("sagemaker", "us-east-1", query=True, method="GET", body=b"",
                                              url="http://localhost:8080/moorage/v1/endpoints")
    verifier = _verifier()
    # Valid as a presigned URL ...
    assert verifier.verify(method, path, qs, headers, body, NOW, service="sagemaker").access_key_id == AKID
    # ... and refused where presigned URLs are not taken, before anything about it is looked at.
    with pytest.raises(AuthError) as caught:
        verifier.verify(method, path, qs, headers, body, NOW, service="sagemaker", allow_presigned=False)
    assert (caught.value.code, caught.value.status) == ("MissingAuthenticationTokenException", 403)
    assert "presigned" in caught.value.message


@pytest.mark.parametrize("query", [False, True], ids=["header", "presigned"])
def test_s3_signatures_must_be_scoped_to_s3_in_this_region(query: bool) -> None:
    def s3_signed(region: str, service: str = "s3") -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]]]:
        request = AWSRequest(method="GET", url="http://localhost:8080/bucket/key", data=b"")
        with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
            if query:
                S3SigV4QueryAuth(CREDS, service, region, expires=60).add_auth(request)
            else:
                S3SigV4Auth(CREDS, service, region).add_auth(request)
        method, path, qs, headers, _ = _wire(request)
        return method, path, qs, headers

    verifier = _verifier()
    assert verifier.verify_s3(*s3_signed("us-east-1"), now=NOW).principal.service == "s3"
    with pytest.raises(ScopeError) as caught:
        verifier.verify_s3(*s3_signed("us-west-2"), now=NOW)
    assert (caught.value.region, caught.value.expected_region) == ("us-west-2", "us-east-1")
    with pytest.raises(ScopeError) as caught:
        verifier.verify_s3(*s3_signed("us-east-1", "sagemaker"), now=NOW)
    assert caught.value.message == "Credential should be scoped to correct service: 's3'."


def _presigned_invocation(signer: type, body: bytes, declared: str | None = None,
                          ) -> tuple[str, bytes, bytes, list[tuple[bytes, bytes]], bytes]:
    """A URL presigned for an invocation (botocore presigns no body: it moves one into the query), sent with
    ``body``."""
    request = AWSRequest(method="POST", url="http://localhost:8080/endpoints/e/invocations", data=b"")
    with mock.patch("botocore.auth.get_current_datetime", return_value=SIGNED_AT):
        signer(CREDS, "sagemaker", "us-east-1", expires=3600).add_auth(request)
    method, path, query, headers, _ = _wire(request)
    if declared is not None:
        headers.append((b"x-amz-content-sha256", declared.encode()))
    return method, path, query, headers, body


@pytest.mark.parametrize("signer", [SigV4QueryAuth, S3SigV4QueryAuth], ids=["body-hash", "unsigned-payload"])
def test_a_presigned_invocation_runs_no_body_but_the_one_signed(signer: type) -> None:
    verifier = _verifier()
    method, path, query, headers, _ = _presigned_invocation(signer, b"")
    assert verifier.verify(method, path, query, headers, b"", NOW, service="sagemaker").access_key_id == AKID
    # The same URL with a body: botocore's (the empty body's hash) never matched; one presigned over
    # UNSIGNED-PAYLOAD (S3's way) used to, and would have run any body for up to a week.
    with pytest.raises(AuthError) as caught:
        verifier.verify(method, path, query, headers, b"[4, 5, 6]", NOW, service="sagemaker")
    assert caught.value.code == "InvalidSignatureException"


def test_a_presigned_url_declaring_an_unsigned_body_is_refused_outside_s3() -> None:
    method, path, query, headers, body = _presigned_invocation(S3SigV4QueryAuth, b"[1, 2, 3]", "UNSIGNED-PAYLOAD")
    with pytest.raises(AuthError) as caught:
        _verifier().verify(method, path, query, headers, body, NOW, service="sagemaker")
    assert "only for a request without a body" in caught.value.message
