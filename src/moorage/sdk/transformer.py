"""``Transformer``: batch transform jobs for a model, in the role of ``sagemaker.transformer.Transformer``.

    transformer = model.transformer(instance_count=2, instance_type="ml.m5.large", output_path="s3://b/out/")
    transformer.transform("s3://b/in/", content_type="text/csv", split_type="Line")   # waits
    transformer.output_path  # one NAME.out per input object

``backend="ray"`` (with ``ray_address``) runs the job on a Ray cluster; it travels as the job's tags
``moorage:backend`` / ``moorage:ray-address``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from moorage.sdk.exceptions import UnexpectedStatusException
from moorage.sdk.session import Session
from moorage.sdk.utils import name_from_base

__all__ = ["Transformer"]

_TERMINAL = frozenset({"Completed", "Failed", "Stopped"})


def _base_job_name(model_name: str) -> str:
    return name_from_base(model_name[:30])


class Transformer:
    def __init__(self, model_name: str, instance_count: int = 1, instance_type: str = "ml.m5.large",
                 strategy: str | None = None, assemble_with: str | None = None, output_path: str | None = None,
                 output_kms_key: str | None = None, accept: str | None = None,
                 max_concurrent_transforms: int | None = None,
                 max_payload: int | None = None, tags: list[dict[str, str]] | dict[str, str] | None = None,
                 env: dict[str, str] | None = None, base_transform_job_name: str | None = None,
                 sagemaker_session: Session | None = None, backend: str | None = None,
                 ray_address: str | None = None) -> None:
        self.model_name = model_name
        self.instance_count = instance_count
        self.instance_type = instance_type
        self.strategy = strategy
        self.assemble_with = assemble_with
        self.output_path = output_path
        self.output_kms_key = output_kms_key
        self.accept = accept
        self.max_concurrent_transforms = max_concurrent_transforms
        self.max_payload = max_payload
        self.tags = tags
        self.env = dict(env or {})
        self.base_transform_job_name = base_transform_job_name
        self.sagemaker_session = sagemaker_session or Session()
        self.backend = backend
        self.ray_address = ray_address
        self.latest_transform_job: str | None = None

    def _tags(self) -> list[dict[str, str]]:
        tags = self.tags or []
        tag_list = [{"Key": str(k), "Value": str(v)} for k, v in tags.items()] if isinstance(tags, dict) else list(tags)
        if self.backend:
            tag_list.append({"Key": "moorage:backend", "Value": self.backend})
        if self.ray_address:
            tag_list.append({"Key": "moorage:ray-address", "Value": self.ray_address})
        return tag_list

    def transform(self, data: str, data_type: str = "S3Prefix", content_type: str | None = None,
                  compression_type: str | None = None, split_type: str | None = None, job_name: str | None = None,
                  input_filter: str | None = None, output_filter: str | None = None,
                  join_source: str | None = None, model_client_config: dict[str, int] | None = None,
                  wait: bool = True, logs: bool = False, timeout: float = 3600.0) -> str:
        """Start a transform job over ``data`` (a prefix, a folder, a file, or a manifest with
        ``data_type="ManifestFile"``); wait for it unless ``wait=False``. Returns the job's name."""
        if self.output_path is None:
            raise ValueError("output_path is required (where the NAME.out objects go)")
        name = job_name or _base_job_name(self.base_transform_job_name or self.model_name)
        transform_input: dict[str, Any] = {"DataSource": {"S3DataSource": {"S3DataType": data_type, "S3Uri": data}}}
        for key, value in (("ContentType", content_type), ("CompressionType", compression_type),
                           ("SplitType", split_type)):
            if value is not None:
                transform_input[key] = value
        output: dict[str, Any] = {"S3OutputPath": self.output_path}
        for key, value in (("Accept", self.accept), ("AssembleWith", self.assemble_with),
                           ("KmsKeyId", self.output_kms_key)):
            if value is not None:
                output[key] = value
        request: dict[str, Any] = {
            "TransformJobName": name, "ModelName": self.model_name, "TransformInput": transform_input,
            "TransformOutput": output,
            "TransformResources": {"InstanceType": self.instance_type, "InstanceCount": int(self.instance_count)},
        }
        for key, value in (("BatchStrategy", self.strategy), ("MaxPayloadInMB", self.max_payload),
                           ("MaxConcurrentTransforms", self.max_concurrent_transforms),
                           ("ModelClientConfig", model_client_config)):
            if value is not None:
                request[key] = value
        if self.env:
            request["Environment"] = self.env
        processing = {k: v for k, v in (("InputFilter", input_filter), ("OutputFilter", output_filter),
                                        ("JoinSource", join_source)) if v is not None}
        if processing:
            request["DataProcessing"] = processing
        if tags := self._tags():
            request["Tags"] = tags
        self.sagemaker_session.sagemaker_client.create_transform_job(**request)
        self.latest_transform_job = name
        if wait:
            self.wait(logs=logs, timeout=timeout)
        return name

    def _job(self) -> str:
        if self.latest_transform_job is None:
            raise ValueError("no transform job has been started by this Transformer")
        return self.latest_transform_job

    def describe(self) -> dict[str, Any]:
        return self.sagemaker_session.sagemaker_client.describe_transform_job(TransformJobName=self._job())

    def progress(self) -> dict[str, Any]:
        """Objects and records done so far (moorage's native API; DescribeTransformJob has no such fields)."""
        return self.sagemaker_session.connection.native("GET", f"/moorage/v1/transform-jobs/{self._job()}")

    def wait(self, logs: bool = False, poll: float = 1.0, timeout: float = 3600.0) -> dict[str, Any]:
        """Wait until the job is Completed; raise UnexpectedStatusException (with its FailureReason) if it
        fails or stops. ``logs=True`` prints its progress as it goes."""
        deadline = time.monotonic() + timeout
        while True:
            desc = self.describe()
            status = desc["TransformJobStatus"]
            if logs:
                done = self.progress().get("Progress", {})
                print(f"{self._job()}: {status}, {done.get('FilesDone', 0)}/{done.get('FilesTotal', '?')} objects, "
                      f"{done.get('RecordsDone', 0)} records", file=sys.stderr, flush=True)
            if status in _TERMINAL:
                break
            if time.monotonic() > deadline:
                raise UnexpectedStatusException(f"Transform job {self._job()} is still {status} after {timeout:g}s.",
                                                allowed_statuses=["Completed"], actual_status=status)
            time.sleep(poll)
        if status != "Completed":
            raise UnexpectedStatusException(
                f"Error for transform job {self._job()}: {status}. Reason: {desc.get('FailureReason', 'not given')}",
                allowed_statuses=["Completed"], actual_status=status, failure_reason=desc.get("FailureReason"))
        return desc

    def stop_transform_job(self, wait: bool = True, timeout: float = 300.0) -> None:
        self.sagemaker_session.sagemaker_client.stop_transform_job(TransformJobName=self._job())
        if wait:
            self.sagemaker_session.sagemaker_client.get_waiter("transform_job_completed_or_stopped").wait(
                TransformJobName=self._job(), WaiterConfig={"Delay": 1, "MaxAttempts": max(1, int(timeout))})

    def __repr__(self) -> str:
        return (f"Transformer(model_name={self.model_name!r}, instance_count={self.instance_count}, "
                f"output_path={self.output_path!r})")
