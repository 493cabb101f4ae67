"""The rollouts page: an endpoint's update as it runs (phase, the new fleet's traffic share step by step,
the baking alarms, a rollback shown as one), and the buttons to start an update or roll back.

Starting an update is ``Endpoints.update_endpoint`` with a DeploymentConfig built from the form (all at
once, canary or linear, the wait, the rollback alarms). moorage cannot stop an update in flight (neither
can SageMaker: a blue/green update rolls itself back when a rollback alarm fires or its time runs out),
so "roll back" is an update back to the config the endpoint was on before the dashboard last updated it
(all at once), offered once the endpoint is InService again.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG
from moorage.control.deployment_config import ALL_AT_ONCE
from moorage.errors import ValidationException
from moorage.store.metadata import ListQuery
from moorage.ui.context import DEPLOYER, UiContext
from moorage.ui.render import render
from moorage.ui.session import PREFIX, form_of, require, sees
from moorage.ui.views.rollouts import (
    PREVIOUS_CONFIG,
    deployment_config,
    rollout_summary,
    rollout_view,
    traffic_series,
)

NAV = ("Rollouts", f"{PREFIX}/rollouts")
CONFIG_CHOICES = 200


def routes(ui: UiContext) -> list[BaseRoute]:
    store = ui.ctx.store

    def alarm_state(name: str) -> str | None:
        return ui.metrics.alarms.state(name)

    def endpoint_row(request: Request) -> Any:
        name = request.path_params["name"]
        row = store.get(ENDPOINT, name)
        if row is None or not sees(request, name):
            raise HTTPException(404, f"Endpoint {name} not found.")
        return row

    def page(request: Request, row: Any, error: str | None = None, status: int = 200) -> Response:
        configs = [r.name for r in store.list(ENDPOINT_CONFIG, ListQuery(limit=CONFIG_CHOICES))]
        alarms = [{"name": a.get("AlarmName"), "state": a.get("StateValue")} for a in ui.metrics.alarms.list_alarms()]
        return render(request, "pages/rollout.html", status, view=rollout_view(row, alarm_state), configs=configs,
                      alarms=alarms, error=error)

    async def listing(request: Request) -> Response:
        rows = [rollout_summary(r) for r in store.list(ENDPOINT, ListQuery(sort_by="name", descending=False))
                if sees(request, r.name)]
        return render(request, "pages/rollouts.html", rollouts=rows)

    async def detail(request: Request) -> Response:
        return page(request, endpoint_row(request))

    async def traffic(request: Request) -> Response:
        row = endpoint_row(request)
        update = row.body.get("UpdateHistory")
        return JSONResponse({**traffic_series(update, time.time() if row.status in ("Updating", "RollingBack")
                                              else None), "unit": "%"},
                            headers={"cache-control": "no-store"})

    async def start(request: Request, row: Any, config_name: str, document: dict[str, Any]) -> None:
        # The config it leaves is noted by the update itself when it completes (PreviousEndpointConfigName),
        # whoever started it: the page's "roll back" updates back to that.
        await ui.endpoints.update_endpoint({"EndpointName": row.name, "EndpointConfigName": config_name,
                                            "DeploymentConfig": document})

    async def update(request: Request) -> Response:
        row = endpoint_row(request)
        require(request, DEPLOYER, row.name)
        form = await form_of(request)
        config_name = form.get("config") or ""
        try:
            if not config_name:
                raise ValidationException("Choose the endpoint config to update to.")
            # Several rollback alarms may be ticked: every value of the field (form_of keeps the first).
            ticked = parse_qs((await request.body()).decode("utf-8", "replace")).get("alarm", [])
            alarms = list(dict.fromkeys(a for a in ticked if a))
            await start(request, row, config_name, deployment_config(form, alarms))
        except ValidationException as exc:
            return page(request, store.get(ENDPOINT, row.name) or row, exc.message, 400)
        return RedirectResponse(f"{PREFIX}/rollouts/{row.name}", status_code=303)

    async def rollback(request: Request) -> Response:
        row = endpoint_row(request)
        require(request, DEPLOYER, row.name)
        target = row.body.get(PREVIOUS_CONFIG)
        try:
            if not target or target == row.body.get("EndpointConfigName"):
                raise ValidationException("There is no earlier config to roll back to: the dashboard knows the "
                                          "config an endpoint left only when it started the update itself.")
            await start(request, row, str(target), {"BlueGreenUpdatePolicy": {
                "TrafficRoutingConfiguration": {"Type": ALL_AT_ONCE, "WaitIntervalInSeconds": 0},
                "TerminationWaitInSeconds": 0}})
        except ValidationException as exc:
            return page(request, store.get(ENDPOINT, row.name) or row, exc.message, 400)
        return RedirectResponse(f"{PREFIX}/rollouts/{row.name}", status_code=303)

    return [Route("/rollouts", listing), Route("/rollouts/{name}", detail),
            Route("/rollouts/{name}/traffic.json", traffic),
            Route("/rollouts/{name}/update", update, methods=["POST"]),
            Route("/rollouts/{name}/rollback", rollback, methods=["POST"])]
