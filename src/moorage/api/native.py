"""moorage's own REST API (``/moorage/v1/...``): what SageMaker's API has no words for.

It exposes the live state of endpoints (instances, pids, outstanding requests) for the CLI and for
operators, and an artifact upload (``PUT /moorage/v1/artifacts/{key}``) so that the SDK and CLI can
ship a model archive to a server on another machine: the artifact store is the server's home there.
Every route goes through the signed seam (``moorage.api.signed``): SigV4 like the rest of the API
(service name ``sagemaker``), errors as AWS JSON bodies, a missing resource as 404.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from moorage.api.metrics_routes import metrics_routes
from moorage.api.signed import native_app, signed_route, signed_streaming_route
from moorage.api.sigv4 import MSG_PAYLOAD_HASH, AuthError, SigV4Verifier
from moorage.api.transform_routes import transform_job_routes
from moorage.connection import MAX_ARTIFACT_BYTES, artifact_key_problem
from moorage.control.context import ENDPOINT, Context
from moorage.control.endpoints import variant_summaries
from moorage.control.times import timestamp
from moorage.control.transform_jobs import TransformJobs
from moorage.errors import ApiError, ContentTooLarge, ResourceNotFound, ValidationException
from moorage.store.metadata import ListQuery

# Chunks from the server are small (tens of KiB); hashing and writing them a MiB at a time in a
# worker thread keeps a multi-GiB upload off the event loop that also serves invocations.
_WRITE_BATCH = 1024 * 1024


class _Upload:
    """A file being received: written under a temporary name, hashed as it goes, renamed when whole."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self.temp = target.parent / f".upload-{uuid.uuid4().hex}.part"
        self.sha256 = hashlib.sha256()
        self.size = 0
        self.fh: IO[bytes] | None = None

    def open(self) -> None:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.temp, "wb")  # noqa: SIM115 - closed in finish() or discard()

    def write(self, data: bytes) -> None:
        assert self.fh is not None
        self.sha256.update(data)
        self.fh.write(data)
        self.size += len(data)

    def finish(self) -> None:
        assert self.fh is not None
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        self.fh = None
        os.replace(self.temp, self.target)
        # The rename is durable only once the directory entry is on disk too.
        dir_fd = os.open(self.target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def discard(self) -> None:
        if self.fh is not None:
            self.fh.close()
            self.fh = None
        self.temp.unlink(missing_ok=True)


def build_native_app(ctx: Context, verifier: SigV4Verifier, transform_jobs: TransformJobs,
                     extra_routes: list[Route] | None = None) -> Starlette:
    artifacts_root = ctx.settings.artifacts_dir

    def endpoint_state(name: str) -> dict[str, Any] | None:
        row = ctx.store.get(ENDPOINT, name)
        if row is None:
            return None
        snapshot = ctx.routes.snapshot(name)
        variants = []
        for summary in variant_summaries(ctx.store, row, snapshot):
            entry = {k: v for k, v in summary.items() if k != "DeployedImages"}
            live = snapshot.variants.get(summary["VariantName"]) if snapshot is not None else None
            if live is not None:
                entry.update(Runtime=live.runtime, InstanceType=live.instance_type, Restarts=live.restarts,
                             Instances=[i.to_dict() for i in live.instances])
            else:
                entry["Instances"] = []
            variants.append(entry)
        created = timestamp(row.created_at)
        return {"EndpointName": row.name, "EndpointArn": row.arn, "EndpointStatus": row.status,
                "EndpointConfigName": row.body.get("EndpointConfigName"),
                "FailureReason": row.body.get("FailureReason"),
                # The last (or running) UpdateEndpoint: phase, green's share of the traffic, alarms, history.
                "Update": row.body.get("UpdateHistory"),
                # ShadowProductionVariants: their instances and what their copies did beside production.
                "ShadowVariants": [{"VariantName": v.name, "CurrentInstanceCount": v.in_service,
                                    "Runtime": v.runtime, "Instances": [i.to_dict() for i in v.instances],
                                    "Shadow": v.shadow_stats}
                                   for v in (snapshot.variants.values() if snapshot is not None else ()) if v.shadow],
                "CreationTime": created.isoformat() if created else None, "Variants": variants}

    async def list_endpoints(request: Request, body: bytes) -> dict[str, Any]:
        rows = ctx.store.list(ENDPOINT, ListQuery(sort_by="name", descending=False))
        return {"Endpoints": [endpoint_state(r.name) for r in rows]}

    async def get_endpoint(request: Request, body: bytes) -> dict[str, Any]:
        name = request.path_params["name"]
        state = endpoint_state(name)
        if state is None:
            raise ResourceNotFound(f"Endpoint {name} not found.")
        return state

    async def get_models(request: Request, body: bytes) -> dict[str, Any]:
        """A multi-model endpoint's hosts: what each has loaded, its size, last use and hits."""
        name = request.path_params["name"]
        if ctx.store.get(ENDPOINT, name) is None:
            raise ResourceNotFound(f"Endpoint {name} not found.")
        return {"EndpointName": name, "Variants": [
            {"VariantName": variant, "Hosts": cache.snapshot()}
            for endpoint, variant, cache in ctx.routes.model_caches() if endpoint == name]}

    async def put_artifact(request: Request, declared_sha256: str) -> dict[str, Any]:
        key = request.path_params["key"]
        if (problem := artifact_key_problem(key)) is not None:
            raise ValidationException(problem)
        target = artifacts_root / key
        if not target.resolve().is_relative_to(artifacts_root.resolve()):
            # A symlink planted inside the store must not lead a write outside it.
            raise ValidationException(f"artifact key {key!r} resolves outside the artifact store")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_ARTIFACT_BYTES):
            raise ContentTooLarge(
                f"artifact uploads are limited to {MAX_ARTIFACT_BYTES} bytes (Content-Length {length})")
        upload = _Upload(target)
        try:
            await asyncio.to_thread(upload.open)
            pending = bytearray()
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > MAX_ARTIFACT_BYTES:
                    raise ContentTooLarge(f"artifact uploads are limited to {MAX_ARTIFACT_BYTES} bytes")
                pending += chunk
                if len(pending) >= _WRITE_BATCH:
                    await asyncio.to_thread(upload.write, bytes(pending))
                    pending.clear()
            await asyncio.to_thread(upload.write, bytes(pending))
            if upload.sha256.hexdigest() != declared_sha256:
                raise AuthError("InvalidSignatureException", MSG_PAYLOAD_HASH)
            await asyncio.to_thread(upload.finish)
        except Exception as exc:  # refused, the client went away, or the disk failed: no partial file stays
            await asyncio.to_thread(upload.discard)
            if isinstance(exc, OSError):
                raise ApiError(f"could not store artifact {key!r}: {exc}") from exc
            raise
        except BaseException:
            upload.discard()  # cancelled: no more awaiting, but leave no partial file behind
            raise
        return {"Url": target.absolute().as_uri(), "Key": key, "Size": upload.size,
                "Sha256": upload.sha256.hexdigest()}

    return native_app(verifier, [
        signed_route("/moorage/v1/endpoints", list_endpoints, ["GET"]),
        signed_route("/moorage/v1/endpoints/{name}", get_endpoint, ["GET"]),
        signed_route("/moorage/v1/endpoints/{name}/models", get_models, ["GET"]),
        signed_streaming_route("/moorage/v1/artifacts/{key:path}", put_artifact, ["PUT"]),
        *metrics_routes(ctx),
        *transform_job_routes(ctx, transform_jobs),
        *(extra_routes or []),  # routes of parts the app builds after the context (monitoring)
    ])
