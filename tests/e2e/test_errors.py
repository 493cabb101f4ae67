"""Error replies as AWS sends them: runtime errors, payload limits, SigV4 failures.

After every test the server must still answer /healthz and a good invocation (autouse check).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    MAX_PAYLOAD,
    Deployer,
    MoorageServer,
    assert_predictions,
    csv_body,
    err_code,
    err_field,
    err_message,
    err_status,
    error_code_of,
    file_url,
    http_request,
    invoke,
    new_name,
    pack_model,
    predict,
)

pytestmark = pytest.mark.e2e

RAISING_INFERENCE = """
def predict_fn(data, model):
    raise ValueError("moorage-e2e-boom: the model refuses")
"""


@pytest.fixture(scope="module")
def endpoints(module_deployer: Deployer, artifacts: Path, classifier: Any) -> dict[str, str]:
    d, root = module_deployer, artifacts / "errors"
    good = d.deploy("err-good", file_url(pack_model(root / "good", classifier[0])), wait=False)
    raiser = d.deploy(
        "err-raise",
        file_url(pack_model(root / "raise", classifier[0], inference_py=RAISING_INFERENCE)),
        env={"SAGEMAKER_PROGRAM": "inference.py"},
        wait=False,
    )
    d.wait_in_service(good)
    d.wait_in_service(raiser)
    return {"good": good, "raise": raiser}


@pytest.fixture(autouse=True)
def still_answers(server: MoorageServer, rt: Any, endpoints: dict[str, str], classifier: Any) -> Iterator[None]:
    yield
    assert server.alive(), "server process died"
    assert server.healthz() == 200
    model, X = classifier
    assert_predictions(predict(rt, endpoints["good"], X[:4]), model.predict(X[:4]))


def _model_error(exc: ClientError, original_status: int) -> None:
    assert err_code(exc) == "ModelError", exc.response
    assert err_status(exc) == 424, exc.response
    assert int(err_field(exc, "OriginalStatusCode")) == original_status, exc.response


# --------------------------------------------------------------------------------------------------
# runtime errors
# --------------------------------------------------------------------------------------------------
def test_unknown_endpoint(rt: Any) -> None:
    name = new_name("nosuchendpoint")
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, name, b"1,2,3,4")
    exc = exc_info.value
    assert err_code(exc) == "ValidationError", exc.response
    assert err_status(exc) == 400
    assert name in err_message(exc), err_message(exc)


def test_model_that_raises(rt: Any, endpoints: dict[str, str], classifier: Any) -> None:
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, endpoints["raise"], csv_body(classifier[1][:2]))
    exc = exc_info.value
    _model_error(exc, 500)
    assert "moorage-e2e-boom" in str(err_field(exc, "OriginalMessage")), exc.response


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"1,2,x\n3", "text/csv"),
        (b'{"instances": [[1, 2, 3, 4], [5, 6', "application/json"),
        (b"\x93NUMPY not really", "application/x-npy"),
    ],
    ids=["csv", "json", "npy"],
)
def test_malformed_body_is_model_error_400(rt: Any, endpoints: dict[str, str], body: bytes, content_type: str) -> None:
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, endpoints["good"], body, content_type)
    _model_error(exc_info.value, 400)


def test_body_over_6mb_is_413(server: MoorageServer, endpoints: dict[str, str]) -> None:
    rt = server.rt(read_timeout=60)
    body = b"0.1,0.2,0.3,0.4\n" * (MAX_PAYLOAD // 16) + b"0"  # 6,291,457 bytes
    assert len(body) == MAX_PAYLOAD + 1
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, endpoints["good"], body, "text/csv")
    assert err_status(exc_info.value) == 413, exc_info.value.response
    assert err_code(exc_info.value) == "ValidationError", exc_info.value.response


def test_body_of_exactly_6mb_is_accepted(server: MoorageServer, endpoints: dict[str, str]) -> None:
    rt = server.rt(read_timeout=120)
    body = b"0.1,0.2,0.3,0.4\n" * (MAX_PAYLOAD // 16)
    assert len(body) == MAX_PAYLOAD
    resp = invoke(rt, endpoints["good"], body, "text/csv", Accept="text/csv")
    lines = [line for line in resp["Body"].decode().splitlines() if line.strip()]
    assert len(lines) == MAX_PAYLOAD // 16


# --------------------------------------------------------------------------------------------------
# authentication
# --------------------------------------------------------------------------------------------------
def test_wrong_secret_control_plane(server: MoorageServer) -> None:
    sm = server.sm(secret_access_key="definitely-not-the-secret")
    with pytest.raises(ClientError) as exc_info:
        sm.list_models()
    assert err_status(exc_info.value) == 403
    assert err_code(exc_info.value) == "InvalidSignatureException", exc_info.value.response


def test_wrong_secret_runtime(server: MoorageServer, endpoints: dict[str, str]) -> None:
    rt = server.rt(secret_access_key="definitely-not-the-secret")
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, endpoints["good"], b"1,2,3,4")
    assert err_status(exc_info.value) == 403, exc_info.value.response


def test_unknown_access_key_control_plane(server: MoorageServer) -> None:
    sm = server.sm(access_key_id="AKIAUNKNOWNKEY000000")
    with pytest.raises(ClientError) as exc_info:
        sm.list_endpoints()
    assert err_status(exc_info.value) == 403
    assert err_code(exc_info.value) == "UnrecognizedClientException", exc_info.value.response


def test_unknown_access_key_runtime(server: MoorageServer, endpoints: dict[str, str]) -> None:
    rt = server.rt(access_key_id="AKIAUNKNOWNKEY000000")
    with pytest.raises(ClientError) as exc_info:
        invoke(rt, endpoints["good"], b"1,2,3,4")
    assert err_status(exc_info.value) == 403, exc_info.value.response


def test_no_auth_control_plane(server: MoorageServer) -> None:
    status, headers, body = http_request(
        "POST",
        server.url + "/",
        body=b"{}",
        headers={"X-Amz-Target": "SageMaker.ListModels", "Content-Type": "application/x-amz-json-1.1"},
    )
    assert status == 403, body[:300]
    assert error_code_of(headers, body) == "MissingAuthenticationTokenException", (headers, body[:300])


def test_no_auth_runtime(server: MoorageServer, endpoints: dict[str, str]) -> None:
    status, headers, body = http_request(
        "POST",
        f"{server.url}/endpoints/{endpoints['good']}/invocations",
        body=b"1,2,3,4",
        headers={"Content-Type": "text/csv"},
    )
    assert status == 403, body[:300]
    assert error_code_of(headers, body) == "MissingAuthenticationTokenException", (headers, body[:300])


def test_no_auth_healthz_is_open(server: MoorageServer) -> None:
    status, _, _ = http_request("GET", server.url + "/healthz")
    assert status == 200


def test_control_plane_error_body_is_aws_json(server: MoorageServer) -> None:
    """A signed call for a missing model: HTTP 400 with `__type` and `message`, as botocore expects."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    payload = json.dumps({"ModelName": new_name("ghost")}).encode()
    req = AWSRequest(
        method="POST",
        url=server.url + "/",
        data=payload,
        headers={"X-Amz-Target": "SageMaker.DescribeModel", "Content-Type": "application/x-amz-json-1.1"},
    )
    SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), "sagemaker", "us-east-1").add_auth(req)
    status, headers, body = http_request("POST", server.url + "/", body=payload, headers=dict(req.headers.items()))
    assert status == 400
    doc = json.loads(body)
    assert error_code_of(headers, body) == "ValidationException"
    assert "could not find" in str(doc.get("message") or doc.get("Message")).lower(), doc
