"""The invocation path of one endpoint: choose a production variant, then an instance of its pool.

An endpoint routes each request to the variant the caller names (``TargetVariant``) or, otherwise,
the one its chooser picks (``choosers/``: weighted today; rules, stickiness, shadows and bandits
plug in there), then to the least busy instance of that variant's pool. After the reply is sent the
front door hands the outcome back to the route, which builds the one ``InvocationEvent`` its
observers (metrics, capture) see.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from moorage.serving.choosers import NoVariantToChoose, VariantChooser
from moorage.serving.choosers.weighted import WeightedChooser
from moorage.serving.instance_client import InstanceConnectionError, InstanceTimeout, InstanceUnreachable
from moorage.serving.invocation_events import InvocationEvent, InvocationObserver, target_model
from moorage.serving.model_cache import TargetModelError
from moorage.serving.multi_model_pool import MultiModelPool
from moorage.serving.pool import InstancePool, Member, NoCapacity

log = logging.getLogger("moorage.router")


class UnknownVariant(Exception):
    pass


class InvocationFailed(Exception):
    """The instance could not produce a response (it died, timed out, or there is none)."""

    def __init__(self, message: str, status: int, variant: str, instance_id: str = "", model_seconds: float = 0.0):
        super().__init__(message)
        self.status = status
        self.variant = variant
        self.instance_id = instance_id
        self.model_seconds = model_seconds


@dataclass(slots=True)
class Invocation:
    variant: str
    instance_id: str
    status: int
    content_type: str
    body: bytes
    custom_attributes: bytes | None
    model_seconds: float = 0.0  # the instance hop, as the router timed it (SageMaker's ModelLatency)
    fleet: EndpointRoute | None = None  # set during a blue/green update: which fleet served (traffic_shift.py)
    # A pipeline's: the container that answered (a failing one's name for ModelError), each one's time.
    container: str | None = None
    container_seconds: tuple[tuple[str, float], ...] | None = None
    target_model: str | None = None  # a multi-model endpoint's TargetModel


class VariantRoute:
    """A variant as the router serves it: its pool and the weight it serves at now (the desired weight
    is the store's; the control plane converges this one on it)."""

    __slots__ = ("current_weight", "name", "pool")

    def __init__(self, name: str, weight: float, pool: InstancePool | MultiModelPool):
        self.name = name
        self.current_weight = weight
        self.pool = pool


class EndpointRoute:
    def __init__(self, name: str, variants: list[VariantRoute], invocation_timeout: float = 60.0,
                 acquire_timeout: float = 30.0, chooser: VariantChooser[VariantRoute] | None = None):
        self.name = name
        self.variants = {v.name: v for v in variants}
        self.invocation_timeout = invocation_timeout
        self.acquire_timeout = acquire_timeout
        self.chooser: VariantChooser[VariantRoute] = chooser or WeightedChooser()
        # ShadowProductionVariants: never chosen; their ShadowMirror observers send them copies.
        self.shadows: dict[str, VariantRoute] = {}
        # Metrics and data capture; the front door skips building events while this is empty.
        self.observers: list[InvocationObserver] = []
        self.reweigh()

    def notify(self, event: InvocationEvent) -> None:
        for observer in self.observers:
            try:
                observer.observe(event)
            except Exception:  # an observer's bug must never fail or slow the invocation path
                log.exception("observer %r failed on an invocation of %s", observer, self.name)

    def reweigh(self) -> None:
        """Weights changed: the chooser rebuilds what it chooses from."""
        self.chooser.update(list(self.variants.values()))

    def choose(self, target_variant: str | None = None, forwarded_headers: bytes = b"") -> VariantRoute:
        if target_variant:
            variant = self.variants.get(target_variant)
            if variant is None:
                raise UnknownVariant(target_variant)
            return variant
        try:
            return self.chooser.choose(forwarded_headers)
        except NoVariantToChoose:
            raise NoCapacity(f"every variant of endpoint {self.name} has weight 0; name one with TargetVariant") \
                from None

    async def invoke(self, body: bytes, headers: bytes, target_variant: str | None = None,
                     timeout: float | None = None) -> Invocation:
        """``timeout``: the instance's time to answer, when not the route's (an asynchronous request's
        InvocationTimeoutSeconds)."""
        variant = self.choose(target_variant, headers)
        pool = variant.pool
        if pool.multi_model:
            return await self._invoke_target_model(variant, body, headers, timeout)
        try:
            instance = pool.pick() or await pool.acquire(self.acquire_timeout)
        except NoCapacity as exc:
            raise InvocationFailed(str(exc), 503, variant.name) from exc
        try:
            return await self._call(variant, instance, body, headers, timeout)
        except InvocationFailed as failed:
            # Never sent (its instance could not be reached: a process or node that just died): another
            # in-service instance of the variant takes it, once. What was sent is not sent again.
            if not isinstance(failed.__cause__, InstanceUnreachable):
                raise
            other = next((i for i in pool.ready if i is not instance), None)
            if other is None:
                raise
            return await self._call(variant, other, body, headers, timeout)

    async def _call(self, variant: VariantRoute, instance: Member, body: bytes, headers: bytes,
                    timeout: float | None = None) -> Invocation:
        started = time.perf_counter()
        try:
            response = await instance.invoke(body, headers, timeout or self.invocation_timeout)
        except InstanceTimeout as exc:
            # The work goes on inside the instance and cannot be cancelled from here: the pool replaces
            # the instance, so that it does not hold the requests queued behind it.
            recycle = getattr(variant.pool, "recycle", None)
            if recycle is not None:
                recycle(instance, f"a request timed out ({exc})")
            # SageMaker's words for a model past the invocation timeout.
            raise InvocationFailed(
                f"Your invocation timed out while waiting for a response from container {variant.name}. Review "
                f"the latency metrics for each container in Amazon CloudWatch, resolve the issue, and try again. "
                f"(instance {instance.id}: {exc})", 504, variant.name, instance.id,
                time.perf_counter() - started) from exc
        except InstanceConnectionError as exc:
            raise InvocationFailed(
                f"Instance {instance.id} of variant {variant.name} failed while serving the request ({exc}); "
                f"the instance is being replaced. See its log at {instance.log_path}.", 502, variant.name,
                instance.id, time.perf_counter() - started) from exc
        invocation = Invocation(variant.name, instance.id, response.status, response.content_type, response.body,
                                response.custom_attributes, time.perf_counter() - started)
        if response.container is not None:
            invocation.container, invocation.container_seconds = response.container, response.container_seconds
        return invocation

    async def _invoke_target_model(self, variant: VariantRoute, body: bytes, headers: bytes,
                                   timeout: float | None = None) -> Invocation:
        """A multi-model variant: the request's TargetModel, loaded where the pool says."""
        target = target_model(headers)
        if target is None:
            raise TargetModelError(f"Endpoint {self.name} serves a multi-model variant ({variant.name}): name the "
                                   f"model to invoke with TargetModel.")
        cache = variant.pool.cache  # type: ignore[union-attr]
        if cache is None:
            raise InvocationFailed(f"variant {variant.name} of endpoint {self.name} has no instance in service", 503,
                                   variant.name)
        host, instance, _ = await cache.acquire(target)
        try:
            invocation = await self._call(variant, instance, body, headers, timeout)
        finally:
            host.release(target)
        invocation.target_model = target
        return invocation

    def observe(self, body: bytes, forwarded_headers: bytes, arrived: float, started: float,
                outcome: Invocation | InvocationFailed) -> None:
        """After the reply: the invocation's event to every observer. Callers check ``observers`` first,
        so a route nobody watches builds nothing. Positional, in InvocationEvent's field order:
        keywords would cost a third of this method's time."""
        if isinstance(outcome, Invocation):
            event = InvocationEvent(self.name, outcome.variant, outcome.instance_id, outcome.status, arrived,
                                    outcome.model_seconds, time.perf_counter() - started, body, forwarded_headers,
                                    outcome.body, outcome.content_type)
            if outcome.container_seconds is not None:
                event.container_seconds = outcome.container_seconds
            if outcome.target_model is not None:
                event.target_model = outcome.target_model
        else:
            event = InvocationEvent(self.name, outcome.variant, outcome.instance_id, outcome.status, arrived,
                                    outcome.model_seconds, time.perf_counter() - started, body, forwarded_headers,
                                    b"", None)
        self.notify(event)
