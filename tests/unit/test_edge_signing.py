"""The agent's hand-written SigV4 signer against botocore's signer and the server's verifier."""

from __future__ import annotations

import hashlib

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from edge_support import ACCESS_KEY, REGION, SECRET_KEY, botocore_signature_ok
from moorage.api.sigv4 import SigV4Verifier
from moorage.edge.signing import Key, Signer, wire_path

SIGNER = Signer(Key(ACCESS_KEY, SECRET_KEY), REGION)
NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(("method", "path", "body", "content_type"), [
    ("POST", "/SendHeartbeat", b'{"DeviceName":"d1"}', "application/json"),
    ("GET", "/moorage/v1/edge/fleets/f1/packages/model-1", b"", None),
    ("PUT", "/moorage/v1/edge/fleets/f1/devices/d1/capture/d1-000000000042", b'{"a":1}\n' * 100,
     "application/jsonlines"),
    ("GET", "/moorage/v1/edge/fleets/f 1/packages/model+1~x", b"", None),  # characters that are quoted
])
def test_the_signature_is_botocores(method: str, path: str, body: bytes, content_type: str | None) -> None:
    sent = wire_path(path)
    headers = SIGNER.headers(method, "127.0.0.1:8080", sent, body, content_type=content_type, now=NOW)
    ok, why = botocore_signature_ok(method, sent, headers, body, SECRET_KEY)
    assert ok, why
    # And exactly as botocore's add_auth writes it, given the same headers and time.
    request = AWSRequest(method=method, url=f"http://127.0.0.1:8080{sent}", data=body,
                         headers={k: v for k, v in headers.items() if k != "Authorization"})
    request.context["timestamp"] = headers["X-Amz-Date"]
    auth = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY), "sagemaker", REGION)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    assert headers["Authorization"].endswith(f"Signature={signature}")
    assert headers["X-Amz-Content-SHA256"] == hashlib.sha256(body).hexdigest()


def test_the_servers_verifier_accepts_it_and_refuses_a_changed_body() -> None:
    body = b'{"DeviceName":"d1","DeviceFleetName":"f1"}'
    headers = SIGNER.headers("POST", "localhost:9000", "/GetDeployments", body, content_type="application/json")
    verifier = SigV4Verifier(lambda key: SECRET_KEY if key == ACCESS_KEY else None)
    raw = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    principal = verifier.verify("POST", b"/GetDeployments", b"", raw, body)
    assert principal.access_key_id == ACCESS_KEY and principal.service == "sagemaker"
    with pytest.raises(Exception, match="does not match"):
        verifier.verify("POST", b"/GetDeployments", b"", raw, body + b" ")


def test_the_derived_key_is_kept_for_the_day_only() -> None:
    signer = Signer(Key(ACCESS_KEY, SECRET_KEY), REGION)
    first = signer.headers("GET", "h", "/x", now=NOW)["Authorization"]
    next_day = signer.headers("GET", "h", "/x", now=NOW + 86400)["Authorization"]
    assert signer._day == "20260102"
    assert signer.headers("GET", "h", "/x", now=NOW)["Authorization"] == first != next_day
