"""Access keys with roles: who, besides the admin, may sign requests to this server, and for what.

A key has a role (``ROLES``: admin, deployer, invoker, viewer; what each may do is
``api/access.py``'s map) and, for a deployer or an invoker, optionally the endpoints it is limited to.
SigV4 is an HMAC, so the server must hold each secret itself, not a hash of it: keys are rows of kind
``access-key`` (named by the access key id) in the metadata database, which lives in the home (0700,
files 0600: ``server.py``), as device keys are (``control/edge_devices.py``). ``AccessKeys`` caches
them in memory, since the verifier looks one up on every request, and drops the cache on each change;
this server is the database's only writer. A secret is returned once, by the call that made it, and
never listed, described or logged.

The admin key (``credentials.py``) is not a row: it is the server's own and always admin.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from moorage.control.context import Context
from moorage.errors import ResourceNotFound, ValidationException
from moorage.store.metadata import AlreadyExists

ACCESS_KEY = "access-key"
ADMIN, DEPLOYER, INVOKER, VIEWER = "admin", "deployer", "invoker", "viewer"
ROLES = (ADMIN, DEPLOYER, INVOKER, VIEWER)
# The roles whose keys may be limited to named endpoints: the others either reach everything (admin)
# or only read (viewer), where a limit would hide nothing the key could change.
SCOPABLE = (DEPLOYER, INVOKER)
_KEY_ALPHABET = string.ascii_uppercase + string.digits
# SageMaker's EndpointName pattern.
_ENDPOINT_CHARS = frozenset(string.ascii_letters + string.digits + "-")


@dataclass(frozen=True)
class AccessKey:
    """A key as the server checks it: the secret stays out of every reply but the one that made it."""

    access_key_id: str
    secret_access_key: str
    role: str
    endpoints: tuple[str, ...] | None  # None: every endpoint
    created: float

    def describe(self) -> dict[str, Any]:
        """The key without its secret."""
        doc: dict[str, Any] = {"AccessKeyId": self.access_key_id, "Role": self.role, "CreationTime": self.created}
        if self.endpoints is not None:
            doc["EndpointNames"] = list(self.endpoints)
        return doc

    def issued(self) -> dict[str, Any]:
        """The key with its secret: only the reply to create and rotate."""
        return {**self.describe(), "SecretAccessKey": self.secret_access_key}


def _from_row(name: str, body: dict[str, Any]) -> AccessKey:
    endpoints = body.get("EndpointNames")
    return AccessKey(name, str(body["SecretAccessKey"]), str(body["Role"]),
                     tuple(endpoints) if endpoints is not None else None, float(body.get("CreationTime", 0.0)))


def check_grant(role: str, endpoints: list[str] | None) -> tuple[str, tuple[str, ...] | None]:
    """A role and endpoint list as a key may have them, or a ValidationException saying why not."""
    if role not in ROLES:
        raise ValidationException(f"Role '{role}' is not one of {', '.join(ROLES)}.")
    if endpoints is None:
        return role, None
    if role not in SCOPABLE:
        raise ValidationException(f"Only {' and '.join(SCOPABLE)} keys can be limited to endpoints; a {role} key "
                                  "cannot.")
    names = tuple(dict.fromkeys(e.strip() for e in endpoints if e.strip()))
    if not names:
        raise ValidationException("EndpointNames must name at least one endpoint.")
    for name in names:
        if len(name) > 63 or not set(name) <= _ENDPOINT_CHARS or name.startswith("-"):
            raise ValidationException(f"'{name}' is not an endpoint name (1-63 letters, digits and hyphens).")
    return role, names


class AccessKeys:
    """The access keys in the store, and the cache the verifier reads."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._cache: dict[str, AccessKey] | None = None
        # Called after every change (from whichever thread made it): the router's workers hold copies.
        self.on_change: list[Callable[[], None]] = []

    def _keys(self) -> dict[str, AccessKey]:
        cache = self._cache
        if cache is None:
            with self._lock:
                cache = self._cache
                if cache is None:
                    cache = {row.name: _from_row(row.name, row.body) for row in self.ctx.store.list(ACCESS_KEY)}
                    self._cache = cache
        return cache

    def _invalidate(self) -> None:
        with self._lock:
            self._cache = None
        for listener in self.on_change:
            listener()

    def get(self, access_key_id: str) -> AccessKey | None:
        """The key with this id (the verifier's lookup), or None."""
        return self._keys().get(access_key_id)

    def list(self) -> list[AccessKey]:
        return sorted(self._keys().values(), key=lambda k: (k.created, k.access_key_id))

    def create(self, role: str, endpoints: list[str] | None = None) -> AccessKey:
        role, names = check_grant(role, endpoints)
        return self._insert(role, names, time.time())

    def _insert(self, role: str, endpoints: tuple[str, ...] | None, created: float) -> AccessKey:
        while True:
            key_id = "MRGK" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
            key = AccessKey(key_id, secrets.token_urlsafe(30), role, endpoints, created)
            body: dict[str, Any] = {"SecretAccessKey": key.secret_access_key, "Role": role, "CreationTime": created}
            if endpoints is not None:
                body["EndpointNames"] = list(endpoints)
            try:
                self.ctx.store.create(ACCESS_KEY, key_id, self.ctx.arn(ACCESS_KEY, key_id), body)
                break
            except AlreadyExists:  # 36**16 ids: only a broken random source gets here twice
                continue
        self._invalidate()
        return key

    def revoke(self, access_key_id: str) -> AccessKey:
        """Remove a key; requests it signs fail from now on."""
        key = self._stored(access_key_id)
        self.ctx.store.delete(ACCESS_KEY, access_key_id)
        self._invalidate()
        return key

    def rotate(self, access_key_id: str) -> AccessKey:
        """A new key with the old one's role and endpoints; the old one stops working."""
        old = self._stored(access_key_id)
        new = self._insert(old.role, old.endpoints, time.time())
        self.ctx.store.delete(ACCESS_KEY, access_key_id)
        self._invalidate()
        return new

    def _stored(self, access_key_id: str) -> AccessKey:
        # The store, not the cache: it is the truth.
        row = self.ctx.store.get(ACCESS_KEY, access_key_id)
        if row is None:
            raise ResourceNotFound(f"Access key {access_key_id} does not exist.")
        return _from_row(row.name, row.body)
