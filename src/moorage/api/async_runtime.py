"""The asynchronous runtime door: ``POST /endpoints/{name}/async-invocations`` (InvokeEndpointAsync).

Reads what botocore's sagemaker-runtime model sends (the ``X-Amzn-SageMaker-*`` headers: InputLocation,
content type, accept, custom attributes, InferenceId, RequestTTLSeconds, InvocationTimeoutSeconds,
S3OutputPathExtension, Filename; or an inline body of up to 128,000 bytes), checks them as SageMaker
does, hands the request to ``control/async_inference.py`` (stored before the answer) and answers 202
with the ``InferenceId`` in the body and the ``OutputLocation``/``FailureLocation`` headers.
Reached through the synchronous door (``api/runtime.py``) only for paths that are not its own.
"""

from __future__ import annotations

import logging
import re

import orjson
from starlette.requests import ClientDisconnect

from moorage.api.responses import JSON, BodyTooLarge, Receive, Scope, Send, read_body, respond, respond_api_error
from moorage.api.runtime import SIGNING_NAME
from moorage.api.sigv4 import Action, AuthError, SigV4Verifier
from moorage.control.async_inference import AsyncInference, Submission
from moorage.errors import ApiError, InternalFailure, PayloadTooLarge, RuntimeValidationError, ServiceUnavailable
from moorage.store.metadata import AlreadyExists

log = logging.getLogger("moorage.runtime")

_PREFIX = len("/endpoints/")
_SUFFIX = len("/async-invocations")
MAX_INLINE_BODY = 128_000  # InvokeEndpointAsync's Body
# botocore's sagemaker-runtime shapes: header -> (member, minimum length or value, maximum, is a number).
_HEADERS: dict[bytes, tuple[str, int, int, bool]] = {
    b"x-amzn-sagemaker-content-type": ("ContentType", 0, 1024, False),
    b"x-amzn-sagemaker-accept": ("Accept", 0, 1024, False),
    b"x-amzn-sagemaker-custom-attributes": ("CustomAttributes", 0, 1024, False),
    b"x-amzn-sagemaker-inference-id": ("InferenceId", 1, 64, False),
    b"x-amzn-sagemaker-inputlocation": ("InputLocation", 1, 1024, False),
    b"x-amzn-sagemaker-s3outputpathextension": ("S3OutputPathExtension", 1, 1024, False),
    b"x-amzn-sagemaker-filename": ("Filename", 1, 1024, False),
    b"x-amzn-sagemaker-requestttlseconds": ("RequestTTLSeconds", 60, 21600, True),
    b"x-amzn-sagemaker-invocationtimeoutseconds": ("InvocationTimeoutSeconds", 1, 3600, True),
}
# InferenceId: a visible first character, printable ones after (botocore's pattern).
_INFERENCE_ID = re.compile(r"\S[\x20-\x7e]*")
# An extension or file name is a path inside the output path: no way up, no absolute path.
_PATH_PART = re.compile(r"[^\x00]+")


def _member_text(member: str) -> str:
    return member[0].lower() + member[1:]


class AsyncRuntimeDoor:
    def __init__(self, verifier: SigV4Verifier, service: AsyncInference):
        self.verifier = verifier
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        name = path[_PREFIX:-_SUFFIX]
        try:
            body = await read_body(receive, MAX_INLINE_BODY)
        except ServiceUnavailable as exc:  # too many bodies in memory at once (responses.PENDING_BODIES)
            await respond_api_error(send, exc, JSON)
            return
        except BodyTooLarge as exc:
            await respond_api_error(send, PayloadTooLarge(
                f"Request has oversize body: {exc.args[0]} bytes exceed the InvokeEndpointAsync inline Body limit "
                f"of {MAX_INLINE_BODY} bytes; put the payload in an object and pass its InputLocation."), JSON)
            return
        except ClientDisconnect:
            return
        try:
            principal = self.verifier.verify("POST", scope.get("raw_path") or path.encode(),
                                             scope.get("query_string", b""), scope["headers"], body,
                                             service=SIGNING_NAME)
            self.verifier.authorize(principal, Action(SIGNING_NAME, "InvokeEndpointAsync", (name,)))
        except AuthError as exc:
            await respond_api_error(send, _AuthFailure(exc), JSON)
            return
        except ApiError as exc:  # AccessDeniedException
            await respond_api_error(send, exc, JSON)
            return
        try:
            submission = self._submission(name, scope["headers"], body)
            accepted = await self.service.submit(submission)
        except ApiError as exc:
            await respond_api_error(send, exc, JSON)
            return
        except AlreadyExists:  # a uuid collision: never in practice, but never a 500 either
            await respond_api_error(send, RuntimeValidationError("Request conflict; send it again."), JSON)
            return
        except Exception as exc:  # a bug: the client gets the runtime's InternalFailure, the log the rest
            log.exception("InvokeEndpointAsync on %s failed", name)
            await respond_api_error(send, InternalFailure(f"The request could not be accepted: {type(exc).__name__}."),
                                    JSON)
            return
        headers = [(b"content-type", JSON), (b"x-amzn-sagemaker-outputlocation", accepted.output_location.encode())]
        if accepted.failure_location is not None:
            headers.append((b"x-amzn-sagemaker-failurelocation", accepted.failure_location.encode()))
        await respond(send, 202, orjson.dumps({"InferenceId": accepted.inference_id}), headers)

    @staticmethod
    def _submission(name: str, raw_headers: list[tuple[bytes, bytes]], body: bytes) -> Submission:
        values: dict[str, str | int] = {}
        problems = []
        for key, raw in raw_headers:
            spec = _HEADERS.get(key)
            if spec is None:
                continue
            member, low, high, number = spec
            text = raw.decode("latin-1")
            if number:
                try:
                    value = int(text)
                except ValueError:
                    problems.append(f"Value '{text}' at '{_member_text(member)}' failed to satisfy constraint: "
                                    f"Member must be an integer")
                    continue
                if not low <= value <= high:
                    bound = (f"greater than or equal to {low}" if value < low else f"less than or equal to {high}")
                    problems.append(f"Value '{value}' at '{_member_text(member)}' failed to satisfy constraint: "
                                    f"Member must have value {bound}")
                    continue
                values[member] = value
            else:
                if not low <= len(text) <= high:
                    bound = (f"greater than or equal to {low}" if len(text) < low else f"less than or equal to {high}")
                    problems.append(f"Value at '{_member_text(member)}' failed to satisfy constraint: Member must "
                                    f"have length {bound}")
                    continue
                values[member] = text
        inference_id = values.get("InferenceId")
        if isinstance(inference_id, str) and not _INFERENCE_ID.fullmatch(inference_id):
            problems.append(f"Value '{inference_id}' at 'inferenceId' failed to satisfy constraint: Member must "
                            r"satisfy regular expression pattern: \A\S[\p{Print}]*\z")
        for member in ("S3OutputPathExtension", "Filename"):
            part = values.get(member)
            if isinstance(part, str) and (not _PATH_PART.fullmatch(part) or ".." in part.split("/")
                                          or part.startswith("/") or (member == "Filename" and "/" in part)):
                problems.append(f"Value '{part}' at '{_member_text(member)}' is not a relative path inside the "
                                f"output path")
        if problems:
            raise RuntimeValidationError(f"{len(problems)} validation error{'s' if len(problems) > 1 else ''} "
                                         f"detected: " + "; ".join(problems))
        has_body = bool(body)
        if "InputLocation" in values and has_body:
            raise RuntimeValidationError("InputLocation and Body are mutually exclusive: provide exactly one of them.")
        if "InputLocation" not in values and not has_body:
            raise RuntimeValidationError("Provide the request's payload: its InputLocation (an object's URI) or an "
                                         "inline Body.")
        return Submission(
            endpoint=name, inference_id=_str(values.get("InferenceId")),
            input_location=_str(values.get("InputLocation")),
            body=body if has_body else None, content_type=_str(values.get("ContentType")),
            accept=_str(values.get("Accept")), custom_attributes=_str(values.get("CustomAttributes")),
            ttl_seconds=int(values.get("RequestTTLSeconds", 21600)),
            invocation_timeout_seconds=int(values.get("InvocationTimeoutSeconds", 900)),
            output_extension=_str(values.get("S3OutputPathExtension")), filename=_str(values.get("Filename")))


def _str(value: str | int | None) -> str | None:
    return None if value is None else str(value)


class _AuthFailure(ApiError):
    """SigV4's refusal in the runtime's error shape (its code and status are the verifier's)."""

    def __init__(self, exc: AuthError):
        super().__init__(exc.message)
        self.code = exc.code
        self.status = exc.status
