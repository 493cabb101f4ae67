"""Who may do what: the roles of access keys, the map of every door's operations to what they need, and
the verifier that knows both the admin key and the keys made with ``moorage keys``.

Every operation of every door is of one kind (``READ``, ``INVOKE``, ``WRITE``, ``ADMIN``, or ``ANYONE``)
and each role may do some kinds (``ROLE_KINDS``):

- admin: everything, including making keys and device keys;
- deployer: models, endpoint configs, endpoints, jobs, monitors, fleets, scaling, alarms, objects,
  and invoking what it deploys (as AWS's SageMakerFullAccess allows);
- invoker: InvokeEndpoint, InvokeEndpointAsync and feedback (ground truth) only;
- viewer: Describe*, List*, Get*, Search and the other reads, metrics and logs included.

The map is data, read by ``kind_of``: AWS operations by their name (``READ_PREFIXES``, then the
exceptions in ``OPERATION_KINDS``), the native API by method and route (``NATIVE_ROUTE_KINDS``, else
GET/HEAD read and everything else writes), S3 by method. STS's GetCallerIdentity is anyone's: every SDK
asks it who it is. A deployer or invoker key may be limited to named endpoints: an operation that names
an endpoint (``EndpointName``, an autoscaling ``ResourceId`` of ``endpoint/NAME/...``, the runtime's
path, a native ``/endpoints/{name}`` route) must name one of them; the rest follow the role.

A refusal is answered as AWS words it (``AccessDeniedException``: "User: arn... is not authorized to
perform: sagemaker:CreateEndpoint on resource: ...") and logged with the access key id, never the secret.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from moorage.api.sigv4 import Action, Principal, SigV4Verifier
from moorage.control.access_keys import ADMIN as ADMIN_ROLE
from moorage.control.access_keys import DEPLOYER, INVOKER, VIEWER, AccessKeys
from moorage.errors import ApiError

__all__ = [
    "ADMIN",
    "ANYONE",
    "INVOKE",
    "NATIVE_ROUTE_KINDS",
    "OPERATION_KINDS",
    "READ",
    "ROLE_KINDS",
    "WRITE",
    "AccessDeniedException",
    "KeyedVerifier",
    "endpoint_names",
    "kind_of",
    "native_action",
]

log = logging.getLogger("moorage.access")

READ, INVOKE, WRITE, ADMIN, ANYONE = "read", "invoke", "write", "admin", "anyone"
ROLE_KINDS: dict[str, frozenset[str]] = {
    ADMIN_ROLE: frozenset({READ, INVOKE, WRITE, ADMIN, ANYONE}),
    DEPLOYER: frozenset({READ, INVOKE, WRITE, ANYONE}),
    INVOKER: frozenset({INVOKE, ANYONE}),
    VIEWER: frozenset({READ, ANYONE}),
}
# An AWS operation whose name starts so only reads.
READ_PREFIXES = ("Describe", "List", "Get", "Search", "BatchDescribe", "BatchGet", "Filter", "Query")
# AWS operations the prefixes misjudge, by (IAM service prefix, operation).
OPERATION_KINDS: dict[tuple[str, str], str] = {
    ("sts", "GetCallerIdentity"): ANYONE,
    ("sagemaker", "InvokeEndpoint"): INVOKE,
    ("sagemaker", "InvokeEndpointAsync"): INVOKE,
    ("sagemaker", "InvokeEndpointWithResponseStream"): INVOKE,
    ("logs", "StartQuery"): READ,
    ("logs", "StopQuery"): READ,
    ("logs", "StartLiveTail"): READ,
    ("sagemaker", "GetSearchSuggestions"): READ,
    ("sagemaker", "QueryLineage"): READ,
}
# Native routes (method, route) that are not what their method says.
NATIVE_ROUTE_KINDS: dict[tuple[str, str], str] = {
    ("POST", "/moorage/v1/endpoints/{name}/feedback"): INVOKE,
    ("POST", "/moorage/v1/endpoints/{name}/ground-truth"): INVOKE,
    # Keys are credentials: only the admin makes, sees, rotates or revokes them.
    ("GET", "/moorage/v1/access-keys"): ADMIN,
    ("POST", "/moorage/v1/access-keys"): ADMIN,
    ("DELETE", "/moorage/v1/access-keys/{key}"): ADMIN,
    ("POST", "/moorage/v1/access-keys/{key}/rotate"): ADMIN,
    ("POST", "/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys"): ADMIN,
    ("DELETE", "/moorage/v1/edge/fleets/{fleet}/devices/{device}/keys"): ADMIN,
}
_READ_METHODS = frozenset({"GET", "HEAD"})
NATIVE, S3 = "moorage", "s3"
_ENDPOINT_ROUTE = "/moorage/v1/endpoints/{name}"


def kind_of(action: Action) -> str:
    """What an operation needs: READ, INVOKE, WRITE, ADMIN or ANYONE (the map above)."""
    if action.service == NATIVE:
        method, _, route = action.operation.partition(" ")
        return NATIVE_ROUTE_KINDS.get((method, route)) or (READ if method in _READ_METHODS else WRITE)
    if action.service == S3:
        return READ if action.operation.partition(" ")[0] in _READ_METHODS else WRITE
    known = OPERATION_KINDS.get((action.service, action.operation))
    if known is not None:
        return known
    return READ if action.operation.startswith(READ_PREFIXES) else WRITE


def endpoint_names(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The endpoints an AWS request names: ``EndpointName``, or a scalable target's ``endpoint/NAME/...``."""
    names = []
    name = params.get("EndpointName")
    if isinstance(name, str):
        names.append(name)
    resource = params.get("ResourceId")
    if isinstance(resource, str) and resource.startswith("endpoint/"):
        names.append(resource.split("/")[1])
    return tuple(names)


def native_action(method: str, route: str, path_params: Mapping[str, Any]) -> Action:
    """The Action of a native route: ``METHOD /route/{template}``, with the endpoint it names."""
    named = (str(path_params["name"]),) if route.startswith(_ENDPOINT_ROUTE) and "name" in path_params else ()
    return Action(NATIVE, f"{method} {route}", named)


class AccessDeniedException(ApiError):
    code = "AccessDeniedException"
    status = 400


class KeyedVerifier(SigV4Verifier):
    """The verifier of every door but the device door: the admin keys and the stored access keys."""

    def __init__(self, admin_secrets: Mapping[str, str], *, account_id: str, region: str,
                 keys: AccessKeys | None = None, max_skew_seconds: int = 900) -> None:
        super().__init__(self._secret_for, max_skew_seconds, region=region)
        self._admin = dict(admin_secrets)
        self.account_id = account_id
        # Set once the store is open (the server builds its verifier first); until then only the admin signs.
        self.keys = keys

    @property
    def admin_secrets(self) -> dict[str, str]:
        return dict(self._admin)

    def replace_admin(self, admin_secrets: Mapping[str, str]) -> None:
        """A router worker's: the admin keys as the router sent them."""
        self._admin = dict(admin_secrets)

    def _secret_for(self, access_key_id: str) -> str | None:
        secret = self._admin.get(access_key_id)
        if secret is not None or self.keys is None:
            return secret
        key = self.keys.get(access_key_id)
        return key.secret_access_key if key is not None else None

    def role_of(self, access_key_id: str) -> str | None:
        if access_key_id in self._admin:
            return ADMIN_ROLE
        key = self.keys.get(access_key_id) if self.keys is not None else None
        return key.role if key is not None else None

    def authorize(self, principal: Principal, action: Action) -> None:
        key_id = principal.access_key_id
        if key_id in self._admin:  # the hot path's usual caller: one dict lookup
            return
        key = self.keys.get(key_id) if self.keys is not None else None
        kind = kind_of(action)
        if key is not None and kind in ROLE_KINDS.get(key.role, ()):
            outside = [] if key.endpoints is None else [e for e in action.endpoints if e not in key.endpoints]
            if not outside:
                return
            denied_on = outside
        else:
            denied_on = list(action.endpoints)
        role = key.role if key is not None else "revoked"
        name = action.operation if action.service != NATIVE else action.operation.replace(" ", ":", 1)
        iam_action = f"{action.service}:{name}"
        resource = (f"arn:aws:sagemaker:{self.region}:{self.account_id}:endpoint/{denied_on[0].lower()}" if denied_on
                    else f"arn:aws:{action.service}:{self.region}:{self.account_id}:*")
        log.warning("access denied: key %s (%s) may not %s (%s) on %s", key_id, role, iam_action, kind, resource)
        raise AccessDeniedException(
            f"User: arn:aws:iam::{self.account_id}:user/{key_id} is not authorized to perform: {iam_action} on "
            f"resource: {resource} because no identity-based policy allows the {iam_action} action")
