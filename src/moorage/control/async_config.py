"""An endpoint config's ``AsyncInferenceConfig``, checked once and read by name.

Where an asynchronous request's answer goes (``S3OutputPath``, ``S3FailurePath``: any location the
location layer reaches, ``s3://`` or ``file://``), how many requests one instance is given at once
(``ClientConfig.MaxConcurrentInvocationsPerInstance``), and the SNS topics SageMaker would notify
(``NotificationConfig``: recorded with each request, not sent; moorage has no SNS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from moorage.errors import ValidationException
from moorage.store.locations import StorageError, check_location, join

# SageMaker chooses the per-instance concurrency when ClientConfig leaves it out; it does not say
# what it chooses. One request at a time per instance keeps each request's time its own.
DEFAULT_CONCURRENT_PER_INSTANCE = 1


@dataclass(frozen=True)
class AsyncConfig:
    output_path: str
    failure_path: str | None = None
    concurrent_per_instance: int = DEFAULT_CONCURRENT_PER_INSTANCE
    success_topic: str | None = None
    error_topic: str | None = None
    include_response_in: tuple[str, ...] = ()

    @classmethod
    def parse(cls, doc: dict[str, Any]) -> AsyncConfig:
        output = doc.get("OutputConfig") or {}
        path = output.get("S3OutputPath")
        if not path:
            raise ValidationException("AsyncInferenceConfig.OutputConfig.S3OutputPath is required: it is where "
                                      "the answers to asynchronous requests are written.")
        failure = output.get("S3FailurePath") or None
        for field, url in (("S3OutputPath", path), ("S3FailurePath", failure)):
            if url is None:
                continue
            try:
                check_location(url, f"AsyncInferenceConfig.OutputConfig.{field}")
            except StorageError as exc:
                raise ValidationException(str(exc)) from None
        per_instance = (doc.get("ClientConfig") or {}).get("MaxConcurrentInvocationsPerInstance")
        if per_instance is not None and not 1 <= int(per_instance) <= 1000:
            raise ValidationException("AsyncInferenceConfig.ClientConfig.MaxConcurrentInvocationsPerInstance must "
                                      f"be between 1 and 1000, not {per_instance}.")
        notify = output.get("NotificationConfig") or {}
        return cls(output_path=path, failure_path=failure,
                   concurrent_per_instance=int(per_instance or DEFAULT_CONCURRENT_PER_INSTANCE),
                   success_topic=notify.get("SuccessTopic"), error_topic=notify.get("ErrorTopic"),
                   include_response_in=tuple(notify.get("IncludeInferenceResponseIn") or ()))

    def output_location(self, inference_id: str, extension: str | None = None, filename: str | None = None) -> str:
        """``{S3OutputPath}/{InferenceId}.out``, or the request's path extension and file name."""
        base = join(self.output_path, extension) if extension else self.output_path
        return join(base, filename or f"{inference_id}.out")

    def failure_location(self, inference_id: str, extension: str | None = None) -> str:
        """``{S3FailurePath}/{InferenceId}-error.out``; without a failure path, beside the output."""
        root = self.failure_path or self.output_path
        base = join(root, extension) if extension else root
        return join(base, f"{inference_id}-error.out")
