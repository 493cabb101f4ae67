"""Deploy the three-container inference pipeline to a running moorage server and call it.

    .venv/bin/moorage serve &                               # or any server: see --url / --home
    .venv/bin/python examples/inference_pipeline/deploy.py  # --keep leaves the endpoint up

With plain boto3 calls (the SDK's Session only finds the server and its credentials):
``create_model`` with ``Containers=[preprocess, predict, postprocess]``, an endpoint config and an
endpoint; then held-out rows as CSV and as JSON through ``invoke_endpoint``, each answer checked
against the three steps run by hand; then ``TargetContainerHostname`` on a second model in
``Direct`` mode, which reaches the classifier alone.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pipeline import build  # noqa: E402

from moorage.sdk import Session  # noqa: E402

IMAGE = "683313688378.dkr.ecr.us-east-1.amazonaws.com/sagemaker-scikit-learn:1.2-1-cpu-py3"
ROLE = "arn:aws:iam::000000000000:role/moorage-example"
NAME = "cancer-pipeline"


def containers(archives: dict[str, Path]) -> list[dict]:
    return [{"ContainerHostname": step, "Image": IMAGE, "ModelDataUrl": archives[step].as_uri(),
             # what this step hands the next one: CSV rows
             "Environment": {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}}
            for step in ("preprocess", "predict", "postprocess")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="the server (default: the one of --home)")
    parser.add_argument("--home", default=None, help="moorage's home (default: MOORAGE_HOME, ~/.moorage)")
    parser.add_argument("--keep", action="store_true", help="leave the endpoint, config and models")
    args = parser.parse_args()
    session = Session(home=args.home, url=args.url)
    sm, rt = session.sagemaker_client, session.sagemaker_runtime_client
    work = Path(tempfile.mkdtemp(prefix="moorage-pipeline-"))
    pipeline = build(work)
    rows = pipeline.held_out[:5]
    sm.create_model(ModelName=NAME, ExecutionRoleArn=ROLE, Containers=containers(pipeline.archives))
    sm.create_model(ModelName=f"{NAME}-direct", ExecutionRoleArn=ROLE, Containers=containers(pipeline.archives),
                    InferenceExecutionConfig={"Mode": "Direct"})
    for model in (NAME, f"{NAME}-direct"):
        sm.create_endpoint_config(EndpointConfigName=model, ProductionVariants=[
            {"VariantName": "AllTraffic", "ModelName": model, "InitialInstanceCount": 1,
             "InstanceType": "ml.m5.large"}])
        sm.create_endpoint(EndpointName=model, EndpointConfigName=model)
    try:
        for model in (NAME, f"{NAME}-direct"):
            sm.get_waiter("endpoint_in_service").wait(EndpointName=model, WaiterConfig={"Delay": 1, "MaxAttempts": 180})
        csv = "\n".join(",".join(repr(float(v)) for v in row) for row in rows)
        answer = rt.invoke_endpoint(EndpointName=NAME, ContentType="text/csv", Accept="text/csv", Body=csv)
        labels = answer["Body"].read().decode().split()
        print(f"CSV in, labels out: {labels}")
        answer = rt.invoke_endpoint(EndpointName=NAME, ContentType="application/json", Accept="application/json",
                                    Body=json.dumps({"instances": rows.tolist()}))
        from_json = json.loads(answer["Body"].read())["labels"]
        print(f"JSON in, labels out: {from_json}")
        expected = pipeline.expected(rows)
        print(f"the three steps by hand: {expected}")
        scaled = pipeline.scaler.transform(rows)
        answer = rt.invoke_endpoint(EndpointName=f"{NAME}-direct", TargetContainerHostname="predict",
                                    ContentType="text/csv", Body="\n".join(",".join(repr(float(v)) for v in row)
                                                                           for row in scaled))
        print(f"Direct mode, the classifier alone on scaled rows: {answer['Body'].read().decode().split()}")
        ok = labels == expected == from_json
        print("the pipeline answers as the steps by hand" if ok else "MISMATCH")
        return 0 if ok else 1
    finally:
        if not args.keep:
            for model in (NAME, f"{NAME}-direct"):
                sm.delete_endpoint(EndpointName=model)
                sm.delete_endpoint_config(EndpointConfigName=model)
                sm.delete_model(ModelName=model)


if __name__ == "__main__":
    raise SystemExit(main())
