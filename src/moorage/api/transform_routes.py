"""Native REST API for transform jobs: ``GET /moorage/v1/transform-jobs/{name}``.

DescribeTransformJob has no words for progress; this route adds it (objects and records done, bytes
read of the total, the backend, the instances' process ids) for the CLI's progress bar and for
operators. A job running in this server reports its live progress (the store's copy lags up to a
save interval behind); a finished one, what the store kept. Through the native API's signed seam
(``moorage.api.signed``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.routing import Route

from moorage.api.signed import signed_route
from moorage.control.context import Context
from moorage.control.transform_jobs import TransformJobs, transform_job_state
from moorage.errors import ResourceNotFound


def transform_job_routes(ctx: Context, jobs: TransformJobs) -> list[Route]:
    async def get_transform_job(request: Request, body: bytes) -> dict[str, Any]:
        name = request.path_params["name"]
        state = transform_job_state(ctx, jobs, name)
        if state is None:
            raise ResourceNotFound(f"Could not find requested job with name {name}")
        return state

    return [signed_route("/moorage/v1/transform-jobs/{name}", get_transform_job, ["GET"])]
