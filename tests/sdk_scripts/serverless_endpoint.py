"""(e) ``deploy(serverless_inference_config=ServerlessInferenceConfig(...))``: no instance type, a
variant with ServerlessConfig; the first request starts the model (a cold start), the next ones
find it warm."""

from __future__ import annotations

from typing import Any

from _harness import run
from _models import session, sklearn_model, upload_model
from sagemaker.deserializers import JSONDeserializer
from sagemaker.serializers import CSVSerializer
from sagemaker.serverless import ServerlessInferenceConfig


def main(params: dict[str, Any]) -> dict[str, Any]:
    sess = session()
    model = sklearn_model(sess, params, upload_model(sess, params))
    predictor = model.deploy(
        endpoint_name=params["endpoint_name"], serializer=CSVSerializer(), deserializer=JSONDeserializer(),
        serverless_inference_config=ServerlessInferenceConfig(memory_size_in_mb=2048, max_concurrency=2),
    )
    try:
        first = predictor.predict(params["rows"])
        second = predictor.predict(params["rows"])
        variant = sess.sagemaker_client.describe_endpoint_config(
            EndpointConfigName=predictor.endpoint_name)["ProductionVariants"][0]
    finally:
        predictor.delete_model()  # first: it finds the models through the endpoint config
        predictor.delete_endpoint()
    return {"first": first, "second": second, "variant": variant}


run(main)
