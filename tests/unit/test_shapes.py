"""Validation and output shaping against botocore's real service models.

Valid inputs are produced the way boto3 produces them (botocore's own JSON serializer), and
shaped outputs are read back by botocore's own JSON response parser, so both directions are
checked against the client that will really talk to the server.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import botocore.session
import pytest
from botocore.parsers import create_parser
from botocore.serialize import create_serializer

from moorage.api.shapes import RequestValidationError, ServiceShapes, compile_java_pattern

ROLE = "arn:aws:iam::123456789012:role/moorage-execution"


@pytest.fixture(scope="module")
def sagemaker() -> ServiceShapes:
    return ServiceShapes("sagemaker")


@pytest.fixture(scope="module")
def runtime() -> ServiceShapes:
    return ServiceShapes("sagemaker-runtime")


@pytest.fixture(scope="module")
def autoscaling() -> ServiceShapes:
    return ServiceShapes("application-autoscaling")


def as_sent_by_boto3(shapes: ServiceShapes, operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """The JSON body botocore would send for ``params``."""
    op = shapes.operation(operation)
    assert op is not None
    request = create_serializer("json").serialize_to_request(params, op)
    body: dict[str, Any] = json.loads(request["body"] or b"{}")
    return body


def errors_of(shapes: ServiceShapes, operation: str, params: dict[str, Any]) -> RequestValidationError:
    with pytest.raises(RequestValidationError) as info:
        shapes.validate_input(operation, params)
    return info.value


def only_error(shapes: ServiceShapes, operation: str, params: dict[str, Any]) -> str:
    err = errors_of(shapes, operation, params)
    assert len(err.errors) == 1, err.message
    assert err.message == "1 validation error detected: " + err.errors[0]
    return err.errors[0]


def create_model() -> dict[str, Any]:
    return {
        "ModelName": "iris-model",
        "PrimaryContainer": {
            "Image": "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3",
            "ModelDataUrl": "s3://bucket/models/iris/model.tar.gz",
            "Environment": {"SAGEMAKER_PROGRAM": "inference.py", "LOG_LEVEL": "info"},
        },
        "ExecutionRoleArn": ROLE,
        "Tags": [{"Key": "moorage:routing", "Value": "thompson"}],
    }


def create_endpoint_config() -> dict[str, Any]:
    return {
        "EndpointConfigName": "iris-config",
        "ProductionVariants": [
            {
                "VariantName": "blue",
                "ModelName": "iris-model",
                "InitialInstanceCount": 2,
                "InstanceType": "ml.m5.large",
                "InitialVariantWeight": 0.9,
            },
            {
                "VariantName": "green",
                "ModelName": "iris-model-v2",
                "InitialInstanceCount": 1,
                "InstanceType": "ml.c5.xlarge",
                "InitialVariantWeight": 0.1,
            },
        ],
    }


# -- operations ----------------------------------------------------------------------------------------


def test_operations_are_found(sagemaker: ServiceShapes, runtime: ServiceShapes, autoscaling: ServiceShapes) -> None:
    op = sagemaker.operation("CreateModel")
    assert op is not None and op.input_shape.name == "CreateModelInput"
    assert sagemaker.operation("NoSuchOperation") is None
    invoke = runtime.operation("InvokeEndpoint")
    assert invoke is not None
    assert invoke.http["requestUri"] == "/endpoints/{EndpointName}/invocations"
    assert autoscaling.operation("RegisterScalableTarget") is not None
    with pytest.raises(KeyError):
        sagemaker.validate_input("NoSuchOperation", {})


# -- valid inputs --------------------------------------------------------------------------------------

VALID = {
    "CreateModel": create_model,
    "CreateEndpointConfig": create_endpoint_config,
    "CreateEndpoint": lambda: {
        "EndpointName": "iris",
        "EndpointConfigName": "iris-config",
        "Tags": [{"Key": "team", "Value": "ml"}],
    },
    "UpdateEndpointWeightsAndCapacities": lambda: {
        "EndpointName": "iris",
        "DesiredWeightsAndCapacities": [
            {"VariantName": "blue", "DesiredWeight": 0.5, "DesiredInstanceCount": 3},
            {"VariantName": "green", "DesiredWeight": 0.5},
        ],
    },
    "DescribeEndpoint": lambda: {"EndpointName": "iris"},
    "ListEndpoints": lambda: {
        "SortBy": "CreationTime",
        "SortOrder": "Descending",
        "MaxResults": 100,
        "NameContains": "iris",
        "CreationTimeAfter": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        "StatusEquals": "InService",
    },
    "DeleteEndpoint": lambda: {"EndpointName": "iris"},
}


@pytest.mark.parametrize("operation", sorted(VALID))
def test_valid_boto3_inputs_pass(sagemaker: ServiceShapes, operation: str) -> None:
    body = as_sent_by_boto3(sagemaker, operation, VALID[operation]())
    sagemaker.validate_input(operation, body)


def test_timestamps_and_nulls_in_input(sagemaker: ServiceShapes) -> None:
    sagemaker.validate_input("ListEndpoints", {"CreationTimeBefore": 1795517110.5})
    sagemaker.validate_input("ListEndpoints", {"CreationTimeBefore": "2026-11-24T10:45:10Z"})
    # An explicit null is treated as absent, as the JSON protocol does.
    sagemaker.validate_input("ListEndpoints", {"NextToken": None})


def test_runtime_and_autoscaling_inputs(runtime: ServiceShapes, autoscaling: ServiceShapes) -> None:
    # rest-json members bound to the URI or headers are handed over under their member names.
    runtime.validate_input(
        "InvokeEndpoint",
        {"EndpointName": "iris", "Body": b"1.0,2.0", "ContentType": "text/csv", "CustomAttributes": "trace=1"},
    )
    body = as_sent_by_boto3(
        autoscaling,
        "RegisterScalableTarget",
        {
            "ServiceNamespace": "sagemaker",
            "ResourceId": "endpoint/iris/variant/blue",
            "ScalableDimension": "sagemaker:variant:DesiredInstanceCount",
            "MinCapacity": 1,
            "MaxCapacity": 4,
        },
    )
    autoscaling.validate_input("RegisterScalableTarget", body)


# -- violations ----------------------------------------------------------------------------------------


def test_pattern_violation_wording(sagemaker: ServiceShapes) -> None:
    error = only_error(sagemaker, "CreateEndpoint", {"EndpointName": "bad name!", "EndpointConfigName": "c"})
    assert error == (
        "Value 'bad name!' at 'endpointName' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}"
    )


def test_missing_required_members(sagemaker: ServiceShapes) -> None:
    err = errors_of(sagemaker, "CreateEndpoint", {"EndpointConfigName": None})
    assert err.message == (
        "2 validation errors detected: "
        "Value null at 'endpointName' failed to satisfy constraint: Member must not be null; "
        "Value null at 'endpointConfigName' failed to satisfy constraint: Member must not be null"
    )


def test_string_length(sagemaker: ServiceShapes) -> None:
    err = errors_of(sagemaker, "DescribeEndpoint", {"EndpointName": "a" * 64})
    assert len(err.errors) == 2  # too long, and so also outside the pattern's {0,62}
    assert err.errors[0].endswith("Member must have length less than or equal to 63")
    error = only_error(sagemaker, "CreateModel", {"ModelName": "m", "ExecutionRoleArn": "arn:aws:iam::1:role/long"})
    assert error.startswith("Value 'arn:aws:iam::1:role/long' at 'executionRoleArn'")
    err = errors_of(sagemaker, "CreateModel", {"ModelName": "m", "ExecutionRoleArn": "arn:x"})
    assert [e.split("constraint: ")[1] for e in err.errors] == [
        "Member must have length greater than or equal to 20",
        "Member must satisfy regular expression pattern: arn:aws[a-z\\-]*:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+",
    ]


def test_numeric_ranges_in_nested_lists(sagemaker: ServiceShapes) -> None:
    params = create_endpoint_config()
    params["ProductionVariants"][0]["InitialInstanceCount"] = 0
    params["ProductionVariants"][1]["InitialVariantWeight"] = -0.5
    err = errors_of(sagemaker, "CreateEndpointConfig", params)
    assert err.errors == [
        "Value '0' at 'productionVariants.1.member.initialInstanceCount' failed to satisfy constraint: "
        "Member must have value greater than or equal to 1",
        "Value '-0.5' at 'productionVariants.2.member.initialVariantWeight' failed to satisfy constraint: "
        "Member must have value greater than or equal to 0",
    ]
    error = only_error(sagemaker, "ListEndpoints", {"MaxResults": 101})
    assert error == (
        "Value '101' at 'maxResults' failed to satisfy constraint: Member must have value less than or equal to 100"
    )


def test_enum(sagemaker: ServiceShapes) -> None:
    params = create_endpoint_config()
    params["ProductionVariants"][1]["InstanceType"] = "ml.nope"
    error = only_error(sagemaker, "CreateEndpointConfig", params)
    assert error.startswith(
        "Value 'ml.nope' at 'productionVariants.2.member.instanceType' failed to satisfy constraint: "
        "Member must satisfy enum value set: [ml.t2.medium, ml.t2.large,"
    )
    assert error.endswith("]")


def test_list_lengths(sagemaker: ServiceShapes) -> None:
    error = only_error(sagemaker, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": []})
    assert error == (
        "Value '[]' at 'productionVariants' failed to satisfy constraint: "
        "Member must have length greater than or equal to 1"
    )
    many = [{"VariantName": f"v{i}"} for i in range(11)]
    error = only_error(sagemaker, "CreateEndpointConfig", {"EndpointConfigName": "c", "ProductionVariants": many})
    assert error.endswith("Member must have length less than or equal to 10")


def test_nested_required_member_path(sagemaker: ServiceShapes) -> None:
    params = {
        "EndpointName": "iris",
        "DesiredWeightsAndCapacities": [{"VariantName": "blue"}, {"DesiredWeight": 1.0}],
    }
    error = only_error(sagemaker, "UpdateEndpointWeightsAndCapacities", params)
    assert error == (
        "Value null at 'desiredWeightsAndCapacities.2.member.variantName' failed to satisfy constraint: "
        "Member must not be null"
    )


def test_map_keys_and_values(sagemaker: ServiceShapes) -> None:
    params = create_model()
    params["PrimaryContainer"]["Environment"] = {"1BAD": "x", "OK": 5}
    err = errors_of(sagemaker, "CreateModel", params)
    assert err.errors == [
        "Value '{1BAD=x, OK=5}' at 'primaryContainer.environment' failed to satisfy constraint: "
        "Map keys must satisfy constraint: [Member must satisfy regular expression pattern: [a-zA-Z_][a-zA-Z0-9_]*]",
        "Value '{1BAD=x, OK=5}' at 'primaryContainer.environment' failed to satisfy constraint: "
        "Map value must satisfy constraint: [Member must be of type string]",
    ]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("ProductionVariants", 0, "InitialInstanceCount"), "2", "Member must be of type integer"),
        (("ProductionVariants", 0, "InitialInstanceCount"), True, "Member must be of type integer"),
        (("ProductionVariants", 0, "InitialInstanceCount"), 2.5, "Member must be of type integer"),
        (("ProductionVariants", 0, "InitialVariantWeight"), "0.5", "Member must be of type float"),
        (("ProductionVariants", 0, "VariantName"), 7, "Member must be of type string"),
        (("EnableNetworkIsolation",), "yes", "Member must be of type boolean"),
        (("ProductionVariants",), {"VariantName": "v"}, "Member must be of type list"),
        (("ProductionVariants", 0), "blue", "Member must be of type structure"),
    ],
)
def test_type_errors(sagemaker: ServiceShapes, path: tuple[Any, ...], value: Any, expected: str) -> None:
    params = create_endpoint_config()
    target: Any = params
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    error = only_error(sagemaker, "CreateEndpointConfig", params)
    assert error.endswith(expected)


def test_timestamp_type(sagemaker: ServiceShapes) -> None:
    error = only_error(sagemaker, "ListEndpoints", {"CreationTimeAfter": "yesterday"})
    assert error.startswith("Value 'yesterday' at 'creationTimeAfter' failed to satisfy constraint: Member must be")


def test_unknown_members(sagemaker: ServiceShapes) -> None:
    params = create_endpoint_config()
    params["Extra"] = 1
    params["ProductionVariants"][0]["Weight"] = 1
    err = errors_of(sagemaker, "CreateEndpointConfig", params)
    assert len(err.errors) == 2
    assert err.errors[0].startswith('Unknown parameter in productionVariants.1.member: "Weight", must be one of: ')
    assert err.errors[1].startswith('Unknown parameter in input: "Extra", must be one of: EndpointConfigName, ')


def test_many_violations_are_all_counted(sagemaker: ServiceShapes) -> None:
    params = {
        "EndpointConfigName": "bad name",
        "ProductionVariants": [
            {"VariantName": "ok", "InitialInstanceCount": 0, "InstanceType": "ml.nope"},
            {"InitialVariantWeight": "heavy"},
        ],
        "Tags": [{"Key": "k"}],
    }
    err = errors_of(sagemaker, "CreateEndpointConfig", params)
    assert len(err.errors) == 6
    assert err.message.startswith("6 validation errors detected: Value 'bad name' at 'endpointConfigName'")
    assert err.message.count("; ") == 5
    assert "Value null at 'tags.1.member.value'" in err.message


def test_union_needs_exactly_one_member(sagemaker: ServiceShapes) -> None:
    params = {
        "AutoMLJobName": "job",
        "AutoMLJobInputDataConfig": [{"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://b/k"}}}],
        "OutputDataConfig": {"S3OutputPath": "s3://b/out"},
        "AutoMLProblemTypeConfig": {
            "ImageClassificationJobConfig": {},
            "TabularJobConfig": {"TargetAttributeName": "y"},
        },
        "RoleArn": ROLE,
    }
    error = only_error(sagemaker, "CreateAutoMLJobV2", params)
    assert "'autoMLProblemTypeConfig'" in error and "Exactly one member must be set, not 2" in error
    del params["AutoMLProblemTypeConfig"]["TabularJobConfig"]
    sagemaker.validate_input("CreateAutoMLJobV2", params)


def test_recursive_shapes_validate(sagemaker: ServiceShapes) -> None:
    deep = {"SubExpressions": [{"SubExpressions": [{"Operator": "Maybe"}]}]}
    error = only_error(sagemaker, "Search", {"Resource": "Endpoint", "SearchExpression": deep})
    assert "at 'searchExpression.subExpressions.1.member.subExpressions.1.member.operator'" in error


def test_sensitive_values_are_not_echoed(runtime: ServiceShapes) -> None:
    error = only_error(runtime, "InvokeEndpoint", {"EndpointName": "e", "Body": b"x", "CustomAttributes": "caf\xe9"})
    assert error == (
        "Value at 'customAttributes' failed to satisfy constraint: "
        "Member must satisfy regular expression pattern: \\p{ASCII}*"
    )


def test_blobs(runtime: ServiceShapes) -> None:
    runtime.validate_input("InvokeEndpoint", {"EndpointName": "e", "Body": "aGVsbG8="})
    error = only_error(runtime, "InvokeEndpoint", {"EndpointName": "e", "Body": "not base64!"})
    assert error.endswith("Member must be of type blob (base64-encoded string)")
    error = only_error(runtime, "InvokeEndpoint", {"EndpointName": "e", "Body": bytes(6291457)})
    assert (
        error == "Value at 'body' failed to satisfy constraint: Member must have length less than or equal to 6291456"
    )


def test_unchecked_patterns_let_moorage_accept_more() -> None:
    params = create_model()
    params["PrimaryContainer"]["ModelDataUrl"] = "file:///srv/models/iris.tar.gz"
    with pytest.raises(RequestValidationError):
        ServiceShapes("sagemaker").validate_input("CreateModel", params)
    ServiceShapes("sagemaker", unchecked_patterns={"Url"}).validate_input("CreateModel", params)


# -- Java patterns ---------------------------------------------------------------------------------------

# Unicode-category classes (\p{L}, \p{N}, ...) have no spelling in Python's `re`; such patterns are
# skipped (the value is accepted). In the inputs of the operations moorage implements only the tag
# shapes have one; a botocore update that adds another there should be looked at, not just accepted.
# Elsewhere in SageMaker's model their number grows with botocore and does not matter to us.
IMPLEMENTED = {
    "sagemaker": ["CreateModel", "CreateEndpointConfig", "CreateEndpoint", "UpdateEndpoint",
                  "UpdateEndpointWeightsAndCapacities", "CreateTransformJob", "CreateMonitoringSchedule",
                  "CreateDataQualityJobDefinition", "AddTags"],
    "sagemaker-runtime": ["InvokeEndpoint"],
    "application-autoscaling": ["RegisterScalableTarget", "PutScalingPolicy"],
    "cloudwatch": ["PutMetricData", "GetMetricStatistics", "GetMetricData", "ListMetrics", "PutMetricAlarm",
                   "DescribeAlarms", "DescribeAlarmsForMetric", "DescribeAlarmHistory", "DeleteAlarms",
                   "SetAlarmState", "EnableAlarmActions", "DisableAlarmActions"],
}
KNOWN_UNCHECKED = {"sagemaker": {"TagKey", "TagValue"}}


def _input_shape_names(service: str, operations: list[str]) -> set[str]:
    model = botocore.session.get_session().get_service_model(service)
    seen: set[str] = set()
    stack = [model.operation_model(op).input_shape for op in operations]
    while stack:
        shape = stack.pop()
        if shape is None or shape.name in seen:
            continue
        seen.add(shape.name)
        stack.extend(getattr(shape, "members", {}).values())
        stack.extend(s for s in (getattr(shape, "member", None), getattr(shape, "key", None),
                                 getattr(shape, "value", None)) if s is not None)
    return seen


@pytest.mark.parametrize("service", sorted(IMPLEMENTED))
def test_uncompilable_patterns_are_outside_the_implemented_operations(service: str) -> None:
    skipped = ServiceShapes(service).uncompilable_patterns()
    in_inputs = set(skipped) & _input_shape_names(service, IMPLEMENTED[service])
    assert in_inputs <= KNOWN_UNCHECKED.get(service, set()), sorted(in_inputs)
    for pattern in skipped.values():
        assert re.search(r"\\p\{[A-Z][a-z]?\}", pattern), pattern


def test_java_pattern_translation() -> None:
    printable = compile_java_pattern(r"\A\S[\p{Print}]*\z")
    assert printable is not None
    assert printable.fullmatch("trace-id 42") and not printable.fullmatch(" lead") and not printable.fullmatch("aé")
    xml = compile_java_pattern(r"[\u0020-\uD7FF\uE000-\uFFFD\uD800\uDC00-\uDBFF\uDFFF\r\n\t]*")
    assert xml is not None and xml.fullmatch("endpoint/😀/variant") and not xml.fullmatch("\x01")
    alnum = compile_java_pattern(r"arn:[\p{Alnum}\-]+:lambda:.*")
    assert alnum is not None and alnum.fullmatch("arn:aws-cn:lambda:x")
    # Java's \d is ASCII-only.
    digits = compile_java_pattern(r"\d+")
    assert digits is not None and not digits.fullmatch("٣")
    assert compile_java_pattern(r"[\p{L}\p{N}]+") is None


# -- output shaping --------------------------------------------------------------------------------------

CREATED = dt.datetime(2026, 11, 24, 10, 45, 10, 250000, tzinfo=dt.UTC)
MODIFIED = dt.datetime(2026, 11, 24, 11, 0, 0)  # naive: taken as UTC


def describe_endpoint_result() -> dict[str, Any]:
    return {
        "EndpointName": "iris",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:000000000000:endpoint/iris",
        "EndpointConfigName": "iris-config",
        "EndpointStatus": "InService",
        "FailureReason": None,
        "CreationTime": CREATED,
        "LastModifiedTime": MODIFIED,
        "ProductionVariants": [
            {
                "VariantName": "blue",
                "DeployedImages": [
                    {"SpecifiedImage": "sklearn:1.2", "ResolvedImage": "sklearn@sha256:abc", "ResolutionTime": CREATED}
                ],
                "CurrentWeight": 0.9,
                "DesiredWeight": 0.9,
                "CurrentInstanceCount": 2,
                "DesiredInstanceCount": 2,
                "_pool_id": 17,
            },
            {"VariantName": "green", "CurrentWeight": 0.1, "CurrentInstanceCount": 1, "internal_port": 9001},
        ],
        "store_row_id": 5,
        "_secret_token": "never leaves",
    }


def test_shape_output_drops_unknowns_and_converts(sagemaker: ServiceShapes) -> None:
    shaped = sagemaker.shape_output("DescribeEndpoint", describe_endpoint_result())
    assert shaped == {
        "EndpointName": "iris",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:000000000000:endpoint/iris",
        "EndpointConfigName": "iris-config",
        "EndpointStatus": "InService",
        "CreationTime": CREATED.timestamp(),
        "LastModifiedTime": MODIFIED.replace(tzinfo=dt.UTC).timestamp(),
        "ProductionVariants": [
            {
                "VariantName": "blue",
                "DeployedImages": [
                    {
                        "SpecifiedImage": "sklearn:1.2",
                        "ResolvedImage": "sklearn@sha256:abc",
                        "ResolutionTime": CREATED.timestamp(),
                    }
                ],
                "CurrentWeight": 0.9,
                "DesiredWeight": 0.9,
                "CurrentInstanceCount": 2,
                "DesiredInstanceCount": 2,
            },
            {"VariantName": "green", "CurrentWeight": 0.1, "CurrentInstanceCount": 1},
        ],
    }
    assert isinstance(shaped["CreationTime"], float)


def test_round_trip_through_botocore_parser(sagemaker: ServiceShapes) -> None:
    shaped = sagemaker.shape_output("DescribeEndpoint", describe_endpoint_result())
    op = sagemaker.operation("DescribeEndpoint")
    assert op is not None
    response = {"body": json.dumps(shaped).encode(), "headers": {}, "status_code": 200}
    parsed = create_parser("json").parse(response, op.output_shape)
    assert parsed["CreationTime"] == CREATED
    assert parsed["LastModifiedTime"] == MODIFIED.replace(tzinfo=dt.UTC)
    blue = parsed["ProductionVariants"][0]
    assert blue["DeployedImages"][0]["ResolutionTime"] == CREATED
    assert blue["CurrentInstanceCount"] == 2
    assert "_pool_id" not in blue


def test_list_output_of_100_items(sagemaker: ServiceShapes) -> None:
    result = {
        "Endpoints": [
            {
                "EndpointName": f"ep-{i}",
                "EndpointArn": f"arn:aws:sagemaker:us-east-1:000000000000:endpoint/ep-{i}",
                "CreationTime": CREATED,
                "LastModifiedTime": CREATED,
                "EndpointStatus": "InService",
                "row": i,
            }
            for i in range(100)
        ],
        "NextToken": None,
    }
    shaped = sagemaker.shape_output("ListEndpoints", result)
    assert list(shaped) == ["Endpoints"]
    assert len(shaped["Endpoints"]) == 100
    assert shaped["Endpoints"][42] == {
        "EndpointName": "ep-42",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:000000000000:endpoint/ep-42",
        "CreationTime": CREATED.timestamp(),
        "LastModifiedTime": CREATED.timestamp(),
        "EndpointStatus": "InService",
    }


def test_blob_and_autoscaling_outputs(runtime: ServiceShapes, autoscaling: ServiceShapes) -> None:
    shaped = runtime.shape_output("InvokeEndpoint", {"Body": b"\x00\xff", "ContentType": "x", "Latency": 3})
    assert shaped == {"Body": "AP8=", "ContentType": "x"}
    shaped = autoscaling.shape_output(
        "DescribeScalableTargets",
        {"ScalableTargets": [{"ServiceNamespace": "sagemaker", "CreationTime": CREATED, "Owner": "me"}]},
    )
    assert shaped == {"ScalableTargets": [{"ServiceNamespace": "sagemaker", "CreationTime": CREATED.timestamp()}]}


@pytest.mark.parametrize("start", ["SearchExpression", "SearchExpressionList"])
def test_recursive_output_shapes_compile(start: str) -> None:
    # No operation returns SearchExpression, but the compiler must neither loop on the cycle nor
    # let the inner levels pass through unfiltered, wherever compilation enters it.
    shapes = ServiceShapes("sagemaker")
    convert = shapes._converter(shapes._node(shapes.service_model.shape_for(start)))
    assert convert is not None
    value = {"SubExpressions": [{"SubExpressions": [{"Operator": "Or", "x": 1}], "z": 3}], "y": 2}
    expected = {"SubExpressions": [{"SubExpressions": [{"Operator": "Or"}]}]}
    if start == "SearchExpressionList":
        assert convert([value, None]) == [expected]
    else:
        assert convert(value) == expected


def test_operation_without_output(sagemaker: ServiceShapes) -> None:
    assert sagemaker.shape_output("DeleteEndpoint", {"anything": 1}) == {}
