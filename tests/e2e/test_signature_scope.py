"""Every door checks the credential scope as AWS does: a boto3 client set to another region, or a request
signed for another service, is refused with AWS's code and words; the native API takes no presigned URL."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.config
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from e2e_support import REGION, MoorageServer, err_code, err_field, err_message, err_status, http_request

pytestmark = pytest.mark.e2e

WRONG_REGION = "us-west-2"
# The body each target needs to succeed once signed for its own service.
_BODIES = {"AnyScaleFrontendService.DescribeScalableTargets": b'{"ServiceNamespace": "sagemaker"}'}
REGION_MESSAGE = f"Credential should be scoped to a valid region, not '{WRONG_REGION}'."


def _client(server: MoorageServer, service: str, region: str = WRONG_REGION) -> Any:
    return boto3.session.Session().client(
        service, endpoint_url=server.url, region_name=region, aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, signature_version="v4"
                                      if service != "s3" else "s3v4"))


@pytest.mark.parametrize(("service", "call"), [
    ("sagemaker", lambda c: c.list_models()),
    ("sagemaker-runtime", lambda c: c.invoke_endpoint(EndpointName="scope-nowhere", Body=b"1")),
    ("sagemaker-runtime", lambda c: c.invoke_endpoint_async(EndpointName="scope-nowhere", InputLocation="s3://b/k")),
    ("application-autoscaling", lambda c: c.describe_scalable_targets(ServiceNamespace="sagemaker")),
    ("cloudwatch", lambda c: c.list_metrics()),
    ("logs", lambda c: c.describe_log_groups()),
    ("sagemaker-edge", lambda c: c.get_device_registration(DeviceName="d", DeviceFleetName="f")),
])
def test_a_signature_for_another_region_is_refused(server: MoorageServer, service: str, call: Any) -> None:
    # The same key and call in the server's region get past authentication (whatever they answer then).
    with pytest.raises(ClientError) as caught:
        call(_client(server, service))
    assert (err_code(caught.value), err_status(caught.value)) == ("InvalidSignatureException", 403)
    assert err_message(caught.value) == REGION_MESSAGE


def test_sts_names_a_bad_scope_signature_does_not_match(server: MoorageServer) -> None:
    with pytest.raises(ClientError) as caught:
        _client(server, "sts").get_caller_identity()
    assert (err_code(caught.value), err_status(caught.value)) == ("SignatureDoesNotMatch", 403)
    assert err_message(caught.value) == REGION_MESSAGE
    assert _client(server, "sts", REGION).get_caller_identity()["Account"]


def _signed_for(server: MoorageServer, service: str, target: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    request = AWSRequest(method="POST", url=server.url + "/", data=body,
                         headers={"X-Amz-Target": target, "Content-Type": "application/x-amz-json-1.1"})
    SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), service, REGION).add_auth(request)
    return http_request("POST", server.url + "/", body=body, headers=dict(request.headers.items()))


@pytest.mark.parametrize(("signed_for", "target", "expected"), [
    ("monitoring", "SageMaker.ListModels", "sagemaker"),
    ("sagemaker", "GraniteServiceVersion20100801.ListMetrics", "monitoring"),
    ("sagemaker", "Logs_20140328.DescribeLogGroups", "logs"),
    ("logs", "AnyScaleFrontendService.DescribeScalableTargets", "application-autoscaling"),
])
def test_a_signature_for_another_service_is_refused(server: MoorageServer, signed_for: str, target: str,
                                                    expected: str) -> None:
    payload = _BODIES.get(target, b"{}")
    status, headers, body = _signed_for(server, signed_for, target, payload)
    assert status == 403 and headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert f"Credential should be scoped to correct service: '{expected}'." in body.decode()
    status, _, body = _signed_for(server, expected, target, payload)
    assert status == 200, body


def test_the_native_api_takes_its_own_scope_and_no_presigned_url(server: MoorageServer) -> None:
    creds = Credentials(server.access_key_id, server.secret_access_key)
    url = server.url + "/moorage/v1/endpoints"
    assert server.signed_request("GET", "/moorage/v1/endpoints")[0] == 200
    # A week-long presigned URL, valid in every other respect, opens nothing here.
    presigned = AWSRequest(method="GET", url=url)
    SigV4QueryAuth(creds, "sagemaker", REGION, expires=7 * 24 * 3600).add_auth(presigned)
    status, headers, body = http_request("GET", presigned.prepare().url)
    assert status == 403 and headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    assert b"presigned" in body
    for service, region in (("monitoring", REGION), ("sagemaker", WRONG_REGION)):
        request = AWSRequest(method="GET", url=url)
        SigV4Auth(creds, service, region).add_auth(request)
        status, headers, body = http_request("GET", url, headers=dict(request.headers.items()))
        assert status == 403 and headers["x-amzn-errortype"] == "InvalidSignatureException", body


def test_s3_answers_a_bad_region_as_s3_does(server: MoorageServer) -> None:
    s3 = _client(server, "s3")
    with pytest.raises(ClientError) as caught:
        s3.list_buckets()
    assert (err_code(caught.value), err_status(caught.value)) == ("AuthorizationHeaderMalformed", 400)
    assert err_message(caught.value) == (f"The authorization header is malformed; the region '{WRONG_REGION}' is "
                                         f"wrong; expecting '{REGION}'")
    assert err_field(caught.value, "Region") == REGION
    url = s3.generate_presigned_url("get_object", Params={"Bucket": "scope-bucket", "Key": "k"}, ExpiresIn=60)
    status, _, body = http_request("GET", url)
    assert status == 400 and b"<Code>AuthorizationQueryParametersError</Code>" in body
    assert f"the region '{WRONG_REGION}' is wrong; expecting '{REGION}'".encode() in body
