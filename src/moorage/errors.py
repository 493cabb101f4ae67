"""Errors the control plane raises, named and numbered as AWS names and numbers them.

The API layer renders them as AWS JSON errors (``__type`` + ``message``, ``x-amzn-ErrorType``), so
boto3 raises the ``ClientError`` subclass a SageMaker user already catches.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    code = "InternalFailure"
    status = 500

    def __init__(self, message: str, **fields: Any):
        super().__init__(message)
        self.message = message
        self.fields = fields


class InternalFailure(ApiError):
    """A failure of moorage itself (a bug), not of the request or the model."""


class ValidationException(ApiError):
    code = "ValidationException"
    status = 400


# A body over a native route's limit: the same code, with HTTP's own status for it.
class ContentTooLarge(ValidationException):
    status = 413


class SerializationException(ApiError):
    code = "SerializationException"
    status = 400


class UnknownOperation(ApiError):
    code = "UnknownOperationException"
    status = 400


class NotImplementedOperation(ApiError):
    code = "NotImplemented"
    status = 501


# The runtime service (sagemaker-runtime) has its own codes.
class RuntimeValidationError(ApiError):
    code = "ValidationError"
    status = 400


class PayloadTooLarge(RuntimeValidationError):
    status = 413


class ModelError(ApiError):
    code = "ModelError"
    status = 424


# A serverless endpoint at its MaxConcurrency: SageMaker answers 400 with this code (botocore retries it).
class ThrottlingException(ApiError):
    code = "ThrottlingException"
    status = 400


# The runtime's retryable refusal (botocore's sagemaker-runtime model: 503): a full asynchronous queue.
class ServiceUnavailable(ApiError):
    code = "ServiceUnavailable"
    status = 503




# Application Auto Scaling names a missing scalable target or policy this way.
class ObjectNotFound(ApiError):
    code = "ObjectNotFoundException"
    status = 400


# SageMaker's missing transform jobs, monitoring schedules and executions.
class ResourceNotFound(ApiError):
    code = "ResourceNotFound"
    status = 400


# An operation a resource's current status does not allow (an inference experiment's, for one).
class ConflictException(ApiError):
    code = "ConflictException"
    status = 400


class ResourceInUse(ApiError):
    code = "ResourceInUse"
    status = 400


# Application Auto Scaling's missing resource (tag operations on an unknown ARN).
class ScalingResourceNotFound(ApiError):
    code = "ResourceNotFoundException"
    status = 400


# CloudWatch's own codes, from its query-protocol days (botocore's model maps each to its shape).
class InvalidParameterValue(ApiError):
    code = "InvalidParameterValue"
    status = 400


class InvalidParameterCombination(ApiError):
    code = "InvalidParameterCombination"
    status = 400


class MissingParameter(ApiError):
    code = "MissingParameter"
    status = 400


class InvalidNextToken(ApiError):
    code = "InvalidNextToken"
    status = 400


class InvalidFormat(ApiError):
    code = "InvalidFormat"
    status = 400


class LimitExceeded(ApiError):
    code = "LimitExceeded"
    status = 400
