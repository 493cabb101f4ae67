"""Native REST API for transform jobs: ``GET /moorage/v1/transform-jobs/{name}``.

DescribeTransformJob has no words for progress; this route adds it (objects and records done, bytes
read of the total, the backend, the instances' process ids) for the CLI's progress bar and for
operators. SigV4-authenticated like the rest of the native API.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from moorage.api.sigv4 import AuthError, SigV4Verifier
from moorage.control.context import Context
from moorage.control.transform_jobs import transform_job_state


def transform_job_routes(ctx: Context, verifier: SigV4Verifier) -> list[Route]:
    async def get_transform_job(request: Request) -> Response:
        try:
            verifier.verify(request.method, request.scope.get("raw_path") or request.url.path.encode(),
                            request.scope.get("query_string", b""), request.scope["headers"], await request.body())
        except AuthError as exc:
            return JSONResponse({"__type": exc.code, "message": exc.message}, status_code=exc.status)
        name = request.path_params["name"]
        state = transform_job_state(ctx, None, name)
        if state is None:
            return JSONResponse({"__type": "ResourceNotFound", "message": f"Could not find requested job with "
                                 f"name {name}"}, status_code=404)
        return JSONResponse(state)

    return [Route("/moorage/v1/transform-jobs/{name}", get_transform_job, methods=["GET"])]
