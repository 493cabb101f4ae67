"""The query protocol's form decoder and XML encoder, held to botocore's own serializer and parser.

Requests are produced the way an older boto3 sends them (botocore's ``QuerySerializer`` over a model
that lists only ``query``) and decoded back to the parameters; replies are encoded and read back by
botocore's ``QueryParser``. Besides CloudWatch, SNS (maps with their own entry names) and SimpleDB
(flattened lists, renamed members) keep the walkers generic.
"""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any
from urllib.parse import parse_qsl, urlencode

import pytest
from botocore.loaders import Loader
from botocore.model import ListShape, MapShape, ServiceModel, Shape, StructureShape
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from moorage.api.query_protocol import decode_form, encode_error, encode_result
from moorage.api.shapes import RequestValidationError, ServiceShapes

WHEN = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)


def query_model(service: str) -> ServiceModel:
    description = copy.deepcopy(Loader().load_service_model(service, "service-2"))
    description["metadata"]["protocol"] = "query"
    description["metadata"]["protocols"] = ["query"]
    return ServiceModel(description, service_name=service)


@pytest.fixture(scope="module")
def cloudwatch() -> ServiceModel:
    return query_model("cloudwatch")


def as_form(model: ServiceModel, operation: str, params: dict[str, Any]) -> list[tuple[str, str]]:
    """What an older boto3 puts on the wire for ``params``, as the server reads the body."""
    request = create_serializer("query").serialize_to_request(params, model.operation_model(operation))
    return parse_qsl(urlencode(request["body"]), keep_blank_values=True)


def wire_keys(shape: Shape, value: Any) -> Any:
    """``value`` keyed as the protocols carry it: members under their serialized name."""
    if isinstance(shape, StructureShape):
        return {shape.members[k].serialization.get("name", k): wire_keys(shape.members[k], v) for k, v in value.items()}
    if isinstance(shape, ListShape):
        return [wire_keys(shape.member, v) for v in value]
    if isinstance(shape, MapShape):
        return {k: wire_keys(shape.value, v) for k, v in value.items()}
    return value


def read_back(model: ServiceModel, operation: str, body: bytes, status: int = 200) -> dict[str, Any]:
    parsed = create_parser("query").parse({"body": body, "headers": {}, "status_code": status},
                                          model.operation_model(operation).output_shape)
    parsed.pop("ResponseMetadata", None)
    return parsed


@pytest.mark.parametrize(("operation", "params"), [
    ("PutMetricData", {"Namespace": "Shop", "MetricData": [
        {"MetricName": "Coupons", "Dimensions": [{"Name": "EndpointName", "Value": "ep"},
                                                 {"Name": "VariantName", "Value": "AllTraffic"}],
         "Values": [1.5, 2.0, -3.25], "Counts": [1.0, 3.0, 2.0], "Timestamp": WHEN, "Unit": "Count",
         "StorageResolution": 1},
        {"MetricName": "Basket", "StatisticValues": {"SampleCount": 2.0, "Sum": 3.0, "Minimum": 1.0, "Maximum": 2.0}},
        {"MetricName": "Odd name & = / +", "Value": 1e-7}]}),
    ("GetMetricData", {"StartTime": WHEN, "EndTime": WHEN + dt.timedelta(hours=1), "ScanBy": "TimestampAscending",
                       "MaxDatapoints": 10, "NextToken": "abc=", "MetricDataQueries": [
        {"Id": "m1", "MetricStat": {"Metric": {"Namespace": "AWS/SageMaker", "MetricName": "ModelLatency",
                                               "Dimensions": [{"Name": "EndpointName", "Value": "ep"}]},
                                    "Period": 60, "Stat": "p99.9", "Unit": "Microseconds"}, "ReturnData": False},
        {"Id": "e1", "Expression": "m1/1000", "Label": "ms", "Period": 60}]}),
    ("PutMetricAlarm", {"AlarmName": "a:b@c", "ActionsEnabled": False, "AlarmActions": ["http://x/y?z=1"],
                        "OKActions": [], "Namespace": "AWS/SageMaker", "MetricName": "Invocation5XXErrors",
                        "Statistic": "Sum", "Period": 60, "EvaluationPeriods": 3, "DatapointsToAlarm": 2,
                        "Threshold": 0.5, "ComparisonOperator": "GreaterThanThreshold", "TreatMissingData": "ignore",
                        "Tags": [{"Key": "team", "Value": "ml"}]}),
    ("DescribeAlarms", {"AlarmNames": ["a", "b"], "AlarmTypes": ["MetricAlarm"], "MaxRecords": 2}),
    ("DescribeAlarmHistory", {"StartDate": WHEN, "HistoryItemType": "StateUpdate", "ScanBy": "TimestampDescending"}),
    ("ListMetrics", {"Dimensions": [{"Name": "EndpointName"}], "RecentlyActive": "PT3H",
                     "IncludeLinkedAccounts": True}),
])
def test_cloudwatch_requests_decode_to_their_parameters(cloudwatch: ServiceModel, operation: str,
                                                        params: dict[str, Any]) -> None:
    shape = cloudwatch.operation_model(operation).input_shape
    decoded = decode_form(shape, as_form(cloudwatch, operation, params))
    assert decoded == wire_keys(shape, params)


def test_an_empty_list_is_sent_and_decoded_as_one() -> None:
    model = query_model("cloudwatch")
    form = as_form(model, "PutMetricAlarm", {"AlarmName": "a", "OKActions": []})
    assert ("OKActions", "") in form
    assert decode_form(model.operation_model("PutMetricAlarm").input_shape, form) == {"AlarmName": "a",
                                                                                      "OKActions": []}


def test_maps_with_named_entries_decode() -> None:
    sns = query_model("sns")
    params = {"TopicArn": "arn:aws:sns:us-east-1:123456789012:t", "Message": "hi",
              "MessageAttributes": {"team": {"DataType": "String", "StringValue": "ml"},
                                    "n": {"DataType": "Number", "StringValue": "3"}}}
    form = as_form(sns, "Publish", params)
    assert ("MessageAttributes.entry.1.Name", "team") in form
    assert decode_form(sns.operation_model("Publish").input_shape, form) == params


def test_flattened_lists_and_renamed_members_decode() -> None:
    sdb = query_model("sdb")
    params = {"DomainName": "d", "Items": [
        {"Name": "i1", "Attributes": [{"Name": "a", "Value": "1", "Replace": True}, {"Name": "b", "Value": "2"}]},
        {"Name": "i2", "Attributes": [{"Name": "c", "Value": "3"}]}]}
    form = as_form(sdb, "BatchPutAttributes", params)
    assert ("Item.1.ItemName", "i1") in form and ("Item.1.Attribute.2.Value", "2") in form
    shape = sdb.operation_model("BatchPutAttributes").input_shape
    assert decode_form(shape, form) == wire_keys(shape, params)


def test_values_that_do_not_parse_reach_validation_as_text() -> None:
    cloudwatch = ServiceShapes("cloudwatch")
    shape = cloudwatch.service_model.operation_model("PutMetricAlarm").input_shape
    form = [("AlarmName", "a"), ("Period", "sixty"), ("Threshold", "high"), ("ActionsEnabled", "maybe"),
            ("Unknown.Thing", "x")]
    decoded = decode_form(shape, form)
    assert decoded == {"AlarmName": "a", "Period": "sixty", "Threshold": "high", "ActionsEnabled": "maybe",
                       "Unknown": {"Thing": "x"}}
    with pytest.raises(RequestValidationError) as caught:
        cloudwatch.validate_input("PutMetricAlarm", decoded)
    message = caught.value.message
    assert "Value 'sixty' at 'period' failed to satisfy constraint: Member must be of type integer" in message
    assert "at 'threshold'" in message and "at 'actionsEnabled'" in message
    assert 'Unknown parameter in input: "Unknown"' in message


def test_the_protocol_own_parameters_are_not_parameters(cloudwatch: ServiceModel) -> None:
    form = as_form(cloudwatch, "DescribeAlarms", {})
    assert dict(form) == {"Action": "DescribeAlarms", "Version": "2010-08-01"}
    assert decode_form(cloudwatch.operation_model("DescribeAlarms").input_shape, form) == {}


def test_results_read_back_by_botocore(cloudwatch: ServiceModel) -> None:
    alarm = {"AlarmName": "a<&>b", "AlarmArn": "arn:aws:cloudwatch:us-east-1:123456789012:alarm:a",
             "AlarmDescription": "line one\r\nline two", "ActionsEnabled": False, "OKActions": [],
             "AlarmActions": ["http://hook/?a=1&b=2"], "StateValue": "ALARM", "StateReasonData": '{"x": 1}',
             "StateUpdatedTimestamp": "2024-05-06T07:08:09.123+00:00",
             "AlarmConfigurationUpdatedTimestamp": WHEN, "MetricName": "ModelLatency", "Namespace": "AWS/SageMaker",
             "ExtendedStatistic": "p99", "Dimensions": [{"Name": "EndpointName", "Value": "ep"}], "Period": 60,
             "EvaluationPeriods": 3, "Threshold": 1.5e6, "ComparisonOperator": "GreaterThanThreshold",
             "Internal": "never shown"}
    body = encode_result(cloudwatch.operation_model("DescribeAlarms"),
                         {"MetricAlarms": [alarm], "CompositeAlarms": [], "NextToken": "t=="}, "rid")
    parsed = read_back(cloudwatch, "DescribeAlarms", body)
    [back] = parsed["MetricAlarms"]
    assert parsed["CompositeAlarms"] == [] and parsed["NextToken"] == "t=="
    assert back["AlarmName"] == "a<&>b" and back["AlarmDescription"] == "line one\r\nline two"
    assert back["ActionsEnabled"] is False and back["OKActions"] == [] and back["Threshold"] == 1.5e6
    assert back["StateUpdatedTimestamp"] == dt.datetime(2024, 5, 6, 7, 8, 9, 123000, tzinfo=dt.UTC)
    assert back["AlarmConfigurationUpdatedTimestamp"] == WHEN
    assert back["Dimensions"] == alarm["Dimensions"] and back["Period"] == 60 and "Internal" not in back


def test_series_and_maps_read_back_by_botocore(cloudwatch: ServiceModel) -> None:
    stamps = [1_700_000_060.0, 1_700_000_000.0]
    result = {"MetricDataResults": [{"Id": "m1", "Label": "ModelLatency", "Timestamps": stamps,
                                     "Values": [0.1, float("nan")], "StatusCode": "PartialData"}],
              "NextToken": "n", "Messages": []}
    parsed = read_back(cloudwatch, "GetMetricData", encode_result(cloudwatch.operation_model("GetMetricData"),
                                                                  result, "rid"))
    [series] = parsed["MetricDataResults"]
    assert [t.timestamp() for t in series["Timestamps"]] == stamps
    assert series["Values"][0] == 0.1 and series["Values"][1] != series["Values"][1]  # NaN
    history = {"AlarmHistoryItems": [{"AlarmName": "a", "Timestamp": WHEN, "HistoryItemType": "Action",
                                      "AlarmContributorAttributes": {"k": "v", "x": "y & z"}}]}
    parsed = read_back(cloudwatch, "DescribeAlarmHistory",
                       encode_result(cloudwatch.operation_model("DescribeAlarmHistory"), history, "rid"))
    assert parsed["AlarmHistoryItems"][0]["AlarmContributorAttributes"] == {"k": "v", "x": "y & z"}
    statistics = {"Label": "x", "Datapoints": [{"Timestamp": WHEN, "Sum": 3.0, "Unit": "Count",
                                                "ExtendedStatistics": {"p50": 1.0, "p99.9": 2.0}}]}
    parsed = read_back(cloudwatch, "GetMetricStatistics",
                       encode_result(cloudwatch.operation_model("GetMetricStatistics"), statistics, "rid"))
    assert parsed == {"Label": "x", "Datapoints": [{"Timestamp": WHEN, "Sum": 3.0, "Unit": "Count",
                                                   "ExtendedStatistics": {"p50": 1.0, "p99.9": 2.0}}]}


def test_an_operation_without_output_is_just_its_request_id(cloudwatch: ServiceModel) -> None:
    body = encode_result(cloudwatch.operation_model("PutMetricData"), {}, "the-id")
    assert body.startswith(b'<PutMetricDataResponse xmlns="http://monitoring.amazonaws.com/doc/2010-08-01/">')
    parsed = create_parser("query").parse({"body": body, "headers": {}, "status_code": 200}, None)
    assert parsed["ResponseMetadata"]["RequestId"] == "the-id"


def test_flattened_results_read_back_by_botocore() -> None:
    sdb = query_model("sdb")
    result = {"Items": [{"Name": "i1", "Attributes": [{"Name": "a", "Value": "1"}, {"Name": "b", "Value": "2"}]},
                        {"Name": "i2", "Attributes": [{"Name": "c", "Value": "3"}]}], "NextToken": "n"}
    body = encode_result(sdb.operation_model("Select"), result, "rid")
    assert b"<Item><Name>i1</Name><Attribute>" in body
    assert read_back(sdb, "Select", body) == result


def test_errors_read_back_by_botocore(cloudwatch: ServiceModel) -> None:
    body = encode_error("InvalidParameterValue", "The value <x> & y is invalid.", True, "rid",
                        "http://monitoring.amazonaws.com/doc/2010-08-01/")
    parsed = create_parser("query").parse({"body": body, "headers": {}, "status_code": 400},
                                          cloudwatch.operation_model("PutMetricData").output_shape)
    assert parsed["Error"] == {"Type": "Sender", "Code": "InvalidParameterValue",
                               "Message": "The value <x> & y is invalid."}
    assert parsed["ResponseMetadata"]["RequestId"] == "rid"
