"""Asynchronous inference through boto3 (sagemaker-runtime's invoke_endpoint_async): answers written to
the output location, failures (a failing model, a missing input) to the failure location, SageMaker's
refusals, a queue that survives a restart, the backlog metrics, and scaling to zero and back on them.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import botocore.config
import pytest
from botocore.exceptions import ClientError

from e2e_support import (
    REGION,
    Deployer,
    MoorageServer,
    err_code,
    err_message,
    new_name,
    pack_model,
    variant,
    wait_until,
)

pytestmark = pytest.mark.e2e

# Echoes what it was sent; fails on "boom"; waits (bounded) for the file a "gate:" body names.
MODEL = '''
import json, os, time


def model_fn(model_dir, context=None):
    return None


def transform_fn(model, body, content_type, accept):
    text = body.decode() if isinstance(body, bytes) else body
    if text.startswith("gate:"):
        deadline = time.time() + 120
        while not os.path.exists(text[5:].strip()) and time.time() < deadline:
            time.sleep(0.02)
    if "boom" in text:
        raise RuntimeError("the model fails on boom")
    return json.dumps({"echo": text, "content_type": content_type, "accept": accept}), "application/json"
'''
TOPIC = "arn:aws:sns:us-east-1:000000000000:async-"


def _async_endpoint(dep: Deployer, tmp_path: Path, *, per_instance: int = 2, failure_path: bool = True,
                    output_path: str | None = None, failure_at: str | None = None) -> str:
    model = dep.model(new_name("async"), pack_model(tmp_path / "model", None, inference_py=MODEL).as_uri())
    output: dict[str, Any] = {"S3OutputPath": output_path or (tmp_path / "out").as_uri(),
                              "NotificationConfig": {"SuccessTopic": TOPIC + "success", "ErrorTopic": TOPIC + "error"}}
    if failure_path:
        output["S3FailurePath"] = failure_at or (tmp_path / "fail").as_uri()
    config = new_name("async")
    dep.sm.create_endpoint_config(
        EndpointConfigName=config, ProductionVariants=[variant("AllTraffic", model)],
        AsyncInferenceConfig={"OutputConfig": output,
                              "ClientConfig": {"MaxConcurrentInvocationsPerInstance": per_instance}})
    dep.configs.append(config)
    endpoint = dep.endpoint(new_name("async"), config)
    desc = dep.wait_in_service(endpoint)
    assert desc["AsyncInferenceConfig"]["OutputConfig"]["S3OutputPath"] == output["S3OutputPath"]
    return endpoint


def _put(tmp_path: Path, name: str, content: str) -> str:
    path = tmp_path / "in" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    return path.as_uri()


def _read(location: str, timeout: float = 60) -> str:
    path = Path(location.removeprefix("file://"))
    wait_until(path.exists, timeout, what=f"{location} to be written")
    return path.read_text()


def test_answers_and_failures_are_written_where_the_response_says(server: MoorageServer, deployer: Deployer,
                                                                  tmp_path: Path) -> None:
    endpoint = _async_endpoint(deployer, tmp_path)
    rt = server.rt()

    reply = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, "a.csv", "hello,1"),
                                     ContentType="text/csv", Accept="application/json", InferenceId="request-a")
    assert reply["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert reply["InferenceId"] == "request-a"
    assert reply["OutputLocation"] == (tmp_path / "out").as_uri() + "/request-a.out"
    assert reply["FailureLocation"] == (tmp_path / "fail").as_uri() + "/request-a-error.out"
    assert json.loads(_read(reply["OutputLocation"])) == {"echo": "hello,1", "content_type": "text/csv",
                                                          "accept": "application/json"}
    assert not Path(reply["FailureLocation"].removeprefix("file://")).exists()

    # No InferenceId: one is made up, and names the output.
    reply = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, "b.csv", "second"),
                                     ContentType="text/csv")
    assert reply["InferenceId"] and reply["OutputLocation"].endswith(f"/{reply['InferenceId']}.out")
    assert json.loads(_read(reply["OutputLocation"]))["echo"] == "second"

    # A model that fails: its error at the failure location, nothing at the output location.
    failed = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, "c.csv", "boom"),
                                      ContentType="text/csv", InferenceId="request-c")
    text = _read(failed["FailureLocation"])
    assert "Received server error (500)" in text and "boom" in text
    assert not Path(failed["OutputLocation"].removeprefix("file://")).exists()

    # An input that does not exist fails that request, visibly, and nothing else.
    missing = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=(tmp_path / "in" / "nope.csv").as_uri(),
                                       InferenceId="request-d")
    assert missing["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert "does not exist" in _read(missing["FailureLocation"])
    assert server.healthz() == 200

    # A path extension and a file name of the caller's choosing.
    named = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, "e.csv", "named"),
                                     S3OutputPathExtension="batch-1", Filename="answer.json")
    assert named["OutputLocation"] == (tmp_path / "out").as_uri() + "/batch-1/answer.json"
    assert json.loads(_read(named["OutputLocation"]))["echo"] == "named"

    # Notifications are recorded and logged, not sent (no SNS here).
    wait_until(lambda: f"SNS topic {TOPIC}error would be notified" in server.log_path.read_text(), 30,
               what="the error notification to be logged")
    assert f"SNS topic {TOPIC}success would be notified" in server.log_path.read_text()


def test_refusals_as_sagemaker_answers_them(server: MoorageServer, deployer: Deployer, tmp_path: Path,
                                            ) -> None:
    endpoint = _async_endpoint(deployer, tmp_path, failure_path=False)
    rt = server.rt(validate=False)  # botocore would refuse some of these before sending them
    location = _put(tmp_path, "x.csv", "x")

    def refused(**kw: Any) -> ClientError:
        with pytest.raises(ClientError) as info:
            rt.invoke_endpoint_async(**kw)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        return info.value

    exc = refused(EndpointName=endpoint, InputLocation=location, RequestTTLSeconds=10)
    assert err_code(exc) == "ValidationError" and "requestTTLSeconds" in err_message(exc)
    exc = refused(EndpointName=endpoint, InputLocation=location, InvocationTimeoutSeconds=3601)
    assert "invocationTimeoutSeconds" in err_message(exc)
    exc = refused(EndpointName=endpoint)
    assert err_code(exc) == "ValidationError" and "InputLocation" in err_message(exc)
    exc = refused(EndpointName=endpoint, InputLocation=location, Body=b"both")
    assert "mutually exclusive" in err_message(exc)
    exc = refused(EndpointName=new_name("missing"), InputLocation=location)
    assert err_code(exc) == "ValidationError" and "not found" in err_message(exc)
    exc = refused(EndpointName=endpoint, InputLocation=location, Filename="../escape")
    assert "filename" in err_message(exc)

    # An endpoint whose config has no AsyncInferenceConfig takes no asynchronous request.
    sync_model = deployer.model(new_name("sync"), pack_model(tmp_path / "sync", None, inference_py=MODEL).as_uri())
    deployer.config(sync_name := new_name("sync"), [variant("AllTraffic", sync_model)])
    deployer.endpoint(sync_name, sync_name)
    deployer.wait_in_service(sync_name)
    exc = refused(EndpointName=sync_name, InputLocation=location)
    assert err_code(exc) == "ValidationError" and "AsyncInferenceConfig" in err_message(exc)

    # An inline body (no object) is a request too; without S3FailurePath no FailureLocation is answered.
    reply = server.rt().invoke_endpoint_async(EndpointName=endpoint, Body=b"inline", ContentType="text/plain")
    assert "FailureLocation" not in reply
    assert json.loads(_read(reply["OutputLocation"]))["echo"] == "inline"


def _metric(cloudwatch: Any, endpoint: str, name: str, since: dt.datetime) -> list[float]:
    points = cloudwatch.get_metric_statistics(
        Namespace="AWS/SageMaker", MetricName=name, Statistics=["Maximum"], Period=1,
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}], StartTime=since,
        EndTime=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=1))["Datapoints"]
    return [p["Maximum"] for p in sorted(points, key=lambda p: p["Timestamp"])]


def test_a_queue_survives_a_restart_and_its_backlog_is_a_metric(fresh_server: Callable[..., MoorageServer],
                                                                 tmp_path: Path) -> None:
    srv = fresh_server(env={"MOORAGE_METRICS_PERIOD": "1"})
    dep = Deployer(srv)
    endpoint = _async_endpoint(dep, tmp_path, per_instance=1)
    rt, cloudwatch = srv.rt(), srv.client("cloudwatch")
    since = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    gate = tmp_path / "gate"
    first = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, "1.csv", f"gate:{gate}"))
    queued = [rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, f"q{i}.csv", f"q{i}"))
              for i in range(3)]
    # One instance, one request at a time: the first blocks, three wait; all four are the backlog.
    wait_until(lambda: max(_metric(cloudwatch, endpoint, "ApproximateBacklogSize", since), default=0) == 4, 30,
               what="ApproximateBacklogSize 4")
    assert max(_metric(cloudwatch, endpoint, "ApproximateAgeOfOldestRequest", since)) >= 0
    assert max(_metric(cloudwatch, endpoint, "HasBacklogWithoutCapacity", since)) == 0
    assert not any(Path(r["OutputLocation"].removeprefix("file://")).exists() for r in [first, *queued])

    srv.stop()
    gate.touch()
    srv.start(timeout=90)
    # Everything accepted before the stop is answered after it, the interrupted request included.
    assert json.loads(_read(first["OutputLocation"], 90))["echo"] == f"gate:{gate}"
    for i, reply in enumerate(queued):
        assert json.loads(_read(reply["OutputLocation"]))["echo"] == f"q{i}"
    wait_until(lambda: _metric(cloudwatch, endpoint, "ApproximateBacklogSize", since)[-1:] == [0], 30,
               what="the backlog to drain")


def test_scales_to_zero_when_idle_and_back_for_a_request(fresh_server: Callable[..., MoorageServer],
                                                        tmp_path: Path) -> None:
    srv = fresh_server(env={"MOORAGE_METRICS_PERIOD": "1", "MOORAGE_AUTOSCALE_SCALE_IN_DATAPOINTS": "3"})
    dep = Deployer(srv)
    endpoint = _async_endpoint(dep, tmp_path)
    aas, cloudwatch, rt = srv.client("application-autoscaling"), srv.client("cloudwatch"), srv.rt()
    resource = f"endpoint/{endpoint}/variant/AllTraffic"
    dimension = "sagemaker:variant:DesiredInstanceCount"
    # SageMaker's documented setup: MinCapacity 0, target tracking on the backlog per instance, and a
    # step-scaling policy an alarm on HasBacklogWithoutCapacity runs to come back from zero.
    aas.register_scalable_target(ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=dimension,
                                 MinCapacity=0, MaxCapacity=2)
    aas.put_scaling_policy(
        PolicyName="backlog", ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=dimension,
        PolicyType="TargetTrackingScaling",
        TargetTrackingScalingPolicyConfiguration={
            "TargetValue": 5.0, "ScaleInCooldown": 1, "ScaleOutCooldown": 1,
            "CustomizedMetricSpecification": {"MetricName": "ApproximateBacklogSizePerInstance",
                                              "Namespace": "AWS/SageMaker", "Statistic": "Average",
                                              "Dimensions": [{"Name": "EndpointName", "Value": endpoint}]}})
    step = aas.put_scaling_policy(
        PolicyName="from-zero", ServiceNamespace="sagemaker", ResourceId=resource, ScalableDimension=dimension,
        PolicyType="StepScaling",
        StepScalingPolicyConfiguration={"AdjustmentType": "ChangeInCapacity", "MetricAggregationType": "Average",
                                        "Cooldown": 1,
                                        "StepAdjustments": [{"MetricIntervalLowerBound": 0, "ScalingAdjustment": 1}]})
    cloudwatch.put_metric_alarm(
        AlarmName=new_name("backlog-without-capacity"), MetricName="HasBacklogWithoutCapacity",
        Namespace="AWS/SageMaker", Statistic="Average", EvaluationPeriods=1, DatapointsToAlarm=1, Threshold=1,
        ComparisonOperator="GreaterThanOrEqualToThreshold", TreatMissingData="missing", Period=1,
        Dimensions=[{"Name": "EndpointName", "Value": endpoint}], AlarmActions=[step["PolicyARN"]])

    def current() -> int:
        return int(srv.sm().describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]["CurrentInstanceCount"])

    # Nothing queued: the backlog is 0, the target tracking scales in to MinCapacity 0.
    wait_until(lambda: current() == 0 and srv.instances(endpoint) == [], 90, what="scale-in to zero")
    # Zero is what the endpoint was told: a restart brings it back with no instance.
    srv.stop()
    srv.start(timeout=90)
    dep.wait_in_service(endpoint)
    assert current() == 0 and srv.instances(endpoint) == []
    rt = srv.rt()
    reply = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, "z.csv", "from zero"))
    # Queued at zero instances; the alarm's step policy brings one back, which answers it.
    assert json.loads(_read(reply["OutputLocation"], 90))["echo"] == "from zero"
    activities = aas.describe_scaling_activities(ServiceNamespace="sagemaker", ResourceId=resource,
                                                 ScalableDimension=dimension)["ScalingActivities"]
    assert any("from-zero" in a["Cause"] for a in activities), [a["Cause"] for a in activities]
    assert any(a["Description"] == "Setting desired instance count to 0." for a in activities)
    # And, idle again, back to zero.
    wait_until(lambda: current() == 0, 90, what="scale-in to zero after the request")


def test_requests_arriving_together_all_answered(server: MoorageServer, deployer: Deployer, tmp_path: Path) -> None:
    endpoint = _async_endpoint(deployer, tmp_path, per_instance=3)
    rt = server.rt()
    replies: list[dict[str, Any]] = []
    lock = threading.Lock()

    def send(i: int) -> None:
        reply = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=_put(tmp_path, f"p{i}.csv", f"p{i}"))
        with lock:
            replies.append(reply)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(replies) == 12 and len({r["InferenceId"] for r in replies}) == 12
    assert sorted(json.loads(_read(r["OutputLocation"]))["echo"] for r in replies) == sorted(
        f"p{i}" for i in range(12))


def test_s3_locations_through_the_servers_object_store(server: MoorageServer, deployer: Deployer,
                                                       tmp_path: Path) -> None:
    """The input uploaded with boto3's s3 client to moorage itself, the answer and a failure read back
    the same way: s3:// names moorage's object store on both sides."""
    s3 = boto3.session.Session().client(
        "s3", endpoint_url=server.url, region_name=REGION, aws_access_key_id=server.access_key_id,
        aws_secret_access_key=server.secret_access_key,
        config=botocore.config.Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}))
    bucket = new_name("async-io")
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="in/request.csv", Body=b"from the object store", ContentType="text/csv")
    endpoint = _async_endpoint(deployer, tmp_path, output_path=f"s3://{bucket}/out", failure_at=f"s3://{bucket}/fail")
    rt = server.rt()

    def read(location: str) -> bytes:
        key = location.removeprefix(f"s3://{bucket}/")
        return wait_until(lambda: s3.get_object(Bucket=bucket, Key=key)["Body"].read(), 60, what=location)

    reply = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=f"s3://{bucket}/in/request.csv",
                                     InferenceId="s3-request")
    assert reply["OutputLocation"] == f"s3://{bucket}/out/s3-request.out"
    assert reply["FailureLocation"] == f"s3://{bucket}/fail/s3-request-error.out"
    answer = json.loads(read(reply["OutputLocation"]))
    # No ContentType in the request (the SageMaker SDK's AsyncPredictor sends none): the object's own.
    assert answer == {"echo": "from the object store", "content_type": "text/csv", "accept": answer["accept"]}
    typed = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=f"s3://{bucket}/in/request.csv",
                                     ContentType="text/plain", InferenceId="s3-typed")
    assert json.loads(read(typed["OutputLocation"]))["content_type"] == "text/plain"  # the request's wins

    missing = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=f"s3://{bucket}/in/absent.csv")
    assert b"does not exist" in read(missing["FailureLocation"])
    s3.put_object(Bucket=bucket, Key="in/boom.csv", Body=b"boom")
    boom = rt.invoke_endpoint_async(EndpointName=endpoint, InputLocation=f"s3://{bucket}/in/boom.csv")
    assert b"the model fails on boom" in read(boom["FailureLocation"])
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == sorted(["in/request.csv", "in/boom.csv", "out/s3-request.out", "out/s3-typed.out",
                           f"fail/{missing['InferenceId']}-error.out", f"fail/{boom['InferenceId']}-error.out"])
