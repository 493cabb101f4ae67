"""An endpoint between two fleets during an update: blue serves what green does not yet.

A blue/green update publishes a ``TrafficShift`` in the route table in place of the endpoint's
route: each request goes to the green fleet with probability ``green_share`` (the share of green's
capacity turned on so far), to blue otherwise, and a request naming a variant only one fleet has
goes there. Both fleets keep their own pools, observers (capture per config) and weights; metrics
see one endpoint, as SageMaker's do. Moving the share is one float assignment, so traffic moves
between two requests without a failed one; rolling back is setting it to 0 and publishing blue.
"""

from __future__ import annotations

import random

from moorage.serving.invocation_events import InvocationObserver
from moorage.serving.router import EndpointRoute, Invocation, InvocationFailed, UnknownVariant, VariantRoute


class TrafficShift:
    def __init__(self, blue: EndpointRoute, green: EndpointRoute, green_share: float = 0.0):
        self.name = blue.name
        self.blue = blue
        self.green = green
        self.green_share = green_share

    @property
    def variants(self) -> dict[str, VariantRoute]:
        return {**self.blue.variants, **self.green.variants}

    @property
    def observers(self) -> list[InvocationObserver]:
        """Non-empty when either fleet is watched (the door only asks whether to report at all)."""
        return self.blue.observers or self.green.observers

    def fleet_for(self, target_variant: str | None) -> EndpointRoute:
        fleet = self.green if random.random() < self.green_share else self.blue
        if target_variant and target_variant not in fleet.variants:
            other = self.blue if fleet is self.green else self.green
            if target_variant in other.variants:
                return other
        return fleet

    async def invoke(self, body: bytes, headers: bytes, target_variant: str | None = None,
                     timeout: float | None = None) -> Invocation:
        fleet = self.fleet_for(target_variant)
        try:
            invocation = await fleet.invoke(body, headers, target_variant, timeout)
        except (InvocationFailed, UnknownVariant) as exc:
            exc.fleet = fleet  # type: ignore[union-attr]
            raise
        invocation.fleet = fleet
        return invocation

    def observe(self, body: bytes, forwarded_headers: bytes, arrived: float, started: float,
                outcome: Invocation | InvocationFailed) -> None:
        fleet = getattr(outcome, "fleet", None) or self.blue
        if fleet.observers:
            fleet.observe(body, forwarded_headers, arrived, started, outcome)
