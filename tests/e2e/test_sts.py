"""STS GetCallerIdentity through boto3's own ``sts`` client (the query protocol), as the SageMaker SDK
asks it to name its default bucket."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError

from e2e_support import MoorageServer

pytestmark = pytest.mark.e2e


def test_caller_identity_names_the_account(server: MoorageServer) -> None:
    identity = server.client("sts").get_caller_identity()
    assert identity["Account"] == "000000000000"
    assert identity["Arn"] == "arn:aws:iam::000000000000:root"
    assert identity["UserId"] == identity["Account"]


def test_caller_identity_needs_a_valid_signature(server: MoorageServer) -> None:
    sts = server.client("sts", secret_access_key="not-the-secret")
    with pytest.raises(ClientError) as caught:
        sts.get_caller_identity()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


def test_other_sts_actions_say_they_are_not_implemented(server: MoorageServer) -> None:
    sts = server.client("sts")
    with pytest.raises(ClientError) as caught:
        sts.get_session_token()
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 501
