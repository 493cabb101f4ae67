"""The ``moorage serve`` ASGI application: every front door on one port, wired explicitly.

``POST /`` -> AWS JSON protocol services by X-Amz-Target (SageMaker.*);
``/endpoints/{name}/invocations`` -> the runtime; ``/healthz`` -> liveness; ``/moorage/v1/...`` ->
the native REST API. The runtime path is matched first and by prefix: it is the hot one.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from moorage.api.native import build_native_app
from moorage.api.responses import JSON, Receive, Scope, Send, respond, respond_error
from moorage.api.runtime import RuntimeFrontDoor
from moorage.api.sagemaker import JsonFrontDoor, JsonProtocolService
from moorage.api.sigv4 import SigV4Verifier
from moorage.config import Credentials, Settings
from moorage.control.common import Context
from moorage.control.endpoint_configs import EndpointConfigs
from moorage.control.endpoints import Endpoints
from moorage.control.models import Models
from moorage.control.scaling import Scaling
from moorage.control.tags import Tags
from moorage.serving.manager import ServingManager
from moorage.store.artifacts import ArtifactStore
from moorage.store.metadata import MetadataStore

log = logging.getLogger("moorage.server")


class MoorageApp:
    def __init__(self, settings: Settings, credentials: list[Credentials]):
        self.settings = settings
        secrets = {c.access_key_id: c.secret_access_key for c in credentials}
        self.verifier = SigV4Verifier(secrets.get)
        settings.home.mkdir(parents=True, exist_ok=True)
        assert settings.database_url is not None
        self.store = MetadataStore(settings.database_url)
        self.manager = ServingManager(settings.logs_dir)
        self.ctx = Context(settings, self.store, ArtifactStore(settings.models_dir), self.manager)
        self.endpoints = Endpoints(self.ctx)
        sagemaker = JsonProtocolService("sagemaker", "SageMaker", [
            Models(self.ctx), EndpointConfigs(self.ctx), self.endpoints, Tags(self.ctx)])
        autoscaling = JsonProtocolService("application-autoscaling", "AnyScaleFrontendService", [Scaling(self.ctx)])
        self.json_door = JsonFrontDoor(self.verifier, [sagemaker, autoscaling])
        self.runtime_door = RuntimeFrontDoor(self.verifier, self.manager, self.store, settings.account_id)
        self.native = build_native_app(self.ctx, self.verifier)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path.startswith("/endpoints/"):
                await self.runtime_door(scope, receive, send)
            elif path == "/":
                if scope["method"] == "POST":
                    await self.json_door(scope, receive, send)
                else:
                    await respond(send, 200, orjson.dumps({"service": "moorage", "healthz": "/healthz"}),
                                  [(b"content-type", JSON)])
            elif path == "/healthz":
                await respond(send, 200, b'{"status":"ok"}', [(b"content-type", JSON)])
            elif path.startswith("/moorage/"):
                await self.native(scope, receive, send)
            else:
                await respond_error(send, "UnknownOperationException", f"No route for {path}.", 404, JSON)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message: dict[str, Any] = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    resumed = self.endpoints.recover()
                    if resumed:
                        log.info("bringing back %d endpoint(s) from the store", resumed)
                except Exception as exc:
                    log.exception("startup failed")
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.endpoints.shutdown()
                await self.manager.shutdown()
                self.store.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
