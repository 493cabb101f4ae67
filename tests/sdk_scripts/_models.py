"""The model every SDK script deploys: the test's model.tar.gz, uploaded through the SDK session's S3
upload, served by the SageMaker scikit-learn image with the test's inference.py as entry point."""

from __future__ import annotations

from typing import Any

import sagemaker
from sagemaker.sklearn import SKLearnModel


def session() -> sagemaker.Session:
    """A plain Session: region, keys and endpoint from the environment, the bucket from the SDK config."""
    return sagemaker.Session()


def upload_model(sess: sagemaker.Session, params: dict[str, Any]) -> str:
    """s3://<default bucket>/<prefix>/model/model.tar.gz, uploaded by the SDK (S3 PutObject)."""
    return sess.upload_data(params["model_tar"], bucket=sess.default_bucket(), key_prefix=f"{params['prefix']}/model")


def sklearn_model(sess: sagemaker.Session, params: dict[str, Any], model_data: str, **kwargs: Any) -> SKLearnModel:
    return SKLearnModel(
        model_data=model_data,
        role=params["role"],
        entry_point="inference.py",
        source_dir=params["source_dir"],
        framework_version=params.get("framework_version", "1.2-1"),
        py_version="py3",
        sagemaker_session=sess,
        **kwargs,
    )


def rows_csv(rows: list[list[float]]) -> str:
    return "\n".join(",".join(repr(float(v)) for v in row) for row in rows) + "\n"
