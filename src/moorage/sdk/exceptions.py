"""Errors the SDK raises itself (boto3's ClientError passes through unchanged)."""

from __future__ import annotations

__all__ = ["UnexpectedStatusException"]


class UnexpectedStatusException(ValueError):
    """A resource ended in a status other than the one waited for, as in ``sagemaker.exceptions``.

    ``failure_reason`` carries the endpoint's FailureReason when it has one.
    """

    def __init__(self, message: str, allowed_statuses: list[str], actual_status: str,
                 failure_reason: str | None = None) -> None:
        super().__init__(message)
        self.allowed_statuses = allowed_statuses
        self.actual_status = actual_status
        self.failure_reason = failure_reason
