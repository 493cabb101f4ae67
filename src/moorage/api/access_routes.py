"""Native routes of access keys (``control/access_keys.py``), the admin's only (``api/access.py``'s map):

- ``POST /moorage/v1/access-keys`` ``{"Role": "invoker", "EndpointNames": ["a", "b"]}``: a new key, its
  ``SecretAccessKey`` in this reply and never again;
- ``GET /moorage/v1/access-keys``: ``{"AccessKeys": [{"AccessKeyId", "Role", "CreationTime",
  "EndpointNames"?}]}``, no secrets; the admin key is listed as ``admin`` with ``"Source": "server"``;
- ``DELETE /moorage/v1/access-keys/{key}``: revoke; what it signs fails from the next request on;
- ``POST /moorage/v1/access-keys/{key}/rotate``: a new key with the same role and endpoints, the old
  one revoked; answers the new key with its secret and ``ReplacedAccessKeyId``.

Through the native API's signed seam like every native route (``moorage.api.signed``).
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from moorage.api.signed import signed_route
from moorage.control.access_keys import ADMIN, AccessKeys
from moorage.errors import SerializationException, ValidationException

log = logging.getLogger("moorage.access")


def access_key_routes(keys: AccessKeys, admin_key_ids: list[str]) -> list[Route]:
    async def create(request: Request, body: bytes) -> dict[str, Any]:
        try:
            document = orjson.loads(body or b"{}")
        except orjson.JSONDecodeError as exc:
            raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
        if not isinstance(document, dict):
            raise SerializationException("Request body must be a JSON object.")
        role, endpoints = document.get("Role"), document.get("EndpointNames")
        if not isinstance(role, str):
            raise ValidationException("Role is required: one of admin, deployer, invoker, viewer.")
        if endpoints is not None and (not isinstance(endpoints, list)
                                      or not all(isinstance(e, str) for e in endpoints)):
            raise ValidationException("EndpointNames must be a list of endpoint names.")
        key = keys.create(role, endpoints)
        log.info("access key %s created (%s)", key.access_key_id, key.role)
        return key.issued()

    async def list_keys(request: Request, body: bytes) -> dict[str, Any]:
        admins = [{"AccessKeyId": key_id, "Role": ADMIN, "Source": "server"} for key_id in admin_key_ids]
        return {"AccessKeys": admins + [key.describe() for key in keys.list()]}

    async def revoke(request: Request, body: bytes) -> dict[str, Any]:
        key_id = request.path_params["key"]
        _not_admin(key_id, admin_key_ids)
        key = keys.revoke(key_id)
        log.info("access key %s revoked (%s)", key.access_key_id, key.role)
        return {"AccessKeyId": key.access_key_id, "Revoked": True}

    async def rotate(request: Request, body: bytes) -> dict[str, Any]:
        key_id = request.path_params["key"]
        _not_admin(key_id, admin_key_ids)
        key = keys.rotate(key_id)
        log.info("access key %s rotated into %s (%s)", key_id, key.access_key_id, key.role)
        return {**key.issued(), "ReplacedAccessKeyId": key_id}

    return [signed_route("/moorage/v1/access-keys", create, ["POST"]),
            signed_route("/moorage/v1/access-keys", list_keys, ["GET"]),
            signed_route("/moorage/v1/access-keys/{key}", revoke, ["DELETE"]),
            signed_route("/moorage/v1/access-keys/{key}/rotate", rotate, ["POST"])]


def _not_admin(key_id: str, admin_key_ids: list[str]) -> None:
    if key_id in admin_key_ids:
        raise ValidationException(f"{key_id} is the server's admin key: change it where the server finds it "
                                  "(MOORAGE_ACCESS_KEY_ID/MOORAGE_SECRET_ACCESS_KEY, or the home's credentials file).")
