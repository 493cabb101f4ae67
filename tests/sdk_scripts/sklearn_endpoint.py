"""(a) SKLearnModel with an entry point, deployed, predicting with the SDK's default (numpy)
serializers, then deleted. ``network_isolation`` makes the SDK repack model.tar.gz with the code
itself (downloaded from S3, code/ added, uploaded again) instead of uploading sourcedir.tar.gz.
``endpoint_logging`` makes ``deploy`` follow the instances' log stream in CloudWatch Logs
(FilterLogEvents on /aws/sagemaker/Endpoints/NAME) while it waits, polling every 10 s, not 30.
``keep`` leaves the endpoint and model up (after_restart.py uses and deletes them)."""

from __future__ import annotations

from typing import Any

import numpy as np
from _harness import run
from _models import session, sklearn_model, upload_model


def main(params: dict[str, Any]) -> dict[str, Any]:
    sess = session()
    model_data = upload_model(sess, params)
    model = sklearn_model(sess, params, model_data, enable_network_isolation=params.get("network_isolation", False))
    predictor = model.deploy(instance_type="ml.m5.large", initial_instance_count=1,
                             endpoint_name=params["endpoint_name"],
                             endpoint_logging=params.get("endpoint_logging", False))
    try:
        predictions = predictor.predict(np.asarray(params["rows"], dtype=np.float64))
        container = sess.sagemaker_client.describe_model(ModelName=model.name)["PrimaryContainer"]
        status = sess.sagemaker_client.describe_endpoint(EndpointName=predictor.endpoint_name)["EndpointStatus"]
    finally:
        if not params.get("keep"):
            predictor.delete_model()  # first: it finds the models through the endpoint config
            predictor.delete_endpoint()
    return {
        "predictions": np.asarray(predictions).tolist(),
        "model_data": model_data,
        "container": {"Image": container["Image"], "ModelDataUrl": container.get("ModelDataUrl"),
                      "Environment": container.get("Environment", {})},
        "endpoint_status": status,
    }


run(main)
