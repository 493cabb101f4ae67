"""Serial inference pipelines through boto3: examples/inference_pipeline's three containers
(StandardScaler -> classifier -> labels) answer as the three steps run by hand, in CSV and JSON,
online and in a transform job; Direct mode reaches one container; a failing step is a ModelError
naming its container; each container's latency is a metric; bad pipelines are refused.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from botocore.exceptions import ClientError

from e2e_support import ROLE_ARN, Deployer, MoorageServer, err_code, err_message, new_name, variant, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "inference_pipeline"))
from deploy import containers
from pipeline import Pipeline, build

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return build(tmp_path_factory.mktemp("pipeline"))


def _csv(rows: Any) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows)


def _deploy(dep: Deployer, pipeline: Pipeline, **model: Any) -> str:
    name = new_name("pipeline")
    dep.sm.create_model(ModelName=name, ExecutionRoleArn=ROLE_ARN, Containers=containers(pipeline.archives), **model)
    dep.models.append(name)
    dep.config(name, [variant("AllTraffic", name)])
    dep.endpoint(name, name)
    dep.wait_in_service(name)
    return name


def test_three_containers_answer_as_the_steps_by_hand(fresh_server: Any, pipeline: Pipeline, tmp_path: Path) -> None:
    server: MoorageServer = fresh_server(env={"MOORAGE_METRICS_PERIOD": "1"})
    dep = Deployer(server)
    endpoint = _deploy(dep, pipeline)
    rt = server.rt()
    rows = pipeline.held_out[:40]
    expected = pipeline.expected(rows)
    answer = rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Accept="text/csv", Body=_csv(rows))
    assert answer["Body"].read().decode().split() == expected
    answer = rt.invoke_endpoint(EndpointName=endpoint, ContentType="application/json", Accept="application/json",
                                Body=json.dumps({"instances": rows.tolist()}))
    assert answer["ContentType"] == "application/json"
    assert json.loads(answer["Body"].read())["labels"] == expected
    images = server.sm().describe_endpoint(EndpointName=endpoint)["ProductionVariants"][0]["DeployedImages"]
    assert len(images) == 3

    # A step that fails: the classifier cannot read a row of the wrong width.
    with pytest.raises(ClientError) as failed:
        rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body="1,2,3")
    assert err_code(failed.value) == "ModelError" and "container preprocess of AllTraffic" in err_message(failed.value)

    # Each container's latency, as SageMaker's ContainerLatency (dimension ContainerName).
    cw = server.client("cloudwatch")

    def latency(container: str) -> list[dict[str, Any]]:
        return cw.get_metric_statistics(
            Namespace="AWS/SageMaker", MetricName="ContainerLatency", Statistics=["SampleCount"], Period=60,
            Dimensions=[{"Name": "EndpointName", "Value": endpoint}, {"Name": "VariantName", "Value": "AllTraffic"},
                        {"Name": "ContainerName", "Value": container}],
            StartTime=time.time() - 600, EndTime=time.time() + 60)["Datapoints"]

    wait_until(lambda: sum(p["SampleCount"] for p in latency("preprocess")) >= 3, 30, interval=0.3,
               what="the preprocessor's ContainerLatency (the failed call reached it too)")
    assert sum(p["SampleCount"] for p in latency("postprocess")) == 2

    # The same pipeline model in a transform job: the whole chain per mini-batch.
    data = tmp_path / "input"
    data.mkdir()
    (data / "rows.csv").write_text(_csv(rows) + "\n")
    job = new_name("pipeline-job")
    server.sm().create_transform_job(
        TransformJobName=job, ModelName=endpoint, TransformInput={
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": data.as_uri()}},
            "ContentType": "text/csv", "SplitType": "Line"},
        TransformOutput={"S3OutputPath": (tmp_path / "output").as_uri(), "Accept": "text/csv"},
        TransformResources={"InstanceType": "ml.m5.large", "InstanceCount": 1})
    done = wait_until(lambda: (d := server.sm().describe_transform_job(TransformJobName=job))[
        "TransformJobStatus"] in ("Completed", "Failed") and d, 120, interval=0.5, what="the transform job")
    assert done["TransformJobStatus"] == "Completed", done.get("FailureReason")
    assert (tmp_path / "output" / "rows.csv.out").read_text().split() == expected
    dep.cleanup()


def test_direct_mode_reaches_one_container(server: MoorageServer, pipeline: Pipeline) -> None:
    dep = Deployer(server)
    endpoint = _deploy(dep, pipeline, InferenceExecutionConfig={"Mode": "Direct"})
    rt = server.rt()
    rows = pipeline.held_out[:10]
    scaled = pipeline.scaler.transform(rows)
    answer = rt.invoke_endpoint(EndpointName=endpoint, TargetContainerHostname="predict", ContentType="text/csv",
                                Body=_csv(scaled))
    assert answer["Body"].read().decode().split() == [str(int(c)) for c in pipeline.model.predict(scaled)]
    answer = rt.invoke_endpoint(EndpointName=endpoint, TargetContainerHostname="preprocess", ContentType="text/csv",
                                Accept="application/json", Body=_csv(rows))
    np.testing.assert_allclose(json.loads(answer["Body"].read())["instances"], scaled)
    for target, words in (("nope", "not 'nope'"), (None, "TargetContainerHostname")):
        extra = {"TargetContainerHostname": target} if target else {}
        with pytest.raises(ClientError) as refused:
            rt.invoke_endpoint(EndpointName=endpoint, ContentType="text/csv", Body=_csv(rows), **extra)
        assert err_code(refused.value) == "ValidationError" and words in err_message(refused.value)
    dep.cleanup()


def test_bad_pipelines_are_refused(server: MoorageServer, pipeline: Pipeline) -> None:
    sm = server.sm()
    parts = containers(pipeline.archives)
    unnamed = [{k: v for k, v in c.items() if k != "ContainerHostname"} for c in parts]
    for model, words in [
        ({"Containers": [parts[0]] * 16}, "less than or equal to 15"),
        ({"Containers": [parts[0], unnamed[1]]}, "every container"),
        ({"Containers": [parts[0], parts[0]]}, "its own"),
        ({"Containers": parts, "InferenceExecutionConfig": {"Mode": "Parallel"}}, "Parallel"),
        ({"Containers": [parts[0], {**parts[1], "Image": "no-such-image"}]}, "Containers[1]"),
    ]:
        with pytest.raises(ClientError) as refused:
            sm.create_model(ModelName=new_name("bad-pipeline"), ExecutionRoleArn=ROLE_ARN, **model)
        assert err_code(refused.value) == "ValidationException" and words in err_message(refused.value), model
