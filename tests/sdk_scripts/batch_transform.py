"""(b) A Transformer over s3:// input with the SDK's defaults (wait=True, logs=True: the SDK tails
the job's CloudWatch log streams while it runs), its output read back with the SDK's S3Downloader."""

from __future__ import annotations

from typing import Any

from _harness import run
from _models import rows_csv, session, sklearn_model, upload_model
from sagemaker.s3 import S3Downloader, S3Uploader


def main(params: dict[str, Any]) -> dict[str, Any]:
    sess = session()
    bucket, prefix = sess.default_bucket(), params["prefix"]
    model = sklearn_model(sess, params, upload_model(sess, params))
    data = S3Uploader.upload_string_as_file_body(rows_csv(params["rows"]), f"s3://{bucket}/{prefix}/input/rows.csv",
                                                 sagemaker_session=sess)
    output_path = f"s3://{bucket}/{prefix}/output"
    transformer = model.transformer(instance_count=1, instance_type="ml.m5.large", output_path=output_path,
                                    accept="text/csv", assemble_with="Line", strategy="MultiRecord")
    try:
        transformer.transform(data=data, content_type="text/csv", split_type="Line", job_name=params["job_name"])
        description = transformer.sagemaker_session.describe_transform_job(params["job_name"])
        listed = S3Downloader.list(output_path, sagemaker_session=sess)
        output = S3Downloader.read_file(f"{output_path}/rows.csv.out", sagemaker_session=sess)
    finally:
        transformer.delete_model()
    return {"status": description["TransformJobStatus"], "input": data, "listed": listed, "output": output}


run(main)
