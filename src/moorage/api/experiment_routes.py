"""Native routes of routing experiments (``control/routing_experiments.py``):

- ``POST /moorage/v1/endpoints/{EndpointName}/feedback`` ``{"Feedback": [{"InferenceId": "...",
  "Reward": 1.0}, ...]}`` (up to 1,000 a call): answers ``{"Accepted": n, "Unknown": [ids],
  "Duplicate": [ids]}``; a malformed item refuses the whole call (400, naming the item);
- ``GET /moorage/v1/endpoints/{EndpointName}/experiment``: per variant the invocations, rewards,
  mean reward with an always-valid interval, weights and guardrail metrics; each treatment against
  the control with lift, an always-valid p-value, a verdict and the sample still needed.

Through the native API's signed seam like every native route (``moorage.api.signed``).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.routing import Route

from moorage.api.signed import signed_route
from moorage.control.routing_experiments import RoutingExperiments
from moorage.errors import SerializationException


def experiment_routes(experiments: RoutingExperiments) -> list[Route]:
    async def feedback(request: Request, body: bytes) -> dict[str, Any]:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise SerializationException(f"Request body is not valid JSON: {exc}") from exc
        return await experiments.feedback(request.path_params["name"], document)

    async def report(request: Request, body: bytes) -> dict[str, Any]:
        return await experiments.report(request.path_params["name"])

    return [signed_route("/moorage/v1/endpoints/{name}/feedback", feedback, ["POST"]),
            signed_route("/moorage/v1/endpoints/{name}/experiment", report, ["GET"])]
