"""Variant choice and the invocation path of one endpoint.

An endpoint routes each request to a production variant (by weight, or the caller's
``TargetVariant``), then to an instance of that variant's pool. Later strategies (rules, sticky
assignment, shadow copies, bandits) plug in as other ways of choosing the variant; the pools and
the instance hop stay the same.
"""

from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

from moorage.serving.client import InstanceConnectionError, InstanceTimeout
from moorage.serving.pool import InstancePool, NoCapacity


class UnknownVariant(Exception):
    pass


class InvocationFailed(Exception):
    """The instance could not produce a response (it died, timed out, or there is none)."""

    def __init__(self, message: str, status: int, variant: str):
        super().__init__(message)
        self.status = status
        self.variant = variant


@dataclass(slots=True)
class Invocation:
    variant: str
    instance_id: str
    status: int
    content_type: str
    body: bytes
    custom_attributes: bytes | None


class VariantRoute:
    __slots__ = ("current_weight", "desired_weight", "name", "pool")

    def __init__(self, name: str, weight: float, pool: InstancePool):
        self.name = name
        self.current_weight = weight
        self.desired_weight = weight
        self.pool = pool


class EndpointRoute:
    def __init__(self, name: str, variants: list[VariantRoute], invocation_timeout: float = 60.0,
                 acquire_timeout: float = 30.0):
        self.name = name
        self.variants = {v.name: v for v in variants}
        self.invocation_timeout = invocation_timeout
        self.acquire_timeout = acquire_timeout
        self._thresholds: list[float] = []
        self._ordered: list[VariantRoute] = []
        self.reweigh()

    def reweigh(self) -> None:
        """Recompute the cumulative weight table after weights change."""
        total = 0.0
        thresholds, ordered = [], []
        for variant in self.variants.values():
            if variant.current_weight > 0:
                total += variant.current_weight
                thresholds.append(total)
                ordered.append(variant)
        self._thresholds = [t / total for t in thresholds] if total else []
        self._ordered = ordered

    def choose(self, target_variant: str | None = None) -> VariantRoute:
        if target_variant:
            variant = self.variants.get(target_variant)
            if variant is None:
                raise UnknownVariant(target_variant)
            return variant
        ordered = self._ordered
        if len(ordered) == 1:
            return ordered[0]
        if not ordered:
            raise NoCapacity(f"every variant of endpoint {self.name} has weight 0; name one with TargetVariant")
        index = bisect.bisect_right(self._thresholds, random.random())
        return ordered[min(index, len(ordered) - 1)]

    async def invoke(self, body: bytes, headers: bytes, target_variant: str | None = None) -> Invocation:
        variant = self.choose(target_variant)
        try:
            instance = variant.pool.pick() or await variant.pool.acquire(self.acquire_timeout)
        except NoCapacity as exc:
            raise InvocationFailed(str(exc), 503, variant.name) from exc
        try:
            response = await instance.invoke(body, headers, self.invocation_timeout)
        except InstanceTimeout as exc:
            raise InvocationFailed(
                f"Your invocation timed out while waiting for a response from instance {instance.id} of "
                f"variant {variant.name} ({exc}).", 504, variant.name) from exc
        except InstanceConnectionError as exc:
            raise InvocationFailed(
                f"Instance {instance.id} of variant {variant.name} failed while serving the request ({exc}); "
                f"the instance is being replaced. See its log at {instance.log_path}.", 502, variant.name) from exc
        return Invocation(variant.name, instance.id, response.status, response.content_type, response.body,
                          response.custom_attributes)
