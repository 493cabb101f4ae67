"""moorage's own REST API (``/moorage/v1/...``): what SageMaker's API has no words for.

Part 1 exposes the live state of endpoints (instances, pids, outstanding requests) for the CLI and
for operators. It is SigV4-authenticated like everything else (service name ``sagemaker``).
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moorage.api.sigv4 import AuthError, SigV4Verifier
from moorage.control.common import ENDPOINT, Context, timestamp
from moorage.store.metadata import ListQuery


def _json(payload: Any, status: int = 200) -> Response:
    return JSONResponse(payload, status_code=status)


def build_native_app(ctx: Context, verifier: SigV4Verifier) -> Starlette:
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
        route = ctx.manager.get(name)
        variants = []
        stored = {v["VariantName"]: v for v in row.body.get("ProductionVariants", [])}
        names = list(route.variants) if route else list(stored)
        for vname in names:
            entry: dict[str, Any] = {"VariantName": vname}
            if route is not None:
                variant = route.variants[vname]
                entry.update(CurrentWeight=variant.current_weight, DesiredWeight=variant.desired_weight,
                             CurrentInstanceCount=len(variant.pool.ready), DesiredInstanceCount=variant.pool.desired,
                             Runtime=variant.pool.launch.runtime, InstanceType=variant.pool.launch.instance_type,
                             Restarts=variant.pool.restarts, Instances=variant.pool.snapshot())
            else:
                entry.update({k: v for k, v in stored[vname].items() if k != "VariantName"}, Instances=[])
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

    return Starlette(routes=[
        Route("/moorage/v1/endpoints", list_endpoints, methods=["GET"]),
        Route("/moorage/v1/endpoints/{name}", get_endpoint, methods=["GET"]),
    ])
