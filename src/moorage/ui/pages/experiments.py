"""The experiments page: routing experiments (A/B tests and bandits) with each variant's mean reward and
its always-valid band, the verdicts and the sample still needed, the bandit's weights over time; and each
shadow variant beside production (agreement, latency, errors).

The report is ``RoutingExperiments.report``, the one ``moorage experiment report`` prints; the weights are
the ``moorage/Experiments`` ``VariantWeight`` metric the experiment writes at each look.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from moorage.control.context import ENDPOINT, ENDPOINT_CONFIG
from moorage.control.routing_experiments import WEIGHT_METRIC, WEIGHT_NAMESPACE, policy_of
from moorage.store.metadata import Resource
from moorage.ui import series
from moorage.ui.context import UiContext
from moorage.ui.render import render
from moorage.ui.session import PREFIX, sees
from moorage.ui.views.experiments import experiment_endpoints, report_view, shadow_view

NAV = ("Experiments", f"{PREFIX}/experiments")


def routes(ui: UiContext) -> list[BaseRoute]:
    ctx = ui.ctx

    def endpoint_row(request: Request) -> Resource:
        name = request.path_params["name"]
        row = ctx.store.get(ENDPOINT, name)
        if row is None or not sees(request, name):
            raise HTTPException(404, f"Endpoint {name} not found.")
        return row

    async def listing(request: Request) -> Response:
        rows = [e for e in experiment_endpoints(ctx) if sees(request, e["name"])]
        return render(request, "pages/experiments.html", experiments=rows)

    async def detail(request: Request) -> Response:
        row = endpoint_row(request)
        name = request.path_params["name"]
        config = ctx.store.get(ENDPOINT_CONFIG, row.body.get("EndpointConfigName", ""))
        policy = policy_of(ctx, config.name, config.body) if config is not None else None
        report = None
        if policy is not None and policy.tagged and ui.routing_experiments is not None:
            report = report_view(await ui.routing_experiments.report(name))
        return render(request, "pages/experiment.html", name=name, report=report,
                      bandit=bool(policy is not None and policy.tagged and policy.bandit),
                      shadows=shadow_view(ctx.routes.snapshot(name)))

    async def weights(request: Request) -> Response:
        endpoint_row(request)
        name = request.path_params["name"]
        win = series.window(request.query_params.get("window"))
        lines = [series.Line(d.variant, series.statistic(ui.metrics.store, win, WEIGHT_NAMESPACE, WEIGHT_METRIC,
                                                         {"EndpointName": name, "VariantName": d.variant}, "Average"))
                 for d in ctx.store.desired(name) if not d.shadow]
        return JSONResponse(series.chart(win, lines, "weight"), headers={"cache-control": "no-store"})

    return [Route("/experiments", listing), Route("/experiments/{name}", detail),
            Route("/experiments/{name}/weights.json", weights)]
