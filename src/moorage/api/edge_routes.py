"""The device door: what edge agents call, signed with their own device keys; and the admin's edge routes.

Edge agents speak SageMaker Edge Manager's device API (botocore's ``sagemaker-edge`` model, rest-json,
signed for service ``sagemaker``), which drives validation and shapes here as botocore's models do on
every door (``api/shapes.py``):

- ``POST /SendHeartbeat``: the agent's version, metrics (spool backlog, dropped records, last sync,
  errors), its models and the outcome of its last package switch; one write to the device's row.
- ``POST /GetDeployments``: the fleet's current package (``Definitions[0]``: ModelHandle, Checksum SHA1,
  State DEPLOY; FailureHandlingPolicy ROLLBACK_ON_FAILURE).
- ``POST /GetDeviceRegistration``: whether the device is registered.

and two moorage routes, for what Edge Manager did through S3 and IoT:

- ``GET /moorage/v1/edge/fleets/{fleet}/packages/{model_handle}``: a package published to the fleet,
  streamed from the home.
- ``PUT /moorage/v1/edge/fleets/{fleet}/devices/{device}/capture/{segment}``: one sealed spool segment
  (at most 16 MiB, its body hash signed), stored whole and idempotently where the fleet's capture lands
  (``control/edge_capture.py``); the answer names the stored key.

Who may call: this door's verifier knows the admin key and every device key (``control/edge_devices.py``
``DeviceKeys``: a cache the key operations invalidate); a device key may act only for its own device
and fleet (a package: any device of its fleet), anything else is AccessDeniedException (403, AWS's JSON
error). Every other door keeps the admin-only verifier, so a device key opens nothing else: not the
SageMaker API, the runtime, the S3 API or the native API. Errors are rendered by the native seam's
``error_response`` (``api/signed.py``); the routes verify here, not through ``signed_route``, because
they need to know who signed.

The admin's routes (native API, admin key, ``edge_admin_routes``):

- ``POST /moorage/v1/edge/fleets/{fleet}/devices/{device}/keys``: a new access key for the device
  (the old one stops working); the secret is in this answer only. ``DELETE`` the same path revokes it.
- ``POST /moorage/v1/edge/fleets/{fleet}/deployments``: publish a package, as the body (streamed; its
  SHA-256 declared in X-Amz-Content-SHA256) or ``{"PackageUrl": "s3://..."}`` (``application/json``,
  also with its hash declared), verified against the home's signing key (``control/edge_deployments.py``).
  ``GET`` the same path: the current deployment and the ones before.
- ``GET /moorage/v1/edge/devices[?DeviceFleetName=F]``: every device with what its agent last reported,
  including what DescribeDevice's shape has no member for (backlog, dropped, last sync, errors).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import IO, Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from moorage.api.shapes import RequestValidationError, ServiceShapes
from moorage.api.signed import json_reply, native_app, read_request_body, signed_route, signed_streaming_route
from moorage.api.sigv4 import MSG_PAYLOAD_HASH, AuthError, SigV4Verifier
from moorage.control.edge_capture import MAX_SEGMENT_BYTES, store_segment
from moorage.control.edge_deployments import EdgeDeployments
from moorage.control.edge_devices import DEVICE, DeviceKeys, KeyOwner, device_row_name, record_heartbeat
from moorage.control.edge_fleets import EdgeFleets
from moorage.errors import ApiError, ContentTooLarge, SerializationException, ValidationException

__all__ = ["EDGE_OPERATION_PATHS", "EdgeDeviceDoor", "edge_admin_routes", "is_device_path"]

# The sagemaker-edge operations, by the path rest-json sends each to.
EDGE_OPERATION_PATHS = frozenset({"/SendHeartbeat", "/GetDeployments", "/GetDeviceRegistration"})
MAX_OPERATION_BODY = 1024 * 1024
MAX_PUBLISH_JSON = 64 * 1024
# How long an agent may trust a GetDeviceRegistration answer (CacheTTL, seconds).
REGISTRATION_TTL = "60"
# sagemaker-edge's signing name (botocore's model): devices sign for SageMaker.
EDGE_SIGNING_NAME = "sagemaker"
_WRITE_BATCH = 1024 * 1024

Caller = KeyOwner | None  # None: the admin key


def is_device_path(path: str) -> bool:
    """Whether ``path`` is one of the device door's two moorage routes (package download, capture upload)."""
    if not path.startswith("/moorage/v1/edge/fleets/"):
        return False
    parts = path.split("/")  # "", moorage, v1, edge, fleets, {fleet}, ...
    return ((len(parts) == 8 and parts[6] == "packages")
            or (len(parts) == 10 and parts[6] == "devices" and parts[8] == "capture"))


def _access_denied(key_id: str, owner: KeyOwner, fleet: str, device: str | None) -> AuthError:
    wanted = f"device {device} of fleet {fleet}" if device is not None else f"fleet {fleet}"
    return AuthError("AccessDeniedException", f"Access key {key_id} is device {owner.device}'s of fleet {owner.fleet}; "
                     f"it may not act for {wanted}.", 403)


class EdgeDeviceDoor:
    """The ASGI app of the device door (``app.py`` sends it the paths ``is_device_path`` and
    ``EDGE_OPERATION_PATHS`` name)."""

    def __init__(self, admin_secrets: Mapping[str, str], keys: DeviceKeys, fleets: EdgeFleets,
                 deployments: EdgeDeployments, region: str | None = None) -> None:
        self._admin = dict(admin_secrets)
        self.keys = keys
        self.fleets = fleets
        self.deployments = deployments
        self.verifier = SigV4Verifier(self._secret_for, region=region)
        # Model handles are "{name}-{version}" and versions carry dots (SageMaker's Version allows them), which
        # sagemaker-edge's EntityName pattern does not: its length is still checked, its pattern is not.
        self.shapes = ServiceShapes("sagemaker-edge", unchecked_patterns=("EntityName",))
        self.app: Starlette = native_app(self.verifier, [
            Route("/SendHeartbeat", self._operation("SendHeartbeat", self._send_heartbeat), methods=["POST"]),
            Route("/GetDeployments", self._operation("GetDeployments", self._get_deployments), methods=["POST"]),
            Route("/GetDeviceRegistration", self._operation("GetDeviceRegistration", self._get_registration),
                  methods=["POST"]),
            Route("/moorage/v1/edge/fleets/{fleet}/packages/{handle}", self._get_package, methods=["GET"]),
            Route("/moorage/v1/edge/fleets/{fleet}/devices/{device}/capture/{segment}", self._put_capture,
                  methods=["PUT"]),
        ])

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)

    # -- who signed ------------------------------------------------------------------------------------

    def _secret_for(self, key_id: str) -> str | None:
        secret = self._admin.get(key_id)
        return secret if secret is not None else self.keys.secret(key_id)

    def _verify(self, request: Request, body: bytes, payload_hash: str | None = None) -> tuple[str, Caller]:
        """(the access key id that signed, whose it is: None for the admin)."""
        scope = request.scope
        principal = self.verifier.verify(request.method, scope.get("raw_path") or scope["path"].encode(),
                                          scope.get("query_string", b""), scope["headers"], body,
                                          payload_hash=payload_hash, service=EDGE_SIGNING_NAME)
        key_id = principal.access_key_id
        if key_id in self._admin:
            return key_id, None
        owner = self.keys.owner(key_id)
        if owner is None:  # revoked between the signature check and now
            raise AuthError("UnrecognizedClientException", "The security token included in the request is invalid.")
        return key_id, owner

    @staticmethod
    def _authorize(signer: tuple[str, Caller], fleet: str, device: str | None) -> None:
        key_id, caller = signer
        if caller is None:
            return
        if caller.fleet != fleet or (device is not None and caller.device != device):
            raise _access_denied(key_id, caller, fleet, device)

    # -- the sagemaker-edge operations -------------------------------------------------------------------

    def _operation(self, name: str, handler: Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
                   ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            body = await read_request_body(request, MAX_OPERATION_BODY)
            signer = self._verify(request, body)
            try:
                params = orjson.loads(body) if body.strip() else {}
            except orjson.JSONDecodeError as exc:
                raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
            if not isinstance(params, dict):
                raise SerializationException("Request body must be a JSON object.")
            try:
                self.shapes.validate_input(name, params)
            except RequestValidationError as exc:
                raise ValidationException(exc.message) from exc
            self._authorize(signer, params["DeviceFleetName"], params["DeviceName"])
            result = await handler(params)
            return json_reply(self.shapes.shape_output(name, result))

        endpoint.__name__ = name
        return endpoint

    async def _send_heartbeat(self, params: dict[str, Any]) -> dict[str, Any]:
        row = self.fleets.device(params["DeviceFleetName"], params["DeviceName"])
        record_heartbeat(self.fleets.ctx.store, row, params, time.time())
        return {}

    async def _get_deployments(self, params: dict[str, Any]) -> dict[str, Any]:
        self.fleets.device(params["DeviceFleetName"], params["DeviceName"])
        return {"Deployments": self.deployments.edge_deployments(params["DeviceFleetName"])}

    async def _get_registration(self, params: dict[str, Any]) -> dict[str, Any]:
        row = self.fleets.ctx.store.get(DEVICE, device_row_name(params["DeviceFleetName"], params["DeviceName"]))
        return {"DeviceRegistration": "REGISTERED" if row is not None else "NOT_REGISTERED",
                "CacheTTL": REGISTRATION_TTL}

    # -- packages and capture --------------------------------------------------------------------------------

    async def _get_package(self, request: Request) -> Response:
        body = await read_request_body(request, 0)
        signer = self._verify(request, body)
        fleet, handle = request.path_params["fleet"], request.path_params["handle"]
        self._authorize(signer, fleet, None)
        path, row = self.deployments.package_file(fleet, handle)
        return FileResponse(path, media_type="application/gzip", filename=f"{handle}.tar.gz",
                            headers={"x-moorage-checksum-sha1": row.body["Sha1"]})

    async def _put_capture(self, request: Request) -> Response:
        declared = request.headers.get("x-amz-content-sha256", "").strip().lower()
        if len(declared) == 64 and all(c in "0123456789abcdef" for c in declared):
            # The agent declares its body's hash: the signature is checked before 16 MiB are taken in.
            signer = self._verify(request, b"", payload_hash=declared)
            body = await read_request_body(request, MAX_SEGMENT_BYTES)
            if hashlib.sha256(body).hexdigest() != declared:
                raise AuthError("InvalidSignatureException", MSG_PAYLOAD_HASH)
        else:
            body = await read_request_body(request, MAX_SEGMENT_BYTES)
            signer = self._verify(request, body)
        fleet, device, segment = (request.path_params[k] for k in ("fleet", "device", "segment"))
        self._authorize(signer, fleet, device)
        output = self.fleets.fleet(fleet).body["OutputConfig"]["S3OutputLocation"]
        self.fleets.device(fleet, device)
        try:
            stored = await asyncio.to_thread(store_segment, output, fleet, device, segment, body)
        except OSError as exc:
            raise ApiError(str(exc)) from exc
        return json_reply(stored.as_dict())


# -- the admin's routes (native API, admin-only verifier) ------------------------------------------------------


def edge_admin_routes(fleets: EdgeFleets, keys: DeviceKeys, deployments: EdgeDeployments) -> list[Route]:
    region = fleets.ctx.settings.region

    async def issue_key(request: Request, body: bytes) -> dict[str, Any]:
        fleet, device = request.path_params["fleet"], request.path_params["device"]
        fleets.device(fleet, device)
        issued = keys.issue(fleet, device)
        return {"AccessKeyId": issued.access_key_id, "SecretAccessKey": issued.secret_access_key,
                "DeviceName": device, "DeviceFleetName": fleet, "Region": region}

    async def revoke_key(request: Request, body: bytes) -> dict[str, Any]:
        fleet, device = request.path_params["fleet"], request.path_params["device"]
        fleets.device(fleet, device)
        return {"DeviceName": device, "DeviceFleetName": fleet, "Revoked": keys.revoke(fleet, device)}

    async def list_devices(request: Request, body: bytes) -> dict[str, Any]:
        return {"Devices": fleets.device_statuses(request.query_params.get("DeviceFleetName") or None)}

    async def get_deployments(request: Request, body: bytes) -> dict[str, Any]:
        return deployments.summary(request.path_params["fleet"])

    async def publish(request: Request, declared_sha256: str) -> dict[str, Any]:
        fleet = request.path_params["fleet"]
        fleets.fleet(fleet)  # before a byte is received
        content_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
        if content_type == "application/json":
            raw = await read_request_body(request, MAX_PUBLISH_JSON)
            if hashlib.sha256(raw).hexdigest() != declared_sha256:
                raise AuthError("InvalidSignatureException", MSG_PAYLOAD_HASH)
            try:
                doc = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
            url = doc.get("PackageUrl") if isinstance(doc, dict) else None
            if not isinstance(url, str) or not url:
                raise ValidationException('A JSON body names the package: {"PackageUrl": "s3://..."}; or send the '
                                          "package itself as the body (application/gzip).")
            staged = await asyncio.to_thread(deployments.copy_from, url)
            return await asyncio.to_thread(deployments.publish, fleet, staged, url)
        staged = await _receive_package(request, deployments.staged_file(), declared_sha256)
        return await asyncio.to_thread(deployments.publish, fleet, staged, None)

    return [
        signed_route("/moorage/v1/edge/devices", list_devices, ["GET"]),
        signed_route("/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys", issue_key, ["POST"]),
        signed_route("/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys", revoke_key, ["DELETE"]),
        signed_route("/moorage/v1/edge/fleets/{fleet}/deployments", get_deployments, ["GET"]),
        signed_streaming_route("/moorage/v1/edge/fleets/{fleet}/deployments", publish, ["POST"]),
    ]


async def _receive_package(request: Request, staged: Path, declared_sha256: str) -> Path:
    """The request's body in ``staged``, whole and hashing to what the signature covers; removed on failure."""
    from moorage.edge.package import MAX_ARCHIVE_BYTES

    digest = hashlib.sha256()
    handle: IO[bytes] = await asyncio.to_thread(open, staged, "wb")
    try:
        pending = bytearray()
        received = 0
        async for chunk in request.stream():
            received += len(chunk)
            if received > MAX_ARCHIVE_BYTES:
                raise ContentTooLarge(f"A package is at most {MAX_ARCHIVE_BYTES} bytes.")
            pending += chunk
            if len(pending) >= _WRITE_BATCH:
                block = bytes(pending)
                pending.clear()
                digest.update(block)
                await asyncio.to_thread(handle.write, block)
        digest.update(pending)
        await asyncio.to_thread(handle.write, bytes(pending))
        await asyncio.to_thread(handle.close)
        if digest.hexdigest() != declared_sha256:
            raise AuthError("InvalidSignatureException", MSG_PAYLOAD_HASH)
        if received == 0:
            raise ValidationException("The request has no body: send the package (or a JSON {\"PackageUrl\": ...}).")
    except BaseException:
        handle.close()
        staged.unlink(missing_ok=True)
        raise
    return staged
