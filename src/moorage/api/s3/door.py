"""The S3 front door: requests signed for service ``s3`` on moorage's port, dispatched to operations.

``api/app.py`` sends a request here when its SigV4 credential scope names ``s3`` (after the
``/endpoints/`` runtime path, which stays first). The door checks the signature S3's way
(``SigV4Verifier.verify_s3``), names the operation from method, address and subresource as S3's
REST API does, and answers S3's XML; every error is an S3 error document with S3's code and status.
Operations S3 has and moorage does not (ACLs, policies, versioning, tagging, ...) answer
``NotImplemented`` (501) naming the subresource.

With ``MOORAGE_OBJECT_STORE=external`` the objects live in another S3-compatible service, and every
request here is answered with a 501 that says to use that service's own endpoint: proxying it would
sign for a second set of credentials and stream every byte twice for no gain.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from moorage.api.responses import Receive, Scope, Send
from moorage.api.s3 import multipart, operations
from moorage.api.s3.bodies import ClientGone
from moorage.api.s3.request import S3Request, is_presigned, is_sigv2_presigned, parse_request, s3_auth_error
from moorage.api.s3.xml import XML, error_document
from moorage.api.sigv4 import Action, AuthError, ScopeError, SigV4Verifier
from moorage.errors import ApiError
from moorage.store.objects import ObjectStore, ObjectStoreError

log = logging.getLogger("moorage.s3")

Operation = Callable[[S3Request, ObjectStore], Awaitable[None]]

# Query parameters that are arguments of an operation, not a subresource naming another one.
_ARGUMENTS = frozenset({
    "prefix", "delimiter", "max-keys", "marker", "continuation-token", "start-after", "encoding-type", "fetch-owner",
    "list-type", "key-marker", "upload-id-marker", "max-uploads", "part-number-marker", "max-parts", "partNumber",
    "uploadId", "versionId", "x-id", "max-buckets", "bucket-region",
    "response-content-type", "response-content-language", "response-expires", "response-cache-control",
    "response-content-disposition", "response-content-encoding",
})
# The subresources moorage implements, by (has a key, method).
_SUBRESOURCES: dict[tuple[bool, str, str], Operation] = {
    (False, "GET", "location"): operations.get_bucket_location,
    (False, "GET", "uploads"): multipart.list_multipart_uploads,
    (False, "POST", "delete"): operations.delete_objects,
    (True, "POST", "uploads"): multipart.create_multipart_upload,
}


def _operation(request: S3Request) -> Operation:
    method, query, has_key = request.method, request.query, bool(request.key)
    subresources = [name for name in query if name not in _ARGUMENTS and not name.startswith("X-Amz-")]
    if not request.bucket:
        if method == "GET" and not subresources:
            return operations.list_buckets
        raise _not_implemented(request, subresources)
    if subresources:
        found = _SUBRESOURCES.get((has_key, method, subresources[0])) if len(subresources) == 1 else None
        if found is None:
            raise _not_implemented(request, subresources)
        return found
    if not has_key:
        bucket_operations: dict[str, Operation] = {
            "GET": operations.list_objects, "PUT": operations.create_bucket, "HEAD": operations.head_bucket,
            "DELETE": operations.delete_bucket}
        if method in bucket_operations:
            return bucket_operations[method]
        raise _not_implemented(request, subresources)
    upload = "uploadId" in query
    if method == "PUT":
        if upload and "partNumber" in query:
            return multipart.upload_part
        if "x-amz-copy-source" in request.headers:
            return operations.copy_object
        return operations.put_object
    if method == "GET":
        return multipart.list_parts if upload else operations.get_object
    if method == "HEAD":
        return operations.head_object
    if method == "DELETE":
        return multipart.abort_multipart_upload if upload else operations.delete_object
    if method == "POST" and upload:
        return multipart.complete_multipart_upload
    raise _not_implemented(request, subresources)


def _not_implemented(request: S3Request, subresources: list[str]) -> ObjectStoreError:
    what = f"{request.method} ?{'&'.join(subresources)}" if subresources else f"{request.method} on this address"
    return ObjectStoreError("NotImplemented", f"A header or query you provided implies functionality that is not "
                            f"implemented: moorage's S3 API does not implement {what}.", 501)


class S3FrontDoor:
    def __init__(self, verifier: SigV4Verifier, store: ObjectStore | None) -> None:
        self.verifier = verifier
        self.store = store  # None: the objects are in an external store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            request = parse_request(scope, receive, send)
        except ObjectStoreError as exc:
            body = error_document(exc.code, exc.message, "/", "0", exc.fields)
            await send({"type": "http.response.start", "status": exc.status,
                        "headers": [(b"content-type", XML), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        try:
            if is_sigv2_presigned(scope.get("query_string", b"")):
                raise ObjectStoreError("AccessDenied", "moorage's S3 API verifies Signature Version 4 only: presign "
                                       "with botocore.config.Config(signature_version='s3v4').", 403)
            try:
                request.signed = self.verifier.verify_s3(request.method, scope.get("raw_path") or
                                                         scope["path"].encode(), scope.get("query_string", b""),
                                                         scope["headers"])
            except ScopeError as exc:
                raise _scope_error(exc, is_presigned(scope)) from None
            except AuthError as exc:
                raise s3_auth_error(exc, is_presigned(scope)) from None
            try:
                self.verifier.authorize(request.signed.principal, Action("s3", f"{request.method} {request.resource}"))
            except ApiError:
                # S3 says no more than this; the refusal is logged with the key id by the verifier.
                raise ObjectStoreError("AccessDenied", "Access Denied", 403) from None
            if self.store is None:
                raise ObjectStoreError(
                    "NotImplemented", "This moorage server keeps s3:// objects in an external store "
                    "(MOORAGE_OBJECT_STORE=external: the one AWS_ENDPOINT_URL_S3 names, else AWS S3): use that "
                    "store's own endpoint for the S3 API.", 501)
            await _operation(request)(request, self.store)
        except ObjectStoreError as exc:
            if not request.answered:
                await request.error(exc)
        except ClientGone:
            return
        except Exception:
            log.exception("S3 %s %s failed", request.method, request.resource)
            if not request.answered:
                await request.error(ObjectStoreError("InternalError", "We encountered an internal error. Please "
                                                     "try again.", 500))


def _scope_error(exc: ScopeError, presigned: bool) -> ObjectStoreError:
    """A credential scoped to another region or service, in S3's words (S3 names the region it expected)."""
    if presigned:
        code, prefix = "AuthorizationQueryParametersError", "Error parsing the X-Amz-Credential parameter; "
    else:
        code, prefix = "AuthorizationHeaderMalformed", "The authorization header is malformed; "
    if exc.region != exc.expected_region:
        return ObjectStoreError(code, f"{prefix}the region '{exc.region}' is wrong; expecting '{exc.expected_region}'",
                                400, Region=exc.expected_region)
    return ObjectStoreError(code, f"{prefix}incorrect service '{exc.service}'. This endpoint belongs to "
                            f"'{exc.expected_service}'.", 400)
