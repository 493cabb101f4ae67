"""One S3 request as the operations see it: addressed bucket and key, query, headers, signature; answers.

Addressing is path-style (``/BUCKET/KEY``, what boto3 uses with an ``endpoint_url``) or virtual-host
style for ``BUCKET.localhost[:PORT]``. The key is decoded from the raw path (strict UTF-8), not from
ASGI's ``path``, which replaces bytes it cannot decode.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote_to_bytes

from moorage.api.responses import Receive, Scope, Send
from moorage.api.s3.xml import XML, error_document
from moorage.api.sigv4 import AuthError, S3Signature
from moorage.store.objects import ObjectStoreError

REGION_HEADER = b"x-amz-bucket-region"


@dataclass
class S3Request:
    scope: Scope
    receive: Receive
    send: Send
    method: str
    bucket: str
    key: str
    query: dict[str, str]
    headers: dict[str, str]
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16].upper())
    _receive: Receive | None = None
    signed: S3Signature | None = None
    answered: bool = False
    body_done: bool = False  # the whole request body was received

    @property
    def resource(self) -> str:
        return "/" + self.bucket + ("/" + self.key if self.key else "") if self.bucket else "/"

    def base_headers(self) -> list[tuple[bytes, bytes]]:
        return [(b"x-amz-request-id", self.request_id.encode()), (b"x-amz-id-2", self.request_id.encode())]

    async def respond(self, status: int, body: bytes = b"", headers: list[tuple[bytes, bytes]] | None = None,
                      content_type: bytes | None = XML) -> None:
        out = self.base_headers()
        if content_type is not None and body:
            out.append((b"content-type", content_type))
        out += headers or []
        if not any(name == b"content-length" for name, _ in out):
            out.append((b"content-length", str(len(body)).encode()))
        if self.unread_body():
            out.append((b"connection", b"close"))
        self.answered = True
        await self.send({"type": "http.response.start", "status": status, "headers": out})
        await self.send({"type": "http.response.body", "body": b"" if self.method == "HEAD" else body})

    async def error(self, error: ObjectStoreError) -> None:
        headers = [(REGION_HEADER, b"us-east-1")] if error.code == "NoSuchBucket" else []
        if self.method == "HEAD":  # no body: botocore tells a HEAD's error by its status alone
            await self.respond(error.status, b"", headers)
            return
        body = error_document(error.code, error.message, self.resource, self.request_id, error.fields)
        await self.respond(error.status, body, headers)

    def unread_body(self) -> bool:
        """Whether the request has a body this answer leaves unread. The connection must then close: a
        client that sent ``Expect: 100-continue`` never sends it, and the server would read its next
        request as the rest of this body."""
        if self.body_done:
            return False
        length = self.headers.get("content-length", "0").strip()
        return "transfer-encoding" in self.headers or (length.isdigit() and int(length) > 0)

    async def track(self) -> dict[str, Any]:
        assert self._receive is not None
        message: dict[str, Any] = await self._receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            self.body_done = True
        return message

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def user_metadata(self) -> dict[str, str]:
        return {name[len("x-amz-meta-"):]: value for name, value in self.headers.items()
                if name.startswith("x-amz-meta-")}


def parse_request(scope: Scope, receive: Receive, send: Send) -> S3Request:
    headers: dict[str, str] = {}
    for name, value in scope["headers"]:
        text = name.decode("latin-1")
        headers[text] = headers[text] + "," + value.decode("latin-1") if text in headers else value.decode("latin-1")
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    query = {k: v for k, v in parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)}
    request = S3Request(scope, receive, send, scope["method"], "", "", query, headers)
    request._receive, request.receive = receive, request.track
    host = headers.get("host", "").rsplit(":", 1)[0] if not headers.get("host", "").startswith("[") else ""
    try:
        path = unquote_to_bytes(raw_path).decode("utf-8")
    except UnicodeDecodeError:
        raise ObjectStoreError("InvalidURI", "Couldn't parse the specified URI: the path is not UTF-8.") from None
    if host.endswith(".localhost") and host != ".localhost":
        request.bucket = host[: -len(".localhost")]
        request.key = path[1:] if path.startswith("/") else path
    else:
        bucket, _, key = path[1:].partition("/") if path.startswith("/") else ("", "", "")
        request.bucket, request.key = bucket, key
    return request


# What the signature checker's codes (AWS JSON services' names) are on S3.
def s3_auth_error(error: AuthError, presigned: bool) -> ObjectStoreError:
    message = error.message
    if error.code == "MissingAuthenticationTokenException":
        return ObjectStoreError("AccessDenied", "Access Denied", 403)
    if error.code == "UnrecognizedClientException":
        return ObjectStoreError("InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our "
                                "records.", 403)
    if error.code == "IncompleteSignatureException":
        code = "AuthorizationQueryParametersError" if presigned else "AuthorizationHeaderMalformed"
        return ObjectStoreError(code, message, 400)
    if error.code == "InvalidSignatureException":
        if message.startswith("Signature expired") and presigned:
            return ObjectStoreError("AccessDenied", "Request has expired", 403)
        if message.startswith(("Signature expired", "Signature not yet current")):
            return ObjectStoreError("RequestTimeTooSkewed", "The difference between the request time and the "
                                    f"current time is too large. ({message})", 403)
        if message.startswith("Date in Credential scope"):
            return ObjectStoreError("AuthorizationHeaderMalformed", message, 400)
        return ObjectStoreError("SignatureDoesNotMatch", message, 403)
    return ObjectStoreError(error.code, message, error.status)


def is_presigned(scope: Scope) -> bool:
    query: bytes = scope.get("query_string", b"")
    return b"X-Amz-Signature=" in query or b"X-Amz-Credential=" in query


def s3_scope_in(scope: dict[str, Any]) -> bool:
    """Whether a request is signed for service ``s3`` (header or presigned URL): one look at the
    Authorization header, or at the query, for the credential scope's ``/s3/aws4_request``."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            return b"/s3/aws4_request" in value
    query: bytes = scope.get("query_string", b"")
    if not query:
        return False
    if b"X-Amz-Credential=" in query:
        return b"%2Fs3%2Faws4_request" in query or b"%2fs3%2faws4_request" in query or b"/s3/aws4_request" in query
    return is_sigv2_presigned(query)


def is_sigv2_presigned(query: bytes) -> bool:
    """A URL presigned with S3's old signature (boto3's generate_presigned_url unless told s3v4): only
    S3 ever had it, so it is S3's, and its answer says how to presign instead."""
    return b"AWSAccessKeyId=" in query and b"Signature=" in query
