"""After the server restarted: what the SDK made before is still there. A ``Predictor`` on the
endpoint by name predicts, the model archive the SDK uploaded reads back whole, then both go."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from _harness import run
from _models import session
from sagemaker.s3 import S3Downloader
from sagemaker.sklearn import SKLearnPredictor


def main(params: dict[str, Any]) -> dict[str, Any]:
    sess = session()
    predictor = SKLearnPredictor(params["endpoint_name"], sagemaker_session=sess)
    try:
        # the SDK's own wait_for_endpoint looks every 30 s; boto3's waiter, as a user may call it, every second
        sess.sagemaker_client.get_waiter("endpoint_in_service").wait(
            EndpointName=params["endpoint_name"], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
        status = sess.sagemaker_client.describe_endpoint(EndpointName=params["endpoint_name"])["EndpointStatus"]
        predictions = predictor.predict(np.asarray(params["rows"], dtype=np.float64))
        archive = S3Downloader.read_bytes(params["model_data"], sagemaker_session=sess)
        listed = S3Downloader.list(f"s3://{sess.default_bucket()}/{params['prefix']}", sagemaker_session=sess)
    finally:
        predictor.delete_model()
        predictor.delete_endpoint()
    return {"status": status, "predictions": np.asarray(predictions).tolist(),
            "model_sha256": hashlib.sha256(archive).hexdigest(), "listed": listed}


run(main)
