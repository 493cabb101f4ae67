"""(d) ``deploy(async_inference_config=AsyncInferenceConfig(...))`` returns an AsyncPredictor; its
``predict`` uploads the input to S3, calls InvokeEndpointAsync and waits for the output object
(S3 HeadObject through boto3's ``object_exists`` waiter, then GetObject). ``predict_async`` +
``AsyncInferenceResponse.get_result`` is the other way the SDK offers."""

from __future__ import annotations

from typing import Any

from _harness import run
from _models import session, sklearn_model, upload_model
from sagemaker.async_inference import AsyncInferenceConfig, WaiterConfig
from sagemaker.deserializers import JSONDeserializer
from sagemaker.serializers import CSVSerializer


def main(params: dict[str, Any]) -> dict[str, Any]:
    sess = session()
    bucket, prefix = sess.default_bucket(), params["prefix"]
    model = sklearn_model(sess, params, upload_model(sess, params))
    output_path = f"s3://{bucket}/{prefix}/async-output"
    failure_path = f"s3://{bucket}/{prefix}/async-failures"
    predictor = model.deploy(
        instance_type="ml.m5.large", initial_instance_count=1, endpoint_name=params["endpoint_name"],
        serializer=CSVSerializer(), deserializer=JSONDeserializer(),
        async_inference_config=AsyncInferenceConfig(output_path=output_path, failure_path=failure_path,
                                                    max_concurrent_invocations_per_instance=2),
    )
    # The SDK polls S3 every 15 s by default; a user who wants the answer sooner says so. (On a
    # failure the SDK's output-waiting thread runs out its attempts before the process can end.)
    waiter = WaiterConfig(max_attempts=60, delay=1)
    try:
        predictions = predictor.predict(data=params["rows"], waiter_config=waiter)
        response = predictor.predict_async(data=params["rows"][:2])
        later = response.get_result(waiter_config=waiter)
        config = sess.sagemaker_client.describe_endpoint_config(
            EndpointConfigName=predictor.endpoint_name)["AsyncInferenceConfig"]
    finally:
        predictor.delete_model()  # first: it finds the models through the endpoint config
        predictor.delete_endpoint()
    return {"predictions": predictions, "later": later, "output_path": response.output_path,
            "failure_path": response.failure_path, "config": config}


run(main)
