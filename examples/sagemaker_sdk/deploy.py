"""Deploy a scikit-learn model to moorage with the unmodified SageMaker Python SDK (v2), call it,
run a batch transform over S3, and clean up. Nothing in this file names moorage: the SDK finds
the server through the standard variables (see README.md):

    AWS_ENDPOINT_URL=http://127.0.0.1:8080 AWS_DEFAULT_REGION=us-east-1
    AWS_SHARED_CREDENTIALS_FILE=~/.moorage/credentials
    SAGEMAKER_USER_CONFIG_OVERRIDE=examples/sagemaker_sdk/sagemaker-config.yaml
    .venv-sagemaker/bin/python examples/sagemaker_sdk/deploy.py [--keep]

1. the model archive from train.py goes to the default bucket (S3 PutObject, to moorage's store);
2. ``SKLearnModel`` with ``code/inference.py`` as entry point: the SDK uploads the code as
   ``sourcedir.tar.gz`` and creates the model, endpoint config and endpoint, and waits;
3. ``predict`` on held-out rows (CSV in, JSON out), compared with the answers train.py got locally;
4. a ``Transformer`` on the same model over ``s3://`` input (the SDK tails the job's logs),
   its output read back from S3 and compared the same way;
5. the endpoint, its config and the models are deleted (``--keep`` leaves the endpoint up).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import sagemaker
from sagemaker.deserializers import JSONDeserializer
from sagemaker.s3 import S3Downloader, S3Uploader
from sagemaker.serializers import CSVSerializer
from sagemaker.sklearn import SKLearnModel

HERE = Path(__file__).resolve().parent
# moorage checks no IAM policy; the SDK and SageMaker's API still want a role ARN on every model.
ROLE = "arn:aws:iam::000000000000:role/moorage-example"
PREFIX = "sagemaker-sdk-example"


def run_example(build: Path, endpoint_name: str, keep: bool = False) -> dict:
    expected = json.loads((build / "expected.json").read_text())["predictions"]
    rows = [[float(v) for v in line.split(",")] for line in (build / "holdout.csv").read_text().splitlines() if line]

    session = sagemaker.Session()
    bucket = session.default_bucket()  # from sagemaker-config.yaml; created on first use
    model_data = session.upload_data(str(build / "model.tar.gz"), bucket=bucket, key_prefix=f"{PREFIX}/model")
    print(f"uploaded {model_data}")

    model = SKLearnModel(model_data=model_data, role=ROLE, entry_point="inference.py", source_dir=str(HERE / "code"),
                         framework_version="1.2-1", py_version="py3", sagemaker_session=session)
    started = time.monotonic()
    predictor = model.deploy(initial_instance_count=1, instance_type="ml.m5.large", endpoint_name=endpoint_name,
                             serializer=CSVSerializer(), deserializer=JSONDeserializer())
    print(f"endpoint {endpoint_name} in service after {time.monotonic() - started:.0f} s "
          "(the SDK checks every 30 s)")
    transformer = None
    try:
        online = predictor.predict(rows)
        print(f"online: {sum(p == e for p, e in zip(online, expected, strict=False))}/{len(rows)} answers as trained, "
              f"e.g. {online[0]}")

        data = S3Uploader.upload_string_as_file_body((build / "holdout.csv").read_text(),
                                                     f"s3://{bucket}/{PREFIX}/batch-input/holdout.csv",
                                                     sagemaker_session=session)
        output_path = f"s3://{bucket}/{PREFIX}/batch-output"
        transformer = model.transformer(instance_count=1, instance_type="ml.m5.large", output_path=output_path,
                                        accept="application/json", assemble_with="Line", strategy="SingleRecord")
        transformer.transform(data=data, content_type="text/csv", split_type="Line")  # waits, showing the logs
        lines = S3Downloader.read_file(f"{output_path}/holdout.csv.out", sagemaker_session=session).splitlines()
        batch = [answer for line in lines if line.strip() for answer in json.loads(line)]
        print(f"batch: {sum(p == e for p, e in zip(batch, expected, strict=False))}/{len(rows)} answers as trained")
    finally:
        if not keep:
            if transformer is not None:
                transformer.delete_model()
            predictor.delete_model()
            predictor.delete_endpoint()
            print(f"deleted {endpoint_name}, its config and models")
    return {"endpoint": endpoint_name, "model_data": model_data, "online": online, "batch": batch,
            "expected": expected, "matches": online == expected and batch == expected}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--build", type=Path, default=HERE / "build", help="what train.py wrote (default: build/)")
    parser.add_argument("--endpoint-name", default="sagemaker-sdk-example")
    parser.add_argument("--keep", action="store_true", help="leave the endpoint up")
    args = parser.parse_args()
    if not (args.build / "model.tar.gz").exists():
        print(f"no {args.build / 'model.tar.gz'}: run train.py first (see README.md)", file=sys.stderr)
        return 2
    result = run_example(args.build, args.endpoint_name, keep=args.keep)
    print("all answers match the local model" if result["matches"] else "answers DIFFER from the local model")
    return 0 if result["matches"] else 1


if __name__ == "__main__":
    sys.exit(main())
