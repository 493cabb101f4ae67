"""CloudWatch through boto3, in each protocol it may speak, against a real `moorage serve`.

Every test runs three times: with boto3's own ``cloudwatch`` client (AWS JSON 1.0 in this botocore),
with a client built from the same service model listing only ``query`` (as older botocore releases
speak it), and with one listing only ``smithy-rpc-v2-cbor`` (the model's first choice, which other
SDKs speak), so botocore's own serializers and parsers are the other side. One server with
1-second metrics periods and one endpoint with traffic serve the module: business metrics, alarms
on the endpoint's ``AWS/SageMaker`` metrics written as for SageMaker, GetMetricData with metric
math on its ``ModelLatency``, paging, and the error codes of bad input.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import botocore.session
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError
from botocore.loaders import Loader

from e2e_support import (
    REGION,
    Deployer,
    MoorageServer,
    err_code,
    err_message,
    err_status,
    http_request,
    new_name,
    pack_model,
    wait_until,
)

INFERENCE_PY = """
import json
import time


def model_fn(model_dir):
    return None


def input_fn(body, content_type):
    return json.loads(body)


def predict_fn(data, model):
    time.sleep(data.get("sleep", 0))
    return {"ok": True}


def output_fn(prediction, accept):
    return json.dumps(prediction)
"""

CALLS = 12
SLEEP_S = 0.002
SAGEMAKER = "AWS/SageMaker"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MoorageServer]:
    """This module's own server (named `server` so a failure shows its log): 1-second metrics periods."""
    srv = MoorageServer(tmp_path_factory.mktemp("cloudwatch-home"), env={"MOORAGE_METRICS_PERIOD": "1"})
    srv.start(timeout=90)
    try:
        yield srv
    finally:
        srv.stop()


JSON, QUERY, CBOR = "json", "query", "smithy-rpc-v2-cbor"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Data folders whose CloudWatch model lists only one protocol (botocore searches them first)."""
    root = tmp_path_factory.mktemp("one-protocol-models")
    for protocol in (QUERY, CBOR):
        description = copy.deepcopy(Loader().load_service_model("cloudwatch", "service-2"))
        description["metadata"]["protocol"] = protocol
        description["metadata"]["protocols"] = [protocol]
        folder = root / protocol / "cloudwatch" / description["metadata"]["apiVersion"]
        folder.mkdir(parents=True)
        (folder / "service-2.json").write_text(json.dumps(description))
    return root


def cloudwatch_client(server: MoorageServer, protocol: str, models: Path, *, validate: bool = True,
                      secret: str | None = None) -> Any:
    core = botocore.session.Session()
    if protocol != JSON:
        core.get_component("data_loader").search_paths.insert(0, str(models / protocol))
    config = botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=5,
                                    read_timeout=60, parameter_validation=validate)
    client = boto3.session.Session(botocore_session=core).client(
        "cloudwatch", endpoint_url=server.url, region_name=REGION, aws_access_key_id=server.access_key_id,
        aws_secret_access_key=secret or server.secret_access_key, config=config)
    assert client.meta.service_model.resolved_protocol == protocol
    return client


@pytest.fixture(scope="module", params=[JSON, QUERY, CBOR])
def protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def cw(server: MoorageServer, protocol: str, models: Path) -> Any:
    return cloudwatch_client(server, protocol, models)


@pytest.fixture(scope="module")
def endpoint(server: MoorageServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    deployer = Deployer(server)
    tarball = pack_model(tmp_path_factory.mktemp("cloudwatch-model"), None, inference_py=INFERENCE_PY)
    try:
        name = deployer.deploy("cloudwatch", tarball.as_uri())
        runtime = server.rt()
        for _ in range(CALLS):
            runtime.invoke_endpoint(EndpointName=name, Body=json.dumps({"sleep": SLEEP_S}),
                                    ContentType="application/json")
        yield name
    finally:
        deployer.cleanup()


def variant(endpoint: str) -> list[dict[str, str]]:
    return [{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"}]


def minute(offset: int = 0, base: dt.datetime | None = None) -> dt.datetime:
    """The start of the whole minute ``offset`` minutes from ``base``'s (default: now; UTC).

    A test that compares timestamps takes one ``base`` first: the clock may pass a minute meanwhile.
    """
    now = (base or dt.datetime.now(dt.UTC)).replace(second=0, microsecond=0)
    return now + dt.timedelta(minutes=offset)


def test_each_client_speaks_its_protocol(cw: Any, protocol: str) -> None:
    sent: list[str] = []

    def capture(request: Any, **_: Any) -> None:
        value = request.headers["Content-Type"]
        sent.append(value.decode() if isinstance(value, bytes) else value)

    cw.meta.events.register("before-send.cloudwatch.ListMetrics", capture)
    try:
        reply = cw.list_metrics(Namespace="Nothing/Here")
    finally:
        cw.meta.events.unregister("before-send.cloudwatch.ListMetrics", capture)
    assert reply["Metrics"] == []
    answered = reply["ResponseMetadata"]["HTTPHeaders"]["content-type"]
    wire = {JSON: ("application/x-amz-json-1.0", "application/x-amz-json-1.0"),
            QUERY: ("application/x-www-form-urlencoded", "text/xml"), CBOR: ("application/cbor", "application/cbor")}
    assert sent[0].startswith(wire[protocol][0]) and answered == wire[protocol][1]


def test_business_metrics_statistics_and_listing(cw: Any, protocol: str) -> None:
    namespace = f"Shop/{new_name(protocol)}"
    north, south = [{"Name": "Store", "Value": "north"}], [{"Name": "Store", "Value": "south"}]
    base = dt.datetime.now(dt.UTC)
    when = minute(-2, base) + dt.timedelta(seconds=15)
    cw.put_metric_data(Namespace=namespace, MetricData=[
        {"MetricName": "Coupons", "Dimensions": north, "Timestamp": when, "Values": [1, 2, 3], "Counts": [1, 1, 2],
         "Unit": "Count"},
        {"MetricName": "Coupons", "Dimensions": north, "Timestamp": when, "Value": 5, "Unit": "Count"},
        {"MetricName": "Basket", "Dimensions": north, "Timestamp": when,
         "StatisticValues": {"SampleCount": 4, "Sum": 100, "Minimum": 10, "Maximum": 40}},
        {"MetricName": "Coupons", "Dimensions": south, "Timestamp": when, "Value": 7, "Unit": "Count"},
    ])
    window = {"StartTime": minute(-10, base), "EndTime": minute(2, base), "Period": 60}
    stats = cw.get_metric_statistics(Namespace=namespace, MetricName="Coupons", Dimensions=north, **window,
                                     Statistics=["Sum", "SampleCount", "Minimum", "Maximum", "Average"])
    assert stats["Label"] == "Coupons"
    [point] = stats["Datapoints"]
    assert point["Timestamp"] == minute(-2, base)
    assert (point["Sum"], point["SampleCount"], point["Minimum"], point["Maximum"]) == (14, 5, 1, 5)
    assert point["Average"] == pytest.approx(2.8) and point["Unit"] == "Count"
    [extended] = cw.get_metric_statistics(Namespace=namespace, MetricName="Coupons", Dimensions=north, **window,
                                          ExtendedStatistics=["p50", "p100"])["Datapoints"]
    assert 1 <= extended["ExtendedStatistics"]["p50"] <= 5 and extended["ExtendedStatistics"]["p100"] == 5
    [basket] = cw.get_metric_statistics(Namespace=namespace, MetricName="Basket", Dimensions=north, **window,
                                        Statistics=["Average", "Maximum"])["Datapoints"]
    assert basket["Average"] == 25 and basket["Maximum"] == 40
    # Dimensions match exactly, as in CloudWatch: no dimensions is another series.
    assert cw.get_metric_statistics(Namespace=namespace, MetricName="Coupons", **window,
                                    Statistics=["Sum"])["Datapoints"] == []

    def listed(**filters: Any) -> list[tuple[str, str]]:
        metrics = cw.list_metrics(Namespace=namespace, **filters)["Metrics"]
        return sorted((m["MetricName"], m["Dimensions"][0]["Value"]) for m in metrics)

    assert listed() == [("Basket", "north"), ("Coupons", "north"), ("Coupons", "south")]
    assert listed(MetricName="Coupons", Dimensions=south) == [("Coupons", "south")]
    assert listed(Dimensions=[{"Name": "Store"}], RecentlyActive="PT3H") == listed()
    assert listed(Dimensions=[{"Name": "Region"}]) == []
    pages = cw.get_paginator("list_metrics").paginate(Namespace=namespace)
    assert sum(len(page["Metrics"]) for page in pages) == 3


def test_get_metric_data_on_the_endpoint_model_latency(cw: Any, endpoint: str) -> None:
    dims = variant(endpoint)
    window = {"StartTime": minute(-10), "EndTime": minute(2)}

    def calls() -> float:
        points = cw.get_metric_statistics(Namespace=SAGEMAKER, MetricName="Invocations", Dimensions=dims,
                                          Period=60, Statistics=["Sum"], **window)["Datapoints"]
        return sum(p["Sum"] for p in points)

    wait_until(lambda: calls() == CALLS, timeout=30, what="the endpoint's Invocations in the store")

    def stat(query_id: str, metric: str, statistic: str, **more: Any) -> dict[str, Any]:
        return {"Id": query_id, "MetricStat": {"Metric": {"Namespace": SAGEMAKER, "MetricName": metric,
                                                          "Dimensions": dims}, "Period": 60, "Stat": statistic},
                **more}

    reply = cw.get_metric_data(ScanBy="TimestampAscending", **window, MetricDataQueries=[
        stat("p50", "ModelLatency", "p50"),
        stat("avg", "ModelLatency", "Average", Label="average latency"),
        stat("calls", "Invocations", "Sum", ReturnData=False),
        {"Id": "avgMs", "Expression": "avg / 1000", "Label": "Average latency (ms)"},
        {"Id": "total", "Expression": "SUM(calls)"},
        {"Id": "spread", "Expression": "MAX(METRICS(\"avg\")) - p50"},
    ])
    results = {r["Id"]: r for r in reply["MetricDataResults"]}
    assert list(results) == ["p50", "avg", "avgMs", "total", "spread"]  # request order, ReturnData honoured
    assert "NextToken" not in reply and all(r["StatusCode"] == "Complete" for r in results.values())
    p50, avg, avg_ms = results["p50"], results["avg"], results["avgMs"]
    assert (p50["Label"], avg["Label"], avg_ms["Label"], results["total"]["Label"]) == (
        "ModelLatency", "average latency", "Average latency (ms)", "total")
    assert p50["Timestamps"] == sorted(p50["Timestamps"]) and p50["Timestamps"]
    # Every request slept in the model, so its instance hop (microseconds) took at least that long.
    assert all(v >= SLEEP_S * 1e6 for v in p50["Values"])
    assert avg_ms["Timestamps"] == avg["Timestamps"]
    assert avg_ms["Values"] == pytest.approx([v / 1000 for v in avg["Values"]])
    assert results["total"]["Values"] == [CALLS] * len(results["total"]["Values"])
    assert results["spread"]["Values"] == pytest.approx([a - p for a, p in zip(avg["Values"], p50["Values"],
                                                                               strict=True)])
    # The same numbers as GetMetricStatistics gives.
    averages = cw.get_metric_statistics(Namespace=SAGEMAKER, MetricName="ModelLatency", Dimensions=dims, Period=60,
                                        Statistics=["Average", "Minimum", "Maximum"], **window)["Datapoints"]
    by_time = {p["Timestamp"]: p for p in averages}
    for when, value, median in zip(avg["Timestamps"], avg["Values"], p50["Values"], strict=True):
        assert by_time[when]["Average"] == pytest.approx(value)
        assert by_time[when]["Minimum"] <= median <= by_time[when]["Maximum"]


def test_get_metric_data_pages(cw: Any, protocol: str) -> None:
    namespace = f"Shop/{new_name(protocol)}"
    base = dt.datetime.now(dt.UTC)
    cw.put_metric_data(Namespace=namespace, MetricData=[
        {"MetricName": "Orders", "Timestamp": minute(-m, base) + dt.timedelta(seconds=1), "Value": float(m)}
        for m in (3, 2, 1)])
    query = {"Id": "orders", "MetricStat": {"Metric": {"Namespace": namespace, "MetricName": "Orders"},
                                            "Period": 60, "Stat": "Sum"}}
    window = {"StartTime": minute(-10, base), "EndTime": minute(2, base), "MetricDataQueries": [query]}
    first = cw.get_metric_data(MaxDatapoints=2, **window)
    [result] = first["MetricDataResults"]
    assert result["Values"] == [1, 2] and result["Timestamps"] == [minute(-1, base), minute(-2, base)]  # newest
    assert result["StatusCode"] == "PartialData" and first["NextToken"]
    second = cw.get_metric_data(MaxDatapoints=2, NextToken=first["NextToken"], **window)
    [rest] = second["MetricDataResults"]
    assert rest["Values"] == [3] and rest["StatusCode"] == "Complete" and "NextToken" not in second
    paged = cw.get_paginator("get_metric_data").paginate(PaginationConfig={"PageSize": 1}, **window)
    assert [v for page in paged for r in page["MetricDataResults"] for v in r["Values"]] == [1, 2, 3]


def test_alarms_on_sagemaker_metrics(cw: Any, protocol: str, endpoint: str) -> None:
    prefix = new_name(f"cw-{protocol}")
    names = [f"{prefix}-{i}" for i in range(3)]
    dims = variant(endpoint)
    pager = "arn:aws:sns:us-east-1:123456789012:on-call"
    for i, name in enumerate(names):
        # As written for SageMaker; a threshold no test traffic reaches, and missing data changes nothing.
        cw.put_metric_alarm(AlarmName=name, AlarmDescription="5XX from the model", ActionsEnabled=True,
                            AlarmActions=[pager], Namespace=SAGEMAKER, MetricName="Invocation5XXErrors",
                            Dimensions=dims, Statistic="Sum", Period=60, EvaluationPeriods=1,
                            Threshold=1e9 + i, ComparisonOperator="GreaterThanThreshold", TreatMissingData="ignore")
    first = cw.describe_alarms(AlarmNamePrefix=prefix, MaxRecords=2)
    assert [a["AlarmName"] for a in first["MetricAlarms"]] == names[:2] and first["NextToken"]
    assert first["CompositeAlarms"] == []
    second = cw.describe_alarms(AlarmNamePrefix=prefix, MaxRecords=2, NextToken=first["NextToken"])
    assert [a["AlarmName"] for a in second["MetricAlarms"]] == names[2:] and "NextToken" not in second
    paged = cw.get_paginator("describe_alarms").paginate(AlarmNamePrefix=prefix, PaginationConfig={"PageSize": 1})
    assert [a["AlarmName"] for page in paged for a in page["MetricAlarms"]] == names
    alarm = first["MetricAlarms"][0]
    assert alarm["AlarmArn"].startswith(f"arn:aws:cloudwatch:{REGION}:")
    assert alarm["AlarmArn"].endswith(f":alarm:{names[0]}")
    assert (alarm["Namespace"], alarm["MetricName"], alarm["Statistic"], alarm["Period"]) == (
        SAGEMAKER, "Invocation5XXErrors", "Sum", 60)
    assert alarm["Dimensions"] == dims and alarm["Threshold"] == 1e9 and alarm["AlarmActions"] == [pager]
    assert alarm["ActionsEnabled"] is True and alarm["TreatMissingData"] == "ignore"
    assert alarm["StateValue"] in ("INSUFFICIENT_DATA", "OK")
    assert isinstance(alarm["AlarmConfigurationUpdatedTimestamp"], dt.datetime)

    def for_metric(**more: Any) -> list[str]:
        found = cw.describe_alarms_for_metric(Namespace=SAGEMAKER, MetricName="Invocation5XXErrors", **more)
        return sorted(a["AlarmName"] for a in found["MetricAlarms"] if a["AlarmName"].startswith(prefix))

    assert for_metric(Dimensions=dims) == names == for_metric(Statistic="Sum", Period=60)
    assert for_metric(Statistic="Average") == [] == for_metric(Dimensions=dims[:1])

    cw.set_alarm_state(AlarmName=names[0], StateValue="ALARM", StateReason="testing the pager",
                       StateReasonData=json.dumps({"by": "e2e"}))
    updates = cw.describe_alarm_history(AlarmName=names[0], HistoryItemType="StateUpdate")["AlarmHistoryItems"]
    [to_alarm] = [h for h in updates if h["HistorySummary"].endswith("to ALARM")]
    data = json.loads(to_alarm["HistoryData"])
    assert data["newState"]["stateReason"] == "testing the pager"
    assert data["newState"]["stateReasonData"] == {"by": "e2e"}
    assert (to_alarm["AlarmName"], to_alarm["AlarmType"]) == (names[0], "MetricAlarm")
    assert isinstance(to_alarm["Timestamp"], dt.datetime)
    oldest = cw.describe_alarm_history(AlarmName=names[0], ScanBy="TimestampAscending", MaxRecords=1)
    assert oldest["AlarmHistoryItems"][0]["HistoryItemType"] == "ConfigurationUpdate" and oldest["NextToken"]
    assert oldest["AlarmHistoryItems"][0]["HistorySummary"] == f'Alarm "{names[0]}" created'

    cw.disable_alarm_actions(AlarmNames=names[:2])
    enabled = {a["AlarmName"]: a["ActionsEnabled"] for a in cw.describe_alarms(AlarmNames=names)["MetricAlarms"]}
    assert enabled == {names[0]: False, names[1]: False, names[2]: True}
    cw.enable_alarm_actions(AlarmNames=names[:1])
    assert cw.describe_alarms(AlarmNames=names[:1])["MetricAlarms"][0]["ActionsEnabled"] is True

    with pytest.raises(ClientError) as missing:
        cw.delete_alarms(AlarmNames=[names[0], f"{prefix}-missing"])
    assert isinstance(missing.value, cw.exceptions.ResourceNotFound)
    assert err_code(missing.value) == "ResourceNotFound" and err_status(missing.value) == 404
    assert f"{prefix}-missing" in err_message(missing.value)
    assert len(cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"]) == 3  # none deleted
    cw.delete_alarms(AlarmNames=names)
    assert cw.describe_alarms(AlarmNamePrefix=prefix)["MetricAlarms"] == []
    # The history of an alarm that is not there is empty, not an error (as in CloudWatch).
    assert cw.describe_alarm_history(AlarmName=names[0])["AlarmHistoryItems"] == []


def expect(call: Any, code: str, *words: str, status: int = 400) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call()
    assert err_code(caught.value) == code, caught.value.response
    assert err_status(caught.value) == status
    for word in words:
        assert word in err_message(caught.value), err_message(caught.value)
    return caught.value


def test_bad_input_gets_cloudwatch_error_codes(cw: Any, server: MoorageServer, protocol: str,
                                               models: Path) -> None:
    alarm = {"AlarmName": new_name("bad"), "Namespace": "Shop", "MetricName": "Orders", "Statistic": "Sum",
             "Period": 60, "EvaluationPeriods": 1, "Threshold": 1, "ComparisonOperator": "GreaterThanThreshold"}
    if protocol != CBOR:  # botocore's CBOR serializer cannot put text where the model says integer
        loose = cloudwatch_client(server, protocol, models, validate=False)
        expect(lambda: loose.put_metric_alarm(**{**alarm, "Period": "sixty"}), "ValidationError",
               "'sixty' at 'period'", "Member must be of type integer")
        expect(lambda: loose.put_metric_alarm(**{**alarm, "DatapointsToAlarm": "two", "EvaluationPeriods": 0}),
               "ValidationError", "2 validation errors", "at 'datapointsToAlarm'", "at 'evaluationPeriods'")
        expect(lambda: loose.put_metric_data(Namespace="Shop", MetricData=[
            {"MetricName": "Orders", "Value": 1, "StorageResolution": "high"}]),
            "ValidationError", "'high' at 'metricData.1.member.storageResolution'")
    expect(lambda: cw.put_metric_alarm(**{**alarm, "ComparisonOperator": "Above"}), "ValidationError",
           "'Above' at 'comparisonOperator'", "enum value set")
    expect(lambda: cw.put_metric_alarm(**{**alarm, "ExtendedStatistic": "p99"}), "InvalidParameterCombination",
           "Statistic and ExtendedStatistic")
    expect(lambda: cw.put_metric_alarm(AlarmName=alarm["AlarmName"]), "MissingParameter", "Namespace")

    error = expect(lambda: cw.put_metric_data(Namespace="AWS/SageMaker", MetricData=[
        {"MetricName": "Invocations", "Value": 1}]), "InvalidParameterValue", "AWS/SageMaker", "Namespace")
    assert isinstance(error, cw.exceptions.InvalidParameterValueException)
    error = expect(lambda: cw.put_metric_data(Namespace="Shop", MetricData=[
        {"MetricName": "Orders", "Value": 1, "Values": [1, 2]}]), "InvalidParameterCombination",
        "MetricData.member.1.Value", "MetricData.member.1.Values")
    assert isinstance(error, cw.exceptions.InvalidParameterCombinationException)
    expect(lambda: cw.put_metric_data(Namespace="Shop", MetricData=[
        {"MetricName": "Orders", "Value": 1}, {"MetricName": "Orders", "Values": [1, 2], "Counts": [1]}]),
        "InvalidParameterValue", "MetricData.member.2.Values", "MetricData.member.2.Counts")
    expect(lambda: cw.put_metric_data(Namespace="Shop", MetricData=[
        {"MetricName": "Orders", "Value": 1, "Timestamp": dt.datetime.now(dt.UTC) - dt.timedelta(days=30)}]),
        "InvalidParameterValue", "MetricData.member.1.Timestamp")

    window = {"Namespace": "Shop", "MetricName": "Orders", "StartTime": minute(-120), "EndTime": minute(0)}
    error = expect(lambda: cw.get_metric_statistics(Period=60, **window), "MissingParameter", "Statistics")
    assert isinstance(error, cw.exceptions.MissingRequiredParameterException)
    expect(lambda: cw.get_metric_statistics(Period=1, Statistics=["Sum"], **window), "InvalidParameterCombination",
           "7,200 datapoints", "limit of 1,440")
    expect(lambda: cw.get_metric_statistics(Period=60, ExtendedStatistics=["tm99"], **window),
           "InvalidParameterValue", "tm99", "ExtendedStatistics")
    expect(lambda: cw.get_metric_statistics(Period=60, Statistics=["Median"], **window), "ValidationError",
           "'statistics.1.member'")
    expect(lambda: cw.get_metric_data(StartTime=minute(-5), EndTime=minute(0), MetricDataQueries=[
        {"Id": "e1", "Expression": "SEARCH('{AWS/SageMaker}', 'Average', 60)"}]), "InvalidParameterValue",
        "MetricDataQueries.member.1.Expression", "SEARCH() is not supported")
    expect(lambda: cw.get_metric_data(StartTime=minute(-5), EndTime=minute(0), MetricDataQueries=[
        {"Id": "e1", "Expression": "m9 * 2"}]), "InvalidParameterValue", "m9", "MetricDataQueries.member.1")
    expect(lambda: cw.get_metric_data(StartTime=minute(-5), EndTime=minute(0), MetricDataQueries=[
        {"Id": "a", "Expression": "b + 1"}, {"Id": "b", "Expression": "a + 1"}]), "InvalidParameterValue",
        "circular")

    error = expect(lambda: cw.describe_alarms(NextToken="not-a-token"), "InvalidNextToken")
    assert isinstance(error, cw.exceptions.InvalidNextToken)
    expect(lambda: cw.set_alarm_state(AlarmName=new_name("nothing"), StateValue="OK", StateReason="x"),
           "ResourceNotFound", status=404)
    cw.put_metric_alarm(**alarm)
    try:
        error = expect(lambda: cw.set_alarm_state(AlarmName=alarm["AlarmName"], StateValue="OK", StateReason="x",
                                                  StateReasonData="{not json"), "InvalidFormat", "StateReasonData")
        assert isinstance(error, cw.exceptions.InvalidFormatFault)
    finally:
        cw.delete_alarms(AlarmNames=[alarm["AlarmName"]])
    expect(lambda: cw.put_dashboard(DashboardName="d", DashboardBody="{}"), "NotImplemented", "PutDashboard",
           status=501)


def test_requests_must_be_signed(server: MoorageServer, protocol: str, models: Path) -> None:
    forged = cloudwatch_client(server, protocol, models, secret="not-the-secret")
    expect(lambda: forged.list_metrics(), "InvalidSignatureException", status=403)
    if protocol == QUERY:
        status, headers, body = http_request("POST", server.url + "/", body=b"Action=ListMetrics&Version=2010-08-01",
                                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert status == 403 and headers["content-type"] == "text/xml" and body.startswith(b"<ErrorResponse")


def test_unknown_actions_and_versions_are_refused(server: MoorageServer) -> None:
    def send(form: str) -> tuple[int, bytes]:
        # Signed for CloudWatch's signing name: the scope must name the service the form asks for.
        request = AWSRequest(method="POST", url=server.url + "/", data=form.encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        SigV4Auth(Credentials(server.access_key_id, server.secret_access_key), "monitoring", REGION).add_auth(request)
        status, _, body = http_request("POST", server.url + "/", body=form.encode(), headers=dict(request.headers))
        return status, body

    status, body = send("Action=LaunchRockets&Version=2010-08-01")
    assert status == 400 and b"<Code>InvalidAction</Code>" in body
    status, body = send("Action=ListMetrics&Version=1999-01-01")
    assert status == 400 and b"<Code>NoSuchVersion</Code>" in body
    status, body = send("Version=2010-08-01")
    assert status == 400 and b"<Code>MissingAction</Code>" in body
    status, body = send("Action=ListMetrics&Version=2010-08-01")
    assert status == 200 and body.startswith(b"<ListMetricsResponse")


def test_an_endpoint_publishes_at_its_metric_publish_frequency(server: MoorageServer,
                                                               tmp_path_factory: pytest.TempPathFactory) -> None:
    """MetricsConfig.MetricPublishFrequencyInSeconds: on a server that publishes every second, an
    endpoint at 10 s has its datapoints only on 10-second boundaries, every request counted."""
    deployer = Deployer(server)
    tarball = pack_model(tmp_path_factory.mktemp("frequency-model"), None, inference_py=INFERENCE_PY)
    sm, name = server.sm(), new_name("every-10s")
    try:
        deployer.model(name, tarball.as_uri())
        config = {"EndpointConfigName": name, "ProductionVariants": [
            {"VariantName": "AllTraffic", "ModelName": name, "InitialInstanceCount": 1,
             "InstanceType": "ml.m5.large"}]}
        for bad in (0, 15, 600):
            with pytest.raises(ClientError) as exc:
                sm.create_endpoint_config(**config, MetricsConfig={"MetricPublishFrequencyInSeconds": bad})
            assert err_code(exc.value) == "ValidationException"
            assert "MetricPublishFrequencyInSeconds" in err_message(exc.value)
        sm.create_endpoint_config(**config, MetricsConfig={"MetricPublishFrequencyInSeconds": 10})
        deployer.configs.append(name)
        assert sm.describe_endpoint_config(EndpointConfigName=name)["MetricsConfig"] == {
            "MetricPublishFrequencyInSeconds": 10}
        deployer.endpoint(name, name)
        deployer.wait_in_service(name)
        runtime, calls = server.rt(), 9
        for _ in range(calls):  # spread over about 3 s: several seconds, had it published every second
            runtime.invoke_endpoint(EndpointName=name, Body=json.dumps({"sleep": 0.3}), ContentType="application/json")
        cw = server.client("cloudwatch")

        def points() -> list[dict[str, Any]]:
            return cw.get_metric_statistics(Namespace=SAGEMAKER, MetricName="Invocations", Dimensions=variant(name),
                                            Period=1, Statistics=["Sum"], StartTime=minute(-10),
                                            EndTime=minute(2))["Datapoints"]

        wait_until(lambda: sum(p["Sum"] for p in points()) == calls, timeout=40,
                   what="the endpoint's Invocations, published every 10 s")
        assert all(p["Timestamp"].timestamp() % 10 == 0 for p in points()), points()
    finally:
        deployer.cleanup()
