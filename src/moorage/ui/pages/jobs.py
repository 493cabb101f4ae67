"""The batch page: transform jobs with their progress, rate and failures, and multi-model endpoints with
the models each host has loaded."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from moorage.control.transform_jobs import transform_job_state
from moorage.ui.context import UiContext
from moorage.ui.render import render
from moorage.ui.session import PREFIX, sees
from moorage.ui.views.jobs import job_rows, job_view, model_hosts

NAV = ("Batch", f"{PREFIX}/jobs")


def routes(ui: UiContext) -> list[BaseRoute]:
    ctx = ui.ctx

    async def listing(request: Request) -> Response:
        jobs = await asyncio.to_thread(job_rows, ctx, ui.transform_jobs)
        hosts = [m for m in model_hosts(ctx) if sees(request, m["endpoint"])]
        return render(request, "pages/jobs.html", jobs=jobs, multi_model=hosts)

    async def job(request: Request) -> Response:
        name = request.path_params["name"]
        state = await asyncio.to_thread(transform_job_state, ctx, ui.transform_jobs, name)
        if state is None:
            raise HTTPException(404, f"Transform job {name} not found.")
        return render(request, "pages/job.html", job=job_view(state))

    return [Route("/jobs", listing), Route("/jobs/{name}", job)]
