"""Edge devices: their rows, their own access keys, and what their heartbeats say.

A registered device is a row of kind ``edge-device`` named ``{fleet}/{device}`` (SageMaker's device
names are unique within a fleet; DescribeDevice names both). Its body keeps what RegisterDevices gave
(Description, IotThingName), and what the last heartbeat said: ``LatestHeartbeat`` (the server's
clock when it arrived, not the device's), ``AgentVersion``, ``Models`` (each with LatestSampleTime
and LatestInference), the agent's metrics by name (``AgentMetrics``: moorage's agent sends
SpoolBacklogRecords, SpoolBacklogBytes, SpoolDroppedRecords, LastSyncTime, Errors) and the last
``DeploymentResult``. A heartbeat is one read and one row write.

Device keys. Each device may be given an access key of its own, to sign what it sends to the device
door (``api/edge_routes.py``) and nothing else. SigV4 is an HMAC, so the server must hold the secret
itself, not a hash of it: keys are rows of kind ``edge-device-key`` (named by the access key id) in
the metadata database, which lives in the home (0700, files 0600: ``server.py``). A device has at
most one key: issuing a new one replaces (and so revokes) the old, and DeregisterDevices revokes it.
``DeviceKeys`` caches every key in memory (the door looks one up per request) and drops the cache on
each issue and revoke; this server is the database's only writer, so nothing else can change them.
Secrets are never logged and never shown again after the call that made them.
"""

from __future__ import annotations

import secrets
import string
import threading
import time
from dataclasses import dataclass
from typing import Any

from moorage.control.context import Context
from moorage.control.times import epoch, timestamp
from moorage.store.metadata import AlreadyExists, MetadataStore, Resource

DEVICE = "edge-device"
DEVICE_KEY = "edge-device-key"

# The agent's own metrics, as its heartbeat names them (AgentMetrics' MetricName).
BACKLOG_RECORDS, BACKLOG_BYTES = "SpoolBacklogRecords", "SpoolBacklogBytes"
DROPPED_RECORDS, LAST_SYNC, ERRORS = "SpoolDroppedRecords", "LastSyncTime", "Errors"

_KEY_ALPHABET = string.ascii_uppercase + string.digits


def device_row_name(fleet: str, device: str) -> str:
    return f"{fleet}/{device}"


def device_arn(ctx: Context, fleet: str, device: str) -> str:
    """SageMaker's device ARN: ``...:device-fleet/{fleet}/device/{device}`` (lower-cased, as its ARNs are)."""
    return ctx.arn("device-fleet", f"{fleet}/device/{device}")


@dataclass(frozen=True)
class KeyOwner:
    """Whose a device key is: the one device (of one fleet) it may speak for."""

    fleet: str
    device: str


@dataclass(frozen=True)
class IssuedKey:
    access_key_id: str
    secret_access_key: str
    owner: KeyOwner


class DeviceKeys:
    """The device keys in the store, and the cache the device door's verifier reads."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[str, KeyOwner]] | None = None

    def _keys(self) -> dict[str, tuple[str, KeyOwner]]:
        cache = self._cache
        if cache is None:
            with self._lock:
                cache = self._cache
                if cache is None:
                    cache = {row.name: (str(row.body["SecretAccessKey"]),
                                        KeyOwner(row.body["DeviceFleetName"], row.body["DeviceName"]))
                             for row in self.ctx.store.list(DEVICE_KEY)}
                    self._cache = cache
        return cache

    def _invalidate(self) -> None:
        with self._lock:
            self._cache = None

    def secret(self, access_key_id: str) -> str | None:
        """The secret of a device key, or None when no device has this key (the verifier's lookup)."""
        found = self._keys().get(access_key_id)
        return found[0] if found is not None else None

    def owner(self, access_key_id: str) -> KeyOwner | None:
        found = self._keys().get(access_key_id)
        return found[1] if found is not None else None

    def key_of(self, fleet: str, device: str) -> str | None:
        """The access key id the device has now, if it was given one."""
        wanted = KeyOwner(fleet, device)
        return next((key for key, (_, owner) in self._keys().items() if owner == wanted), None)

    def issue(self, fleet: str, device: str) -> IssuedKey:
        """A new key for the device; the key it had stops working."""
        owner = KeyOwner(fleet, device)
        while True:
            key_id = "MRGE" + "".join(secrets.choice(_KEY_ALPHABET) for _ in range(16))
            secret = secrets.token_urlsafe(30)
            try:
                self.ctx.store.create(DEVICE_KEY, key_id, self.ctx.arn(DEVICE_KEY, key_id),
                                      {"SecretAccessKey": secret, "DeviceFleetName": fleet, "DeviceName": device,
                                       "CreationTime": time.time()})
                break
            except AlreadyExists:  # 36**16 ids: only a broken random source gets here twice
                continue
        self._revoke(owner, keep=key_id)
        return IssuedKey(key_id, secret, owner)

    def revoke(self, fleet: str, device: str) -> int:
        """Remove the device's key; how many were removed."""
        return self._revoke(KeyOwner(fleet, device))

    def _revoke(self, owner: KeyOwner, keep: str | None = None) -> int:
        # From the store, not the cache: the store is the truth, and a key made just now is not cached yet.
        stale = [row.name for row in self.ctx.store.list(DEVICE_KEY)
                 if row.name != keep and (row.body.get("DeviceFleetName"), row.body.get("DeviceName"))
                 == (owner.fleet, owner.device)]
        for name in stale:
            self.ctx.store.delete(DEVICE_KEY, name)
        self._invalidate()
        return len(stale)


# -- heartbeats -------------------------------------------------------------------------------------


def _epoch_or_none(value: Any) -> float | None:
    try:
        return epoch(value)
    except Exception:
        return None


def _models(models: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for model in models:
        entry: dict[str, Any] = {"ModelName": model.get("ModelName"), "ModelVersion": model.get("ModelVersion")}
        for field in ("LatestSampleTime", "LatestInference"):
            moment = _epoch_or_none(model.get(field))
            if moment is not None:
                entry[field] = moment
        out.append({k: v for k, v in entry.items() if v is not None})
    return out


def _deployment_result(result: dict[str, Any]) -> dict[str, Any]:
    out = dict(result)
    for field in ("DeploymentStartTime", "DeploymentEndTime"):
        if field in out:
            out[field] = _epoch_or_none(out[field])
    return {k: v for k, v in out.items() if v is not None}


def record_heartbeat(store: MetadataStore, row: Resource, heartbeat: dict[str, Any], now: float) -> None:
    """Write what a SendHeartbeat said into the device's row (one write)."""
    body = dict(row.body)
    body["LatestHeartbeat"] = now
    body["AgentVersion"] = heartbeat["AgentVersion"]
    if "Models" in heartbeat:
        body["Models"] = _models(heartbeat["Models"] or [])
    if heartbeat.get("AgentMetrics") is not None:
        body["AgentMetrics"] = {m["MetricName"]: m.get("Value") for m in heartbeat["AgentMetrics"]
                                if m.get("MetricName")}
    if heartbeat.get("DeploymentResult"):
        body["DeploymentResult"] = _deployment_result(heartbeat["DeploymentResult"])
    store.update(DEVICE, row.name, body=body)


# -- what Describe/List and the native listing show -----------------------------------------------------


def device_summary(row: Resource) -> dict[str, Any]:
    """DescribeDevice's (and ListDevices') members of a device row."""
    body = row.body
    return {
        "DeviceName": body["DeviceName"], "DeviceFleetName": body["DeviceFleetName"], "DeviceArn": row.arn,
        "Description": body.get("Description"), "IotThingName": body.get("IotThingName"),
        "RegistrationTime": timestamp(row.created_at), "LatestHeartbeat": timestamp(body.get("LatestHeartbeat")),
        "AgentVersion": body.get("AgentVersion"),
        "Models": [{k: (timestamp(v) if k in ("LatestSampleTime", "LatestInference") else v) for k, v in m.items()}
                   for m in body.get("Models") or []],
    }


def device_status(row: Resource, key_id: str | None, now: float, connected_within: float) -> dict[str, Any]:
    """Everything moorage knows of a device, for the native listing (``moorage edge devices``): SageMaker's
    members plus what its shapes have no place for (the agent's metrics, the last deployment's outcome, the
    device's access key id; never its secret)."""
    body = row.body
    metrics = body.get("AgentMetrics") or {}
    seen = body.get("LatestHeartbeat")
    doc = device_summary(row)
    for field in ("RegistrationTime", "LatestHeartbeat"):
        doc[field] = doc[field].isoformat() if doc[field] is not None else None
    doc["Models"] = [{k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in m.items()}
                     for m in doc["Models"]]
    last_sync = metrics.get(LAST_SYNC)
    doc.update({
        "Connected": seen is not None and now - seen <= connected_within,
        "AgentMetrics": metrics,
        "SpoolBacklogRecords": metrics.get(BACKLOG_RECORDS), "SpoolBacklogBytes": metrics.get(BACKLOG_BYTES),
        "SpoolDroppedRecords": metrics.get(DROPPED_RECORDS), "Errors": metrics.get(ERRORS),
        "LastSyncTime": timestamp(last_sync).isoformat() if isinstance(last_sync, int | float) and last_sync > 0
        else None,
        "DeploymentResult": body.get("DeploymentResult"),
        "AccessKeyId": key_id,
    })
    return doc
