"""The RPC v2 CBOR door's codec against botocore's own CBOR serializer and parser (round trips)."""

from __future__ import annotations

import datetime as dt

import pytest
from botocore.model import ServiceModel
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from moorage.api.rpcv2_cbor import decode_body, encode_error, encode_result
from moorage.api.shapes import ServiceShapes
from moorage.errors import SerializationException

WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, 250000, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def cloudwatch() -> ServiceModel:
    return ServiceShapes("cloudwatch").service_model


def test_requests_decode_to_their_parameters(cloudwatch: ServiceModel) -> None:
    params = {"Namespace": "Shop", "MetricData": [
        {"MetricName": "Coupons", "Dimensions": [{"Name": "Store", "Value": "north"}], "Values": [1.5, -2.0],
         "Counts": [1.0, 3.0], "Timestamp": WHEN, "Unit": "Count", "StorageResolution": 1},
        {"MetricName": "Basket", "StatisticValues": {"SampleCount": 2.0, "Sum": 3.0, "Minimum": 1.0, "Maximum": 2.0}}]}
    request = create_serializer("smithy-rpc-v2-cbor").serialize_to_request(
        params, cloudwatch.operation_model("PutMetricData"))
    assert request["url_path"] == "/service/GraniteServiceVersion20100801/operation/PutMetricData"
    assert decode_body(request["body"]) == params


def test_malformed_bodies_are_serialization_errors() -> None:
    with pytest.raises(SerializationException):
        decode_body(b"\xff\xff")
    with pytest.raises(SerializationException, match="after"):
        decode_body(b"\xa0\x01")  # an empty map, then a stray integer
    assert decode_body(b"") == {}


def test_results_read_back_by_botocore(cloudwatch: ServiceModel) -> None:
    operation = cloudwatch.operation_model("DescribeAlarms")
    alarm = {"AlarmName": "a", "ActionsEnabled": False, "OKActions": [], "Threshold": 1.5, "Period": 60,
             "StateUpdatedTimestamp": WHEN.isoformat(), "AlarmConfigurationUpdatedTimestamp": WHEN,
             "Dimensions": [{"Name": "EndpointName", "Value": "ep"}], "StateReason": None, "Internal": "x"}
    body = encode_result(operation.output_shape, {"MetricAlarms": [alarm], "CompositeAlarms": [], "NextToken": "t"})
    parsed = create_parser("smithy-rpc-v2-cbor").parse({"body": body, "headers": {}, "status_code": 200},
                                                       operation.output_shape)
    [back] = parsed["MetricAlarms"]
    assert parsed["NextToken"] == "t" and parsed["CompositeAlarms"] == []
    assert back == {"AlarmName": "a", "ActionsEnabled": False, "OKActions": [], "Threshold": 1.5, "Period": 60,
                    "StateUpdatedTimestamp": WHEN, "AlarmConfigurationUpdatedTimestamp": WHEN,
                    "Dimensions": [{"Name": "EndpointName", "Value": "ep"}]}
    assert encode_result(None, {}) == b""


def test_errors_read_back_by_botocore(cloudwatch: ServiceModel) -> None:
    long_message = "x" * 300  # past the one-byte length form
    parsed = create_parser("smithy-rpc-v2-cbor").parse(
        {"body": encode_error("InvalidParameterValueException", long_message),
         "headers": {"x-amzn-query-error": "InvalidParameterValue;Sender"}, "status_code": 400},
        cloudwatch.operation_model("PutMetricData").output_shape)
    assert parsed["Error"]["Code"] == "InvalidParameterValue" and parsed["Error"]["Message"] == long_message
