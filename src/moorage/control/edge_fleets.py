"""Edge fleets and devices in SageMaker's API (Edge Manager's control plane, which AWS retired in 2024).

CreateDeviceFleet, DescribeDeviceFleet, ListDeviceFleets, UpdateDeviceFleet, DeleteDeviceFleet,
RegisterDevices, UpdateDevices, DeregisterDevices, DescribeDevice, ListDevices and GetDeviceFleetReport,
validated and shaped by botocore's ``sagemaker`` model like every SageMaker operation. A fleet is a row
of kind ``device-fleet``; its ``OutputConfig.S3OutputLocation`` is where its devices' synced capture lands
(``control/edge_capture.py``; ``s3://`` is the server's own object store, ``file://`` and paths work too).
Devices, their keys and heartbeats: ``control/edge_devices.py``; packages published to a fleet:
``control/edge_deployments.py``; the door devices talk to: ``api/edge_routes.py``.

As SageMaker does, a fleet with registered devices cannot be deleted (ResourceInUse). DescribeDevice
has no member for what moorage's agent reports beyond its models (spool backlog, dropped records,
the last sync, errors, the last deployment's outcome): those are in the native
``GET /moorage/v1/edge/devices`` (``device_status``), which ``moorage edge devices`` shows.

A device counts as connected (GetDeviceFleetReport, ``moorage edge devices``) when its last heartbeat
is at most ``CONNECTED_WITHIN`` seconds old; as active for a model when that model's LatestInference
is, and as sampling when its LatestSampleTime is.
"""

from __future__ import annotations

import time
from typing import Any

from moorage.control.context import Context
from moorage.control.edge_deployments import DEVICE_FLEET, EdgeDeployments
from moorage.control.edge_devices import (
    DEVICE,
    DeviceKeys,
    device_arn,
    device_row_name,
    device_status,
    device_summary,
)
from moorage.control.paging import list_query, offset_token, page, token_offset
from moorage.control.resources import put_tags
from moorage.control.times import epoch, timestamp
from moorage.errors import ResourceInUse, ResourceNotFound, ValidationException
from moorage.store.locations import StorageError, check_location
from moorage.store.metadata import AlreadyExists, Resource

CONNECTED_WITHIN = 600.0
# SageMaker's quota of devices in one RegisterDevices call is its model's list bound; a whole fleet is not.
_FLEET_SORT = {"NAME": "name", "CREATION_TIME": "created_at", "LAST_MODIFIED_TIME": "modified_at"}


def _iot_role_alias(ctx: Context, fleet: str) -> str:
    # What SageMaker names the alias it makes when EnableIotRoleAlias is set (recorded, nothing is made).
    return f"arn:aws:iot:{ctx.settings.region}:{ctx.settings.account_id}:rolealias/SageMakerEdge-{fleet}"


def _check_output(config: dict[str, Any]) -> dict[str, Any]:
    location = str(config.get("S3OutputLocation", ""))
    try:
        check_location(location, "OutputConfig.S3OutputLocation")
    except StorageError as exc:
        raise ValidationException(str(exc)) from exc
    if not location:
        raise ValidationException("OutputConfig.S3OutputLocation is empty: it names where synced capture lands.")
    return dict(config)


class EdgeFleets:
    """The SageMaker operations on device fleets and devices."""

    def __init__(self, ctx: Context, keys: DeviceKeys, deployments: EdgeDeployments) -> None:
        self.ctx = ctx
        self.keys = keys
        self.deployments = deployments

    # -- fleets -----------------------------------------------------------------------------------------

    def fleet(self, name: str) -> Resource:
        row = self.ctx.store.get(DEVICE_FLEET, name)
        if row is None:
            raise ResourceNotFound(f"Device fleet {name} does not exist.")
        return row

    async def create_device_fleet(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["DeviceFleetName"]
        body: dict[str, Any] = {"DeviceFleetName": name, "OutputConfig": _check_output(req["OutputConfig"]),
                                "Description": req.get("Description"), "RoleArn": req.get("RoleArn"),
                                "EnableIotRoleAlias": bool(req.get("EnableIotRoleAlias"))}
        if body["EnableIotRoleAlias"]:
            body["IotRoleAlias"] = _iot_role_alias(self.ctx, name)
        arn = self.ctx.arn(DEVICE_FLEET, name)
        try:
            self.ctx.store.create(DEVICE_FLEET, name, arn, {k: v for k, v in body.items() if v is not None})
        except AlreadyExists as exc:
            raise ResourceInUse(f"Device fleet {name} already exists.") from exc
        put_tags(self.ctx, arn, req.get("Tags"))
        return {}

    async def describe_device_fleet(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self.fleet(req["DeviceFleetName"])
        body = row.body
        return {"DeviceFleetName": row.name, "DeviceFleetArn": row.arn, "OutputConfig": body["OutputConfig"],
                "Description": body.get("Description"), "CreationTime": timestamp(row.created_at),
                "LastModifiedTime": timestamp(row.modified_at), "RoleArn": body.get("RoleArn"),
                "IotRoleAlias": body.get("IotRoleAlias")}

    async def list_device_fleets(self, req: dict[str, Any]) -> dict[str, Any]:
        query = list_query({k: v for k, v in req.items() if k != "SortBy"})
        query.sort_by = _FLEET_SORT.get(req.get("SortBy", "CREATION_TIME"), "created_at")
        rows, token = page(self.ctx.store.list(DEVICE_FLEET, query), query)
        return {"DeviceFleetSummaries": [
            {"DeviceFleetArn": r.arn, "DeviceFleetName": r.name, "CreationTime": timestamp(r.created_at),
             "LastModifiedTime": timestamp(r.modified_at)} for r in rows], "NextToken": token}

    async def update_device_fleet(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self.fleet(req["DeviceFleetName"])
        body = dict(row.body)
        body["OutputConfig"] = _check_output(req["OutputConfig"])
        for field in ("Description", "RoleArn"):
            if req.get(field) is not None:
                body[field] = req[field]
        if "EnableIotRoleAlias" in req:
            body["EnableIotRoleAlias"] = bool(req["EnableIotRoleAlias"])
            if body["EnableIotRoleAlias"]:
                body["IotRoleAlias"] = _iot_role_alias(self.ctx, row.name)
            else:
                body.pop("IotRoleAlias", None)
        self.ctx.store.update(DEVICE_FLEET, row.name, body=body)
        return {}

    async def delete_device_fleet(self, req: dict[str, Any]) -> dict[str, Any]:
        name = req["DeviceFleetName"]
        if self.ctx.store.get(DEVICE_FLEET, name) is None:
            return {}  # as SageMaker: deleting what is not there is not an error
        registered = self.devices_of(name)
        if registered:
            raise ResourceInUse(f"Device fleet {name} has {len(registered)} registered device(s) "
                                f"({', '.join(r.body['DeviceName'] for r in registered[:5])}); deregister them first.")
        self.deployments.forget_fleet(name)
        self.ctx.store.delete(DEVICE_FLEET, name)
        return {}

    async def get_device_fleet_report(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self.fleet(req["DeviceFleetName"])
        now = time.time()
        devices = self.devices_of(row.name)
        connected = [d for d in devices if _recent(d.body.get("LatestHeartbeat"), now)]
        agents: dict[str, int] = {}
        models: dict[tuple[str, str], dict[str, int]] = {}
        for device in devices:
            body = device.body
            if body.get("AgentVersion"):
                agents[body["AgentVersion"]] = agents.get(body["AgentVersion"], 0) + 1
            online = _recent(body.get("LatestHeartbeat"), now)
            for model in body.get("Models") or []:
                stat = models.setdefault((model.get("ModelName", ""), model.get("ModelVersion", "")), {
                    "OfflineDeviceCount": 0, "ConnectedDeviceCount": 0, "ActiveDeviceCount": 0,
                    "SamplingDeviceCount": 0})
                stat["ConnectedDeviceCount" if online else "OfflineDeviceCount"] += 1
                stat["ActiveDeviceCount"] += _recent(model.get("LatestInference"), now)
                stat["SamplingDeviceCount"] += _recent(model.get("LatestSampleTime"), now)
        return {"DeviceFleetArn": row.arn, "DeviceFleetName": row.name, "OutputConfig": row.body["OutputConfig"],
                "Description": row.body.get("Description"), "ReportGenerated": timestamp(now),
                "DeviceStats": {"ConnectedDeviceCount": len(connected), "RegisteredDeviceCount": len(devices)},
                "AgentVersions": [{"Version": v, "AgentCount": n} for v, n in sorted(agents.items())],
                "ModelStats": [{"ModelName": name, "ModelVersion": version, **stat}
                               for (name, version), stat in sorted(models.items())]}

    # -- devices -----------------------------------------------------------------------------------------

    def devices_of(self, fleet: str | None) -> list[Resource]:
        """The devices of one fleet (all fleets for None), by fleet then device name."""
        rows = self.ctx.store.list(DEVICE)
        if fleet is not None:
            rows = [r for r in rows if r.body.get("DeviceFleetName") == fleet]
        return sorted(rows, key=lambda r: (r.body.get("DeviceFleetName", ""), r.body.get("DeviceName", "")))

    def device(self, fleet: str, name: str) -> Resource:
        row = self.ctx.store.get(DEVICE, device_row_name(fleet, name))
        if row is None:
            raise ResourceNotFound(f"Device {name} is not registered with device fleet {fleet}.")
        return row

    async def register_devices(self, req: dict[str, Any]) -> dict[str, Any]:
        fleet = self.fleet(req["DeviceFleetName"]).name
        devices = req["Devices"]
        names = [d["DeviceName"] for d in devices]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValidationException(f"Devices: {', '.join(repeated)} named more than once.")
        taken = [n for n in names if self.ctx.store.get(DEVICE, device_row_name(fleet, n)) is not None]
        if taken:
            raise ValidationException(f"Device(s) {', '.join(taken)} already registered with device fleet {fleet}.")
        for device in devices:
            name = device["DeviceName"]
            arn = device_arn(self.ctx, fleet, name)
            body = {"DeviceName": name, "DeviceFleetName": fleet, "Description": device.get("Description"),
                    "IotThingName": device.get("IotThingName")}
            try:
                self.ctx.store.create(DEVICE, device_row_name(fleet, name), arn,
                                      {k: v for k, v in body.items() if v is not None})
            except AlreadyExists as exc:  # registered by a concurrent call, or a name differing only in case
                raise ValidationException(f"Device {name} already registered with device fleet {fleet}.") from exc
            put_tags(self.ctx, arn, req.get("Tags"))
        return {}

    async def update_devices(self, req: dict[str, Any]) -> dict[str, Any]:
        fleet = self.fleet(req["DeviceFleetName"]).name
        rows = [(self.device(fleet, d["DeviceName"]), d) for d in req["Devices"]]
        for row, device in rows:
            body = dict(row.body)
            for field in ("Description", "IotThingName"):
                if device.get(field) is not None:
                    body[field] = device[field]
            self.ctx.store.update(DEVICE, row.name, body=body)
        return {}

    async def deregister_devices(self, req: dict[str, Any]) -> dict[str, Any]:
        fleet = req["DeviceFleetName"]
        for name in req["DeviceNames"]:
            # The key first: a device that is going away must not be let in between the two writes.
            self.keys.revoke(fleet, name)
            self.ctx.store.delete(DEVICE, device_row_name(fleet, name))
        return {}

    async def describe_device(self, req: dict[str, Any]) -> dict[str, Any]:
        row = self.device(req["DeviceFleetName"], req["DeviceName"])
        return device_summary(row)

    async def list_devices(self, req: dict[str, Any]) -> dict[str, Any]:
        fleet = req.get("DeviceFleetName")
        after = epoch(req.get("LatestHeartbeatAfter"))
        model = req.get("ModelName")
        rows = self.devices_of(fleet)
        if after is not None:
            rows = [r for r in rows if (r.body.get("LatestHeartbeat") or 0) > after]
        if model is not None:
            rows = [r for r in rows if any(m.get("ModelName") == model for m in r.body.get("Models") or [])]
        offset = token_offset(req.get("NextToken"))
        size = int(req.get("MaxResults") or 10)
        chunk = rows[offset:offset + size]
        token = offset_token(offset + size) if offset + size < len(rows) else None
        summaries = []
        for row in chunk:
            summary = device_summary(row)
            summary["Models"] = [{"ModelName": m["ModelName"], "ModelVersion": m["ModelVersion"]}
                                 for m in summary["Models"] if m.get("ModelName") and m.get("ModelVersion")]
            summaries.append(summary)
        return {"DeviceSummaries": summaries, "NextToken": token}

    def device_statuses(self, fleet: str | None) -> list[dict[str, Any]]:
        """The native listing: every device (of ``fleet``) with what its agent last reported."""
        if fleet is not None:
            self.fleet(fleet)
        now = time.time()
        return [device_status(row, self.keys.key_of(row.body["DeviceFleetName"], row.body["DeviceName"]), now,
                              CONNECTED_WITHIN) for row in self.devices_of(fleet)]


def _recent(moment: Any, now: float) -> bool:
    return isinstance(moment, int | float) and now - moment <= CONNECTED_WITHIN
