"""moorage's own REST API (``/moorage/v1/...``): what SageMaker's API has no words for.

It exposes the live state of endpoints (instances, pids, outstanding requests) for the CLI and for
operators, and an artifact upload (``PUT /moorage/v1/artifacts/{key}``) so that the SDK and CLI can
ship a model archive to a server on another machine: the artifact store is the server's home there.
Everything is SigV4-authenticated like the rest of the API (service name ``sagemaker``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from pathlib import Path
from typing import IO, Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moorage.api.metrics_routes import metrics_routes
from moorage.api.sigv4 import MSG_PAYLOAD_HASH, AuthError, SigV4Verifier
from moorage.api.transform_routes import transform_job_routes
from moorage.connection import MAX_ARTIFACT_BYTES, artifact_key_problem
from moorage.control.context import ENDPOINT, Context
from moorage.control.endpoints import variant_summaries
from moorage.control.times import timestamp
from moorage.store.metadata import ListQuery

# Chunks from the server are small (tens of KiB); hashing and writing them a MiB at a time in a
# worker thread keeps a multi-GiB upload off the event loop that also serves invocations.
_WRITE_BATCH = 1024 * 1024
_HEX = frozenset("0123456789abcdef")


def _json(payload: Any, status: int = 200) -> Response:
    return JSONResponse(payload, status_code=status)


def _error(code: str, message: str, status: int) -> Response:
    return JSONResponse({"__type": code, "message": message}, status_code=status,
                        headers={"x-amzn-errortype": code})


def _declared_sha256(headers: list[tuple[bytes, bytes]]) -> str:
    """The body hash an upload must declare: its signature covers it, and the route checks the bytes."""
    declared = next((v for k, v in headers if k == b"x-amz-content-sha256"), b"").decode("latin-1").strip()
    if len(declared) != 64 or not set(declared.lower()) <= _HEX:
        raise AuthError("InvalidSignatureException",
                        "Artifact uploads must declare the body's SHA-256 (hex) in X-Amz-Content-SHA256.", 400)
    return declared


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


def build_native_app(ctx: Context, verifier: SigV4Verifier, extra_routes: list[Route] | None = None) -> Starlette:
    artifacts_root = ctx.settings.artifacts_dir

    async def authorized(request: Request) -> Response | None:
        try:
            verifier.verify(request.method, request.scope.get("raw_path") or request.url.path.encode(),
                            request.scope.get("query_string", b""), request.scope["headers"], await request.body())
        except AuthError as exc:
            return _json({"__type": exc.code, "message": exc.message}, exc.status)
        return None

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
                "CreationTime": created.isoformat() if created else None, "Variants": variants}

    async def list_endpoints(request: Request) -> Response:
        if (denied := await authorized(request)) is not None:
            return denied
        rows = ctx.store.list(ENDPOINT, ListQuery(sort_by="name", descending=False))
        return _json({"Endpoints": [endpoint_state(r.name) for r in rows]})

    async def get_endpoint(request: Request) -> Response:
        if (denied := await authorized(request)) is not None:
            return denied
        state = endpoint_state(request.path_params["name"])
        if state is None:
            return _json({"__type": "ResourceNotFound",
                          "message": f"Endpoint {request.path_params['name']} not found."}, 404)
        return _json(state)

    async def put_artifact(request: Request) -> Response:
        # The signature is checked before a byte of the body is read: an unauthenticated client
        # must not be able to make the server write anything.
        headers = request.scope["headers"]
        try:
            # Authentication first (a request with no signature is a 403 whatever else it lacks);
            # the signature covers the declared hash, checked against the bytes as they arrive.
            claimed = next((v for k, v in headers if k == b"x-amz-content-sha256"), b"").decode("latin-1").strip()
            if not claimed and any(k == b"authorization" for k, _ in headers):
                _declared_sha256(headers)  # signed, but over a body hash we cannot check without reading it
            verifier.verify(request.method, request.scope.get("raw_path") or request.url.path.encode(),
                            request.scope.get("query_string", b""), headers, b"", payload_hash=claimed or None)
            declared = _declared_sha256(headers)
        except AuthError as exc:
            return _error(exc.code, exc.message, exc.status)
        declared = declared.lower()
        key = request.path_params["key"]
        if (problem := artifact_key_problem(key)) is not None:
            return _error("ValidationException", problem, 400)
        target = artifacts_root / key
        if not target.resolve().is_relative_to(artifacts_root.resolve()):
            # A symlink planted inside the store must not lead a write outside it.
            return _error("ValidationException", f"artifact key {key!r} resolves outside the artifact store", 400)
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_ARTIFACT_BYTES):
            return _error("ValidationException",
                          f"artifact uploads are limited to {MAX_ARTIFACT_BYTES} bytes (Content-Length {length})", 413)
        upload = _Upload(target)
        try:
            await asyncio.to_thread(upload.open)
            pending = bytearray()
            received = 0
            async for chunk in request.stream():
                received += len(chunk)
                if received > MAX_ARTIFACT_BYTES:
                    await asyncio.to_thread(upload.discard)
                    return _error("ValidationException",
                                  f"artifact uploads are limited to {MAX_ARTIFACT_BYTES} bytes", 413)
                pending += chunk
                if len(pending) >= _WRITE_BATCH:
                    await asyncio.to_thread(upload.write, bytes(pending))
                    pending.clear()
            await asyncio.to_thread(upload.write, bytes(pending))
            if upload.sha256.hexdigest() != declared:
                await asyncio.to_thread(upload.discard)
                return _error("InvalidSignatureException", MSG_PAYLOAD_HASH, 403)
            await asyncio.to_thread(upload.finish)
        except ClientDisconnect:
            await asyncio.to_thread(upload.discard)
            return _error("ValidationException", "the client went away before the upload was complete", 400)
        except OSError as exc:
            await asyncio.to_thread(upload.discard)
            return _error("InternalFailure", f"could not store artifact {key!r}: {exc}", 500)
        except BaseException:
            upload.discard()  # cancelled: no more awaiting, but leave no partial file behind
            raise
        return _json({"Url": target.absolute().as_uri(), "Key": key, "Size": upload.size,
                      "Sha256": upload.sha256.hexdigest()})

    return Starlette(routes=[
        Route("/moorage/v1/endpoints", list_endpoints, methods=["GET"]),
        Route("/moorage/v1/endpoints/{name}", get_endpoint, methods=["GET"]),
        Route("/moorage/v1/artifacts/{key:path}", put_artifact, methods=["PUT"]),
        *metrics_routes(ctx, verifier),
        *transform_job_routes(ctx, verifier),
        *(extra_routes or []),  # routes of parts the app builds after the context (monitoring)
    ])
